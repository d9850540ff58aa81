"""A window's texts embedded in chunks of whole batches, each committed to disk when done; the batches
are encode()'s (sorted by token length), so the rows equal encode()'s bit for bit."""
from __future__ import annotations

from pathlib import Path

import numpy as np

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


def embed_window(model, texts, w, parts: Path, job):
    """Embed window w (its texts are output rows w * window ...) chunk by chunk, skipping chunks already
    on disk and committing each new one atomically. Yields (texts, tokens) per chunk embedded."""
    prompt = job.prompt or ""
    lengths = [len(e.ids) for e in model.tokenizer.encode([prompt + t for t in texts])]
    chunks = plan_chunks(lengths, job.batch_size, job.chunk_tokens, job.chunk_texts)
    for j, idx in enumerate(chunks):
        path = parts / chunk_name(w, j, len(chunks), len(idx))
        if path.exists():
            continue
        # Sorted already, so encode forms the very batches plan_chunks counted.
        vectors = model.encode([texts[i] for i in idx], batch_size=job.batch_size, pooling=job.pooling,
                               normalize=job.normalize, prompt=job.prompt)
        index = w * job.window + np.asarray(idx, dtype=np.int64)
        save_chunk(path, index, vectors.astype(np.float32, copy=False))
        yield len(idx), sum(lengths[i] for i in idx)
