"""The job's files beside OUTPUT.npy: the parts directory of committed chunks, its manifest, and the
assembly of the chunks into the output. Every file is written to a temporary name and renamed, so it
is on disk whole or not at all."""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BgeRefError


class CorpusError(BgeRefError):
    """The output is in a state this job must not touch: another run's, or not ours."""


@dataclass(frozen=True)
class Paths:
    out: Path

    @property
    def parts(self) -> Path: return self.out.with_name(self.out.name + ".parts")
    @property
    def manifest(self) -> Path: return self.out.with_suffix(".manifest.json")
    @property
    def lines(self) -> Path: return self.out.with_suffix(".lines.npy")
    @property
    def bad(self) -> Path: return self.out.with_suffix(".bad.jsonl")

    def remove_all(self):
        shutil.rmtree(self.parts, ignore_errors=True)
        for p in (self.out, self.manifest, self.lines, self.bad):
            p.unlink(missing_ok=True)


CHUNK_NAME = re.compile(r"w(\d+)-c(\d+)-of(\d+)-n(\d+)\.npz")


def chunk_name(w, j, m, n) -> str:
    return f"w{w:07d}-c{j:04d}-of{m:04d}-n{n:04d}.npz"


def committed(parts: Path) -> dict[int, dict[int, int]]:
    """{window: {chunk: texts}} of the chunks on disk, and for each window its chunk count under key -1."""
    done = {}
    for p in parts.iterdir():
        m = CHUNK_NAME.fullmatch(p.name)
        if m:
            w, j, of, n = map(int, m.groups())
            done.setdefault(w, {-1: of})[j] = n
    return done


def window_complete(chunks: dict[int, int] | None) -> bool:
    return bool(chunks) and len(chunks) - 1 == chunks[-1]


def save_chunk(path: Path, index: np.ndarray, vectors: np.ndarray):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, index=index, vectors=vectors)
    os.replace(tmp, path)  # a killed job leaves a whole chunk or none


def write_json_atomic(path: Path, obj):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def assemble(parts: Path, out_tmp: Path, n: int, dim: int, window: int):
    """Write the committed chunks into one (n, dim) float32 .npy, a window at a time, checking every row
    was written once: memory holds one window, not the output."""
    done = committed(parts)
    with open(out_tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, dim)})
        for w, lo in enumerate(range(0, n, window)):
            chunks = done.get(w)
            if not window_complete(chunks):
                raise CorpusError(f"{parts}: window {w} is not complete; rerun the command to finish it")
            block = np.empty((min(window, n - lo), dim), dtype=np.float32)
            filled = np.zeros(len(block), dtype=np.int64)
            for j in range(chunks[-1]):
                with np.load(parts / chunk_name(w, j, chunks[-1], chunks[j])) as z:
                    rows = z["index"] - lo
                    block[rows] = z["vectors"]
                    np.add.at(filled, rows, 1)
            if not (filled == 1).all():
                raise CorpusError(f"{parts}: window {w}'s chunks do not cover its rows exactly once")
            f.write(block.tobytes())
        f.flush()
        os.fsync(f.fileno())


def lines_npy(parts: Path, dest: Path, n: int):
    raw = np.fromfile(parts / "lines.bin", dtype=np.int64)
    assert len(raw) == n
    tmp = dest.with_name(f".{dest.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, raw)
    os.replace(tmp, dest)
