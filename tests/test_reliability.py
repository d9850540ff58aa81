"""Bad input gets a typed error naming what is wrong; good input never gives NaN, Inf or a batch-dependent vector."""
import json
import subprocess
import sys
import threading

import numpy as np
import psutil
import pytest

import bge_ref
from bge_ref import BgeRefError, CheckpointError, InputError
from tests.conftest import subprocess_env

pytestmark = pytest.mark.quick

ADVERSARIAL = ["", " ", "\t\n\r ", "\x00", "a\x00b\x01c\x7f", "\u200b\ufeff\u2028", "🦙" * 300, "\U0010ffff",
               "[CLS] [SEP] [PAD] [MASK] [UNK]", "a" * 5000, "x " * 3000, "\u0301\u0301", "ﷺ" * 50]


@pytest.fixture(scope="module")
def model(tiny):
    return bge_ref.load(tiny[0])


@pytest.mark.parametrize("texts, message", [
    (None, "texts must be a str or a list of str, got NoneType"),
    (5, "got int"),
    (b"bytes", "got bytes"),
    ([b"bytes"], r"texts\[0\] is a bytes, not a str \(decode bytes to str first\)"),
    (["ok", ["nested"]], r"texts\[1\] is a list, not a str"),
    (["ok", None], r"texts\[1\] is a NoneType"),
    ({"a"}, "got set"),
    (["ok", "bad \ud800 surrogate"], r"texts\[1\] is not valid Unicode: surrogates not allowed at character 4"),
])
def test_encode_rejects_bad_texts(model, texts, message):
    with pytest.raises(InputError, match=message):
        model.encode(texts)


@pytest.mark.parametrize("kw, message", [
    ({"pooling": "max"}, "pooling must be one of"),
    ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
    ({"batch_size": -3}, "batch_size"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"batch_size": True}, "batch_size"),
    ({"normalize": "yes"}, "normalize must be True or False"),
    ({"prompt": 7}, "prompt must be a str"),
])
def test_encode_rejects_bad_arguments(model, kw, message):
    with pytest.raises(InputError, match=message):
        model.encode(["hello"], **kw)


def test_errors_are_a_hierarchy():
    assert issubclass(InputError, BgeRefError) and issubclass(InputError, ValueError)
    assert issubclass(CheckpointError, BgeRefError)


def test_empty_inputs(model):
    assert model.encode([]).shape == (0, 64)
    empty, blank = model.encode(""), model.encode("   \t\n")
    assert np.isfinite(empty).all() and abs(np.linalg.norm(empty) - 1) < 1e-6
    np.testing.assert_array_equal(empty, blank)  # both are [CLS] [SEP]
    with pytest.raises(InputError, match="texts is empty"):
        model.tokenize([])


def test_adversarial_texts_give_finite_unit_vectors(model, minilm):
    for m, pooling in ((model, "cls"), (model, "mean"), (minilm, "mean")):
        raw = m.encode(ADVERSARIAL, pooling=pooling, normalize=False)
        assert np.isfinite(raw).all() and (np.linalg.norm(raw, axis=1) > 0).all()
    v = model.encode(ADVERSARIAL)
    assert np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-6)


def test_megabyte_text_is_cut_before_tokenizing(minilm):
    big = ("The quick brown fox jumps over the lazy dog. " * 23000)[:1_000_000]
    seen = []
    tok = minilm.tokenizer

    class Spy:  # records how many characters reach the truncating tokenizer
        def __init__(self, inner):
            self.inner = inner

        def encode_batch(self, texts):
            seen.extend(len(t) for t in texts)
            return self.inner.encode_batch(texts)

    real = tok._cut
    ref_ids = real.encode(big).ids  # tokenizers' own truncation of the whole megabyte
    tok._cut = Spy(real)
    try:
        ids = minilm.tokenize([big])["input_ids"][0]
        v = minilm.encode(big)
    finally:
        tok._cut = real
    assert ids.tolist() == ref_ids and len(ids) == minilm.max_length
    assert max(seen) < 20_000  # a prefix, not the megabyte
    assert np.isfinite(v).all()


def test_truncate_false_names_the_text(model):
    long = "word " * 200
    assert model.count_tokens(["hi", long]) == [3, 202]
    with pytest.raises(InputError, match=r"texts\[1\] has 202 tokens, more than the model's 64"):
        model.encode(["hi", long], truncate=False)
    assert model.encode(["hi", long]).shape == (2, 64)  # default: truncated


def test_truncate_false_index_counts_across_chunks(model, monkeypatch):
    import bge_ref.embedder as emb
    monkeypatch.setattr(emb, "TOKENIZE_CHUNK", 4)
    texts = ["short"] * 9 + ["word " * 200]
    with pytest.raises(InputError, match=r"texts\[9\] has 202 tokens"):
        model.encode(texts, truncate=False, batch_size=2)


@pytest.mark.parametrize("kw, message", [
    ({"input_ids": [[101, 99999, 102]], "attention_mask": [[1, 1, 1]]}, r"input_ids: values must lie in \[0, 30522\)"),
    ({"input_ids": [101, 102], "attention_mask": [1, 1]}, "2-D integer array"),
    ({"input_ids": [[101.0, 102.0]], "attention_mask": [[1, 1]]}, "2-D integer array"),
    ({"input_ids": [[101, 102]], "attention_mask": [[1, 1, 1]]}, "differs from input_ids"),
    ({"input_ids": [[101, 102]], "attention_mask": [[0, 1]]}, "first token"),
    ({"input_ids": [[101, 102]], "attention_mask": [[1, 1]], "token_type_ids": [[0, 5]]}, "token_type_ids"),
    ({"input_ids": [[101] * 65], "attention_mask": [[1] * 65]}, "65 tokens, more than the 64 positions"),
])
def test_forward_rejects_bad_ids(model, kw, message):
    with pytest.raises(InputError, match=message):
        model.forward(**kw)


