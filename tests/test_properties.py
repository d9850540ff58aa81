"""Property-based: whatever is thrown at encode() and run(), the answer is a documented error or
finite vectors of the right shape (unit norm when normalized)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bge_ref
from bge_ref import InputError

pytestmark = [pytest.mark.blas, pytest.mark.quick]  # blas: tolerances set by BLAS rounding, CI reruns these on a second kernel

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Every code point, surrogates included: a lone surrogate must be refused, not crash the tokenizer.
any_char = st.characters(codec=None, exclude_categories=())
text = st.text(any_char, max_size=80) | st.text(st.sampled_from("ab ,.!?é東🦙\x00\t\n[]"), max_size=400)
junk = st.none() | st.integers() | st.binary(max_size=8) | st.floats() | st.lists(st.text(max_size=3), max_size=2)
texts = st.lists(text | junk, max_size=6) | text | junk


@pytest.fixture(scope="module")
def model(tiny):
    return bge_ref.load(tiny[0])


def _valid_text(t):
    if not isinstance(t, str):
        return False
    try:
        t.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@SETTINGS
@given(texts=texts, pooling=st.sampled_from(["cls", "mean", None, "max"]), normalize=st.sampled_from([True, False, None]))
def test_encode_answers_with_vectors_or_input_error(model, texts, pooling, normalize):
    items = [texts] if isinstance(texts, str) else texts
    valid = isinstance(items, list) and all(_valid_text(t) for t in items) and pooling != "max"
    try:
        out = model.encode(texts, pooling=pooling, normalize=normalize)
    except InputError:
        assert not valid
        return
    assert valid
    assert out.shape == ((64,) if isinstance(texts, str) else (len(items), 64))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    if normalize is not False and len(items):
        np.testing.assert_allclose(np.linalg.norm(out.reshape(-1, 64), axis=1), 1, atol=1e-5)


payload_value = text | junk | st.lists(text, max_size=4)
messy = st.dictionaries(st.sampled_from(["text", "pooling", "extra"]),
                        payload_value | st.sampled_from(["cls", "mean"]), max_size=3)
plain = st.text(st.sampled_from("ab ,.!?é東🦙\x00\t"), min_size=1, max_size=60)
wellformed = st.fixed_dictionaries({"text": plain | st.lists(plain, min_size=1, max_size=4)},
                                   optional={"pooling": st.sampled_from(["cls", "mean"])})
request = wellformed | messy  # about half the payloads are valid, half exercise the errors
payload = request | st.fixed_dictionaries({"requests": st.lists(request, max_size=3)}) | junk


@settings(SETTINGS, max_examples=150)
@given(payload=payload)
def test_run_answers_with_schema_or_input_error(model, payload):
    try:
        out = model.run(payload)
    except InputError:
        return
    responses = out["responses"] if "responses" in out else [out]
    requests = payload["requests"] if "requests" in payload else [payload]
    assert len(responses) == len(requests)
    for req, res in zip(requests, responses):
        n = 1 if isinstance(req["text"], str) else len(req["text"])
        assert 1 <= n <= 100 and res["shape"] == [n, 64] and res["pooling"] == req.get("pooling", "mean")
        data = np.array(res["data"])
        assert data.shape == (n, 64) and np.isfinite(data).all()
        np.testing.assert_allclose(np.linalg.norm(data, axis=1), 1, atol=1e-5)


words = st.lists(st.text(st.sampled_from("abcdeéü東🦙.,'-"), min_size=1, max_size=12), min_size=1, max_size=40)
separators = st.sampled_from([" ", "  ", "\n", "\t", " \u3000 "])


@SETTINGS
@given(parts=words, sep=separators, repeat=st.integers(200, 3000))
def test_prefix_truncation_equals_full_truncation(minilm, parts, sep, repeat):
    long = sep.join(parts * (repeat // len(parts) + 1))
    ours = minilm.tokenizer.encode([long])[0].ids
    assert ours == minilm.tokenizer._cut.encode(long).ids  # tokenizers' truncation of the whole text
