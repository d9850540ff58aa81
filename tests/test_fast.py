"""The fast forward path (fast.py) against the reference (model.py): the same function, within 1e-13 in
float64 and the float32 parity tolerances, on the tiny model, MiniLM and bge-large size; then the fast
path's own machinery (the skipped softmax shift, the thread pool, the optional threadpoolctl)."""
import threading

import numpy as np
import pytest
import torch

import bge_ref
from bge_ref import fast, gemm, threads
from bge_ref.errors import InputError
from bge_ref import model as model_ref
from bge_ref.model import attention_mask_bias

from .conftest import TEXTS, beyond_torch, hf_forward, reference_vs_fast

pytestmark = pytest.mark.blas  # tolerances set by BLAS rounding: CI reruns these on a second kernel


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tiny_fast_matches_reference(tiny, dtype):
    model = bge_ref.load(tiny[0], dtype=dtype)
    batch = model.tokenize(TEXTS)
    batch["token_type_ids"][1::2, 3:] = 1                 # second segments, as in sentence pairs
    assert (batch["attention_mask"] == 0).any()
    report = reference_vs_fast(tiny[0], batch, dtype)
    print(report.table())
    assert report.ok, report.table()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_minilm_fast_matches_reference_on_a_padded_batch(minilm_path, dtype):
    batch = bge_ref.load(minilm_path).tokenize(TEXTS + ["a longer text " * 40])
    assert (batch["attention_mask"] == 0).any() and batch["input_ids"].shape[1] > 100
    report = reference_vs_fast(minilm_path, batch, dtype)
    print(report.table())
    assert report.ok, report.table()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bge_large_fast_matches_reference_with_a_512_token_text(bge_large, dtype):
    report = bge_large["reports"]["paths", dtype]       # computed in the session fixture (tests/conftest.py)
    print(report.table())
    assert report.shape == (2, 512) and len(report.rows) == 25 + 1 + 3  # hidden_states.0-24, last, pooled x2, embedding
    assert report.ok, report.table()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_cls_only_last_layer_gives_the_cls_rows(tiny, minilm_path, which, dtype):
    """cls_only computes the last layer for the [CLS] rows alone (Q, attention output, FFN): those
    rows equal the whole forward's, and model.py's (1e-13 in float64), on a padded batch of mixed
    lengths (several attention runs); encode(pooling="cls") goes through it."""
    directory = tiny[0] if which == "tiny" else minilm_path
    model = bge_ref.load(directory, dtype=dtype)
    batch = model.tokenize(TEXTS + ["a longer text " * 20])
    assert len(fast.packed(batch["attention_mask"])[1]) > 1
    full = model.forward(**batch)
    cls = model.forward(**batch, cls_only=True)
    ref = bge_ref.load(directory, dtype=dtype, forward="reference").forward(**batch)
    assert cls.shape == (len(full), 1, full.shape[-1])
    tol = 1e-13 if dtype == "float64" else 1e-5
    assert np.abs(cls[:, 0] - full[:, 0]).max() <= tol and np.abs(cls[:, 0] - ref[:, 0]).max() <= tol
    assert np.abs(cls[:, 0] - full[:, 0]).max() < np.abs(full[:, 1] - full[:, 0]).max()  # not some other row
    encoded = model.encode(TEXTS, pooling="cls", normalize=False)
    np.testing.assert_allclose(encoded, model.forward(**model.tokenize(TEXTS))[:, 0], rtol=0, atol=tol)
    with pytest.raises(ValueError, match="hidden states"):
        fast.bert(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], model.params, model.config,
                  output_hidden_states=True, cls_only=True)
    ids, mask = batch["input_ids"].copy(), batch["attention_mask"].copy()
    mask[0, 0] = 0
    with pytest.raises(ValueError, match=r"first token"):
        fast.bert(ids, mask, batch["token_type_ids"], model.params, model.config, cls_only=True)


