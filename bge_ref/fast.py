"""The fast forward path: model.py's function, computed with the speed machinery kept out of it.

Each function here replaces the reference function of the same name and signature (read model.py
first; the dimension legend and the parameter layout are drawn there); what is not replaced is
imported from it. tests/test_fast.py holds the two paths together (1e-13 in float64, the float32
tolerances in float32). What differs, each measured in benchmarks/:

- every projection is one 2-D matmul over all N = B * S tokens (a (B, S, D) @ (D, F) matmul is a
  loop of B smaller BLAS calls, 2-3x slower), its bias added in place;
- float16-stored weights are widened to float32 one matrix at a time, just before their matmul
  (`as_compute`), so only one float32 copy exists at a time;
- attention normalizes after @ V and skips the max shift while exp stays in range (`attention`);
- attention heads and GELU rows are split over a small thread pool (threads.py), since BLAS does
  not spread that work over the cores itself; NumPy releases the GIL inside its loops;
- LayerNorm and the FFN write into the temporaries they already own instead of allocating new ones;
- a batch without padding gets no mask (adding zeros would only cost time).
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np

from . import gemm, threads
from .config import BertConfig
from .erf import gelu
from .model import attention_mask_bias, embeddings

__all__ = ["linear", "layer_norm", "attention", "self_attention", "attention_output", "intermediate", "output",
           "layer", "encoder", "bert", "embeddings", "attention_mask_bias"]


def linear(x, w, b):
    """x @ w + b as one 2-D matmul over every token, the bias added in place."""
    y = gemm.matmul(x.reshape(-1, x.shape[-1]), as_compute(w, x))  # (N, out) summed over K in short chunks
    y += b
    return y.reshape(*x.shape[:-1], -1)                      # (..., out)


def layer_norm(x, g, b, eps):
    """LayerNorm over the last axis (biased variance, as torch), in three passes that reuse one buffer."""
    xc = x - x.mean(axis=-1, keepdims=True)                  # (..., D)
    var = np.mean(np.square(xc), axis=-1, keepdims=True)     # (..., 1)
    xc /= np.sqrt(var + eps)                                 # (..., D) in place: x is left as it was
    xc *= g
    xc += b
    return xc                                                # (..., D)


def attention(q, k, v, mask_bias, shift=False):
    """softmax(q k^T / sqrt(Dh) + mask) v for a stack of heads; q, k, v (b, h, S, Dh).

    Three passes over the (S, S) scores (scale, exp, sum) instead of six: softmax(s) @ v =
    (exp(s) @ v) / sum(exp(s)), so the division touches the (S, Dh) result, not the scores. And
    softmax is unchanged by a shift of s, so the usual shift by the row max (as HF) only guards exp
    against over- and underflow; it is skipped while every row sum is well inside the dtype's range
    (scores within about +-46), and the block is redone with it otherwise.
    """
    scores = q @ k.transpose(0, 1, 3, 2)                     # (b, h, S, S)
    scores *= 1.0 / math.sqrt(q.shape[-1])
    if mask_bias is not None:
        scores += mask_bias                                  # (b, h, S, S) padded keys -> -inf-ish
    if shift:
        scores -= scores.max(axis=-1, keepdims=True)         # (b, h, S, S) row max 0: exp(s) <= 1
    with np.errstate(over="ignore", under="ignore"):        # caught just below
        e = np.exp(scores, out=scores)                       # (b, h, S, S) unnormalized probabilities
    total = e.sum(axis=-1, keepdims=True)                    # (b, h, S, 1)
    if not shift and not ((total > 1e-20) & (total < 1e20)).all():
        return attention(q, k, v, mask_bias, shift=True)     # exp under- or overflowed somewhere
    ctx = e @ v                                              # (b, h, S, Dh)
    ctx /= total
    return ctx                                               # (b, h, S, Dh)


def self_attention(x, mask_bias, qkv, n_head):
    """BertSelfAttention, heads over the cores, written straight into their merged layout."""
    B, S, D = x.shape
    q, k, v = linear(x, **qkv).reshape(B, S, 3, n_head, D // n_head).transpose(2, 0, 3, 1, 4)  # 3 x (B, H, S, Dh)
    ctx = np.empty((B, S, n_head, D // n_head), x.dtype)     # (B, S, H, Dh) heads already side by side
    heads_in_parallel(attention, q, k, v, mask_bias, out=ctx.transpose(0, 2, 1, 3))  # (B, H, S, Dh) view
    return ctx.reshape(B, S, D)                              # (B, S, D)


def attention_output(ctx, x, dense, ln, eps):
    """BertSelfOutput: projection, residual and LayerNorm."""
    y = linear(ctx, **dense)                                 # (B, S, D)
    y += x
    return layer_norm(y, **ln, eps=eps)                      # (B, S, D)


def intermediate(x, dense):
    """BertIntermediate: the exact GELU in place on row blocks, over the cores."""
    h = linear(x, **dense)                                   # (B, S, F)
    rows_in_parallel(gelu, h.reshape(-1, h.shape[-1]))       # (N, F) view, in place
    return h                                                 # (B, S, F)


def output(h, x, dense, ln, eps):
    """BertOutput: projection, residual and LayerNorm."""
    y = linear(h, **dense)                                   # (B, S, D)
    y += x
    return layer_norm(y, **ln, eps=eps)                      # (B, S, D)


def layer(x, mask_bias, attn, attn_out, inter, out, n_head, eps):
    """BertLayer, as model.layer, on this module's blocks."""
    a = attention_output(self_attention(x, mask_bias, **attn, n_head=n_head), x, **attn_out, eps=eps)  # (B, S, D)
    return output(intermediate(a, **inter), a, **out, eps=eps)  # (B, S, D)


