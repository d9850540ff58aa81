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
the cores itself: attention heads and GELU rows are split over a small thread pool (the helpers at
the end of the file); NumPy releases the GIL inside its loops, so the threads really run in parallel.
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np

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
    """Softmax over the last axis, shifted by the row max so exp never overflows."""
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


def attention(q, k, v, mask_bias):
    """softmax(q k^T / sqrt(Dh) + mask) v for a stack of heads; q, k, v (b, h, S, Dh)."""
    scores = q @ k.transpose(0, 1, 3, 2)                  # (b, h, S, S)
    scores *= 1.0 / math.sqrt(q.shape[-1])
    if mask_bias is not None:
        scores += mask_bias                               # (b, h, S, S) padded keys -> -inf-ish
    return softmax(scores) @ v                            # (b, h, S, Dh)


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


THREADS = int(os.environ.get("BGE_REF_THREADS", 0)) or (
    len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
_pool = None


def _run(fn, args_list):
    """fn(*args) for each args tuple, on THREADS threads (in this one when there is nothing to split)."""
    global _pool
    if THREADS == 1 or len(args_list) == 1:
        return [fn(*args) for args in args_list]
    if _pool is None:
        _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="bge_ref")
    return list(_pool.map(lambda args: fn(*args), args_list))


def _chunks(n, parts):
    """Split range(n) into at most `parts` contiguous slices of near-equal size."""
    bounds = np.linspace(0, n, min(parts, n) + 1).round().astype(int)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def rows_in_parallel(fn, x):
    """fn(rows, out=rows) on row blocks of the 2-D array x, in place, over the cores. Returns x."""
    _run(lambda rows: fn(rows, out=rows), [(x[s],) for s in _chunks(len(x), THREADS)])
    return x


def _blas_single_threaded():
    """A context with BLAS on one thread (threadpoolctl), or None if that cannot be controlled."""
    global _blas_controller
    if _blas_controller is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas_controller = ThreadpoolController()
        except ImportError:
            _blas_controller = False
    return _blas_controller.limit(limits=1, user_api="blas") if _blas_controller else None


_blas_controller = None
_blas_limit_lock = threading.Lock()


def heads_in_parallel(fn, q, k, v, mask_bias, out):
    """out[b, h] = fn(q, k, v, mask) over blocks of (batch, head), one block per core.

    Each head's matmuls are small (S x Dh); BLAS would spread every one of them over the cores
    and spend more time synchronizing than computing. So BLAS runs single-threaded here and the
    threads take whole blocks of heads instead. Without threadpoolctl the heads run in one block.
    """
    B, H = q.shape[:2]
    limit = _blas_single_threaded() if THREADS > 1 else None
    parts = THREADS if limit is not None else 1
    blocks = ([(b, slice(None)) for b in _chunks(B, parts)] if B >= parts
              else [(slice(None), h) for h in _chunks(H, parts)])

    def block(bs, hs):
        m = None if mask_bias is None else mask_bias[bs]
        out[bs, hs] = fn(q[bs, hs], k[bs, hs], v[bs, hs], m)

    # threadpoolctl's limit is process-wide: callers in other threads must not interleave their
    # set/restore pairs (BLAS could be left on one thread), so one attention block runs at a time.
    with _blas_limit_lock, limit or nullcontext():
        _run(block, blocks)
    return out
