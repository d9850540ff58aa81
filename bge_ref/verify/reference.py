"""bge_ref's own run in the dump layout (stages.py), reference files, and comparing two dump files:
`bge-ref reference` and `bge-ref compare`. NumPy alone."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import BgeRefError, InputError
from ..pooling import POOLINGS
from ..pooling import l2_normalize as unit
from .stages import IDS, Report, compare_stages, tolerance

# Mixed lengths (so the batch is padded), punctuation, accents, CJK, emoji, a sentence pair's length.
DEFAULT_TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog, again and again, until it is tired.",
    "Café au lait, naïve résumé, Führer, São Paulo.",
    "東京は日本の首都です。",
    "I love 🦙.cpp and 🤗 transformers!",
    "a",
    "Represent this sentence for searching relevant passages: what is a BERT encoder?",
]
FORMAT = "bge-ref activations 1"  # the metadata "format" of a reference file


def layout(batch, hidden_states, pooled, embedding) -> dict:
    """A run in the documented layout, from a batch, L+1 hidden states, raw pooled vectors and the embedding."""
    run = {k: np.asarray(batch[k]) for k in IDS if k in batch}
    run.update({f"hidden_states.{i}": h for i, h in enumerate(hidden_states)})
    run["last_hidden_state"] = hidden_states[-1]
    run.update({f"pooled.{p}": v for p, v in pooled.items()})
    run["embedding"] = embedding
    return run


def run_ours(embedder, batch, pooling=None) -> dict:
    """bge_ref's run on a tokenized batch, in the documented layout (embedding: `pooling`, default the checkpoint's)."""
    last, hidden = embedder.forward(**batch, output_hidden_states=True)
    pooled = {p: embedder.pool(last, batch["attention_mask"], p) for p in POOLINGS}
    return layout(batch, hidden, pooled, unit(pooled[pooling or embedder.pooling]))


def config_hash(config) -> str:
    """A short hash of the sizes and eps a BertConfig holds: two dumps of one model share it."""
    text = json.dumps(asdict(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _vocab(directory) -> list | None:
    """The tokenizer's tokens by id (tokenizer.json's WordPiece vocabulary and added tokens), or None."""
    from ..st_config import read_json
    try:
        spec = read_json(Path(directory) / "tokenizer.json", {})
    except BgeRefError:
        return None
    table = dict((spec.get("model") or {}).get("vocab") or {})
    table.update({t["content"]: t["id"] for t in spec.get("added_tokens") or [] if "content" in t and "id" in t})
    if not table:
        return None
    vocab = [None] * (max(table.values()) + 1)
    for token, i in table.items():
        vocab[i] = token
    return vocab


def reference(model, texts, dtype="float64") -> tuple[dict, dict]:
    """(tensors, metadata) of a reference run of `texts`: every stage of bge_ref in `dtype`, one padded batch."""
    from .. import __version__
    from ..embedder import Embedder, load
    if str(dtype) not in ("float32", "float64"):
        raise InputError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    ours = model if isinstance(model, Embedder) else load(model, dtype=dtype)
    texts = list(texts)
    batch = ours.tokenize(texts)
    run = run_ours(ours, batch)
    vocab = _vocab(ours.name)
    meta = {"format": FORMAT, "model": ours.name, "config": json.dumps(asdict(ours.config)),
            "config_hash": config_hash(ours.config), "bge_ref_version": __version__, "dtype": str(ours.dtype),
            "pooling": ours.pooling, "max_length": str(ours.max_length),
            "texts": json.dumps(texts, ensure_ascii=False)} | ({"vocab": json.dumps(vocab, ensure_ascii=False)} if vocab else {})
    return run, meta


def write_reference(path, model, texts, dtype="float64") -> tuple[dict, dict]:
    """Write reference(model, texts, dtype) to a safetensors file; returns its (tensors, metadata)."""
    from ..dump import write_safetensors
    run, meta = reference(model, texts, dtype)
    write_safetensors(path, run, meta)
    return run, meta


def compare_dumps(ref_path, their_path, tol="float32") -> Report:
    """`bge-ref compare`: a reference dump against theirs (.safetensors or .npz)."""
    from ..dump import read_dump
    tols, label = tolerance(tol)
    ref, ref_meta = read_dump(ref_path)
    theirs, their_meta = read_dump(their_path)
    a, b = ref_meta.get("config_hash"), their_meta.get("config_hash")
    if a and b and a != b:
        raise InputError(f"{their_path} was written for another model config (config_hash {b}, "
                         f"{their_meta.get('model', '?')}) than {ref_path} ({a}, {ref_meta.get('model', '?')})")
    try:
        vocab = json.loads(ref_meta["vocab"]) if "vocab" in ref_meta else None
    except json.JSONDecodeError:
        vocab = None
    meta = {"reference": str(ref_path), "theirs": str(their_path), "tolerance": label,
            **{k: ref_meta[k] for k in ("model", "dtype", "config_hash") if k in ref_meta}}
    try:
        return compare_stages(ref, theirs, tols, vocab=vocab, meta=meta)
    except InputError as e:
        raise InputError(f"{their_path} vs {ref_path}: {e}") from None
