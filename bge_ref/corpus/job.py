"""The corpus job: what it embeds (a frozen Job, also its manifest), the checks that a rerun may reuse
the work on disk, and the run itself, here or on Ray."""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..embedder import POOLINGS, QUERY_INSTRUCTION
from ..errors import InputError
from .batches import embed_window
from .constants import BATCH_SIZE, CHUNK_TEXTS, CHUNK_TOKENS, FORMAT, PROGRESS_EVERY, WINDOW
from .progress import Progress
from .readers import Source, open_source, scan, sha256_file, window_texts
from .store import (CorpusError, Paths, assemble, check_committed, committed, fsync_dir, lines_npy, locked,
                    read_manifest, window_complete, write_json_atomic)

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass(frozen=True)
class Job:
    """Everything that decides the output's bits, and how the work is cut; written as the manifest."""
    input_sha256: str
    input_bytes: int
    input_path: str
    input_format: str          # "txt", "jsonl" or "parquet"
    text_field: str | None     # None for .txt
    model_sha256: str          # of config.json, model.safetensors and tokenizer.json
    model_path: str
    pooling: str
    normalize: bool
    prompt: str | None
    max_length: int
    skip_bad: bool
    dim: int
    window: int                # texts sorted together
    batch_size: int
    chunk_tokens: int
    chunk_texts: int
    texts: int | None = None   # known after the scan
    skipped: int | None = None

    def manifest(self) -> dict:
        return {"format": FORMAT, **dataclasses.asdict(self)}


# Fields that must match for a rerun to reuse the work, and the layout fields that decide which texts
# share a batch (so which bits each row gets).
IDENTITY = ("input_sha256", "text_field", "model_sha256", "pooling", "normalize", "prompt", "max_length", "skip_bad")
LAYOUT = ("window", "batch_size", "chunk_tokens", "chunk_texts")
NAMES = {"input_sha256": "input", "model_sha256": "model", "text_field": "text field"}


def mismatch(old: dict, new: Job, keys) -> str | None:
    """Why a manifest on disk is not this job's, or None."""
    if old.get("format") != FORMAT:
        return (f"it was written by another version of embed-corpus (manifest format {old.get('format')!r}, "
                f"this one writes {FORMAT})")
    for k in keys:
        a, b = old.get(k), getattr(new, k)
        if a != b:
            if k.endswith("sha256"):
                a, b = f"sha256 {str(a)[:12]}...", f"sha256 {b[:12]}..."
            else:
                a, b = repr(a), repr(b)
            return f"{NAMES.get(k, repr(k))} differs ({a} then, {b} now)"
    return None


def sha256_files(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode() + b"\0")
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def model_sha256(directory: Path) -> str:
    return sha256_files(Path(directory) / n for n in MODEL_FILES)


def make_job(src: Source, model, pooling, query, *, skip_bad, window, batch_size, chunk_tokens,
             chunk_texts) -> Job:
    """The job for this input and model, without loading the weights."""
    from .. import hub, st_config
    from ..config import BertConfig
    directory = hub.resolve(model)
    if any(not (directory / n).is_file() for n in MODEL_FILES):
        from ..embedder import load
        load(directory)  # raises the CheckpointError naming what is missing
    config = BertConfig.from_json(directory / "config.json")
    default_pooling, normalize = st_config.sentence_transformers_defaults(directory)
    if pooling is not None and pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return Job(input_sha256=sha256_file(src.path), input_bytes=src.path.stat().st_size,
               input_path=str(src.path), input_format=src.kind,
               text_field=None if src.kind == "txt" else src.field,
               model_sha256=model_sha256(directory), model_path=str(directory),
               pooling=pooling or default_pooling, normalize=normalize,
               prompt=QUERY_INSTRUCTION if query else None,
               max_length=st_config.max_seq_length(directory, config.max_position_embeddings),
               skip_bad=bool(skip_bad), dim=config.hidden_size, window=max(window, batch_size),
               batch_size=batch_size, chunk_tokens=chunk_tokens, chunk_texts=chunk_texts)


