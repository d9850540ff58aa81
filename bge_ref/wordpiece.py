"""BERT's WordPiece tokenization in pure Python, read from a checkpoint's tokenizer.json.

It gives the ids of `tokenizers` (the Rust library behind transformers' fast tokenizers), stage by
stage, each a function named after the `tokenizers` component it mirrors:

    text ──AddedVocabulary──> "[MASK]" and the other added tokens written in the text, cut out with their ids
         ──BertNormalizer───> clean_text, handle_chinese_chars, strip_accents (NFD, drop Mn), lowercase
         ──BertPreTokenizer─> words: split at whitespace, every punctuation character a word of its own
         ──WordPiece────────> each word greedily into the longest vocabulary pieces ("##" continues a word)
         ──TemplateProcessing> [CLS] ... [SEP] around the pieces, after truncation to max_length

Everything comes from tokenizer.json: the vocabulary, the normalizer's flags, the added tokens, the
continuing-subword prefix, max_input_chars_per_word and the template, read by bge_ref/tokenizer_json.py:
a tokenizer.json this module does not implement (a BPE or Unigram model, another normalizer or
pre-tokenizer) is a CheckpointError there.

Character classes follow the Unicode versions `tokenizers` was built with, not the interpreter's
(bge_ref/unicode_tables.py, written by scripts/unicode_tables.py): control characters, accents and
punctuation by Unicode 8.0, NFD by 9.0, lowercase and whitespace by Rust's 16.0.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass

from . import unicode_tables


# -- character classes -------------------------------------------------------------------------------
class CodePoints:
    """A set of code points given as inclusive hex ranges ("0300-036F 0483 ..."), tested by bisection."""

    def __init__(self, table: str):
        bounds = [item.partition("-") for item in table.split()]
        self.starts = [int(a, 16) for a, _, _ in bounds]
        self.ends = [int(b or a, 16) for a, _, b in bounds]

    def __contains__(self, cp: int) -> bool:
        i = bisect_right(self.starts, cp) - 1
        return i >= 0 and cp <= self.ends[i]

    def regex_class(self) -> str:
        """The ranges as the inside of a regex character class."""
        return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
                       for a, b in zip(self.starts, self.ends))


OTHER = CodePoints(unicode_tables.OTHER)                      # Cc Cf Co (Unicode 8.0)
NONSPACING_MARK = CodePoints(unicode_tables.NONSPACING_MARK)  # Mn (Unicode 8.0)
PUNCTUATION = CodePoints(unicode_tables.PUNCTUATION)          # P* (Unicode 8.0)
ASSIGNED_9_0 = CodePoints(unicode_tables.ASSIGNED_9_0)
DECOMPOSES_TO_SPLIT = CodePoints(unicode_tables.DECOMPOSES_TO_SPLIT)  # "≠" is "=" + U+0338 after NFD
# Rust's char::is_whitespace: the White_Space property (Python's str.isspace() also takes \x1c-\x1f).
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
ASCII_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"  # Rust's char::is_ascii_punctuation
# The CJK Unified Ideographs blocks (and compatibility ones) that handle_chinese_chars isolates; Hangul,
# Hiragana and Katakana are written with spaces and are not among them.
CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
       (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def is_control(c: str) -> bool:
    """clean_text removes these: Cc, Cf and Co, but tab, newline and carriage return (whitespace)."""
    return c not in "\t\n\r" and ord(c) in OTHER


def is_chinese_char(c: str) -> bool:
    return any(lo <= ord(c) <= hi for lo, hi in CJK)


def to_lowercase(c: str) -> str:
    """One character lowercased, as Rust's char::to_lowercase: no context, so a final sigma stays σ."""
    cp = unicode_tables.LOWERCASE_AFTER_13_0.get(ord(c))
    return chr(cp) if cp is not None else c.lower()


def nfd(text: str) -> str:
    """Canonical decomposition with Unicode 9.0's data: a character assigned later is left as it is,
    and canonical reordering does not cross it (to Unicode 9.0 it is an unknown starter)."""
    if _assigned_after_9_0().search(text) is None:
        return unicodedata.normalize("NFD", text)
    parts = _assigned_after_9_0().split(text)  # odd indices: the later characters, kept
    return "".join(p if i % 2 else unicodedata.normalize("NFD", p) for i, p in enumerate(parts))


@functools.cache
def _assigned_after_9_0() -> re.Pattern:
    return re.compile(f"([^{ASSIGNED_9_0.regex_class()}])")


