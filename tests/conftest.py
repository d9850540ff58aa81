"""Fixtures and helpers shared by the tests. Nothing here imports torch at module level: the quick tier
(`pytest -m quick`) runs without it, and only the fixtures that need torch or transformers import them."""
import ast
import gc
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import bge_ref
from bge_ref import gemm
from bge_ref.testing import subprocess_env  # noqa: F401  (tests import it from here)
from bge_ref.testing.checkpoints import BGE_LARGE_TEXTS, TINY_CONFIG, make_random_checkpoint, minilm_dir
from bge_ref.verify import DEFAULT_TEXTS, TOLERANCES, Report, compare_stages, run_ours

REPO = Path(__file__).resolve().parent.parent


REFERENCE_FRAMEWORKS = {"torch", "transformers", "sentence_transformers", "onnx", "onnxruntime", "ray", "nbclient"}


def module_level_imports(path: Path) -> set[str]:
    """The top-level packages a test module imports at module level."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def pytest_ignore_collect(collection_path, config):
    """`-m quick` without torch: a module importing a reference framework at module level holds no quick
    test (checked here), so it is not imported at all, rather than failing to import."""
    if config.getoption("markexpr") != "quick" or collection_path.suffix != ".py" or importlib.util.find_spec("torch"):
        return None
    heavy = module_level_imports(collection_path) & REFERENCE_FRAMEWORKS
    if not heavy:
        return None
    if "mark.quick" in collection_path.read_text(encoding="utf-8"):
        raise pytest.UsageError(f"{collection_path.name} marks quick tests but imports {sorted(heavy)} at module level")
    return True


def pytest_collection_modifyitems(config, items):
    """`-m quick` leaves out the tests also marked slow: the quick tier is the one to run often."""
    if config.getoption("markexpr") != "quick":
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture(autouse=True)
def _torch_threads():
    """torch on the machine's 2 cores, in the tests that have imported it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 2:
        torch.set_num_threads(2)


# Mixed lengths (a padded batch exercises the attention mask), accents, CJK, emoji: verify's own batch.
TEXTS = DEFAULT_TEXTS


class Checkpoint:
    """(directory, transformers BertModel) of a random checkpoint written with NumPy alone; the
    transformers model (torch) is loaded on first use, so tests that take only tiny[0] need no torch."""

    def __init__(self, directory: Path):
        self.directory, self._hf = directory, None

    @property
    def hf(self):
        if self._hf is None:
            from bge_ref.verify import load_transformers
            self._hf = load_transformers(self.directory)
        return self._hf

    def __getitem__(self, i):
        return (self.directory, self.hf)[i] if i else self.directory

    def __iter__(self):
        return iter((self.directory, self.hf))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(directory, transformers model) of a small random BERT with perturbed LayerNorms (TINY_CONFIG)."""
    return Checkpoint(make_random_checkpoint(tmp_path_factory.mktemp("tiny"), TINY_CONFIG, seed=0))


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


def hf_forward(model, batch, dtype=None):
    """transformers' hidden states for a tokenized batch (float32 by default), as NumPy arrays."""
    import torch
    model = model.to(torch.float32 if dtype is None else dtype)
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in batch.items()}, output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states]


def cosine_rows(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


# The accepted float32 accuracy (README, Verification): against the float64 oracle, bge_ref's error is
# within 1.2x of transformers' own float32 error, by max abs and by rms, at every stage. BLAS rounding
# sets both sides, so this holds on either OpenBLAS kernel (.ci/run checks both) only because
# fast.py sums its projections in short chunks (bge_ref/gemm.py).
ACCURACY_FACTOR = 1.2


def beyond_torch(ours32: Report, torch32: Report, factor: float = ACCURACY_FACTOR) -> list[str]:
    """The stages where bge_ref's float32 error against the oracle exceeds factor x transformers'."""
    over = []
    for a, b in zip(ours32.rows, torch32.rows, strict=True):
        assert a.stage == b.stage
        print(f"{a.stage:18s} max {a.max_abs:.2e} / {b.max_abs:.2e} = {a.max_abs / b.max_abs:.2f}   "
              f"rms {a.rms:.2e} / {b.rms:.2e} = {a.rms / b.rms:.2f}")
        over += [f"{a.stage} {what}: {getattr(a, what):.3e} > {factor} x {getattr(b, what):.3e}"
                 for what in ("max_abs", "rms") if getattr(a, what) > factor * getattr(b, what)]
    return over


def reference_vs_fast(directory, batch, dtype, fast_run=None) -> Report:
    """The reference forward (model.py) against the fast one (fast.py) on one batch, stage by stage,
    at the parity tolerances of `dtype`. fast_run: the fast path's run_ours output, if already made."""
    if fast_run is None:
        fast_run = run_ours(bge_ref.load(directory, dtype=dtype), batch)
    ref_run = run_ours(bge_ref.load(directory, dtype=dtype, forward="reference"), batch)
    return compare_stages(ref_run, fast_run, TOLERANCES[dtype], title=f"fast vs reference, {dtype}")


BGE_LARGE_PASSAGE = ("Dense retrieval encodes each passage once, stores the vector, and compares it with every "
                     "query by a dot product. ") * 6  # 140 tokens
BGE_LARGE_QUERY = "Represent this sentence for searching relevant passages: how does dense retrieval rank passages"


@pytest.fixture(scope="session")
def bge_large(tmp_path_factory):
    """Full bge-large-en-v1.5 size, built once per session for test_bge_large.py and test_fast.py:
    parity and oracle reports of both dtypes on a padded batch holding one 512-token text, and the
    reference forward against the fast one ("paths", dtype); and the float32 oracle study of one
    ~140-token passage ("passage": the few-rows layout, gemm.py's short chunks on bge-large's weights),
    and of one query with bge's instruction ("query": gemm.py's small-kernel column blocks on the pool's
    threads, taken on any OpenBLAS kernel here: on the SkylakeX kernel they are the forward's own path).
    The 1.34 GB checkpoint and the 2.7 GB float64 copies are freed before the tests run on the stored reports."""
    from bge_ref.testing.checkpoints import make_bge_large_random
    from bge_ref.testing.oracle import four_runs, oracle_study
    directory = tmp_path_factory.mktemp("bge_large")
    _, hf = make_bge_large_random(directory, seed=0)
    ln = {n: p.detach().numpy().copy() for n, p in hf.named_parameters() if "LayerNorm" in n}
    del hf
    gc.collect()
    config = json.loads((directory / "config.json").read_text())
    batch = bge_ref.load(directory).tokenize(BGE_LARGE_TEXTS)
    runs = four_runs(directory, batch)
    reports = oracle_study(runs)
    for dtype in ("float32", "float64"):
        reports["paths", dtype] = reference_vs_fast(directory, batch, dtype, fast_run=runs["ours", dtype])
        gc.collect()
    del runs
    gc.collect()
    passage = bge_ref.load(directory).tokenize([BGE_LARGE_PASSAGE])
    reports["passage"] = oracle_study(four_runs(directory, passage))
    gc.collect()
    query = bge_ref.load(directory).tokenize([BGE_LARGE_QUERY])
    small_kernel, gemm._small_kernel = gemm.small_kernel(), True
    try:
        reports["query"] = oracle_study(four_runs(directory, query))
    finally:
        gemm._small_kernel = small_kernel
    gc.collect()
    shutil.rmtree(directory)
    return {"config": config, "ln": ln, "batch": batch, "passage": passage, "query": query, "reports": reports}
