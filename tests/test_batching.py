"""The batching core (bge_ref/batching.py): how rows are cut into batches, that the vectors come back in
the rows' order and equal encode()'s, each row pooled its own way, and that a non-finite vector is
never returned (a NumericalError naming the text, through encode, run and openai_embeddings)."""
import numpy as np
import pytest

import bge_ref
from bge_ref.batching import embed_rows, fit, pad, plan_batches
from bge_ref.errors import NumericalError
from bge_ref.testing.checkpoints import TINY_CONFIG, make_random_checkpoint

pytestmark = pytest.mark.quick

TEXTS = ["a", "hello world", "one two three four five", "x y", "the quick brown fox jumps", "é 東京 🦙", "b c d"]


@pytest.fixture(scope="module")
def model(tiny):
    return bge_ref.load(tiny[0])


def test_plan_sorts_by_length_and_cuts_at_size_and_real_tokens():
    lengths = [5, 3, 9, 3, 4]
    assert plan_batches(lengths, 2) == [[1, 3], [4, 0], [2]]             # stable: the two 3s keep their order
    assert plan_batches(lengths, 10) == [[1, 3, 4, 0, 2]]
    assert plan_batches(lengths, 10, max_batch_tokens=10) == [[1, 3, 4], [0], [2]]  # 3+3+4; 5 (+9 > 10); 9
    assert plan_batches([20, 2], 10, max_batch_tokens=8) == [[1], [0]]  # longer than the budget: alone
    assert plan_batches([], 4) == []
    assert plan_batches([2, 2, 3, 7], 3) == [[0, 1, 2], [3]]            # a sorted list is cut as it stands


def test_fit_tops_a_batch_up_by_the_same_rule():
    """The server's worker tops a round's last batch up with fit; plan_batches cuts with it too."""
    assert fit([3, 3, 4, 5], 10, 10) == 3                                # an empty batch: 3+3+4
    assert fit([3, 3, 4], 10, 10, rows=1, tokens=5) == 1                 # 5 already in: +3, not +3 more
    assert fit([1, 1, 1], 4, rows=2, tokens=50) == 2                     # no budget: up to 4 rows
    assert fit([20], 10, 8) == 1 and fit([20], 10, 8, rows=1, tokens=1) == 0  # too long: only alone
    assert fit([2, 2], 0) == 1                                           # an empty batch takes one, always


def test_pad_right_pads_with_the_pad_id():
    batch = pad([[101, 7, 102], [101, 102]], pad_id=0)
    np.testing.assert_array_equal(batch["input_ids"], [[101, 7, 102], [101, 102, 0]])
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 1], [1, 1, 0]])
    assert batch["token_type_ids"].dtype == np.int64 and not batch["token_type_ids"].any()


@pytest.mark.parametrize("pooling, normalize, batch_size", [("cls", True, 3), ("mean", False, 2), ("mean", True, 32)])
def test_rows_embed_as_encode_bit_for_bit(model, pooling, normalize, batch_size):
    rows = model.token_ids(TEXTS)
    ours = embed_rows(model, rows, pooling, normalize=normalize, max_batch_size=batch_size)
    np.testing.assert_array_equal(ours, model.encode(TEXTS, pooling=pooling, normalize=normalize, batch_size=batch_size))


def test_order_is_restored_and_a_token_budget_changes_no_vector(model):
    rows = model.token_ids(TEXTS)
    whole = embed_rows(model, rows, "cls")
    shapes = []
    forward = model.forward
    model.forward = lambda *a, **k: shapes.append(np.shape(a[0])) or forward(*a, **k)
    try:
        budget = embed_rows(model, rows[::-1], "cls", max_batch_tokens=12)[::-1]
    finally:
        del model.forward
    assert all(b * s <= 12 or b == 1 for b, s in shapes) and len(shapes) > 1
    np.testing.assert_allclose(budget, whole, atol=1e-6)


def test_each_row_pooled_its_own_way(model):
    rows = model.token_ids(TEXTS)
    poolings = ["cls", "mean"] * 3 + ["cls"]
    mixed = embed_rows(model, rows, poolings)
    cls, mean = embed_rows(model, rows, "cls"), embed_rows(model, rows, "mean")
    for i, p in enumerate(poolings):
        if p == "mean":  # the same forward: the same bits
            np.testing.assert_array_equal(mixed[i], mean[i])
        else:  # an all-cls batch computes the last layer for [CLS] alone: exact per row, float32 rounding aside
            np.testing.assert_allclose(mixed[i], cls[i], rtol=0, atol=1e-6)


def test_cls_pooled_batches_compute_only_the_cls_rows_of_the_last_layer(model, monkeypatch):
    """A batch pooled by [CLS] alone asks the forward for the [CLS] rows only (fast.bert's cls_only);
    a batch with any mean-pooled row asks for every row. The vectors are the same either way."""
    asked, forward = [], model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **kw: asked.append(kw.get("cls_only")) or forward(*a, **kw))
    rows = model.token_ids(["one text", "another, longer text"])
    cls = embed_rows(model, rows, "cls")
    mixed = embed_rows(model, rows, ["cls", "mean"])
    assert asked == [True, False]
    np.testing.assert_allclose(cls[0], mixed[0], rtol=0, atol=1e-6)
    monkeypatch.undo()
    np.testing.assert_allclose(cls, embed_rows(model, rows, "cls"), rtol=0, atol=0)