# -- BertNormalizer ----------------------------------------------------------------------------------
def bert_normalizer(text: str, *, clean_text=True, handle_chinese_chars=True, strip_accents=None,
                    lowercase=True) -> str:
    """BertNormalizer, in its order: clean_text (drop NUL, U+FFFD and control characters; whitespace ->
    " "), handle_chinese_chars (spaces around each CJK ideograph), strip_accents (NFD, then drop the
    nonspacing marks Mn), lowercase. strip_accents None (BERT's uncased files) means "as lowercase"."""
    if strip_accents is None:
        strip_accents = lowercase
    first, second = _normalizer_tables(clean_text, handle_chinese_chars, strip_accents, lowercase)
    text = text.translate(first)                    # clean_text, handle_chinese_chars
    if text.isascii():                              # no CJK, no accents: only case is left
        return text.lower() if lowercase else text
    if strip_accents:
        text = nfd(text)
    return text.translate(second)                   # strip_accents' Mn removal, lowercase


def _clean_and_space_cjk(c: str, clean_text: bool, handle_chinese_chars: bool) -> str:
    if clean_text and (c in "\x00\ufffd" or is_control(c)):
        return ""
    if clean_text and c in WHITESPACE:
        return " "
    if handle_chinese_chars and is_chinese_char(c):
        return f" {c} "
    return c


def _strip_mark_and_lower(c: str, strip_accents: bool, lower: bool) -> str:
    if strip_accents and ord(c) in NONSPACING_MARK:
        return ""
    return to_lowercase(c) if lower else c


class _CharTable(dict):
    """A str.translate table filled in on the first use of each code point: the per-character rule
    runs once per distinct character, and later lookups stay in C."""

    def __init__(self, rule, *flags):
        super().__init__()
        self.rule, self.flags = rule, flags

    def __missing__(self, cp: int) -> str:
        out = self[cp] = self.rule(chr(cp), *self.flags)
        return out


@functools.cache
def _normalizer_tables(clean_text, handle_chinese_chars, strip_accents, lower):
    return (_CharTable(_clean_and_space_cjk, clean_text, handle_chinese_chars),
            _CharTable(_strip_mark_and_lower, strip_accents, lower))


# -- BertPreTokenizer --------------------------------------------------------------------------------
def bert_pre_tokenizer(text: str) -> list[str]:
    """BertPreTokenizer: split at whitespace (dropped), then each punctuation character (ASCII's, and
    the P* categories of Unicode 8.0) is a word of its own."""
    return _pre_tokenizer_regex().findall(text)


@functools.cache
def _pre_tokenizer_regex() -> re.Pattern:
    punct = re.escape(ASCII_PUNCTUATION) + PUNCTUATION.regex_class()
    return re.compile(f"[{punct}]|[^{punct}{re.escape(WHITESPACE)}]+")


# -- WordPiece ---------------------------------------------------------------------------------------
def wordpiece(word: str, vocab, unk_token="[UNK]", continuing_subword_prefix="##",
              max_input_chars_per_word=100) -> list[str]:
    """WordPiece: the longest vocabulary entry that starts the word, then the longest that continues
    it (written with the prefix, "##ing"), and so on. A word with a part no entry matches, or longer
    than max_input_chars_per_word characters, is one unk_token."""
    if len(word) > max_input_chars_per_word:
        return [unk_token]
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else continuing_subword_prefix + word[start:end]
            if piece in vocab:
                break
        else:
            return [unk_token]
        pieces.append(piece)
        start = end
    return pieces


# -- AddedVocabulary ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AddedToken:
    content: str
    id: int
    lstrip: bool = False     # the match takes in the whitespace on its left
    rstrip: bool = False     # ... and on its right
    normalized: bool = True  # matched in the normalized text (else in the raw text, before the normalizer)


def added_vocabulary(text: str, tokens: dict[str, AddedToken]) -> list[tuple[str, int | None]]:
    """AddedVocabulary's split: the text cut into pieces, an added token found in it (leftmost, and the
    longest of those that start there) a piece with its id, the text between a piece with None."""
    if not tokens:
        return [(text, None)]
    pieces, done = [], 0
    for match in _added_regex(tuple(tokens)).finditer(text):
        start, stop = match.span()
        token = tokens[match.group()]
        if token.lstrip:
            start = max(len(text[:start].rstrip(WHITESPACE)), done)
        if token.rstrip:
            stop = len(text) - len(text[stop:].lstrip(WHITESPACE))
        if done < start:
            pieces.append((text[done:start], None))
        pieces.append((text[start:stop], token.id))
        done = stop
    if done < len(text):
        pieces.append((text[done:], None))
    return pieces


