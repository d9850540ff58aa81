"""The public API: load a checkpoint, turn texts into embeddings (the hosted APIs' schemas are in api.py)."""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from numpy.typing import ArrayLike

from . import api, fast, hub, st_config
from . import model as reference
from .batching import embed_rows, pad
from .checkpoint import load_params
from .config import BertConfig
from .errors import CheckpointError, InputError
from .pooling import POOLINGS, pool
from .tokenizer import Tokenizer

QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
TOKENIZE_CHUNK = 2048  # texts tokenized (and length-sorted) together by encode()
BATCH_SIZE = 32  # encode()'s texts per forward: bigger batches compute slower per token on CPU
FORWARDS = {"fast": fast.bert, "reference": reference.bert}  # two forward paths, one function (tests/test_fast.py)


def _check_forward(forward):
    if not isinstance(forward, str) or forward not in FORWARDS:
        raise InputError(f"forward must be one of {tuple(FORWARDS)}, got {forward!r}")
    return forward


def load(model: str | os.PathLike | None = None, *, dtype: str = "float32", revision: str | None = None,
         weights_dtype: str | None = None, forward: str = "fast", tokenizer: str | None = None) -> Embedder:
    """Load a BERT embedding checkpoint: a local directory or a hub repo id.

    `model` defaults to $BGE_REF_MODEL, else BAAI/bge-large-en-v1.5. `dtype` is the compute dtype:
    "float32" (default) or "float64" (every operation in float64: the oracle for verification).
    `weights_dtype="float16"` stores the weight matrices in float16 (about half the memory) while
    still computing in float32; None (default) stores them in `dtype`. `forward` picks the forward
    pass: "fast" (default, bge_ref/fast.py) or "reference" (the textbook bge_ref/model.py).
    `tokenizer`: "tokenizers" (the Rust library), "python" (bge_ref/wordpiece.py, same ids, needs only
    the standard library) or None (default): "tokenizers" when it is installed, else "python".
    """
    _check_forward(forward)
    if str(dtype) not in ("float32", "float64"):
        raise InputError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    allowed = (str(dtype), "float16") if str(dtype) == "float32" else (str(dtype),)
    if weights_dtype is not None and str(weights_dtype) not in allowed:
        raise InputError(f"weights_dtype must be None or one of {allowed} with dtype={str(dtype)!r} "
                         f"(float16 storage needs float32 compute), got {weights_dtype!r}")
    directory = hub.resolve(model, revision)
    config = BertConfig.from_json(directory / "config.json")
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{weights}: not found; bge_ref reads safetensors weights only")
    if not (directory / "tokenizer.json").is_file():
        raise CheckpointError(f"{directory / 'tokenizer.json'}: not found; bge_ref needs the fast tokenizer file")
    max_length = st_config.max_seq_length(directory, config.max_position_embeddings)
    tokenizer = Tokenizer(directory / "tokenizer.json", max_length, config.pad_token_id, backend=tokenizer)
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(f"{directory / 'tokenizer.json'}: tokenizer has {tokenizer.vocab_size} tokens but the "
                              f"word embedding has {config.vocab_size} rows; tokenizer and weights do not match")
    pooling, normalize = st_config.sentence_transformers_defaults(directory)
    params = load_params(weights, config, np.dtype(str(dtype)), weights_dtype)
    return Embedder(config, params, tokenizer, pooling=pooling, normalize=normalize, name=str(directory),
                    forward=forward)


def _as_texts(texts, what="texts") -> tuple[list[str], bool]:
    """Check the texts argument: (list of str, whether a single str was given)."""
    return api.as_texts(texts, what), isinstance(texts, str)


