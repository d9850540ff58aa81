"""bge_ref/inspect.py: the attention probabilities and hidden-state norms of one text, from the
reference forward, against transformers' own (eager attention, output_attentions) on the real
all-MiniLM-L6-v2."""
import re

import numpy as np
import pytest
import torch

from bge_ref.errors import InputError
from bge_ref.inspect import as_json, look_inside, parse_request

TEXTS = ["The cat sat on the mat.", "Ünïcödé, 東京 and emoji 🦙 in one text",
         "a long input that is cut at the model's 256 tokens " * 40]


@pytest.fixture(scope="module")
def hf_eager(minilm_path):
    from transformers import BertModel
    return BertModel.from_pretrained(minilm_path, add_pooling_layer=False, attn_implementation="eager").eval()


def hf_inside(hf, minilm, text):
    batch = minilm.tokenize([text])
    with torch.no_grad():
        out = hf(**{k: torch.from_numpy(v) for k, v in batch.items()}, output_attentions=True,
                 output_hidden_states=True)
    return [a[0].numpy() for a in out.attentions], [h[0].numpy() for h in out.hidden_states]


@pytest.mark.parametrize("text", TEXTS, ids=["short", "unicode", "truncated"])
def test_equals_transformers(minilm, hf_eager, text):
    attentions, states = hf_inside(hf_eager, minilm, text)
    norms = np.stack([np.linalg.norm(h.astype(np.float64), axis=-1) for h in states])
    for layer in range(minilm.config.num_hidden_layers):
        inside = look_inside(minilm, text, layer)
        assert inside.attention.shape == attentions[layer].shape  # (H, S, S)
        np.testing.assert_allclose(inside.attention, attentions[layer], atol=1e-5, rtol=0)
        np.testing.assert_allclose(inside.hidden_norms, norms, rtol=1e-4)
    assert inside.tokens[0] == "[CLS]" and inside.tokens[-1] == "[SEP]"
    assert inside.ids == minilm.tokenize([text])["input_ids"][0].tolist()
    assert inside.truncated == (len(inside.ids) == minilm.max_length)


def test_json_body(minilm, hf_eager):
    body = as_json(look_inside(minilm, TEXTS[0], 3))
    assert set(body) == {"tokens", "ids", "truncated", "layer", "attention", "hidden_norms"}
    S, H = len(body["tokens"]), minilm.config.num_attention_heads
    assert np.shape(body["attention"]) == (H, S, S) and np.shape(body["hidden_norms"]) == (7, S)
    np.testing.assert_allclose(body["attention"], hf_inside(hf_eager, minilm, TEXTS[0])[0][3], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.sum(body["attention"], axis=-1), 1, atol=1e-5)


@pytest.mark.parametrize("body, param, message", [
    ({"text": "a"}, "", 'the body must be {"text": str, "layer": int}, got the fields [\'text\']'),
    ({"text": "a", "layer": 0, "head": 1}, "", "got the fields ['head', 'layer', 'text']"),
    (["a", 0], "", 'the body must be {"text": str, "layer": int}'),
    ({"text": "", "layer": 0}, "text", "text: empty string"),
    ({"text": ["a"], "layer": 0}, "text", "text must be a string, got list"),
    ({"text": None, "layer": 0}, "text", "text must be a string, got NoneType"),
    ({"text": "a", "layer": 6}, "layer", "layer must be an int in [0, 6) (the model has 6 layers), got 6"),
    ({"text": "a", "layer": -1}, "layer", "got -1"),
    ({"text": "a", "layer": True}, "layer", "got True"),
    ({"text": "a", "layer": "2"}, "layer", "got '2'"),
    ({"text": "a", "layer": 1.0}, "layer", "got 1.0"),
])
def test_bad_request(body, param, message):
    with pytest.raises(InputError, match=re.escape(message)) as e:
        parse_request(body, 6)
    assert e.value.param == param


def test_no_truncate(minilm):
    with pytest.raises(InputError, match="text has 562 tokens, more than the model's 256") as e:
        look_inside(minilm, TEXTS[2], 0, truncate=False)
    assert e.value.param == "text"
    assert not look_inside(minilm, TEXTS[0], 0, truncate=False).truncated
