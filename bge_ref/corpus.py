"""`bge-ref embed-corpus`: embed a corpus of any size into one .npy, resumably, here or on a Ray cluster.

The job reads the input twice. First a scan checks every record (so a bad line stops the job before
any work, naming the file and line), counts the texts and notes where each window of `window` texts
starts. Then each window is read again, its texts sorted by token length and cut into batches (as
encode() does, so the rows equal encode()'s bit for bit), and the batches are grouped into small
chunks, each committed to disk atomically when done. The sort spans a window, the commit a chunk:
small chunks cost no padding. Only a window's texts are ever in memory.

On disk, for OUTPUT = corpus.npy:

    corpus.npy             float32 (n, D): row i is the i-th text of the input. Written last, by a
                           rename: if it exists, it is complete.
    corpus.manifest.json   what was embedded: the input (bytes, sha256), the model (sha256 of its
                           weights, config and tokenizer), pooling, normalization, prompt, n and D.
    corpus.lines.npy       with --skip-bad only: int64 (n,), the input line (row for .parquet,
                           1-based) of each row.
    corpus.bad.jsonl       with --skip-bad only: {"line": .., "error": ..} per skipped record.
    corpus.npy.parts/      while the job runs: manifest.json, and one file per committed chunk,
                           w<window>-c<chunk>-of<chunks>-n<texts>.npz (int64 "index" rows of the
                           output, float32 "vectors"). Removed once corpus.npy is in place.

A rerun continues from the committed chunks (same chunks, same batches: the same bits); a rerun after
completion does nothing; a different input, model or embedding option is refused (--overwrite starts
over). With --ray, Ray Data reads the windows and a pool of actors embeds them into the same chunk
files, which the driver assembles as a local run does.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from array import array
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from .embedder import QUERY_INSTRUCTION, TOKENIZE_CHUNK, POOLINGS
from .errors import BgeRefError, InputError

FORMAT = 1                # of the manifest and the parts directory
CHUNK_TOKENS = 8192       # padded tokens per committed chunk: ~30 s of bge-large on 2 cores
CHUNK_TEXTS = 1024        # and at most this many texts
KINDS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
PARQUET_EXTRA = 'pip install "bge-ref[parquet]"'
RAY_EXTRA = 'pip install "bge-ref[ray]"'


class CorpusError(BgeRefError):
    """The output is in a state this job must not touch: another run's, or not ours."""


# -- reading the input ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    path: Path
    kind: str   # "txt", "jsonl" or "parquet"
    field: str  # the JSON field or parquet column holding the text (unused for .txt)

    def where(self, number: int) -> str:
        return f"{self.path}, {'row' if self.kind == 'parquet' else 'line'} {number}"


def open_source(path, field="text") -> Source:
    path = Path(path)
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{path}: unknown input format {path.suffix!r}; give a .txt (one text per line), "
                         ".jsonl or .parquet file")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    src = Source(path.resolve(), kind, field)
    if kind == "parquet":
        names = _parquet(src.path).schema_arrow.names
        if field not in names:
            raise InputError(f"{path}: no column {field!r} (columns: {', '.join(names)}); pass --text-field")
    return src


def _parquet(path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading .parquet needs pyarrow: {PARQUET_EXTRA}") from None
    return pq.ParquetFile(path)


def records(src: Source, offset: int = 0, number: int = 1):
    """(number, offset, text, error) for each record from `offset` on: number is the 1-based line
    (or parquet row), offset where the record starts (a byte, or a row for parquet); exactly one of
    text and error is None."""
    if src.kind == "parquet":
        yield from _parquet_records(src, offset)
        return
    with open(src.path, "rb") as f:
        f.seek(offset)
        for raw in f:
            yield (number, offset, *_parse_line(raw, src))
            number, offset = number + 1, offset + len(raw)


def _parse_line(raw: bytes, src: Source):
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        return None, f"not valid UTF-8 (byte {e.start}: {e.reason})"
    if src.kind == "txt":
        return _check_text(line, "the line")
    if not line.strip():
        return None, "blank line, not a JSON object"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e.msg} at column {e.colno})"
    if not isinstance(obj, dict):
        return None, f"not a JSON object (a {type(obj).__name__})"
    if src.field not in obj:
        return None, f"no {src.field!r} field (fields: {', '.join(map(repr, obj)) or 'none'}); pass --text-field"
    return _check_text(obj[src.field], f"field {src.field!r}")


