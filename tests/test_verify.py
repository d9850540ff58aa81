"""bge_ref.verify and `bge-ref verify`: the stage table against transformers, on the real MiniLM."""
import json
import subprocess
import sys

import numpy as np
import pytest

import bge_ref
from bge_ref.cli import main
from bge_ref.verify import TOLERANCES, compare, diff_stage

from .conftest import TEXTS

pytestmark = pytest.mark.blas  # tolerances set by BLAS rounding: CI reruns these on a second kernel

STAGES = [f"hidden_states.{i}" for i in range(7)] + ["last_hidden_state", "pooled.cls", "pooled.mean", "embedding"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compare_minilm(minilm_path, hf_minilm, dtype):
    report = compare(minilm_path, TEXTS, dtype, hf_model=hf_minilm)
    hf_minilm.float()  # compare casts in place; the session fixture stays float32 for other tests
    print(report.table())
    assert [r.stage for r in report.rows] == STAGES
    assert report.ok, report.table()
    real = bge_ref.load(minilm_path).tokenize(TEXTS)["attention_mask"].astype(bool)
    for r in report.rows:
        assert r.max_abs <= TOLERANCES[dtype]["embedding" if r.stage == "embedding" else "hidden"]
        assert 0 <= r.rms <= r.max_abs and r.worst_cos <= 1.0
        text, token, _ = r.where
        assert token is None or real[text, token]  # the worst element is a real token
    if dtype == "float64":  # the oracle: every hidden state within 1e-10 of transformers' model.double()
        assert max(r.max_abs for r in report.rows) <= 1e-10


@pytest.mark.quick  # needs no torch
def test_diff_stage_locates_the_worst_real_element():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 5, 8))
    real = np.ones((3, 5), dtype=bool)
    real[2, 3:] = False                     # padding
    b = a.copy()
    b[2, 4, 0] += 100.0                     # huge, but on padding: ignored
    b[1, 2, 6] += 1e-3
    r = diff_stage("layer 1", a, b, real, tol=1e-4)
    assert r.where == (1, 2, 6) and np.isclose(r.max_abs, 1e-3) and not r.ok
    assert np.isclose(r.max_rel, 1e-3 / np.linalg.norm(b[1, 2]))
    assert r.one_minus_cos > 0
    p = diff_stage("pooled.mean", a[:, 0], a[:, 0] + 0.0)
    assert p.max_abs == 0 and p.one_minus_cos == 0 and p.where[1] is None and p.ok


def test_a_wrong_layer_is_localized(minilm_path, hf_minilm):
    # A bias error in layer 3's output LayerNorm: layers 1-2 pass, layer 3 on fail.
    model = bge_ref.load(minilm_path)
    ln = model.params["layers"][2]["out"]["ln"]
    ln["b"] = ln["b"] + np.float32(1e-3)
    report = compare(model, TEXTS, "float32", hf_model=hf_minilm)
    failing = [r.stage for r in report.rows if not r.ok]
    assert not report.ok and failing[0] == "hidden_states.3" and "hidden_states.2" not in failing
    assert report.verdict.startswith("FAIL: hidden_states.3 exceeds the tolerance")


def test_cli_table_json_and_texts_file(minilm_path, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("hello world\nA second, longer text with punctuation!\n", encoding="utf-8")
    assert main(["verify", "--model", str(minilm_path), "--texts-file", str(texts)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert "2 texts padded to" in lines[0] and "hidden_states.6" in out and not err
    assert lines[-1] == f"PASS: {len(STAGES)} stages within tolerance"
    assert main(["verify", "--model", str(minilm_path), "--texts", "hello world", "a second text", "--dtype", "float64",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["dtype"] == "float64" and out["shape"][0] == 2 and out["verdict"].startswith("PASS")
    assert [row["stage"] for row in out["rows"]] == STAGES


@pytest.mark.quick  # needs no torch
def test_cli_texts_file_errors_name_the_line(minilm_path, tmp_path, capsys):
    bad = tmp_path / "texts.txt"
    bad.write_bytes(b"hello\n\nworld\n")
    assert main(["verify", "--model", str(minilm_path), "--texts-file", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == f"bge-ref: error: --texts-file {bad}: line 2 is blank; every line is one text"
    bad.write_bytes(b"hello\n\xff\n")
    assert main(["verify", "--model", str(minilm_path), "--texts-file", str(bad)]) == 2
    assert "line 2 is not valid UTF-8" in capsys.readouterr().err


def test_cli_exit_status_when_a_stage_exceeds_tolerance(minilm_path, monkeypatch, capsys):
    # float32 differences (~1e-6) against a tolerance set below them must fail the command.
    monkeypatch.setitem(TOLERANCES, "float32", {"hidden": 1e-9, "embedding": 1e-9})
    assert main(["verify", "--model", str(minilm_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "FAIL" in out[3] and out[-1].startswith("FAIL: hidden_states.0 exceeds the tolerance")


@pytest.mark.quick  # needs no torch
def test_without_torch_is_a_typed_error(minilm_path):
    # A fresh interpreter where torch and transformers cannot be imported (None in sys.modules).
    code = ("import sys; sys.modules['torch'] = sys.modules['transformers'] = None\n"
            "import bge_ref.verify as v\nfrom bge_ref.cli import main\n"
            f"try:\n    v.compare({str(minilm_path)!r})\nexcept v.MissingDependencyError as e:\n    print('typed', e)\n"
            f"sys.exit(main(['verify', '--model', {str(minilm_path)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.stdout.startswith("typed") and "pip install" in r.stdout, r.stderr
    assert r.returncode == 2 and "needs torch" in r.stderr and "Traceback" not in r.stderr


def test_cli_forward_option_reaches_load(minilm_path, monkeypatch, capsys):
    # `--forward fast|reference` is passed to bge_ref.load as forward=...; without the option load
    # gets no forward argument at all (its own default applies).
    import bge_ref.embedder
    real_load, seen = bge_ref.embedder.load, []

    def load(model=None, **kw):
        seen.append(kw.pop("forward", "absent"))
        return real_load(model, **kw)

    monkeypatch.setattr(bge_ref.embedder, "load", load)
    assert main(["verify", "--model", str(minilm_path), "--texts", "hello", "--forward", "reference", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["forward"] == "reference"
    assert main(["verify", "--model", str(minilm_path), "--texts", "hello"]) == 0
    assert seen == ["reference", "absent"]
    with pytest.raises(SystemExit):
        main(["verify", "--forward", "slow"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_verify_and_compare_check_against_one_table(minilm_path, tmp_path, capsys, dtype):
    """`verify --dtype X` and `compare --tolerance X` report the same tolerances: one TOLERANCES table."""
    def tolerances(out):
        return {r["stage"] == "embedding": r["tol"] for r in json.loads(out)["rows"]}

    assert main(["verify", "--model", str(minilm_path), "--texts", "hello world", "--dtype", dtype, "--json"]) == 0
    verified = tolerances(capsys.readouterr().out)
    ref, mine = tmp_path / "ref.safetensors", tmp_path / "mine.safetensors"
    for path, d in ((ref, "float64"), (mine, dtype)):
        assert main(["reference", "--model", str(minilm_path), "--texts", "hello world", "--dtype", d, "-o", str(path)]) == 0
    capsys.readouterr()
    assert main(["compare", str(ref), str(mine), "--tolerance", dtype, "--json"]) == 0
    compared = tolerances(capsys.readouterr().out)
    assert verified == compared == {False: TOLERANCES[dtype]["hidden"], True: TOLERANCES[dtype]["embedding"]}