def test_embedding_independent_of_batch_company_size_and_order(minilm):
    texts = ["hello world", "a much longer sentence about the weather in the mountains today", "short",
             "Café naïve résumé", "東京", "🦙 llamas", "x " * 100]
    alone = np.stack([minilm.encode(t) for t in texts])
    for batch_size in (1, 2, 3, 7, 32):
        together = minilm.encode(texts, batch_size=batch_size)
        assert np.abs(together - alone).max() <= 1e-6, batch_size
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(texts))
    shuffled = minilm.encode([texts[i] for i in perm], batch_size=3)
    assert np.abs(shuffled - alone[perm]).max() <= 1e-6


def test_repeated_calls_are_bit_identical(minilm):
    texts = ["hello world", "", "🦙 " * 20, "Café au lait, naïve résumé"]
    a, b = minilm.encode(texts), minilm.encode(texts)
    np.testing.assert_array_equal(a, b)


def test_thread_safe(minilm):
    texts = [f"text number {i} " * (1 + i % 5) for i in range(24)]
    ref = minilm.encode(texts, batch_size=8)
    results, errors = [None] * 4, []

    def work(k):
        try:
            results[k] = minilm.encode(texts, batch_size=8)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        assert np.abs(r - ref).max() <= 1e-6


def test_memory_bounded_for_100k_texts(model):
    texts = [f"short text {i}" for i in range(100_000)]
    model.encode(texts[:5000], batch_size=256)  # warm up allocator and caches
    proc = psutil.Process()
    before = proc.memory_info().rss
    out = model.encode(texts, batch_size=256)
    grown = proc.memory_info().rss - before
    assert out.shape == (100_000, 64) and np.isfinite(out).all()
    # The output itself is 25.6 MB; encodings of all 100k texts at once would add ~100 MB more.
    assert grown <= out.nbytes + 48 * 2**20, f"RSS grew {grown / 2**20:.0f} MB"


@pytest.mark.parametrize("payload, message", [
    ({"requests": {"text": "x"}}, "'requests' must be a non-empty list"),
    ({"requests": []}, "'requests' must be a non-empty list"),
    ({"requests": [{"requests": [{"text": "x"}]}]}, r"requests\[0\]: unknown field"),
    ({"requests": [{"text": "x"}], "text": "y"}, "cannot be combined"),
    ({"text": ["a", b"b"]}, r"inputs\.text\[1\] is a bytes"),
    ({"text": None}, r"inputs\.text must be a str or a list of str"),
    ({"text": "x", "pooling": None}, "pooling must be 'mean' or 'cls'"),
    ({"text": "\udfff"}, "not valid Unicode"),
    ("text", "must be a JSON object"),
])
def test_run_rejects(model, payload, message):
    with pytest.raises(InputError, match=message):
        model.run(payload)


def test_run_truncates_long_text_and_accepts_100(model):
    out = model.run({"text": ["word " * 1000] + ["x"] * 99})
    assert out["shape"] == [100, 64] and np.isfinite(np.array(out["data"])).all()


def _cli(*args, stdin=b""):
    return subprocess.run([sys.executable, "-m", "bge_ref", *args], input=stdin, capture_output=True, timeout=300,
                          env=subprocess_env())


def test_cli_bad_input_is_a_clean_error(tiny):
    r = _cli("embed", "--model", str(tiny[0]), stdin=b"fine\n\xff\xfe broken\n")
    assert r.returncode == 2 and b"stdin line 2 is not valid UTF-8" in r.stderr and b"Traceback" not in r.stderr
    r = _cli("embed", "--model", str(tiny[0]), "--batch-size", "0", "x")
    assert r.returncode == 2 and b"argument --batch-size: must be a positive integer, got '0'" in r.stderr
    r = _cli("embed", "--model", str(tiny[0]), stdin=b"a\n\n  \nb\n")
    assert r.returncode == 2 and b"stdin line 2 is blank" in r.stderr  # rows would no longer match lines
    r = _cli("embed", "--model", str(tiny[0]), "--skip-blank", stdin=b"a\n\n  \nb\n")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["shape"] == [2, 64] and out["lines"] == [1, 4]


def test_corrupt_tokenizer_and_config(tiny, tmp_path):
    import shutil
    d = tmp_path / "c"
    shutil.copytree(tiny[0], d)
    (d / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: cannot load tokenizer"):
        bge_ref.load(d)
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="must hold a JSON object"):
        bge_ref.load(d)
    (d / "config.json").write_text('{"hidden_size": "big"}')
    with pytest.raises(CheckpointError, match="lacks|must be a number"):
        bge_ref.load(d)


def test_overlapping_tensors_in_header(tiny, tmp_path):
    import shutil
    import struct
    d = tmp_path / "o"
    shutil.copytree(tiny[0], d)
    f = d / "model.safetensors"
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    a, b = "encoder.layer.0.output.dense.bias", "encoder.layer.1.output.dense.bias"
    header[b]["data_offsets"] = header[a]["data_offsets"]  # two tensors claim the same bytes
    new = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    with pytest.raises(CheckpointError, match="overlap"):
        bge_ref.load(d)


def test_bad_dtype_argument(tiny):
    with pytest.raises(InputError, match="dtype must be 'float32' or 'float64'"):
        bge_ref.load(tiny[0], dtype="float16")
