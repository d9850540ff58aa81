"""`bge-ref verify`: a poor man's tensor checker, layer by layer, bge_ref against transformers.

The same tokenized batch goes through bge_ref and through transformers' BertModel; every stage is
compared on real (non-padding) tokens only:

    embeddings   hidden state 0 (word + position + type, LayerNorm)
    layer i      hidden state i, i = 1..L
    final        the last hidden state
    cls, mean    the pooled, L2-normalized embeddings (the reference pools with torch, as
                 sentence-transformers does, so our pooling is checked too)

Columns: max abs diff; max rel diff, the worst token's |a - b| / |b| (L2 norms over D, so a value
near zero does not blow it up); rms diff (the typical error, steadier than the max for comparing
two implementations); worst cosine, printed as 1 - x; and where the max abs diff sits
(text, token, dim). A stage fails when its max abs diff exceeds the dtype's tolerance below.

The module imports without torch: torch and transformers are imported inside the functions that
need them, and their absence is a `MissingDependencyError` with the fix, not an ImportError.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .embedder import l2_normalize as unit  # rows to unit L2 norm, as encode() does
from .errors import BgeRefError, InputError

# Max abs diff allowed per stage. Measured by scripts/verification_report.py (README, Verification)
# on MiniLM (real weights) and the bge-large-size random model with a 512-token text; each bound is
# a small margin over the worst measured stage, so a real regression shows.
TOLERANCES = {
    "float64": {"hidden": 1e-13, "pooled": 2e-15},
    "float32": {"hidden": 3e-5, "pooled": 6e-7},
}

# Mixed lengths (so the batch is padded), punctuation, accents, CJK, emoji, a sentence pair's length.
DEFAULT_TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog, again and again, until it is tired.",
    "Café au lait, naïve résumé, Führer, São Paulo.",
    "東京は日本の首都です。",
    "I love 🦙.cpp and 🤗 transformers!",
    "a",
    "Represent this sentence for searching relevant passages: what is a BERT encoder?",
]


class MissingDependencyError(BgeRefError):
    """Verification needs torch and transformers (the `test` extra), which are not installed."""


@dataclass
class Row:
    stage: str
    max_abs: float
    max_rel: float
    rms: float                # root mean square of the abs diff: the typical error, where max is the extreme
    one_minus_cos: float      # 1 - the smallest cosine between matching token (or embedding) vectors
    where: tuple              # (text, token, dim) of the max abs diff; token None for mean pooling
    tol: float | None = None

    @property
    def worst_cos(self) -> float:
        return 1.0 - self.one_minus_cos

    @property
    def ok(self) -> bool:
        return self.tol is None or self.max_abs <= self.tol


@dataclass
class Report:
    title: str
    rows: list[Row]
    shape: tuple = ()         # (B, S) of the batch
    meta: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def worst(self, kind="hidden") -> float:
        """Largest max abs diff over the hidden-state stages ("hidden") or the pooled ones ("pooled")."""
        return max(r.max_abs for r in self.rows if _kind(r.stage) == kind)

    def table(self) -> str:
        return format_table(self.rows, self.title)

    def to_dict(self) -> dict:
        return {"title": self.title, "shape": list(self.shape), "ok": self.ok, **self.meta,
                "rows": [dict(asdict(r), worst_cos=r.worst_cos, ok=r.ok) for r in self.rows]}


def _kind(stage: str) -> str:
    return "pooled" if stage in ("cls", "mean") else "hidden"


# -- the numbers ----------------------------------------------------------------------------------
def diff_stage(stage, a, b, real=None, tol=None) -> Row:
    """Compare a (ours) with b (reference), (B, S, D) on the tokens where `real` is True, or (B, D)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if real is None:                                       # pooled (B, D): every row is real
        real = np.ones(a.shape[:-1], dtype=bool)
    idx = np.argwhere(real)                                # (N, ndim-1) text [, token] of each vector
    a, b = a[real], b[real]                                # (N, D)
    d = np.abs(a - b)                                      # (N, D)
    n, dim = np.unravel_index(np.argmax(d), d.shape)
    rel = np.linalg.norm(a - b, axis=-1) / np.maximum(np.linalg.norm(b, axis=-1), 1e-300)  # (N,)
    # 1 - cos = |a^ - b^|^2 / 2 keeps its digits when the vectors agree to 1e-16 (1 - a^.b^ would not).
    one_minus_cos = (np.linalg.norm(unit(a) - unit(b), axis=-1) ** 2 / 2).max()
    where = tuple(int(i) for i in idx[n]) + (int(dim),)
    if len(where) == 2:                                    # pooled: no token index
        where = (where[0], 0 if stage == "cls" else None, where[1])
    return Row(stage, float(d.max()), float(rel.max()), float(np.sqrt(np.mean(d * d))), float(one_minus_cos),
               where, tol)


