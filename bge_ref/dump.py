"""Activation dumps: named tensors plus string metadata in safetensors (written here) or .npz (read).

A dump is what `bge-ref reference` writes and what `bge-ref compare` reads: {name: array} with the
names of `verify.py`'s layout (input_ids, attention_mask, hidden_states.0 .. hidden_states.L,
last_hidden_state, pooled.cls, pooled.mean, embedding) and, in safetensors, a `__metadata__` of
str -> str (model, config hash, texts, ...). The safetensors file is written by hand so that writing
a reference needs nothing but NumPy:

    8 bytes   little-endian u64: N, the header's length
    N bytes   JSON: {name: {"dtype": "F64", "shape": [..], "data_offsets": [begin, end]}, ...,
                     "__metadata__": {str: str}}, padded with spaces to a multiple of 8
    the rest  each tensor's bytes, C order, little-endian, at [begin, end) from the end of the header
"""
from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import numpy as np

from .checkpoint import read_safetensors
from .errors import InputError

_TAGS = {"f8": "F64", "f4": "F32", "f2": "F16", "i8": "I64", "i4": "I32", "i2": "I16", "i1": "I8", "u1": "U8",
         "b1": "BOOL"}


def write_safetensors(path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None):
    """Write {name: array} (and str metadata) as a safetensors file any safetensors reader opens."""
    header, offset, arrays = {}, 0, []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        tag = _TAGS.get(a.dtype.kind + str(a.dtype.itemsize))
        if tag is None:
            raise InputError(f"{name}: dtype {a.dtype} cannot be written to safetensors")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": tag, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)                      # the tensors start 8-byte aligned
    try:
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for a in arrays:
                f.write(a.tobytes())
    except OSError as e:
        raise InputError(f"{path}: cannot write ({e})") from None


def read_dump(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """({name: array}, metadata) of a .safetensors or .npz dump; bfloat16 is widened to float32.
    An unreadable file is an InputError naming it (a CheckpointError from the safetensors parser is
    turned into one, as a dump is input here, not a checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix == ".npz" or zipfile.is_zipfile(path):
        return _read_npz(path), {}
    from .errors import CheckpointError
    try:
        tensors = {name: _widen(tag, a) for name, (tag, a) in read_safetensors(path).items()}
        with open(path, "rb") as f:                     # the parser has checked the header already
            (n,) = struct.unpack("<Q", f.read(8))
            meta = json.loads(f.read(n)).get("__metadata__") or {}
    except CheckpointError as e:
        raise InputError(f"not a readable .safetensors or .npz dump: {e}") from None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise InputError(f"{path}: __metadata__ must map strings to strings")
    return tensors, meta


def _widen(tag, a):
    if tag == "BF16":                                   # the top 16 bits of a float32
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a


def _read_npz(path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"{path}: not a readable .npz file ({e})") from None
