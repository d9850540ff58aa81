"""What a checkpoint's sentence-transformers files declare: pooling, normalization, max sequence length.

sentence-transformers saves a model as a list of modules (modules.json: Transformer, Pooling,
Normalize), each with its own small config file. bge_ref reads only the three facts an encoder
needs from them; a checkpoint without them gets bge's official usage ([CLS], then L2-normalize).
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import CheckpointError


def read_json(path: Path, default=None):
    """A small JSON file of the checkpoint, or `default` when it is absent."""
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def sentence_transformers_defaults(directory: Path) -> tuple[str, bool]:
    """(pooling, normalize) declared by the checkpoint's sentence-transformers modules.

    Without a modules.json the answer is bge's official usage: the [CLS] vector, L2-normalized.
    """
    modules = read_json(directory / "modules.json")
    if not isinstance(modules, list):
        return "cls", True
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
    normalize = "Normalize" in kinds
    pooling = "cls"
    if "Pooling" in kinds:
        cfg = read_json(directory / kinds["Pooling"].get("path", "") / "config.json", {})
        if cfg.get("pooling_mode_mean_tokens"):
            pooling = "mean"
        elif not cfg.get("pooling_mode_cls_token"):
            modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
            if modes:
                raise CheckpointError(f"{directory}: pooling {modes} is not supported (only CLS and mean)")
    return pooling, normalize


def max_seq_length(directory: Path, max_positions: int) -> int:
    """The checkpoint's declared sequence limit, capped by its position table."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        value = (read_json(directory / name) or {}).get(key)
        if isinstance(value, int) and 0 < value < 1_000_000:  # transformers writes 1e30 for "no limit"
            return min(value, max_positions)
    return max_positions
