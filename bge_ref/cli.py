"""Command line: `bge-ref embed`, `info`, `serve`, and the checks `verify`, `reference`, `compare`.

One convention for every subcommand: output on stdout; an error is one line on stderr,
`bge-ref: error: <message naming the text, line, field, file or flag>`, and exit status 2, the same for
bad arguments (`BgeRefParser.error`); exit status 1 means the command ran and its check failed (verify,
compare); Ctrl-C is one line, `bge-ref: interrupted`, and exit status 130 (128 + SIGINT, as shells use).
`parser()` returns the whole argument parser (docs/hooks.py renders the CLI reference from it).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from .errors import BgeRefError, InputError


STDIN_HINT = "bge-ref embed: reading texts from the terminal, one per line; end with Ctrl-D (or pass TEXT arguments)"


def _stdin_lines(skip_blank: bool) -> tuple[list[str], list[int]]:
    """Lines of stdin decoded as UTF-8, and their 1-based line numbers.

    Output rows must line up with input lines, so a blank line is an error naming it, unless
    skip_blank drops it (the numbers then say which lines the rows belong to). Blank lines at the very
    end (an editor's or `echo`'s trailing newline) end the input: no row is lost by ignoring them."""
    if sys.stdin.isatty():  # a person at a terminal would otherwise wait on a silent command
        print(STDIN_HINT, file=sys.stderr, flush=True)
    lines, numbers, blank = [], [], None  # blank: the first blank line not yet followed by a text
    for n, raw in enumerate(sys.stdin.buffer, 1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise InputError(f"stdin line {n} is not valid UTF-8 (byte {e.start}: {e.reason})") from None
        if not line.strip():
            blank = blank or n
            continue
        if blank and not skip_blank:
            raise InputError(f"stdin line {blank} is blank; every line is one text (pass --skip-blank to drop "
                             "blank lines; the output's \"lines\" then lists the line of each row)")
        blank = None
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


def _serve(args) -> int:
    from .embedder import load
    from .server import Settings, bind, serve, served_names  # a BgeRefError naming the serve extra if missing
    for flag in ("max_batch_tokens", "max_batch_size", "max_concurrent_requests", "max_connections",
                 "max_body_bytes", "body_timeout"):
        if not getattr(args, flag) > 0:
            raise InputError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    sock = bind(args.host, args.port)  # a busy port is an error before the model loads
    model = load(args.model, dtype=args.dtype, weights_dtype=args.weights_dtype)
    settings = Settings(served=args.served_model_name or served_names(args.model, model.name),
                        api_key=args.api_key or os.environ.get("BGE_REF_API_KEY") or None,
                        max_batch_tokens=args.max_batch_tokens, max_batch_size=args.max_batch_size,
                        max_concurrent_requests=args.max_concurrent_requests, max_connections=args.max_connections,
                        max_body_bytes=args.max_body_bytes, body_timeout=args.body_timeout,
                        truncate=not args.no_truncate, cors_allow_origins=args.cors_allow_origin or [])
    return serve(model, settings, args.host, args.port, sock)


def _add_serve(sub):
    from .server.settings import DEFAULTS as D  # pure Python: no serve extra needed to build the parser
    s = sub.add_parser("serve", help="serve the hosted API's REST route and OpenAI's /v1/embeddings over HTTP")
    s.add_argument("--model", help="checkpoint directory or hub id (default $BGE_REF_MODEL, else bge-large-en-v1.5)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health and "
                                     "/openapi.json (default $BGE_REF_API_KEY; none: no key)")
    s.add_argument("--served-model-name", action="append", metavar="NAME",
                   help="a model name clients may ask for (repeatable; replaces the default: the hub id or "
                        "directory name, plus @cf/baai/bge-large-en-v1.5 for BAAI/bge-large-en-v1.5)")
    s.add_argument("--max-batch-tokens", type=int, default=D["max_batch_tokens"],
                   help="real tokens per batch: the sum of its texts' token counts, [CLS]/[SEP] included "
                        f"(default {D['max_batch_tokens']})")
    s.add_argument("--max-batch-size", type=int, default=D["max_batch_size"],
                   help=f"texts per batch (encode()'s batch_size; default {D['max_batch_size']})")
    s.add_argument("--max-concurrent-requests", type=int, default=D["max_concurrent_requests"],
                   help=f"embedding requests in flight; past it, 429 at once (default {D['max_concurrent_requests']})")
    s.add_argument("--max-connections", type=int, default=D["max_connections"],
                   help=f"open connections; past it, 503 at once (default {D['max_connections']})")
    s.add_argument("--max-body-bytes", type=int, default=D["max_body_bytes"],
                   help=f"larger bodies get 413 before parsing (default {D['max_body_bytes']})")
    s.add_argument("--body-timeout", type=float, default=D["body_timeout"], metavar="SECONDS",
                   help="a body not received within this after its headers gets 408, and a connection that sends "
                        f"no request within this is closed (default {D['body_timeout']:g})")
    s.add_argument("--cors-allow-origin", action="append", metavar="ORIGIN",
                   help="let browser pages from ORIGIN (e.g. https://app.example; * for any) call the server "
                        "(repeatable; default: none, no CORS headers)")
    s.add_argument("--no-truncate", action="store_true", help="a text over the max length is a 400, not truncated")
    s.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="compute dtype, as load()")
    s.add_argument("--weights-dtype", choices=["float16", "float32", "float64"], help="weight storage, as load()")
    s.set_defaults(func=_serve)


# -- verify, reference, compare: checking an implementation stage by stage (bge_ref/verify.py) ------
def _texts_file(path) -> list[str]:
    """One text per line of a UTF-8 file; a blank line is an error naming it (every line is one text)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"--texts-file {path}: cannot read ({e.strerror})") from None
    texts = []
    for n, line in enumerate(raw.splitlines(), 1):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"--texts-file {path}: line {n} is not valid UTF-8 (byte {e.start}: {e.reason})") from None
        if not line.strip():
            raise InputError(f"--texts-file {path}: line {n} is blank; every line is one text")
        texts.append(line)
    if not texts:
        raise InputError(f"--texts-file {path}: no texts in it")
    return texts