@pytest.mark.parametrize("few", ["by_heads", "gemm"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_few_rows_and_row_split_layouts_agree(minilm_path, dtype, few, monkeypatch):
    """Below FEW_ROWS each core takes a share of the heads and FFN columns (layer_by_heads; forced here
    on MiniLM's small weights) or each projection is left to gemm.py (its calls threaded by the BLAS);
    above it each core takes its own rows: the same function every way, the [CLS]-only last layer
    too (1e-13 in float64, float32 rounding otherwise)."""
    model = bge_ref.load(minilm_path, dtype=dtype)
    batch = model.tokenize(TEXTS[:3] + ["a longer text " * 5])   # two runs of lengths
    monkeypatch.setattr(threads, "THREADS", 2)
    monkeypatch.setattr(fast, "BY_HEADS_WEIGHTS", 0 if few == "by_heads" else 1 << 40)
    monkeypatch.setattr(fast, "BY_HEADS_ROWS", 0)
    monkeypatch.setattr(fast, "FEW_ROWS", 10**6)
    ran_in, plain = set(), fast._partial
    monkeypatch.setattr(fast, "_partial", lambda *a: ran_in.add(threading.current_thread()) or plain(*a))
    columns, cls = model.forward(**batch), model.forward(**batch, cls_only=True)
    assert len(ran_in) >= 2 if few == "by_heads" else not ran_in  # the cores summed their own shares of K
    monkeypatch.setattr(fast, "FEW_ROWS", 0)
    rows = model.forward(**batch)
    tol = 1e-13 if dtype == "float64" else 1e-5
    assert np.abs(columns - rows).max() <= tol and np.abs(cls[:, 0] - rows[:, 0]).max() <= tol


@pytest.mark.parametrize("cls_only", [False, True])
def test_few_rows_read_every_weight_once(minilm_path, cls_only, monkeypatch):
    """In layer_by_heads the cores multiply every projection weight once per forward between them, no
    part of one twice (that would be a projection computed again, as a first version of the layout
    did with Q, K and V: 1.25x the time), and each part is chunked as its whole weight would be."""
    model = bge_ref.load(minilm_path)
    batch = model.tokenize(TEXTS[:2])
    monkeypatch.setattr(threads, "THREADS", 2)
    monkeypatch.setattr(fast, "BY_HEADS_WEIGHTS", 0)
    monkeypatch.setattr(fast, "BY_HEADS_ROWS", 0)
    read, wholes, plain = [], set(), gemm.matmul
    monkeypatch.setattr(gemm, "matmul", lambda x, w, *a, **k: read.append(w.size) or wholes.add(k.get("whole"))
                        or plain(x, w, *a, **k))
    model.forward(**batch, cls_only=cls_only)
    sizes = [p[a][b]["w"].size for p in model.params["layers"]
             for a, b in (("attn", "qkv"), ("attn_out", "dense"), ("inter", "dense"), ("out", "dense"))]
    assert sum(read) == sum(sizes) and wholes <= set(sizes)


def test_by_heads_for_a_few_rows_of_large_weights():
    """bge-large's FFN weight (1024 x 4096) takes layer_by_heads from BY_HEADS_ROWS up to FEW_ROWS;
    MiniLM's (384 x 1536), in cache, does not (its pool meetings would cost more than they save), nor
    do FEW_ROWS rows, nor a single query (11 rows, or about 20 with bge's query prefix)."""
    large = {"dense": {"w": np.empty((1024, 4096), np.float32)}}
    small = {"dense": {"w": np.empty((384, 1536), np.float32)}}
    assert fast.by_heads(np.empty((44, 1024)), large) and fast.by_heads(np.empty((fast.FEW_ROWS - 1, 1024)), large)
    assert fast.by_heads(np.empty((fast.BY_HEADS_ROWS, 1024)), large)
    assert not fast.by_heads(np.empty((fast.FEW_ROWS, 1024)), large)
    assert not fast.by_heads(np.empty((11, 1024)), large) and not fast.by_heads(np.empty((20, 1024)), large)
    assert not fast.by_heads(np.empty((44, 384)), small)


def test_sequence_parts_are_whole_sequences_balanced_by_tokens():
    assert fast.sequence_parts([(0, 8, 128)], 2) == [(slice(0, 512), [(0, 4, 128)]), (slice(512, 1024), [(0, 4, 128)])]
    mixed = fast.sequence_parts([(0, 2, 100), (200, 3, 90), (470, 1, 80)], 2)   # a run cut between the parts
    assert mixed == [(slice(0, 290), [(0, 2, 100), (200, 1, 90)]), (slice(290, 550), [(0, 2, 90), (180, 1, 80)])]
    assert fast.sequence_parts([(0, 3, 128)], 2) == []    # 256 + 128 tokens: 1.33x an even share
    assert fast.sequence_parts([(0, 1, 512)], 2) == []    # one sequence: each layer's rows are split instead
    assert fast.sequence_parts([(0, 5, 10)], 1) == [(slice(0, 50), [(0, 5, 10)])]
    assert fast.sequence_parts([], 2) == []


def test_sequence_groups_are_the_sequence_parts_as_ranges_of_sequences(tiny, monkeypatch):
    """fast.sequence_groups: the batch's sequences as encoder() would give each core its own, every
    sequence in one group (an empty one too), [] wherever encoder() shares each layer instead."""
    params = bge_ref.load(tiny[0]).params
    monkeypatch.setattr(threads, "THREADS", 2)
    monkeypatch.setattr(fast, "FEW_ROWS", 0)
    mask = np.ones((8, 16), np.int64)
    assert fast.sequence_groups(mask, params) == [slice(0, 4), slice(4, 8)]
    mask = np.ones((9, 16), np.int64)
    mask[2] = 0                                              # a row of padding only: it has no tokens
    groups = fast.sequence_groups(mask, params)
    assert groups == [slice(0, 5), slice(5, 9)]              # 64 tokens each; the empty row in the first
    _, runs = fast.packed(mask)
    assert [int(mask[g].sum()) for g in groups] == [rows.stop - rows.start for rows, _ in fast.sequence_parts(runs, 2)]
    assert fast.sequence_groups(np.ones((3, 16)), params) == []          # 32 + 16 tokens: not even
    assert fast.sequence_groups(np.ones((0, 16)), params) == []          # no sequences
    monkeypatch.setattr(fast, "FEW_ROWS", 256)
    assert fast.sequence_groups(np.ones((8, 16)), params) == []          # few rows: each layer is shared
    monkeypatch.setattr(fast, "FEW_ROWS", 0)
    monkeypatch.setattr(threads, "THREADS", 1)
    assert fast.sequence_groups(np.ones((8, 16)), params) == []          # one thread
    monkeypatch.setattr(threads, "THREADS", 2)
    half = bge_ref.load(tiny[0], weights_dtype="float16")
    assert half.sequence_groups(np.ones((8, 16))) == []                  # float16 weights
    assert bge_ref.load(tiny[0], forward="reference").sequence_groups(np.ones((8, 16))) == []


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sequence_split_and_row_split_agree(minilm_path, dtype, monkeypatch):
    """Many rows in several sequences: each core runs every layer on its own sequences (in the pool's
    threads), or each layer's rows are split between the cores. The same function either way, hidden
    states and the [CLS]-only last layer included."""
    model = bge_ref.load(minilm_path, dtype=dtype)
    batch = model.tokenize([TEXTS[0], TEXTS[1]] * 4)           # two halves of equal tokens, runs of one
    monkeypatch.setattr(threads, "THREADS", 2)
    monkeypatch.setattr(fast, "FEW_ROWS", 0)
    ran_in, plain = set(), fast._layers
    monkeypatch.setattr(fast, "_layers", lambda *a: ran_in.add(threading.current_thread()) or plain(*a))
    by_sequence = [model.forward(**batch), fast.bert(**batch, params=model.params, config=model.config,
                                                      output_hidden_states=True)[1],
                   fast.bert(**batch, params=model.params, config=model.config, cls_only=True)[0]]
    assert threading.current_thread() in ran_in and len(ran_in) >= 2  # the caller and the pool, each on its sequences
    monkeypatch.setattr(fast, "SEQUENCE_BALANCE", 0.0)   # never: each layer's rows split instead
    ran_in.clear()
    by_rows = [model.forward(**batch), fast.bert(**batch, params=model.params, config=model.config,
                                                 output_hidden_states=True)[1],
               fast.bert(**batch, params=model.params, config=model.config, cls_only=True)[0]]
    assert ran_in == {threading.current_thread()}
    tol = 1e-13 if dtype == "float64" else 1e-5
    for a, b in zip(by_sequence, by_rows):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= tol
    assert len(by_sequence[1]) == model.config.num_hidden_layers + 1


def test_forward_keyword_selects_the_path(tiny):
    assert bge_ref.load(tiny[0]).forward_path == "fast"
    assert bge_ref.load(tiny[0], forward="reference").forward_path == "reference"
    for bad in ("slow", "Fast", None):
        with pytest.raises(InputError, match=r"forward must be one of \('fast', 'reference'\)"):
            bge_ref.load(tiny[0], forward=bad)


def test_packed_rows_and_runs():
    """Only real tokens are computed: their rows, and runs of equal-length sequences for attention."""
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1], [1, 0, 1, 0]])
    real, runs = fast.packed(mask)
    assert real.tolist() == [0, 1, 2, 4, 5, 6, 13, 14, 15, 16, 18]
    assert runs == [(0, 2, 3), (6, 1, 3), (9, 1, 2)]          # the empty row has no run
    assert fast.packed(np.ones((2, 5), int)) == (None, [(0, 2, 5)])
    rows = np.arange(11.0)[:, None] + 1
    grid = fast.unpacked(rows, real, (5, 4))
    assert grid.shape == (5, 4, 1) and (grid[..., 0] != 0).sum() == 11 and (grid[..., 0][mask == 0] == 0).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_padding_and_holes_match_reference(tiny, dtype):
    """Each sequence is the tokens its mask keeps, as transformers reads it, holes included.
    Equal-length sequences share one attention run; padding rows come out zero."""
    directory, hf = tiny
    model = bge_ref.load(directory, dtype=dtype)
    batch = model.tokenize(["a b c d e f", "a b c d e f", "a b c d e f", "one two", "x"])
    mask = batch["attention_mask"].copy()
    mask[2, 2] = 0                                         # a hole
    assert fast.packed(mask)[1] == [(0, 2, 8), (16, 1, 7), (23, 1, 4), (27, 1, 3)] and mask[3, 4] == 0
    ids = np.where(mask == 1, batch["input_ids"], 0)
    ours = model.forward(ids, mask)
    ref = bge_ref.load(directory, dtype=dtype, forward="reference").forward(ids, mask)
    real = mask.astype(bool)
    tol = 1e-13 if dtype == "float64" else 1e-5
    assert np.abs(ours[real] - ref[real]).max() <= tol
    assert (ours[~real] == 0).all()
    theirs = hf_forward(hf, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
                        torch.float64)[-1]
    assert np.abs(ours[real] - theirs[real]).max() <= (1e-12 if dtype == "float64" else 1e-4)


