"""The fast forward path: model.py's function, computed with the speed machinery kept out of it.

Each function here replaces the reference function of the same name and signature (read model.py
first; the dimension legend and the parameter layout are drawn there); what is not replaced is
imported from it. tests/test_fast.py holds the two paths together (1e-13 in float64, the float32
tolerances in float32). What differs, each measured in benchmarks/:

- each core owns a share of the token rows: it multiplies them with BLAS single-threaded, then does
  their bias, residual, GELU and LayerNorm right away, ROWS_BLOCK rows at a time (`layer`). So the
  elementwise work runs on every core, and no core waits for the other between two matmuls: one
  core's GELU overlaps the other's matmul. Attention takes whole (sequence, head) blocks instead;
- every projection is one 2-D matmul over many tokens (a (B, S, D) @ (D, F) matmul is a loop of B
  smaller BLAS calls, 2-3x slower), its bias added in place; its input dimension is summed in chunks
  of 128 (gemm.py), which keeps the float32 error under transformers' own on any OpenBLAS kernel;
- LayerNorm normalizes float32 in float64 and rounds once (`layer_norm`): the rest of that error;
- float16-stored weights are widened to float32 once per layer, just before its matmuls
  (`as_compute`), so only one layer's float32 copies exist at a time;
- attention normalizes after @ V and skips the max shift while exp stays in range (`attention`);
- the float32 GELU is within 1 ulp of |x| (erf.gelu_fast), not of its result: half the work;
- LayerNorm and the FFN write into the buffers they already own instead of allocating new ones;
- a batch without padding gets no mask (adding zeros would only cost time).
"""
from __future__ import annotations

import math

import numpy as np

from . import gemm, threads
from .config import BertConfig
from .erf import gelu_fast
from .model import attention_mask_bias

__all__ = ["linear", "layer_norm", "attention", "self_attention", "attention_output", "intermediate", "output",
           "layer", "encoder", "bert", "embeddings", "attention_mask_bias"]


def linear(x, w, b, out=None):
    """x @ w + b as one 2-D matmul over every token, K summed in short chunks (gemm.py: at most the
    rounding error of torch's matmul), the bias added in place (into `out` if given)."""
    y = gemm.matmul(x.reshape(-1, x.shape[-1]), as_compute(w, x), out=out)  # (N, out)
    y += b
    return y.reshape(*x.shape[:-1], -1)                      # (..., out)


def layer_norm(x, g, b, eps, out=None):
    """LayerNorm over the last axis (biased variance, as torch), into `out` (which may be x) or a new array.

    float32 is normalized in float64 and rounded once. In float32 the four steps (center, divide,
    scale, shift) each round, up to ~3 ulp at BERT's outlier dimensions (|x| of 5 to 10), where a
    layer's largest errors sit; torch's fused kernel rounds less, and with these it is our error that
    is smaller (tests/test_fast.py, within 1.2x transformers' max and rms). On the fast path's row
    blocks the float64 temporaries stay in cache: 1.8x a float32 LayerNorm's time, ~2% of a forward."""
    y = x.astype(np.float64)                                 # (..., D) a copy: x is left as it was
    y -= y.mean(axis=-1, keepdims=True)
    y *= 1.0 / np.sqrt(np.mean(np.square(y), axis=-1, keepdims=True) + eps)
    y *= g
    y += b
    if out is None:
        return y.astype(x.dtype, copy=False)                 # (..., D)
    np.copyto(out, y, casting="same_kind")
    return out                                               # (..., D)


