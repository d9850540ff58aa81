"""embed-corpus and Embedder.encode_stream: parity with encode(), every input format and bad input,
resume after SIGKILL, refusal of another job's output, progress, bounded memory."""
import io
import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import bge_ref
from bge_ref.corpus import CorpusError, embed_corpus, plan_chunks
from bge_ref.errors import InputError
from bge_ref.testing.checkpoints import TINY_CONFIG, make_random_checkpoint
from bge_ref.testing.memory import WORDS, corpus_job_rss
from tests.conftest import subprocess_env

pytestmark = pytest.mark.quick  # needs no torch


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


# -- encode_stream ---------------------------------------------------------------------------------
def test_encode_stream_is_encode(tiny_model):
    texts = corpus_texts(300, seed=1)
    ref = tiny_model.encode(texts, batch_size=16)
    parts = list(tiny_model.encode_stream(iter(texts), batch_size=16))  # a generator: never a list
    assert [p.shape for p in parts] == [(300, 64)]
    assert np.array_equal(np.concatenate(parts), ref)  # the same batches: the same bits
    parts = list(tiny_model.encode_stream((t for t in texts), batch_size=16, window=64, pooling="mean", prompt="q: "))
    assert [len(p) for p in parts] == [64, 64, 64, 64, 44]
    np.testing.assert_allclose(np.concatenate(parts), tiny_model.encode(texts, pooling="mean", prompt="q: "), atol=1e-6)
    assert list(tiny_model.encode_stream([])) == []


def test_encode_stream_errors_name_the_text(tiny_model):
    with pytest.raises(InputError, match="not a single str"):
        next(tiny_model.encode_stream("one text"))
    with pytest.raises(InputError, match=r"in texts\[4:6\]: texts\[1\] is a int"):
        list(tiny_model.encode_stream(["a"] * 5 + [7], window=4, batch_size=2))


def test_chunks_are_whole_sorted_batches_within_the_budgets():
    lengths = [5, 50, 7, 9, 30, 12, 3, 40, 8, 6]
    # Sorted: 3 5 | 6 7 | 8 9 | 12 30 | 40 50, padded costs 10, 14, 18, 60, 100 tokens.
    assert plan_chunks(lengths, 2, 40, 1024) == [[6, 0, 9, 2], [8, 3], [5, 4], [7, 1]]  # a batch over budget alone
    assert plan_chunks(lengths, 2, 10_000, 4) == [[6, 0, 9, 2], [8, 3, 5, 4], [7, 1]]
    assert plan_chunks([], 2, 40, 4) == []


# -- the job, locally ------------------------------------------------------------------------------
def test_corpus_equals_encode_bit_for_bit(tmp_path, minilm_path, minilm):
    texts = corpus_texts(64, seed=2, max_words=30)
    src = write_txt(tmp_path / "c.txt", texts)
    # Small chunks: many commits, yet the batches are encode()'s, so the bits are too.
    out = embed_corpus(src, tmp_path / "c.npy", model=minilm_path, batch_size=8, chunk_tokens=256, quiet=True)
    assert out == {"output": str(tmp_path / "c.npy"), "shape": [64, 384], "skipped": 0, "status": "complete"}
    got = np.load(tmp_path / "c.npy", mmap_mode="r")
    assert got.dtype == np.float32 and got.shape == (64, 384)
    assert np.array_equal(got, minilm.encode(texts, batch_size=8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.manifest.json", "c.npy", "c.txt"]
    # Other batches (a smaller sort window), --query, --pooling cls: within 1e-6.
    embed_corpus(src, tmp_path / "q.npy", model=minilm_path, window=40, batch_size=8, query=True, pooling="cls",
                 quiet=True)
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), minilm.encode_queries(texts, pooling="cls"), atol=1e-6)


