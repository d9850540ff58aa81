"""WordPiece tokenization with `tokenizers`, with padding and truncation under our control.

A checkpoint's tokenizer.json may carry its own padding and truncation (all-MiniLM-L6-v2's pads every
text to 128 tokens). Both are switched off here: batches are padded to their longest text, and
texts are truncated to the checkpoint's declared max sequence length.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer

from .errors import CheckpointError


class Tokenizer:
    def __init__(self, path: Path, max_length: int, pad_id: int):
        try:
            full = _HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception on a bad file
            raise CheckpointError(f"{path}: cannot load tokenizer ({e})") from None
        full.no_padding()
        full.no_truncation()
        spec = full.to_str()
        cut = _HFTokenizer.from_str(spec)
        cut.enable_truncation(max_length)
        self._full, self._cut = full, cut
        self.max_length, self.pad_id = max_length, pad_id
        self.vocab_size = full.get_vocab_size(with_added_tokens=True)
        # BERT's pre-tokenizer splits words at whitespace and its normalizer works character by
        # character, so the tokens before a space do not depend on what follows it. That lets a long
        # text be cut to a prefix before tokenizing (see _prefix). Other tokenizers get the whole text.
        pre = json.loads(spec).get("pre_tokenizer") or {}
        self._splits_at_spaces = pre.get("type") == "BertPreTokenizer"

    def encode(self, texts: list[str], truncate: bool = True):
        """tokenizers Encodings (ids, attention_mask, type_ids) for each text."""
        if not truncate:
            return self._full.encode_batch(texts)
        if self._splits_at_spaces:
            texts = [self._prefix(t) for t in texts]
        return self._cut.encode_batch(texts)

    def _prefix(self, text: str) -> str:
        """The shortest space-ended prefix of `text` (growing 4x) that already fills max_length tokens.

        Tokenizing a 1 MB text only to keep its first 512 tokens costs seconds (tokenizers also builds
        the overflow pieces); a prefix that already has max_length tokens gives the same truncated ids.
        """
        n = 16 * self.max_length  # characters; a WordPiece token is rarely under 1 character
        while n < len(text):
            cut = text.rfind(" ", 0, n)
            if cut > 0 and len(self._full.encode(text[:cut], add_special_tokens=False).ids) >= self.max_length:
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
