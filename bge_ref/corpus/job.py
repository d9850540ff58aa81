"""The corpus job: what it embeds (a frozen Job, also its manifest), the checks that a rerun may reuse
the work on disk, and the run itself, here or on Ray."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..embedder import POOLINGS, QUERY_INSTRUCTION
from ..errors import InputError
from .batches import embed_window
from .constants import BATCH_SIZE, CHUNK_TEXTS, CHUNK_TOKENS, FORMAT, PROGRESS_EVERY, WINDOW
from .progress import Progress
from .readers import Source, open_source, scan, window_texts
from .store import (CorpusError, Paths, assemble, committed, lines_npy, read_manifest, window_complete,
                    write_json_atomic)

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
    return Job(input_sha256=sha256_files([src.path]), input_bytes=src.path.stat().st_size,
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
    job = make_job(src, model, pooling, query, skip_bad=skip_bad, window=window, batch_size=batch_size,
                   chunk_tokens=chunk_tokens, chunk_texts=chunk_texts)
    progress_stream = stream or sys.stderr
    say = Progress(0, quiet=quiet, stream=progress_stream).say
    if overwrite:
        paths.remove_all()
    if paths.out.exists():
        old = read_manifest(paths.manifest)
        if old is None:
            raise CorpusError(f"{paths.out} exists and was not written by embed-corpus (no {paths.manifest.name}); "
                              "pass --overwrite to replace it")
        why = mismatch(old, job, IDENTITY)
        if why:
            raise CorpusError(f"{paths.out} holds a completed run of another job: {why}; pass --overwrite "
                              "to start over, or choose another output")
        shutil.rmtree(paths.parts, ignore_errors=True)  # left if the last run stopped while cleaning up
        say(f"{paths.out} is already complete ({old['texts']:,} texts); nothing to do")
        return {"output": str(paths.out), "shape": [old["texts"], old["dim"]], "skipped": old.get("skipped", 0),
                "status": "already complete"}
    old = read_manifest(paths.parts / "manifest.json") if paths.parts.exists() else None
    if old is not None:
        why = mismatch(old, job, IDENTITY + LAYOUT)
        if why:
            raise CorpusError(f"{paths.parts} holds a partial run of another job: {why}; pass --overwrite "
                              "to start over (it deletes the partial run), or rerun with the same options")
    else:  # nothing, or a run killed before its manifest: no chunk can exist yet
        shutil.rmtree(paths.parts, ignore_errors=True)
        paths.parts.mkdir(parents=True)
    scanned = scan(src, job.window, skip_bad, paths.parts)
    job = dataclasses.replace(job, texts=scanned.texts, skipped=scanned.bad)
    if old is None:
        write_json_atomic(paths.parts / "manifest.json", job.manifest())
    elif old.get("texts") != scanned.texts:
        raise CorpusError(f"{paths.parts}: the input now has {scanned.texts} texts, the partial run {old.get('texts')}; "
                          "pass --overwrite to start over")

    done = committed(paths.parts)
    already = sum(n for w, c in done.items() for j, n in c.items() if j >= 0)
    progress = Progress(scanned.texts, already, quiet=quiet, every=progress_every, stream=progress_stream)
    if already:
        progress.say(f"resuming: {already:,} of {scanned.texts:,} texts already embedded in {paths.parts}")
    pending = [(w, off, num, min(job.window, scanned.texts - w * job.window))
               for w, (off, num) in enumerate(scanned.windows) if not window_complete(done.get(w))]
    if ray is None or ray is False:
        _run_local(src, pending, paths.parts, job, progress)
    else:
        from .ray_job import run_ray
        run_ray(ray, src, pending, paths.parts, job, model, actors, progress)

    assemble(paths.parts, paths.parts / "output.npy", scanned.texts, job.dim, job.window)
    if skip_bad:
        lines_npy(paths.parts, paths.lines, scanned.texts)
        os.replace(paths.parts / "bad.jsonl", paths.bad)
    write_json_atomic(paths.manifest, {k: v for k, v in job.manifest().items() if k not in LAYOUT})
    os.replace(paths.parts / "output.npy", paths.out)  # the moment the output becomes complete
    shutil.rmtree(paths.parts)
    progress.close(f"done, {paths.out} ({scanned.texts:,} x {job.dim})")
    return {"output": str(paths.out), "shape": [scanned.texts, job.dim], "skipped": scanned.bad,
            "status": "complete"}


def _run_local(src, pending, parts, job, progress):
    if not pending:
        return
    from ..embedder import load
    embedder = load(job.model_path)
    for w, offset, number, count in pending:
        texts = window_texts(src, offset, number, count)
        for texts_done, tokens in embed_window(embedder, texts, w, parts, job):
            progress.update(texts_done, tokens)
