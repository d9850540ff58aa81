"""The batching worker: one thread owns the model and computes the texts of all waiting requests in
shared, length-sorted batches, handing each request its own rows back. Pure Python and NumPy (no
starlette): the event loop only submits jobs and awaits their futures."""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass

import numpy as np

from .. import api
from ..errors import NumericalError
from .metrics import Metrics


class Job:
    """One request's groups of texts; the worker fills `vectors` and resolves `future`."""

    def __init__(self, groups: list[api.Group], truncate: bool):
        self.groups, self.truncate = groups, truncate
        self.future: Future = Future()
        self.arrived = time.monotonic()
        self.vectors: list = []
        self.tokens = self.remaining = 0
        self.started = False


@dataclass
class Row:
    job: Job
    group: int
    index: int
    tokens: object  # an encoding: .ids, .attention_mask, .type_ids


class Worker(threading.Thread):
    """Takes jobs from a queue and computes their rows in shared batches.

    Batching goes in rounds: the rows waiting when a round starts are sorted by length (as encode()
    sorts a chunk) and cut into batches of at most max_batch_size rows and max_batch_tokens real
    tokens (the sum of the rows' token counts: the fast path computes real tokens only, so padding
    costs nothing; TEI's queue counts the same way for unpadded models). Bigger batches than
    encode()'s 32 texts compute slower per token on CPU: a 256-text MiniLM corpus took 1.8x as long
    in batches of ~16k tokens as in batches of 32 texts. Rows arriving meanwhile wait for the next
    round, so a long text is never starved by a stream of short ones. A round's last batch, when not
    full, is filled up with the next round's shortest rows. Before each batch, rows of requests whose
    client has left are dropped."""

    def __init__(self, model, max_batch_tokens: int, max_batch_size: int, metrics: Metrics):
        super().__init__(name="bge-ref-worker", daemon=True)
        self.model, self.metrics = model, metrics
        self.max_batch_tokens, self.max_batch_size = max_batch_tokens, max_batch_size
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()

    def submit(self, job) -> asyncio.Future:
        """Queue a Job, or a callable run with the model between batches; await the answer."""
        if not callable(job):
            self.inbox.put(job)
            return asyncio.wrap_future(job.future)
        future = Future()
        self.inbox.put((job, future))
        return asyncio.wrap_future(future)

    def stop(self, timeout=30.0):
        self.inbox.put(None)
        self.join(timeout)

    def run(self):
        waiting: list[Row] = []   # rows for the next round
        current: list[Row] = []   # this round's rows, shortest first
        while True:
            items = []
            try:  # block only when there is nothing to compute
                items.append(self.inbox.get(block=not (waiting or current)))
                while True:
                    items.append(self.inbox.get_nowait())
            except queue.Empty:
                pass
            for item in items:
                if item is None:
                    return  # stop() comes after the server has answered every request
                if isinstance(item, tuple):
                    resolve(item[1], lambda: item[0](self.model))
                else:
                    waiting += self._rows(item)
            waiting, current = self._drop_gone(waiting), self._drop_gone(current)
            if not current:
                current, waiting = sorted(waiting, key=lambda r: len(r.tokens.ids)), []
            if current:
                n = self._fit([], current)
                batch, current = current[:n], current[n:]
                if not current and waiting:  # the round's last batch: fill it up from the next round's
                    waiting.sort(key=lambda r: len(r.tokens.ids))  # shortest rows
                    k = self._fit(batch, waiting)
                    batch, waiting = batch + waiting[:k], waiting[k:]
                self._compute(batch)

    def _rows(self, job: Job) -> list[Row]:
        """Tokenize a job's groups (a --no-truncate length error fails the job, naming the text)."""
        rows = []
        try:
            for g, group in enumerate(job.groups):
                enc = api.tokenize(self.model, group, job.truncate)
                rows += [Row(job, g, i, e) for i, e in enumerate(enc)]
        except Exception as e:
            fail(job.future, e)
            return []
        job.remaining = len(rows)
        job.vectors = [[None] * len(g.items) for g in job.groups]
        return rows

    def _drop_gone(self, rows: list[Row]) -> list[Row]:
        """Rows of requests already answered: cancelled (the client left) or failed (a non-finite row)."""
        kept = [r for r in rows if not r.job.future.done()]
        if len(kept) < len(rows):
            self.metrics.add("bge_ref_texts_dropped_total", len(rows) - len(kept))
        return kept

    def _fit(self, batch: list[Row], rows: list[Row]) -> int:
        """How many of the rows can join the batch within max_batch_size rows and max_batch_tokens
        real tokens; a new batch (empty) takes at least one, however long."""
        tokens, k = sum(len(r.tokens.ids) for r in batch), 0
        if not batch and rows:
            tokens, k = len(rows[0].tokens.ids), 1
        while (len(batch) + k < self.max_batch_size and k < len(rows)
               and tokens + len(rows[k].tokens.ids) <= self.max_batch_tokens):
            tokens += len(rows[k].tokens.ids)
            k += 1
        return k

    def _compute(self, batch: list[Row]):
        now = time.monotonic()
        for r in batch:
            if not r.job.started:
                r.job.started = True
                self.metrics.observe("bge_ref_queue_seconds", now - r.job.arrived)
        try:
            vectors = api.embed_batch(self.model, [r.tokens for r in batch],
                                      [r.job.groups[r.group].pooling for r in batch])  # (B, D)
        except Exception as e:  # a bug, not bad input: fail these requests, keep serving
            for job in {id(r.job): r.job for r in batch}.values():
                fail(job.future, e)
            return
        self.metrics.add("bge_ref_compute_seconds_total", time.monotonic() - now)
        self.metrics.observe("bge_ref_batch_size", len(batch))
        self.metrics.add("bge_ref_texts_embedded_total", len(batch))
        self.metrics.add("bge_ref_tokens_embedded_total", sum(len(r.tokens.ids) for r in batch))
        finite = np.isfinite(vectors).all(axis=1)  # a NaN or Inf is never returned (its job fails)
        for r, v, ok in zip(batch, vectors, finite):
            job = r.job
            if not ok:
                where = job.groups[r.group].where
                fail(job.future, NumericalError(f"{where}[{r.index}]: the model computed a non-finite vector "
                                                "(NaN or infinity); the checkpoint's weights or config are broken"))
                continue
            job.vectors[r.group][r.index] = v
            job.tokens += len(r.tokens.ids)
            job.remaining -= 1
            if job.remaining == 0:
                resolve(job.future, lambda: ([np.stack(g) for g in job.vectors], job.tokens))


def resolve(future: Future, fn):
    """Set fn()'s result on the future, or its exception; a future cancelled meanwhile (the client
    has left) is left alone."""
    try:
        result = fn()
    except Exception as e:
        return fail(future, e)
    try:
        future.set_result(result)
    except InvalidStateError:
        pass


def fail(future: Future, e: BaseException):
    try:
        future.set_exception(e)
    except InvalidStateError:
        pass
