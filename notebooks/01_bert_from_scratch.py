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
# # BERT from scratch: from text to one embedding vector
#
# This notebook follows one sentence through
# [BAAI/bge-large-en-v1.5](https://huggingface.co/BAAI/bge-large-en-v1.5), one stage at a time, with the
# code of `bge_ref` (pure Python and NumPy): first the tokenizer of
# [`bge_ref/wordpiece.py`](../bge_ref/wordpiece.py), text to token ids, stage by stage; then the encoder
# of [`bge_ref/model.py`](../bge_ref/model.py), the textbook reference forward pass, block by block on the
# model's weights (`model.params`). Each section gives the formula, prints the code it calls and the
# shapes, and compares the result with the libraries the checkpoint is normally run with: `tokenizers`
# (and transformers' tokenizer) for the ids, Hugging Face transformers' `BertModel` for the activations:
# its `output_hidden_states`, its attention probabilities, and (through forward hooks) its own
# submodules. Every comparison is an `assert`, so this notebook fails if bge_ref and the reference
# libraries part ways.
#
# Dimensions: `B` batch, `S` tokens, `D` hidden size, `H` heads, `Dh = D / H`, `F` FFN size, `L` layers,
# `V` vocabulary. The first cell prints which checkpoint the stored outputs come from.

# %%
# Load bge_ref and the transformers reference on the same checkpoint.
import inspect
import json
import math
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by transformers

import matplotlib.pyplot as plt
import numpy as np
import tokenizers
import torch
import transformers
from matplotlib.font_manager import FontProperties, findfont
from matplotlib.ft2font import FT2Font

import bge_ref
from bge_ref import model as M          # the reference blocks: embeddings, self_attention, layer, ...
from bge_ref import wordpiece as W      # the tokenizer's stages: bert_normalizer, wordpiece, ...
from bge_ref.hub import resolve
from bge_ref.tokenizer_json import read_spec  # tokenizer.json read for wordpiece.py, every id checked
from common import MODEL, check, describe, save  # notebooks/common.py, beside this notebook

directory = Path(resolve(MODEL))                           # hub cache or local checkpoint directory
model = bge_ref.load(directory, tokenizer="python")        # float32; bge_ref's own tokenizer
hf = transformers.BertModel.from_pretrained(directory, attn_implementation="eager").eval()  # the reference

c = model.config                                           # its sizes, read from config.json
describe(model, directory)


def show(*functions):
    """Print the source of bge_ref functions: the code each section runs."""
    for f in functions:
        print(inspect.getsource(f))


_font = FT2Font(findfont(FontProperties()))  # matplotlib's default font: it has no CJK glyphs


def label(piece):
    """A token as a figure label: a character the plotting font lacks is written as its code point."""
    return "".join(ch if _font.get_char_index(ord(ch)) else f"U+{ord(ch):04X}" for ch in piece)


# %% [markdown]
# ## 1. From text to token ids: the tokenizer, stage by stage
#
# The model reads integers, $t_i \in \{0, \dots, V-1\}$, one per *WordPiece* of its $V = 30\,522$-entry
# vocabulary. `bge_ref/wordpiece.py` turns text into those ids in five stages, each a function named
# after the component of the `tokenizers` library (the Rust code behind transformers' fast tokenizers)
# that it mirrors, and each configured by the checkpoint's `tokenizer.json`:
#
# | stage | `bge_ref.wordpiece` | `tokenizers` component | what it does |
# | --- | --- | --- | --- |
# | 1 | `added_vocabulary` | AddedVocabulary | cuts out special tokens written in the text (`[MASK]`, `[SEP]`, ...) with their ids |
# | 2 | `bert_normalizer` | BertNormalizer | cleans control characters, puts spaces around CJK ideographs, strips accents, lowercases |
# | 3 | `bert_pre_tokenizer` | BertPreTokenizer | splits into words at whitespace; each punctuation character is a word |
# | 4 | `wordpiece` | WordPiece | cuts each word greedily into the longest vocabulary pieces; `##` marks a piece that continues a word |
# | 5 | `template_processing` | TemplateProcessing | `[CLS]` in front, `[SEP]` at the end |
#
# We follow a sentence with accents, punctuation, a tab, two CJK characters, a word the vocabulary
# lacks and an emoji, and compare every stage with the matching `tokenizers` component.

