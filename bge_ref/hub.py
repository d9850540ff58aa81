"""Finding a checkpoint: a local directory, or a hub repo id fetched through huggingface_hub's cache."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import CheckpointError, InputError

DEFAULT_MODEL = "BAAI/bge-large-en-v1.5"
# The files an encoder for embeddings needs; nothing else is downloaded.
FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "sentence_bert_config.json", "modules.json", "1_Pooling/config.json"]


def resolve(model: str | os.PathLike | None = None, revision: str | None = None) -> Path:
    """Return the local directory holding `model` (default: $BGE_REF_MODEL, else bge-large-en-v1.5)."""
    if model is None:
        model = os.environ.get("BGE_REF_MODEL") or DEFAULT_MODEL
    if not isinstance(model, (str, os.PathLike)) or not os.fspath(model):
        raise InputError(f"model must be a directory or a hub repo id (str or path), got {model!r}")
    model = os.fspath(model)
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1 or os.sep != "/" and os.sep in model
    if looks_local or path.exists():
        raise CheckpointError(f"{model}: not a checkpoint directory (it does not exist or is not a directory)")
    return _download(model, revision)


def _download(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (HFValidationError, LocalEntryNotFoundError,
                                            RepositoryNotFoundError, RevisionNotFoundError)
    except ImportError as e:  # pragma: no cover - huggingface-hub is a runtime dependency
        raise CheckpointError(f"{repo_id}: loading by hub id needs huggingface-hub ({e})") from None
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=FILES))
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{repo_id}: not in the local Hugging Face cache and the hub cannot be reached "
            f"(offline, or HF_HUB_OFFLINE=1). Download it once where the hub is reachable, or pass a "
            f"local directory holding config.json, model.safetensors and tokenizer.json") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError) as e:
        raise CheckpointError(f"{repo_id} (revision {revision or 'main'}): {type(e).__name__}: "
                              f"{str(e).splitlines()[0]}") from None
    except OSError as e:  # network errors that huggingface_hub lets through
        raise CheckpointError(f"{repo_id}: download failed ({e}); pass a local directory instead") from None


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
