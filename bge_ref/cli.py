"""Command line: `bge-ref embed`, `bge-ref info` (and `bge-ref verify`, see verify.py)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from .errors import BgeRefError, InputError


def _stdin_lines() -> list[str]:
    """Non-blank lines of stdin, decoded as UTF-8 (a bad byte is an InputError naming the line)."""
    lines = []
    for n, raw in enumerate(sys.stdin.buffer, 1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise InputError(f"stdin line {n} is not valid UTF-8 (byte {e.start}: {e.reason})") from None
        if line.strip():
            lines.append(line)
    return lines


def _embed(args) -> int:
    from .embedder import QUERY_INSTRUCTION, load
    texts = args.text or _stdin_lines()
    if not texts:
        raise SystemExit("bge-ref embed: no text given (pass TEXT arguments or lines on stdin)")
    model = load(args.model)
    pooling = args.pooling or model.pooling
    vectors = model.encode(texts, pooling=pooling, normalize=not args.no_normalize,
                           batch_size=args.batch_size, prompt=QUERY_INSTRUCTION if args.query else None)
    json.dump({"shape": list(vectors.shape), "data": vectors.tolist(), "pooling": pooling}, sys.stdout)
    sys.stdout.write("\n")
    return 0


def _info(args) -> int:
    from .embedder import load
    model = load(args.model)
    info = {"model": model.name, "config": dataclasses.asdict(model.config), "pooling": model.pooling,
            "normalize": model.normalize, "max_length": model.max_length, "dtype": str(model.dtype)}
    print(json.dumps(info, indent=2))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bge-ref", description="Pure-NumPy BERT text embeddings (bge-large-en-v1.5).")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("embed", help="embed texts (arguments, or one per stdin line) and print JSON")
    e.add_argument("text", nargs="*", help="texts to embed; read from stdin, one per line, when none")
    e.add_argument("--model", help="checkpoint directory or hub id (default $BGE_REF_MODEL, else bge-large-en-v1.5)")
    e.add_argument("--pooling", choices=["cls", "mean"], help="default: the checkpoint's own")
    e.add_argument("--no-normalize", action="store_true", help="return raw pooled vectors")
    e.add_argument("--query", action="store_true", help="prepend bge's retrieval instruction (for short queries)")
    e.add_argument("--batch-size", type=int, default=32)
    e.set_defaults(func=_embed)
    i = sub.add_parser("info", help="print the resolved config, pooling and max length")
    i.add_argument("--model")
    i.set_defaults(func=_info)
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
