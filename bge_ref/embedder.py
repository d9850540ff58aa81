"""The public API: load a checkpoint, turn texts into embeddings (the hosted APIs' schemas are in api.py)."""
from __future__ import annotations

import numpy as np

from . import api, fast, hub, st_config
from . import model as reference
from .checkpoint import load_params
from .config import BertConfig
from .errors import CheckpointError, InputError
from .tokenizer import Tokenizer

QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
POOLINGS = ("cls", "mean")
TOKENIZE_CHUNK = 2048  # texts tokenized (and length-sorted) together by encode()
FORWARDS = {"fast": fast.bert, "reference": reference.bert}  # two forward paths, one function (tests/test_fast.py)


def _check_forward(forward):
    if not isinstance(forward, str) or forward not in FORWARDS:
        raise InputError(f"forward must be one of {tuple(FORWARDS)}, got {forward!r}")
    return forward


def load(model=None, *, dtype="float32", revision=None, weights_dtype=None, forward="fast", tokenizer=None) -> "Embedder":
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


def l2_normalize(v):
    """Rows scaled to unit L2 norm, as torch's F.normalize (eps 1e-12, so a zero row stays zero).
    Computed in float64 and rounded once: one vector per text, so it costs nothing."""
    v64 = np.asarray(v, np.float64)
    return (v64 / np.maximum(np.linalg.norm(v64, axis=-1, keepdims=True), 1e-12)).astype(v.dtype, copy=False)


def _as_texts(texts, what="texts") -> tuple[list[str], bool]:
    """Check the texts argument: (list of str, whether a single str was given)."""
    return api.as_texts(texts, what), isinstance(texts, str)


class Embedder:
    """A loaded checkpoint. Create it with `bge_ref.load`."""

    def __init__(self, config: BertConfig, params: dict, tokenizer: Tokenizer, *, pooling="cls",
                 normalize=True, name="", forward="fast"):
        self.config, self.params, self.tokenizer = config, params, tokenizer
        self.forward_path = _check_forward(forward)
        self.pooling, self.normalize, self.name = pooling, normalize, name
        self.dtype = params["embeddings"]["word"].dtype

    @property
    def max_length(self) -> int:
        """Longest token sequence (with [CLS] and [SEP]) the checkpoint declares; longer texts are cut."""
        return self.tokenizer.max_length

    def __repr__(self):
        c = self.config
        return (f"Embedder({self.name!r}, layers={c.num_hidden_layers}, hidden={c.hidden_size}, "
                f"pooling={self.pooling!r}, normalize={self.normalize}, max_length={self.max_length}, "
                f"dtype={self.dtype}, forward={self.forward_path!r})")

    # -- tokens ------------------------------------------------------------------------------------
    def tokenize(self, texts, *, truncate=True) -> dict[str, np.ndarray]:
        """input_ids, attention_mask, token_type_ids: int64 arrays (B, S), padded to the longest text."""
        items, _ = _as_texts(texts)
        if not items:
            raise InputError("texts is empty; give at least one text")
        return self.tokenizer.pad(self._encode(items, truncate))

    def count_tokens(self, texts) -> list[int]:
        """Tokens per text including [CLS] and [SEP], before truncation."""
        items, _ = _as_texts(texts)
        return [len(e.ids) for e in self.tokenizer.encode(items, truncate=False)]

    def _encode(self, items, truncate, first_index=0):
        encodings = self.tokenizer.encode(items, truncate=truncate)
        if not truncate:
            for i, e in enumerate(encodings):
                if len(e.ids) > self.max_length:
                    raise InputError(f"texts[{first_index + i}] has {len(e.ids)} tokens, more than the model's {self.max_length}; "
                                     "shorten it or pass truncate=True")
        return encodings

    # -- the model ---------------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask, token_type_ids=None, *, output_hidden_states=False, cls_only=False):
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
    def pool(self, hidden, attention_mask, pooling):
        """(B, S, D) hidden states -> (B, D): the [CLS] vector, or the mean over real tokens."""
        if pooling == "cls":
            return hidden[:, 0]                                               # (B, D)
        # Each text's real tokens summed in float64 and rounded once (a float32 sum over 512 tokens
        # rounds 512 times); an all-padding row gives zeros, as sentence-transformers' clamp does.
        real = np.asarray(attention_mask).astype(bool)                        # (B, S)
        mean = np.stack([h[r].sum(axis=0, dtype=np.float64) / max(int(r.sum()), 1) for h, r in zip(hidden, real)])
        return mean.astype(hidden.dtype, copy=False)                          # (B, D)

    def encode(self, texts, *, pooling=None, normalize=None, batch_size=32, prompt=None, truncate=True):
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
            encodings = self._encode(items[lo:lo + chunk], truncate, first_index=lo)
            order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                batch = self.tokenizer.pad([encodings[i] for i in idx])
                hidden = self.forward(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                      cls_only=pooling == "cls")
                pooled = self.pool(hidden, batch["attention_mask"], pooling)  # (b, D)
                out[[lo + i for i in idx]] = l2_normalize(pooled) if normalize else pooled  # row by row: per batch
        return out[0] if single else out

    def encode_stream(self, texts, *, batch_size=32, window=TOKENIZE_CHUNK, **kw):
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

    def encode_queries(self, texts, **kw):
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