def diff_outputs(ours: dict, ref: dict, mask, tolerances=None) -> list[Row]:
    """One Row per stage for two runs of the same batch (see run_ours / run_transformers)."""
    tol = tolerances or {}
    real = np.asarray(mask).astype(bool)
    states_a, states_b = ours["states"], ref["states"]
    names = ["embeddings"] + [f"layer {i}" for i in range(1, len(states_a))]
    rows = [diff_stage(n, a, b, real, tol.get("hidden")) for n, a, b in zip(names, states_a, states_b)]
    rows.append(diff_stage("final", states_a[-1], states_b[-1], real, tol.get("hidden")))
    rows += [diff_stage(p, ours[p], ref[p], None, tol.get("pooled")) for p in ("cls", "mean")]
    return rows


# -- the two implementations ----------------------------------------------------------------------
def run_ours(embedder, batch) -> dict:
    """bge_ref's hidden states and its pooled, normalized cls and mean embeddings."""
    last, states = embedder.forward(**batch, output_hidden_states=True)
    pooled = {p: unit(embedder.pool(last, batch["attention_mask"], p)) for p in ("cls", "mean")}
    return {"states": states, **pooled}


def _torch():
    try:
        import torch
        import transformers
    except ImportError as e:
        raise MissingDependencyError(
            f"verification compares against transformers, which needs torch and transformers ({e}); "
            "install them with: pip install torch==2.13.0 && pip install -e '.[test]'") from None
    transformers.logging.set_verbosity_error()  # no load report for the pooler a BertModel skips
    transformers.logging.disable_progress_bar()
    return torch, transformers


def load_transformers(directory):
    """transformers' BertModel (no pooler, eval mode, float32) from a checkpoint directory."""
    _, transformers = _torch()
    return transformers.BertModel.from_pretrained(str(directory), add_pooling_layer=False).eval()


def run_transformers(model, batch, dtype="float32") -> dict:
    """transformers' hidden states, and cls / mean pooling done in torch as sentence-transformers does.
    The model is cast to `dtype` in place (as model.double() does)."""
    torch, _ = _torch()
    model.to(getattr(torch, dtype))
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in batch.items()}, output_hidden_states=True)
        h = out.last_hidden_state                                       # (B, S, D)
        m = torch.from_numpy(batch["attention_mask"]).unsqueeze(-1).to(h.dtype)  # (B, S, 1)
        mean = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        pooled = {"cls": torch.nn.functional.normalize(h[:, 0], dim=-1),
                  "mean": torch.nn.functional.normalize(mean, dim=-1)}
    return {"states": [s.numpy() for s in out.hidden_states], **{k: v.numpy() for k, v in pooled.items()}}


# -- the checks -----------------------------------------------------------------------------------
def compare(model, texts=None, dtype="float32", *, hf_model=None, batch=None) -> Report:
    """bge_ref against transformers on one tokenized batch, in `dtype`: a Report of one Row per stage.

    model: a checkpoint directory (or an Embedder already loaded in `dtype`). hf_model: a loaded
    transformers BertModel to reuse (cast to `dtype` in place); by default loaded from the directory.
    """
    from .embedder import Embedder, load
    if dtype not in TOLERANCES:
        raise InputError(f"dtype must be one of {sorted(TOLERANCES)}, got {dtype!r}")
    _torch()  # fail before the (possibly slow) load if torch is missing
    ours = model if isinstance(model, Embedder) else load(model, dtype=dtype)
    if ours.dtype != np.dtype(dtype):
        raise InputError(f"the Embedder computes in {ours.dtype}, but dtype={dtype!r} was asked for")
    batch = batch if batch is not None else ours.tokenize(list(texts or DEFAULT_TEXTS))
    hf = hf_model if hf_model is not None else load_transformers(ours.name)
    rows = diff_outputs(run_ours(ours, batch), run_transformers(hf, batch, dtype), batch["attention_mask"],
                        TOLERANCES[dtype])
    return Report(f"bge_ref vs transformers, {dtype}", rows, batch["input_ids"].shape,
                  {"model": ours.name, "dtype": dtype})


