"""Loading by hub id goes through huggingface_hub; offline with an empty cache it fails clearly."""
import pytest

import bge_ref
from bge_ref import CheckpointError

pytestmark = pytest.mark.quick  # needs no torch


def test_offline_hub_id_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache.*pass a local directory"):
        bge_ref.load("BAAI/bge-large-en-v1.5")


def test_hub_cache_is_used_offline(monkeypatch, tmp_path, tiny):
    """A snapshot in the huggingface_hub cache layout loads offline by repo id."""
    import shutil
    import huggingface_hub.constants as c
    repo = tmp_path / "models--BAAI--bge-tiny"
    snap = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny[0], snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = bge_ref.load("BAAI/bge-tiny")
    assert model.config.hidden_size == 64


def test_default_model_from_env(monkeypatch, tiny):
    monkeypatch.setenv("BGE_REF_MODEL", str(tiny[0]))
    assert bge_ref.load().config.hidden_size == 64


def test_missing_local_directory():
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        bge_ref.load("./no/such/dir")


def test_model_argument_type():
    with pytest.raises(bge_ref.InputError, match="model must be a directory or a hub repo id"):
        bge_ref.load(123)
    with pytest.raises(bge_ref.InputError, match="model must be"):
        bge_ref.load("")
