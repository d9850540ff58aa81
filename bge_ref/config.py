"""BertConfig: the sizes of one checkpoint, read from its config.json, and nothing hard-coded.

Every field is checked here, before anything is allocated from it: a hostile or corrupt config.json
(num_hidden_layers 1000000000, hidden_size Infinity, layer_norm_eps NaN, pad_token_id -1) is a
CheckpointError naming the file and the field. checkpoint.py then checks the sizes against the
shapes in the safetensors header, before any tensor data is read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from . import jsonfile
from .errors import CheckpointError

# The largest size accepted for each field: far above any BERT (bge-large: 30522, 1024, 24, 16, 4096,
# 512, 2), low enough that a corrupt value is named here rather than met as a huge allocation.
MAX_VOCAB_SIZE = 1 << 24
LIMITS = {
    "vocab_size": MAX_VOCAB_SIZE,
    "hidden_size": 1 << 16,
    "num_hidden_layers": 1 << 10,
    "num_attention_heads": 1 << 10,
    "intermediate_size": 1 << 18,
    "max_position_embeddings": 1 << 20,
    "type_vocab_size": 1 << 10,
}
# What bge_ref computes exactly; any other value of these keys is refused, with the reason.
SUPPORTED = {
    "hidden_act": ("gelu", "bge_ref implements the exact erf GELU only"),
    "position_embedding_type": ("absolute", "relative position embeddings are not implemented"),
    "is_decoder": (False, "decoders (causal attention, cross-attention) are not implemented"),
    "add_cross_attention": (False, "cross-attention is not implemented"),
}
DEFAULTS = {"pad_token_id": 0, "layer_norm_eps": 1e-12, "type_vocab_size": 2}  # BERT's own, when absent


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522               # V: WordPiece vocabulary size (rows of the word embedding)
    hidden_size: int = 1024               # D: width of every hidden state
    num_hidden_layers: int = 24           # L: number of encoder layers
    num_attention_heads: int = 16         # H: attention heads per layer (head size D // H)
    intermediate_size: int = 4096         # F: width of the feed-forward layer
    max_position_embeddings: int = 512    # P: longest sequence the position table covers
    type_vocab_size: int = 2              # T: token type (segment) ids
    layer_norm_eps: float = 1e-12         # eps inside every LayerNorm's square root
    pad_token_id: int = 0                 # id used to pad batches (masked out of attention)

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        """Read config.json, refusing what this encoder cannot compute exactly."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: config.json not found; a checkpoint directory needs one")
        raw = jsonfile.read(path)
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path}: config.json must hold a JSON object")
        return cls(**read_fields(raw, path))


def read_fields(raw: dict, path: Path) -> dict:
    """BertConfig's fields from a parsed config.json, each checked (CheckpointError naming the field)."""
    model_type = raw.get("model_type", "bert")
    if model_type != "bert":
        raise CheckpointError(f"{path}: model_type is {jsonfile.show(model_type)}; bge_ref runs BERT encoders "
                              "only (model_type 'bert')")
    for key, (want, why) in SUPPORTED.items():
        if key in raw and raw[key] != want:
            raise CheckpointError(f"{path}: {key} is {jsonfile.show(raw[key])}, expected {want!r}: {why}")
    values = {}
    for name in BertConfig.__dataclass_fields__:
        value = raw.get(name)
        if value is None:  # absent, or null (transformers' "unset")
            if name not in DEFAULTS:
                raise CheckpointError(f"{path}: config.json lacks {name!r}")
            value = DEFAULTS[name]
        values[name] = value
    for name, limit in LIMITS.items():
        values[name] = _integer(values[name], 1, limit, name, path)
    values["pad_token_id"] = _integer(values["pad_token_id"], 0, values["vocab_size"] - 1, "pad_token_id", path,
                                      why=" (a row of the word embedding: vocab_size is "
                                          f"{values['vocab_size']})")
    eps = values["layer_norm_eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and 0 < eps <= 1):
        raise CheckpointError(f"{path}: layer_norm_eps must be a finite number in (0, 1], "
                              f"got {jsonfile.show(eps)}")
    values["layer_norm_eps"] = float(eps)
    if values["hidden_size"] % values["num_attention_heads"]:
        raise CheckpointError(f"{path}: hidden_size {values['hidden_size']} is not divisible by "
                              f"num_attention_heads {values['num_attention_heads']}")
    return values


def _integer(value, low: int, high: int, name: str, path: Path, why: str = "") -> int:
    """value, if it is a JSON integer in [low, high] (not a bool, not a float such as 24.0 or Infinity)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CheckpointError(f"{path}: {name} must be an integer from {low} to {high}{why}, "
                              f"got {jsonfile.show(value)}")
    return value
