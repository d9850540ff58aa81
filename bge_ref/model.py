"""The BERT encoder forward pass, in NumPy, top to bottom.

Dimension legend (the shape comments use these names):
    B  batch size                 S  sequence length (tokens, padded to the longest in the batch)
    N  tokens in the batch, B * S: every projection multiplies the (N, D) matrix of all tokens at once
    D  hidden size (1024 large)   H  attention heads (16)      Dh  head size D // H (64)
    F  intermediate size (4096)   V  vocabulary size (30522)    L  layers (24)

Functions are named after the blocks of Hugging Face's modeling_bert.py (BertEmbeddings,
BertSelfAttention, BertSelfOutput a.k.a. attention output, BertIntermediate, BertOutput, BertLayer,
BertEncoder) so the two can be read side by side. What an embedding model does not need (dropout,
head masks, caches, cross-attention) is left out. Weights arrive already transposed to (in, out) by
checkpoint.py, so every projection here is `x @ w + b`.

The compute dtype is the activations' dtype (float32, or float64 for the oracle): Python float
scalars never promote an array, so nothing is silently computed in float64. float16-stored weights
are widened to float32 one matrix at a time, just before their matmul (`as_compute`).

Speed, measured in benchmarks/bench.py: the projections are 2-D matmuls over all N tokens (a
(B, S, D) @ (D, F) matmul is a loop of B smaller BLAS calls, 2-3x slower); `x @ w + b` adds the
bias in place (NumPy reuses the matmul's temporary). The rest is what BLAS does not spread over
the cores itself: attention heads and GELU rows are split over a small thread pool (threads.py,
and the helpers at the end of this file); NumPy releases the GIL inside its loops.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np

from . import threads
from .config import BertConfig
from .erf import gelu


def layer_norm(x, g, b, eps):
    """LayerNorm over the last axis (biased variance, as torch)."""
    xc = x - x.mean(axis=-1, keepdims=True)               # (..., D)
    var = np.mean(np.square(xc), axis=-1, keepdims=True)  # (..., 1)
    xc /= np.sqrt(var + eps)                              # (..., D) in place: x is left as it was
    xc *= g
    xc += b
    return xc                                             # (..., D)


def softmax(x):
    """Softmax over the last axis, shifted by the row max so exp never overflows (as torch).

    The forward never forms these probabilities (attention() folds the softmax into its @ V);
    this is the textbook form that the notebooks and the error study look at."""
    e = x - x.max(axis=-1, keepdims=True)                 # (..., S)
    np.exp(e, out=e)
    e /= e.sum(axis=-1, keepdims=True)
    return e                                              # (..., S)


def attention_mask_bias(attention_mask, dtype):
    """0 where a key is a real token, the dtype's most negative number where it is padding (as HF)."""
    keep = attention_mask.astype(bool)[:, None, None, :]  # (B, 1, 1, S)
    return np.where(keep, 0.0, np.finfo(dtype).min).astype(dtype)


def embeddings(input_ids, token_type_ids, p, eps, dtype):
    """BertEmbeddings: word + absolute position + token type, then LayerNorm."""
    S = input_ids.shape[1]
    x = p["word"][input_ids].astype(dtype, copy=False)    # (B, S, D) rows gathered from the mapped table
    x += p["position"][:S]                                # (B, S, D) positions 0..S-1 (right padding)
    x += p["token_type"][token_type_ids]                  # (B, S, D)
    return layer_norm(x, p["ln_g"], p["ln_b"], eps)       # (B, S, D)


def attention(q, k, v, mask_bias, shift=False):
    """softmax(q k^T / sqrt(Dh) + mask) v for a stack of heads; q, k, v (b, h, S, Dh).

    Three passes over the (S, S) scores (scale, exp, sum) instead of six: softmax(s) @ v =
    (exp(s) @ v) / sum(exp(s)), so the division touches the (S, Dh) result, not the scores. And
    softmax is unchanged by a shift of s, so the usual shift by the row max (as HF) only guards exp
    against over- and underflow; it is skipped while every row sum is well inside the dtype's range
    (scores within about +-46), and the block is redone with it otherwise.
    """
    scores = q @ k.transpose(0, 1, 3, 2)                  # (b, h, S, S)
    scores *= 1.0 / math.sqrt(q.shape[-1])
    if mask_bias is not None:
        scores += mask_bias                               # (b, h, S, S) padded keys -> -inf-ish
    if shift:
        scores -= scores.max(axis=-1, keepdims=True)      # (b, h, S, S) row max 0: exp(s) <= 1
    with np.errstate(over="ignore", under="ignore"):     # caught just below
        e = np.exp(scores, out=scores)                    # (b, h, S, S) unnormalized probabilities
    total = e.sum(axis=-1, keepdims=True)                 # (b, h, S, 1)
    if not shift and not ((total > 1e-20) & (total < 1e20)).all():
        return attention(q, k, v, mask_bias, shift=True)  # exp under- or overflowed somewhere
    ctx = e @ v                                           # (b, h, S, Dh)
    ctx /= total
    return ctx                                            # (b, h, S, Dh)


