"""bge_ref/wordpiece.py against `tokenizers`: every stage on every code point, then whole texts (generated
Unicode, the standard library's pydoc topics, the test texts and published ids) with identical ids,
untruncated and truncated. Any difference is a bug in wordpiece.py: there is no tolerance."""
import copy
import functools
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydoc_data.topics import topics
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import normalizers, pre_tokenizers

from bge_ref import CheckpointError
from bge_ref.testing.checkpoints import minilm_dir
from bge_ref.tokenizer import Tokenizer
from bge_ref.tokenizer_json import read_spec, wordpiece_tokenizer
from bge_ref.wordpiece import (WordPieceTokenizer, added_vocabulary, bert_normalizer, bert_pre_tokenizer,
                               template_processing, wordpiece)

from .conftest import TEXTS
from .test_references import UNCASED_IDS

pytestmark = pytest.mark.quick  # needs no torch

SPEC = json.loads((minilm_dir() / "tokenizer.json").read_text(encoding="utf-8"))
# Every code point but the surrogates (not valid in UTF-8, so no text holds them). "|" between them is a
# starter (NFD reorders nothing across it), punctuation, and unchanged by every stage.
EVERY_CHAR = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]
FLAGS = [dict(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True),  # BERT uncased
         dict(clean_text=True, handle_chinese_chars=False, strip_accents=False, lowercase=False),
         dict(clean_text=False, handle_chinese_chars=False, strip_accents=True, lowercase=False),
         dict(clean_text=False, handle_chinese_chars=False, strip_accents=False, lowercase=True)]


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "+".join(k for k, v in f.items() if v) or "none")
def test_bert_normalizer_on_every_code_point(flags):
    rust = normalizers.BertNormalizer(**flags)
    for chunk in range(0, len(EVERY_CHAR), 1 << 16):
        text = "|".join(EVERY_CHAR[chunk:chunk + (1 << 16)])
        ours, ref = bert_normalizer(text, **flags), rust.normalize_str(text)
        if ours != ref:  # name the first character that differs
            c = next((c for c in EVERY_CHAR[chunk:] if bert_normalizer(c, **flags) != rust.normalize_str(c)), None)
            assert c is not None, "a difference between characters (NFD's reordering?)"
            pytest.fail(f"U+{ord(c):04X}: ours {bert_normalizer(c, **flags)!r}, tokenizers {rust.normalize_str(c)!r}")


def test_bert_pre_tokenizer_on_every_code_point():
    # Between two letters, a character is dropped (whitespace), its own word (punctuation) or kept in.
    text = "".join(f"a{c}b" for c in EVERY_CHAR)
    ref = [w for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(text)]
    assert bert_pre_tokenizer(text) == ref


# -- whole texts -------------------------------------------------------------------------------------
def rust(spec: dict) -> RustTokenizer:
    t = RustTokenizer.from_str(json.dumps(spec))
    t.no_padding()
    t.no_truncation()
    return t


def assert_same_ids(ours: WordPieceTokenizer, ref: RustTokenizer, texts, max_lengths=(5, 64)):
    for text, e in zip(texts, ref.encode_batch(texts)):
        assert ours.encode(text).ids == e.ids, text  # untruncated: the count too
        assert ours.encode(text).type_ids == e.type_ids, text
        assert ours.encode(text, add_special_tokens=False).ids == ref.encode(text, add_special_tokens=False).ids
    for n in max_lengths:
        ref.enable_truncation(n)
        try:
            for text, e in zip(texts, ref.encode_batch(texts)):
                assert ours.encode(text, n).ids == e.ids, (n, text)
        finally:
            ref.no_truncation()


@functools.cache
def minilm_pair():
    """(ours, tokenizers') on all-MiniLM-L6-v2's tokenizer.json: bge's uncased BERT vocabulary."""
    return wordpiece_tokenizer(minilm_dir() / "tokenizer.json"), rust(SPEC)


def test_pydoc_topics():
    texts = list(topics.values())  # 79 texts, 460 KB of English prose, Python code and tables
    assert sum(map(len, texts)) > 400_000
    assert_same_ids(*minilm_pair(), texts, max_lengths=(256, 512))


def test_test_texts_and_published_ids():
    ours, ref = minilm_pair()
    assert_same_ids(ours, ref, TEXTS + list(UNCASED_IDS))
    for text, ids in UNCASED_IDS.items():
        assert ours.encode(text, add_special_tokens=False).ids == ids


