"""config.json read strictly: every field checked before anything is allocated from it, each error
naming the file and the field."""
import json
import re

import pytest

from bge_ref import CheckpointError
from bge_ref.config import LIMITS, BertConfig

pytestmark = pytest.mark.quick

GOOD = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-12, hidden_act="gelu", pad_token_id=0,
            position_embedding_type="absolute", model_type="bert")


def write(tmp_path, text: str):
    path = tmp_path / "config.json"
    path.write_text(text)
    return path


def read(tmp_path, **change):
    """BertConfig.from_json of GOOD with `change` (None deletes a key); JSON as Python writes it,
    so float('inf') and float('nan') become Infinity and NaN, which Python's json reads back."""
    cfg = {k: v for k, v in dict(GOOD, **change).items() if v is not None}
    return BertConfig.from_json(write(tmp_path, json.dumps(cfg)))


def test_good_config_and_defaults(tmp_path):
    c = read(tmp_path)
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.layer_norm_eps, c.pad_token_id) == (30522, 64, 2, 1e-12, 0)
    c = read(tmp_path, pad_token_id=None, layer_norm_eps=None, type_vocab_size=None)  # BERT's defaults
    assert (c.pad_token_id, c.layer_norm_eps, c.type_vocab_size) == (0, 1e-12, 2)
    assert read(tmp_path, layer_norm_eps=1).layer_norm_eps == 1.0  # a JSON integer is a number too
    cfg = dict(GOOD, pad_token_id=None)  # null: transformers' "unset"
    assert BertConfig.from_json(write(tmp_path, json.dumps(cfg))).pad_token_id == 0


BAD_INTEGERS = [True, 24.0, 1.5, "24", [24], {"n": 24}, float("inf"), float("-inf"), float("nan"), 0, -1]


@pytest.mark.parametrize("field", list(LIMITS))
@pytest.mark.parametrize("value", BAD_INTEGERS, ids=repr)
def test_integer_fields_are_positive_json_integers(tmp_path, field, value):
    with pytest.raises(CheckpointError, match=rf"config\.json: {field} must be an integer from 1 to {LIMITS[field]}, got"):
        read(tmp_path, **{field: value})


@pytest.mark.parametrize("field", list(LIMITS))
def test_integer_fields_have_an_upper_bound(tmp_path, field):
    if field != "num_attention_heads":  # 64 is not divisible by 1024
        assert getattr(read(tmp_path, **{field: LIMITS[field]}), field) == LIMITS[field]
    with pytest.raises(CheckpointError, match=rf"config\.json: {field} must be an integer from 1 to \d+, got {LIMITS[field] + 1}"):
        read(tmp_path, **{field: LIMITS[field] + 1})


def test_a_billion_layers_is_named_not_allocated(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json: num_hidden_layers must be .* got 1000000000"):
        read(tmp_path, num_hidden_layers=1_000_000_000)
    with pytest.raises(CheckpointError, match=r"config\.json: hidden_size must be an integer .* got inf"):
        read(tmp_path, hidden_size=float("inf"))  # was an OverflowError


@pytest.mark.parametrize("value", [float("nan"), -1, 0, float("inf"), 2, "1e-12", True], ids=repr)
def test_layer_norm_eps_is_finite_and_positive(tmp_path, value):
    with pytest.raises(CheckpointError, match=r"config\.json: layer_norm_eps must be a finite number in \(0, 1\]"):
        read(tmp_path, layer_norm_eps=value)


@pytest.mark.parametrize("value", [-1, 30522, 1e3, "0", True])
def test_pad_token_id_is_a_row_of_the_word_embedding(tmp_path, value):
    with pytest.raises(CheckpointError, match=r"config\.json: pad_token_id must be an integer from 0 to 30521 "
                                              r"\(a row of the word embedding: vocab_size is 30522\)"):
        read(tmp_path, pad_token_id=value)
    assert read(tmp_path, pad_token_id=30521).pad_token_id == 30521


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": "gelu_new"}, "hidden_act is 'gelu_new', expected 'gelu'"),
    ({"hidden_act": ["gelu"]}, r"hidden_act is \['gelu'\], expected 'gelu'"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type is 'relative_key'.*relative position"),
    ({"is_decoder": True}, "is_decoder"),
    ({"add_cross_attention": True}, "add_cross_attention"),
    ({"model_type": "roberta"}, "model_type is 'roberta'"),
    ({"hidden_size": 65}, "hidden_size 65 is not divisible by num_attention_heads 4"),
    ({"num_attention_heads": 3}, "hidden_size 64 is not divisible by num_attention_heads 3"),
    ({"vocab_size": None}, "config.json lacks 'vocab_size'"),
])
def test_unsupported_or_inconsistent(tmp_path, change, message):
    with pytest.raises(CheckpointError, match=r"config\.json: .*" + message):
        read(tmp_path, **change)


def test_long_values_are_shortened_in_messages(tmp_path):
    with pytest.raises(CheckpointError) as e:
        read(tmp_path, hidden_act="x" * 100_000)
    assert len(str(e.value)) < 300


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
    ('{"hidden_size": ' + "[" * 50_000 + "]" * 50_000 + "}", "JSON nested too deeply"),
    ("{broken", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
])
def test_unreadable_config(tmp_path, text, message):
    path = tmp_path / "config.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: ") + ".*" + message):
        BertConfig.from_json(path)
    with pytest.raises(CheckpointError, match=r"config\.json not found"):
        BertConfig.from_json(tmp_path / "nothing" / "config.json")

