"""Text to token ids, with padding and truncation under our control, by one of two backends:

- "tokenizers": the Rust library transformers uses (imported only when chosen);
- "python": bge_ref/wordpiece.py, the same BERT tokenization in pure Python, so bge_ref runs with
  NumPy alone (Pyodide, minimal containers, platforms without Rust wheels).

Both read the checkpoint's tokenizer.json and give the same ids. The padding and truncation a
tokenizer.json may carry (all-MiniLM-L6-v2's pads every text to 128 tokens) are ignored: batches are
padded to their longest text, and texts are truncated to the checkpoint's declared max length.

A long text that will be truncated is first cut to a prefix that provably keeps every token up to
the max length (PrefixCut), so a 2 MB text costs what its first few thousand characters cost.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path


from . import jsonfile
from .errors import BgeRefError, CheckpointError, InputError
from .tokenizer_json import check_token_ids, read_template, wordpiece_tokenizer
from .wordpiece import (ASCII_PUNCTUATION, CJK, DECOMPOSES_TO_SPLIT, OTHER, PUNCTUATION, WHITESPACE,
                        WordPieceTokenizer, _added_regex)

BACKENDS = ("python", "tokenizers")


def default_backend() -> str:
    """"tokenizers" when it is installed (it is a default dependency), else "python"."""
    return "tokenizers" if importlib.util.find_spec("tokenizers") is not None else "python"


class Tokenizer:
    CHARS_PER_TOKEN = 8  # first prefix tried: 8 characters per token of max_length (English: 4 to 5)

    def __init__(self, path: Path, max_length: int, pad_id: int, backend: str | None = None):
        if backend is None:
            backend = default_backend()
        if backend not in BACKENDS:
            raise InputError(f"tokenizer must be None, 'python' or 'tokenizers', got {backend!r}")
        self.backend, self.max_length, self.pad_id = backend, max_length, pad_id
        data = _read(path)
        spec = jsonfile.parse(data, path, "cannot load tokenizer")
        if not isinstance(spec, dict):
            raise CheckpointError(f"{path}: tokenizer.json must hold a JSON object")
        check_token_ids(spec, path)  # whichever backend: tokenizers takes an id of 4e9, or one id twice
        if backend == "python":
            self._python = wordpiece_tokenizer(path, spec)
            self.vocab_size = self._python.vocab_size
            bert, template = self._python, self._python.template
        else:
            self._load_tokenizers(data, path)
            try:  # wordpiece.py's reading of the same file, for PrefixCut only
                bert = wordpiece_tokenizer(path, spec)
            except CheckpointError:
                bert = None  # not BERT's pipeline: texts are tokenized whole
            try:
                template = read_template(spec.get("post_processor"), path)
            except (CheckpointError, KeyError, TypeError, AttributeError):
                template = None
        # The ids added before and after every text's pieces ([CLS] and [SEP] for BERT), for token-id
        # input; None when the post_processor is not one wordpiece.py reads.
        self.special_ids = None if template is None else (list(template.before), list(template.after))
        self._prefix_cut = PrefixCut.of(bert) if bert is not None else None

    def _load_tokenizers(self, data: bytes, path: Path):
        if importlib.util.find_spec("tokenizers") is None:
            raise BgeRefError("tokenizer='tokenizers' needs the tokenizers package: pip install tokenizers "
                              "(or pass tokenizer='python' for bge_ref's own)")
        from tokenizers import Tokenizer as _HFTokenizer
        try:
            full = _HFTokenizer.from_str(data.decode("utf-8"))
        except Exception as e:  # tokenizers raises plain Exception on a bad file
            raise CheckpointError(f"{path}: cannot load tokenizer ({str(e)[:200]})") from None
        full.no_padding()
        full.no_truncation()
        cut = _HFTokenizer.from_str(full.to_str())
        cut.enable_truncation(self.max_length)
        self._full, self._cut = full, cut
        # Every id it can give is below this: the rows the word embedding needs.
        self.vocab_size = 1 + max(full.get_vocab(with_added_tokens=True).values(), default=-1)

    def encode(self, texts: list[str], truncate: bool = True):
        """Encodings (ids, attention_mask, type_ids, tokens) for each text."""
        if truncate:
            texts = [self.prefix(t) for t in texts]
        if self.backend == "python":
            max_length = self.max_length if truncate else None
            return [self._python.encode(t, max_length) for t in texts]
        return (self._cut if truncate else self._full).encode_batch(texts)

    def count(self, text: str) -> int:
        """Tokens of a text without [CLS] and [SEP], untruncated."""
        if self.backend == "python":
            return len(self._python.piece_ids(text))
        return len(self._full.encode(text, add_special_tokens=False).ids)

    def prefix(self, text: str) -> str:
        """A prefix of `text` whose truncation to max_length gives the same ids as the whole text's.

        Cut only where PrefixCut proves the prefix's tokens are the first tokens of the whole text,
        and kept only once it has max_length tokens (or nothing that gives a token follows it).
        Tried at 8 characters per token, then 4 times as far, so the cost is that of a few times
        the needed prefix, never of the whole text.
        """
        if self._prefix_cut is None:
            return text
        cutter, n = self._prefix_cut, self.CHARS_PER_TOKEN * self.max_length
        while n < len(text):
            found = cutter.at_or_after(text, n)
            if found is None:
                break
            c, rest = found
            if cutter.nothing_from(text, rest) or self.count(text[:c]) >= self.max_length:
                return text[:c]
            n = max(4 * n, rest + 1)
        return text


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot load tokenizer ({e.strerror or e})") from None


class PrefixCut:
    """Where a text may be cut so that the prefix's tokens are the first tokens of the whole text.

    BERT's pipeline (wordpiece.py's docstring) is AddedVocabulary, BertNormalizer, BertPreTokenizer,
    WordPiece. Two kinds of cut keep its tokens:

    1. Just before a *split character*: whitespace, punctuation, and, when the normalizer spaces them
       or its NFD turns them into punctuation, CJK ideographs and DECOMPOSES_TO_SPLIT ("≠"). Each is
       unchanged or mapped to a string starting with whitespace or punctuation, and is a canonical
       starter (tests/test_tokenizer.py checks every one), so: the normalizer works character by
       character, and NFD reorders only runs of non-starters, which a starter ends, so the prefix
       normalizes to a prefix of the whole text's normalization; BertPreTokenizer ends a word at
       whitespace and punctuation, so no word crosses the cut; WordPiece works word by word. Added
       tokens are matched first, and one must not cross the cut: a raw one (matched in the text as
       written) is looked for around the cut; a normalized one is matched after the normalizer, so no
       split character whose normalization starts with one of its characters is a cut. Added tokens
       holding whitespace, which could cross any cut, turn cutting off.
    2. Inside a long *word*: a run of characters that are not split characters. WordPiece makes a word
       longer than max_input_chars_per_word (M) characters one [UNK]. Cut inside such a run after more
       than M normalized characters (not counting the first L, the longest raw added token), the
       prefix's last word is still over M characters, and so is the whole text's word, which holds it:
       both are one [UNK]. Every raw added token must hold a split character (so none fits inside the
       run past its first L characters); with normalized added tokens this cut is not used.

    A cut gives the prefix's tokens, a prefix of the whole text's; the caller keeps the cut once that
    prefix has max_length tokens, or when only whitespace and removed control characters follow
    (`nothing_from`), the whole text then giving no more tokens than the prefix.
    """

    MAX_TRIES = 1000  # candidate cuts refused (an added token crosses them) before giving up

    def __init__(self, bert: WordPieceTokenizer, split: str, plain: str | None, quiet: str):
        """split: a regex matching one split character before which a cut is sound; plain: a regex
        class of characters that are not split characters (None: no cuts inside words)."""
        self.bert, self.raw = bert, tuple(bert.raw_added)
        self.longest_raw = max(map(len, self.raw), default=0)
        self.word_limit = bert.max_input_chars_per_word
        run = f"|(?P<run>{plain}{{{self.longest_raw + self.word_limit + 1},}})" if plain else ""
        self.candidates = re.compile(f"(?P<split>{split}){run}")
        self.quiet = re.compile(f"[{quiet}]*")

    @classmethod
    def of(cls, bert: WordPieceTokenizer) -> "PrefixCut | None":
        """The cuts for this tokenizer, or None when no cut can be proven (see the class docstring)."""
        normalized = tuple(bert.normalized_added)
        if any(c in WHITESPACE for t in (*bert.raw_added, *normalized) for c in t):
            return None
        flags = bert.normalizer
        ranges = split_ranges(flags)
        splits = _char_class(ranges)
        if normalized:  # no cut before a character whose normalization starts a normalized added token's
            inside = {c for t in normalized for c in t}
            listed = [chr(cp) for a, b in ranges if (a, b) not in CJK for cp in range(a, b + 1)]  # CJK: " X "
            barred = "".join(c for c in listed if bert.normalize(c)[:1] in inside)
            splits_cut = f"(?![{re.escape(barred)}])(?:{splits})" if barred else splits
        else:
            splits_cut = splits
        words = not normalized and all(re.search(splits, t) for t in bert.raw_added)
        quiet = re.escape(WHITESPACE)
        if flags and flags["clean_text"] and not any(ord(c) in OTHER or c in "\x00\ufffd" for t in bert.raw_added
                                                     for c in t):
            quiet += re.escape("\x00\ufffd") + OTHER.regex_class()
        return cls(bert, splits_cut, _plain(ranges) if words else None, quiet)

    def at_or_after(self, text: str, n: int) -> tuple[int, int] | None:
        """(c, rest): the first cut c >= n, and where the text that the prefix's tokens do not cover
        starts (c, or the end of the word cut inside). None if there is none."""
        for tries, m in enumerate(self.candidates.finditer(text, n)):
            if tries >= self.MAX_TRIES:
                return None
            if m.lastgroup == "split":
                c, rest = m.start(), m.start()
            else:
                start, rest = m.span()
                c = self._inside_word(text, start + self.longest_raw, rest)
            if c is not None and not self._crossed(text, c):
                return c, rest
        return None

    def _inside_word(self, text: str, start: int, end: int) -> int | None:
        """The first of start + (M+1) * 2^k (or end) where text[start:c] normalizes to over M characters."""
        c = start + self.word_limit + 1
        while True:
            c = min(c, end)
            if len(self.bert.normalize(text[start:c])) > self.word_limit:
                return c
            if c == end:
                return None
            c = start + 2 * (c - start)

    def _crossed(self, text: str, c: int) -> bool:
        """Whether a raw added token, as written, could cover both text[c-1] and text[c]."""
        if not self.raw:
            return False
        pattern = _added_regex(self.raw)  # longest first: the longest match at each start
        return any((m := pattern.match(text, o)) and m.end() > c for o in range(max(0, c - self.longest_raw + 1), c))

    def nothing_from(self, text: str, rest: int) -> bool:
        """Whether text[rest:] is only whitespace and characters the normalizer removes: no tokens."""
        return self.quiet.fullmatch(text, rest) is not None


def split_ranges(flags: dict | None) -> list[tuple[int, int]]:
    """The split characters (PrefixCut's docstring) for BertNormalizer's flags (None: no normalizer),
    as inclusive code point ranges: whitespace and punctuation, which BertPreTokenizer splits at, but
    the control characters among them where clean_text removes them (vertical tab, form feed, U+0085);
    CJK ideographs where handle_chinese_chars spaces them; DECOMPOSES_TO_SPLIT where NFD runs."""
    removed = WHITESPACE if flags and flags["clean_text"] else ""
    removed = {c for c in removed if c not in "\t\n\r" and ord(c) in OTHER}
    ranges = [(ord(c), ord(c)) for c in WHITESPACE + ASCII_PUNCTUATION if c not in removed] + _ranges(PUNCTUATION)
    if flags and flags["handle_chinese_chars"]:
        ranges += CJK
    if flags and (flags["lowercase"] if flags["strip_accents"] is None else flags["strip_accents"]):
        ranges += _ranges(DECOMPOSES_TO_SPLIT)
    return ranges


# Python's re tests a character against a class of Basic Multilingual Plane ranges with one bitmap
# lookup, but against astral ranges one range at a time: 30 times slower over a 2 MB text. So the
# classes below keep astral characters apart.
ASTRAL = (0x10000, 0x10FFFF)


def _ranges(table) -> list[tuple[int, int]]:
    return list(zip(table.starts, table.ends))


def _class(ranges) -> str:
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)


def _char_class(ranges) -> str:
    """A regex matching one character of `ranges` (inclusive code point pairs)."""
    bmp = [(a, min(b, 0xFFFF)) for a, b in ranges if a <= 0xFFFF]
    astral = [(max(a, ASTRAL[0]), b) for a, b in ranges if b >= ASTRAL[0]]
    return f"[{_class(bmp)}]" + (f"|(?=[{_class([ASTRAL])}])[{_class(astral)}]" if astral else "")


def _plain(ranges) -> str:
    """A regex class of the BMP characters outside `ranges` (astral ones are left out: they only end
    a run early, which costs a cut, never soundness)."""
    bmp = [(a, min(b, 0xFFFF)) for a, b in ranges if a <= 0xFFFF]
    return f"[^{_class(bmp)}{_class([ASTRAL])}]"
