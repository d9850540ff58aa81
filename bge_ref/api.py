"""The hosted APIs' request schemas: Workers AI's `run` and OpenAI's /v1/embeddings.

Parsing turns a request body into rows to embed and checks every field with pure Python (the
server parses on its event loop, which never runs NumPy); each error is an `InputError` naming the
field or text, with `.param` set to the field. Formatting turns vectors back into the response body.
`Embedder.run` and `Embedder.openai_embeddings` are `run` and `openai_embeddings` below; the server
(server.py) calls the same parse and format functions around its own batching.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .errors import InputError

API_MAX_TEXTS = 100  # the hosted API's limit on strings per request
OPENAI_MAX_INPUTS = 2048  # OpenAI's limit on inputs per /v1/embeddings request
RUN_POOLINGS = ("mean", "cls")
OPENAI_FIELDS = ("input", "model", "encoding_format", "dimensions", "user")


class UnknownModel(InputError):
    """A model name the server does not serve (HTTP 404, OpenAI's `model_not_found`)."""


def bad(param: str, message: str, kind=InputError):
    """An InputError that also carries the offending field, for OpenAI's error `param`."""
    err = kind(message)
    err.param = param
    return err


class Tokens(NamedTuple):
    """Token ids given by the client, shaped like a tokenizers Encoding for Tokenizer.pad."""
    ids: list
    attention_mask: list
    type_ids: list


@dataclass
class Group:
    """Texts (or token-id lists) embedded together and answered as one unit of the response."""
    items: list             # str, or list[int] without [CLS]/[SEP]
    pooling: str
    where: str              # the field holding items, for errors: "text", "requests[1].text", "input"


@dataclass
class Parsed:
    groups: list[Group]
    batched: bool = False   # run(): {"requests": [...]} answers {"responses": [...]}
    model: str | None = None
    encoding_format: str = "float"
    extra: dict = field(default_factory=dict)


# -- Workers AI: {"text": str | [str], "pooling": ...} ----------------------------------------------
def parse_run(inputs) -> Parsed:
    """The hosted API's input: {"text": ..., "pooling": "mean" | "cls"} or {"requests": [...]}."""
    if not isinstance(inputs, dict):
        raise bad("", f"inputs must be a JSON object (dict), got {type(inputs).__name__}")
    if "requests" not in inputs:
        return Parsed([_run_group(inputs, "inputs")])
    if set(inputs) != {"requests"}:
        raise bad("requests", f"'requests' cannot be combined with {sorted(set(inputs) - {'requests'})}")
    reqs = inputs["requests"]
    if not isinstance(reqs, list) or not reqs:
        raise bad("requests", "'requests' must be a non-empty list of {\"text\": ...} objects")
    groups, total = [], 0
    for i, r in enumerate(reqs[:API_MAX_TEXTS + 1]):  # each entry holds a text at least: stop early
        groups.append(_run_group(r, f"requests[{i}]"))
        total += len(groups[-1].items)
        if total > API_MAX_TEXTS:
            raise bad("requests", f"requests: more than {API_MAX_TEXTS} texts in all (in {len(reqs)} entries); "
                                  f"a request holds at most {API_MAX_TEXTS} texts, its 'requests' included")
    return Parsed(groups, batched=True)


def _run_group(r, where) -> Group:
    if not isinstance(r, dict):
        raise bad(where, f"{where} must be an object, got {type(r).__name__}")
    unknown = sorted(set(r) - {"text", "pooling"})
    if unknown:
        raise bad(where, f"{where}: unknown field(s) {unknown}; allowed: 'text', 'pooling'")
    if "text" not in r:
        raise bad(f"{where}.text", f"{where}: 'text' is required")
    texts = as_texts(r["text"], f"{where}.text")
    if not texts or len(texts) > API_MAX_TEXTS:
        raise bad(f"{where}.text", f"{where}.text: between 1 and {API_MAX_TEXTS} strings allowed, got {len(texts)}")
    for i, t in enumerate(texts):
        if len(t) < 1:
            raise bad(f"{where}.text", f"{where}.text[{i}]: empty string; each text needs at least 1 character")
    pooling = r.get("pooling", "mean")
    if pooling not in RUN_POOLINGS:
        raise bad(f"{where}.pooling", f"{where}.pooling must be 'mean' or 'cls', got {pooling!r}")
    return Group(texts, pooling, f"{where}.text")


def run_result(parsed: Parsed, vectors: list[np.ndarray]) -> dict:
    """The hosted API's output for each group's (n, D) vectors."""
    out = [{"shape": list(v.shape), "data": v.tolist(), "pooling": g.pooling} for g, v in zip(parsed.groups, vectors)]
    return {"responses": out} if parsed.batched else out[0]


def run(model, inputs: dict) -> dict:
    """The hosted API: {"text": str | [str], "pooling": "mean" | "cls"} ->
    {"shape": [n, D], "data": [[...]], "pooling": ...}; {"requests": [...]} -> {"responses": [...]}.
    pooling defaults to "mean" as that API documents; vectors are L2-normalized."""
    parsed = parse_run(inputs)
    return run_result(parsed, [model.encode(g.items, pooling=g.pooling, normalize=True) for g in parsed.groups])


# -- OpenAI: {"input": str | [str] | [int] | [[int]], ...} ------------------------------------------
def parse_openai(body, *, pooling: str, hidden_size: int, vocab_size: int, served=None,
                 unused_ids=frozenset()) -> Parsed:
    """OpenAI's embeddings request. `served` lists the model names accepted (None: any); a missing
    `model` means the first of them. Token ids must lie in [0, vocab_size) and be none of
    `unused_ids` (the vocabulary's [unusedN] tokens, which its tokenizer never produces)."""
    if not isinstance(body, dict):
        raise bad("", f"the body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")  # checked first: an unknown model is a 404 whatever else is wrong
    if model is not None and not isinstance(model, str):
        raise bad("model", f"model must be a str, got {type(model).__name__}")
    if served is not None:
        if model is None:
            model = served[0]
        elif model not in served:
            raise bad("model", f"model {model!r} does not exist; this server serves {served}", UnknownModel)
    unknown = sorted(set(body) - set(OPENAI_FIELDS))
    if unknown:
        raise bad(unknown[0], f"unknown field(s) {unknown}; allowed: {', '.join(repr(f) for f in OPENAI_FIELDS)}")
    if "input" not in body:
        raise bad("input", "input is required: a str, a list of str, a list of token ids or a list of such lists")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise bad("encoding_format", f"encoding_format must be 'float' or 'base64', got {fmt!r}")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or dims != hidden_size):
        raise bad("dimensions", f"dimensions must be absent or {hidden_size} (the model's hidden size; it is not "
                                f"trained for shorter vectors), got {dims!r}")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad("user", f"user must be a str, got {type(user).__name__}")
    items = _openai_inputs(body["input"], vocab_size, unused_ids)
    return Parsed([Group(items, pooling, "input")], model=model, encoding_format=fmt)


