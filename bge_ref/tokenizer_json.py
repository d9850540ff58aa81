"""Reading a checkpoint's tokenizer.json for bge_ref/wordpiece.py: the vocabulary, the normalizer's
flags, the added tokens and the [CLS] ... [SEP] template, every id checked. What wordpiece.py does not
implement, and any malformed or out-of-range field, is a CheckpointError naming the file and the field."""
from __future__ import annotations

from pathlib import Path

from . import jsonfile
from .config import MAX_VOCAB_SIZE
from .errors import CheckpointError
from .wordpiece import AddedToken, Template, WordPieceTokenizer


def wordpiece_tokenizer(path, spec: dict | None = None) -> WordPieceTokenizer:
    """The Python tokenizer of tokenizer.json at `path` (`spec`: the file already parsed)."""
    path = Path(path)
    if spec is None:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"{path}: cannot load tokenizer ({e.strerror or e})") from None
        spec = jsonfile.parse(data, path, "cannot load tokenizer")
    try:
        return WordPieceTokenizer(**read_spec(spec, path))
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
        raise CheckpointError(f"{path}: cannot load tokenizer (malformed: {type(e).__name__} "
                              f"{jsonfile.show(e.args[0]) if e.args else ''})") from None


def read_spec(spec: dict, path: Path) -> dict:
    """WordPieceTokenizer's arguments from a parsed tokenizer.json; CheckpointError for what it lacks."""
    model = spec.get("model") or {}
    kind = model.get("type", "WordPiece" if "continuing_subword_prefix" in model else None)
    if kind != "WordPiece":
        _unsupported(path, f"model.type {jsonfile.show(kind)}", "WordPiece models")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise CheckpointError(f"{path}: model.vocab must map tokens to integer ids")
    check_token_ids(spec, path)
    unk = model.get("unk_token", "[UNK]")
    if not isinstance(unk, str) or unk not in vocab:
        raise CheckpointError(f"{path}: model.unk_token {jsonfile.show(unk)} is not in model.vocab")
    prefix, longest = model.get("continuing_subword_prefix", "##"), model.get("max_input_chars_per_word", 100)
    if not isinstance(prefix, str):
        raise CheckpointError(f"{path}: model.continuing_subword_prefix must be a string, got {jsonfile.show(prefix)}")
    if type(longest) is not int or longest < 1:
        raise CheckpointError(f"{path}: model.max_input_chars_per_word must be a positive integer, "
                              f"got {jsonfile.show(longest)}")

    normalizer = spec.get("normalizer")
    if normalizer is not None:
        if normalizer.get("type") != "BertNormalizer":
            _unsupported(path, f"normalizer.type {normalizer.get('type')!r}", "BertNormalizer or none")
        normalizer = {k: normalizer.get(k, default) for k, default in
                      (("clean_text", True), ("handle_chinese_chars", True), ("strip_accents", None), ("lowercase", True))}
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") != "BertPreTokenizer":
        _unsupported(path, f"pre_tokenizer.type {pre.get('type')!r}", "BertPreTokenizer")

    added = []
    for t in spec.get("added_tokens") or []:
        if t.get("single_word"):
            _unsupported(path, f"added token {t.get('content')!r} with single_word", "added tokens without it")
        added.append(AddedToken(t["content"], t["id"], bool(t.get("lstrip")), bool(t.get("rstrip")),
                                bool(t.get("normalized", not t.get("special")))))
    return dict(vocab=vocab, unk_token=unk, continuing_subword_prefix=prefix,
                max_input_chars_per_word=longest, normalizer=normalizer,
                added_tokens=added, template=read_template(spec.get("post_processor"), path))


def read_template(post: dict | None, path: Path) -> Template:
    """The post_processor's single-sequence template: TemplateProcessing, BertProcessing or none."""
    if post is None:
        return Template()
    if post.get("type") == "BertProcessing":
        (_, sep), (_, cls) = post["sep"], post["cls"]
        return Template((_token_id(cls, "post_processor.cls", path),), (_token_id(sep, "post_processor.sep", path),),
                        (0,), (0,), 0)
    if post.get("type") != "TemplateProcessing":
        _unsupported(path, f"post_processor.type {post.get('type')!r}", "TemplateProcessing, BertProcessing or none")
    before, after, before_types, after_types, type_id, seen = [], [], [], [], 0, False
    for item in post["single"]:
        if "Sequence" in item:
            seen, type_id = True, item["Sequence"]["type_id"]
            continue
        special = item["SpecialToken"]
        ids = [_token_id(i, f"post_processor.special_tokens[{special['id']!r}]", path)
               for i in post["special_tokens"][special["id"]]["ids"]]
        (after if seen else before).extend(ids)
        (after_types if seen else before_types).extend([special["type_id"]] * len(ids))
    return Template(tuple(before), tuple(after), tuple(before_types), tuple(after_types), type_id)


def check_token_ids(spec: dict, path) -> None:
    """model.vocab and added_tokens give each token one id and each id one token, every id an integer
    in [0, MAX_VOCAB_SIZE): an id of -5 or 10**12 would index outside the word embedding."""
    model = spec.get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if not isinstance(vocab, dict):
        return  # no vocabulary of tokens to ids (Unigram's is a list): the tokenizers library checks it
    owner = {}
    for token, i in vocab.items():
        i = _token_id(i, f"model.vocab[{jsonfile.show(token)}]", path)
        if owner.setdefault(i, token) != token:
            raise CheckpointError(f"{path}: model.vocab gives id {i} to both {jsonfile.show(owner[i])} and "
                                  f"{jsonfile.show(token)}")
    added = spec.get("added_tokens") or []
    if not isinstance(added, list):
        raise CheckpointError(f"{path}: added_tokens must be a list, got {jsonfile.show(added)}")
    for t in added:
        content = t.get("content") if isinstance(t, dict) else None
        if not isinstance(content, str) or not content:
            raise CheckpointError(f"{path}: added token {jsonfile.show(t)} has no content string")
        i = _token_id(t.get("id"), f"added token {jsonfile.show(content)}", path)
        if content in vocab and vocab[content] != i:
            raise CheckpointError(f"{path}: added token {jsonfile.show(content)} has id {i} but model.vocab gives "
                                  f"it {vocab[content]}")
        if owner.setdefault(i, content) != content:
            raise CheckpointError(f"{path}: added token {jsonfile.show(content)} has id {i}, which is already "
                                  f"{jsonfile.show(owner[i])}'s")


def _token_id(value, what: str, path) -> int:
    if type(value) is not int or not 0 <= value < MAX_VOCAB_SIZE:
        raise CheckpointError(f"{path}: {what} has id {jsonfile.show(value)}; token ids must be integers from 0 "
                              f"to {MAX_VOCAB_SIZE - 1}")
    return value


def _unsupported(path, what, supported):
    raise CheckpointError(f"{path}: {what} is not supported by bge_ref's Python tokenizer (it reads "
                          f"{supported}); load with tokenizer='tokenizers' to use the `tokenizers` library")
