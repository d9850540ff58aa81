"""The BERT encoder forward pass in NumPy: the reference, to read top to bottom.

Dimension legend (the shape comments use these names):
    B  batch size                 S  sequence length (tokens, padded to the longest in the batch)
    D  hidden size (1024 large)   H  attention heads (16)      Dh  head size D // H (64)
    F  intermediate size (4096)   V  vocabulary size (30522)    L  layers (24)

Functions are named after the blocks of Hugging Face's modeling_bert.py (BertEmbeddings,
BertSelfAttention, BertSelfOutput a.k.a. attention output, BertIntermediate, BertOutput, BertLayer,
BertEncoder), so the two read side by side. What an embedding model does not need (dropout, head
masks, caches, cross-attention) is left out.

Parameters are nested dicts built by checkpoint.py, one per block, passed with ** so that each
function names what it uses: {"w", "b"} for every linear layer (w already transposed to (in, out),
so a projection is x @ w + b) and {"g", "b"} for every LayerNorm. One encoder layer's:

    {"attn": {"qkv": {w, b}},                        Q, K and V fused into one (D, 3D) projection
     "attn_out": {"dense": {w, b}, "ln": {g, b}},
     "inter": {"dense": {w, b}},
     "out": {"dense": {w, b}, "ln": {g, b}}}

The compute dtype is the activations' dtype (float32, or float64 for the oracle): Python floats
never promote an array. fast.py computes the same function with the speed machinery (threads,
cache-sized blocks, in-place updates); tests/test_fast.py holds the two together.
"""
from __future__ import annotations

import math

import numpy as np

from .config import BertConfig
from .erf import gelu


def linear(x, w, b):
    """nn.Linear, its weight already transposed to (in, out)."""
    return x @ w + b                                          # (..., out)


def layer_norm(x, g, b, eps):
    """LayerNorm over the last axis (biased variance, as torch)."""
    mean = x.mean(axis=-1, keepdims=True)                     # (..., 1)
    var = np.mean(np.square(x - mean), axis=-1, keepdims=True)  # (..., 1)
    return (x - mean) / np.sqrt(var + eps) * g + b            # (..., D)


def softmax(x):
    """Softmax over the last axis, shifted by the row max so that exp cannot overflow (as torch)."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))             # (..., S)
    return e / e.sum(axis=-1, keepdims=True)                  # (..., S)


def attention_mask_bias(attention_mask, dtype):
    """0 where a key is a real token, the dtype's most negative number where it is padding (as HF)."""
    keep = attention_mask.astype(bool)[:, None, None, :]      # (B, 1, 1, S)
    return np.where(keep, 0.0, np.finfo(dtype).min).astype(dtype)


def embeddings(input_ids, token_type_ids, word, position, token_type, ln, eps):
    """BertEmbeddings: word + absolute position + token type, then LayerNorm."""
    S = input_ids.shape[1]
    x = word[input_ids] + position[:S] + token_type[token_type_ids]  # (B, S, D) positions 0..S-1 (right padding)
    return layer_norm(x, **ln, eps=eps)                       # (B, S, D)


def split_heads(x, n_head):
    """(B, S, D) -> (B, H, S, Dh): each head works on its own Dh-wide slice of the hidden vector."""
    B, S, D = x.shape
    return x.reshape(B, S, n_head, D // n_head).transpose(0, 2, 1, 3)  # (B, H, S, Dh)


def merge_heads(x):
    """(B, H, S, Dh) -> (B, S, D): the heads' outputs side by side again."""
    B, H, S, Dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, S, H * Dh)      # (B, S, D)


def attention_probs(q, k, mask_bias):
    """softmax(q k^T / sqrt(Dh) + mask): row i is how much token i takes from each token (keys)."""
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1]) + mask_bias  # (B, H, S, S) padded keys -> -inf-ish
    return softmax(scores)                                    # (B, H, S, S) each row sums to 1


def attention(q, k, v, mask_bias):
    """Scaled dot-product attention, softmax(q k^T / sqrt(Dh) + mask) v, every head at once."""
    return attention_probs(q, k, mask_bias) @ v               # (B, H, S, Dh)


def heads_qkv(x, qkv, n_head):
    """Q, K and V from one fused projection, each split into n_head heads."""
    q, k, v = np.split(linear(x, **qkv), 3, axis=-1)          # 3 x (B, S, D)
    return split_heads(q, n_head), split_heads(k, n_head), split_heads(v, n_head)  # 3 x (B, H, S, Dh)


def self_attention(x, mask_bias, qkv, n_head):
    """BertSelfAttention: every token attends over the real tokens of its text, in n_head heads."""
    ctx = attention(*heads_qkv(x, qkv, n_head), mask_bias)    # (B, H, S, Dh)
    return merge_heads(ctx)                                   # (B, S, D)


def attention_output(ctx, x, dense, ln, eps):
    """BertSelfOutput: project the heads back, add the residual, LayerNorm (post-LN)."""
    return layer_norm(linear(ctx, **dense) + x, **ln, eps=eps)  # (B, S, D)


def intermediate(x, dense):
    """BertIntermediate: widen to F and apply the exact erf GELU."""
    return gelu(linear(x, **dense))                           # (B, S, F)


def output(h, x, dense, ln, eps):
    """BertOutput: project back to D, add the residual, LayerNorm."""
    return layer_norm(linear(h, **dense) + x, **ln, eps=eps)  # (B, S, D)


def layer(x, mask_bias, attn, attn_out, inter, out, n_head, eps):
    """BertLayer: the attention block, then the feed-forward block, each closed by residual + LayerNorm."""
    a = attention_output(self_attention(x, mask_bias, **attn, n_head=n_head), x, **attn_out, eps=eps)  # (B, S, D)
    return output(intermediate(a, **inter), a, **out, eps=eps)  # (B, S, D)


def encoder(x, mask_bias, layers, config: BertConfig, output_hidden_states=False):
    """BertEncoder: the stack of L layers. Returns the last state and, if asked, all L+1 states."""
    states = [x] if output_hidden_states else None
    for p in layers:
        x = layer(x, mask_bias, **p, n_head=config.num_attention_heads, eps=config.layer_norm_eps)  # (B, S, D)
        if output_hidden_states:
            states.append(x)
    return x, states                                          # (B, S, D)


def bert(input_ids, attention_mask, token_type_ids, params, config: BertConfig, output_hidden_states=False):
    """BertModel without the pooler: token ids (B, S) -> last hidden state (B, S, D) [, hidden states]."""
    x = embeddings(input_ids, token_type_ids, **params["embeddings"], eps=config.layer_norm_eps)  # (B, S, D)
    mask_bias = attention_mask_bias(attention_mask, x.dtype)  # (B, 1, 1, S)
    return encoder(x, mask_bias, params["layers"], config, output_hidden_states)