def _check_text(text, what):
    if isinstance(text, bytes):  # a parquet binary column
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"{what} is not valid UTF-8 (byte {e.start}: {e.reason})"
    if text is None:
        return None, f"{what} is null"
    if not isinstance(text, str):
        return None, f"{what} is a {type(text).__name__}, not a string"
    if not text.strip():
        return None, f"{what} is empty" + (" or only whitespace" if text else "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate from a JSON "\\ud800" escape
        return None, f"{what} is not valid Unicode ({e.reason} at character {e.start})"
    return text, None


def _parquet_records(src: Source, start: int):
    f = _parquet(src.path)
    row, groups = 0, []
    for g in range(f.num_row_groups):  # start at the row group holding row `start`
        n = f.metadata.row_group(g).num_rows
        if row + n > start:
            groups.append(g)
        elif not groups:
            row += n
    for batch in f.iter_batches(batch_size=4096, row_groups=groups, columns=[src.field]):
        for value in batch.column(0).to_pylist():
            if row >= start:
                yield (row + 1, row, *_check_text(value, f"column {src.field!r}"))
            row += 1


@dataclass
class Scan:
    texts: int                            # records kept
    windows: list[tuple[int, int]]        # (offset, number) of each window's first text
    bad: int                              # records skipped (--skip-bad)


def scan(src: Source, window: int, skip_bad: bool, parts: Path | None = None) -> Scan:
    """Check every record, count the texts, find where each window starts. With skip_bad, bad records
    go to parts/bad.jsonl and each kept text's line number to parts/lines.bin; else the first raises."""
    kept, bad, windows = 0, 0, []
    lines = array("q")
    bad_file = open(parts / "bad.jsonl", "w", encoding="utf-8") if skip_bad else None
    lines_file = open(parts / "lines.bin", "wb") if skip_bad else None
    try:
        for number, offset, _, error in records(src):
            if error is not None:
                if not skip_bad:
                    raise InputError(f"{src.where(number)}: {error} (--skip-bad records bad lines in a side file instead)")
                bad_file.write(json.dumps({"line": number, "error": error}, ensure_ascii=False) + "\n")
                bad += 1
                continue
            if kept % window == 0:
                windows.append((offset, number))
            kept += 1
            if lines_file:
                lines.append(number)
                if len(lines) >= 65536:
                    lines_file.write(lines.tobytes())
                    del lines[:]
        if lines_file:
            lines_file.write(lines.tobytes())
    finally:
        for f in (bad_file, lines_file):
            if f:
                f.close()
    return Scan(kept, windows, bad)


def window_texts(src: Source, offset: int, number: int, count: int) -> list[str]:
    """The `count` good texts from the record at `offset` on (bad ones were recorded by the scan)."""
    return [t for _, _, t, _ in islice((r for r in records(src, offset, number) if r[3] is None), count)]


# -- identity of a job ---------------------------------------------------------------------------
def sha256_files(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode() + b"\0")
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def describe_model(model, pooling=None, query=False) -> dict:
    """What decides the vectors, without loading the weights: the checkpoint's sha256, D, pooling,
    normalization, prompt and max length."""
    from . import hub, st_config
    from .config import BertConfig
    directory = hub.resolve(model)
    missing = [n for n in MODEL_FILES if not (directory / n).is_file()]
    if missing:
        from .embedder import load
        load(directory)  # raises the CheckpointError naming what is missing
    config = BertConfig.from_json(directory / "config.json")
    default_pooling, normalize = st_config.sentence_transformers_defaults(directory)
    if pooling is not None and pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return {"sha256": sha256_files(directory / n for n in MODEL_FILES), "dim": config.hidden_size,
            "pooling": pooling or default_pooling, "normalize": normalize,
            "prompt": QUERY_INSTRUCTION if query else None,
            "max_length": st_config.max_seq_length(directory, config.max_position_embeddings),
            "directory": str(directory)}


# Manifest keys that must match for a rerun to reuse the work, and the layout keys that must match
# for committed chunks to be reused (they decide which texts share a batch).
IDENTITY = ("format", "input", "model", "pooling", "normalize", "prompt", "max_length", "skip_bad")
LAYOUT = ("window", "batch_size", "chunk_tokens", "chunk_texts")


def _mismatch(old: dict, new: dict, keys) -> str | None:
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):  # the input and the model: by content (and field)
            a, b = (a.get("sha256"), a.get("field")), (b.get("sha256"), b.get("field"))
        if a != b:
            what = {"input": "input", "model": "model"}.get(k, f"{k!r}")
            return f"{what} differs ({_short(a)} then, {_short(b)} now)"
    return None


