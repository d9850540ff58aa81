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
    corpus.manifest.json   what was embedded (the Job): the input (bytes, sha256 as `sha256sum`
                           prints it), the model (sha256 of its weights, config and tokenizer),
                           pooling, normalization, prompt, the batch layout, n and D.
    corpus.lines.npy       with --skip-bad only: int64 (n,), the input line (row for .parquet,
                           1-based) of each row.
    corpus.bad.jsonl       with --skip-bad only: {"line": .., "error": ..} per skipped record.
    corpus.npy.lock        while a job runs: flock'ed by it, holding its pid; a second job fails at once.
    corpus.npy.parts/      while the job runs: manifest.json, and one file per committed chunk,
                           w<window>-c<chunk>-of<chunks>-n<texts>.npz (int64 "index" rows of the
                           output, float32 "vectors", and "sha256" of the two). Removed once
                           corpus.npy is in place.

Every file is written to a temporary name, fsynced, renamed, and its directory fsynced. A rerun
continues from the committed chunks (same chunks, same batches: the same bits), after checking each
against its sha256: a damaged one (truncated, empty, altered) is removed, reported on stderr and
embedded again; assembly checks them once more. A rerun after completion does nothing; a different
input, model, embedding option or batch layout is refused (--overwrite starts over). The input is
hashed before the scan and again after the last read: if it changed meanwhile, the job stops without
writing the output. With --ray, Ray Data reads the windows and a pool of actors embeds them into the
same chunk files, which the driver assembles as a local run does.

The rooms: readers (input formats, the scan), batches (a window cut into chunks of encode()'s
batches), store (chunk files, manifest, assembly), progress, job (the Job and embed_corpus), ray_job.
"""
from .batches import embed_window, plan_chunks
from .constants import BATCH_SIZE, CHUNK_TEXTS, CHUNK_TOKENS, PROGRESS_EVERY, WINDOW
from .job import Job, embed_corpus
from .readers import Source, open_source, records, scan
from .store import CorpusError

__all__ = ["BATCH_SIZE", "CHUNK_TEXTS", "CHUNK_TOKENS", "PROGRESS_EVERY", "WINDOW", "CorpusError", "Job",
           "Source", "embed_corpus", "embed_window", "open_source", "plan_chunks", "records", "scan"]