@pytest.mark.parametrize("pooling", ["cls", "mean", (["cls"] * 4 + ["mean"] * 4) * 4])
def test_groups_of_every_batch_run_as_one_list_bit_for_bit(model, monkeypatch, pooling):
    """Batches the fast forward splits by sequences (each core every layer on its own: fast.encoder)
    are cut into those groups up front, and the groups of every batch run as one list on the pool's
    threads, longest first: the vectors are those of one forward per batch, bit for bit."""
    import threading

    from bge_ref import fast, threads
    monkeypatch.setattr(threads, "THREADS", 2)
    monkeypatch.setattr(fast, "FEW_ROWS", 0)
    texts = [" ".join(["word"] * (3 + i // 4)) for i in range(32)]  # in length order: batches of 8 in a row
    rows = model.token_ids(texts)
    forward, calls = model.forward, []

    def recorded(*a, **k):
        calls.append((threads.in_part(), int(np.asarray(a[1]).sum()), len(a[0]), threading.current_thread()))
        return forward(*a, **k)
    monkeypatch.setattr(model, "forward", recorded)
    listed, run_split = [], threads.run_split

    def recorded_list(fn, args_list):
        listed.append([int(g[1]["attention_mask"].sum()) for g in args_list])
        return run_split(fn, args_list)
    monkeypatch.setattr(threads, "run_split", recorded_list)
    grouped = embed_rows(model, rows, pooling, max_batch_size=8)
    monkeypatch.setattr(threads, "run_split", run_split)                 # fast.encoder's own splits, below
    assert len(calls) == 8 and sum(b for _, _, b, _ in calls) == 32      # 4 batches of 8 texts, 2 groups each
    # parts of one threads.run on the pool (the caller takes parts too, and may take them all when
    # the forwards are this short and the helper is slow to wake), never more threads than THREADS
    assert all(part for part, _, _, _ in calls) and len({t for *_, t in calls}) <= 2
    assert len(listed) == 1 and listed[0] == sorted(listed[0], reverse=True) == sorted((n for _, n, _, _ in calls),
                                                                               reverse=True)  # one list, longest first
    calls.clear()
    monkeypatch.setattr(model, "sequence_groups", lambda mask: [])       # one forward per batch, as before
    whole = embed_rows(model, rows, pooling, max_batch_size=8)
    assert len(calls) == 4
    np.testing.assert_array_equal(grouped, whole)


def test_encodings_or_id_lists(model):
    encodings = model.tokenizer.encode(TEXTS)
    np.testing.assert_array_equal(embed_rows(model, encodings, "cls"), embed_rows(model, [e.ids for e in encodings], "cls"))


def test_token_ids_get_the_special_tokens_the_tokenizer_adds(model):
    pieces = [r[1:-1] for r in model.token_ids(TEXTS)]
    assert model.with_special_tokens(pieces) == model.token_ids(TEXTS)
    long = model.with_special_tokens([[7] * 500])[0]
    assert len(long) == model.max_length and long[0] == model.token_ids(["a"])[0][0]


# -- non-finite output -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nan_model(tmp_path_factory):
    """The tiny checkpoint with finite weights that overflow float32 for one token: dimension 3 of the
    token type embedding and of "hello"'s word embedding are 3e38 each, so only "hello" sums to
    infinity, and the texts holding it give NaN vectors; others stay finite (texts do not mix)."""
    probe = bge_ref.load(make_random_checkpoint(tmp_path_factory.mktemp("probe"), TINY_CONFIG))
    hello = probe.token_ids(["hello"])[0][1]

    def poison(tensors):
        tensors["embeddings.word_embeddings.weight"][hello, 3] = 3e38
        tensors["embeddings.token_type_embeddings.weight"][0, 3] = 3e38
    return bge_ref.load(make_random_checkpoint(tmp_path_factory.mktemp("nan"), TINY_CONFIG, edit=poison))


def test_non_finite_vector_is_an_error_naming_the_text(nan_model):
    assert np.isfinite(nan_model.encode(["good text", "other"])).all()
    with pytest.raises(NumericalError, match=r"texts\[1\] 'hello world': the embedding holds NaN or infinity"):
        nan_model.encode(["good text", "hello world", "fine"])
    with pytest.raises(NumericalError, match=r"texts\[2\] 'hello'"):
        nan_model.encode(["a", "b", "hello"], normalize=False, pooling="mean")


def test_hosted_apis_never_return_non_finite_vectors(nan_model):
    with pytest.raises(NumericalError, match=r"requests\[1\]\.text\[0\]"):
        nan_model.run({"requests": [{"text": "fine"}, {"text": ["hello there", "ok"]}]})
    hello = nan_model.token_ids(["hello"])[0][1]
    with pytest.raises(NumericalError, match=r"input\[1\]"):
        nan_model.openai_embeddings({"input": [[2000], [hello, 2001]]})
    # check_finite=False leaves the check to the server's worker, which fails only the requests concerned.
    rows = nan_model.token_ids(["hello", "fine"])
    assert np.isfinite(embed_rows(nan_model, rows, "cls", check_finite=False)).all(axis=1).tolist() == [False, True]
    with pytest.raises(NumericalError, match=r"rows\[0\]"):
        embed_rows(nan_model, rows, "cls")
