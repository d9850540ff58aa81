"""The sentence-transformers files of a checkpoint, read as sentence-transformers reads them."""
import json
import shutil

import pytest

from bge_ref import CheckpointError
from bge_ref.st_config import max_seq_length, sentence_transformers_defaults


def test_minilm_as_sentence_transformers_declares_it(minilm_path, st_minilm):
    pooling, normalize = sentence_transformers_defaults(minilm_path)
    st_pooling = st_minilm[1].get_config_dict()["pooling_mode"]   # "mean" for all-MiniLM-L6-v2
    assert pooling == st_pooling == "mean"
    assert normalize == any(type(m).__name__ == "Normalize" for m in st_minilm) == True  # noqa: E712
    assert max_seq_length(minilm_path, 512) == st_minilm.max_seq_length == 256


@pytest.mark.quick  # needs no torch
def test_no_modules_json_is_bge_usage_and_limits(tiny):
    assert sentence_transformers_defaults(tiny[0]) == ("cls", True)
    assert max_seq_length(tiny[0], 64) == 64  # tokenizer_config's 512 capped by the position table


@pytest.mark.quick  # needs no torch
def test_cls_pooling_and_unsupported_modes(tmp_path, minilm_path):
    d = tmp_path / "m"
    shutil.copytree(minilm_path, d, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "onnx", "openvino"))
    cfg = d / "1_Pooling" / "config.json"
    modes = json.loads(cfg.read_text())
    cfg.write_text(json.dumps(dict(modes, pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)))
    assert sentence_transformers_defaults(d) == ("cls", True)
    cfg.write_text(json.dumps(dict(modes, pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True)))
    with pytest.raises(CheckpointError, match=r"pooling \['pooling_mode_max_tokens'\] is not supported"):
        sentence_transformers_defaults(d)
    (d / "modules.json").write_text("{broken")
    with pytest.raises(CheckpointError, match=r"modules\.json: not valid JSON"):
        sentence_transformers_defaults(d)


def test_files_of_the_wrong_shape_are_named(tmp_path):
    """Each file of the wrong JSON type is a CheckpointError naming it (they were AttributeErrors)."""
    (tmp_path / "sentence_bert_config.json").write_text("[256]")
    with pytest.raises(CheckpointError, match=r"sentence_bert_config\.json: expected a JSON object, got list"):
        max_seq_length(tmp_path, 512)
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": true}')  # not a length: ignored
    assert max_seq_length(tmp_path, 512) == 512
    (tmp_path / "modules.json").write_text('{"0": "Pooling"}')
    with pytest.raises(CheckpointError, match=r"modules\.json: expected a JSON array, got dict"):
        sentence_transformers_defaults(tmp_path)
    (tmp_path / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Pooling", "path": 1}]))
    with pytest.raises(CheckpointError, match=r"modules\.json: the Pooling module's path must be a string, got 1"):
        sentence_transformers_defaults(tmp_path)
    (tmp_path / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Pooling", "path": "p"}]))
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match=r"p/config\.json: JSON nested too deeply"):
        sentence_transformers_defaults(tmp_path)