def self_attention(x, B, mask_bias, qkv_w, qkv_b, n_head):
    """BertSelfAttention: scaled dot-product attention of every token over the real tokens."""
    N, D = x.shape
    S, Dh = N // B, D // n_head
    qkv = x @ as_compute(qkv_w, x) + qkv_b                # (N, 3D) one matmul for Q, K and V
    q, k, v = qkv.reshape(B, S, 3, n_head, Dh).transpose(2, 0, 3, 1, 4)  # 3 x (B, H, S, Dh)
    ctx = np.empty((B, S, n_head, Dh), x.dtype)           # (B, S, H, Dh) heads already side by side
    heads_in_parallel(attention, q, k, v, mask_bias, out=ctx.transpose(0, 2, 1, 3))  # (B, H, S, Dh) view
    return ctx.reshape(N, D)                              # (N, D)


def attention_output(ctx, x, w, b, g, beta, eps):
    """BertSelfOutput: project the heads back, add the residual, LayerNorm (post-LN)."""
    return layer_norm(ctx @ as_compute(w, x) + b + x, g, beta, eps)  # (N, D)


def intermediate(x, w, b):
    """BertIntermediate: widen to F and apply the exact erf GELU."""
    return rows_in_parallel(gelu, x @ as_compute(w, x) + b)  # (N, F) in place


def output(h, x, w, b, g, beta, eps):
    """BertOutput: project back to D, add the residual, LayerNorm."""
    return layer_norm(h @ as_compute(w, x) + b + x, g, beta, eps)  # (N, D)


def layer(x, B, mask_bias, p, config: BertConfig):
    """BertLayer: attention block then feed-forward block, each with residual + LayerNorm."""
    eps = config.layer_norm_eps
    ctx = self_attention(x, B, mask_bias, p["qkv_w"], p["qkv_b"], config.num_attention_heads)  # (N, D)
    a = attention_output(ctx, x, p["attn_out_w"], p["attn_out_b"], p["attn_ln_g"], p["attn_ln_b"], eps)
    h = intermediate(a, p["inter_w"], p["inter_b"])       # (N, F)
    return output(h, a, p["out_w"], p["out_b"], p["out_ln_g"], p["out_ln_b"], eps)  # (N, D)


def encoder(x, mask_bias, layers, config: BertConfig, output_hidden_states=False):
    """BertEncoder: the stack of layers. Returns the last state and, if asked, all L+1 states."""
    B, S, D = x.shape
    states = [x] if output_hidden_states else None
    x = x.reshape(B * S, D)                               # (N, D) tokens as the rows of one matrix
    for p in layers:
        x = layer(x, B, mask_bias, p, config)             # (N, D)
        if output_hidden_states:
            states.append(x.reshape(B, S, D))
    return x.reshape(B, S, D), states                     # (B, S, D)


def bert(input_ids, attention_mask, token_type_ids, params, config: BertConfig, output_hidden_states=False):
    """BertModel without the pooler: token ids (B, S) -> last hidden state (B, S, D) [, hidden states]."""
    dtype = params["embeddings"]["ln_g"].dtype            # LayerNorm weights are always kept in the compute dtype
    x = embeddings(input_ids, token_type_ids, params["embeddings"], config.layer_norm_eps, dtype)  # (B, S, D)
    # A batch without padding needs no mask; adding zeros would only cost time.
    mask_bias = None if attention_mask.all() else attention_mask_bias(attention_mask, dtype)  # (B, 1, 1, S)
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
    head_bytes = S * S * q.itemsize                       # one head's (S, S) scores
    if B >= parts:                                        # whole sequences per block
        n = max(1, min(B // parts, SCORES_BLOCK_BYTES // (H * head_bytes)))
        blocks = [(slice(b, b + n), slice(None)) for b in range(0, B, n)]
    else:                                                 # fewer sequences than cores: split heads too
        n = max(1, min(B * H // parts, SCORES_BLOCK_BYTES // head_bytes))
        blocks = [(slice(b, b + 1), slice(h, h + n)) for b in range(B) for h in range(0, H, n)]

    def block(bs, hs):
        m = None if mask_bias is None else mask_bias[bs]
        out[bs, hs] = fn(q[bs, hs], k[bs, hs], v[bs, hs], m)

    # Without the limit, BLAS threads each matmul itself: the blocks must not run concurrently too.
    run = threads.run if limit is not None else lambda fn, args_list: [fn(*args) for args in args_list]
    with threads.blas_limit_lock, limit or nullcontext():  # one attention block at a time
        run(block, blocks)
    return out


# A block's scores stay within a core's L2 cache (4 MB on the benchmark machine): long sequences no
# longer stream their (S, S) scores through memory (32 x 256 tokens, MiniLM heads: 42 ms -> 35 ms).
SCORES_BLOCK_BYTES = 4 << 20