def test_every_input_format_gives_the_same_rows(tmp_path, tiny, tiny_model):
    import pyarrow as pa
    import pyarrow.parquet as pq
    texts = corpus_texts(90, seed=3)
    ref = tiny_model.encode(texts)
    write_txt(tmp_path / "c.txt", texts)
    write_jsonl(tmp_path / "c.jsonl", texts, field="body")
    pq.write_table(pa.table({"id": list(range(90)), "body": texts}), tmp_path / "c.parquet", row_group_size=16)
    for name, field in (("c.txt", "text"), ("c.jsonl", "body"), ("c.parquet", "body")):
        out = tmp_path / (name.replace(".", "_") + ".npy")
        embed_corpus(tmp_path / name, out, model=tiny[0], text_field=field, window=32, quiet=True)
        np.testing.assert_allclose(np.load(out), ref, atol=1e-6, err_msg=name)
    with pytest.raises(InputError, match=r"c\.parquet: no column 'text' \(columns: id, body\)"):
        embed_corpus(tmp_path / "c.parquet", tmp_path / "x.npy", model=tiny[0])
    with pytest.raises(InputError, match=r"unknown input format '\.csv'"):
        embed_corpus(tmp_path / "c.csv", tmp_path / "x.npy", model=tiny[0])


BAD = [  # (file name, content, line at fault, message)
    ("c.txt", b"first\nsecond\n\xff\xfe bad\nfourth\n", 3, "not valid UTF-8 (byte 0: invalid start byte)"),
    ("c.txt", b"first\n\nthird\n", 2, "the line is empty"),
    ("c.txt", b"first\n   \nthird\n", 2, "the line is empty or only whitespace"),
    ("c.jsonl", b'{"text": "a"}\n{"text": "b"\n', 2, "not JSON (Expecting ',' delimiter at column 13)"),
    ("c.jsonl", b'{"text": "a"}\n{"body": "b"}\n', 2, "no 'text' field (fields: 'body'); pass --text-field"),
    ("c.jsonl", b'{"text": "a"}\n{"text": ""}\n', 2, "field 'text' is empty"),
    ("c.jsonl", b'{"text": "a"}\n{"text": 5}\n', 2, "field 'text' is a int, not a string"),
    ("c.jsonl", b'{"text": "a"}\n["text"]\n', 2, "not a JSON object (a list)"),
    ("c.jsonl", b'{"text": "a"}\n{"text": "\\ud800"}\n', 2, "field 'text' is not valid Unicode (surrogates not allowed at character 0)"),
    ("c.jsonl", b'{"text": "a"}\n\n', 2, "blank line, not a JSON object"),
]


@pytest.mark.parametrize("name,content,line,message", BAD)
def test_bad_input_names_file_and_line(tmp_path, tiny, name, content, line, message):
    src = tmp_path / name
    src.write_bytes(content)
    with pytest.raises(InputError) as e:
        embed_corpus(src, tmp_path / "out.npy", model=tiny[0], quiet=True)
    assert str(e.value) == f"{src}, line {line}: {message} (--skip-bad records bad lines in a side file instead)"
    assert not (tmp_path / "out.npy").exists()


def test_bad_parquet_rows(tmp_path, tiny):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["fine", None]}), tmp_path / "n.parquet")
    pq.write_table(pa.table({"text": pa.array([b"fine", b"\xc3("], pa.binary())}), tmp_path / "b.parquet")
    for name, message in (("n.parquet", "column 'text' is null"),
                          ("b.parquet", "column 'text' is not valid UTF-8 (byte 0: invalid continuation byte)")):
        with pytest.raises(InputError, match=re.escape(f"{name}, row 2: {message} (--skip-bad")):
            embed_corpus(tmp_path / name, tmp_path / "out.npy", model=tiny[0], quiet=True)


def test_skip_bad_records_them_beside_the_output(tmp_path, tiny, tiny_model):
    src = tmp_path / "c.jsonl"
    src.write_bytes(b'{"text": "one"}\nnot json\n{"text": "three"}\n{"text": ""}\n{"text": "five"}\n')
    out = embed_corpus(src, tmp_path / "o.npy", model=tiny[0], skip_bad=True, quiet=True)
    assert out["shape"] == [3, 64] and out["skipped"] == 2
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), tiny_model.encode(["one", "three", "five"]), atol=1e-6)
    assert np.load(tmp_path / "o.lines.npy").tolist() == [1, 3, 5]
    bad = [json.loads(line) for line in (tmp_path / "o.bad.jsonl").read_text().splitlines()]
    assert bad == [{"line": 2, "error": "not JSON (Expecting value at column 1)"},
                   {"line": 4, "error": "field 'text' is empty"}]


def test_cli_error_is_one_line(tmp_path, tiny):
    src = tmp_path / "c.txt"
    src.write_bytes(b"ok\n\xff\n")
    r = run_cli(src, "-o", tmp_path / "o.npy", "--model", tiny[0])
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"bge-ref: error: {src}, line 2: not valid UTF-8 (byte 0: invalid start byte) "
                        "(--skip-bad records bad lines in a side file instead)\n")


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