# %%
sentence = "Crème brûlée in 東京?\tTokenizers split unfamiliar words 🙂!"
tokenizer_json = directory / "tokenizer.json"
spec = read_spec(json.loads(tokenizer_json.read_text(encoding="utf-8")), tokenizer_json)  # what each stage reads
rust = tokenizers.Tokenizer.from_file(str(tokenizer_json))   # the reference: the same file, read by `tokenizers`
rust.no_padding()
rust.no_truncation()
print("tokenizer.json: normalizer", spec["normalizer"])
print(f"                WordPiece: {len(spec['vocab'])} entries, unk_token {spec['unk_token']!r}, "
      f"prefix {spec['continuing_subword_prefix']!r}, max_input_chars_per_word {spec['max_input_chars_per_word']}")
print("                added tokens", [(t.content, t.id) for t in spec["added_tokens"]])
print("                template", spec["template"])

# %% [markdown]
# **Stage 1, AddedVocabulary.** Special tokens typed into the text are found first, before anything can
# change them, and keep their own ids; the text around them goes on to the next stages. Our sentence
# holds none, so it goes on whole; a masked-language-model prompt shows a match.

# %%
# BERT's special tokens are matched in the raw text; an added token marked "normalized" would be
# matched after stage 2, in the normalized text (WordPieceTokenizer.piece_ids does both).
added = {t.content: t for t in spec["added_tokens"] if not t.normalized}
print(W.added_vocabulary(sentence, added))
print(W.added_vocabulary("Paris is the [MASK] of France.", added))

# %% [markdown]
# **Stage 2, BertNormalizer.** Four steps, each switched on by a flag of `tokenizer.json` (an uncased
# checkpoint: `strip_accents` null means "as `lowercase`"):
# `clean_text` drops control characters and turns every whitespace into a space; `handle_chinese_chars`
# puts spaces around each CJK ideograph, so each becomes a word of its own; `strip_accents` decomposes
# characters (Unicode NFD: `è` becomes `e` and a combining grave accent) and drops the combining marks;
# `lowercase` lowercases. Switching the flags on one by one shows each step:

# %%
switches = ["clean_text", "handle_chinese_chars", "strip_accents", "lowercase"]
steps = {("+ " if i else "") + name: {f: j <= i for j, f in enumerate(switches)} for i, name in enumerate(switches)}
print(f"{'text':<24} {sentence!r}")
for name, flags in steps.items():
    print(f"{name:<24} {W.bert_normalizer(sentence, **flags)!r}")
normalized = W.bert_normalizer(sentence, **spec["normalizer"])   # the checkpoint's flags
assert normalized == rust.normalizer.normalize_str(sentence)
print("\nbert_normalizer with the checkpoint's flags: identical to tokenizers' BertNormalizer")

# %% [markdown]
# **Stage 3, BertPreTokenizer.** Split at whitespace (dropped), and make every punctuation character a
# word of its own (`?` and `!` here; Unicode's punctuation classes, not only ASCII's):

# %%
words = W.bert_pre_tokenizer(normalized)
print(words)
assert words == [w for w, _ in rust.pre_tokenizer.pre_tokenize_str(normalized)]
print("identical to tokenizers' BertPreTokenizer")

# %% [markdown]
# **Stage 4, WordPiece.** Each word is cut greedily: the longest vocabulary entry that starts it, then
# the longest entry that continues it (written with the prefix `##`), and so on: "tokenizers", not in the
# vocabulary, becomes `token ##izer ##s`. A word that has a part no entry matches (the emoji: no entry
# holds it) becomes the single token `[UNK]`; so does a word longer than `max_input_chars_per_word`
# characters. The whole algorithm:

# %%
show(W.wordpiece)
pieces_of = {w: W.wordpiece(w, spec["vocab"], spec["unk_token"], spec["continuing_subword_prefix"],
                            spec["max_input_chars_per_word"]) for w in words}
