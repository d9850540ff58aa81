"""Our tokenization, with either backend, against transformers' AutoTokenizer on the real all-MiniLM-L6-v2
(bge's vocabulary); the backend choice of load()."""
import copy
import functools
import json
import re
import sys
import tempfile
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bge_ref
from bge_ref import BgeRefError, InputError
from bge_ref.tokenizer import Tokenizer, split_ranges
from bge_ref.wordpiece import ASCII_PUNCTUATION, PUNCTUATION, WHITESPACE, bert_normalizer, bert_pre_tokenizer

from .conftest import TEXTS
from .test_wordpiece import FLAGS, SPEC, VARIANTS, piece, variant

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


# -- the character budget: a long text is cut to a prefix before it is tokenized ---------------------
CUT_VARIANTS = ["bge", "short words, @@ prefix", "added tokens: lstrip, rstrip, normalized", "no normalizer",
                "cased, no accent stripping", "no clean_text, no CJK"]


@functools.lru_cache(maxsize=None)
def budget_tokenizer(name: str, backend: str) -> Tokenizer:
    path = Path(tempfile.mkdtemp()) / "tokenizer.json"
    path.write_text(json.dumps(SPEC if name == "bge" else variant(VARIANTS[name])))
    return Tokenizer(path, 8, 0, backend)


def with_max_length(tok: Tokenizer, max_length: int) -> Tokenizer:
    """The same tokenizer with another max_length for prefix() (which counts with the untruncated
    tokenizer, so nothing else needs rebuilding)."""
    other = copy.copy(tok)
    other.max_length = max_length
    return other


def pieces(tok: Tokenizer, text: str) -> list[int]:
    if tok.backend == "python":
        return tok._python.piece_ids(text)
    return tok._full.encode(text, add_special_tokens=False).ids


hostile = st.one_of(
    piece,
    st.integers(1, 60).map(" ".__mul__), st.integers(1, 30).map("\x00".__mul__),
    st.integers(1, 30).map("\u0301".__mul__), st.integers(1, 20).map("a\u0301".__mul__),
    st.integers(1, 20).map(".\u0301".__mul__), st.integers(1, 30).map("東".__mul__),
    st.integers(1, 30).map(".,;".__mul__), st.integers(1, 10).map("[MASK]".__mul__),
    st.integers(90, 130).map("x".__mul__), st.integers(90, 130).map("é".__mul__),
    st.integers(90, 130).map("\x00a".__mul__), st.integers(3, 30).map("ab\u200b".__mul__),
    st.integers(1, 30).map("Bge-Ref".__mul__), st.integers(1, 30).map("<x>".__mul__),
    st.tuples(st.integers(1, 12), st.sampled_from("≠\u1fef\u226e"), st.integers(1, 12)).map(
        lambda t: "x" * t[0] + t[1] + "x" * t[2]),  # NFD splits this word in two
    st.sampled_from(["≠", "\u1fef", "\u226e", "[", "]", "<x>", "Bge-Ref", "bge-ref", "İ", "\u0340", "\ufffd",
                     "\u3000", "\U0001F999", "\U00020000", "\U000110BD", "-", "#", "##"]),
)


@pytest.mark.parametrize("backend", ["python", "tokenizers"])
@pytest.mark.parametrize("name", CUT_VARIANTS)
@settings(max_examples=120, deadline=None)
@given(parts=st.lists(hostile, min_size=1, max_size=40), max_length=st.integers(1, 12))
def test_prefix_keeps_the_first_max_length_tokens(name, backend, parts, max_length):
    """The prefix's tokens are the whole text's first ones, and at least max_length of them (or all)."""
    tok = with_max_length(budget_tokenizer(name, backend), max_length)
    text = "".join(parts)
    cut, full = pieces(tok, tok.prefix(text)), pieces(tok, text)
    assert cut == full[:len(cut)]
    assert len(cut) >= max_length or cut == full


SPLIT = ["a." * 5000, "[MASK]" * 2000, "]" * 10_000, "東" * 10_000]
LAST = "a" * 10_000 + ". x"  # 3 tokens: every one of them is needed, after the long word
ONE_WORD = ["a" * 10_000, "a" * 10_000 + " \t\u3000 ", "é" * 10_000, "a\u0301" * 5000, "x" * 150 + " " + "y" * 10_000]