@pytest.fixture
def partial_run(tmp_path, tiny, monkeypatch):
    """A run stopped after its chunks were committed, before assembly: its parts directory."""
    import bge_ref.corpus as corpus
    src = write_txt(tmp_path / "c.txt", corpus_texts(100, seed=5))

    def stop(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(corpus, "assemble", stop)
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(src, tmp_path / "o.npy", model=tiny[0], window=32, quiet=True)
    monkeypatch.undo()
    assert len(list((tmp_path / "o.npy.parts").glob("w*.npz"))) >= 4 and not (tmp_path / "o.npy").exists()
    return src, tmp_path / "o.npy"


def test_changed_input_or_model_refused_until_overwrite(partial_run, tmp_path, tiny, tiny_model):
    src, out = partial_run
    other_dir = make_random_checkpoint(tmp_path / "other", TINY_CONFIG, seed=1)
    with pytest.raises(CorpusError, match=r"o\.npy\.parts holds a partial run of another job: model differs "
                                          r"\(sha256 [0-9a-f]{12}\.\.\. then, sha256 [0-9a-f]{12}\.\.\. now\); "
                                          r"pass --overwrite"):
        embed_corpus(src, out, model=other_dir, window=32, quiet=True)
    with pytest.raises(CorpusError, match="'pooling' differs \\('cls' then, 'mean' now\\)"):
        embed_corpus(src, out, model=tiny[0], window=32, pooling="mean", quiet=True)
    with pytest.raises(CorpusError, match="'window' differs \\(32 then, 64 now\\)"):
        embed_corpus(src, out, model=tiny[0], window=64, quiet=True)
    texts = corpus_texts(100, seed=5)
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
    assert stream.getvalue() == f"embed-corpus: {out} is already complete (100 texts); nothing to do\n"
    write_txt(src, texts)
    with pytest.raises(CorpusError, match="o.npy holds a completed run of another job: input differs"):
        embed_corpus(src, out, model=tiny[0], window=32, quiet=True)


def test_partial_run_resumes_where_it_stopped(partial_run, tiny, tiny_model):
    src, out = partial_run
    stream = io.StringIO()
    embed_corpus(src, out, model=tiny[0], window=32, stream=stream)
    assert "resuming: 100 of 100 texts already embedded" in stream.getvalue()
    ref = np.concatenate(list(tiny_model.encode_stream(corpus_texts(100, seed=5), window=32)))
    assert np.array_equal(np.load(out), ref)  # windows of 32 texts: the batches of encode_stream's


def test_output_not_ours_is_refused(tmp_path, tiny):
    src = write_txt(tmp_path / "c.txt", ["a", "b"])
    np.save(tmp_path / "o.npy", np.zeros(3))
    with pytest.raises(CorpusError, match="o.npy exists and was not written by embed-corpus"):
        embed_corpus(src, tmp_path / "o.npy", model=tiny[0], quiet=True)
    assert embed_corpus(src, tmp_path / "o.npy", model=tiny[0], overwrite=True, quiet=True)["shape"] == [2, 64]


# -- progress --------------------------------------------------------------------------------------
class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_lines_bar_and_quiet(tmp_path, tiny):
    src = write_txt(tmp_path / "c.txt", corpus_texts(200, seed=6))
    lines = io.StringIO()
    embed_corpus(src, tmp_path / "a.npy", model=tiny[0], window=64, progress_every=0, stream=lines)
    log = lines.getvalue().splitlines()
    assert log[0].startswith("embed-corpus: ") and "/200 texts, " in log[0] and " tokens/s, ETA " in log[0]
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


# -- memory ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_memory_is_bounded_by_the_batch_not_the_corpus(tmp_path, tiny):
    """300,000 short lines on the tiny random model (its forward is cheap: the job's machinery is what
    is measured) stay within 300 MB of peak RSS above the loaded model. benchmarks/corpus_bench.py
    measures 1,000,000 (minutes: too long for CI)."""
    base, peak = corpus_job_rss(tiny[0], 300_000, tmp_path)
    assert peak - base < 300, f"peak RSS {peak:.0f} MB, with the model loaded {base:.0f} MB"
