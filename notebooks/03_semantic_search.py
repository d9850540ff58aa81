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
# # Semantic search with bge_ref
#
# Embed a few documents and queries, score every pair by cosine similarity, retrieve the top $k$, and
# see what the choice of pooling ([CLS] or mean) does to the ranking.
#
# bge is an *asymmetric* retrieval model: short queries get an instruction prepended
# (`bge_ref.QUERY_INSTRUCTION`, "Represent this sentence for searching relevant passages: "), which
# `encode_queries` does; documents are embedded as they are. With unit vectors, the dot product is the
# cosine: $\mathrm{score}(q, d) = \hat e_q \cdot \hat e_d$.

# %%
# Load bge_ref (the reference here is sentence-transformers, loaded below).
import matplotlib.pyplot as plt
import numpy as np

import bge_ref
from bge_ref.hub import resolve
from common import MODEL, check, describe, save  # notebooks/common.py, beside this notebook

directory = resolve(MODEL)                                  # hub cache or local checkpoint directory
model = bge_ref.load(directory)                            # float32, as embeddings are usually computed
describe(model, directory)


# %%
labels = ["Eiffel Tower", "photosynthesis", "BERT", "Great Barrier Reef", "list.sort()", "espresso",
          "mitochondria", "Mount Everest", "binary search", "French Revolution", "cosine similarity", "sourdough"]
documents = [
    "The Eiffel Tower in Paris was completed in 1889 and is about 330 metres tall.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar and oxygen.",
    "BERT is a transformer encoder pre-trained by predicting masked words.",
    "The Great Barrier Reef, off Queensland, is the largest coral reef system in the world.",
    "Python's list.sort() sorts a list in place and returns None.",
    "Espresso is brewed by forcing hot water through finely ground coffee beans.",
    "Mitochondria produce most of the cell's supply of ATP, its chemical energy.",
    "Mount Everest, 8,849 metres above sea level, is the highest mountain on Earth.",
    "Binary search finds an item in a sorted array in logarithmic time.",
    "The French Revolution began in 1789 with the storming of the Bastille.",
    "Cosine similarity measures the angle between two vectors, ignoring their lengths.",
    "Sourdough bread rises thanks to wild yeast and lactic acid bacteria.",
]
queries = [  # (query, index of the document that answers it)
    ("how tall is the eiffel tower", 0),
    ("how do plants make food from light", 1),
    ("what is the tallest mountain", 7),
    ("how is espresso made", 5),
    ("fast way to look up a value in a sorted list", 8),
    ("what gives a cell its energy", 6),
]
query_texts = [q for q, _ in queries]
relevant = np.array([d for _, d in queries])
assert len(labels) == len(documents)

doc_emb = model.encode(documents)               # (n_docs, D), the checkpoint's pooling, unit length
query_emb = model.encode_queries(query_texts)   # (n_queries, D), instruction prepended
print("documents", doc_emb.shape, " queries", query_emb.shape, " norms", np.round(np.linalg.norm(doc_emb, axis=1)[:3], 4))
print("query instruction:", repr(bge_ref.QUERY_INSTRUCTION))
check("encode_queries  vs  encode(instruction + query)", query_emb,
      model.encode([bge_ref.QUERY_INSTRUCTION + q for q in query_texts]), rtol=1e-6)

from sentence_transformers import SentenceTransformer

st = SentenceTransformer(str(directory), device="cpu")
check("documents  vs  sentence-transformers", doc_emb, st.encode(documents, normalize_embeddings=True))
check("queries  vs  sentence-transformers", query_emb,
      st.encode([bge_ref.QUERY_INSTRUCTION + q for q in query_texts], normalize_embeddings=True));

# %% [markdown]
# ## The similarity matrix
#
# Every query against every document. The boxes mark the document that answers each query.

# %%
scores = query_emb @ doc_emb.T                  # (n_queries, n_docs) cosine similarities