def encoder(x, mask_bias, layers, config: BertConfig, output_hidden_states=False):
    """BertEncoder, as model.encoder, on this module's layer."""
    states = [x] if output_hidden_states else None
    for p in layers:
        x = layer(x, mask_bias, **p, n_head=config.num_attention_heads, eps=config.layer_norm_eps)  # (B, S, D)
        if output_hidden_states:
            states.append(x)
    return x, states                                         # (B, S, D)


def bert(input_ids, attention_mask, token_type_ids, params, config: BertConfig, output_hidden_states=False):
    """BertModel without the pooler, as model.bert; an unpadded batch gets no mask at all."""
    x = embeddings(input_ids, token_type_ids, **params["embeddings"], eps=config.layer_norm_eps)  # (B, S, D)
    mask_bias = None if attention_mask.all() else attention_mask_bias(attention_mask, x.dtype)  # (B, 1, 1, S)
    return encoder(x, mask_bias, params["layers"], config, output_hidden_states)


# -- machinery: weights stored narrower than the compute, and both cores for what BLAS leaves serial --

def as_compute(w, x):
    """The weight matrix in the activations' dtype: a no-op, or float16 -> float32 for this one matmul."""
    return w if w.dtype == x.dtype else w.astype(x.dtype)


def rows_in_parallel(fn, x):
    """fn(rows, out=rows) on row blocks of the 2-D array x, in place, over the cores. Returns x."""
    threads.run(lambda rows: fn(rows, out=rows), [(x[s],) for s in threads.chunks(len(x), threads.THREADS)])
    return x


def heads_in_parallel(fn, q, k, v, mask_bias, out):
    """out[b, h] = fn(q, k, v, mask) over blocks of (batch, head), spread over the cores.

    Each head's matmuls are small (S x Dh); BLAS would spread every one of them over the cores
    and spend more time synchronizing than computing. So BLAS runs single-threaded here and the
    threads take whole blocks of heads instead, each block's scores small enough to stay in the
    cache. Without threadpoolctl the blocks run one after the other.
    """
    B, H, S = q.shape[:3]
    limit = threads.blas_single_threaded() if threads.THREADS > 1 else None
    parts = threads.THREADS if limit is not None else 1
    head_bytes = S * S * q.itemsize                          # one head's (S, S) scores
    if B >= parts:                                           # whole sequences per block
        n = max(1, min(B // parts, SCORES_BLOCK_BYTES // (H * head_bytes)))
        blocks = [(slice(b, b + n), slice(None)) for b in range(0, B, n)]
    else:                                                    # fewer sequences than cores: split heads too
        n = max(1, min(B * H // parts, SCORES_BLOCK_BYTES // head_bytes))
        blocks = [(slice(b, b + 1), slice(h, h + n)) for b in range(B) for h in range(0, H, n)]

    def block(bs, hs):
        m = None if mask_bias is None else mask_bias[bs]
        out[bs, hs] = fn(q[bs, hs], k[bs, hs], v[bs, hs], m)

    # Without the limit, BLAS threads each matmul itself: the blocks must not run concurrently too.
    run = threads.run if limit is not None else lambda fn, args_list: [fn(*args) for args in args_list]
    with threads.blas_limit_lock, limit or nullcontext():   # one attention block at a time
        run(block, blocks)
    return out


# A block's scores stay within a core's L2 cache (4 MB on the benchmark machine): long sequences no
# longer stream their (S, S) scores through memory (32 x 256 tokens, MiniLM heads: 42 ms -> 35 ms).
SCORES_BLOCK_BYTES = 4 << 20