def _openai_inputs(x, vocab_size, unused_ids=frozenset()) -> list:
    """str | [str] | [int] | [[int]] -> a list of str, or a list of token-id lists."""
    if isinstance(x, str):
        x = [x]
    elif not isinstance(x, list):
        raise bad("input", f"input must be a str, a list of str, a list of token ids or a list of such lists, "
                           f"got {type(x).__name__}")
    if not x:
        raise bad("input", "input is an empty list; give at least one input")
    single = _is_int(x[0])
    if single:
        x = [x]  # one token-id input
    if len(x) > OPENAI_MAX_INPUTS:
        raise bad("input", f"input: at most {OPENAI_MAX_INPUTS} inputs per request, got {len(x)}")
    if isinstance(x[0], str):
        texts = as_texts(x, "input")
        for i, t in enumerate(texts):
            if not t:
                raise bad("input", f"input[{i}]: empty string; each input needs at least 1 character")
        return texts
    for i, ids in enumerate(x):
        where = "input" if single else f"input[{i}]"
        if not isinstance(ids, list):
            raise bad("input", f"{where} is a {type(ids).__name__}; every input must be a str, "
                               "or every one a list of token ids")
        if not ids:
            raise bad("input", f"{where}: empty list of token ids")
        for j, t in enumerate(ids):
            if not _is_int(t):
                raise bad("input", f"{where}[{j}] is a {type(t).__name__}, not a token id (int)")
            if not 0 <= t < vocab_size:
                raise bad("input", f"{where}[{j}]: token id {t} is out of range [0, {vocab_size})")
            if t in unused_ids:
                raise bad("input", f"{where}[{j}]: token id {t} is an [unused] token, which this model's tokenizer "
                                   "never produces: these look like another tokenizer's ids (OpenAI's tiktoken, "
                                   "say). Send the texts instead; LangChain's OpenAIEmbeddings sends tiktoken ids "
                                   "unless given check_embedding_ctx_length=False")
    return [list(ids) for ids in x]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def openai_result(parsed: Parsed, vectors: np.ndarray, tokens: int) -> dict:
    """OpenAI's response: float lists, or base64 of the little-endian float32 bytes."""
    if parsed.encoding_format == "base64":
        enc = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii") for v in vectors]
    else:
        enc = vectors.tolist()
    return {"object": "list", "model": parsed.model,
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(enc)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def openai_embeddings(model, body: dict) -> dict:
    """The OpenAI-compatible /v1/embeddings: {"input": str | [str] | [int] | [[int]], "model": ...}.
    Any model name is accepted here (the server checks its served names); usage counts the tokens
    embedded, [CLS] and [SEP] included, after truncation."""
    parsed = parse_openai(body, pooling=model.pooling, hidden_size=model.config.hidden_size,
                          vocab_size=model.config.vocab_size)
    if parsed.model is None:
        parsed.model = model.name
    rows = tokenize(model, parsed.groups[0])
    if isinstance(parsed.groups[0].items[0], str):
        vectors = model.encode(parsed.groups[0].items, normalize=True)
    else:
        vectors = embed_sorted(model, rows, parsed.groups[0].pooling)
    return openai_result(parsed, vectors, sum(len(r.ids) for r in rows))


# -- shared by the Python methods and the server ----------------------------------------------------
def as_texts(texts, what="texts") -> list[str]:
    """A str or list of str, checked: each item a str of valid Unicode (names the index at fault)."""
    if isinstance(texts, str):
        items = [texts]
    elif isinstance(texts, (list, tuple)):
        items = list(texts)
    elif isinstance(texts, np.ndarray) and texts.ndim == 1 and texts.dtype.kind == "U":
        items = texts.tolist()
    else:
        raise bad(what, f"{what} must be a str or a list of str, got {type(texts).__name__}")
    for i, t in enumerate(items):
        if not isinstance(t, str):
            hint = " (decode bytes to str first)" if isinstance(t, (bytes, bytearray)) else ""
            raise bad(what, f"{what}[{i}] is a {type(t).__name__}, not a str{hint}")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise bad(what, f"{what}[{i}] is not valid Unicode: {e.reason} at character {e.start}") from None
    return items


def tokenize(model, group: Group, truncate=True) -> list:
    """A group's rows as encodings with [CLS] and [SEP], cut to the model's max length (or an
    InputError naming the input with truncate=False). Token-id inputs get [CLS]/[SEP] added here."""
    if isinstance(group.items[0], str):
        rows = model.tokenizer.encode(group.items, truncate=truncate)
    else:
        cls, sep = model.tokenizer.encode([""])[0].ids  # the special ids, as the tokenizer adds them
        keep = model.max_length - 2 if truncate else None
        rows = [[cls, *ids[:keep], sep] for ids in group.items]
        rows = [Tokens(r, [1] * len(r), [0] * len(r)) for r in rows]
    if not truncate:
        for i, r in enumerate(rows):
            if len(r.ids) > model.max_length:
                raise bad(group.where, f"{group.where}[{i}] has {len(r.ids)} tokens, more than the model's "
                                       f"{model.max_length}; shorten it (this server does not truncate)")
    return rows


def embed_batch(model, rows, poolings) -> np.ndarray:
    """One padded forward over encodings: (B, D) L2-normalized vectors, each row pooled its own way."""
    from .embedder import l2_normalize
    batch = model.tokenizer.pad(rows)
    hidden = model.forward(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # (B, S, D)
    out = np.empty((len(rows), hidden.shape[-1]), dtype=hidden.dtype)                          # (B, D)
    for pooling in set(poolings):
        idx = [i for i, p in enumerate(poolings) if p == pooling]
        out[idx] = model.pool(hidden[idx], batch["attention_mask"][idx], pooling)
    return l2_normalize(out)


def embed_sorted(model, rows, pooling, batch_size=32) -> np.ndarray:
    """Encodings embedded as encode() embeds texts: sorted by length into batches, back in order."""
    out = np.empty((len(rows), model.config.hidden_size), dtype=model.dtype)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        out[idx] = embed_batch(model, [rows[i] for i in idx], [pooling] * len(idx))
    return out
