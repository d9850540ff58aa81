"""Command line: `bge-ref embed`, `bge-ref info` (and `bge-ref verify`, see verify.py).

One convention for every subcommand: output on stdout; an error is one line on stderr,
`bge-ref: error: <message naming the text, line, field or file>`, and exit status 2 (as argparse
uses for bad arguments); exit status 1 means the command ran and its check failed (verify).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from .errors import BgeRefError, InputError


def _stdin_lines(skip_blank: bool) -> tuple[list[str], list[int]]:
    """Lines of stdin decoded as UTF-8, and their 1-based line numbers.

    Output rows must line up with input lines, so a blank line is an error naming it, unless
    skip_blank drops it (the numbers then say which lines the rows belong to)."""
    lines, numbers = [], []
    for n, raw in enumerate(sys.stdin.buffer, 1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise InputError(f"stdin line {n} is not valid UTF-8 (byte {e.start}: {e.reason})") from None
        if not line.strip():
            if skip_blank:
                continue
            raise InputError(f"stdin line {n} is blank; every line is one text (pass --skip-blank to drop "
                             "blank lines; the output's \"lines\" then lists the line of each row)")
        lines.append(line)
        numbers.append(n)
    return lines, numbers


def _embed(args) -> int:
    from .embedder import QUERY_INSTRUCTION, load
    numbers = None
    texts = args.text
    if not texts:
        texts, numbers = _stdin_lines(args.skip_blank)
    if not texts:
        raise InputError("embed: no text given (pass TEXT arguments or lines on stdin)")
    model = load(args.model)
    pooling = args.pooling or model.pooling
    vectors = model.encode(texts, pooling=pooling, normalize=not args.no_normalize,
                           batch_size=args.batch_size, prompt=QUERY_INSTRUCTION if args.query else None)
    out = {"shape": list(vectors.shape), "data": vectors.tolist(), "pooling": pooling}
    if args.skip_blank and numbers is not None:
        out["lines"] = numbers
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


def _info(args) -> int:
    from .embedder import load
    model = load(args.model)
    info = {"model": model.name, "config": dataclasses.asdict(model.config), "pooling": model.pooling,
            "normalize": model.normalize, "max_length": model.max_length, "dtype": str(model.dtype)}
    print(json.dumps(info, indent=2))
    return 0


def _embed_corpus(args) -> int:
    from .corpus import embed_corpus
    summary = embed_corpus(args.input, args.output, model=args.model, text_field=args.text_field,
                           pooling=args.pooling, query=args.query, batch_size=args.batch_size,
                           skip_bad=args.skip_bad, overwrite=args.overwrite, ray=args.ray, actors=args.actors,
                           window=args.window, chunk_tokens=args.chunk_tokens, quiet=args.quiet,
                           progress_every=args.progress_every)
    print(json.dumps(summary))
    return 0


def main(argv=None) -> int:
    from . import __version__
    p = argparse.ArgumentParser(prog="bge-ref", description="Pure-NumPy BERT text embeddings (bge-large-en-v1.5).")
    p.add_argument("--version", action="version", version=f"bge-ref {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("embed", help="embed texts (arguments, or one per stdin line) and print JSON")
    e.add_argument("text", nargs="*", help="texts to embed; read from stdin, one per line, when none")
    e.add_argument("--model", help="checkpoint directory or hub id (default $BGE_REF_MODEL, else bge-large-en-v1.5)")
    e.add_argument("--pooling", choices=["cls", "mean"], help="default: the checkpoint's own")
    e.add_argument("--no-normalize", action="store_true", help="return raw pooled vectors")
    e.add_argument("--query", action="store_true", help="prepend bge's retrieval instruction (for short queries)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--skip-blank", action="store_true",
                   help="drop blank stdin lines (an error otherwise); the output's \"lines\" gives each row's line")
    e.set_defaults(func=_embed)
    i = sub.add_parser("info", help="print the resolved config, pooling and max length")
    i.add_argument("--model")
    i.set_defaults(func=_info)
    c = sub.add_parser("embed-corpus", help="embed a .txt/.jsonl/.parquet corpus into one .npy, resumably (README)")
    c.add_argument("input", help=".txt (one text per line), .jsonl or .parquet (the --text-field)")
    c.add_argument("-o", "--output", required=True, help="OUTPUT.npy: float32 (n, D) in input order")
    c.add_argument("--model", help="checkpoint directory or hub id (default $BGE_REF_MODEL, else bge-large-en-v1.5)")
    c.add_argument("--text-field", default="text", help="the .jsonl field or .parquet column (default: text)")
    c.add_argument("--pooling", choices=["cls", "mean"], help="default: the checkpoint's own")
    c.add_argument("--query", action="store_true", help="prepend bge's retrieval instruction")
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--skip-bad", action="store_true",
                   help="record bad lines in OUTPUT.bad.jsonl instead of stopping (rows' lines: OUTPUT.lines.npy)")
    c.add_argument("--overwrite", action="store_true", help="delete any earlier run's output and start over")
    c.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                   help="run on a Ray cluster: ADDRESS, else a running one, else a local one (bge-ref[ray]); "
                   "put it after INPUT, or write --ray=ADDRESS")
    c.add_argument("--actors", type=int, help="with --ray: embedding actors (default: the cluster's CPUs - 1)")
    c.add_argument("--window", type=int, default=2048, help="texts sorted by length together (default 2048, as encode)")
    c.add_argument("--chunk-tokens", type=int, default=8192,
                   help="padded tokens per committed chunk: the most work a kill can lose (default 8192)")
    c.add_argument("--progress-every", type=float, default=10.0, metavar="SECONDS",
                   help="when stderr is not a terminal, a progress line this often (default 10)")
    c.add_argument("--quiet", action="store_true", help="no progress on stderr")
    c.set_defaults(func=_embed_corpus)
    try:
        from .verify import add_parser as add_verify
    except ImportError:
        add_verify = None
    if add_verify:
        add_verify(sub)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except BgeRefError as err:
        print(f"bge-ref: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left early (`bge-ref embed ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as the Python docs advise
        return 1


if __name__ == "__main__":
    sys.exit(main())
