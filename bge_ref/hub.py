"""Finding a checkpoint: a local directory, or a hub repo id fetched through huggingface_hub's cache."""
from __future__ import annotations

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