SPECIALS = ["[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]", "[cls]", "[MASK", "[[SEP]]", "[CLS][SEP]"]
WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u1680", "\u2003",
              "\u200b", "\u2028", "\u202f", "\u3000", "\ufeff"]
piece = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=12),           # every general category
    st.text(st.characters(categories=("Mn", "Mc", "Me", "Cc", "Cf", "Co", "Cn", "Zs")), max_size=6),
    st.text(st.characters(min_codepoint=0x2E80, max_codepoint=0x2FA1F, exclude_categories=("Cs",)), max_size=6),  # CJK
    st.text(st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF), max_size=4),  # emoji
    st.text(st.sampled_from("aeiouéèêëÅßΣσςİıﬁ𝐀ǅ'-.,!?#_"), max_size=12),
    st.sampled_from(SPECIALS + WHITESPACE + ["hello", "World", "unaffable", "Führer", "東京", "🦙.cpp"]),
    st.integers(95, 110).map(lambda n: "x" * n),  # words at max_input_chars_per_word (100)
    st.integers(95, 110).map(lambda n: "é" * n + "a"),
)
texts = st.lists(piece, max_size=12).map("".join)
SETTINGS = settings(max_examples=300, deadline=None)


@SETTINGS
@given(text=texts, max_length=st.integers(2, 40))
def test_generated_unicode(text, max_length):
    ours, ref = minilm_pair()
    e = ref.encode(text)
    assert ours.encode(text).ids == e.ids
    ref.enable_truncation(max_length)
    try:
        assert ours.encode(text, max_length).ids == ref.encode(text).ids
    finally:
        ref.no_truncation()


def variant(edit) -> dict:
    spec = copy.deepcopy(SPEC)
    edit(spec)
    return spec


def _added_token_flags(spec):
    mask = next(t for t in spec["added_tokens"] if t["content"] == "[MASK]")
    mask.update(lstrip=True, rstrip=True)
    spec["added_tokens"].append(dict(id=30522, content="Bge-Ref", single_word=False, lstrip=False, rstrip=False,
                                     normalized=True, special=False))
    spec["added_tokens"].append(dict(id=30523, content="<x>", single_word=False, lstrip=False, rstrip=True,
                                     normalized=False, special=True))


VARIANTS = {
    "cased, no accent stripping": lambda s: s["normalizer"].update(lowercase=False, strip_accents=None),
    "lowercase, accents kept": lambda s: s["normalizer"].update(strip_accents=False),
    "no clean_text, no CJK": lambda s: s["normalizer"].update(clean_text=False, handle_chinese_chars=False),
    "no normalizer": lambda s: s.update(normalizer=None),
    "short words, @@ prefix": lambda s: s["model"].update(max_input_chars_per_word=6, continuing_subword_prefix="@@"),
    "BertProcessing": lambda s: s.update(post_processor={"type": "BertProcessing", "sep": ["[SEP]", 102],
                                                         "cls": ["[CLS]", 101]}),
    "no post_processor": lambda s: s.update(post_processor=None),
    "added tokens: lstrip, rstrip, normalized": _added_token_flags,
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant_pair(request):
    spec = variant(VARIANTS[request.param])
    return WordPieceTokenizer(**read_spec(spec, "tokenizer.json")), rust(spec)


@settings(SETTINGS, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(piece | st.sampled_from(["bge-ref", "BGE-REF", " <x> ", "<x>"]), max_size=10).map("".join))
def test_tokenizer_json_variants(variant_pair, text):
    ours, ref = variant_pair
    e = ref.encode(text)
    assert (ours.encode(text).ids, ours.encode(text).type_ids) == (e.ids, e.type_ids)


# -- the stages one by one, as notebook 01 shows them ------------------------------------------------
def test_stages_compose_to_encode():
    ours, ref = minilm_pair()
    text = "Café [MASK] naïve 東京, unaffable!"
    pieces = added_vocabulary(text, ours.raw_added)
    assert pieces == [("Café ", None), ("[MASK]", 103), (" naïve 東京, unaffable!", None)]
    normalized = bert_normalizer(pieces[2][0])
    assert normalized == " naive  東  京 , unaffable!"
    words = bert_pre_tokenizer(normalized)
    assert words == ["naive", "東", "京", ",", "unaffable", "!"]
    assert wordpiece("unaffable", ours.vocab) == ["una", "##ffa", "##ble"]
    ids, types = template_processing([7592], ours.template)
    assert ids == [101, 7592, 102] and types == [0, 0, 0]
    assert ours.encode(text).tokens == ref.encode(text).tokens


# -- what the Python tokenizer does not read ---------------------------------------------------------
UNSUPPORTED = {
    "model.type 'BPE'": lambda s: s["model"].update(type="BPE"),
    "normalizer.type 'Sequence'": lambda s: s.update(normalizer={"type": "Sequence", "normalizers": []}),
    "pre_tokenizer.type 'Whitespace'": lambda s: s.update(pre_tokenizer={"type": "Whitespace"}),
    "post_processor.type 'RobertaProcessing'": lambda s: s.update(post_processor={"type": "RobertaProcessing"}),
    "added token '[MASK]' with single_word": lambda s: s["added_tokens"][4].update(single_word=True),
}


@pytest.mark.parametrize("what", UNSUPPORTED)
def test_unsupported_tokenizer_json_is_a_checkpoint_error(tmp_path, what):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(variant(UNSUPPORTED[what])))
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: {what} is not supported by bge_ref's Python tokenizer")):
        Tokenizer(path, 128, 0, backend="python")