def _preview(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


class Embedder:
    """A loaded checkpoint. Create it with `bge_ref.load`."""

    def __init__(self, config: BertConfig, params: dict, tokenizer: Tokenizer, *, pooling: str = "cls",
                 normalize: bool = True, name: str = "", forward: str = "fast"):
        self.config, self.params, self.tokenizer = config, params, tokenizer
        self.forward_path = _check_forward(forward)
        self.pooling, self.normalize, self.name = pooling, normalize, name
        self.dtype = params["embeddings"]["word"].dtype

    @property
    def max_length(self) -> int:
        """Longest token sequence (with [CLS] and [SEP]) the checkpoint declares; longer texts are cut."""
        return self.tokenizer.max_length

    def __repr__(self) -> str:
        c = self.config
        return (f"Embedder({self.name!r}, layers={c.num_hidden_layers}, hidden={c.hidden_size}, "
                f"pooling={self.pooling!r}, normalize={self.normalize}, max_length={self.max_length}, "
                f"dtype={self.dtype}, forward={self.forward_path!r})")

    # -- tokens ------------------------------------------------------------------------------------
    def tokenize(self, texts: str | Sequence[str], *, truncate: bool = True) -> dict[str, np.ndarray]:
        """input_ids, attention_mask, token_type_ids: int64 arrays (B, S), padded to the longest text."""
        items, _ = _as_texts(texts)
        if not items:
            raise InputError("texts is empty; give at least one text")
        return pad(self.token_ids(items, truncate=truncate), self.config.pad_token_id)

    def count_tokens(self, texts: str | Sequence[str]) -> list[int]:
        """Tokens per text including [CLS] and [SEP], before truncation."""
        items, _ = _as_texts(texts)
        return [len(e.ids) for e in self.tokenizer.encode(items, truncate=False)]

    def token_ids(self, texts: Sequence[str], *, truncate: bool = True, where: str = "texts",
                  first_index: int = 0) -> list[list[int]]:
        """Each text's token ids with [CLS] and [SEP], cut to max_length; with truncate=False a longer
        text is an InputError naming it as where[first_index + i]."""
        return self._check_lengths([e.ids for e in self.tokenizer.encode(list(texts), truncate=truncate)],
                                   truncate, where, first_index)

    def with_special_tokens(self, id_lists: Sequence[Sequence[int]], *, truncate: bool = True,
                            where: str = "input") -> list[list[int]]:
        """Token ids given without special tokens (as `tokenizers` gives them with
        add_special_tokens=False) with [CLS] and [SEP] added, the ids cut as the tokenizer cuts a text."""
        if self.tokenizer.special_ids is None:
            raise InputError(f"{where}: token-id input needs the tokenizer's special tokens, but this "
                             "tokenizer.json's post_processor is not one bge_ref reads; send text")
        before, after = self.tokenizer.special_ids
        keep = self.max_length - len(before) - len(after) if truncate else None
        rows = [[*before, *list(ids)[:keep], *after] for ids in id_lists]
        return self._check_lengths(rows, truncate, where, 0)

    def _check_lengths(self, rows, truncate, where, first_index):
        if not truncate:
            for i, r in enumerate(rows):
                if len(r) > self.max_length:
                    raise InputError(f"{where}[{first_index + i}] has {len(r)} tokens, more than the model's "
                                     f"{self.max_length}; shorten it, or let it be truncated")
        return rows

    # -- the model ---------------------------------------------------------------------------------
    def forward(self, input_ids: ArrayLike, attention_mask: ArrayLike, token_type_ids: ArrayLike | None = None, *,
                output_hidden_states: bool = False,
                cls_only: bool = False) -> np.ndarray | tuple[np.ndarray, list[np.ndarray]]:
        """Run the encoder on token ids (B, S): the last hidden state (B, S, D), and with
        output_hidden_states=True also the L+1 hidden states (embeddings, then each layer).
        cls_only=True may return the [CLS] rows alone, (B, 1, D) (the fast path's last layer then
        computes only them: fast.bert)."""
        input_ids = self._ids("input_ids", input_ids, self.config.vocab_size)
        attention_mask = self._ids("attention_mask", attention_mask, 2, like=input_ids)
        if token_type_ids is None:
            token_type_ids = np.zeros_like(input_ids)
        token_type_ids = self._ids("token_type_ids", token_type_ids, self.config.type_vocab_size, like=input_ids)
        if not attention_mask[:, 0].all():
            raise InputError("attention_mask: every sequence needs its first token ([CLS]) unmasked; "
                             "bge_ref expects right padding")
        kw = {"cls_only": True} if cls_only and self.forward_path == "fast" and not output_hidden_states else {}
        last, states = FORWARDS[self.forward_path](input_ids, attention_mask, token_type_ids, self.params,
                                                   self.config, output_hidden_states, **kw)
        return (last, states) if output_hidden_states else last

    def sequence_groups(self, attention_mask: np.ndarray) -> list[slice]:
        """The batch's sequences as the fast forward shares them between the cores (each core every
        layer on its own group: fast.sequence_groups), or [] where it shares each layer instead, and
        for the reference forward. forward() on a group alone gives its rows the same bits."""
        return fast.sequence_groups(attention_mask, self.params) if self.forward_path == "fast" else []

    def _ids(self, name, a, upper, like=None):
        try:
            a = np.asarray(a)
        except Exception as e:
            raise InputError(f"{name}: cannot be read as an integer array ({e})") from None
        if a.dtype.kind not in "iub" or a.ndim != 2 or a.size == 0:
            raise InputError(f"{name}: expected a non-empty 2-D integer array (batch, seq), got {a.dtype} {a.shape}")
        if like is not None and a.shape != like.shape:
            raise InputError(f"{name}: shape {a.shape} differs from input_ids' {like.shape}")
        if a.shape[1] > self.config.max_position_embeddings:
            raise InputError(f"{name}: {a.shape[1]} tokens, more than the {self.config.max_position_embeddings} "
                             "positions the model has")
        if a.min() < 0 or a.max() >= upper:
            raise InputError(f"{name}: values must lie in [0, {upper}), found {a.min()}..{a.max()}")
        return a.astype(np.int64, copy=False)

    # -- embeddings --------------------------------------------------------------------------------
    def pool(self, hidden: np.ndarray, attention_mask: np.ndarray, pooling: str) -> np.ndarray:
        """(B, S, D) hidden states -> (B, D): the [CLS] vector, or the mean over real tokens."""
        return pool(hidden, attention_mask, pooling)

    def encode(self, texts: str | Sequence[str], *, pooling: str | None = None, normalize: bool | None = None,
               batch_size: int = BATCH_SIZE, prompt: str | None = None, truncate: bool = True) -> np.ndarray:
        """Embed texts: a list gives (n, D), a single str gives (D,).

        pooling ("cls" or "mean") and normalize default to the checkpoint's sentence-transformers
        modules (bge: cls + normalize). Texts are sorted by length into batches of `batch_size`, so
        little padding is computed, and returned in input order. `prompt` is prepended to every text.
        Texts longer than max_length tokens are truncated, or rejected with truncate=False.
        """
        items, single = _as_texts(texts)
        pooling = self.pooling if pooling is None else pooling
        if pooling not in POOLINGS:
            raise InputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        normalize = self.normalize if normalize is None else normalize
        if not isinstance(normalize, (bool, np.bool_)):
            raise InputError(f"normalize must be True or False, got {normalize!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
        if prompt is not None:
            if not isinstance(prompt, str):
                raise InputError(f"prompt must be a str, got {type(prompt).__name__}")
            items = [prompt + t for t in items]
        out = np.empty((len(items), self.config.hidden_size), dtype=self.dtype)
        # Tokenize a chunk at a time, so 100,000 texts never hold 100,000 encodings at once.
        chunk = max(batch_size, TOKENIZE_CHUNK)
        for lo in range(0, len(items), chunk):
            rows = self.token_ids(items[lo:lo + chunk], truncate=truncate, first_index=lo)
            out[lo:lo + len(rows)] = embed_rows(self, rows, pooling, normalize=normalize, max_batch_size=batch_size,
                                                name=lambda i, lo=lo: f"texts[{lo + i}] {_preview(items[lo + i])}")
        return out[0] if single else out

    def encode_stream(self, texts: Iterable[str], *, batch_size: int = BATCH_SIZE, window: int = TOKENIZE_CHUNK,
                      **kw) -> Iterator[np.ndarray]:
        """Embed an iterable of texts of any length without holding it all: yields (n_i, D) arrays,
        in input order, one per `window` texts read (at least batch_size). Other keywords (pooling,
        normalize, prompt, truncate) are encode's. With the default window the batches are formed as
        encode forms them, so the rows equal encode(list(texts)) bit for bit; else within 1e-6."""
        from itertools import islice
        if isinstance(texts, (str, bytes)):
            raise InputError("encode_stream needs an iterable of texts, not a single str; use encode() for one text")
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
            raise InputError(f"window must be a positive int, got {window!r}")
        it, size, lo = iter(texts), max(window, batch_size if isinstance(batch_size, int) else 1), 0
        while items := list(islice(it, size)):
            try:
                yield self.encode(items, batch_size=batch_size, **kw)
            except InputError as e:  # encode names a text by its place in this window
                raise InputError(f"in texts[{lo}:{lo + len(items)}]: {e}") from None
            lo += len(items)

    def encode_queries(self, texts: str | Sequence[str], **kw) -> np.ndarray:
        """encode() with bge's retrieval instruction prepended, for short queries against passages."""
        kw.setdefault("prompt", QUERY_INSTRUCTION)
        return self.encode(texts, **kw)

    # -- the hosted APIs (schemas in api.py) ------------------------------------------------------
    def run(self, inputs: dict) -> dict:
        """The hosted API: {"text": str | [str], "pooling": "mean" | "cls"} ->
        {"shape": [n, D], "data": [[...]], "pooling": ...}; {"requests": [...]} -> {"responses": [...]}.
        pooling defaults to "mean" as that API documents; vectors are L2-normalized."""
        return api.run(self, inputs)

    def openai_embeddings(self, body: dict) -> dict:
        """The OpenAI-compatible /v1/embeddings: {"input": str | [str] | [int] | [[int]], "model": ...,
        "encoding_format": "float" | "base64", "dimensions": D} -> {"data": [...], "usage": ...}."""
        return api.openai_embeddings(self, body)
