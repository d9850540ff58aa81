"""Reading a checkpoint: safetensors memory-mapped, HF names mapped to bge_ref names, strictly checked.

All weight-name mapping and every transpose live here, in `_embedding_table` and `_layer_table`.
torch's nn.Linear stores weight as (out, in); model.py wants (in, out) so that it can do `x @ w + b`.
Each is copied into a row-major (in, out) array (`_row_major`) rather than kept as a transposed view
of the mapped file: gemm.py sums K in chunks of 128 rows of w, which in row-major order are one
contiguous block of memory, where the view scatters them in 512-byte pieces across the matrix (one
query at bge-large size, bound by reading the weights: 424 ms -> 300 ms). Q, K and V are fused into
one (D, 3D) matrix so attention does one matmul instead of three (as picoGPT's c_attn; model.py
splits the result in three). The mapped pages are released once copied. The parameters
come out nested per block, {"w", "b"} for a linear layer and {"g", "b"} for a LayerNorm (the layout
is drawn at the top of model.py).

safetensors is parsed here directly (an 8-byte little-endian header length, a JSON header of
{name: {dtype, shape, data_offsets}}, then the raw bytes) because memory-mapping needs the offsets,
and a parser of our own can say exactly which tensor a corrupt file gets wrong.
"""
from __future__ import annotations

import math
import mmap
import re
import struct
from pathlib import Path

import numpy as np

from . import gemm, jsonfile, threads
from .config import BertConfig
from .errors import CheckpointError

_DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
           "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
           "U8": np.dtype("u1"), "BOOL": np.dtype("?")}
_FLOATS = ("F64", "F32", "F16", "BF16")
# Tensors a BertModel checkpoint may carry that an embedding encoder does not use.
_IGNORED_PREFIXES = ("pooler.", "cls.", "embeddings.position_ids", "classifier.", "qa_outputs.")


