"""Command line: `bge-ref embed`, `bge-ref info`, `bge-ref serve` (and `bge-ref verify`, see verify.py).

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


def _serve(args) -> int:
    from .embedder import load
    from .server import Settings, serve, served_names  # a BgeRefError naming the serve extra if it is missing
    for flag in ("max_batch_tokens", "max_batch_size", "max_concurrent_requests", "max_body_bytes"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    model = load(args.model, dtype=args.dtype, weights_dtype=args.weights_dtype)
    settings = Settings(served=args.served_model_name or served_names(args.model, model.name),
                        api_key=args.api_key or os.environ.get("BGE_REF_API_KEY") or None,
                        max_batch_tokens=args.max_batch_tokens, max_batch_size=args.max_batch_size,
                        max_concurrent_requests=args.max_concurrent_requests,
                        max_body_bytes=args.max_body_bytes, truncate=not args.no_truncate)
    return serve(model, settings, args.host, args.port)


def _add_serve(sub):
    s = sub.add_parser("serve", help="serve the hosted API's REST route and OpenAI's /v1/embeddings over HTTP")
    s.add_argument("--model", help="checkpoint directory or hub id (default $BGE_REF_MODEL, else bge-large-en-v1.5)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health "
                                     "(default $BGE_REF_API_KEY; none: no key)")
    s.add_argument("--served-model-name", action="append", metavar="NAME",
                   help="a model name clients may ask for (repeatable; replaces the default: the hub id or "
                        "directory name, plus @cf/baai/bge-large-en-v1.5 for BAAI/bge-large-en-v1.5)")
    s.add_argument("--max-batch-tokens", type=int, default=16384, help="padded tokens (batch x longest) per batch")
    s.add_argument("--max-batch-size", type=int, default=32, help="texts per batch (encode()'s batch_size)")
    s.add_argument("--max-concurrent-requests", type=int, default=512, help="in flight; past it, 429 at once")
    s.add_argument("--max-body-bytes", type=int, default=2_000_000, help="larger bodies get 413 before parsing")
    s.add_argument("--no-truncate", action="store_true", help="a text over the max length is a 400, not truncated")
    s.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="compute dtype, as load()")
    s.add_argument("--weights-dtype", choices=["float16", "float32", "float64"], help="weight storage, as load()")
    s.set_defaults(func=_serve)


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
    _add_serve(sub)
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
