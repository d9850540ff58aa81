"""Comparing two forward passes stage by stage, with NumPy alone: `compare_stages` and its Report.

A forward pass is a dict of named arrays, the activation layout a dump file holds (docs/guide/verify.md,
"The layout"); B texts, S tokens (padded), D hidden size, L layers:

    input_ids, attention_mask, token_type_ids    (B, S) int     the tokenized, right-padded batch
    hidden_states.0                              (B, S, D)      the embeddings output (after its LayerNorm)
    hidden_states.i, i = 1..L                    (B, S, D)      the output of layer i (transformers' hidden_states[i])
    last_hidden_state                            (B, S, D)      = hidden_states.L
    pooled.cls, pooled.mean                      (B, D)         the [CLS] vector; the mean over real tokens
    embedding                                    (B, D)         the checkpoint's pooling, L2-normalized

`compare_stages` checks the token ids first (a different tokenization is reported as such, with the
first differing token, and those texts are left out of the numbers), then compares every float
stage on real (non-padding) tokens only. Columns: max abs diff; max rel diff, the worst token's
|a - b| / |b| (L2 norms over D, so a value near zero does not blow it up); rms diff (the typical
error, steadier than the max for comparing two implementations); worst cosine, printed as 1 - x; and
where the max abs diff sits (text, token, dim). A stage fails when its max abs diff exceeds the
tolerance: "embedding" has its own, every other stage the hidden-state one.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import InputError
from ..pooling import l2_normalize as unit  # rows to unit L2 norm, as encode() does

# The one tolerance table, max abs diff per stage kind, of `bge-ref verify --dtype` and `bge-ref
# compare --tolerance`: how far two runs of the model may differ when at least one computes in that
# precision. float32 and float64 are verify's dtypes; compare takes every row. Measured on MiniLM
# (real weights) and the bge-large-size random model with a 512-token text, by
# scripts/verification_report.py (bge_ref against transformers, both in the dtype: two float32
# errors, the larger case: worst 1.07e-5 hidden, 2.9e-7 embedding) and scripts/compare_tolerances.py
# (other implementations against bge_ref's float64 reference: worst 9.2e-6, 1.7e-7); each tolerance
# is at least 2x the worst measured for it.
TOLERANCES = {
    "float64": {"hidden": 1e-13, "embedding": 2e-15},   # worst measured 6.8e-14, 1.4e-15 (bge-large size)
    "float32": {"hidden": 5e-5, "embedding": 1e-6},     # 1.07e-5, 2.9e-7 (bge-large size)
    "float16": {"hidden": 5e-2, "embedding": 1e-3},     # 1.8e-2 (bge-large size), 3.2e-4 (MiniLM)
    "int8": {"hidden": 3.0, "embedding": 0.2},          # 1.07, 7.0e-2 (MiniLM)
}

IDS = ("input_ids", "attention_mask", "token_type_ids")
_STAGE = re.compile(r"hidden_states\.(\d+)|last_hidden_state|pooled\.(cls|mean)|embedding")


def tolerance(spec) -> tuple[dict, str]:
    """(tolerances, label) for a --tolerance value: a TOLERANCES name or one max abs diff for every stage."""
    if spec in TOLERANCES:
        return TOLERANCES[spec], spec
    try:
        x = float(spec)
    except (TypeError, ValueError):
        x = float("nan")
    if not x > 0 or not np.isfinite(x):
        raise InputError(f"--tolerance must be one of {', '.join(TOLERANCES)} or a positive number (max abs diff), "
                         f"got {spec!r}")
    return {"hidden": x, "embedding": x}, f"{x:g}"


def stage_order(name: str):
    """Sort key of a documented float stage; None for any other name."""
    m = _STAGE.fullmatch(name)
    if m is None:
        return None
    if m.group(1) is not None:
        return (0, int(m.group(1)))
    return (1, ["last_hidden_state", "pooled.cls", "pooled.mean", "embedding"].index(name))


def _kind(stage: str) -> str:
    return "embedding" if stage == "embedding" else "hidden"


def states(run: dict) -> list:
    """hidden_states.0 .. hidden_states.L of a run, as a list (transformers' output_hidden_states)."""
    return [run[n] for n in sorted((n for n in run if n.startswith("hidden_states.")), key=stage_order)]


# -- the report -----------------------------------------------------------------------------------
@dataclass
class Row:
    stage: str
    max_abs: float
    max_rel: float
    rms: float                # root mean square of the abs diff: the typical error, where max is the extreme
    one_minus_cos: float      # 1 - the smallest cosine between matching token (or embedding) vectors
    where: tuple              # (text, token, dim) of the max abs diff; token None for mean pooling
    tol: float | None = None
    problem: str = ""         # why the stage could not be compared (shape, dtype, NaN): a failure
    skipped: str = ""         # why the stage was not compared (absent from one side): not a failure

    @property
    def worst_cos(self) -> float:
        return 1.0 - self.one_minus_cos

    @property
    def ok(self) -> bool:
        if self.skipped:
            return True
        return not self.problem and (self.tol is None or self.max_abs <= self.tol)


@dataclass
class TokenDiff:
    """The first position where one text's real token ids differ (id None: that side has no token there)."""
    text: int
    position: int
    ref_id: int | None
    their_id: int | None
    ref_len: int
    their_len: int
    ref_token: str | None = None
    their_token: str | None = None

    def __str__(self):
        if self.ref_id is None and self.their_id is None:  # no ids on one side: only the counts differ
            return f"text {self.text}: {self.ref_len} real tokens in the reference, {self.their_len} in theirs"

        def side(i, tok):
            return "no token" if i is None else (f"{tok!r} (id {i})" if tok is not None else f"id {i}")
        return (f"text {self.text}, token {self.position}: reference {side(self.ref_id, self.ref_token)}, "
                f"theirs {side(self.their_id, self.their_token)} ({self.ref_len} vs {self.their_len} tokens)")


@dataclass
class Report:
    title: str
    rows: list[Row]
    shape: tuple = ()         # (B, S) of the reference batch
    meta: dict = field(default_factory=dict)
    tokens: list[TokenDiff] = field(default_factory=list)  # texts whose tokenization differs
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.tokens and all(r.ok for r in self.rows)

    def worst(self, kind="hidden") -> float:
        """Largest max abs diff over the hidden-state stages ("hidden") or the embedding ("embedding")."""
        return max((r.max_abs for r in self.rows if _kind(r.stage) == kind and not (r.problem or r.skipped)),
                   default=float("nan"))

    @property
    def verdict(self) -> str:
        """One line: PASS, or FAIL naming the first differing token or the first failing stage."""
        if self.tokens:
            return (f"FAIL: tokenization differs in {len(self.tokens)} of {self.shape[0]} texts; first at "
                    f"{self.tokens[0]}")
        bad = next((r for r in self.rows if not r.ok), None)
        if bad is not None and bad.problem:
            return f"FAIL: {bad.stage}: {bad.problem}"
        if bad is not None:
            return (f"FAIL: {bad.stage} exceeds the tolerance: max abs diff {bad.max_abs:.2e} > {bad.tol:.0e} "
                    f"at (text, token, dim) {_where(bad.where)}")
        done = [r for r in self.rows if not r.skipped]
        skipped = f"; {len(self.rows) - len(done)} not compared" if len(done) < len(self.rows) else ""
        if not done:
            return f"PASS: the token ids agree; no activations compared{skipped}"
        return f"PASS: {len(done)} stage{'s' if len(done) > 1 else ''} within tolerance{skipped}"

    def table(self) -> str:
        return format_table(self.rows, self.title)

    def to_dict(self) -> dict:
        def clean(d):  # JSON has no NaN: a stage that could not be compared has null numbers
            return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}
        return {"title": self.title, "shape": list(self.shape), "ok": self.ok, "verdict": self.verdict, **self.meta,
                "tokenization": [asdict(t) for t in self.tokens], "notes": self.notes,
                "rows": [clean(dict(asdict(r), worst_cos=r.worst_cos, ok=r.ok)) for r in self.rows]}