for w, ps in pieces_of.items():
    assert ps == [t.value for t in rust.model.tokenize(w)], w      # tokenizers' WordPiece model, word by word
    print(f"{w!r:<14} -> {ps}")
print("identical to tokenizers' WordPiece, word by word")

# %% [markdown]
# **Stage 5, TemplateProcessing.** The pieces become ids, and the template puts `[CLS]` in front and
# `[SEP]` at the end (with max_length, the pieces would first be cut so that the whole fits). Token type
# ids say which segment of a text pair a token belongs to: one text is all segment 0.
#
# $$\text{text} \;\longmapsto\; (t_1, \dots, t_S) = (\texttt{[CLS]},\, w_1, \dots, w_{S-2},\, \texttt{[SEP]}),
# \qquad t_i \in \{0, \dots, V-1\}$$

# %%
piece_ids = [spec["vocab"][p] for w in words for p in pieces_of[w]]
sentence_ids, sentence_types = W.template_processing(piece_ids, spec["template"])
reference = rust.encode(sentence)
print(" i  piece          id")
for i, (t, piece) in enumerate(zip(sentence_ids, reference.tokens)):
    print(f"{i:2d}  {piece:<12} {t:5d}")
assert sentence_ids == reference.ids and sentence_types == reference.type_ids
hf_tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
assert sentence_ids == hf_tokenizer(sentence)["input_ids"]
assert sentence_ids == model.tokenizer.encode([sentence])[0].ids   # the same stages, as bge_ref.load runs them
print("\nids and token types identical to tokenizers' and to transformers' tokenizer")

# %% [markdown]
# The model runs on a batch. We add a shorter second text, so the batch is right-padded with `[PAD]`
# (id 0) to the longest text and the attention mask $m_i \in \{0, 1\}$ has something to do.
# `model.tokenize` runs the five stages on each text and pads.

# %%
texts = [sentence, "A short one."]
batch = model.tokenize(texts)          # int64 arrays (B, S), right-padded to the longest text
ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
real = mask.astype(bool)               # (B, S): the real tokens
encodings = model.tokenizer.encode(texts)
pieces = encodings[0].tokens           # the WordPieces of the sentence we follow
S0 = len(pieces)
assert ids[0].tolist() == sentence_ids
print("input_ids", ids.shape, " attention_mask", mask.shape, " token_type_ids", types.shape)
print("\ntext 1:", encodings[1].tokens)
print("  input_ids     ", ids[1].tolist())
print("  attention_mask", mask[1].tolist())

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
# then LayerNorm over the $D$ features of each token, with learned gain $\gamma$ (`g`) and bias
# $\beta$ (`b`):
#
# $$x^{(0)}_i = \mathrm{LN}(e_i) = \gamma \odot \frac{e_i - \mu_i}{\sqrt{\sigma_i^2 + \varepsilon}} + \beta,
# \qquad \mu_i = \frac1D \sum_{d} e_{id}, \quad \sigma_i^2 = \frac1D \sum_{d} (e_{id} - \mu_i)^2$$
#
# The reference blocks take their weights as keyword arguments: `model.params` is a nested dict, one
# entry per block, passed with `**`. The code this section runs:

# %%
show(M.layer_norm, M.embeddings)

# %%
E = model.params["embeddings"]          # {"word", "position", "token_type", "ln": {"g", "b"}}
eps = c.layer_norm_eps
x0 = M.embeddings(ids, types, **E, eps=eps)  # (B, S, D)
word = E["word"][ids]                   # (B, S, D): one row of the (V, D) table per token
position = E["position"][: ids.shape[1]]  # (S, D): positions 0..S-1, broadcast over the batch
token_type = E["token_type"][types]     # (B, S, D): segment A everywhere
e = word + position + token_type        # (B, S, D): what embeddings() sums before its LayerNorm
print("tables: word", E["word"].shape, " position", E["position"].shape, " token_type", E["token_type"].shape,
      " LayerNorm g, b", E["ln"]["g"].shape)
print("word", word.shape, "+ position", position.shape, "+ token_type", token_type.shape, "-> e", e.shape,
      "-> LN -> x0", x0.shape, "\n")
