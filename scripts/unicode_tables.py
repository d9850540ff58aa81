"""Write bge_ref/unicode_tables.py: the character classes `tokenizers` uses for BERT, by Unicode version.

`tokenizers` (the Rust wheel) classifies characters with tables frozen at old Unicode versions, while
Python's unicodedata follows the interpreter (Unicode 13.0 in Python 3.10, 15.1 in 3.13). To give the
same ids, bge_ref/wordpiece.py uses the versions `tokenizers` was built with:

- BertNormalizer's control characters (Cc, Cf, Co) and the accents it strips (Mn), and
  BertPreTokenizer's punctuation (P*): the `unicode_categories` crate, Unicode 8.0;
- NFD (before stripping accents): the `unicode-normalization-alignments` crate, Unicode 9.0 (a
  character assigned later is neither decomposed nor reordered);
- lowercase and whitespace: Rust's standard library (Unicode 16.0); Python's str.lower() plus the
  letters added since Unicode 13.0, the data of Python 3.10.

The tables are Python's unicodedata restricted to the characters assigned by Unicode 8.0 (or 9.0), as
the `unicode-age` package dates them, with the few characters whose category changed since 8.0 put
back. tests/test_wordpiece.py checks every code point against `tokenizers`.

    pip install unicode-age && python scripts/unicode_tables.py
"""
import sys
import unicodedata
from pathlib import Path

try:
    from unicode_age.unicode_age_db import iter_spans
except ImportError:
    sys.exit("scripts/unicode_tables.py needs the unicode-age package: pip install unicode-age")

OUT = Path(__file__).resolve().parent.parent / "bge_ref" / "unicode_tables.py"

# General categories in Unicode 8.0 of the characters whose category changed since then.
CATEGORY_IN_8_0 = {
    0x166D: "Po",   # CANADIAN SYLLABICS CHI SIGN: So since Unicode 12.0
    0x1734: "Mn",   # HANUNOO SIGN PAMUDPOD: Mc since 14.0
    0x1885: "Lo",   # MONGOLIAN LETTER ALI GALI BALUDA: Mn since 9.0
    0x1886: "Lo",   # MONGOLIAN LETTER ALI GALI THREE BALUDA: Mn since 9.0
    0xA9BD: "Mc",   # JAVANESE CONSONANT SIGN KERET: Mn since 12.0
    0x111C9: "Po",  # SHARADA SANDHI MARK: Mn since 11.0
}

# Lowercase mappings of the letters added after Unicode 13.0 (the data of Python 3.10, the oldest Python
# bge_ref runs on) up to 16.0 (Rust's char::to_lowercase, which tokenizers uses): Python's str.lower()
# leaves a letter its unicodedata does not know unchanged.
LOWERCASE_AFTER_13_0 = {
    # Unicode 14.0
    0x2C2F: 0x2C5F, 0xA7C0: 0xA7C1, 0xA7D0: 0xA7D1, 0xA7D6: 0xA7D7, 0xA7D8: 0xA7D9,
    **{c: c + 0x27 for c in [*range(0x10570, 0x1057B), *range(0x1057C, 0x1058B), *range(0x1058C, 0x10593),
                             0x10594, 0x10595]},
    # Unicode 16.0
    0x1C89: 0x1C8A, 0xA7CB: 0x0264, 0xA7CC: 0xA7CD, 0xA7CE: 0xA7CF, 0xA7D2: 0xA7D3, 0xA7D4: 0xA7D5, 0xA7DA: 0xA7DB,
    0xA7DC: 0x019B, **{c: c + 0x20 for c in range(0x10D50, 0x10D66)}, **{c: c + 0x1B for c in range(0x16EA0, 0x16EB9)},
}


# BertPreTokenizer's split characters besides Unicode's punctuation: Rust's char::is_ascii_punctuation
# and char::is_whitespace (as in bge_ref/wordpiece.py).
ASCII_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
WHITESPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
              "\u2028\u2029\u202f\u205f\u3000")