def test_unpadded_batch_skips_mask_and_matches(tiny):
    directory, hf = tiny
    model = bge_ref.load(directory, dtype="float64")
    batch = model.tokenize(["same length text", "same length text"])
    assert batch["attention_mask"].all()
    ref = hf_forward(hf, batch, torch.float64)[-1]
    assert np.abs(model.forward(**batch) - ref).max() <= 1e-13


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("logit_scale", [1.0, 40.0])  # 40: scores far beyond exp's range
@pytest.mark.filterwarnings("error")                    # and no overflow warning escapes
def test_attention_against_torch_eager(dtype, logit_scale, monkeypatch):
    """attention() normalizes after @ V, and skips the max shift only while exp stays in range."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((3, 4, 9, 16)).astype(dtype) for _ in range(3))
    q *= logit_scale
    mask = np.ones((3, 9), int)
    mask[1, 5:] = 0                                       # one padded sequence
    bias = attention_mask_bias(mask, np.dtype(dtype))
    bias64 = attention_mask_bias(mask, np.dtype("float64"))
    q64, k64, v64, tb = (torch.from_numpy(a.astype(np.float64)) for a in (q, k, v, bias64))
    scores = q64 @ k64.transpose(-1, -2) * 0.25
    ref = (torch.softmax(scores + tb, -1) @ v64).numpy()  # HF's eager attention, in float64 on the same inputs
    calls, plain = [], fast.attention
    monkeypatch.setattr(fast, "attention", lambda *a, **kw: calls.append(kw.get("shift", False)) or plain(*a, **kw))
    out = fast.attention(q, k, v, bias)
    assert calls == ([False] if logit_scale == 1 else [False, True])  # the guard fired only when needed
    assert np.isfinite(out).all() and out.dtype == np.dtype(dtype)
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    # A score s rounded to the dtype moves exp(s) by |s| ulp(1) relative: a couple of roundings of the
    # largest score (|s| 3.7 at x1, 146 at x40) is the dtype's own limit (torch float32: 1.2e-7, 6.1e-7).
    bound = 2 * np.finfo(dtype).eps * max(1.0, float(scores.abs().max()))
    print(f"{dtype} logits x{logit_scale}: max rel error {rel:.1e} (bound {bound:.1e})")
    assert rel <= bound


def test_threaded_forward_matches_single_threaded(tiny, monkeypatch):
    """The thread pool only splits independent rows and heads: the same results, within the batch
    invariant (1e-6). Not always bit for bit: how rows are cut into BLAS calls decides which kernel
    handles the edge rows, and OpenBLAS's Haswell kernels round those differently in the last bit."""
    model = bge_ref.load(tiny[0])
    batch = model.tokenize(TEXTS)
    threaded = model.forward(**batch)
    np.testing.assert_array_equal(threaded, model.forward(**batch))  # repeated calls: bit for bit
    monkeypatch.setattr(threads, "THREADS", 1)
    np.testing.assert_allclose(threaded, model.forward(**batch), rtol=0, atol=1e-6)


