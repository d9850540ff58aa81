import os
from pathlib import Path

import numpy as np
import pytest
import torch

import bge_ref
from tests.checkpoints import TINY_CONFIG, make_random_bert, minilm_dir
from bge_ref.verify import DEFAULT_TEXTS

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parent.parent


def subprocess_env(**extra) -> dict:
    """The environment for a child process (`python -m bge_ref ...`, a server): this checkout's
    bge_ref first on the path, whatever copy is pip-installed, and offline."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update({k: str(v) for k, v in extra.items()})
    return env

# Mixed lengths (a padded batch exercises the attention mask), accents, CJK, emoji: verify's own batch.
TEXTS = DEFAULT_TEXTS


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(directory, transformers model) of a small random BertModel with perturbed LayerNorms."""
    return make_random_bert(tmp_path_factory.mktemp("tiny"), TINY_CONFIG, seed=0)


@pytest.fixture(scope="session")
def minilm_path():
    return minilm_dir()


@pytest.fixture(scope="session")
def minilm(minilm_path):
    return bge_ref.load(minilm_path)


@pytest.fixture(scope="session")
def st_minilm(minilm_path):
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(str(minilm_path), device="cpu")


@pytest.fixture(scope="session")
def hf_minilm(minilm_path):
    from transformers import BertModel
    return BertModel.from_pretrained(minilm_path, add_pooling_layer=False).eval()


def hf_forward(model, batch, dtype=torch.float32):
    """transformers' hidden states for a tokenized batch, as NumPy arrays."""
    model = model.to(dtype)
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in batch.items()}, output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states]


def cosine_rows(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)