def _where(w) -> str:
    return "({}, {}, {})".format(*("-" if v is None else v for v in w))


# -- the numbers ----------------------------------------------------------------------------------
def _diff_vectors(stage, a, b, where, tol=None) -> Row:
    """Compare matching vectors a (theirs) and b (reference), both (N, D); where: (N, 2) (text, token)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = np.abs(a - b)                                      # (N, D)
    n, dim = np.unravel_index(np.argmax(d), d.shape)
    rel = np.linalg.norm(a - b, axis=-1) / np.maximum(np.linalg.norm(b, axis=-1), 1e-300)  # (N,)
    # 1 - cos = |a^ - b^|^2 / 2 keeps its digits when the vectors agree to 1e-16 (1 - a^.b^ would not).
    one_minus_cos = (np.linalg.norm(unit(a) - unit(b), axis=-1) ** 2 / 2).max()
    text, token = where[n]
    return Row(stage, float(d.max()), float(rel.max()), float(np.sqrt(np.mean(d * d))), float(one_minus_cos),
               (int(text), None if token is None else int(token), int(dim)), tol)


def diff_stage(stage, a, b, real=None, tol=None) -> Row:
    """Compare a (theirs) with b (reference), (B, S, D) on the tokens where `real` is True, or (B, D)."""
    a, b = np.asarray(a), np.asarray(b)
    if real is None:                                       # pooled (B, D): every row is real
        real = np.ones(a.shape[:-1], dtype=bool)
    idx = np.argwhere(real)                                # (N, ndim-1) text [, token] of each vector
    where = [(i[0], i[1]) if len(i) == 2 else (i[0], _pooled_token(stage)) for i in idx]
    return _diff_vectors(stage, a[real], b[real], where, tol)


def _pooled_token(stage):
    return 0 if stage == "pooled.cls" else None


def _mask(a, what) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2 or a.dtype.kind not in "iub":
        raise InputError(f"{what}: expected a 2-D integer array (batch, seq), got {a.dtype} {a.shape}")
    return a.astype(bool)


def token_diffs(ref_ids, ref_mask, their_ids, their_mask, vocab=None) -> list[TokenDiff]:
    """Per text, the first position where the real token ids differ (ids None: compare the counts only)."""
    diffs = []
    for t in range(len(ref_mask)):
        r_pos, t_pos = np.flatnonzero(ref_mask[t]), np.flatnonzero(their_mask[t])
        if ref_ids is None or their_ids is None:
            if len(r_pos) != len(t_pos):
                n = min(len(r_pos), len(t_pos))
                diffs.append(TokenDiff(t, n, None, None, len(r_pos), len(t_pos)))
            continue
        r, th = np.asarray(ref_ids)[t, r_pos].tolist(), np.asarray(their_ids)[t, t_pos].tolist()
        if r == th:
            continue
        p = next((i for i, (x, y) in enumerate(zip(r, th)) if x != y), min(len(r), len(th)))
        ri, ti = (r[p] if p < len(r) else None), (th[p] if p < len(th) else None)
        diffs.append(TokenDiff(t, p, ri, ti, len(r), len(th), _decode(vocab, ri), _decode(vocab, ti)))
    return diffs


def _decode(vocab, i):
    if vocab is None or i is None:
        return None
    return vocab[i] if 0 <= i < len(vocab) and vocab[i] is not None else "<not in the reference vocabulary>"


def compare_stages(ref: dict, theirs: dict, tolerance=None, *, title="", vocab=None, meta=None) -> Report:
    """Compare `theirs` against `ref`, two runs in the layout above: token ids first, then each stage.

    ref needs attention_mask (its real tokens are the ones compared); theirs may hold any subset of
    the layout, padded to any length (its own attention_mask says where its real tokens are).
    tolerance: {"hidden": x, "embedding": y}, one number for every stage, or None (no check).
    vocab: the reference's tokens by id, to print a differing token as text.
    """
    tol = tolerance if isinstance(tolerance, dict) or tolerance is None else {"hidden": tolerance, "embedding": tolerance}
    tol = tol or {}
    if "attention_mask" not in ref:
        raise InputError("the reference has no attention_mask; it is needed to know which tokens are real")
    ref_mask = _mask(ref["attention_mask"], "reference attention_mask")
    B = len(ref_mask)
    their_mask = _mask(theirs["attention_mask"], "theirs: attention_mask") if "attention_mask" in theirs else ref_mask
    if len(their_mask) != B:
        raise InputError(f"theirs has {len(their_mask)} texts (attention_mask {their_mask.shape}), the reference {B}")
    for name in ("input_ids", "token_type_ids"):
        for side, run, mask in (("reference", ref, ref_mask), ("theirs", theirs, their_mask)):
            if name in run and np.shape(run[name]) != mask.shape:
                raise InputError(f"{side}: {name} has shape {np.shape(run[name])}, attention_mask {mask.shape}")
    notes = []
    if "input_ids" not in theirs or "input_ids" not in ref:
        notes.append("input_ids not in both: tokenization checked by token counts only")
    tokens = token_diffs(ref.get("input_ids"), ref_mask, theirs.get("input_ids"), their_mask, vocab)
    same = np.ones(B, dtype=bool)
    same[[d.text for d in tokens]] = False
    if tokens:
        notes.append(f"texts {[d.text for d in tokens]} tokenize differently and are left out of the numbers")
    # (text, token) of each compared token vector, in the reference and in theirs.
    ref_where = [(t, int(p)) for t in np.flatnonzero(same) for p in np.flatnonzero(ref_mask[t])]
    their_where = [(t, int(p)) for t in np.flatnonzero(same) for p in np.flatnonzero(their_mask[t])]
    names = sorted((n for n in ref if stage_order(n) is not None), key=stage_order)
    extra = sorted(n for n in theirs if stage_order(n) is not None and n not in ref)
    unknown = sorted(n for n in theirs if stage_order(n) is None and n not in IDS)
    if extra:
        notes.append(f"not in the reference, not compared: {', '.join(extra)}")
    if unknown:
        notes.append(f"not documented stage names, ignored: {', '.join(unknown)}")
    if not any(stage_order(n) is not None or n in IDS for n in theirs):
        raise InputError(f"theirs holds none of the documented tensor names (input_ids, attention_mask, "
                         f"hidden_states.N, last_hidden_state, pooled.cls, pooled.mean, embedding); it holds: "
                         f"{', '.join(sorted(theirs)) or 'nothing'}")
    rows = []
    for name in names:
        t = tol.get(_kind(name))
        if name not in theirs:
            rows.append(_row(name, t, skipped="not in theirs"))
        elif not same.any():
            rows.append(_row(name, t, skipped="no text tokenized alike"))
        else:
            rows.append(_compare_one(name, ref[name], theirs[name], ref_where, their_where, their_mask.shape, t))
    return Report(title, rows, ref_mask.shape, dict(meta or {}), tokens, notes)


def _row(stage, tol, problem="", skipped="") -> Row:
    nan = float("nan")
    return Row(stage, nan, nan, nan, nan, (None, None, None), tol, problem, skipped)


def _compare_one(name, r, a, ref_where, their_where, their_bs, tol) -> Row:
    """One stage: shape and dtype checks, then the gathered token (or text) vectors compared."""
    r, a = np.asarray(r), np.asarray(a)
    if r.dtype.kind != "f":
        raise InputError(f"reference {name}: dtype {r.dtype} is not a float type")
    if a.dtype.kind != "f":
        return _row(name, tol, problem=f"dtype {a.dtype} is not a float type")
    pooled = r.ndim == 2
    want = (their_bs[0], r.shape[-1]) if pooled else their_bs + (r.shape[-1],)
    if a.shape != want:
        return _row(name, tol, problem=f"shape {a.shape}, expected {want} (reference {r.shape})")
    if pooled:
        texts = sorted({t for t, _ in ref_where})
        rv, av, where = r[texts], a[texts], [(t, _pooled_token(name)) for t in texts]
    else:
        (rt, rp), (at, ap) = np.array(ref_where).T, np.array(their_where).T
        rv, av, where = r[rt, rp], a[at, ap], ref_where                   # (N, D) each
    if not np.isfinite(rv).all():
        raise InputError(f"reference {name}: holds NaN or Inf on real tokens; the reference is unusable")
    bad = ~np.isfinite(av)
    if bad.any():
        n, dim = np.argwhere(bad)[0]
        return _row(name, tol, problem=f"{int(bad.sum())} NaN/Inf values on real tokens, the first at (text, token, "
                                       f"dim) {_where(tuple(where[n]) + (int(dim),))}")
    return _diff_vectors(name, av, rv, where, tol)


# -- printing -------------------------------------------------------------------------------------
def _cos(gap: float) -> str:
    return "1" if gap == 0 else f"1-{gap:.1e}"


def format_table(rows: list[Row], title: str = "", markdown: bool = False) -> str:
    """One line per stage: max abs, max rel, rms, worst cosine, where (text, token, dim) [, tolerance, ok]."""
    head = ["stage", "max abs diff", "max rel diff", "rms diff", "worst cos", "where (text, token, dim)"]
    body = [[r.stage] + (["-"] * 5 if r.problem or r.skipped else
                         [f"{r.max_abs:.2e}", f"{r.max_rel:.2e}", f"{r.rms:.2e}", _cos(r.one_minus_cos), _where(r.where)])
            for r in rows]
    if any(r.tol is not None or r.problem or r.skipped for r in rows):
        head += ["tol", ""]
        for b, r in zip(body, rows):
            status = (f"FAIL: {r.problem}" if r.problem else r.skipped if r.skipped else
                      "" if r.tol is None else "ok" if r.ok else "FAIL")
            b += ["-" if r.tol is None else f"{r.tol:.0e}", status]
    if markdown:
        lines = ["| " + " | ".join(x) + " |" for x in [head, ["---"] * len(head)] + body]
        return (f"**{title}**\n\n" if title else "") + "\n".join(lines)
    w = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    lines = ["  ".join(x[i].rjust(w[i]) if 0 < i < 5 else x[i].ljust(w[i]) for i in range(len(head))).rstrip()
             for x in [head] + body]
    return (f"{title}\n" if title else "") + "\n".join(lines)
