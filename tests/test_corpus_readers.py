"""bge_ref/corpus/readers.py: every input format, bad records named by file and line, --skip-bad,
the input's sha256."""
import json
import re

import numpy as np
import pytest

from bge_ref.corpus import embed_corpus
from bge_ref.errors import InputError
from tests.corpus_helpers import corpus_texts, run_cli, write_jsonl, write_txt
from tests.corpus_helpers import tiny_model  # noqa: F401 (a fixture)

pytestmark = pytest.mark.quick  # no torch: the tiny checkpoint's directory and bge_ref only



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
    *status, error = r.stderr.splitlines()  # the status lines said before the scan, then one error line
    assert error == (f"bge-ref: error: {src}, line 2: not valid UTF-8 (byte 0: invalid start byte) "
                     "(--skip-bad records bad lines in a side file instead)")
    assert [line.split(" ")[:2] for line in status] == [["embed-corpus:", "hashing"], ["embed-corpus:", "scanning"]]
    quiet = run_cli(src, "-o", tmp_path / "o.npy", "--model", tiny[0], "--quiet")
    assert quiet.returncode == 2 and quiet.stderr == error + "\n"


def test_the_input_hash_is_sha256sum_and_a_renamed_copy_is_the_same_input(tmp_path, tiny):
    import hashlib
    import shutil
    src = write_txt(tmp_path / "c.txt", corpus_texts(20, seed=9))
    embed_corpus(src, tmp_path / "o.npy", model=tiny[0], quiet=True)
    manifest = json.loads((tmp_path / "o.manifest.json").read_text())
    assert manifest["input_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()  # what sha256sum prints
    assert manifest["input_bytes"] == src.stat().st_size
    moved = tmp_path / "moved" / "renamed.txt"
    moved.parent.mkdir()
    shutil.copy(src, moved)
    assert embed_corpus(moved, tmp_path / "o.npy", model=tiny[0], quiet=True)["status"] == "already complete"
