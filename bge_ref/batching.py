"""The batching core: token-id rows of any lengths in, one vector per row out.

Every caller embeds through `embed_rows`: `Embedder.encode` (texts tokenized a chunk at a time),
`api.run` and `api.openai_embeddings` (one call per request group), and the server's worker and the
corpus job (rows they have tokenized, measured and grouped themselves). It sorts the rows by length,
cuts them into batches (`plan_batches`), pads each batch to its longest row, runs the forward,
pools, normalizes and puts the vectors back in the rows' order. A non-finite vector is never
returned: it is a NumericalError naming the rows.

Where the fast forward would give each core its own sequences of a batch (fast.sequence_groups),
those groups of every batch are run as one list on bge_ref's threads (threads.run_split): a core
that finishes its group takes the next, of whichever batch, instead of waiting for the other core at
the end of each batch. The vectors are the same bits either way (tests/test_batching.py).
"""
from __future__ import annotations

from itertools import islice
from typing import Callable, Iterable, Sequence

import numpy as np

from . import threads
from .errors import NumericalError
from .pooling import l2_normalize, pool


def row_ids(row) -> Sequence[int]:
    """A row's token ids: the row itself (a list of int), or its `.ids` (a tokenizers Encoding)."""
    return getattr(row, "ids", row)


def plan_batches(lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int | None = None) -> list[list[int]]:
    """Row indices per batch: sorted by length (a stable sort, so rows of one length keep their order
    and a list already sorted is cut as it stands), each batch as many of the next rows as `fit`
    lets in (at most max_batch_size rows and, when given, max_batch_tokens real tokens)."""
    order = length_order(lengths)
    ordered = [lengths[i] for i in order]
    batches, start = [], 0
    while start < len(order):
        n = fit(islice(ordered, start, None), max_batch_size, max_batch_tokens)
        batches.append(order[start:start + n])
        start += n
    return batches


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices shortest first, a stable sort: rows of one length keep their order."""
    return sorted(range(len(lengths)), key=lengths.__getitem__)


def fit(lengths: Iterable[int], max_batch_size: int, max_batch_tokens: int | None = None, *,
        rows: int = 0, tokens: int = 0) -> int:
    """The batching rule: how many of the next rows (their lengths, in order) join a batch already
    holding `rows` rows of `tokens` real tokens, within max_batch_size rows and, when given,
    max_batch_tokens real tokens. An empty batch takes the first row however long (a row longer
    than the budget gets a batch of its own). The fast forward computes real tokens only, so the
    budget counts real tokens, not padded ones. The server's worker uses it to top a batch up."""
    k = 0
    for n in lengths:
        if (rows or k) and (rows + k >= max_batch_size or
                            (max_batch_tokens is not None and tokens + n > max_batch_tokens)):
            break
        tokens += n
        k += 1
    return k


def pad(rows: Sequence[Sequence[int]], pad_id: int) -> dict[str, np.ndarray]:
    """Right-pad token-id rows to the longest: input_ids, attention_mask, token_type_ids, int64 (B, S)."""
    B, S = len(rows), max(len(r) for r in rows)
    ids = np.full((B, S), pad_id, dtype=np.int64)
    mask = np.zeros((B, S), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((B, S), dtype=np.int64)}


def embed_rows(model, rows: Sequence, pooling: str | Sequence[str], *, normalize: bool = True,
               max_batch_size: int = 32, max_batch_tokens: int | None = None,
               name: Callable[[int], str] | None = None, check_finite: bool = True) -> np.ndarray:
    """Embed token-id rows: an (n, D) array, row i the vector of rows[i].

    model: an Embedder (its forward, config and dtype). rows: each a text's token ids with [CLS] and
    [SEP] (a list of int, or anything with `.ids`), one sequence each (token type 0), at most the
    model's positions long. pooling: "cls" or "mean" for every row, or one per row. normalize: each
    vector scaled to unit length. Batches: see plan_batches; with the same rows and max_batch_size
    the batches, and so the vectors, are the same bit for bit. name(i) names row i in errors
    (default "rows[i]").

    Raises NumericalError, naming the rows, if any vector holds NaN or infinity. check_finite=False
    leaves that check to a caller that fails only the rows concerned: the server's worker, whose
    batches mix requests (one request's NaN must not fail the others).
    """
    ids = [row_ids(r) for r in rows]
    poolings = [pooling] * len(ids) if isinstance(pooling, str) else list(pooling)
    out = np.empty((len(ids), model.config.hidden_size), dtype=model.dtype)

    def embed(idx, batch, pools, cls_only):
        hidden = model.forward(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                               cls_only=cls_only)                                    # (b, S, D) or (b, 1, D)
        vectors = _pool_rows(hidden, batch["attention_mask"], pools)                 # (b, D)
        vectors = l2_normalize(vectors) if normalize else vectors
        if check_finite:
            _check_finite(vectors, idx, name or (lambda i: f"rows[{i}]"))
        out[idx] = vectors

    groups = []
    for idx in plan_batches([len(r) for r in ids], max_batch_size, max_batch_tokens):
        batch = pad([ids[i] for i in idx], model.config.pad_token_id)
        pools = [poolings[i] for i in idx]
        cls_only = set(pools) == {"cls"}    # the batch's [CLS] rows alone through the last layer (fast.bert)
        parts = model.sequence_groups(batch["attention_mask"])
        if not parts:                       # the forward shares each layer between the cores
            embed(idx, batch, pools, cls_only)
        groups += [(idx[g], {k: v[g] for k, v in batch.items()}, pools[g], cls_only) for g in parts]
    # Each group runs every layer on one core, its rows computed as in its whole batch. Taken from one
    # list, the groups of every batch keep both cores busy to the end instead of meeting after each
    # batch; longest first, so the shortest fill in last.
    if groups:
        groups.sort(key=lambda g: -int(g[1]["attention_mask"].sum()))
        threads.run_split(embed, groups)
    return out


def _pool_rows(hidden, mask, poolings) -> np.ndarray:
    """Pool each row its own way (the server batches rows of requests asking for different poolings)."""
    if len(set(poolings)) == 1:
        return pool(hidden, mask, poolings[0])
    out = np.empty(hidden.shape[::2], dtype=hidden.dtype)                  # (b, D)
    for p in set(poolings):
        sel = [j for j, q in enumerate(poolings) if q == p]
        out[sel] = pool(hidden[sel], mask[sel], p)
    return out


def _check_finite(vectors, idx, name):
    bad = [i for i, ok in zip(idx, np.isfinite(vectors).all(axis=-1)) if not ok]
    if bad:
        shown = ", ".join(name(i) for i in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NumericalError(f"{shown}: the embedding holds NaN or infinity; the checkpoint's weights or config "
                             "(layer_norm_eps, a NaN or huge weight) make the forward non-finite")