def test_without_threadpoolctl_attention_blocks_run_in_the_calling_thread(tiny, monkeypatch):
    """threadpoolctl is optional at runtime: without it BLAS keeps its threads, so the attention
    blocks run one after the other in the caller's thread, never concurrently on the pool."""
    model = bge_ref.load(tiny[0])
    batch = model.tokenize(TEXTS)
    with_ctl = model.forward(**batch)
    monkeypatch.setattr(threads, "_blas_controller", False)  # what blas_single_threaded caches on ImportError
    assert threads.blas_single_threaded() is None
    monkeypatch.setattr(fast, "SCORES_BLOCK_BYTES", 1)   # one sequence per block: several blocks
    ran_in, plain = set(), fast.attention
    monkeypatch.setattr(fast, "attention", lambda *a, **kw: ran_in.add(threading.current_thread()) or plain(*a, **kw))
    np.testing.assert_allclose(model.forward(**batch), with_ctl, rtol=0, atol=1e-6)
    assert ran_in == {threading.current_thread()}


# -- accuracy against the float64 oracle: within 1.2x transformers' own float32 error, and the check's teeth --

@pytest.fixture(scope="module")
def minilm_oracle(minilm_path):
    """MiniLM on a padded batch: transformers' float32 and float64 runs, bge_ref's float64 (the oracle)."""
    from bge_ref.testing.oracle import four_runs, oracle_study
    batch = bge_ref.load(minilm_path).tokenize(TEXTS + ["a longer text that pads the others " * 12])
    runs = four_runs(minilm_path, batch)
    return {"batch": batch, "runs": runs, "reports": oracle_study(runs)}


