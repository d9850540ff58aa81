"""bge_ref/corpus/store.py: chunks checked against their sha256 on resume and at assembly (a damaged
one is redone and reported), writes fsynced before the rename, the output locked while a job runs."""
import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from bge_ref.corpus import CorpusError, embed_corpus
from bge_ref.corpus import batches, store
from tests.conftest import subprocess_env
from tests.corpus_helpers import TEXTS, run_cli, write_txt
from tests.corpus_helpers import partial_run, tiny_model  # noqa: F401 (fixtures)

pytestmark = pytest.mark.quick


def altered(path):
    """The chunk at path with one vector changed, and its stored sha256 kept."""
    with np.load(path) as z:
        arrays = dict(z)
    arrays["vectors"][0, 0] += 0.5
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_damaged_chunks_are_redone_and_reported_on_resume(partial_run, tiny, tiny_model):
    src, out = partial_run
    chunks = sorted((out.parent / "o.npy.parts").glob("w*.npz"))
    chunks[0].write_bytes(chunks[0].read_bytes()[:100])  # truncated
    chunks[1].write_bytes(b"")                           # empty
    altered(chunks[2])                                   # a vector changed
    stream = io.StringIO()
    result = embed_corpus(src, out, model=tiny[0], window=32, stream=stream)
    assert result["status"] == "complete" and result["redone"] == 3
    log = stream.getvalue()
    for chunk, why in ((chunks[0], "unreadable (BadZipFile"), (chunks[1], "unreadable"),
                       (chunks[2], "its contents differ from the sha256 written with them")):
        assert f"embed-corpus: chunk {chunk} is damaged ({why}" in log
    assert log.count("; embedding it again\n") == 3
    resumed = 100 - sum(int(c.stem.split("-n")[1]) for c in chunks[:3])  # checked before the work, not found at the end
    assert log.index("embedding it again") < log.index("resuming: ")
    assert log.count("resuming: ") == 1 and f"embed-corpus: resuming: {resumed} of 100 texts" in log
    ref = np.concatenate(list(tiny_model.encode_stream(TEXTS, window=32)))
    assert np.array_equal(np.load(out), ref)


def test_a_chunk_damaged_during_the_run_is_caught_at_assembly(tmp_path, tiny, tiny_model, monkeypatch):
    src = write_txt(tmp_path / "c.txt", TEXTS)
    saved = []

    def save_then_alter(path, index, vectors):
        store.save_chunk(path, index, vectors)
        if not saved:
            altered(path)  # a disk or another program changed it after the commit
        saved.append(path.name)
    monkeypatch.setattr(batches, "save_chunk", save_then_alter)
    stream = io.StringIO()
    result = embed_corpus(src, tmp_path / "o.npy", model=tiny[0], window=32, quiet=True, stream=stream)
    assert result["redone"] == 1 and saved.count(saved[0]) == 2  # embedded again, once
    assert stream.getvalue().splitlines() == [
        f"embed-corpus: chunk {tmp_path / 'o.npy.parts' / saved[0]} is damaged (its contents differ from the "
        "sha256 written with them); embedding it again"]  # said even with quiet
    assert np.array_equal(np.load(tmp_path / "o.npy"), np.concatenate(list(tiny_model.encode_stream(TEXTS, window=32))))


def test_writes_are_fsynced_before_the_rename_and_leave_nothing_when_interrupted(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))) or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", os.path.basename(b))) or replace(a, b))
    path = tmp_path / "w0000000-c0000-of0001-n0002.npz"
    store.save_chunk(path, np.arange(2), np.ones((2, 3), np.float32))
    monkeypatch.undo()
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]  # the file, the rename, its directory
    assert events[0][1].startswith(f".{path.name}.") and events[2][1] == tmp_path.name

    def interrupted(f):
        f.write(b"half a chunk")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        store.write_atomic(tmp_path / "x.npz", interrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file, no x.npz


def test_a_second_job_on_the_same_output_fails_at_once(tmp_path, tiny):
    src = write_txt(tmp_path / "c.txt", TEXTS[:10])
    out = tmp_path / "o.npy"
    with store.locked(store.Paths(out)):
        assert (tmp_path / "o.npy.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(CorpusError) as e:
            embed_corpus(src, out, model=tiny[0], quiet=True)
    assert str(e.value) == (f"{out} is being written by another embed-corpus job (pid {os.getpid()}): "
                            f"{out}.lock is locked; wait for it to end, or choose another output")
    assert not (tmp_path / "o.npy.lock").exists()  # released and removed
    assert embed_corpus(src, out, model=tiny[0], quiet=True)["status"] == "complete"
    assert not (tmp_path / "o.npy.lock").exists()


HOLD_LOCK = """
import sys, time
from pathlib import Path
from bge_ref.corpus import store
with store.locked(store.Paths(Path(sys.argv[1]))):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_cli_two_jobs_on_one_output(tmp_path, tiny):
    src = write_txt(tmp_path / "c.txt", TEXTS[:10])
    out = tmp_path / "o.npy"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True,
                              env=subprocess_env())
    try:
        assert holder.stdout.readline() == "locked\n"
        t0 = time.monotonic()
        r = run_cli(src, "-o", out, "--model", tiny[0], "--quiet")
        assert r.returncode == 2 and r.stdout == "" and time.monotonic() - t0 < 30
        assert r.stderr == (f"bge-ref: error: {out} is being written by another embed-corpus job (pid {holder.pid}): "
                            f"{out}.lock is locked; wait for it to end, or choose another output\n")
    finally:
        holder.kill()
        holder.wait()


def test_a_parts_directory_without_its_manifest_starts_over_and_says_so(partial_run, tiny, tiny_model):
    src, out = partial_run
    parts = out.parent / "o.npy.parts"
    chunks = len(list(parts.glob("w*.npz")))
    (parts / "manifest.json").write_text('{"format": 2, "inp')  # cut by a crash of an older writer
    stream = io.StringIO()
    assert embed_corpus(src, out, model=tiny[0], window=32, quiet=True, stream=stream)["status"] == "complete"
    assert stream.getvalue() == (f"embed-corpus: {parts / 'manifest.json'} is missing or unreadable; its {chunks} "
                                 "chunks cannot be checked against this job: starting over\n")
    assert np.array_equal(np.load(out), np.concatenate(list(tiny_model.encode_stream(TEXTS, window=32))))