def test_unreadable_tokenizer_json(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: cannot load tokenizer: not valid JSON"):
        Tokenizer(path, 128, 0, backend="python")
    path.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: tokenizer\.json must hold a JSON object"):
        Tokenizer(path, 128, 0, backend="python")
    path.write_text(json.dumps(variant(lambda s: s["post_processor"].update(single=[{"SpecialToken": {}}]))))
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: cannot load tokenizer \(malformed: KeyError 'id'\)"):
        Tokenizer(path, 128, 0, backend="python")
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: cannot load tokenizer: JSON nested too deeply"):
        Tokenizer(path, 128, 0, backend="python")
    path.write_text(json.dumps(variant(lambda s: s["model"].update(unk_token="<unk>"))))
    with pytest.raises(CheckpointError, match="model.unk_token '<unk>' is not in model.vocab"):
        Tokenizer(path, 128, 0, backend="python")


# -- ids that would index outside the word embedding, or name two tokens -----------------------------
def _vocab(token, i):
    return lambda s: s["model"]["vocab"].__setitem__(token, i)


def _added(**fields):
    return lambda s: s["added_tokens"].append(dict(dict(id=30522, content="<new>", single_word=False, lstrip=False,
                                                        rstrip=False, normalized=False, special=True), **fields))


BAD_IDS = {
    r"model\.vocab\['hello'\] has id -5; token ids must be integers from 0 to 16777215": _vocab("hello", -5),
    r"model\.vocab\['hello'\] has id 1000000000000\.0": _vocab("hello", 1e12),
    r"model\.vocab\['hello'\] has id 1000000000000;": _vocab("hello", 10 ** 12),
    r"model\.vocab\['hello'\] has id 4000000000;": _vocab("hello", 4_000_000_000),  # tokenizers takes it
    r"model\.vocab\['hello'\] has id True": _vocab("hello", True),
    r"model\.vocab\['hello'\] has id '7592'": _vocab("hello", "7592"),
    r"model\.vocab gives id 7 to both '\[unused6\]' and 'hello'": _vocab("hello", 7),  # tokenizers takes it
    r"added token '<new>' has id -1": _added(id=-1),
    r"added token '<new>' has id 2\.5": _added(id=2.5),
    r"added token '<new>' has id 7, which is already '\[unused6\]''s": _added(id=7),
    r"added token '\[MASK\]' has id 30522 but model\.vocab gives it 103": _added(content="[MASK]"),
    r"added token .* has no content string": _added(content=""),
}


@pytest.mark.parametrize("backend", ["python", "tokenizers"])
@pytest.mark.parametrize("message", BAD_IDS)
def test_bad_token_ids_are_named(tmp_path, backend, message):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(variant(BAD_IDS[message])))
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: ") + message):
        Tokenizer(path, 128, 0, backend=backend)


def test_bad_template_ids_are_named(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(variant(lambda s: s["post_processor"]["special_tokens"]["[CLS]"].update(ids=[-101]))))
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: post_processor.special_tokens['[CLS]'] has id -101")):
        Tokenizer(path, 128, 0, backend="python")
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: cannot load tokenizer")):
        Tokenizer(path, 128, 0, backend="tokenizers")  # the tokenizers library reads it as an unsigned int


def test_vocab_size_is_one_past_the_largest_id(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(variant(_added(id=40000))))
    assert Tokenizer(path, 128, 0, backend="python").vocab_size == 40001  # load() compares it with vocab_size
    rust = Tokenizer(path, 128, 0, backend="tokenizers")  # which gives the token the next free id instead
    assert rust.vocab_size == rust._full.token_to_id("<new>") + 1 == 30523