check("e, the sum of the three (LN input hook)", e, captured["embedding_sum"], tokens=real)
check("x0 = embeddings(...)  vs  hidden_states[0]", x0, ref_states[0], tokens=real);

# %%
fig, ax = plt.subplots(figsize=(10, 3.2))
parts = {"word": word[0, :S0], "position": np.broadcast_to(position[:S0], word[0, :S0].shape),
         "token type": token_type[0, :S0], "sum e": e[0, :S0], "x0 = LN(e)": x0[0, :S0]}
width = 0.16
for j, (name, part) in enumerate(parts.items()):
    ax.bar(np.arange(S0) + (j - 2) * width, np.linalg.norm(part, axis=-1), width, label=name)
ax.set_xticks(range(S0), [label(t) for t in pieces], rotation=45, ha="right")
ax.set_ylabel("L2 norm")
ax.set_title("Size of each embedding part per token (LayerNorm rescales every token to a common size)")
ax.legend(ncol=5, fontsize=8);

# %% [markdown]
# ## 3. One attention layer, opened up (layer 0)
#
# Every layer starts with multi-head self-attention. Three projections of each text's input
# $x \in \mathbb{R}^{S \times D}$ (bge_ref fuses them into one $(D, 3D)$ matrix, `attn.qkv.w`):
#
# $$Q = xW_Q + b_Q, \qquad K = xW_K + b_K, \qquad V = xW_V + b_V \qquad \in \mathbb{R}^{S\times D}$$
#
# Their $D$ columns are cut into $H$ heads of $D_h = D/H$ columns: $Q^{(h)}, K^{(h)}, V^{(h)} \in \mathbb{R}^{S\times D_h}$.
#
# The reference works on the whole batch at once: activations are $(B, S, D)$, a projection `x @ w + b`
# applies to every token of every text in one matrix product (NumPy broadcasts the $(D, 3D)$ weight over
# $B$ and $S$), and `split_heads` reshapes to $(B, H, S, D_h)$, so that attention, which mixes tokens
# *within* a text, runs for every text and every head at once. `heads_qkv` does both (one projection,
# then the split into heads), and `self_attention` is the whole block. Its code:

# %%
show(M.linear, M.split_heads, M.heads_qkv, M.self_attention)

# %%
p = model.params["layers"][0]       # layer 0: {"attn", "attn_out", "inter", "out"}, weights already (in, out)
B, S, D = x0.shape
H = c.num_attention_heads
Dh = D // H
qkv = M.linear(x0, **p["attn"]["qkv"])          # (B, S, 3D): Q, K and V side by side, one matmul
q, k, v = np.split(qkv, 3, axis=-1)             # 3 x (B, S, D)
print("x0", x0.shape, " attn.qkv.w", p["attn"]["qkv"]["w"].shape, " qkv", qkv.shape, " q, k, v", q.shape)
check("Q  vs  attention.self.query", q, captured["query"], tokens=real)
check("K  vs  attention.self.key", k, captured["key"], tokens=real)
check("V  vs  attention.self.value", v, captured["value"], tokens=real)
qh, kh, vh = M.split_heads(q, H), M.split_heads(k, H), M.split_heads(v, H)
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
# `attention_probs` computes $A^{(h)}$, and `attention` multiplies it by $V$. To look at the
# probabilities step by step, we compute `attention_probs`' scores here, then its `softmax`, and check
# the result against `attention_probs` itself.

# %%
show(M.attention_mask_bias, M.softmax, M.attention_probs, M.attention)

# %%
bias = M.attention_mask_bias(mask, x0.dtype)                   # (B, 1, 1, S), broadcast over heads and queries
scores = qh @ kh.swapaxes(-1, -2) / math.sqrt(Dh) + bias       # (B, H, S, S): query i against key j
probs = M.softmax(scores)                                      # (B, H, S, S), each row sums to 1
print("scores", scores.shape, " mask bias", bias.shape, " probabilities", probs.shape)
n1 = int(mask[1].sum())                                        # text 1's real tokens; the rest is padding
print(f"mask bias of text 1: 0 on its {n1} real keys, {bias[1, 0, 0, n1]:.3g} (float32's min) on its {S - n1} padded")
print("text 1, head 0, query 0 scores on the real keys:", np.round(scores[1, 0, 0, :n1], 2),
      "on the padded:", scores[1, 0, 0, n1:][:2], "...")
