"""From a forward pass's hidden states to one vector per text: pooling and L2 normalization.

Below both the public API (embedder.py) and the hosted APIs' schemas (api.py), which share them
through the batching core (batching.py); verify.py pools its stage dumps with them too.
"""
from __future__ import annotations

import numpy as np

POOLINGS = ("cls", "mean")


def pool(hidden: np.ndarray, attention_mask: np.ndarray, pooling: str) -> np.ndarray:
    """(B, S, D) hidden states -> (B, D): the [CLS] vector, or the mean over real tokens."""
    if pooling == "cls":
        return hidden[:, 0]                                               # (B, D)
    if pooling != "mean":
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    # Each text's real tokens summed in float64 and rounded once (a float32 sum over 512 tokens
    # rounds 512 times); an all-padding row gives zeros, as sentence-transformers' clamp does.
    real = np.asarray(attention_mask).astype(bool)                        # (B, S)
    mean = np.stack([h[r].sum(axis=0, dtype=np.float64) / max(int(r.sum()), 1) for h, r in zip(hidden, real)])
    return mean.astype(hidden.dtype, copy=False)                          # (B, D)


def l2_normalize(v: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as torch's F.normalize (eps 1e-12, so a zero row stays zero).
    Computed in float64 and rounded once: one vector per text, so it costs nothing."""
    v64 = np.asarray(v, np.float64)
    return (v64 / np.maximum(np.linalg.norm(v64, axis=-1, keepdims=True), 1e-12)).astype(v.dtype, copy=False)
