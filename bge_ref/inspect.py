"""Inside one text: the attention probabilities of a layer and the size of each token's hidden state
through the layers, computed by the reference forward (model.py), for the playground's Inside view
and `POST /attention`.

The forward runs once with output_hidden_states; the chosen layer's probabilities are then
recomputed from that layer's input with model.py's own blocks (heads_qkv, attention_probs), so
they are exactly the softmax the layer applied: transformers' `output_attentions`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import model as reference
from .api import bad
from .batching import pad


@dataclass
class Inside:
    tokens: list[str]          # the pieces, [CLS] ... [SEP]
    ids: list[int]
    truncated: bool            # the text had more tokens than max_length, and was cut before [SEP]
    layer: int
    attention: np.ndarray      # (H, S, S): row i is how much token i takes from each token
    hidden_norms: np.ndarray   # (L + 1, S): L2 norm of each token's state, embeddings then each layer


def parse_request(body, num_layers: int) -> tuple[str, int]:
    """POST /attention's body {"text": str, "layer": int}: the text (non-empty) and the layer (in
    [0, num_layers)), or an InputError naming the field (its .param), the server's 400."""
    if not isinstance(body, dict) or set(body) != {"text", "layer"}:
        raise bad("", 'the body must be {"text": str, "layer": int}'
                      + (f", got the fields {sorted(body)}" if isinstance(body, dict) else ""))
    return check_text(body["text"]), check_layer(body["layer"], num_layers)


def check_text(text) -> str:
    if not isinstance(text, str):
        raise bad("text", f"text must be a string, got {type(text).__name__}")
    if not text:
        raise bad("text", "text: empty string; give at least 1 character")
    return text


def check_layer(layer, num_layers: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < num_layers:
        raise bad("layer", f"layer must be an int in [0, {num_layers}) (the model has {num_layers} layers), "
                           f"got {layer!r}")
    return layer


def look_inside(embedder, text: str, layer: int, truncate: bool = True) -> Inside:
    """One text through the reference forward: layer `layer`'s attention probabilities and the
    per-layer hidden-state norms. Texts longer than max_length are cut (or an InputError with
    truncate=False), as encode() does."""
    config = embedder.config
    text, layer = check_text(text), check_layer(layer, config.num_hidden_layers)
    full = embedder.tokenizer.encode([text], truncate=False)[0]
    if not truncate and len(full.ids) > embedder.max_length:
        raise bad("text", f"text has {len(full.ids)} tokens, more than the model's {embedder.max_length}; "
                          "shorten it or allow truncation")
    enc = embedder.tokenizer.encode([text], truncate=True)[0]
    batch = pad([enc.ids], embedder.tokenizer.pad_id)                          # (1, S) each
    _, states = reference.bert(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                               embedder.params, config, output_hidden_states=True)  # L+1 x (1, S, D)
    x = states[layer]                                                          # the layer's input
    mask_bias = reference.attention_mask_bias(batch["attention_mask"], x.dtype)
    q, k, _ = reference.heads_qkv(x, **embedder.params["layers"][layer]["attn"], n_head=config.num_attention_heads)
    probs = reference.attention_probs(q, k, mask_bias)[0]                      # (H, S, S)
    norms = np.stack([np.linalg.norm(h[0].astype(np.float64), axis=-1) for h in states])  # (L+1, S)
    return Inside(list(enc.tokens), list(enc.ids), len(full.ids) > len(enc.ids), layer, probs, norms)


def as_json(inside: Inside, digits: int = 7) -> dict:
    """The /attention response body. Probabilities are rounded to `digits` decimals (an error of
    5e-8 at 7, far below float32's agreement with transformers), which halves the JSON of a long text."""
    return {"tokens": inside.tokens, "ids": inside.ids, "truncated": inside.truncated, "layer": inside.layer,
            "attention": np.round(inside.attention.astype(np.float64), digits).tolist(),
            "hidden_norms": np.round(inside.hidden_norms, 4).tolist()}