def heatmap(ax, s, title):
    im = ax.imshow(s, cmap="viridis")
    ax.set_xticks(range(len(documents)), labels, rotation=45, ha="right", fontsize=9)
    ax.set_yticks(range(len(queries)), query_texts, fontsize=9)
    for qi, di in enumerate(relevant):
        ax.add_patch(plt.Rectangle((di - 0.5, qi - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
    for qi in range(s.shape[0]):
        for di in range(s.shape[1]):
            ax.text(di, qi, f"{s[qi, di]:.2f}", ha="center", va="center", fontsize=6.5,
                    color="black" if s[qi, di] > s.mean() else "white")
    ax.set_title(title)
    return im


fig, ax = plt.subplots(figsize=(12, 5), constrained_layout=True)
fig.colorbar(heatmap(ax, scores, f"cosine similarity, {model.pooling} pooling (the checkpoint's own)"), ax=ax);

# %% [markdown]
# ## Top-$k$ retrieval
#
# Sort each row by score; ✓ marks the document that answers the query.

# %%
k = 3


def rank_of_relevant(s):
    order = np.argsort(-s, axis=1)
    return np.array([int(np.where(order[qi] == relevant[qi])[0][0]) + 1 for qi in range(len(s))])


for qi, q in enumerate(query_texts):
    print(f"query: {q!r}")
    for rank, di in enumerate(np.argsort(-scores[qi])[:k], 1):
        print(f"   {rank}. {scores[qi, di]:.3f} {'✓' if di == relevant[qi] else ' '} {documents[di]}")
ranks = rank_of_relevant(scores)
print(f"\nrank of the answering document: {ranks.tolist()}  (top-1 accuracy {np.mean(ranks == 1):.2f}, "
      f"mean reciprocal rank {np.mean(1 / ranks):.2f})")

# %% [markdown]
# ## CLS versus mean pooling
#
# The same token vectors, pooled two ways. Only one of them is what the checkpoint was trained for
# (bge-large-en-v1.5: [CLS]; all-MiniLM-L6-v2: mean); the other still gives *a* vector, but its geometry
# was never shaped by the training objective. Compare the rank of the answering document and the
# *margin*: its score minus the best score of a wrong document.

# %%
by_pooling = {}
for pooling in ("cls", "mean"):
    d = model.encode(documents, pooling=pooling, normalize=True)
    q = model.encode_queries(query_texts, pooling=pooling, normalize=True)
    by_pooling[pooling] = q @ d.T
check(f"{model.pooling} pooling  vs  the default encode", by_pooling[model.pooling], scores, rtol=1e-6)

print(f"{'query':<46}" + "".join(f"{p + ' rank':>10}{p + ' margin':>12}" for p in by_pooling))
for qi, q in enumerate(query_texts):
    row = ""
    for pooling, s in by_pooling.items():
        wrong = np.delete(s[qi], relevant[qi])
        row += f"{rank_of_relevant(s)[qi]:>10d}{s[qi, relevant[qi]] - wrong.max():>12.3f}"
    print(f"{q:<46}" + row)
for pooling, s in by_pooling.items():
    r = rank_of_relevant(s)
    print(f"{pooling:>4}: top-1 accuracy {np.mean(r == 1):.2f}, MRR {np.mean(1 / r):.2f}, "
          f"scores span [{s.min():.2f}, {s.max():.2f}]" + ("   <- the checkpoint's pooling" if pooling == model.pooling else ""))

fig, axes = plt.subplots(1, 2, figsize=(17, 5), constrained_layout=True)
for ax, (pooling, s) in zip(axes, by_pooling.items()):
    fig.colorbar(heatmap(ax, s, f"{pooling} pooling" + (" (trained)" if pooling == model.pooling else " (not trained for)")),
                 ax=ax, shrink=0.6)
save(fig, "cls_vs_mean.png")

# %% [markdown]
# ## Does the instruction matter?
#
# The same search with the queries embedded plainly, without the instruction (checkpoint pooling).
# bge-v1.5 was trained to work reasonably without it; models not trained with it (like all-MiniLM-L6-v2)
# just see extra words.

# %%
plain = model.encode(query_texts) @ doc_emb.T
print(f"{'query':<46}{'with':>8}{'without':>9}   (rank of the answering document)")
for qi, q in enumerate(query_texts):
    print(f"{q:<46}{ranks[qi]:>8d}{rank_of_relevant(plain)[qi]:>9d}")
print(f"\nMRR with the instruction {np.mean(1 / ranks):.2f}, without {np.mean(1 / rank_of_relevant(plain)):.2f}")