def _texts(args):
    return _texts_file(args.texts_file) if args.texts_file else args.texts


def _print_report(report, as_json: bool, header: str = ""):
    """The stage table (or JSON), the verdict last; exit status 0 when every stage passed, else 1."""
    if as_json:
        json.dump(report.to_dict(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        lines = [header] if header else []
        lines += [f"tokenization differs: {d}" for d in report.tokens]
        lines += [f"note: {n}" for n in report.notes] + [report.table(), report.verdict]
        print("\n".join(lines))
    return 0 if report.ok else 1


def _verify(args) -> int:
    from .verify import DEFAULT_TEXTS, compare
    report = compare(args.model, _texts(args) or DEFAULT_TEXTS, args.dtype, forward=args.forward)
    B, S = report.shape
    return _print_report(report, args.json, f"{report.meta['model']}: {B} texts padded to {S} tokens, real tokens only")


def _reference(args) -> int:
    from .verify import write_reference
    run, meta = write_reference(args.output, args.model, _texts(args), args.dtype)
    B, S = run["attention_mask"].shape
    print(f"wrote {args.output}: {len(run)} tensors, {B} texts padded to {S} tokens, {meta['dtype']}, "
          f"{meta['model']} (config_hash {meta['config_hash']})")
    return 0


def _compare(args) -> int:
    from .verify import compare_dumps
    report = compare_dumps(args.reference, args.theirs, args.tolerance)
    header = f"{args.theirs} against {args.reference}: {report.shape[0]} texts, real tokens only; tolerance "
    return _print_report(report, args.json, header + report.meta["tolerance"])


def _add_check_commands(sub):
    from .verify import PRESETS, TOLERANCES
    model_help = "checkpoint directory or hub id (default $BGE_REF_MODEL, else bge-large-en-v1.5)"
    v = sub.add_parser("verify", help="compare every layer with transformers' BertModel (needs torch)")
    v.add_argument("--model", help=model_help)
    texts = v.add_mutually_exclusive_group()
    texts.add_argument("--texts", nargs="+", metavar="TEXT", help="texts (default: a built-in mixed batch)")
    texts.add_argument("--texts-file", metavar="FILE", help="a UTF-8 file, one text per line")
    v.add_argument("--dtype", choices=sorted(TOLERANCES), default="float32")
    v.add_argument("--forward", choices=["fast", "reference"], help="bge_ref's forward (default: load()'s)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=_verify)
    r = sub.add_parser("reference", help="write every stage of bge_ref's forward for some texts (safetensors)")
    r.add_argument("--model", help=model_help)
    texts = r.add_mutually_exclusive_group(required=True)
    texts.add_argument("--texts", nargs="+", metavar="TEXT", help="the texts, one batch")
    texts.add_argument("--texts-file", metavar="FILE", help="a UTF-8 file, one text per line")
    r.add_argument("-o", "--output", required=True, metavar="FILE", help="the .safetensors file to write")
    r.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    r.set_defaults(func=_reference)
    c = sub.add_parser("compare", help="compare a dump (.safetensors or .npz) with a reference, stage by stage")
    c.add_argument("reference", help="the reference .safetensors (bge-ref reference)")
    c.add_argument("theirs", help="the dump to check, .safetensors or .npz, any subset of the documented names")
    c.add_argument("--tolerance", default="float32", metavar="|".join(PRESETS) + "|ABS",
                   help="a preset (default float32) or one max abs diff for every stage")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=_compare)


class BgeRefParser(argparse.ArgumentParser):
    """argparse with the one-line error convention: `bge-ref: error: <what, naming the flag>`, exit 2,
    and no usage dump (`--help` still shows it). Subparsers inherit the class."""

    def error(self, message):
        sub = self.prog.partition(" ")[2]  # "bge-ref embed" -> "embed": which --help to read
        hint = f" (see bge-ref {sub} --help)" if sub else " (see bge-ref --help)"
        self.exit(2, f"bge-ref: error: {message}{hint}\n")


def positive_int(value: str) -> int:
    """An argparse type: a positive integer, so a bad value is reported by the flag's name."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return n


def parser() -> argparse.ArgumentParser:
    """The whole `bge-ref` argument parser, every subcommand included."""
    from . import __version__
    p = BgeRefParser(prog="bge-ref", description="Pure-NumPy BERT text embeddings (bge-large-en-v1.5).")
    p.add_argument("--version", action="version", version=f"bge-ref {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    e = sub.add_parser("embed", help="embed texts (arguments, or one per stdin line) and print JSON",
                       description="Embed texts given as arguments, or one per line of stdin, and print "
                                   "one JSON object: {\"shape\", \"data\", \"pooling\"}.")
    e.add_argument("text", nargs="*", help="texts to embed; read from stdin, one per line, when none")
    e.add_argument("--model", help="checkpoint directory or hub id (default $BGE_REF_MODEL, else bge-large-en-v1.5)")
    e.add_argument("--pooling", choices=["cls", "mean"], help="default: the checkpoint's own")
    e.add_argument("--no-normalize", action="store_true", help="return raw pooled vectors")
    e.add_argument("--query", action="store_true", help="prepend bge's retrieval instruction (for short queries)")
    e.add_argument("--batch-size", type=positive_int, default=32, help="texts per forward pass")
    e.add_argument("--skip-blank", action="store_true",
                   help="drop blank stdin lines (an error otherwise); the output's \"lines\" gives each row's line")
    e.set_defaults(func=_embed)
    i = sub.add_parser("info", help="print the resolved config, pooling and max length",
                       description="Print the checkpoint's resolved config, pooling, normalization, "
                                   "max length and dtype as JSON.")
    i.add_argument("--model", help="checkpoint directory or hub id (default $BGE_REF_MODEL, else bge-large-en-v1.5)")
    i.set_defaults(func=_info)
    from . import corpus  # its defaults; numpy only, as the package
    c = sub.add_parser("embed-corpus", help="embed a .txt/.jsonl/.parquet corpus into one .npy, resumably (README)")
    c.add_argument("input", help=".txt (one text per line), .jsonl or .parquet (the --text-field)")
    c.add_argument("-o", "--output", required=True, help="OUTPUT.npy: float32 (n, D) in input order")
    c.add_argument("--model", help="checkpoint directory or hub id (default $BGE_REF_MODEL, else bge-large-en-v1.5)")
    c.add_argument("--text-field", default="text", help="the .jsonl field or .parquet column (default: text)")
    c.add_argument("--pooling", choices=["cls", "mean"], help="default: the checkpoint's own")
    c.add_argument("--query", action="store_true", help="prepend bge's retrieval instruction")
    c.add_argument("--batch-size", type=int, default=corpus.BATCH_SIZE)
    c.add_argument("--skip-bad", action="store_true",
                   help="record bad lines in OUTPUT.bad.jsonl instead of stopping (rows' lines: OUTPUT.lines.npy)")
    c.add_argument("--overwrite", action="store_true", help="delete any earlier run's output and start over")
    c.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                   help="run on a Ray cluster: ADDRESS, else a running one, else a local one (bge-ref[ray]); "
                   "put it after INPUT, or write --ray=ADDRESS")
    c.add_argument("--actors", type=int, help="with --ray: embedding actors (default: the cluster's CPUs - 1)")
    c.add_argument("--window", type=int, default=corpus.WINDOW,
                   help="texts sorted by length together (default %(default)s, as encode)")
    c.add_argument("--chunk-tokens", type=int, default=corpus.CHUNK_TOKENS,
                   help="padded tokens per committed chunk: the most work a kill can lose (default %(default)s)")
    c.add_argument("--progress-every", type=float, default=corpus.PROGRESS_EVERY, metavar="SECONDS",
                   help="when stderr is not a terminal, a progress line this often (default %(default)s)")
    c.add_argument("--quiet", action="store_true", help="no progress on stderr")
    c.set_defaults(func=_embed_corpus)
    _add_serve(sub)
    _add_check_commands(sub)
    return p


def main(argv=None) -> int:
    try:
        args = parser().parse_args(argv)
        return args.func(args)
    except BgeRefError as err:
        print(f"bge-ref: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback
        print("bge-ref: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left early (`bge-ref embed ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as the Python docs advise
        return 1


if __name__ == "__main__":
    sys.exit(main())
