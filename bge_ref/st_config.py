"""What a checkpoint's sentence-transformers files declare: pooling, normalization, max sequence length.

sentence-transformers saves a model as a list of modules (modules.json: Transformer, Pooling,
Normalize), each with its own small config file. bge_ref reads only the three facts an encoder
needs from them; a checkpoint without them gets bge's official usage ([CLS], then L2-normalize).
"""
from __future__ import annotations

from pathlib import Path

from . import jsonfile
from .errors import CheckpointError


def read_json(path: Path, default=None, kind=None):
    """A small JSON file of the checkpoint, or `default` when it is absent. With `kind` (dict or
    list), a file holding another JSON type is a CheckpointError naming it."""
    if not path.is_file():
        return default
    value = jsonfile.read(path)
    if kind is not None and not isinstance(value, kind):
        raise CheckpointError(f"{path}: expected a JSON {'object' if kind is dict else 'array'}, "
                              f"got {type(value).__name__}")
    return value


def sentence_transformers_defaults(directory: Path) -> tuple[str, bool]:
    """(pooling, normalize) declared by the checkpoint's sentence-transformers modules.

    Without a modules.json the answer is bge's official usage: the [CLS] vector, L2-normalized.
    """
    modules = read_json(directory / "modules.json", kind=list)
    if modules is None:
        return "cls", True
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
    normalize = "Normalize" in kinds
    pooling = "cls"
    if "Pooling" in kinds:
        sub = kinds["Pooling"].get("path", "")
        if not isinstance(sub, str):
            raise CheckpointError(f"{directory / 'modules.json'}: the Pooling module's path must be a string, "
                                  f"got {jsonfile.show(sub)}")
        cfg = read_json(directory / sub / "config.json", {}, kind=dict)
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
        value = read_json(directory / name, {}, kind=dict).get(key)
        if type(value) is int and 0 < value < 1_000_000:  # transformers writes 1e30 for "no limit"
            return min(value, max_positions)
    return max_positions
