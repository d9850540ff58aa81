"""The hosted APIs' schemas (bge_ref/api.py) through Embedder.run and Embedder.openai_embeddings, on
the real all-MiniLM-L6-v2; the server (test_server.py) answers with the same functions."""
import base64

import numpy as np
import pytest
from tokenizers import Tokenizer

from bge_ref import InputError, api

from .test_embedder import MORE

pytestmark = pytest.mark.quick


def test_run_matches_hosted_schema(minilm):
    out = minilm.run({"text": ["hello world", "second"]})
    assert out["shape"] == [2, 384] and out["pooling"] == "mean"
    np.testing.assert_allclose(np.array(out["data"]), minilm.encode(["hello world", "second"], pooling="mean"),
                               atol=1e-7)
    single = minilm.run({"text": "hello world", "pooling": "cls"})
    assert single["shape"] == [1, 384] and single["pooling"] == "cls"
    both = minilm.run({"requests": [{"text": "a"}, {"text": ["b", "c"], "pooling": "cls"}]})
    assert [r["shape"] for r in both["responses"]] == [[1, 384], [2, 384]]
    np.testing.assert_allclose(both["responses"][1]["data"], minilm.encode(["b", "c"], pooling="cls"), atol=1e-7)


@pytest.mark.parametrize("payload, field", [
    ({}, "'text' is required"),
    ({"text": ""}, "text[0]: empty string"),
    ({"text": ["ok", ""]}, "text[1]: empty string"),
    ({"text": ["x"] * 101}, "between 1 and 100"),
    ({"text": []}, "between 1 and 100"),
    ({"text": "x", "pooling": "max"}, "pooling"),
    ({"text": "x", "extra": 1}, "unknown field"),
    ({"text": 5}, "must be a str"),
    ({"requests": [{"text": "x"}, {"txt": "y"}]}, "requests[1]"),
    ([], "JSON object"),
])
def test_run_rejects_bad_payloads(minilm, payload, field):
    with pytest.raises(InputError) as err:
        minilm.run(payload)
    assert field in str(err.value)
    assert isinstance(err.value, ValueError)


def test_openai_embeddings(minilm):
    out = minilm.openai_embeddings({"input": ["hello world", "hi"], "model": "m"})
    assert out["object"] == "list" and out["model"] == "m" and [d["index"] for d in out["data"]] == [0, 1]
    # batched beside "hi", not alone: within the batch invariant (1e-6), not bit for bit (BLAS blocking
    # differs with the batch shape; 1.45e-7 measured on OpenBLAS's Haswell kernel)
    np.testing.assert_allclose(out["data"][0]["embedding"], minilm.encode("hello world"), atol=1e-6)
    assert out["usage"] == {"prompt_tokens": 4 + 3, "total_tokens": 4 + 3}
    assert minilm.openai_embeddings({"input": "hi"})["model"] == minilm.name  # no model: the checkpoint's


def test_openai_base64_is_little_endian_float32(minilm):
    floats = minilm.openai_embeddings({"input": MORE, "dimensions": 384})
    b64 = minilm.openai_embeddings({"input": MORE, "encoding_format": "base64"})
    for f, b in zip(floats["data"], b64["data"]):
        v = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")  # as the openai client decodes it
        np.testing.assert_array_equal(v, np.array(f["embedding"], dtype=np.float32))
    np.testing.assert_allclose([d["embedding"] for d in floats["data"]], minilm.encode(MORE), atol=1e-6)


def test_openai_token_ids_equal_text(minilm, minilm_path):
    """Token ids as `tokenizers` gives them without special tokens embed as the text does, and long
    id lists are truncated like text; usage counts [CLS] and [SEP] after truncation."""
    hf = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))
    hf.no_truncation()
    hf.no_padding()
    ids = [hf.encode(t, add_special_tokens=False).ids for t in MORE]
    assert max(len(i) for i in ids) > minilm.max_length  # one input is truncated
    out = minilm.openai_embeddings({"input": ids})
    np.testing.assert_allclose([d["embedding"] for d in out["data"]], minilm.encode(MORE), atol=1e-6)
    assert out["usage"]["prompt_tokens"] == sum(min(len(i) + 2, minilm.max_length) for i in ids)
    one = minilm.openai_embeddings({"input": ids[0]})  # [int]: one input
    assert len(one["data"]) == 1
    np.testing.assert_allclose(one["data"][0]["embedding"], minilm.encode(MORE[0]), atol=1e-6)


@pytest.mark.parametrize("body, param, message", [
    ({"input": []}, "input", "empty list"),
    ({"input": [[]]}, "input", r"input\[0\]: empty list of token ids"),
    ({"input": [5, 30522]}, "input", r"input\[1\]: token id 30522 is out of range \[0, 30522\)"),
    ({"input": [[1], [2, -1]]}, "input", r"input\[1\]\[1\]: token id -1"),
    ({"input": [[1], "a"]}, "input", r"input\[1\] is a str"),
    ({"input": [1, True]}, "input", r"input\[1\] is a bool"),
    ({"input": ["a", ""]}, "input", r"input\[1\]: empty string"),
    ({"input": ["a", 3]}, "input", r"input\[1\] is a int"),
    ({"input": ["x"] * 2049}, "input", "at most 2048"),
    ({"input": None}, "input", "input must be a str"),
    ({"model": "m"}, "input", "input is required"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format", "'float' or 'base64'"),
    ({"input": "x", "dimensions": 256}, "dimensions", "absent or 384"),
    ({"input": "x", "dimensions": True}, "dimensions", "absent or 384"),
    ({"input": "x", "temperature": 1}, "temperature", r"unknown field\(s\) \['temperature'\]"),
    ({"input": "x", "model": 3}, "model", "model must be a str"),
    ("x", "", "JSON object"),
])
def test_openai_rejects_naming_the_field(minilm, body, param, message):
    with pytest.raises(InputError, match=message) as err:
        minilm.openai_embeddings(body)
    assert err.value.param == param


def test_openai_served_names():
    kw = dict(pooling="cls", hidden_size=8, vocab_size=10, served=["a", "b"])
    assert api.parse_openai({"input": "x"}, **kw).model == "a"  # missing: the first served name
    assert api.parse_openai({"input": "x", "model": "b"}, **kw).model == "b"
    with pytest.raises(api.UnknownModel, match="'c' does not exist"):
        api.parse_openai({"input": "x", "model": "c"}, **kw)


def test_token_ids_without_truncation_name_the_input(minilm):
    group = api.Group([[7] * 10, [7] * minilm.max_length], "mean", "input")
    assert [len(r.ids) for r in api.tokenize(minilm, group)] == [12, minilm.max_length]
    with pytest.raises(InputError, match=r"input\[1\] has 258 tokens, more than the model's 256") as err:
        api.tokenize(minilm, group, truncate=False)
    assert err.value.param == "input"  # OpenAI's error names the field