def read_safetensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Map every tensor of a .safetensors file: {name: (dtype tag, read-only array view)}.
    Only the header is read; the views touch no tensor data until they are used."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: file is {size} bytes, too short to be safetensors (truncated download?)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise CheckpointError(f"{path}: header claims {n} bytes but the file has {size - 8} after the length "
                                      "(truncated or not a safetensors file)")
            raw_header = f.read(n)
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > 8 + n else b""
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read safetensors header ({e})") from None
    header = jsonfile.parse(raw_header, path, "cannot read safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    start, data_len = 8 + n, size - 8 - n
    tensors, spans = {}, []
    for name, info in header.items():
        tag, shape, (b, e) = _header_entry(path, name, info)
        dt = _DTYPES[tag]
        want = math.prod(shape) * dt.itemsize  # Python ints: a huge shape cannot wrap around
        if not 0 <= b <= e <= data_len:
            raise CheckpointError(f"{path}: tensor {jsonfile.show(name)} claims bytes [{b}, {e}) but the data "
                                  f"section has {data_len} bytes (truncated or corrupt file)")
        if e - b != want:
            raise CheckpointError(f"{path}: tensor {jsonfile.show(name)} has {e - b} bytes for shape {shape} {tag} "
                                  f"({want} needed)")
        spans.append((b, e, name))
        arr = np.frombuffer(buf, dtype=dt, count=want // dt.itemsize, offset=start + b) if want else np.zeros(0, dt)
        tensors[name] = (tag, arr.reshape(shape))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CheckpointError(f"{path}: tensors {jsonfile.show(n0)} and {jsonfile.show(n1)} overlap in the file (corrupt header)")
    return tensors


def _header_entry(path, name, info) -> tuple[str, list[int], tuple[int, int]]:
    """(dtype tag, shape, (begin, end)) of one header entry, every field of the right JSON type."""
    def integers(value):
        return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)

    ok = (isinstance(info, dict) and isinstance(info.get("dtype"), str) and integers(info.get("shape"))
          and integers(info.get("data_offsets")) and len(info["data_offsets"]) == 2)
    if not ok:
        raise CheckpointError(f"{path}: tensor {jsonfile.show(name)} has a malformed header entry "
                              f"{jsonfile.show(info)} (expected dtype, shape and data_offsets)")
    if info["dtype"] not in _DTYPES:
        raise CheckpointError(f"{path}: tensor {jsonfile.show(name)} has unsupported dtype {jsonfile.show(info['dtype'])}")
    return info["dtype"], info["shape"], tuple(info["data_offsets"])


# Tensor shapes are written in config.json's field names, so that a mismatch names the field.
V, D, F, P, T = "vocab_size", "hidden_size", "intermediate_size", "max_position_embeddings", "type_vocab_size"


def _embedding_table():
    """bge_ref parameter path -> (HF name, HF shape in config fields) for BertEmbeddings."""
    return {
        "word": ("embeddings.word_embeddings.weight", (V, D)),
        "position": ("embeddings.position_embeddings.weight", (P, D)),
        "token_type": ("embeddings.token_type_embeddings.weight", (T, D)),
        "ln.g": ("embeddings.LayerNorm.weight", (D,)),
        "ln.b": ("embeddings.LayerNorm.bias", (D,)),
    }


def _layer_table(i: int):
    """bge_ref parameter path -> (HF name, HF shape in config fields) for encoder layer i. 2-D weights
    are transposed on load; q, k and v are fused into attn.qkv afterwards."""
    p = f"encoder.layer.{i}."
    return {
        "q.w": (p + "attention.self.query.weight", (D, D)), "q.b": (p + "attention.self.query.bias", (D,)),
        "k.w": (p + "attention.self.key.weight", (D, D)), "k.b": (p + "attention.self.key.bias", (D,)),
        "v.w": (p + "attention.self.value.weight", (D, D)), "v.b": (p + "attention.self.value.bias", (D,)),
        "attn_out.dense.w": (p + "attention.output.dense.weight", (D, D)),
        "attn_out.dense.b": (p + "attention.output.dense.bias", (D,)),
        "attn_out.ln.g": (p + "attention.output.LayerNorm.weight", (D,)),
        "attn_out.ln.b": (p + "attention.output.LayerNorm.bias", (D,)),
        "inter.dense.w": (p + "intermediate.dense.weight", (F, D)),
        "inter.dense.b": (p + "intermediate.dense.bias", (F,)),
        "out.dense.w": (p + "output.dense.weight", (D, F)), "out.dense.b": (p + "output.dense.bias", (D,)),
        "out.ln.g": (p + "output.LayerNorm.weight", (D,)), "out.ln.b": (p + "output.LayerNorm.bias", (D,)),
    }


def _check_layer_count(raw: dict, config: BertConfig, path: Path):
    """config.json's num_hidden_layers against the layers the file holds, before a table is built for
    each of them (a corrupt count of 10^9 must cost nothing)."""
    found = {int(m.group(1)) for k in raw if (m := re.match(r"encoder\.layer\.(\d+)\.", k))}
    if len(found) < config.num_hidden_layers:  # more layers are named by _check_against_header
        raise CheckpointError(f"{path}: holds {len(found)} encoder layers, but config.json's num_hidden_layers "
                              f"is {config.num_hidden_layers}; config.json and the weights do not match")


def _check_against_header(raw: dict, tables: list[dict], config: BertConfig, path: Path):
    """Every tensor the config implies is in the file, as a float, with the config's shape; nothing
    else is. Only the header is read: a mismatch is found before any tensor data is touched."""
    wanted = {hf: dims for t in tables for hf, dims in t.values()}
    missing = sorted(wanted.keys() - raw.keys())
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{path}: missing tensor(s) {', '.join(missing[:5])}{more} "
                              f"(config.json says {config.num_hidden_layers} layers of size {config.hidden_size})")
    unexpected = sorted(k for k in raw.keys() - wanted.keys() if not k.startswith(_IGNORED_PREFIXES))
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensor(s) {', '.join(k[:100] for k in unexpected[:5])}; "
                              "is this a BertModel checkpoint with this config.json?")
    for hf, dims in wanted.items():
        tag, arr = raw[hf]
        if tag not in _FLOATS:
            raise CheckpointError(f"{path}: tensor {hf!r} has dtype {tag}, expected a float type")
        shape = tuple(getattr(config, f) for f in dims)
        if arr.shape != shape:
            fields = ", ".join(f"{f} {getattr(config, f)}" for f in dict.fromkeys(dims))
            raise CheckpointError(f"{path}: tensor {hf!r} has shape {arr.shape}, but config.json ({fields}) "
                                  f"implies {shape}")


def _nest(flat: dict) -> dict:
    """{"a.b.c": v} -> {"a": {"b": {"c": v}}}: the nested parameter dicts model.py takes with **."""
    out = {}
    for path, v in flat.items():
        *parents, leaf = path.split(".")
        d = out
        for key in parents:
            d = d.setdefault(key, {})
        d[leaf] = v
    return out


def _hf_name(key: str) -> str:
    """Canonical HF name: no task-model `bert.` prefix, TF-era gamma/beta spelled weight/bias."""
    key = key.removeprefix("bert.")
    if "LayerNorm." in key:
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    return key