def _ours32(minilm_path, oracle):
    from bge_ref.verify import compare_stages, run_ours
    run = run_ours(bge_ref.load(minilm_path), oracle["batch"])
    return compare_stages(oracle["runs"]["ours", "float64"], run, title="bge_ref float32 vs float64 oracle")


def test_float32_error_within_torch_on_minilm(minilm_path, minilm_oracle):
    over = beyond_torch(_ours32(minilm_path, minilm_oracle), minilm_oracle["reports"]["torch32"])
    assert not over, over


@pytest.mark.parametrize("texts", [["what is the boiling point of water"], TEXTS[:3]])
def test_float32_error_within_torch_for_a_few_rows(minilm_path, texts):
    """One query, or a few texts: the forward's few-rows layout (gemm.py's shorter chunks below
    SHORT_CHUNK_ROWS rows) within 1.2x transformers' float32 error too, at every stage."""
    from bge_ref.testing.oracle import four_runs, oracle_study
    from bge_ref.verify import compare_stages, run_ours
    batch = bge_ref.load(minilm_path).tokenize(texts)
    assert batch["attention_mask"].sum() < gemm.SHORT_CHUNK_ROWS
    runs = four_runs(minilm_path, batch)
    ours = compare_stages(runs["ours", "float64"], run_ours(bge_ref.load(minilm_path), batch), title="bge_ref float32")
    over = beyond_torch(ours, oracle_study(runs)["torch32"])
    assert not over, over


