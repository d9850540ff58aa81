"""Shared by the corpus tests: generated corpora, input files, the command in a subprocess."""
import json
import subprocess
import sys

import numpy as np
import pytest

import bge_ref
from tests.conftest import subprocess_env

WORDS = ("the quick brown fox jumps over a lazy dog while embeddings of passages fill "
         "an index for retrieval café naïve 東京 🙂").split()


def corpus_texts(n, seed=0, max_words=40):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(1, max_words + 1))) for _ in range(n)]


def write_txt(path, texts):
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


def write_jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({"id": i, field: t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)),
                    encoding="utf-8")
    return path


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "bge_ref", "embed-corpus", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=subprocess_env())


@pytest.fixture(scope="module")
def tiny_model(tiny):
    return bge_ref.load(tiny[0])


TEXTS = corpus_texts(100, seed=5)


@pytest.fixture
def partial_run(tmp_path, tiny, monkeypatch):
    """A run stopped (Ctrl-C) after its chunks were committed, before assembly: (input, output)."""
    from bge_ref.corpus import embed_corpus, job
    src = write_txt(tmp_path / "c.txt", TEXTS)

    def stop(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(job, "assemble", stop)
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(src, tmp_path / "o.npy", model=tiny[0], window=32, quiet=True)
    monkeypatch.undo()
    assert len(list((tmp_path / "o.npy.parts").glob("w*.npz"))) >= 4 and not (tmp_path / "o.npy").exists()
    return src, tmp_path / "o.npy"