def _positive(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InputError(f"{name} must be a positive int, got {v!r}")


def embed_corpus(input: str | os.PathLike, output: str | os.PathLike, *, model: str | os.PathLike | None = None,
                 text_field: str = "text", pooling: str | None = None, query: bool = False,
                 batch_size: int = BATCH_SIZE, skip_bad: bool = False, overwrite: bool = False,
                 ray: bool | str | None = None, actors: int | None = None, window: int = WINDOW,
                 chunk_tokens: int = CHUNK_TOKENS, chunk_texts: int = CHUNK_TEXTS, quiet: bool = False,
                 progress_every: float = PROGRESS_EVERY, stream: TextIO | None = None) -> dict:
    """Embed every text of `input` (.txt, .jsonl, .parquet) into `output` (.npy), resuming a partial run.

    ray: None or False for this machine, True to join a running Ray cluster or start a local one, or a
    cluster address. Returns a summary: {"output", "shape", "skipped", "status", "redone"} (redone:
    chunks found damaged and embedded again). Raises InputError for bad input, CorpusError when the
    output holds another job's work, is locked by a running job, or cannot be written (an OSError).
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
    say = Progress(quiet=quiet, stream=stream).say
    say(f"hashing {src.path} ({src.path.stat().st_size:,} bytes) and the model's files")  # before any slow step
    try:
        paths.out.parent.mkdir(parents=True, exist_ok=True)
        with locked(paths):  # before the hashing: a second job on this output fails at once
            job = make_job(src, model, pooling, query, skip_bad=skip_bad, window=window, batch_size=batch_size,
                           chunk_tokens=chunk_tokens, chunk_texts=chunk_texts)
            return _embed(src, paths, job, overwrite=overwrite, ray=ray, model=model, actors=actors,
                          quiet=quiet, progress_every=progress_every, stream=stream)
    except OSError as e:  # a read-only directory, a full disk: one line naming the file, not a traceback
        raise CorpusError(os_error_message(e, paths.out)) from None


def os_error_message(e: OSError, out: Path) -> str:
    where = Path(e.filename or out)
    hint = ""
    if e.errno == errno.ENOSPC:
        hint = "; free some space and rerun the same command: the chunks committed so far are kept"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and where.parent in (out.parent, Path(f"{out}.parts")):
        hint = "; the output's directory must be writable"
    return f"{where}: {e.strerror or e}{hint}"


def _embed(src, paths, job, *, overwrite, ray, model, actors, quiet, progress_every, stream) -> dict:
    say = Progress(quiet=quiet, stream=stream).say
    if overwrite:
        paths.remove_all()
    if paths.out.exists():
        return _already_complete(paths, job, say)
    old = _open_parts(paths, job, Progress(quiet=quiet, stream=stream).warn)
    say(f"scanning {src.path}")
    scanned = scan(src, job.window, job.skip_bad, paths.parts)
    job = dataclasses.replace(job, texts=scanned.texts, skipped=scanned.bad)
    if old is None:
        write_json_atomic(paths.parts / "manifest.json", job.manifest())
    elif old.get("texts") != scanned.texts:
        raise CorpusError(f"{paths.parts}: the input now has {scanned.texts} texts, the partial run {old.get('texts')}; "
                          "pass --overwrite to start over")
    warn = Progress(quiet=quiet, stream=stream).warn
    redone = []

    def damaged(name, why):
        redone.append(name)
        warn(f"chunk {paths.parts / name} is damaged ({why}); embedding it again")

    done = check_committed(paths.parts, job.dim, job.window, scanned.texts, damaged) if old else {}
    for attempt in range(3):  # a chunk damaged during the run is found by assembly: redo it, assemble again
        already = sum(n for c in done.values() for j, n in c.items() if j >= 0)
        pending = [(w, off, num, min(job.window, scanned.texts - w * job.window))
                   for w, (off, num) in enumerate(scanned.windows) if not window_complete(done.get(w))]
        progress = Progress(scanned.texts, already, window_chars=scanned.chars, pending=[p[0] for p in pending],
                            quiet=quiet, every=progress_every, stream=stream)
        if already:
            progress.say(f"resuming: {already:,} of {scanned.texts:,} texts already embedded in {paths.parts}")
        if ray is None or ray is False:
            _run_local(src, pending, paths.parts, job, progress)
        else:
            from .ray_job import run_ray
            run_ray(ray, src, pending, paths.parts, job, model, actors, progress)
        _check_input_unchanged(src, job, paths)  # the last read of the input is done
        bad = assemble(paths.parts, paths.parts / "output.npy", scanned.texts, job.dim, job.window)
        for name, why in bad:
            damaged(name, why)
        if not bad:
            break
        done = committed(paths.parts)
    else:
        raise CorpusError(f"{paths.parts}: chunks were damaged again after being redone twice; check the disk")
    _finish(paths, job)
    progress.close(f"done, {paths.out} ({scanned.texts:,} x {job.dim})")
    return {"output": str(paths.out), "shape": [scanned.texts, job.dim], "skipped": scanned.bad,
            "status": "complete", "redone": len(redone)}


def _already_complete(paths: Paths, job: Job, say) -> dict:
    old = read_manifest(paths.manifest)
    if old is None:
        raise CorpusError(f"{paths.out} exists and was not written by embed-corpus (no {paths.manifest.name}); "
                          "pass --overwrite to replace it")
    why = mismatch(old, job, IDENTITY + LAYOUT)  # another batch layout would give other bits
    if why:
        raise CorpusError(f"{paths.out} holds a completed run of another job: {why}; pass --overwrite "
                          "to start over, or choose another output")
    shutil.rmtree(paths.parts, ignore_errors=True)  # left if the last run stopped while cleaning up
    say(f"{paths.out} is already complete ({old['texts']:,} texts); nothing to do")
    return {"output": str(paths.out), "shape": [old["texts"], old["dim"]], "skipped": old["skipped"],
            "status": "already complete", "redone": 0}


def _open_parts(paths: Paths, job: Job, warn) -> dict | None:
    """The manifest of this job's partial run in the parts directory, or None after making it empty."""
    old = read_manifest(paths.parts / "manifest.json") if paths.parts.exists() else None
    if old is not None:
        why = mismatch(old, job, IDENTITY + LAYOUT)
        if why:
            raise CorpusError(f"{paths.parts} holds a partial run of another job: {why}; pass --overwrite "
                              "to start over (it deletes the partial run), or rerun with the same options")
        return old
    chunks = list(paths.parts.glob("w*.npz")) if paths.parts.exists() else []
    if chunks:  # without the manifest nothing says which job made them: they cannot be trusted
        warn(f"{paths.parts / 'manifest.json'} is missing or unreadable; its {len(chunks)} chunks cannot be "
             "checked against this job: starting over")
    shutil.rmtree(paths.parts, ignore_errors=True)  # nothing, or a run killed before its manifest: no chunk yet
    paths.parts.mkdir(parents=True)
    return None


def _finish(paths: Paths, job: Job):
    """Move the assembled output and its side files in place, the output last: then it is complete."""
    if job.skip_bad:
        lines_npy(paths.parts, paths.lines, job.texts)
        os.replace(paths.parts / "bad.jsonl", paths.bad)
    write_json_atomic(paths.manifest, job.manifest())
    os.replace(paths.parts / "output.npy", paths.out)
    fsync_dir(paths.out.parent)
    shutil.rmtree(paths.parts)


def _check_input_unchanged(src: Source, job: Job, paths: Paths):
    """The input was hashed before the scan; if it changed since, its rows mix two versions of it."""
    now = sha256_file(src.path)
    if now != job.input_sha256:
        raise CorpusError(f"{src.path} changed while the job ran (sha256 {job.input_sha256[:12]}... at the start, "
                          f"{now[:12]}... at the end): its rows would mix two versions of it, so {paths.out} was "
                          "not written; rerun with --overwrite to embed the file as it is now")


def _run_local(src, pending, parts, job, progress):
    if not pending:
        return
    from ..embedder import load
    progress.say(f"loading the model {job.model_path}")
    embedder = load(job.model_path)
    for w, offset, number, count in pending:
        texts = window_texts(src, offset, number, count)
        for texts_done, tokens in embed_window(embedder, texts, w, parts, job, progress.measure):
            progress.update(texts_done, tokens)
