"""The loader: strict checks at load time, each error naming the file and tensor."""
import json
import re
import shutil
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import bge_ref
from bge_ref import CheckpointError
from bge_ref.checkpoint import load_params, read_safetensors
from bge_ref.config import BertConfig

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


@pytest.mark.parametrize("weights_dtype", [None, "float16"])
def test_weights_transposed_into_row_major_arrays(ckpt, weights_dtype):
    """Every encoder matrix is its HF weight transposed, stored row-major (gemm.py reads chunks of
    its rows), the tiled copy exact at every tile edge; the word table stays a view of the file."""
    m = bge_ref.load(ckpt, weights_dtype=weights_dtype)
    ref = load_file(ckpt / "model.safetensors")
    p = "encoder.layer.1."
    layer = m.params["layers"][1]
    pairs = [(layer["attn_out"]["dense"]["w"], ref[p + "attention.output.dense.weight"]),
             (layer["inter"]["dense"]["w"], ref[p + "intermediate.dense.weight"]),
             (layer["out"]["dense"]["w"], ref[p + "output.dense.weight"]),
             (layer["attn"]["qkv"]["w"], np.concatenate([ref[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")]))]
    for w, hf in pairs:
        assert w.flags.c_contiguous and w.dtype == (weights_dtype or np.float32)
        np.testing.assert_array_equal(w, hf.T.astype(w.dtype))
    assert not m.params["embeddings"]["word"].flags.owndata  # a view of the mapped file


@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # OpenBLAS's somatcopy; NumPy tiles
def test_row_major_copy_is_exact_at_tile_edges(monkeypatch, dtype):
    from bge_ref import checkpoint
    monkeypatch.setattr(checkpoint, "TILE", 5)
    a, b = np.arange(7 * 13, dtype=dtype).reshape(7, 13), np.arange(3 * 13, dtype=dtype).reshape(3, 13)
    np.testing.assert_array_equal(checkpoint._row_major([a, b]), np.concatenate([a, b]).T)


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
    with pytest.raises(CheckpointError, match=r"intermediate\.dense\.weight' has shape \(100, 64\), but config\.json "
                                              r"\(intermediate_size 128, hidden_size 64\) implies \(128, 64\)"):
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
    ({"num_hidden_layers": 3}, r"holds 2 encoder layers, but config\.json's num_hidden_layers is 3"),
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


def _config(d, **change):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(change)
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("change, message", [
    ({"num_hidden_layers": 1_000_000_000}, r"config\.json: num_hidden_layers must be an integer from 1 to 1024, got 1000000000"),
    ({"num_hidden_layers": 1000}, r"model\.safetensors: holds 2 encoder layers, but config\.json's num_hidden_layers is 1000"),
    ({"vocab_size": 10_000_000}, r"model\.safetensors: tensor 'embeddings\.word_embeddings\.weight' has shape "
                                 r"\(30522, 64\), but config\.json \(vocab_size 10000000, hidden_size 64\)"),
    ({"hidden_size": 65536}, r"model\.safetensors: tensor 'embeddings\.word_embeddings\.weight' has shape "
                             r"\(30522, 64\), but config\.json \(vocab_size 30522, hidden_size 65536\)"),
    ({"max_position_embeddings": 1 << 20}, r"position_embeddings\.weight' has shape \(64, 64\), but config\.json "
                                           r"\(max_position_embeddings 1048576, hidden_size 64\)"),
    ({"intermediate_size": 1 << 18}, r"intermediate\.dense\.weight' has shape \(128, 64\), but config\.json "
                                     r"\(intermediate_size 262144, hidden_size 64\)"),
    ({"hidden_size": float("inf")}, r"config\.json: hidden_size must be an integer .* got inf"),
    ({"layer_norm_eps": float("nan")}, r"config\.json: layer_norm_eps must be a finite number"),
    ({"pad_token_id": -1}, r"config\.json: pad_token_id must be an integer from 0 to 30521"),
])
def test_huge_or_wrong_sizes_are_refused_promptly_in_bounded_memory(ckpt, change, message):
    """Checked against the header's shapes before a table or an array is made from them."""
    import time
    import tracemalloc
    _config(ckpt, **change)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=message):
            bge_ref.load(ckpt, tokenizer="python")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak >> 20} MB allocated"  # the tokenizer's vocabulary, no more
    t0 = time.perf_counter()  # the config and weights part alone (load() also reads the tokenizer)
    with pytest.raises(CheckpointError, match=message):
        load_params(ckpt / "model.safetensors", BertConfig.from_json(ckpt / "config.json"))
    assert time.perf_counter() - t0 < 10.0  # a hang guard, not a speed figure: the old load built 10^9 layer tables


def test_header_checked_before_any_tensor_data(ckpt):
    # A NaN in the first tensor read and a wrong shape in the last: the shape is found first, from the
    # header alone (before, the NaN was found after reading data that a bad config had already cost).
    def poison(t):
        t["embeddings.word_embeddings.weight"] = t["embeddings.word_embeddings.weight"].copy()
        t["embeddings.word_embeddings.weight"][0, 0] = np.nan
        t["encoder.layer.1.output.LayerNorm.bias"] = t["encoder.layer.1.output.LayerNorm.bias"][:10]
    _rewrite(ckpt, poison)
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.1\.output\.LayerNorm\.bias' has shape \(10,\)"):
        bge_ref.load(ckpt)


def _write_header(f, header: bytes, data: bytes = b""):
    f.write_bytes(struct.pack("<Q", len(header)) + header + data)


@pytest.mark.parametrize("header, message", [
    (b"[" * 100_000 + b"]" * 100_000, "cannot read safetensors header: JSON nested too deeply"),
    (b'{"a": {"dtype": "F32", "shape": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}", "nested too deeply"),
    (b'{"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}', "tensor 'a' has a malformed header entry"),
    (b'{"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}', "tensor 'a' has a malformed header entry"),
    (b'{"a": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}}', "tensor 'a' has a malformed header entry"),
    (b'{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}', "tensor 'a' has a malformed header entry"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}', "tensor 'a' has a malformed header entry"),
    (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}}', "tensor 'a' has a malformed header entry"),
    (b'{"a": "F32"}', "tensor 'a' has a malformed header entry"),
    (b'{"a": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 4]}}', "tensor 'a' has unsupported dtype 'Q4'"),
    # 2^64 elements: numpy's int64 product wraps to 0, which a 0-byte tensor would have matched
    (b'{"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}}',
     r"tensor 'a' has 0 bytes for shape \[4294967296, 4294967296\] F32 \(73786976294838206464 needed\)"),
], ids=lambda v: v[:40].decode() if isinstance(v, bytes) else None)
def test_hostile_safetensors_header(ckpt, header, message):
    f = ckpt / "model.safetensors"
    _write_header(f, header, b"\0" * 8)
    with pytest.raises(CheckpointError, match=re.escape(str(f)) + ": .*" + message):
        read_safetensors(f)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "modules.json", "1_Pooling/config.json",
                                  "sentence_bert_config.json", "tokenizer_config.json"])
@pytest.mark.parametrize("backend", ["python", "tokenizers"])
def test_nested_json_in_any_checkpoint_file(ckpt, name, backend):
    (ckpt / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (ckpt / "1_Pooling").mkdir()
    (ckpt / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (ckpt / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    assert bge_ref.load(ckpt, tokenizer=backend).max_length == 32
    if name == "tokenizer_config.json":  # read only when sentence_bert_config.json has no limit
        (ckpt / "sentence_bert_config.json").unlink()
    (ckpt / name).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match=re.escape(str(ckpt / name)) + ": .*(nested too deeply|cannot load tokenizer)"):
        bge_ref.load(ckpt, tokenizer=backend)
