"""Our tokenization, with either backend, against transformers' AutoTokenizer on the real all-MiniLM-L6-v2
(bge's vocabulary); the backend choice of load()."""
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bge_ref
from bge_ref import BgeRefError, InputError

from .conftest import TEXTS

LONG = "Embedding models truncate long inputs. " * 200  # ~1,400 tokens, over MiniLM's 256
MORE = TEXTS + [LONG, "  leading and trailing spaces  ", "UPPER lower MiXeD", "tab\tand\nnewline", "[CLS] x [MASK]"]


@pytest.fixture(scope="module", params=["tokenizers", "python"])
def model(request, minilm_path):
    m = bge_ref.load(minilm_path, tokenizer=request.param)
    assert m.tokenizer.backend == request.param
    return m


@pytest.fixture(scope="module")
def python_minilm(minilm_path):
    return bge_ref.load(minilm_path, tokenizer="python")


def test_batch_matches_autotokenizer(model, minilm_path):
    from transformers import AutoTokenizer
    ours = model.tokenize(MORE)
    ref = AutoTokenizer.from_pretrained(minilm_path)(MORE, padding=True, truncation=True,
                                                     max_length=model.max_length, return_tensors="np")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)
        assert ours[key].dtype == np.int64
    assert ours["input_ids"].shape == (len(MORE), 256)  # truncated to max_seq_length, not the file's 128


@pytest.mark.quick  # needs no torch
def test_padding_is_ours_not_the_files(model):
    # tokenizer.json pads everything to 128; we pad to the longest text in the batch.
    assert model.tokenize(["hi", "hello there"])["input_ids"].shape == (2, 4)


@pytest.mark.quick  # needs no torch
def test_count_tokens_is_before_truncation(model):
    n = model.count_tokens(["hello world", LONG])
    assert n[0] == 4 and n[1] > 1000
    assert model.tokenize([LONG])["input_ids"].shape[1] == 256


def test_pieces_are_the_vocabulary_entries(model, minilm_path):
    from transformers import AutoTokenizer
    ref = AutoTokenizer.from_pretrained(minilm_path)
    for text in MORE[:4]:
        assert model.tokenizer.encode([text])[0].tokens == ref.convert_ids_to_tokens(ref(text)["input_ids"])


@pytest.mark.quick  # needs no torch
def test_python_backend_embeds_as_tokenizers_does(minilm, python_minilm):
    # Same ids give the same forward pass: bit-identical vectors, through every entry point.
    py = python_minilm
    texts = [TEXTS[0], "[CLS] x [MASK]", "Führer 東京 🦙"]
    np.testing.assert_array_equal(py.encode(texts, batch_size=2), minilm.encode(texts, batch_size=2))
    assert py.count_tokens(MORE) == minilm.count_tokens(MORE)
    assert py.run({"text": texts[1:], "pooling": "cls"}) == minilm.run({"text": texts[1:], "pooling": "cls"})
    assert py.openai_embeddings({"input": texts[:1]}) == minilm.openai_embeddings({"input": texts[:1]})
    with pytest.raises(InputError, match=r"texts\[1\] has \d+ tokens, more than the model's 256"):
        py.encode(["short", LONG], truncate=False)


@pytest.mark.quick  # needs no torch
def test_python_backend_cuts_a_megabyte_to_a_prefix(minilm, minilm_path):
    py = bge_ref.load(minilm_path, tokenizer="python")
    big = ("The quick brown fox jumps over the lazy dog. " * 23000)[:1_000_000]
    seen = []
    real = py.tokenizer._python.encode
    py.tokenizer._python.encode = lambda text, max_length: seen.append(len(text)) or real(text, max_length)
    ids = py.tokenize([big])["input_ids"]
    assert max(seen) < 20_000  # a prefix, not the megabyte
    np.testing.assert_array_equal(ids, minilm.tokenize([big])["input_ids"])


@pytest.mark.quick  # needs no torch
def test_tokenizer_choice(minilm_path, monkeypatch):
    with pytest.raises(InputError, match="tokenizer must be None, 'python' or 'tokenizers', got 'rust'"):
        bge_ref.load(minilm_path, tokenizer="rust")
    assert bge_ref.load(minilm_path).tokenizer.backend == "tokenizers"  # installed: the default
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if it were not installed
    assert bge_ref.load(minilm_path).tokenizer.backend == "python"
    with pytest.raises(BgeRefError, match="needs the tokenizers package: pip install tokenizers"):
        bge_ref.load(minilm_path, tokenizer="tokenizers")


words = st.lists(st.text(st.sampled_from("abcdeéü東🦙.,'-[]MASK"), min_size=1, max_size=12), min_size=1, max_size=40)


@pytest.mark.quick  # needs no torch
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=words, sep=st.sampled_from([" ", "  ", "\n", "\t", " \u3000 "]), repeat=st.integers(200, 3000))
def test_python_prefix_cut_equals_full_truncation(minilm, python_minilm, parts, sep, repeat):
    long = sep.join(parts * (repeat // len(parts) + 1))
    assert python_minilm.tokenizer.encode([long])[0].ids == minilm.tokenizer._cut.encode(long).ids


@pytest.mark.quick  # needs no torch
def test_python_tokenizer_is_thread_safe(minilm, python_minilm):
    # One word cache and one character table shared by the threads; each text keeps its own ids.
    texts = [f"{i} Über naïve {chr(0x4E00 + i)} " + "word" * (i % 7) + " [MASK]" * (i % 3) for i in range(400)]
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda t: python_minilm.tokenizer.encode([t])[0].ids, texts))
    assert ids == [e.ids for e in minilm.tokenizer.encode(texts)]