@functools.lru_cache(maxsize=64)
def _added_regex(contents: tuple[str, ...]) -> re.Pattern:
    # Python's regex takes the first alternative that matches: longest first gives the longest match.
    return re.compile("|".join(re.escape(c) for c in sorted(contents, key=len, reverse=True)))


# -- TemplateProcessing ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Template:
    """The single-sequence template: ids (and token type ids) before and after the text's pieces."""
    before: tuple[int, ...] = ()
    after: tuple[int, ...] = ()
    before_types: tuple[int, ...] = ()
    after_types: tuple[int, ...] = ()
    type_id: int = 0  # of the text's own pieces

    @property
    def added(self) -> int:
        return len(self.before) + len(self.after)


def template_processing(ids: list[int], template: Template) -> tuple[list[int], list[int]]:
    """TemplateProcessing for one text: ([CLS] ids [SEP], token type ids)."""
    return ([*template.before, *ids, *template.after],
            [*template.before_types, *[template.type_id] * len(ids), *template.after_types])


# -- the tokenizer -----------------------------------------------------------------------------------
@dataclass
class Encoding:
    """One text's token ids, as tokenizers' Encoding names them."""
    ids: list[int]
    type_ids: list[int]
    id_to_token: dict

    @property
    def attention_mask(self) -> list[int]:
        return [1] * len(self.ids)

    @property
    def tokens(self) -> list[str]:
        return [self.id_to_token[i] for i in self.ids]


WORD_CACHE = 100_000  # words whose ids are remembered; the cache is emptied when it reaches this size


class WordPieceTokenizer:
    """tokenizer.json's BERT pipeline. Create it with `tokenizer_json.wordpiece_tokenizer(path)`."""

    def __init__(self, vocab: dict[str, int], *, unk_token="[UNK]", continuing_subword_prefix="##",
                 max_input_chars_per_word=100, normalizer: dict | None = None,
                 added_tokens: list[AddedToken] = (), template=Template()):
        self.vocab, self.unk_token, self.prefix = vocab, unk_token, continuing_subword_prefix
        self.max_input_chars_per_word = max_input_chars_per_word
        self.normalizer = normalizer  # BertNormalizer's flags, or None for no normalizer
        self.raw_added = {t.content: t for t in added_tokens if not t.normalized and t.content}
        # Normalized added tokens are matched by their normalized form, in the normalized text.
        self.normalized_added = {n: t for t in added_tokens if t.normalized and (n := self.normalize(t.content))}
        self.template = template
        self.id_to_token = {i: t for t, i in vocab.items()} | {t.id: t.content for t in added_tokens}
        # Every id it can give is below this: the rows the word embedding needs.
        self.vocab_size = 1 + max([*self.id_to_token, *template.before, *template.after])
        self._word_ids: dict[str, list[int]] = {}

    # -- the stages, on one text ---------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        return text if self.normalizer is None else bert_normalizer(text, **self.normalizer)

    def word_ids(self, word: str) -> list[int]:
        """WordPiece ids of one word, remembered."""
        ids = self._word_ids.get(word)
        if ids is None:
            if len(self._word_ids) >= WORD_CACHE:
                self._word_ids.clear()
            pieces = wordpiece(word, self.vocab, self.unk_token, self.prefix, self.max_input_chars_per_word)
            ids = self._word_ids[word] = [self.vocab[p] for p in pieces]
        return ids

    def piece_ids(self, text: str) -> list[int]:
        """The ids of a text without the template: AddedVocabulary, BertNormalizer, BertPreTokenizer,
        WordPiece."""
        ids = []
        for raw, added_id in added_vocabulary(text, self.raw_added):
            if added_id is not None:
                ids.append(added_id)
                continue
            for piece, added_id in added_vocabulary(self.normalize(raw), self.normalized_added):
                if added_id is not None:
                    ids.append(added_id)
                    continue
                for word in bert_pre_tokenizer(piece):
                    ids += self.word_ids(word)
        return ids

    def encode(self, text: str, max_length: int | None = None, add_special_tokens=True) -> Encoding:
        """The text's Encoding; with max_length, the pieces are cut so that the template fits in it."""
        ids = self.piece_ids(text)
        added = self.template.added if add_special_tokens else 0
        if max_length is not None and len(ids) + added > max_length:
            ids = ids[:max(max_length - added, 0)]
        if not add_special_tokens:
            return Encoding(ids, [0] * len(ids), self.id_to_token)
        return Encoding(*template_processing(ids, self.template), self.id_to_token)