print("text 1, head 0, query 0 attends with", np.round(probs[1, 0, 0], 3))
assert (probs[1][..., mask[1] == 0] == 0).all()                 # padded keys get exactly zero weight
assert np.allclose(probs.sum(-1), 1, atol=1e-6)
assert (probs == M.attention_probs(qh, kh, bias)).all()        # the same steps as the reference block
real_queries = real[:, None, :].repeat(H, axis=1)              # (B, H, S): rows of real query tokens
check("softmax probabilities  vs  output_attentions", probs, ref_attention[0], tokens=real_queries);

# %% [markdown]
# Each head averages the value vectors with its weights, and `merge_heads` puts the heads side by side
# again:
#
# $$\mathrm{head}^{(h)} = A^{(h)} V^{(h)} \in \mathbb{R}^{S\times D_h}, \qquad
# \mathrm{ctx} = \big[\mathrm{head}^{(1)}, \dots, \mathrm{head}^{(H)}\big] \in \mathbb{R}^{S\times D}$$

# %%
show(M.merge_heads)
heads = M.attention(qh, kh, vh, bias)                            # (B, H, S, Dh)
context = M.merge_heads(heads)                                   # (B, S, D): heads side by side again
print("heads", heads.shape, " context", context.shape)
check("attention(q, k, v)  vs  probabilities @ V", heads, probs @ vh, rtol=1e-6)
check("context  vs  attention.self output", context, captured["context"], tokens=real)
check("context  vs  self_attention(x0), the whole block", context,
      M.self_attention(x0, bias, **p["attn"], n_head=H), rtol=1e-6);

# %%
shown = list(range(min(H, 6)))
labels = [label(t) for t in pieces]
fig, axes = plt.subplots(2, 3, figsize=(15, 10), constrained_layout=True)
for ax, h in zip(axes.flat, shown):
    im = ax.imshow(probs[0, h, :S0, :S0], cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(S0), labels, rotation=90, fontsize=9)
    ax.set_yticks(range(S0), labels, fontsize=9)
    ax.set_title(f"layer 0, head {h}")
for ax in axes.flat[len(shown):]:
    ax.axis("off")
fig.supxlabel("key token j (attended to)")
fig.supylabel("query token i")
fig.colorbar(im, ax=axes, shrink=0.6, label="attention weight $A_{ij}$")
fig.suptitle(f"Attention of layer 0 over {label(' '.join(texts[0].split()))!r}", fontsize=13)
save(fig, "attention_heads.png")

# %%
fig, ax = plt.subplots(figsize=(5.5, 4.2))
im = ax.imshow(probs[1, 0], cmap="viridis", vmin=0, vmax=1)
labels1 = encodings[1].tokens + ["[PAD]"] * (S - n1)
ax.set_xticks(range(S), labels1, rotation=90, fontsize=8)
ax.set_yticks(range(S), labels1, fontsize=8)
ax.axvline(n1 - 0.5, color="red")
ax.set_title("The mask at work: text 1, head 0\n(padded keys, right of the red line, get weight 0)", fontsize=10)
fig.colorbar(im, ax=ax);

# %% [markdown]
# The attention block ends like every sub-block of BERT: a projection, the residual (the block's input
# added back), and LayerNorm ("post-LN"; section 5 opens this pattern up):
#
# $$a = \mathrm{LN}\big(x + \mathrm{ctx}\, W_O + b_O\big)$$