def embeddings(input_ids, token_type_ids, word, position, token_type, ln, eps):
    """BertEmbeddings, as model.embeddings, with this module's LayerNorm."""
    S = input_ids.shape[1]
    x = word[input_ids] + position[:S] + token_type[token_type_ids]  # (B, S, D)
    return layer_norm(x, **ln, eps=eps, out=x)               # (B, S, D)


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
    """BertSelfAttention: each core projects its own rows, then takes whole blocks of heads."""
    B, S, D = x.shape
    rows, qkv = x.reshape(B * S, D), widened(qkv, x)         # (N, D); float16 weights widened once
    proj = np.empty((B * S, 3 * D), x.dtype)                 # (N, 3D)
    ctx = np.empty((B, S, n_head, D // n_head), x.dtype)     # (B, S, H, Dh) heads already side by side
    with threads.split() as parts:
        threads.run(lambda r: linear(rows[r], **qkv, out=proj[r]), _rows(B * S, parts), parts > 1)
        q, k, v = proj.reshape(B, S, 3, n_head, D // n_head).transpose(2, 0, 3, 1, 4)  # 3 x (B, H, S, Dh)
        heads_in_parallel(attention, q, k, v, mask_bias, ctx.transpose(0, 2, 1, 3), parts)  # (B, H, S, Dh) view
    return ctx.reshape(B, S, D)                              # (B, S, D)


def attention_output(ctx, x, dense, ln, eps):
    """BertSelfOutput: projection, residual and LayerNorm, in one buffer."""
    y = linear(ctx, **dense)                                 # (..., D)
    y += x
    return layer_norm(y, **ln, eps=eps, out=y)               # (..., D)


def intermediate(x, dense):
    """BertIntermediate: the GELU in place, within 1 ulp of |x| in float32 (erf.gelu_fast)."""
    h = linear(x, **dense)                                   # (..., F)
    return gelu_fast(h, out=h)                               # (..., F) in place


def output(h, x, dense, ln, eps):
    """BertOutput: projection, residual and LayerNorm, in one buffer."""
    y = linear(h, **dense)                                   # (..., D)
    y += x
    return layer_norm(y, **ln, eps=eps, out=y)               # (..., D)


def layer(x, mask_bias, attn, attn_out, inter, out, n_head, eps):
    """BertLayer: self-attention, then every row's attention output and feed-forward block on the
    core that owns the row, ROWS_BLOCK rows at a time. Nothing waits for another core between
    the matmuls: one core's GELU or LayerNorm runs while the other multiplies."""
    ctx = self_attention(x, mask_bias, **attn, n_head=n_head)  # (B, S, D)
    B, S, D = x.shape
    attn_out, out = (dict(p, dense=widened(p["dense"], x)) for p in (attn_out, out))  # once, not per block
    inter = dict(inter, dense=widened(inter["dense"], x))
    x, ctx, y = x.reshape(B * S, D), ctx.reshape(B * S, D), np.empty((B * S, D), x.dtype)  # (N, D)

    def rows(r):
        for s in range(r.start, r.stop, ROWS_BLOCK):
            t = slice(s, min(s + ROWS_BLOCK, r.stop))
            a = attention_output(ctx[t], x[t], **attn_out, eps=eps)  # (n, D)
            y[t] = output(intermediate(a, **inter), a, **out, eps=eps)  # (n, D)

    with threads.split() as parts:
        threads.run(rows, _rows(B * S, parts), parts > 1)
    return y.reshape(B, S, D)                                # (B, S, D)


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


def widened(linear_params, x):
    """{"w", "b"} with w in the activations' dtype (as_compute), for a layer's worth of row blocks."""
    return dict(linear_params, w=as_compute(linear_params["w"], x))


def _rows(n, parts):
    """One (start, stop) slice of the n token rows per part, as threads.run's argument list."""
    return [(s,) for s in threads.chunks(n, parts)]


def heads_in_parallel(fn, q, k, v, mask_bias, out, parts):
    """out[b, h] = fn(q, k, v, mask) over blocks of (batch, head), spread over `parts` threads
    (called inside threads.split(), so BLAS is single-threaded in each).

    Each head's matmuls are small (S x Dh); BLAS would spread every one of them over the cores
    and spend more time synchronizing than computing. So the threads take whole blocks of heads
    instead, each block's scores small enough to stay in the cache.
    """
    B, H, S = q.shape[:3]
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

    threads.run(block, blocks, parts > 1)
    return out


# A block's scores stay within a core's L2 cache (4 MB on the benchmark machine): long sequences no
# longer stream their (S, S) scores through memory (32 x 256 tokens, MiniLM heads: 42 ms -> 35 ms).
SCORES_BLOCK_BYTES = 4 << 20
# Rows of the (rows, F) intermediate a core keeps between its two FFN matmuls (see layer()).
ROWS_BLOCK = 512
