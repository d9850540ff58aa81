"""The batching worker in process, deterministic: batch composition and each request's own rows."""
import numpy as np
import pytest

from bge_ref import api
from bge_ref.server import batcher

from .serving import MORE
from .test_server import STORIES

pytestmark = pytest.mark.quick  # needs the serve extra and its clients, no torch


def test_worker_fills_a_rounds_last_batch_from_the_next_round(minilm, monkeypatch):
    """In process, deterministic: request A (6 texts) starts a round of batches of 4; request B
    (3 texts) arrives during it. The round's last batch (A's 2 leftover texts) is topped up with B's
    2 shortest, rather than run half empty; every request still gets its own vectors, in order."""
    worker = batcher.Worker(minilm, 16384, 4, batcher.Metrics())
    sizes, plain = [], worker._compute
    monkeypatch.setattr(worker, "_compute", lambda batch: sizes.append(len(batch)) or plain(batch))
    a = batcher.Job([api.Group(MORE[:6], "mean", "input")], truncate=True)
    b = batcher.Job([api.Group(STORIES, "cls", "input")], truncate=True)
    worker.inbox.put(a)
    worker.inbox.put((lambda model: worker.inbox.put(b), batcher.Future()))  # B arrives once A's round began
    worker.start()
    try:
        (va,), _ = a.future.result(60)
        (vb,), _ = b.future.result(60)
    finally:
        worker.stop()
    assert sizes == [4, 4, 1]                                # not [4, 2, 3]
    np.testing.assert_allclose(va, minilm.encode(MORE[:6], pooling="mean", normalize=True), rtol=0, atol=1e-6)
    np.testing.assert_allclose(vb, minilm.encode(STORIES, pooling="cls", normalize=True), rtol=0, atol=1e-6)


def test_worker_budget_counts_real_tokens(minilm, monkeypatch):
    """In process: 3 texts of 3 tokens and one of 10 fill a 19-token budget exactly, so they share
    one batch; counted as padded tokens (4 x 10 = 40) they would take two."""
    texts = ["a", "b", "c", " ".join(["word"] * 8)]
    assert [len(e.ids) for e in minilm.tokenizer.encode(texts)] == [3, 3, 3, 10]
    worker = batcher.Worker(minilm, 19, 32, batcher.Metrics())
    sizes, plain = [], worker._compute
    monkeypatch.setattr(worker, "_compute", lambda batch: sizes.append(len(batch)) or plain(batch))
    job = batcher.Job([api.Group(texts, "mean", "input")], truncate=True)
    worker.inbox.put(job)
    worker.start()
    try:
        (vectors,), tokens = job.future.result(60)
    finally:
        worker.stop()
    assert sizes == [4] and tokens == 19
    np.testing.assert_allclose(vectors, minilm.encode(texts, pooling="mean"), rtol=0, atol=1e-6)
    rows = [batcher.Row(job, 0, i, e) for i, e in enumerate(minilm.tokenizer.encode(texts))]
    assert batcher.Worker(minilm, 18, 32, batcher.Metrics())._fit([], rows) == 3  # 1 token short
