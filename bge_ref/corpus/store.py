"""The job's files beside OUTPUT.npy: the parts directory of committed chunks, its manifest, and the
assembly of the chunks into the output. Every file is written to a temporary name and renamed, so it
is on disk whole or not at all."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BgeRefError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


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
    @property
    def lock(self) -> Path: return self.out.with_name(self.out.name + ".lock")

    def remove_all(self):
        shutil.rmtree(self.parts, ignore_errors=True)
        for p in (self.out, self.manifest, self.lines, self.bad):
            p.unlink(missing_ok=True)


@contextmanager
def locked(paths: Paths):
    """Hold an advisory lock (flock) on OUTPUT.npy.lock while a job works on OUTPUT, so that a second
    job on the same output fails at once, naming the first; the lock file holds the holder's pid."""
    if fcntl is None:  # not POSIX: no advisory locks to take
        yield
        return
    while True:
        fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise CorpusError(f"{paths.out} is being written by another embed-corpus job"
                              f"{f' (pid {holder})' if holder.isdigit() else ''}: {paths.lock} is locked; "
                              "wait for it to end, or choose another output") from None
        try:  # the job before us may have removed the file we opened: lock the one on disk
            same = os.stat(paths.lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        paths.lock.unlink(missing_ok=True)  # while still locked: a waiting job then retries on a new file
        os.close(fd)


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


def chunk_checksum(index: np.ndarray, vectors: np.ndarray) -> str:
    return hashlib.sha256(index.tobytes() + vectors.tobytes()).hexdigest()


def save_chunk(path: Path, index: np.ndarray, vectors: np.ndarray):
    """Commit a chunk: its rows, vectors and their sha256, on disk whole or not at all."""
    index = np.ascontiguousarray(index, dtype=np.int64)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    sha = np.array(chunk_checksum(index, vectors))
    write_atomic(path, lambda f: np.savez(f, index=index, vectors=vectors, sha256=sha))


class BadChunk(Exception):
    """A chunk file that cannot be used: truncated, empty, altered, or not the rows its name says."""


def load_chunk(path: Path, texts: int, dim: int, rows: range) -> tuple[np.ndarray, np.ndarray]:
    """(index, vectors) of a committed chunk, checked against its sha256 and its name; else BadChunk."""
    try:
        with np.load(path) as z:
            index, vectors, sha = z["index"], z["vectors"], str(z["sha256"])
    except Exception as e:  # truncated or empty (not a zip), a member missing or damaged
        raise BadChunk(f"unreadable ({type(e).__name__}: {e})") from None
    if index.dtype != np.int64 or index.shape != (texts,) or vectors.dtype != np.float32 or vectors.shape != (texts, dim):
        raise BadChunk(f"holds {index.dtype} {index.shape} rows and {vectors.dtype} {vectors.shape} vectors, "
                       f"not the {texts} rows of {dim} float32 its name says")
    if chunk_checksum(index, vectors) != sha:
        raise BadChunk("its contents differ from the sha256 written with them")
    if texts and (index.min() < rows.start or index.max() >= rows.stop):
        raise BadChunk(f"its rows are outside its window ({rows.start}..{rows.stop - 1})")
    return index, vectors


def check_committed(parts: Path, dim: int, window: int, n: int, report) -> dict[int, dict[int, int]]:
    """committed(parts) after removing every chunk that fails load_chunk (report(name, why) for each)
    and any temporary file an interrupted write left."""
    for p in parts.glob(".*.tmp"):
        p.unlink(missing_ok=True)
    for w, chunks in committed(parts).items():
        for j, texts in chunks.items():
            if j >= 0:
                _check(parts, chunk_name(w, j, chunks[-1], texts), texts, dim, range(w * window, min(n, (w + 1) * window)), report)
    return committed(parts)


def _check(parts, name, texts, dim, rows, report):
    try:
        load_chunk(parts / name, texts, dim, rows)
    except BadChunk as e:
        (parts / name).unlink(missing_ok=True)
        report(name, str(e))


def write_atomic(path: Path, write):
    """write(file) into a temporary file, fsync it, rename it to path, fsync the directory: after a
    crash, path is the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C or a full disk mid-write: leave no half file behind
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj):
    write_atomic(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode("utf-8")))


def read_manifest(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def assemble(parts: Path, out_tmp: Path, n: int, dim: int, window: int) -> list[tuple[str, str]]:
    """Write the committed chunks into one (n, dim) float32 .npy, a window at a time, checking each
    chunk's sha256 and that every row was written once: memory holds one window, not the output.
    Returns the chunks that failed their check, removed (name, why): then out_tmp is not complete."""
    done, bad = committed(parts), []
    with open(out_tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, dim)})
        for w, lo in enumerate(range(0, n, window)):
            chunks = done.get(w)
            if not window_complete(chunks):
                raise CorpusError(f"{parts}: window {w} is not complete; rerun the command to finish it")
            block = np.empty((min(window, n - lo), dim), dtype=np.float32)
            filled = np.zeros(len(block), dtype=np.int64)
            for j in range(chunks[-1]):
                name = chunk_name(w, j, chunks[-1], chunks[j])
                try:
                    index, vectors = load_chunk(parts / name, chunks[j], dim, range(lo, lo + len(block)))
                except BadChunk as e:
                    (parts / name).unlink(missing_ok=True)
                    bad.append((name, str(e)))
                    continue
                block[index - lo] = vectors
                np.add.at(filled, index - lo, 1)
            if bad:
                continue  # keep checking the other windows' chunks, write nothing more
            if not (filled == 1).all():
                raise CorpusError(f"{parts}: window {w}'s chunks do not cover its rows exactly once")
            f.write(block.tobytes())
        f.flush()
        os.fsync(f.fileno())
    return bad


def lines_npy(parts: Path, dest: Path, n: int):
    raw = np.fromfile(parts / "lines.bin", dtype=np.int64)
    if len(raw) != n:  # the scan wrote one per kept text
        raise CorpusError(f"{parts / 'lines.bin'}: {len(raw)} line numbers for {n} rows; rerun with --overwrite")
    write_atomic(dest, lambda f: np.save(f, raw))
