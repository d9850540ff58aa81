"""`bge-ref reference` and `bge-ref compare` on the real MiniLM: other implementations' dumps against
bge_ref's float64 reference. Right ones compare clean with the float32 preset; wrong ones (tanh GELU,
LayerNorm eps, a cased tokenizer) are caught at the stage or token where they go wrong."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer

from bge_ref.cli import main
from bge_ref.dump import read_dump, write_safetensors
from bge_ref.testing import dumps
from bge_ref.verify import DEFAULT_TEXTS, IDS, TOLERANCES, compare_stages, config_hash, run_transformers

from .conftest import subprocess_env

LAYOUT = ["input_ids", "attention_mask", "token_type_ids"] + [f"hidden_states.{i}" for i in range(7)] + [
    "last_hidden_state", "pooled.cls", "pooled.mean", "embedding"]


@pytest.fixture(scope="module")
def ref(minilm_path, tmp_path_factory):
    """(path, tensors, metadata) of `bge-ref reference` on MiniLM, float64, verify's mixed batch."""
    path = tmp_path_factory.mktemp("ref") / "ref.safetensors"
    assert main(["reference", "--model", str(minilm_path), "--texts", *DEFAULT_TEXTS, "-o", str(path)]) == 0
    tensors, meta = read_dump(path)
    return path, tensors, meta


def _batch(ref):
    return {k: ref[1][k] for k in IDS}


