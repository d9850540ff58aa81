"""Reading a corpus: .txt (one text per line), .jsonl (a field) and .parquet (a column), record by
record, each record's text or the reason it is bad; the scan that checks them all before any work;
and the input's sha256."""
from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from ..errors import InputError
from .constants import KINDS, PARQUET_EXTRA


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str   # "txt", "jsonl" or "parquet"
    field: str  # the JSON field or parquet column holding the text (unused for .txt)

    def where(self, number: int) -> str:
        return f"{self.path}, {'row' if self.kind == 'parquet' else 'line'} {number}"


def open_source(path, field="text") -> Source:
    path = Path(path)
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{path}: unknown input format {path.suffix!r}; give a .txt (one text per line), "
                         ".jsonl or .parquet file")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    src = Source(path.resolve(), kind, field)
    if kind == "parquet":
        names = _parquet(src.path).schema_arrow.names
        if field not in names:
            raise InputError(f"{path}: no column {field!r} (columns: {', '.join(names)}); pass --text-field")
    return src


def sha256_file(path) -> str:
    """The file's sha256, as `sha256sum` prints it: of its bytes only, so a renamed copy is the same input."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _parquet(path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading .parquet needs pyarrow: {PARQUET_EXTRA}") from None
    return pq.ParquetFile(path)


def records(src: Source, offset: int = 0, number: int = 1):
    """(number, offset, text, error) for each record from `offset` on: number is the 1-based line
    (or parquet row), offset where the record starts (a byte, or a row for parquet); exactly one of
    text and error is None."""
    if src.kind == "parquet":
        yield from _parquet_records(src, offset)
        return
    with open(src.path, "rb") as f:
        f.seek(offset)
        for raw in f:
            yield (number, offset, *_parse_line(raw, src))
            number, offset = number + 1, offset + len(raw)


def _parse_line(raw: bytes, src: Source):
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        return None, f"not valid UTF-8 (byte {e.start}: {e.reason})"
    if src.kind == "txt":
        return _check_text(line, "the line")
    if not line.strip():
        return None, "blank line, not a JSON object"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e.msg} at column {e.colno})"
    if not isinstance(obj, dict):
        return None, f"not a JSON object (a {type(obj).__name__})"
    if src.field not in obj:
        return None, f"no {src.field!r} field (fields: {', '.join(map(repr, obj)) or 'none'}); pass --text-field"
    return _check_text(obj[src.field], f"field {src.field!r}")


def _check_text(text, what):
    if isinstance(text, bytes):  # a parquet binary column
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"{what} is not valid UTF-8 (byte {e.start}: {e.reason})"
    if text is None:
        return None, f"{what} is null"
    if not isinstance(text, str):
        return None, f"{what} is a {type(text).__name__}, not a string"
    if not text.strip():
        return None, f"{what} is empty" + (" or only whitespace" if text else "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate from a JSON "\\ud800" escape
        return None, f"{what} is not valid Unicode ({e.reason} at character {e.start})"
    return text, None


def _parquet_records(src: Source, start: int):
    f = _parquet(src.path)
    row, groups = 0, []
    for g in range(f.num_row_groups):  # start at the row group holding row `start`
        n = f.metadata.row_group(g).num_rows
        if row + n > start:
            groups.append(g)
        elif not groups:
            row += n
    for batch in f.iter_batches(batch_size=4096, row_groups=groups, columns=[src.field]):
        for value in batch.column(0).to_pylist():
            if row >= start:
                yield (row + 1, row, *_check_text(value, f"column {src.field!r}"))
            row += 1


@dataclass(frozen=True)
class Scan:
    texts: int                            # records kept
    windows: list[tuple[int, int]]        # (offset, number) of each window's first text
    chars: list[int]                      # characters of each window's texts (to estimate its tokens)
    bad: int                              # records skipped (--skip-bad)


def scan(src: Source, window: int, skip_bad: bool, parts: Path | None = None) -> Scan:
    """Check every record, count the texts, find where each window starts. With skip_bad, bad records
    go to parts/bad.jsonl and each kept text's line number to parts/lines.bin; else the first raises."""
    kept, bad, windows, chars = 0, 0, [], []
    lines = array("q")
    bad_file = open(parts / "bad.jsonl", "w", encoding="utf-8") if skip_bad else None
    lines_file = open(parts / "lines.bin", "wb") if skip_bad else None
    try:
        for number, offset, text, error in records(src):
            if error is not None:
                if not skip_bad:
                    raise InputError(f"{src.where(number)}: {error} (--skip-bad records bad lines in a side file instead)")
                bad_file.write(json.dumps({"line": number, "error": error}, ensure_ascii=False) + "\n")
                bad += 1
                continue
            if kept % window == 0:
                windows.append((offset, number))
                chars.append(0)
            chars[-1] += len(text)
            kept += 1
            if lines_file:
                lines.append(number)
                if len(lines) >= 65536:
                    lines_file.write(lines.tobytes())
                    del lines[:]
        if lines_file:
            lines_file.write(lines.tobytes())
    finally:
        for f in (bad_file, lines_file):
            if f:
                f.close()
    return Scan(kept, windows, chars, bad)


def window_texts(src: Source, offset: int, number: int, count: int) -> list[str]:
    """The `count` good texts from the record at `offset` on (bad ones were recorded by the scan)."""
    return [t for _, _, t, _ in islice((r for r in records(src, offset, number) if r[3] is None), count)]