def oracle_study(runs: dict, mask) -> dict[str, Report]:
    """Parity in both dtypes, then the float64 oracle study: the float32 error of each implementation
    against bge_ref float64 (which agrees with transformers float64 to ~1e-14), stage by stage.
    `runs` holds run outputs keyed ("ours" | "torch", "float32" | "float64") on one batch (four_runs)."""
    oracle, shape = runs["ours", "float64"], np.shape(mask)
    parity = {dt: Report(f"bge_ref vs transformers, {dt}", diff_outputs(runs["ours", dt], runs["torch", dt], mask,
                                                                     TOLERANCES[dt]), shape) for dt in TOLERANCES}
    return {
        "float32": parity["float32"], "float64": parity["float64"],
        "ours32": Report("bge_ref float32 vs float64 oracle", diff_outputs(runs["ours", "float32"], oracle, mask), shape),
        "torch32": Report("transformers float32 vs float64 oracle", diff_outputs(runs["torch", "float32"], oracle, mask), shape),
    }


def four_runs(directory, batch) -> dict:
    """bge_ref and transformers, float32 and float64, on one batch, keyed as oracle_study wants.
    One model is in memory at a time: a bge-large float64 copy is 2.7 GB."""
    import gc

    from .embedder import load
    hf = load_transformers(directory)
    runs = {("torch", "float32"): run_transformers(hf, batch, "float32"),
            ("torch", "float64"): run_transformers(hf, batch, "float64")}  # model.double(), in place
    del hf
    gc.collect()
    for dtype in ("float32", "float64"):
        runs["ours", dtype] = run_ours(load(directory, dtype=dtype), batch)
        gc.collect()
    return runs


# -- printing -------------------------------------------------------------------------------------
def _cos(gap: float) -> str:
    return "1" if gap == 0 else f"1-{gap:.1e}"


def format_table(rows: list[Row], title: str = "", markdown: bool = False) -> str:
    """One line per stage: max abs, max rel, rms, worst cosine, where (text, token, dim) [, tolerance, ok]."""
    head = ["stage", "max abs diff", "max rel diff", "rms diff", "worst cos", "where (text, token, dim)"]
    body = [[r.stage, f"{r.max_abs:.2e}", f"{r.max_rel:.2e}", f"{r.rms:.2e}", _cos(r.one_minus_cos),
             "({}, {}, {})".format(*("-" if v is None else v for v in r.where))] for r in rows]
    if any(r.tol is not None for r in rows):
        head += ["tol", ""]
        for b, r in zip(body, rows):
            b += ["-", ""] if r.tol is None else [f"{r.tol:.0e}", "ok" if r.ok else "FAIL"]
    if markdown:
        lines = ["| " + " | ".join(x) + " |" for x in [head, ["---"] * len(head)] + body]
        return (f"**{title}**\n\n" if title else "") + "\n".join(lines)
    w = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    lines = ["  ".join(x[i].rjust(w[i]) if 0 < i < 5 else x[i].ljust(w[i]) for i in range(len(head))).rstrip()
             for x in [head] + body]
    return (f"{title}\n" if title else "") + "\n".join(lines)


# -- the command line -----------------------------------------------------------------------------
def _read_texts(path) -> list[str]:
    try:
        texts = [line.rstrip("\n") for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--texts {path}: cannot read ({e})") from None
    if not texts:
        raise InputError(f"--texts {path}: no non-empty lines")
    return texts


def _verify(args) -> int:
    texts = _read_texts(args.texts) if args.texts else DEFAULT_TEXTS
    report = compare(args.model, texts, args.dtype)
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        B, S = report.shape
        print(f"{report.meta['model']}: {B} texts padded to {S} tokens, real tokens only")
        print(report.table())
        print("PASS" if report.ok else f"FAIL: a stage exceeds the {args.dtype} tolerance", file=sys.stderr)
    return 0 if report.ok else 1


def add_parser(subparsers):
    """Add `bge-ref verify` to the CLI's subparsers (called by cli.main)."""
    v = subparsers.add_parser("verify", help="compare every layer with transformers' BertModel (needs torch)")
    v.add_argument("--model", help="checkpoint directory or hub id (default $BGE_REF_MODEL, else bge-large-en-v1.5)")
    v.add_argument("--texts", help="file with one text per line (default: a built-in mixed batch)")
    v.add_argument("--dtype", choices=sorted(TOLERANCES), default="float32")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=_verify)
    return v
