"""The BERT encoder forward pass, in NumPy, top to bottom.

Dimension legend (the shape comments use these names):
    B  batch size                 S  sequence length (tokens, padded to the longest in the batch)
    D  hidden size (1024 large)   H  attention heads (16)      Dh  head size D // H (64)
    F  intermediate size (4096)   V  vocabulary size (30522)    L  layers (24)

Functions are named after the blocks of Hugging Face's modeling_bert.py (BertEmbeddings,
BertSelfAttention, BertSelfOutput a.k.a. attention output, BertIntermediate, BertOutput, BertLayer,
BertEncoder) so the two can be read side by side. What an embedding model does not need (dropout,
head masks, caches, cross-attention) is left out. Weights arrive already transposed to (in, out) by
checkpoint.py, so every projection here is `x @ w + b`.

The compute dtype is the weights' dtype (float32, or float64 for the oracle): Python float scalars
never promote an array, so nothing is silently computed in float64.
"""
from __future__ import annotations

import math

import numpy as np

from .config import BertConfig
from .erf import gelu


def layer_norm(x, g, b, eps):
    """LayerNorm over the last axis (biased variance, as torch)."""
    mu = x.mean(axis=-1, keepdims=True)                   # (..., 1)
    xc = x - mu                                           # (..., D)
    var = np.mean(xc * xc, axis=-1, keepdims=True)        # (..., 1)
    return xc / np.sqrt(var + eps) * g + b                # (..., D)


def softmax(x):
    """Softmax over the last axis, shifted by the row max so exp never overflows."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))         # (..., S)
    return e / e.sum(axis=-1, keepdims=True)              # (..., S)


def attention_mask_bias(attention_mask, dtype):
    """0 where a key is a real token, the dtype's most negative number where it is padding (as HF)."""
    keep = attention_mask.astype(bool)[:, None, None, :]  # (B, 1, 1, S)
    return np.where(keep, 0.0, np.finfo(dtype).min).astype(dtype)


def embeddings(input_ids, token_type_ids, p, eps):
    """BertEmbeddings: word + absolute position + token type, then LayerNorm."""
    S = input_ids.shape[1]
    x = p["word"][input_ids]                              # (B, S, D)
    x = x + p["position"][:S]                             # (B, S, D) positions 0..S-1 (right padding)
    x = x + p["token_type"][token_type_ids]               # (B, S, D)
    return layer_norm(x, p["ln_g"], p["ln_b"], eps)       # (B, S, D)


def self_attention(x, mask_bias, qkv_w, qkv_b, n_head):
    """BertSelfAttention: scaled dot-product attention of every token over the real tokens."""
    B, S, D = x.shape
    Dh = D // n_head
    qkv = x @ qkv_w + qkv_b                               # (B, S, 3D) one matmul for Q, K and V
    q, k, v = qkv.reshape(B, S, 3, n_head, Dh).transpose(2, 0, 3, 1, 4)  # 3 x (B, H, S, Dh)
    scores = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(Dh))      # (B, H, S, S)
    if mask_bias is not None:
        scores = scores + mask_bias                       # (B, H, S, S) padded keys -> -inf-ish
    ctx = softmax(scores) @ v                             # (B, H, S, Dh)
    return ctx.transpose(0, 2, 1, 3).reshape(B, S, D)     # (B, S, D) heads side by side again


def attention_output(ctx, x, w, b, g, beta, eps):
    """BertSelfOutput: project the heads back, add the residual, LayerNorm (post-LN)."""
    return layer_norm(ctx @ w + b + x, g, beta, eps)      # (B, S, D)


def intermediate(x, w, b):
    """BertIntermediate: widen to F and apply the exact erf GELU."""
    return gelu(x @ w + b)                                # (B, S, F)


def output(h, x, w, b, g, beta, eps):
    """BertOutput: project back to D, add the residual, LayerNorm."""
    return layer_norm(h @ w + b + x, g, beta, eps)        # (B, S, D)


def layer(x, mask_bias, p, config: BertConfig):
    """BertLayer: attention block then feed-forward block, each with residual + LayerNorm."""
    eps = config.layer_norm_eps
    ctx = self_attention(x, mask_bias, p["qkv_w"], p["qkv_b"], config.num_attention_heads)  # (B, S, D)
    a = attention_output(ctx, x, p["attn_out_w"], p["attn_out_b"], p["attn_ln_g"], p["attn_ln_b"], eps)
    h = intermediate(a, p["inter_w"], p["inter_b"])       # (B, S, F)
    return output(h, a, p["out_w"], p["out_b"], p["out_ln_g"], p["out_ln_b"], eps)  # (B, S, D)


def encoder(x, mask_bias, layers, config: BertConfig, output_hidden_states=False):
    """BertEncoder: the stack of layers. Returns the last state and, if asked, all L+1 states."""
    states = [x] if output_hidden_states else None
    for p in layers:
        x = layer(x, mask_bias, p, config)                # (B, S, D)
        if output_hidden_states:
            states.append(x)
    return x, states


def bert(input_ids, attention_mask, token_type_ids, params, config: BertConfig, output_hidden_states=False):
    """BertModel without the pooler: token ids (B, S) -> last hidden state (B, S, D) [, hidden states]."""
    dtype = params["embeddings"]["word"].dtype
    x = embeddings(input_ids, token_type_ids, params["embeddings"], config.layer_norm_eps)  # (B, S, D)
    # A batch without padding needs no mask; adding zeros would only cost time.
    mask_bias = None if attention_mask.all() else attention_mask_bias(attention_mask, dtype)  # (B, 1, 1, S)
    return encoder(x, mask_bias, params["layers"], config, output_hidden_states)
