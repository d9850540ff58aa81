"""A checkpoint's JSON files (config.json, tokenizer.json, the sentence-transformers files, the
safetensors header), parsed so that every failure is a CheckpointError naming the file."""
from __future__ import annotations

import json
import reprlib
from pathlib import Path

from .errors import CheckpointError

_SHOW = reprlib.Repr()
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlevel = 60, 60, 3


def show(value) -> str:
    """A value for an error message: short, and safe for deeply nested JSON."""
    return _SHOW.repr(value)


def parse(data: str | bytes, path: Path, what: str = ""):
    """json.loads, with a malformed or too deeply nested document a CheckpointError naming `path`
    (and `what` of it was read). Python's json reads nesting recursively: a deep document is a
    RecursionError there, not a value."""
    where = f"{path}: {what}: " if what else f"{path}: "
    try:
        return json.loads(data)
    except RecursionError:
        raise CheckpointError(f"{where}JSON nested too deeply to be a checkpoint file") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise CheckpointError(f"{where}not valid JSON ({e})") from None


def read(path: Path):
    """A JSON file of the checkpoint, parsed (see parse)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    return parse(data, path)
