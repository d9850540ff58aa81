"""bge_ref/corpus/job.py: resume after SIGKILL or Ctrl-C, refusal of another job's output, an input
changed while running, OS errors, bounded memory."""
import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bge_ref.corpus import CorpusError, embed_corpus
from tests.checkpoints import TINY_CONFIG, make_random_bert
from tests.conftest import subprocess_env
from tests.corpus_helpers import TEXTS, WORDS, corpus_texts, run_cli, write_txt
from tests.corpus_helpers import partial_run, tiny_model  # noqa: F401 (fixtures)

pytestmark = pytest.mark.quick  # no torch: the tiny checkpoint's directory and bge_ref only



# -- resuming --------------------------------------------------------------------------------------
def test_sigkill_then_rerun_continues_and_equals_an_uninterrupted_run(tmp_path, tiny):
    texts = corpus_texts(6000, seed=4, max_words=12)
    src = write_txt(tmp_path / "c.txt", texts)
    args = ["--model", tiny[0], "--window", 512, "--chunk-tokens", 256, "--batch-size", 16]
    whole = run_cli(src, "-o", tmp_path / "whole.npy", *args, "--quiet")
    assert whole.returncode == 0, whole.stderr
    out, parts = tmp_path / "k.npy", tmp_path / "k.npy.parts"
    p = subprocess.Popen([sys.executable, "-m", "bge_ref", "embed-corpus", str(src), "-o", str(out), *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not parts.is_dir() or len(list(parts.glob("w*.npz"))) < 5):
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    committed = len(list(parts.glob("w*.npz")))
    assert p.returncode == -signal.SIGKILL and not out.exists() and committed >= 5
    r = run_cli(src, "-o", out, *args)
    assert r.returncode == 0, r.stderr
    resumed = int(r.stderr.split("resuming: ")[1].split(" of")[0].replace(",", ""))
    assert 0 < resumed < len(texts)
    assert np.array_equal(np.load(out), np.load(tmp_path / "whole.npy"))
    assert not parts.exists()


def test_changed_input_or_model_refused_until_overwrite(partial_run, tmp_path, tiny, tiny_model):
    src, out = partial_run
    other_dir, _ = make_random_bert(tmp_path / "other", TINY_CONFIG, seed=1)
    with pytest.raises(CorpusError, match=r"o\.npy\.parts holds a partial run of another job: model differs "
                                          r"\(sha256 [0-9a-f]{12}\.\.\. then, sha256 [0-9a-f]{12}\.\.\. now\); "
                                          r"pass --overwrite"):
        embed_corpus(src, out, model=other_dir, window=32, quiet=True)
    with pytest.raises(CorpusError, match="'pooling' differs \\('cls' then, 'mean' now\\)"):
        embed_corpus(src, out, model=tiny[0], window=32, pooling="mean", quiet=True)
    with pytest.raises(CorpusError, match="'window' differs \\(32 then, 64 now\\)"):
        embed_corpus(src, out, model=tiny[0], window=64, quiet=True)
    texts = TEXTS
    write_txt(src, texts[:-1] + ["a changed last line"])
    with pytest.raises(CorpusError, match="partial run of another job: input differs"):
        embed_corpus(src, out, model=tiny[0], window=32, quiet=True)
    # --overwrite starts over on the new input; then a rerun does nothing, and a changed input is refused.
    r = embed_corpus(src, out, model=tiny[0], window=32, overwrite=True, quiet=True)
    assert r["status"] == "complete"
    np.testing.assert_allclose(np.load(out), tiny_model.encode(texts[:-1] + ["a changed last line"]), atol=1e-6)
    stamp = out.stat().st_mtime_ns
    stream = io.StringIO()
    assert embed_corpus(src, out, model=tiny[0], window=32, stream=stream)["status"] == "already complete"
    assert out.stat().st_mtime_ns == stamp
    assert stream.getvalue().splitlines()[1:] == [f"embed-corpus: {out} is already complete (100 texts); nothing to do"]
    write_txt(src, texts)
    with pytest.raises(CorpusError, match="o.npy holds a completed run of another job: input differs"):
        embed_corpus(src, out, model=tiny[0], window=32, quiet=True)


def test_partial_run_resumes_where_it_stopped(partial_run, tiny, tiny_model):
    src, out = partial_run
    stream = io.StringIO()
    embed_corpus(src, out, model=tiny[0], window=32, stream=stream)
    assert "resuming: 100 of 100 texts already embedded" in stream.getvalue()
    ref = np.concatenate(list(tiny_model.encode_stream(TEXTS, window=32)))
    assert np.array_equal(np.load(out), ref)  # windows of 32 texts: the batches of encode_stream's


def test_output_not_ours_is_refused(tmp_path, tiny):
    src = write_txt(tmp_path / "c.txt", ["a", "b"])
    np.save(tmp_path / "o.npy", np.zeros(3))
    with pytest.raises(CorpusError, match="o.npy exists and was not written by embed-corpus"):
        embed_corpus(src, tmp_path / "o.npy", model=tiny[0], quiet=True)
    assert embed_corpus(src, tmp_path / "o.npy", model=tiny[0], overwrite=True, quiet=True)["shape"] == [2, 64]


def test_ctrl_c_mid_job_keeps_the_committed_chunks_and_a_rerun_resumes(tmp_path, tiny, tiny_model, monkeypatch):
    from bge_ref.corpus import batches, store
    src = write_txt(tmp_path / "c.txt", TEXTS)
    calls = []

    def interrupted_on_the_third(path, index, vectors):
        calls.append(path)
        if len(calls) == 3:  # Ctrl-C in the middle of writing the third chunk
            store.write_atomic(path, lambda f: f.write(b"part of a chunk") and (_ for _ in ()).throw(KeyboardInterrupt))
        store.save_chunk(path, index, vectors)
    monkeypatch.setattr(batches, "save_chunk", interrupted_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(src, tmp_path / "o.npy", model=tiny[0], window=32, quiet=True)
    monkeypatch.undo()
    parts = tmp_path / "o.npy.parts"
    assert sorted(p.name for p in parts.iterdir() if p.suffix == ".npz") == sorted(p.name for p in calls[:2])
    assert not list(parts.glob(".*")) and not (tmp_path / "o.npy.lock").exists()  # no half chunk, lock released
    stream = io.StringIO()
    result = embed_corpus(src, tmp_path / "o.npy", model=tiny[0], window=32, stream=stream)
    assert result["status"] == "complete" and result["redone"] == 0
    assert "embed-corpus: resuming: " in stream.getvalue()
    assert np.array_equal(np.load(tmp_path / "o.npy"), np.concatenate(list(tiny_model.encode_stream(TEXTS, window=32))))


def test_an_input_changed_while_the_job_runs_is_refused(tmp_path, tiny, monkeypatch):
    from bge_ref.corpus import job
    src = write_txt(tmp_path / "c.txt", TEXTS)
    read = job.window_texts

    def edit_after_the_first_window(*a):
        texts = read(*a)
        write_txt(src, TEXTS[:50] + ["an edited line"] + TEXTS[51:])  # as an editor saving mid-run
        return texts
    monkeypatch.setattr(job, "window_texts", edit_after_the_first_window)
    with pytest.raises(CorpusError) as e:
        embed_corpus(src, tmp_path / "o.npy", model=tiny[0], window=32, quiet=True)
    monkeypatch.undo()
    assert re.fullmatch(rf"{re.escape(str(src))} changed while the job ran \(sha256 [0-9a-f]{{12}}\.\.\. at the start, "
                        rf"[0-9a-f]{{12}}\.\.\. at the end\): its rows would mix two versions of it, so "
                        rf"{re.escape(str(tmp_path / 'o.npy'))} was not written; rerun with --overwrite to embed the "
                        "file as it is now", str(e.value))
    assert not (tmp_path / "o.npy").exists()
    with pytest.raises(CorpusError, match="partial run of another job: input differs"):  # nothing looks complete
        embed_corpus(src, tmp_path / "o.npy", model=tiny[0], window=32, quiet=True)


def test_a_completed_run_with_another_batch_layout_is_refused(tmp_path, tiny):
    src = write_txt(tmp_path / "c.txt", TEXTS[:20])
    embed_corpus(src, tmp_path / "o.npy", model=tiny[0], quiet=True)
    with pytest.raises(CorpusError, match=r"o\.npy holds a completed run of another job: 'batch_size' differs "
                                          r"\(32 then, 16 now\); pass --overwrite"):
        embed_corpus(src, tmp_path / "o.npy", model=tiny[0], batch_size=16, quiet=True)
    with pytest.raises(CorpusError, match="'chunk_tokens' differs"):
        embed_corpus(src, tmp_path / "o.npy", model=tiny[0], chunk_tokens=100, quiet=True)
    assert embed_corpus(src, tmp_path / "o.npy", model=tiny[0], quiet=True)["status"] == "already complete"


def test_a_manifest_of_the_old_format_is_refused(tmp_path, tiny):
    src = write_txt(tmp_path / "c.txt", TEXTS[:20])
    old = {"format": 1, "input": {"sha256": "0" * 64, "bytes": 1}, "model": {"sha256": "1" * 64}, "texts": 20, "dim": 64}
    (tmp_path / "o.manifest.json").write_text(json.dumps(old))
    np.save(tmp_path / "o.npy", np.zeros((20, 64), np.float32))
    with pytest.raises(CorpusError, match=r"o\.npy holds a completed run of another job: it was written by another "
                                          r"version of embed-corpus \(manifest format 1, this one writes 2\); pass --overwrite"):
        embed_corpus(src, tmp_path / "o.npy", model=tiny[0], quiet=True)
    (tmp_path / "p.npy.parts").mkdir()
    (tmp_path / "p.npy.parts" / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(CorpusError, match=r"p\.npy\.parts holds a partial run of another job: it was written by "
                                          r"another version of embed-corpus \(manifest format 1"):
        embed_corpus(src, tmp_path / "p.npy", model=tiny[0], quiet=True)
    assert embed_corpus(src, tmp_path / "o.npy", model=tiny[0], overwrite=True, quiet=True)["status"] == "complete"


def cli(capsys, *args):
    from bge_ref.cli import main
    status = main(["embed-corpus", *map(str, args)])
    return status, capsys.readouterr()


def test_a_read_only_directory_is_one_error_line(tmp_path, tiny, capsys, monkeypatch):
    src = write_txt(tmp_path / "c.txt", TEXTS[:10])
    ro = tmp_path / "ro"
    ro.mkdir()
    real_open = os.open

    def read_only(path, flags, *a):  # as a read-only mount answers (tests run as root: chmod would not do)
        if str(path).startswith(str(ro)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a)
    monkeypatch.setattr(os, "open", read_only)
    status, io_ = cli(capsys, src, "-o", ro / "o.npy", "--model", tiny[0])
    monkeypatch.undo()
    assert status == 2 and io_.out == ""
    assert io_.err.splitlines()[-1] == (f"bge-ref: error: {ro / 'o.npy.lock'}: Read-only file system; "
                                        "the output's directory must be writable")
    assert io_.err.count("bge-ref: error:") == 1 and "Traceback" not in io_.err


def test_a_full_disk_is_one_error_line_and_the_rerun_resumes(tmp_path, tiny, tiny_model, capsys, monkeypatch):
    from bge_ref.corpus import store
    src = write_txt(tmp_path / "c.txt", TEXTS)
    savez, calls = np.savez, []

    def disk_fills(f, **arrays):
        calls.append(1)
        if len(calls) == 3:
            f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as f.write says it: no file name
        savez(f, **arrays)
    monkeypatch.setattr(store.np, "savez", disk_fills)
    status, io_ = cli(capsys, src, "-o", tmp_path / "o.npy", "--model", tiny[0], "--window", 32, "--quiet")
    monkeypatch.undo()
    assert (status, io_.out) == (2, "")
    assert io_.err == (f"bge-ref: error: {tmp_path / 'o.npy'}: No space left on device; free some space and rerun "
                       "the same command: the chunks committed so far are kept\n")
    parts = tmp_path / "o.npy.parts"
    assert len(list(parts.glob("w*.npz"))) == 2 and not list(parts.glob(".*")) and not (tmp_path / "o.npy.lock").exists()
    status, io_ = cli(capsys, src, "-o", tmp_path / "o.npy", "--model", tiny[0], "--window", 32)
    assert status == 0 and "resuming: " in io_.err
    assert np.array_equal(np.load(tmp_path / "o.npy"), np.concatenate(list(tiny_model.encode_stream(TEXTS, window=32))))


# -- memory ----------------------------------------------------------------------------------------
MEMORY_CHILD = """
import sys
import bge_ref
from bge_ref.cli import main

def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork and exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024

bge_ref.load(sys.argv[1]).encode(["warm up"] * 1024, batch_size=1024)
base = peak_mb()
status = main(["embed-corpus", sys.argv[2], "-o", sys.argv[3], "--model", sys.argv[1], "--batch-size", "1024",
               "--quiet"])
print(base, peak_mb(), status)
"""


def corpus_job_rss(model_dir, n_lines, work) -> tuple[float, float]:
    """(MB of peak RSS with the model loaded and one batch run, MB of peak RSS at the end of an
    embed-corpus job over n_lines short lines), in a fresh process."""
    rng = np.random.default_rng(7)
    words = np.array(WORDS[:16])
    with open(work / "m.txt", "w") as f:
        for lo in range(0, n_lines, 10_000):
            picks = words[rng.integers(0, len(words), (min(10_000, n_lines - lo), 3))]
            f.write("".join(" ".join(p) + "\n" for p in picks))
    r = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(model_dir), str(work / "m.txt"), str(work / "m.npy")],
                       capture_output=True, text=True, timeout=3600, env=subprocess_env(BGE_REF_THREADS=1))
    assert r.returncode == 0, r.stderr
    base, peak, status = r.stdout.split()[-3:]
    assert status == "0" and np.load(work / "m.npy", mmap_mode="r").shape[0] == n_lines
    return float(base), float(peak)


@pytest.mark.slow
def test_memory_is_bounded_by_the_batch_not_the_corpus(tmp_path, tiny):
    """300,000 short lines on the tiny random model (its forward is cheap: the job's machinery is what
    is measured) stay within 300 MB of peak RSS above the loaded model. benchmarks/corpus_bench.py
    measures 1,000,000 (minutes: too long for CI)."""
    base, peak = corpus_job_rss(tiny[0], 300_000, tmp_path)
    assert peak - base < 300, f"peak RSS {peak:.0f} MB, with the model loaded {base:.0f} MB"


def test_os_error_hints_name_the_output_only_when_it_is_at_fault():
    from pathlib import Path

    from bge_ref.corpus.job import os_error_message
    out = Path("/data/o.npy")
    assert os_error_message(PermissionError(errno.EACCES, "Permission denied", "/models/m/model.safetensors"), out) == \
        "/models/m/model.safetensors: Permission denied"
    assert os_error_message(PermissionError(errno.EACCES, "Permission denied", "/data/o.npy.parts/manifest.json"), out) == \
        "/data/o.npy.parts/manifest.json: Permission denied; the output's directory must be writable"