def _tanh_gelu_intermediate(x, dense):  # "gelu_new", the tanh approximation, where BERT uses erf
    h = x @ dense["w"].astype(x.dtype) + dense["b"]
    return 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))


def _float16_softmax_attention(q, k, v, mask_bias, **_):  # probabilities rounded to float16
    s = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1]) + (0 if mask_bias is None else mask_bias)
    return model_ref.softmax(s).astype(np.float16).astype(q.dtype) @ v


FAST_LAYER_NORM = fast.layer_norm
SABOTAGE = {  # a real error in GELU, LayerNorm, softmax or padding, each made in the fast path
    "tanh GELU": lambda mp: mp.setattr(fast, "intermediate", _tanh_gelu_intermediate),
    "LayerNorm eps 1e-5": lambda mp: mp.setattr(fast, "layer_norm", lambda x, g, b, eps, **kw: FAST_LAYER_NORM(x, g, b, 1e-5, **kw)),
    "float16 softmax": lambda mp: mp.setattr(fast, "attention", _float16_softmax_attention),
    "padding attended": lambda mp: mp.setattr(fast, "packed", lambda mask: (None, [(0, *np.shape(mask))])),
}


@pytest.mark.parametrize("error", SABOTAGE)
def test_accuracy_check_catches_a_real_error(minilm_path, minilm_oracle, monkeypatch, error):
    """The 1.2x bound has teeth: each deliberate error in the fast path fails it."""
    SABOTAGE[error](monkeypatch)
    assert beyond_torch(_ours32(minilm_path, minilm_oracle), minilm_oracle["reports"]["torch32"])


def test_one_thread_same_embeddings(minilm_path, monkeypatch):
    """BGE_REF_THREADS=1 (threads.forward_threads: the BLAS on one thread too): the same function, up
    to float32 rounding, for a query and for a long batch."""
    model = bge_ref.load(minilm_path)
    for texts in (TEXTS[:1], TEXTS * 8):
        default = model.encode(texts)
        monkeypatch.setattr(threads, "THREADS", 1)
        single = model.encode(texts)
        monkeypatch.undo()
        assert np.abs(default - single).max() <= 1e-5
