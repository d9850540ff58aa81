"""embed-corpus --ray on a real local Ray cluster (127.0.0.1, 2 CPUs, 2 actors of half a CPU each)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

from bge_ref.corpus import embed_corpus
from tests.conftest import REPO, subprocess_env
from tests.corpus_helpers import corpus_texts, write_txt


@pytest.fixture(scope="module")
def ray_cluster():
    import ray
    old = os.environ.get("PYTHONPATH")
    # Workers are started from this environment: they import this checkout's bge_ref, as the driver does.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([old] if old else []))
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
        yield ray
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old


@pytest.mark.slow
def test_ray_equals_the_local_command(ray_cluster, tmp_path, minilm_path, minilm):
    """2,000 texts on MiniLM, the command joining the cluster by its address: within 1e-6 of encode(),
    which the local command equals bit for bit (test_corpus). Ray forms the same windows and batches,
    but runs them on one BLAS thread per actor."""
    texts = corpus_texts(2000, seed=10, max_words=10)
    src = write_txt(tmp_path / "c.txt", texts)
    address = ray_cluster.get_runtime_context().gcs_address
    r = subprocess.run([sys.executable, "-m", "bge_ref", "embed-corpus", str(src), "-o", str(tmp_path / "r.npy"),
                        "--model", str(minilm_path), f"--ray={address}", "--actors", "2", "--window", "256",
                        "--progress-every", "0"], capture_output=True, text=True, timeout=900, env=subprocess_env())
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"output": str(tmp_path / "r.npy"), "shape": [2000, 384], "skipped": 0,
                                    "status": "complete", "redone": 0}
    assert "embed-corpus: on Ray: 8 windows, 2 actors of 0.5 CPUs (1 BLAS thread each)" in r.stderr
    assert "embed-corpus: 100.0% 2,000/2,000 texts" in r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "r.npy", mmap_mode="r"), minilm.encode(texts), atol=1e-6, rtol=0)
    assert not (tmp_path / "r.npy.parts").exists()


def _actor_pids():
    """The embedding actors of this test's cluster (its raylet, and so its workers, descend from us)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if any("_WindowEmbedder" in part for part in p.cmdline()):
                found.append(p.pid)
        except psutil.Error:  # exited meanwhile
            pass
    return found


@pytest.mark.slow
def test_an_actor_killed_mid_job_is_retried(ray_cluster, tmp_path, minilm_path, minilm):
    texts = corpus_texts(640, seed=11, max_words=20)
    src = write_txt(tmp_path / "c.txt", texts)
    out, parts = tmp_path / "k.npy", tmp_path / "k.npy.parts"
    result = {}

    def job():
        result["summary"] = embed_corpus(src, out, model=minilm_path, ray=True, actors=2, window=64,
                                         chunk_tokens=512, quiet=True)
    t = threading.Thread(target=job)
    t.start()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (parts.is_dir() and any(parts.glob("w*.npz"))):
        time.sleep(0.05)
    victims = _actor_pids()
    assert victims and not out.exists(), "no actor at work to kill"
    os.kill(victims[0], signal.SIGKILL)
    t.join(timeout=600)
    assert not t.is_alive() and result["summary"]["status"] == "complete"
    assert not psutil.pid_exists(victims[0]) or psutil.Process(victims[0]).status() == psutil.STATUS_ZOMBIE
    np.testing.assert_allclose(np.load(out), minilm.encode(texts), atol=1e-6, rtol=0)