# %%
show(M.attention_output)
a = M.attention_output(context, x0, **p["attn_out"], eps=eps)   # (B, S, D)
print("attn_out.dense.w", p["attn_out"]["dense"]["w"].shape, " a", a.shape, "= (B, S, D)")
check("a  vs  attention.output", a, captured["attention_output"], tokens=real);

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
show(M.intermediate)
h = M.intermediate(a, **p["inter"])                             # (B, S, F)
F = h.shape[-1]
print("inter.dense.w", p["inter"]["dense"]["w"].shape, " h", h.shape, "= (B, S, F)")
diff_h = check("h = GELU(a W1 + b1)  vs  intermediate", h, captured["intermediate"], tokens=real)
pre = M.linear(a, **p["inter"]["dense"])                        # the pre-activations, (B, S, F)
h_tanh = torch.nn.functional.gelu(torch.from_numpy(pre), approximate="tanh").numpy()
gap = np.abs(h - h_tanh)[real].max()
print(f"\npre-activations of this layer lie in [{pre[real].min():.1f}, {pre[real].max():.1f}]. With the tanh GELU, "
      f"h would differ by up to {gap:.1e},\n{gap / diff_h:.0f} times the difference between bge_ref and "
      "transformers above.")

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
show(M.output)
y = M.output(h, a, **p["out"], eps=eps)                         # (B, S, D)
r = M.linear(h, **p["out"]["dense"]) + a                        # (B, S, D): what output() normalizes
ln = p["out"]["ln"]
standardized = (y - ln["b"]) / ln["g"]                          # undo gamma and beta to see what LN did
print("out.dense.w", p["out"]["dense"]["w"].shape, " r", r.shape, " y", y.shape)
print("text 0, per-token mean of r:  ", np.round(r[0, :S0].mean(-1), 3))
print("text 0, per-token std of r:   ", np.round(r[0, :S0].std(-1), 3))
print("after LN, before gamma, beta: largest |mean|", f"{np.abs(standardized[0, :S0].mean(-1)).max():.1e},",
      "std", np.round(standardized[0, :S0].std(-1), 4)[:4], "...\n")
check("y  vs  BertOutput (output hook)", y, captured["output"], tokens=real)
check("y  vs  hidden_states[1]", y, ref_states[1], tokens=real);

# %% [markdown]
# Sections 3 to 5 are one encoder layer. `layer` chains the four blocks, each taking its own part of
# the layer's parameters:

# %%
show(M.layer)
check("y  vs  layer(x0), the whole layer", y, M.layer(x0, bias, **p, n_head=H, eps=eps), rtol=1e-6);

# %% [markdown]
# ## 6. The stack of layers
#
# The whole encoder is the same layer, with its own weights, applied $L$ times:
#
# $$x^{(\ell+1)} = \mathrm{Layer}_\ell\big(x^{(\ell)}\big), \qquad \ell = 0, \dots, L-1,
# \qquad \texttt{hidden\_states} = \big(x^{(0)}, x^{(1)}, \dots, x^{(L)}\big)$$
#
# and `bert` is the whole model: embeddings, the mask bias, the encoder.

# %%
show(M.encoder, M.bert)

# %%
last, states = M.encoder(x0, bias, model.params["layers"], c, output_hidden_states=True)
print(len(states), "hidden states of shape", states[0].shape, "\n")
for layer_index, (ours, theirs) in enumerate(zip(states, ref_states)):
    check(f"hidden_states[{layer_index}]", ours, theirs, tokens=real)
whole, _ = M.bert(ids, mask, types, model.params, c)
check("bert(ids), the whole reference forward", whole, ref_states[-1], tokens=real)
check("model.forward (the public API, fast path)", model.forward(**batch), ref_states[-1], tokens=real);

# %% [markdown]
# `model.forward` runs [`bge_ref/fast.py`](../bge_ref/fast.py) by default: the same function with the
# speed machinery (threads, cache-sized attention blocks, in-place updates), held to this reference by
# tests/test_fast.py. `bge_ref.load(..., forward="reference")` runs the code read above.

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
    ax.set_yticks(range(S0), labels)
    ax.set_xlabel(r"hidden state $\ell$ (0 = embeddings)")
colors = plt.cm.tab20(np.linspace(0, 1, 20))
for i in range(S0):
    axes[2].plot(cos_to_input[:, i], marker=".", color=colors[i % 20], label=f"{i} {labels[i]}",
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
