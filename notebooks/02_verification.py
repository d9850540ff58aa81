# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Verification: how close is bge_ref to transformers, and to exact arithmetic?
#
# Two references for every hidden state of a padded batch of texts:
# - **transformers** `BertModel` in float32, the implementation the checkpoint is normally run with;
# - the **float64 oracle**: bge_ref with `dtype="float64"`, every operation in float64. Its distance to
#   transformers in float64 is ~1e-15, so it stands in for exact arithmetic and shows how much of a
#   float32 difference is rounding, and whose rounding it is.
#
# The numbers come from [`bge_ref.verify`](../bge_ref/verify.py) (the library behind `bge-ref verify`):
# `four_runs` runs bge_ref and transformers in float32 and float64 on one batch, `compare_stages` compares
# two runs stage by stage on real (unpadded) tokens. The asserts make this notebook fail if parity breaks.

# %%
# Load bge_ref; bge_ref.verify loads the transformers reference itself.
import matplotlib.pyplot as plt
import numpy as np

import bge_ref
from bge_ref.hub import resolve
from common import MODEL, check, describe, save  # notebooks/common.py, beside this notebook

directory = resolve(MODEL)                                  # hub cache or local checkpoint directory
model = bge_ref.load(directory)                            # float32, as embeddings are usually computed
c = model.config                                           # its sizes, read from config.json
describe(model, directory)


# %%
from bge_ref import verify

texts = verify.DEFAULT_TEXTS + [
    "BERT reads a whole sequence at once: every layer lets each token attend to all the others, so the vector "
    "of a word depends on its context. A sentence embedding model pools these contextual vectors into one "
    "vector per text, trained so that texts with related meanings end up close together.",
]
batch = model.tokenize(texts)
mask = batch["attention_mask"]
real = mask.astype(bool)                                         # (B, S)
print("batch", batch["input_ids"].shape, f"{real.sum()} real tokens, {(~real).sum()} padding")

runs = verify.four_runs(directory, batch)   # {("ours" | "torch", "float32" | "float64"): {"hidden_states.0", ..., "embedding"}}
pairs = {  # (ours, reference, tolerances or None)
    "bge_ref f32 vs transformers f32": (runs["ours", "float32"], runs["torch", "float32"], verify.TOLERANCES["float32"]),
    "bge_ref f32 vs float64 oracle": (runs["ours", "float32"], runs["ours", "float64"], verify.TOLERANCES["float32"]),
    "transformers f32 vs float64 oracle": (runs["torch", "float32"], runs["ours", "float64"], None),
    "bge_ref f64 vs transformers f64": (runs["ours", "float64"], runs["torch", "float64"], verify.TOLERANCES["float64"]),
}
reports = {name: verify.compare_stages(b, a, tol, title=name) for name, (a, b, tol) in pairs.items()}
print()
print(reports["bge_ref f32 vs transformers f32"].table())

# %% [markdown]
# ## Per-layer error growth
#
# For each hidden state (0 = embeddings, then after each layer): the largest element-wise difference,
# and the largest relative difference of a token vector, $\lVert a_i - b_i\rVert / \lVert b_i\rVert$.

# %%
L = c.num_hidden_layers
hidden = {name: [row for row in rep.rows if row.stage.startswith("hidden_states.")]  # states 0..L
          for name, rep in reports.items()}
max_abs = {name: np.array([row.max_abs for row in rows]) for name, rows in hidden.items()}
max_rel = {name: np.array([row.max_rel for row in rows]) for name, rows in hidden.items()}
assert all(len(v) == L + 1 for v in max_abs.values())

print(f"{'state':>5}" + "".join(f"{name:>36}" for name in reports))
for i in range(L + 1):
    print(f"{i:>5}" + "".join(f"{max_abs[name][i]:>36.2e}" for name in reports))

for name in ["bge_ref f32 vs transformers f32", "bge_ref f32 vs float64 oracle", "bge_ref f64 vs transformers f64"]:
    assert reports[name].ok, reports[name].table()       # every stage within verify.TOLERANCES
# bge_ref's float32 is no less accurate than transformers' own float32 (up to a factor for luck).
assert (max_abs["bge_ref f32 vs float64 oracle"] <= 4 * max_abs["transformers f32 vs float64 oracle"]).all()
print("\nall stages within tolerance:", {k: v for k, v in verify.TOLERANCES.items()})

