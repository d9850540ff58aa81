"""The checkpoint files a job's identity hashes: the driver and every Ray actor check the same bytes."""
from __future__ import annotations

import hashlib
from pathlib import Path

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def sha256_files(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode() + b"\0")
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def model_sha256(directory: Path) -> str:
    return sha256_files(Path(directory) / n for n in MODEL_FILES)