def _release_mapped_pages(arr):
    """Drop a memory-mapped array's pages from this process once its data has been copied (or only
    checked): they stay in the OS page cache, but no longer count in this process's memory twice."""
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    base = base.obj if isinstance(base, memoryview) else base
    if not isinstance(base, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = arr.ctypes.data - np.frombuffer(base, np.uint8, count=1).ctypes.data
    lo = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE                      # whole pages inside the tensor only
    hi = (start + arr.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if hi > lo:
        base.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


TILE = 128  # rows and columns of a block in _row_major's transposed copy


def _row_major(weights) -> np.ndarray:
    """The (out_i, in) matrices transposed and side by side, as one row-major (in, sum of out_i) array;
    each source's mapped pages are released once copied.

    float32 is copied by OpenBLAS's somatcopy (gemm.transpose_into: 2.8 ms per 16 MB), anything
    else in TILE x TILE tiles: a transposed copy element by element strides across the whole source
    for every row it writes (43 ms per 16 MB); tiles stay in the cache (12 ms)."""
    rows = weights[0].shape[1]
    out = np.empty((rows, sum(w.shape[0] for w in weights)), weights[0].dtype)          # (in, out)
    col = 0
    for w in weights:                                                                   # (out_i, in)
        dst = out[:, col:col + w.shape[0]]                                              # (in, out_i)
        if not gemm.transpose_into(w, dst):
            for i in range(0, w.shape[0], TILE):
                for j in range(0, rows, TILE):
                    dst[j:j + TILE, i:i + TILE] = w[i:i + TILE, j:j + TILE].T
        col += w.shape[0]
        _release_mapped_pages(w)
    return out


def load_params(path: str | Path, config: BertConfig, dtype=np.float32, weights_dtype=None) -> dict:
    """Load model.safetensors into {"embeddings": {...}, "layers": [{...}] * L}, checked and transposed.

    weights_dtype="float16" stores the matrices (not biases, LayerNorms or the word table) as float16
    copies, half the memory; each is widened to the compute dtype at its matmul (fast.py: one matrix
    at a time, just before it; model.py: by NumPy's type promotion).
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    store = np.dtype(weights_dtype) if weights_dtype is not None else dtype
    raw = {_hf_name(k): v for k, v in read_safetensors(path).items()}
    _check_layer_count(raw, config, path)
    tables = [_embedding_table()] + [_layer_table(i) for i in range(config.num_hidden_layers)]
    _check_against_header(raw, tables, config, path)

    def get(hf):
        tag, arr = raw[hf]
        if tag == "BF16":  # bfloat16 is the top half of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        if not np.isfinite(arr).all():
            raise CheckpointError(f"{path}: tensor {hf!r} contains NaN or Inf")
        mapped, word_table = arr, hf == "embeddings.word_embeddings.weight"
        narrow = store if arr.ndim == 2 and not word_table else dtype
        arr = arr.astype(narrow, copy=False)            # float32 file + float32 compute: still the mapped view
        if arr is not mapped or word_table:
            _release_mapped_pages(mapped)               # copied; or only a few rows of it will be gathered
        if arr is not mapped and not np.isfinite(arr).all():
            raise CheckpointError(f"{path}: tensor {hf!r} does not fit in {narrow} (values beyond its range)")
        return arr

    def layer(table):
        t = {name: get(hf) for name, (hf, _) in table.items()}
        q, k, v = t.pop("q.w"), t.pop("k.w"), t.pop("v.w")
        t["attn.qkv.w"] = _row_major([q, k, v])                                            # (D, 3D)
        t["attn.qkv.b"] = np.concatenate([t.pop("q.b"), t.pop("k.b"), t.pop("v.b")])     # (3D,)
        for name in ("attn_out.dense.w", "inter.dense.w", "out.dense.w"):
            t[name] = _row_major([t[name]])
        return _nest(t)

    emb = _nest({name: get(hf) for name, (hf, _) in tables[0].items()})
    # Reading every weight page (the NaN check) and the row-major copies are most of a load, so layers
    # are loaded on all cores. A bad tensor still raises the first error in layer order. (bge-large
    # size, warm page cache: 0.6-0.8 s on the Intel Xeon, most of it the first touch of the copies'
    # fresh memory; a fresh process's load plus one query costs what it did with views, ~1.1 s.)
    layers = threads.run(layer, [(table,) for table in tables[1:]])
    return {"embeddings": emb, "layers": layers}
