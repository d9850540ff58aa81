"""The loader: strict checks at load time, each error naming the file and tensor."""
import json
import shutil
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import bge_ref
from bge_ref import CheckpointError
from bge_ref.checkpoint import read_safetensors

pytestmark = pytest.mark.quick  # needs no torch


@pytest.fixture
def ckpt(tiny, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(tiny[0], d)
    return d


def _rewrite(d, fn):
    tensors = load_file(d / "model.safetensors")
    fn(tensors)
    save_file(tensors, d / "model.safetensors")


def test_memory_mapped_and_transposed(ckpt):
    m = bge_ref.load(ckpt)
    w = m.params["layers"][0]["inter"]["dense"]["w"]
    assert not w.flags.owndata and not w.flags.writeable  # a view of the mapped file
    ref = load_file(ckpt / "model.safetensors")["encoder.layer.0.intermediate.dense.weight"]
    np.testing.assert_array_equal(w, ref.T)


def test_truncated_file(ckpt):
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor .* claims bytes .*truncated"):
        bge_ref.load(ckpt)


def test_tiny_and_garbage_files(ckpt):
    f = ckpt / "model.safetensors"
    f.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="too short"):
        bge_ref.load(ckpt)
    f.write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\0" * 64)
    with pytest.raises(CheckpointError, match="cannot read safetensors header"):
        bge_ref.load(ckpt)


def test_header_lying_about_size(ckpt):
    f = ckpt / "model.safetensors"
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    name = "encoder.layer.1.output.dense.bias"
    header[name]["shape"] = [header[name]["shape"][0] * 2]
    new = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    with pytest.raises(CheckpointError, match=f"tensor '{name}' has .* bytes for shape"):
        read_safetensors(f)


def test_missing_tensor(ckpt):
    _rewrite(ckpt, lambda t: t.pop("encoder.layer.1.attention.self.key.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) encoder\.layer\.1\.attention\.self\.key\.weight"):
        bge_ref.load(ckpt)


def test_wrong_shape(ckpt):
    def cut(t):
        t["encoder.layer.0.intermediate.dense.weight"] = t["encoder.layer.0.intermediate.dense.weight"][:100]
    _rewrite(ckpt, cut)
    with pytest.raises(CheckpointError, match=r"intermediate\.dense\.weight' has shape \(100, 64\), config\.json implies \(128, 64\)"):
        bge_ref.load(ckpt)


def test_unexpected_and_ignored_tensors(ckpt):
    _rewrite(ckpt, lambda t: t.update({"pooler.dense.weight": np.zeros((64, 64), np.float32)}))
    bge_ref.load(ckpt)  # a pooler is known and ignored
    _rewrite(ckpt, lambda t: t.update({"encoder.layer.7.output.dense.bias": np.zeros(64, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) encoder\.layer\.7"):
        bge_ref.load(ckpt)


def test_bert_prefix_and_float16_file(ckpt, tiny):
    ref = bge_ref.load(tiny[0]).encode(["hello world"])
    _rewrite(ckpt, lambda t: [t.__setitem__("bert." + k, t.pop(k).astype(np.float16)) for k in list(t)])
    got = bge_ref.load(ckpt).encode(["hello world"])
    assert np.abs(got - ref).max() < 5e-3  # float16 storage, float32 compute


def test_nan_weight(ckpt):
    def poison(t):
        t["encoder.layer.0.output.LayerNorm.weight"] = t["encoder.layer.0.output.LayerNorm.weight"].copy()
        t["encoder.layer.0.output.LayerNorm.weight"][3] = np.nan
    _rewrite(ckpt, poison)
    with pytest.raises(CheckpointError, match=r"output\.LayerNorm\.weight' contains NaN"):
        bge_ref.load(ckpt)


def test_integer_dtype(ckpt):
    _rewrite(ckpt, lambda t: t.update({"embeddings.LayerNorm.bias": np.zeros(64, np.int32)}))
    with pytest.raises(CheckpointError, match=r"embeddings\.LayerNorm\.bias' has dtype I32"):
        bge_ref.load(ckpt)


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": "gelu_new"}, "hidden_act is 'gelu_new'"),
    ({"position_embedding_type": "relative_key"}, "relative position"),
    ({"is_decoder": True}, "is_decoder"),
    ({"model_type": "roberta"}, "model_type is 'roberta'"),
    ({"hidden_size": 65}, "not divisible"),
    ({"num_hidden_layers": 3}, r"missing tensor\(s\) encoder\.layer\.2"),
])
def test_config_rejected(ckpt, change, message):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(change)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=message):
        bge_ref.load(ckpt)


def test_missing_files(ckpt):
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json: not found"):
        bge_ref.load(ckpt)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: not found"):
        bge_ref.load(ckpt)
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json not found"):
        bge_ref.load(ckpt)


def test_tokenizer_vocab_mismatch(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["vocab_size"] = 1000
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="tokenizer has 30522 tokens but the word embedding has 1000 rows"):
        bge_ref.load(ckpt)
