"""bge_ref.dump: the hand-written safetensors writer against the safetensors library, and the readers."""
import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from bge_ref.dump import read_dump, write_safetensors
from bge_ref.errors import InputError


def _tensors():
    rng = np.random.default_rng(0)
    return {"input_ids": rng.integers(0, 30522, (2, 5)), "attention_mask": np.ones((2, 5), np.int32),
            "hidden_states.0": rng.normal(size=(2, 5, 3)), "embedding": rng.normal(size=(2, 3)).astype(np.float32),
            "odd": rng.normal(size=(3,)).astype(np.float16), "flags": np.array([True, False]), "empty": np.zeros((0, 4))}


@pytest.mark.quick  # needs no torch
def test_written_file_is_read_by_the_safetensors_library(tmp_path):
    tensors, meta = _tensors(), {"model": "m", "texts": json.dumps(["é", "東京"], ensure_ascii=False)}
    path = tmp_path / "d.safetensors"
    write_safetensors(path, tensors, meta)
    back = load_file(path)
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
    with safe_open(path, "np") as f:
        assert f.metadata() == meta
    ours, ours_meta = read_dump(path)
    assert ours_meta == meta and all(np.array_equal(ours[k], v) for k, v in tensors.items())


def test_reads_the_library_files_npz_and_bfloat16(tmp_path):
    import torch
    from safetensors.torch import save_file as save_torch
    tensors = {k: v for k, v in _tensors().items() if k != "flags"}
    save_file(tensors, tmp_path / "lib.safetensors", metadata={"a": "b"})
    back, meta = read_dump(tmp_path / "lib.safetensors")
    assert meta == {"a": "b"} and all(np.array_equal(back[k], v) for k, v in tensors.items())
    np.savez(tmp_path / "d.npz", **tensors)
    back, meta = read_dump(tmp_path / "d.npz")
    assert meta == {} and all(np.array_equal(back[k], v) for k, v in tensors.items())
    x = torch.randn(4, 8)
    save_torch({"embedding": x.to(torch.bfloat16)}, tmp_path / "bf16.safetensors")
    back, _ = read_dump(tmp_path / "bf16.safetensors")
    assert back["embedding"].dtype == np.float32
    assert np.array_equal(back["embedding"], x.to(torch.bfloat16).float().numpy())


@pytest.mark.quick  # needs no torch
@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "too short to be safetensors"),
    (b"\xff" * 64, "header claims"),
    (b"\x04\x00\x00\x00\x00\x00\x00\x00nope", "cannot read safetensors header"),
    (b"PK\x03\x04 not really a zip", "not a readable .npz"),
])
def test_unreadable_files_are_input_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / ("bad.npz" if content and content.startswith(b"PK") else "bad.safetensors")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as e:
        read_dump(path)
    assert str(path) in str(e.value)


@pytest.mark.quick  # needs no torch
def test_pickled_npz_is_refused(tmp_path):
    np.savez(tmp_path / "p.npz", hidden=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="not a readable .npz"):
        read_dump(tmp_path / "p.npz")


@pytest.mark.quick  # needs no torch
def test_unwritable_dtype_names_the_tensor(tmp_path):
    with pytest.raises(InputError, match="texts: dtype"):
        write_safetensors(tmp_path / "x.safetensors", {"texts": np.array(["a"])})
