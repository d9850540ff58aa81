"""BertConfig: the sizes of one checkpoint, read from its config.json, and nothing hard-coded."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError


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

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        """Read config.json, refusing what this encoder cannot compute exactly."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: config.json not found; a checkpoint directory needs one") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: cannot read config.json as JSON ({e})") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path}: config.json must hold a JSON object")
        model_type = raw.get("model_type", "bert")
        if model_type != "bert":
            raise CheckpointError(f"{path}: model_type is {model_type!r}; bge_ref runs BERT encoders only (model_type 'bert')")
        checks = {
            "hidden_act": ("gelu", "bge_ref implements the exact erf GELU only"),
            "position_embedding_type": ("absolute", "relative position embeddings are not implemented"),
            "is_decoder": (False, "decoders (causal attention, cross-attention) are not implemented"),
            "add_cross_attention": (False, "cross-attention is not implemented"),
        }
        for key, (want, why) in checks.items():
            if key in raw and raw[key] != want:
                raise CheckpointError(f"{path}: {key} is {raw[key]!r}, expected {want!r}: {why}")
        values = {}
        for name, field in cls.__dataclass_fields__.items():
            if name not in raw:
                if name in ("pad_token_id", "layer_norm_eps", "type_vocab_size"):
                    continue  # BERT's own defaults apply
                raise CheckpointError(f"{path}: config.json lacks {name!r}")
            value = raw[name]
            kind = float if name == "layer_norm_eps" else int
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                raise CheckpointError(f"{path}: {name} must be a number, got {value!r}")
            values[name] = kind(value)
        config = cls(**values)
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if getattr(config, name) <= 0:
                raise CheckpointError(f"{path}: {name} must be positive, got {getattr(config, name)}")
        if config.hidden_size % config.num_attention_heads:
            raise CheckpointError(f"{path}: hidden_size {config.hidden_size} is not divisible by "
                                  f"num_attention_heads {config.num_attention_heads}")
        return config
