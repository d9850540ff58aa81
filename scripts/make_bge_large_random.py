"""Build a seeded random BertModel with bge-large-en-v1.5's exact config, as the hub would store it.

    python scripts/make_bge_large_random.py OUT_DIR [--seed 0] [--stats]

Writes config.json, model.safetensors (1.34 GB float32) and the uncased bge tokenizer files into
OUT_DIR, so that `bge_ref.load(OUT_DIR)` and `bge-ref verify --model OUT_DIR` run at full size. The
real weights are on the hub, which is unreachable here; see bge_ref/testing/checkpoints.py's BGE_LARGE_SCALES for
why the weights are scaled. --stats prints how trained-like the model behaves next to the real
all-MiniLM-L6-v2 (attention entropy, top attention probability, pre-GELU std, max |hidden|).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


STATS_TEXTS = [
    "The quick brown fox jumps over the lazy dog, again and again, until it is tired.",
    "Represent this sentence for searching relevant passages: what is a BERT encoder?",
    "Embedding models truncate long inputs. " * 8,
    "Café au lait, naïve résumé, Führer, São Paulo.",
]


def activation_stats(model, batch) -> dict:
    """How trained-like a transformers BertModel behaves on a tokenized batch, per layer, real tokens only:
    attention entropy / log(real keys) (1 = uniform), mean top attention probability, std of the
    pre-GELU activations, and max |hidden state|. Used to choose BGE_LARGE_SCALES against MiniLM."""
    import torch

    pre = []
    hooks = [l.intermediate.dense.register_forward_hook(lambda m, i, o: pre.append(o.numpy()))
             for l in model.encoder.layer]
    model.set_attn_implementation("eager")  # sdpa does not return attention probabilities
    try:
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(v) for k, v in batch.items()}, output_hidden_states=True,
                        output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
        for h in hooks:
            h.remove()
    real = batch["attention_mask"].astype(bool)                  # (B, S)
    n_keys = real.sum(1)[:, None, None]                          # (B, 1, 1)
    rows = np.broadcast_to(real[:, None, :], out.attentions[0].shape[:3])  # (B, H, S) real queries
    entropy, top = [], []
    for a in out.attentions:                                     # (B, H, S, S) per layer
        a = a.numpy()
        h = -(a * np.log(np.maximum(a, 1e-30))).sum(-1) / np.log(np.maximum(n_keys, 2))  # (B, H, S)
        entropy.append(float(h[rows].mean()))
        top.append(float(a.max(-1)[rows].mean()))
    return {"attention_entropy": entropy, "attention_top_prob": top,
            "pre_gelu_std": [float(p[real].std()) for p in pre],
            "hidden_max_abs": [float(np.abs(h.numpy()[real]).max()) for h in out.hidden_states]}


def stats_table(models: dict, batch) -> str:
    """Markdown table, one row per model: per-layer ranges and means of activation_stats."""
    lines = ["| model | attention entropy / log n (per layer) | top attention prob | pre-GELU std | max abs hidden |",
             "| --- | --- | --- | --- | --- |"]
    for name, model in models.items():
        s = activation_stats(model, batch)
        rng = lambda v: f"{min(v):.2f}-{max(v):.2f} (mean {np.mean(v):.2f})"
        lines.append(f"| {name} | {rng(s['attention_entropy'])} | {np.mean(s['attention_top_prob']):.2f} | "
                     f"{rng(s['pre_gelu_std'])} | {min(s['hidden_max_abs']):.1f}-{max(s['hidden_max_abs']):.1f} |")
    return "\n".join(lines)


def compare_stats(large_model) -> str:
    """The stats of a bge-large-size random model, an unscaled one, and the real MiniLM, on STATS_TEXTS."""
    import torch
    from transformers import BertConfig, BertModel

    import bge_ref
    from bge_ref.testing.checkpoints import BGE_LARGE_CONFIG, minilm_dir
    from bge_ref.verify import load_transformers
    batch = bge_ref.load(minilm_dir()).tokenize(STATS_TEXTS)
    torch.manual_seed(0)
    plain = BertModel(BertConfig(**BGE_LARGE_CONFIG), add_pooling_layer=False).eval()
    models = {"all-MiniLM-L6-v2 (real, 6 layers)": load_transformers(minilm_dir()),
              "bge-large size, 0.02-std init": plain,
              "bge-large size, BGE_LARGE_SCALES": large_model}
    return stats_table(models, batch)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stats", action="store_true", help="print activation statistics next to MiniLM's")
    args = p.parse_args(argv)
    from bge_ref.testing.checkpoints import make_bge_large_random
    directory, model = make_bge_large_random(args.out_dir, seed=args.seed)
    print(f"wrote {directory}")
    if args.stats:
        print(compare_stats(model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
