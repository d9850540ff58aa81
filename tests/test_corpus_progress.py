"""bge_ref/corpus/progress.py: progress lines, the bar, quiet, the first line at once, the ETA from tokens."""
import io
import json

import pytest

import bge_ref
from bge_ref.corpus import embed_corpus
from bge_ref.corpus.progress import Progress
from tests.corpus_helpers import corpus_texts, run_cli, write_txt

pytestmark = pytest.mark.quick  # no torch: the tiny checkpoint's directory and bge_ref only


# -- progress --------------------------------------------------------------------------------------
class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_lines_bar_and_quiet(tmp_path, tiny):
    src = write_txt(tmp_path / "c.txt", corpus_texts(200, seed=6))
    lines = io.StringIO()
    embed_corpus(src, tmp_path / "a.npy", model=tiny[0], window=64, progress_every=0, stream=lines)
    log = lines.getvalue().splitlines()
    assert [line.split(" ")[1] for line in log[:3]] == ["hashing", "scanning", "loading"]
    assert log[3].startswith("embed-corpus: ") and "/200 texts, " in log[3] and " tokens/s, ETA " in log[3]
    assert any(line.startswith("embed-corpus: 100.0% 200/200 texts") for line in log)
    assert log[-1].startswith(f"embed-corpus: done, {tmp_path / 'a.npy'} (200 x 64): 200 texts, ")
    bar = FakeTerminal()
    embed_corpus(src, tmp_path / "b.npy", model=tiny[0], window=64, stream=bar)
    assert "\r100% |" + "#" * 30 + "| 200/200 texts" in bar.getvalue()
    quiet = io.StringIO()
    embed_corpus(src, tmp_path / "c.npy", model=tiny[0], window=64, progress_every=0, quiet=True, stream=quiet)
    assert quiet.getvalue() == ""
    r = run_cli(src, "-o", tmp_path / "d.npy", "--model", tiny[0], "--quiet")
    assert r.returncode == 0 and r.stderr == "" and json.loads(r.stdout)["shape"] == [200, 64]


def test_the_first_line_comes_before_the_slow_steps(tmp_path, tiny, monkeypatch):
    """Hashing a large input and the weights, the scan, loading the model take seconds each: say so first."""
    from bge_ref.corpus import job
    src = write_txt(tmp_path / "c.txt", corpus_texts(20, seed=6))
    lines, seen = io.StringIO(), {}
    hash_input, load = job.sha256_file, bge_ref.embedder.load

    def spy(name, fn):
        return lambda *a, **k: seen.setdefault(name, lines.getvalue().splitlines()) and fn(*a, **k)
    monkeypatch.setattr(job, "sha256_file", spy("hash", hash_input))
    monkeypatch.setattr(bge_ref.embedder, "load", spy("load", load))
    embed_corpus(src, tmp_path / "o.npy", model=tiny[0], stream=lines)
    assert seen["hash"] == [f"embed-corpus: hashing {src} ({src.stat().st_size:,} bytes) and the model's files"]
    assert seen["load"][1:] == [f"embed-corpus: scanning {src}", f"embed-corpus: loading the model {tiny[0]}"]


def test_the_eta_counts_tokens_not_texts():
    """Shortest texts run first: 90 of a window's 100 texts can be 20% of its tokens."""
    now, stream = [0.0], io.StringIO()
    progress = Progress(200, window_chars=[1000, 1000], pending=[0, 1], every=0, stream=stream, clock=lambda: now[0])
    progress.measure(0, 400)  # window 0 holds 400 tokens: 0.4 per character, so window 1 about 400 too
    now[0] = 10.0
    progress.update(90, 80)   # 8 tokens/s, 720 tokens left: 90 s (by texts, 9 texts/s and 110 left: 12 s)
    assert stream.getvalue() == "embed-corpus: 10.0% 90/200 texts, 80 tokens, 8 tokens/s, ETA 0:01:30\n"
    progress = Progress(200, 100, window_chars=[1000, 1000], pending=[1], every=0, stream=stream, clock=lambda: now[0])
    progress.measure(1, 300, committed=60)  # resumed: window 0 done before, 60 of window 1's tokens too
    now[0] = 20.0
    progress.update(20, 60)   # 6 tokens/s, 300 - 60 - 60 = 180 left: 30 s; of 600 (window 0 about 300)
    assert stream.getvalue().splitlines()[-1] == "embed-corpus: 70.0% 120/200 texts, 60 tokens, 6 tokens/s, ETA 0:00:30"
