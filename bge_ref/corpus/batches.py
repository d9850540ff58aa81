"""A window's texts embedded in chunks of whole batches, each committed to disk when done; the batches
are encode()'s (sorted by token length), so the rows equal encode()'s bit for bit."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..embedder import l2_normalize
from .store import chunk_name, save_chunk


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


def tokenize_window(model, texts, prompt) -> list:
    """The window's one tokenization (with the prompt, truncated to the max length, as encode()'s):
    its lengths plan the chunks and its ids are embedded."""
    return model.tokenizer.encode([(prompt or "") + t for t in texts])


def embed_sorted(model, encodings, batch_size, pooling, normalize) -> np.ndarray:
    """encode()'s batches on encodings already in its order (sorted by length): consecutive runs of
    batch_size, each padded, run, pooled and normalized as encode() does, so the bits are encode()'s.
    (To be replaced by bge_ref's one batching core.)"""
    out = np.empty((len(encodings), model.config.hidden_size), dtype=model.dtype)
    for s in range(0, len(encodings), batch_size):
        batch = model.tokenizer.pad(encodings[s:s + batch_size])
        hidden = model.forward(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        pooled = model.pool(hidden, batch["attention_mask"], pooling)
        out[s:s + batch_size] = l2_normalize(pooled) if normalize else pooled
    return out


def embed_window(model, texts, w, parts: Path, job, measured=None):
    """Embed window w (its texts are output rows w * window ...) chunk by chunk, skipping chunks already
    on disk and committing each new one atomically. Yields (texts, tokens) per chunk embedded; first
    calls measured(w, tokens in the window, tokens in its chunks already committed), if given."""
    encodings = tokenize_window(model, texts, job.prompt)
    lengths = [len(e.ids) for e in encodings]
    chunks = plan_chunks(lengths, job.batch_size, job.chunk_tokens, job.chunk_texts)
    paths = [parts / chunk_name(w, j, len(chunks), len(idx)) for j, idx in enumerate(chunks)]
    if measured is not None:
        measured(w, sum(lengths), sum(lengths[i] for p, idx in zip(paths, chunks) if p.exists() for i in idx))
    for path, idx in zip(paths, chunks):
        if path.exists():
            continue
        vectors = embed_sorted(model, [encodings[i] for i in idx], job.batch_size, job.pooling, job.normalize)
        save_chunk(path, w * job.window + np.asarray(idx, dtype=np.int64), vectors)
        yield len(idx), sum(lengths[i] for i in idx)