def _short(v):
    if isinstance(v, tuple):  # (sha256, field)
        return f"sha256 {v[0][:12]}..." + (f", field {v[1]!r}" if v[1] else "") if v[0] else repr(None)
    return repr(v)


# -- chunks --------------------------------------------------------------------------------------
def plan_chunks(lengths, batch_size, chunk_tokens, chunk_texts) -> list[list[int]]:
    """A window's texts sorted by length (as encode sorts them), cut into batches, the batches grouped
    into chunks of at most chunk_tokens padded tokens (at least one batch) and chunk_texts texts."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    chunks, current, tokens = [], [], 0
    for s in range(0, len(order), batch_size):
        batch = order[s:s + batch_size]
        cost = len(batch) * lengths[batch[-1]]  # padded to its longest, which is its last
        if current and (tokens + cost > chunk_tokens or len(current) + len(batch) > chunk_texts):
            chunks.append(current)
            current, tokens = [], 0
        current, tokens = current + batch, tokens + cost
    return chunks + [current] if current else chunks


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


def embed_window(model, texts, w, parts: Path, job: dict):
    """Embed window w (its texts are output rows w * window ...) chunk by chunk, skipping chunks already
    on disk and committing each new one atomically. Yields (texts, tokens) per chunk embedded."""
    prompt = job["prompt"] or ""
    lengths = [len(e.ids) for e in model.tokenizer.encode([prompt + t for t in texts])]
    chunks = plan_chunks(lengths, job["batch_size"], job["chunk_tokens"], job["chunk_texts"])
    for j, idx in enumerate(chunks):
        path = parts / chunk_name(w, j, len(chunks), len(idx))
        if path.exists():
            continue
        # Sorted already, so encode forms the very batches plan_chunks counted.
        vectors = model.encode([texts[i] for i in idx], batch_size=job["batch_size"], pooling=job["pooling"],
                               normalize=job["normalize"], prompt=job["prompt"])
        index = w * job["window"] + np.asarray(idx, dtype=np.int64)
        _save_atomic(path, index=index, vectors=vectors.astype(np.float32, copy=False))
        yield len(idx), sum(lengths[i] for i in idx)


def _save_atomic(path: Path, **arrays):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)  # a killed job leaves a whole chunk or none


def _write_json_atomic(path: Path, obj):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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


def _lines_npy(parts: Path, dest: Path, n: int):
    raw = np.fromfile(parts / "lines.bin", dtype=np.int64)
    assert len(raw) == n
    tmp = dest.with_name(f".{dest.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, raw)
    os.replace(tmp, dest)


# -- progress ------------------------------------------------------------------------------------
def _hms(seconds) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """Texts and tokens done, tokens/s and ETA on stderr: a bar redrawn in place on a terminal,
    a line every `every` seconds otherwise; nothing when quiet."""

    def __init__(self, total, done=0, *, quiet=False, every=10.0, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.done, self.start_done, self.tokens = total, done, done, 0
        self.quiet, self.every = quiet, every
        self.tty = self.stream.isatty()
        self.t0 = self.last = time.monotonic()

    def say(self, message):
        if not self.quiet:
            print(f"embed-corpus: {message}", file=self.stream, flush=True)

    def update(self, texts, tokens):
        self.done, self.tokens = self.done + texts, self.tokens + tokens
        now = time.monotonic()
        if not self.quiet and now - self.last >= (0.2 if self.tty else self.every):
            self.last = now
            self._draw(now)

    def _draw(self, now):
        elapsed = max(now - self.t0, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        eta = _hms((self.total - self.done) / rate) if rate > 0 else "?"
        frac = self.done / self.total if self.total else 1.0
        stats = (f"{self.done:,}/{self.total:,} texts, {self.tokens:,} tokens, "
                 f"{self.tokens / elapsed:,.0f} tokens/s, ETA {eta}")
        if self.tty:
            bar = "#" * int(30 * frac)
            print(f"\r{frac:4.0%} |{bar:<30}| {stats}\033[K", end="", file=self.stream, flush=True)
        else:
            print(f"embed-corpus: {frac:.1%} {stats}", file=self.stream, flush=True)

    def close(self, message):
        if self.quiet:
            return
        if self.tty:
            self._draw(time.monotonic())
            print(file=self.stream)
        elapsed = time.monotonic() - self.t0
        self.say(f"{message}: {self.done - self.start_done:,} texts, {self.tokens:,} tokens embedded in "
                 f"{_hms(elapsed)} ({self.tokens / max(elapsed, 1e-9):,.0f} tokens/s)")


# -- the job -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Paths:
    out: Path

    @property
    def parts(self): return self.out.with_name(self.out.name + ".parts")
    @property
    def manifest(self): return self.out.with_suffix(".manifest.json")
    @property
    def lines(self): return self.out.with_suffix(".lines.npy")
    @property
    def bad(self): return self.out.with_suffix(".bad.jsonl")

    def remove_all(self):
        shutil.rmtree(self.parts, ignore_errors=True)
        for p in (self.out, self.manifest, self.lines, self.bad):
            p.unlink(missing_ok=True)


def _positive(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InputError(f"{name} must be a positive int, got {v!r}")


def embed_corpus(input, output, *, model=None, text_field="text", pooling=None, query=False, batch_size=32,
                 skip_bad=False, overwrite=False, ray=None, actors=None, window=TOKENIZE_CHUNK,
                 chunk_tokens=CHUNK_TOKENS, chunk_texts=CHUNK_TEXTS, quiet=False, progress_every=10.0,
                 stream=None) -> dict:
    """Embed every text of `input` (.txt, .jsonl, .parquet) into `output` (.npy), resuming a partial run.

    ray: None or False for this machine, True to join a running Ray cluster or start a local one, or a
    cluster address. Returns a summary: {"output", "shape", "skipped", "status"}.
    """
    for name, v in (("batch_size", batch_size), ("window", window), ("chunk_tokens", chunk_tokens),
                    ("chunk_texts", chunk_texts)):
        _positive(name, v)
    if actors is not None:
        _positive("actors", actors)
    paths = Paths(Path(output))
    if paths.out.suffix != ".npy":
        raise InputError(f"{output}: the output must be a .npy file")
    src = open_source(input, text_field)
    desc = describe_model(model, pooling, query)
    input_id = {"bytes": src.path.stat().st_size, "sha256": sha256_files([src.path]), "path": str(src.path),
                "format": src.kind, "field": None if src.kind == "txt" else text_field}
    job = {"format": FORMAT, "input": input_id, "model": {"sha256": desc["sha256"], "path": desc["directory"]},
           "pooling": desc["pooling"], "normalize": desc["normalize"], "prompt": desc["prompt"],
           "max_length": desc["max_length"], "skip_bad": bool(skip_bad), "dim": desc["dim"],
           "window": max(window, batch_size), "batch_size": batch_size, "chunk_tokens": chunk_tokens,
           "chunk_texts": chunk_texts}
    progress_stream = stream or sys.stderr
    say = Progress(0, quiet=quiet, stream=progress_stream).say
    if overwrite:
        paths.remove_all()
    if paths.out.exists():
        old = _read_manifest(paths.manifest)
        if old is None:
            raise CorpusError(f"{paths.out} exists and was not written by embed-corpus (no {paths.manifest.name}); "
                              "pass --overwrite to replace it")
        why = _mismatch(old, job, IDENTITY)
        if why:
            raise CorpusError(f"{paths.out} holds a completed run of another job: {why}; pass --overwrite "
                              "to start over, or choose another output")
        shutil.rmtree(paths.parts, ignore_errors=True)  # left if the last run stopped while cleaning up
        say(f"{paths.out} is already complete ({old['texts']:,} texts); nothing to do")
        return {"output": str(paths.out), "shape": [old["texts"], old["dim"]], "skipped": old.get("skipped", 0),
                "status": "already complete"}
    old = _read_manifest(paths.parts / "manifest.json") if paths.parts.exists() else None
    if old is not None:
        why = _mismatch(old, job, IDENTITY) or _mismatch(old, job, LAYOUT)
        if why:
            raise CorpusError(f"{paths.parts} holds a partial run of another job: {why}; pass --overwrite "
                              "to start over (it deletes the partial run), or rerun with the same options")
    else:  # nothing, or a run killed before its manifest: no chunk can exist yet
        shutil.rmtree(paths.parts, ignore_errors=True)
        paths.parts.mkdir(parents=True)
    scanned = scan(src, job["window"], skip_bad, paths.parts)
    job.update(texts=scanned.texts, skipped=scanned.bad)
    if old is None:
        _write_json_atomic(paths.parts / "manifest.json", job)
    elif old.get("texts") != scanned.texts:
        raise CorpusError(f"{paths.parts}: the input now has {scanned.texts} texts, the partial run {old.get('texts')}; "
                          "pass --overwrite to start over")

    done = committed(paths.parts)
    already = sum(n for w, c in done.items() for j, n in c.items() if j >= 0)
    progress = Progress(scanned.texts, already, quiet=quiet, every=progress_every, stream=progress_stream)
    if already:
        progress.say(f"resuming: {already:,} of {scanned.texts:,} texts already embedded in {paths.parts}")
    pending = [(w, off, num, min(job["window"], scanned.texts - w * job["window"]))
               for w, (off, num) in enumerate(scanned.windows) if not window_complete(done.get(w))]
    if ray is None or ray is False:
        _run_local(src, pending, paths.parts, job, model, progress)
    else:
        run_ray(ray, src, pending, paths.parts, job, model, actors, progress)

    assemble(paths.parts, paths.parts / "output.npy", scanned.texts, job["dim"], job["window"])
    if skip_bad:
        _lines_npy(paths.parts, paths.lines, scanned.texts)
        os.replace(paths.parts / "bad.jsonl", paths.bad)
    _write_json_atomic(paths.manifest, {k: v for k, v in job.items() if k not in LAYOUT})
    os.replace(paths.parts / "output.npy", paths.out)  # the moment the output becomes complete
    shutil.rmtree(paths.parts)
    progress.close(f"done, {paths.out} ({scanned.texts:,} x {job['dim']})")
    return {"output": str(paths.out), "shape": [scanned.texts, job["dim"]], "skipped": scanned.bad,
            "status": "complete"}


def _read_manifest(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _run_local(src, pending, parts, job, model, progress):
    if not pending:
        return
    from .embedder import load
    embedder = load(job["model"]["path"])
    for w, offset, number, count in pending:
        texts = window_texts(src, offset, number, count)
        for texts_done, tokens in embed_window(embedder, texts, w, parts, job):
            progress.update(texts_done, tokens)


# -- on a Ray cluster ----------------------------------------------------------------------------
def run_ray(address, src, pending, parts, job, model, actors, progress):
    """Ray Data reads the pending windows (one read task each) and a pool of actors, each loading the
    checkpoint once, embeds them into parts/ exactly as _run_local does. Needs parts/ and the input on
    a filesystem every node sees. Actors that die are restarted and their windows retried by Ray Data;
    chunks committed before are kept."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise InputError(f"--ray needs Ray Data: {RAY_EXTRA}") from None
    if not pending:
        return
    import logging
    level = logging.ERROR if progress.quiet else logging.WARNING  # Ray's INFO lines would bury ours
    connected_here = not ray.is_initialized()
    if connected_here:  # a bare --ray joins a running cluster (RAY_ADDRESS, `ray start`) or starts one
        ray.init(address=None if address is True else address, log_to_driver=False, logging_level=level)
    logging.getLogger("ray.data").setLevel(level)
    try:
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < 2:
            raise CorpusError(f"the Ray cluster has {cpus:g} CPUs; embed-corpus needs 2 or more "
                              "(one is left to Ray Data's read tasks)")
        actors = actors or max(1, int(cpus) - 1)
        per_actor = (cpus - 1) / actors  # leave Ray Data a CPU: with none, a 2-CPU cluster deadlocks
        threads = max(1, int(per_actor))
        env = {k: str(threads) for k in ("BGE_REF_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        # A checkpoint directory must be a path every node sees; a hub id is found in each node's cache.
        from .hub import DEFAULT_MODEL
        model_ref = str(model) if model is not None else os.environ.get("BGE_REF_MODEL") or DEFAULT_MODEL
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours is on stderr
        specs = [{"window": w, "offset": o, "number": n, "count": c} for w, o, n, c in pending]
        ds = ray.data.from_items(specs, override_num_blocks=len(specs))
        ds = ds.map_batches(_read_windows, batch_size=1, fn_kwargs={"src": src})
        ds = ds.map_batches(_WindowEmbedder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
                            num_cpus=per_actor, runtime_env={"env_vars": env},
                            fn_constructor_kwargs={"model": model_ref, "threads": threads, "parts": str(parts),
                                                   "job": job})
        progress.say(f"on Ray: {len(pending)} windows, {actors} actors of {per_actor:g} CPUs "
                     f"({threads} BLAS thread{'s' if threads > 1 else ''} each)")
        try:
            for row in ds.iter_rows():
                progress.update(int(row["texts"]), int(row["tokens"]))
        except Exception as e:  # Ray wraps the actor's error; report its message, not Ray's traceback
            cause = e
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise CorpusError(f"the Ray job failed: {str(cause).strip().splitlines()[-1]}") from None
    finally:
        if connected_here:
            ray.shutdown()


def _read_windows(batch, src: Source):
    """Ray Data read task: the texts of each window spec, as one JSON list per window."""
    texts = [json.dumps(window_texts(src, int(o), int(n), int(c)))
             for o, n, c in zip(batch["offset"], batch["number"], batch["count"])]
    return {"window": np.asarray(batch["window"]), "texts": np.array(texts, dtype=object)}


class _WindowEmbedder:
    """Ray Data actor: loads the checkpoint once, with BLAS on the CPUs Ray gave it, then embeds windows."""

    def __init__(self, model, threads, parts, job):
        from . import hub
        from .embedder import load
        try:
            from threadpoolctl import threadpool_limits
            self._limits = threadpool_limits(threads, user_api="blas")
        except ImportError:  # the env vars set for this actor already bound OpenBLAS
            self._limits = None
        directory = hub.resolve(model)
        sha = sha256_files(directory / n for n in MODEL_FILES)
        if sha != job["model"]["sha256"]:
            raise CorpusError(f"{directory}: the checkpoint on this node (sha256 {sha[:12]}...) is not the "
                              f"driver's ({job['model']['sha256'][:12]}...)")
        self.model, self.parts, self.job = load(directory), Path(parts), job

    def __call__(self, batch):
        texts, tokens = [], []
        for w, payload in zip(batch["window"], batch["texts"]):
            done = list(embed_window(self.model, json.loads(payload), int(w), self.parts, self.job))
            texts.append(sum(d[0] for d in done))
            tokens.append(sum(d[1] for d in done))
        return {"window": np.asarray(batch["window"]), "texts": np.array(texts), "tokens": np.array(tokens)}