def assigned_by(version):
    return {cp for a, b, major, minor in iter_spans() if (major, minor) <= version for cp in range(a, b + 1)}


def category_8_0(cp, assigned_8_0):
    if cp in CATEGORY_IN_8_0:
        return CATEGORY_IN_8_0[cp]
    return unicodedata.category(chr(cp)) if cp in assigned_8_0 else "Cn"


def ranges(cps) -> str:
    """'0300-036F 0483-0489 ...': sorted code points as inclusive hex ranges."""
    out, cps = [], sorted(cps)
    start = prev = cps[0]
    for cp in cps[1:] + [None]:
        if cp is not None and cp == prev + 1:
            prev = cp
            continue
        out.append(f"{start:04X}" if start == prev else f"{start:04X}-{prev:04X}")
        if cp is not None:
            start = prev = cp
    return " ".join(out)


def wrap(name, text, comment):
    lines, line = [], ""
    for item in text.split():
        if len(line) + len(item) + 1 > 96:
            lines.append(line)
            line = ""
        line = f"{line} {item}" if line else item
    lines.append(line)
    body = "\n".join(f'    "{line}"' if i == 0 else f'    " {line}"' for i, line in enumerate(lines))
    return f"# {comment}\n{name} = (\n{body}\n)\n"


def main():
    assigned_8_0, assigned_9_0 = assigned_by((8, 0)), assigned_by((9, 0))
    cats = {cp: category_8_0(cp, assigned_8_0) for cp in range(0x110000)}
    other = [cp for cp, c in cats.items() if c in ("Cc", "Cf", "Co")]
    marks = [cp for cp, c in cats.items() if c == "Mn"]
    punct = [cp for cp, c in cats.items() if c.startswith("P")]
    splits = set(punct) | {ord(c) for c in ASCII_PUNCTUATION + WHITESPACE}
    to_split = [cp for cp in sorted(assigned_9_0) if cp not in splits and not 0xD800 <= cp < 0xE000
                and any(ord(c) in splits for c in unicodedata.normalize("NFD", chr(cp)))]
    pairs = [f"0x{a:X}: 0x{b:X}," for a, b in sorted(LOWERCASE_AFTER_13_0.items())]
    lower = "\n".join("    " + " ".join(pairs[i:i + 7]) for i in range(0, len(pairs), 7))
    OUT.write_text(
        '"""Character classes of `tokenizers`\' BERT components, generated by scripts/unicode_tables.py (do not edit).\n\n'
        "Each table is a string of inclusive hex code point ranges; bge_ref/wordpiece.py reads them.\n"
        '"""\n\n'
        + wrap("OTHER", ranges(other), "Cc, Cf, Co in Unicode 8.0: what BertNormalizer's clean_text removes (but \\t \\n \\r)") + "\n"
        + wrap("NONSPACING_MARK", ranges(marks), "Mn in Unicode 8.0: the accents strip_accents removes after NFD") + "\n"
        + wrap("PUNCTUATION", ranges(punct), "Pc Pd Pe Pf Pi Po Ps in Unicode 8.0: BertPreTokenizer's punctuation (with ASCII's)") + "\n"
        + wrap("ASSIGNED_9_0", ranges(assigned_9_0), "assigned in Unicode 9.0: NFD leaves any later character as it is") + "\n"
        + wrap("DECOMPOSES_TO_SPLIT", ranges(to_split), "not punctuation or whitespace, but NFD (9.0) gives one: "
               "split after strip_accents") + "\n"
        + "# lowercase mappings of the letters added after Unicode 13.0 (Python 3.10's data) up to 16.0 (Rust's)\n"
        + f"LOWERCASE_AFTER_13_0 = {{\n{lower}\n}}\n")
    print(f"wrote {OUT}: {len(other)} other, {len(marks)} Mn, {len(punct)} punctuation, {len(assigned_9_0)} assigned in 9.0, "
          f"{len(to_split)} decomposing to a split")


if __name__ == "__main__":
    main()