def _compare(capsys, *args):
    status = main(["compare", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err


def test_reference_layout_metadata_and_values(ref, minilm, hf_minilm):
    path, tensors, meta = ref
    assert list(tensors) == LAYOUT
    B, S = tensors["input_ids"].shape
    assert B == len(DEFAULT_TEXTS) and tensors["hidden_states.3"].shape == (B, S, 384)
    assert tensors["pooled.mean"].shape == tensors["embedding"].shape == (B, 384)
    assert all(tensors[k].dtype == np.float64 for k in LAYOUT[3:])
    assert json.loads(meta["texts"]) == DEFAULT_TEXTS and meta["dtype"] == "float64" and meta["pooling"] == "mean"
    assert meta["config_hash"] == config_hash(minilm.config) and meta["max_length"] == "256"
    assert json.loads(meta["vocab"])[1996] == "the"
    # the values: transformers after model.double() agrees to 1e-10 on every stage, and the embedding is encode()'s
    report = compare_stages(tensors, run_transformers(hf_minilm, _batch(ref), "float64", "mean"), 1e-10)
    hf_minilm.float()  # cast in place; the session fixture stays float32 for other tests
    assert report.ok and len(report.rows) == 11, report.table()
    np.testing.assert_allclose(tensors["embedding"], minilm.encode(DEFAULT_TEXTS), atol=1e-6)


def test_transformers_float32_dump_compares_clean(ref, hf_minilm, tmp_path, capsys):
    theirs = tmp_path / "hf32.safetensors"
    write_safetensors(theirs, run_transformers(hf_minilm, _batch(ref), "float32", "mean"))
    status, out, err = _compare(capsys, ref[0], theirs)
    assert status == 0 and not err, out
    assert out[-1] == "PASS: 11 stages within tolerance"
    assert "hidden_states.6" in "\n".join(out) and "FAIL" not in "\n".join(out)


def test_onnx_runtime_dump_padded_to_a_fixed_length_compares_clean(ref, minilm_path, tmp_path, capsys):
    # An ONNX user pads every batch to a fixed length: their attention_mask says which tokens are real.
    batch = {k: np.pad(v, ((0, 0), (0, 32 - v.shape[1]))) for k, v in _batch(ref).items()}
    onnx = dumps.export_onnx(minilm_path, tmp_path / "minilm.onnx", batch)
    run = dumps.onnx_run(onnx, batch, "mean")
    assert run["hidden_states.2"].shape == (len(DEFAULT_TEXTS), 32, 384)
    np.savez(tmp_path / "ort.npz", **run)
    status, out, err = _compare(capsys, ref[0], tmp_path / "ort.npz")
    assert status == 0 and out[-1] == "PASS: 11 stages within tolerance", "\n".join(out)


def test_tanh_gelu_fails_at_layer_1_not_before(ref, minilm_path, tmp_path, capsys):
    np.savez(tmp_path / "gelu_new.npz", **dumps.transformers_run(minilm_path, _batch(ref), pooling="mean",
                                                                  hidden_act="gelu_new"))
    status, out, _ = _compare(capsys, ref[0], tmp_path / "gelu_new.npz", "--json")
    report = json.loads("\n".join(out))
    assert status == 1 and not report["ok"]
    rows = {r["stage"]: r for r in report["rows"]}
    assert rows["hidden_states.0"]["ok"] and not rows["hidden_states.1"]["ok"]
    assert report["verdict"].startswith("FAIL: hidden_states.1 exceeds the tolerance")


def test_layer_norm_eps_1e5_is_caught_at_the_embeddings(ref, minilm_path, tmp_path, capsys):
    np.savez(tmp_path / "eps.npz", **dumps.transformers_run(minilm_path, _batch(ref), pooling="mean",
                                                             layer_norm_eps=1e-5))
    status, out, _ = _compare(capsys, ref[0], tmp_path / "eps.npz")
    assert status == 1 and out[-1].startswith("FAIL: hidden_states.0 exceeds the tolerance"), out[-1]
    # a LayerNorm error sits in every stage: it is far over the tolerance, not noise at its edge
    assert float(out[-1].split("max abs diff ")[1].split()[0]) > 20 * TOLERANCES["float32"]["hidden"]


def test_cased_tokenizer_is_a_tokenization_difference(ref, minilm_path, tmp_path, capsys):
    # The same vocabulary with the normalizer's lowercasing switched off (accents then stay too).
    spec = json.loads((minilm_path / "tokenizer.json").read_text(encoding="utf-8"))
    spec["normalizer"]["lowercase"] = False
    spec["padding"] = spec["truncation"] = None
    cased = Tokenizer.from_str(json.dumps(spec))
    cased.enable_padding(pad_id=0)
    enc = cased.encode_batch(DEFAULT_TEXTS)
    batch = {"input_ids": np.array([e.ids for e in enc]), "attention_mask": np.array([e.attention_mask for e in enc]),
             "token_type_ids": np.array([e.type_ids for e in enc])}
    np.savez(tmp_path / "cased.npz", **dumps.transformers_run(minilm_path, batch, pooling="mean"))
    # what the verdict must say, from the two tokenizers themselves
    uncased = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))
    uncased.no_padding()
    differ = [i for i, t in enumerate(DEFAULT_TEXTS) if uncased.encode(t).ids != cased.encode(t).ids]
    a, b = uncased.encode(DEFAULT_TEXTS[differ[0]]).ids, cased.encode(DEFAULT_TEXTS[differ[0]]).ids
    p = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert 0 < len(differ) < len(DEFAULT_TEXTS)

    status, out, err = _compare(capsys, ref[0], tmp_path / "cased.npz")
    assert status == 1 and not err
    assert out[-1] == (f"FAIL: tokenization differs in {len(differ)} of {len(DEFAULT_TEXTS)} texts; first at text "
                       f"{differ[0]}, token {p}: reference {uncased.id_to_token(a[p])!r} (id {a[p]}), theirs "
                       f"{uncased.id_to_token(b[p])!r} (id {b[p]}) ({len(a)} vs {len(b)} tokens)")
    # the texts that tokenize alike are still compared, and pass: the numbers are not the problem
    assert sum(line.startswith("tokenization differs: text") for line in out) == len(differ)
    assert "FAIL" not in "\n".join(out[:-1]).replace("FAIL: tokenization", "")


