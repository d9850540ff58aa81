"""Text to token ids, with padding and truncation under our control, by one of two backends:

- "tokenizers": the Rust library transformers uses (imported only when chosen);
- "python": bge_ref/wordpiece.py, the same BERT tokenization in pure Python, so bge_ref runs with
  NumPy alone (Pyodide, minimal containers, platforms without Rust wheels).

Both read the checkpoint's tokenizer.json and give the same ids. The padding and truncation a
tokenizer.json may carry (all-MiniLM-L6-v2's pads every text to 128 tokens) are ignored: batches are
padded to their longest text, and texts are truncated to the checkpoint's declared max length.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from .errors import BgeRefError, CheckpointError, InputError
from .wordpiece import WordPieceTokenizer, read_template

BACKENDS = ("python", "tokenizers")


def default_backend() -> str:
    """"tokenizers" when it is installed (it is a default dependency), else "python"."""
    return "tokenizers" if importlib.util.find_spec("tokenizers") is not None else "python"


class Tokenizer:
    def __init__(self, path: Path, max_length: int, pad_id: int, backend: str | None = None):
        if backend is None:
            backend = default_backend()
        if backend not in BACKENDS:
            raise InputError(f"tokenizer must be None, 'python' or 'tokenizers', got {backend!r}")
        self.backend, self.max_length, self.pad_id = backend, max_length, pad_id
        if backend == "python":
            self._python = WordPieceTokenizer.from_file(path)
            self.vocab_size = self._python.vocab_size
            spec_pre = "BertPreTokenizer"  # the only pre-tokenizer it reads
            template = self._python.template
        else:
            spec_pre, template = self._load_tokenizers(path)
        # The ids added before and after every text's pieces ([CLS] and [SEP] for BERT), for token-id
        # input; None when the post_processor is not one wordpiece.py reads.
        self.special_ids = None if template is None else (list(template.before), list(template.after))
        # BERT's pre-tokenizer splits words at whitespace and its normalizer works character by
        # character, so the tokens before a space do not depend on what follows it. That lets a long
        # text be cut to a prefix before tokenizing (see _prefix). Other tokenizers get the whole text.
        self._splits_at_spaces = spec_pre == "BertPreTokenizer"

    def _load_tokenizers(self, path: Path):
        if importlib.util.find_spec("tokenizers") is None:
            raise BgeRefError("tokenizer='tokenizers' needs the tokenizers package: pip install tokenizers "
                              "(or pass tokenizer='python' for bge_ref's own)")
        from tokenizers import Tokenizer as _HFTokenizer
        try:
            full = _HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception on a bad file
            raise CheckpointError(f"{path}: cannot load tokenizer ({e})") from None
        full.no_padding()
        full.no_truncation()
        spec = full.to_str()
        cut = _HFTokenizer.from_str(spec)
        cut.enable_truncation(self.max_length)
        self._full, self._cut = full, cut
        self.vocab_size = full.get_vocab_size(with_added_tokens=True)
        spec = json.loads(spec)
        try:
            template = read_template(spec.get("post_processor"), path)
        except (CheckpointError, KeyError, TypeError):
            template = None
        return (spec.get("pre_tokenizer") or {}).get("type"), template

    def encode(self, texts: list[str], truncate: bool = True):
        """Encodings (ids, attention_mask, type_ids, tokens) for each text."""
        if truncate and self._splits_at_spaces:
            texts = [self._prefix(t) for t in texts]
        if self.backend == "python":
            max_length = self.max_length if truncate else None
            return [self._python.encode(t, max_length) for t in texts]
        return (self._cut if truncate else self._full).encode_batch(texts)

    def count(self, text: str) -> int:
        """Tokens of a text without [CLS] and [SEP], untruncated."""
        if self.backend == "python":
            return len(self._python.piece_ids(text))
        return len(self._full.encode(text, add_special_tokens=False).ids)

    def _prefix(self, text: str) -> str:
        """The shortest space-ended prefix of `text` (growing 4x) that already fills max_length tokens.

        Tokenizing a 1 MB text only to keep its first 512 tokens costs seconds (tokenizers also builds
        the overflow pieces); a prefix that already has max_length tokens gives the same truncated ids.
        """
        n = 16 * self.max_length  # characters; a WordPiece token is rarely under 1 character
        while n < len(text):
            cut = text.rfind(" ", 0, n)
            if cut > 0 and self.count(text[:cut]) >= self.max_length:
                return text[:cut]
            n *= 4
        return text

    def pad(self, encodings) -> dict[str, np.ndarray]:
        """Right-pad a batch of encodings to its longest one: int64 arrays of shape (B, S)."""
        B, S = len(encodings), max(len(e.ids) for e in encodings)
        ids = np.full((B, S), self.pad_id, dtype=np.int64)
        mask = np.zeros((B, S), dtype=np.int64)
        types = np.zeros((B, S), dtype=np.int64)
        for i, e in enumerate(encodings):
            n = len(e.ids)
            ids[i, :n], mask[i, :n], types[i, :n] = e.ids, e.attention_mask, e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
