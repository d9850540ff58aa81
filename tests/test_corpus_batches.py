"""bge_ref/corpus/batches.py: a window cut into chunks of encode()'s batches, tokenized once; the rows
equal encode()'s bit for bit; Embedder.encode_stream."""
import numpy as np
import pytest

from bge_ref.corpus import embed_corpus, plan_chunks
from bge_ref.errors import InputError
from tests.corpus_helpers import corpus_texts, tiny_model, write_txt  # noqa: F401 (a fixture)

pytestmark = pytest.mark.quick  # no torch: the tiny checkpoint's directory and bge_ref only



# -- encode_stream ---------------------------------------------------------------------------------
def test_encode_stream_is_encode(tiny_model):
    texts = corpus_texts(300, seed=1)
    ref = tiny_model.encode(texts, batch_size=16)
    parts = list(tiny_model.encode_stream(iter(texts), batch_size=16))  # a generator: never a list
    assert [p.shape for p in parts] == [(300, 64)]
    assert np.array_equal(np.concatenate(parts), ref)  # the same batches: the same bits
    parts = list(tiny_model.encode_stream((t for t in texts), batch_size=16, window=64, pooling="mean", prompt="q: "))
    assert [len(p) for p in parts] == [64, 64, 64, 64, 44]
    np.testing.assert_allclose(np.concatenate(parts), tiny_model.encode(texts, pooling="mean", prompt="q: "), atol=1e-6)
    assert list(tiny_model.encode_stream([])) == []


def test_encode_stream_errors_name_the_text(tiny_model):
    with pytest.raises(InputError, match="not a single str"):
        next(tiny_model.encode_stream("one text"))
    with pytest.raises(InputError, match=r"in texts\[4:6\]: texts\[1\] is a int"):
        list(tiny_model.encode_stream(["a"] * 5 + [7], window=4, batch_size=2))


def test_chunks_are_whole_sorted_batches_within_the_budgets():
    lengths = [5, 50, 7, 9, 30, 12, 3, 40, 8, 6]
    # Sorted: 3 5 | 6 7 | 8 9 | 12 30 | 40 50, padded costs 10, 14, 18, 60, 100 tokens.
    assert plan_chunks(lengths, 2, 40, 1024) == [[6, 0, 9, 2], [8, 3], [5, 4], [7, 1]]  # a batch over budget alone
    assert plan_chunks(lengths, 2, 10_000, 4) == [[6, 0, 9, 2], [8, 3, 5, 4], [7, 1]]
    assert plan_chunks([], 2, 40, 4) == []


# -- the job, locally ------------------------------------------------------------------------------
def test_corpus_equals_encode_bit_for_bit(tmp_path, minilm_path, minilm):
    texts = corpus_texts(64, seed=2, max_words=30)
    src = write_txt(tmp_path / "c.txt", texts)
    # Small chunks: many commits, yet the batches are encode()'s, so the bits are too.
    out = embed_corpus(src, tmp_path / "c.npy", model=minilm_path, batch_size=8, chunk_tokens=256, quiet=True)
    assert out == {"output": str(tmp_path / "c.npy"), "shape": [64, 384], "skipped": 0, "status": "complete",
                   "redone": 0}
    got = np.load(tmp_path / "c.npy", mmap_mode="r")
    assert got.dtype == np.float32 and got.shape == (64, 384)
    assert np.array_equal(got, minilm.encode(texts, batch_size=8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.manifest.json", "c.npy", "c.txt"]
    # Other batches (a smaller sort window), --query, --pooling cls: within 1e-6.
    embed_corpus(src, tmp_path / "q.npy", model=minilm_path, window=40, batch_size=8, query=True, pooling="cls",
                 quiet=True)
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), minilm.encode_queries(texts, pooling="cls"), atol=1e-6)


def test_a_window_is_tokenized_once(tmp_path, tiny, tiny_model, monkeypatch):
    """Its lengths plan the chunks and its ids are embedded: no second tokenization per chunk."""
    texts = corpus_texts(100, seed=8)
    src = write_txt(tmp_path / "c.txt", texts)
    calls = []
    tokenizer = type(tiny_model.tokenizer)
    encode = tokenizer.encode
    monkeypatch.setattr(tokenizer, "encode", lambda self, items, *a, **k: calls.append(len(items)) or encode(self, items, *a, **k))
    embed_corpus(src, tmp_path / "o.npy", model=tiny[0], window=32, chunk_tokens=64, quiet=True)
    monkeypatch.undo()
    assert calls == [32, 32, 32, 4]  # one call per window, though each window makes several chunks
    assert len(list(tmp_path.glob("o.npy"))) == 1
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), tiny_model.encode(texts), atol=1e-6)