@pytest.mark.parametrize("backend", ["python", "tokenizers"])
@pytest.mark.parametrize("name", CUT_VARIANTS)
@pytest.mark.parametrize("text", SPLIT + ONE_WORD + ["≠" * 10_000, LAST], ids=lambda t: repr(t[:8] + t[-3:]))
def test_hostile_texts_are_cut_and_keep_their_ids(name, backend, text):
    tok = budget_tokenizer(name, backend)
    words_cut = "run" in tok._prefix_cut.candidates.groupindex  # not with normalized added tokens
    strips = name not in ("no normalizer", "cased, no accent stripping")  # NFD: ≠ is "=" and a mark
    if text == LAST:
        assert tok.prefix(text) == text
    elif text in SPLIT or words_cut or text[0] == "≠" and strips:
        assert len(tok.prefix(text)) < 1000
    else:
        assert len(tok.prefix(text)) >= 10_000  # nothing proves a cut inside the word sound
    want = tok._python.encode(text, 8) if backend == "python" else tok._cut.encode(text)  # the whole text
    assert tok.encode([text])[0].ids == want.ids


def test_no_cut_when_an_added_token_holds_whitespace(tmp_path):
    spec = variant(lambda s: s["added_tokens"].append(dict(id=30522, content="new york", single_word=False,
                                                           lstrip=False, rstrip=False, normalized=False, special=False)))
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    tok = Tokenizer(tmp_path / "tokenizer.json", 4, 0, "python")
    text = "a. " * 100 + "new york"
    assert tok.prefix(text) == text  # "new" + " " + "york" could cross any cut
    assert tok.encode([text])[0].ids == tok._python.encode(text, 4).ids


def split_characters(flags) -> str:
    return "".join(chr(c) for a, b in split_ranges(flags) for c in range(a, b + 1))


@pytest.mark.parametrize("flags", FLAGS + [None], ids=lambda f: "+".join(k for k, v in (f or {}).items() if v) or "none")
def test_what_the_cut_before_a_split_character_relies_on(flags):
    """Every split character is a canonical starter and starts its NFD with one (so NFD reorders nothing
    across a cut), and normalizes to a string starting with whitespace or punctuation (so a word ends
    there): PrefixCut's first kind of cut."""
    normalize = (lambda t: t) if flags is None else functools.partial(bert_normalizer, **flags)
    for c in split_characters(flags):
        assert unicodedata.combining(c) == 0 and unicodedata.combining(unicodedata.normalize("NFD", c)[0]) == 0, hex(ord(c))
        n = normalize(c)
        assert n and (n[0] in WHITESPACE or bert_pre_tokenizer(n[0] + "a")[0] == n[0]), hex(ord(c))


@pytest.mark.parametrize("flags", FLAGS + [None], ids=lambda f: "+".join(k for k, v in (f or {}).items() if v) or "none")
def test_words_hold_no_split_after_normalizing(flags):
    """Every other character normalizes to no whitespace and no punctuation, so a run of them stays
    within one word: PrefixCut's second kind of cut, and the DECOMPOSES_TO_SPLIT table."""
    normalize = (lambda t: t) if flags is None else functools.partial(bert_normalizer, **flags)
    splits = set(split_characters(flags))
    others = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp < 0xE000 and chr(cp) not in splits and cp != 0x7C]
    parts = normalize("|".join(others)).split("|")  # "|" is a starter, kept by every stage
    assert len(parts) == len(others)
    split = re.compile(f"[{re.escape(WHITESPACE)}]|[{re.escape(ASCII_PUNCTUATION)}{PUNCTUATION.regex_class()}]")
    assert [hex(ord(c)) for c, n in zip(others, parts) if split.search(n)] == []


def test_count_and_untruncated_encodings_see_the_whole_text(model):
    text = "a. " * 3000
    assert model.count_tokens([text]) == [6002]
    assert len(model.tokenizer.encode([text], truncate=False)[0].ids) == 6002


@pytest.mark.parametrize("backend", ["python", "tokenizers"])
@pytest.mark.parametrize("text", ["a." * 990_000, "a" * 2_000_000], ids=["a.", "one word"])
def test_two_megabytes_cost_a_prefix(minilm_path, backend, text):
    """The issue's texts: 2 MB without a space, and one 2 MB word. Tokenized whole they took 1.1 GB and
    4 to 71 s; cut, they cost a few thousand characters."""
    import psutil
    m = bge_ref.load(minilm_path, tokenizer=backend)
    assert len(m.tokenizer.prefix(text)) < 4 * Tokenizer.CHARS_PER_TOKEN * m.max_length
    rss = psutil.Process().memory_info().rss
    ids = m.tokenize([text])["input_ids"][0].tolist()
    assert psutil.Process().memory_info().rss - rss < 100 << 20
    small = text[:20_000]  # the same first tokens, tokenized whole by the truncating tokenizer
    assert ids == (m.tokenizer._python.encode(small, 256) if backend == "python" else m.tokenizer._cut.encode(small)).ids