fig, axes = plt.subplots(1, 2, figsize=(14, 4.6), constrained_layout=True)
styles = ["-o", "-s", "--^", ":d"]
for ax, errs, title in [(axes[0], max_abs, "largest element-wise |difference|"),
                        (axes[1], max_rel, r"largest relative difference of a token vector")]:
    for (name, err), style in zip(errs.items(), styles):
        ax.semilogy(np.maximum(err, 1e-18), style, label=name)
    ax.set_xlabel("hidden state (0 = embeddings, then after each layer)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
axes[0].axhline(verify.TOLERANCES["float32"]["hidden"], color="gray", lw=0.8, ls="--")
axes[0].text(0, verify.TOLERANCES["float32"]["hidden"] * 1.5, "float32 tolerance", fontsize=8, color="gray")
axes[0].legend(fontsize=9)
fig.suptitle(f"Error growth through the {L} layers ({real.sum()} real tokens in {len(texts)} texts)")
save(fig, "error_growth.png")

# %% [markdown]
# ## The distribution of element-wise differences (last hidden state)
#
# In float32 each operation rounds its result by up to $2^{-24} \approx 6\times10^{-8}$ of its size.
# A hidden value is the end of a long chain of such operations (dot products over $D$ and $F$ terms,
# $L$ layers), so two float32 implementations that sum in different orders disagree by a spread of
# multiples of that, shown here against the typical size of a value.

# %%
final = {name: (a["last_hidden_state"].astype(np.float64) - b["last_hidden_state"])[real].ravel()
         for name, (a, b, _) in pairs.items()}
typical = np.median(np.abs(runs["ours", "float64"]["last_hidden_state"][real]))
print(f"last hidden state: {final[next(iter(final))].size} numbers, median |value| {typical:.3f}; "
      f"float32 rounds such a value by up to {typical * 2.0**-24:.1e}\n")
for name in list(pairs)[:3]:
    d = np.abs(final[name])
    print(f"{name:<36} median |diff| {np.median(d):.1e}, 99th percentile {np.percentile(d, 99):.1e}, "
          f"max {d.max():.1e}, exactly equal {np.mean(d == 0):.1%}")

fig, axes = plt.subplots(1, 2, figsize=(14, 4.2), constrained_layout=True)
for name in list(pairs)[:3]:
    d = final[name]
    axes[0].hist(d, bins=200, histtype="step", label=name)
    axes[1].hist(np.log10(np.maximum(np.abs(d), 1e-12)), bins=120, histtype="step", label=name)
axes[0].set_yscale("log")
axes[0].set_xlabel("signed difference")
axes[0].set_title("element-wise differences, last hidden state")
axes[1].set_xlabel(r"$\log_{10}$ |difference| (exact zeros at -12)")
axes[1].set_title("the same, on a log scale")
axes[1].legend(fontsize=9);

# %% [markdown]
# ## Cosine of the final embeddings
#
# What a user of the embeddings sees: each text's pooled, normalized vector (the checkpoint's pooling)
# from bge_ref float32, against the oracle, transformers (pooled in torch as sentence-transformers does)
# and sentence-transformers itself. Plotted as $1 - \cos$.

# %%
from sentence_transformers import SentenceTransformer

st = SentenceTransformer(str(directory), device="cpu")
pooling = model.pooling
emb = {"float64 oracle": runs["ours", "float64"]["embedding"], "transformers f32": runs["torch", "float32"]["embedding"],
       "sentence-transformers f32": st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)}
ours = runs["ours", "float32"]["embedding"]
check("bge_ref run (verify)  vs  model.encode", ours, model.encode(texts), rtol=1e-6)
one_minus_cos = {}
for name, ref in emb.items():
    # 1 - cos(a, b) = |a^ - b^|^2 / 2 keeps its digits when a and b agree to 1e-8 (1 - a^.b^ would not)
    one_minus_cos[name] = 0.5 * ((verify.unit(ours.astype(np.float64)) - verify.unit(ref.astype(np.float64))) ** 2).sum(-1)
    print(f"bge_ref f32 vs {name:<26} largest 1 - cos = {one_minus_cos[name].max():.1e}")
    assert one_minus_cos[name].max() <= 1e-10

fig, ax = plt.subplots(figsize=(12, 3.8))
w = 0.27
for j, (name, v) in enumerate(one_minus_cos.items()):
    ax.bar(np.arange(len(texts)) + (j - 1) * w, np.maximum(v, 1e-20), w, label=f"vs {name}")
ax.set_yscale("log")
ax.set_xticks(range(len(texts)), [f"text {i}\n({n} tokens)" for i, n in enumerate(real.sum(1))])
ax.set_ylabel(r"$1 - \cos$ (exactly 0 drawn at 1e-20)")
ax.set_title(f"bge_ref float32 embeddings ({pooling} pooling, normalized) against three references")
ax.legend(fontsize=9);