def test_any_subset_any_float_dtype_and_problems_per_stage(ref, hf_minilm, tmp_path, capsys):
    run = run_transformers(hf_minilm, _batch(ref), "float32", "mean")
    part = {"attention_mask": run["attention_mask"], "hidden_states.2": run["hidden_states.2"].astype(np.float16),
            "embedding": run["embedding"], "my_debug_tensor": np.zeros(3)}
    np.savez(tmp_path / "part.npz", **part)
    status, out, _ = _compare(capsys, ref[0], tmp_path / "part.npz", "--tolerance", "float16")
    text = "\n".join(out)
    assert status == 0 and out[-1] == "PASS: 2 stages within tolerance; 9 not compared", text
    assert "ignored: my_debug_tensor" in text and "tokenization checked by token counts only" in text
    assert text.count("not in theirs") == 9
    bad = dict(run, **{"hidden_states.4": run["hidden_states.4"][:, :, :100], "hidden_states.1": run["hidden_states.1"].copy()})
    bad["hidden_states.1"][2, 3, 7] = np.nan
    np.savez(tmp_path / "bad.npz", **bad)
    status, out, _ = _compare(capsys, ref[0], tmp_path / "bad.npz")
    assert status == 1 and out[-1] == "FAIL: hidden_states.1: 1 NaN/Inf values on real tokens, the first at (text, token, dim) (2, 3, 7)"
    assert any(line.startswith("hidden_states.4") and "FAIL: shape (7, 21, 100), expected (7, 21, 384)" in line for line in out)
    status, out, _ = _compare(capsys, ref[0], tmp_path / "part.npz", "--tolerance", "1e-9")
    assert status == 1 and out[-1].startswith("FAIL: hidden_states.2 exceeds the tolerance: max abs diff")


@pytest.mark.quick  # needs no torch
@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("garbage", "not a readable .safetensors or .npz dump"),
    ("no documented names", "holds none of the documented tensor names (input_ids, attention_mask"),
    ("fewer texts", "theirs has 2 texts (attention_mask (2, 21)), the reference 7"),
    ("another model", "was written for another model config (config_hash 0123456789abcdef"),
    ("bad tolerance", "--tolerance must be one of float64, float32, float16, int8 or a positive number"),
])
def test_unusable_input_is_one_line_and_status_2(ref, tmp_path, capsys, case, message):
    theirs, extra = tmp_path / "theirs.npz", []
    if case == "garbage":
        theirs = tmp_path / "theirs.safetensors"
        theirs.write_bytes(b"\x10" + b"\x00" * 7 + b"{not json at all")
    elif case == "no documented names":
        np.savez(theirs, activations=np.zeros((7, 21, 384)))
    elif case == "fewer texts":
        np.savez(theirs, **{k: v[:2] for k, v in ref[1].items()})
    elif case == "another model":
        theirs = tmp_path / "theirs.safetensors"
        write_safetensors(theirs, ref[1], dict(ref[2], config_hash="0123456789abcdef"))
    elif case == "bad tolerance":
        theirs, extra = ref[0], ["--tolerance", "loose"]
    status, out, err = _compare(capsys, ref[0], theirs, *extra)
    assert status == 2 and out == [] and len(err.splitlines()) == 1, err
    assert err.startswith("bge-ref: error: ") and message in err


@pytest.mark.quick  # needs no torch
def test_cli_in_a_fresh_process(ref, tmp_path):
    # The installed command's path: `python -m bge_ref`, status and streams as a shell sees them.
    np.savez(tmp_path / "ids.npz", **{k: ref[1][k] for k in ("input_ids", "attention_mask")})
    r = subprocess.run([sys.executable, "-m", "bge_ref", "compare", str(ref[0]), str(tmp_path / "ids.npz")],
                       capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("PASS: the token ids agree"), r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "bge_ref", "compare", str(ref[0]), str(tmp_path / "nope.npz")],
                       capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no such file" in r.stderr


@pytest.mark.quick  # needs no torch
def test_reference_cli_errors(minilm_path, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("one\n\nthree\n", encoding="utf-8")
    out = tmp_path / "r.safetensors"
    assert main(["reference", "--model", str(minilm_path), "--texts-file", str(texts), "-o", str(out)]) == 2
    assert "line 2 is blank" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit) as e:  # argparse: one of --texts / --texts-file is required
        main(["reference", "--model", str(minilm_path), "-o", str(out)])
    assert e.value.code == 2
    assert main(["reference", "--model", str(minilm_path), "--texts", "a", "-o", str(tmp_path / "no" / "r.st")]) == 2
    assert "cannot write" in capsys.readouterr().err
    shutil.rmtree(tmp_path)
