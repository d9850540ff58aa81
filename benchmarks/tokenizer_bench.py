"""bge_ref's pure-Python tokenizer against its peers on this machine, in one run.

    python benchmarks/tokenizer_bench.py                 # print the tables
    python benchmarks/tokenizer_bench.py --write-readme  # and replace the tokenizer region of docs/reports/tokenizer.md with them

Corpus: the standard library's pydoc_data.topics (79 texts, 460 KB of English prose, Python code and
tables), every text whole (no truncation), [CLS] and [SEP] included. Peers: `tokenizers` on one thread
(RAYON_RS_NUM_CPUS=1), and transformers' pure-Python BertTokenizer built from all-MiniLM-L6-v2's vocab.txt
(BertTokenizerLegacy since transformers 5). Each is timed on a fresh instance, built outside the
timing (bge_ref's word cache empty), best of --repeat, peers interleaved. tokens/s counts the ids
`tokenizers` gives, the same for every peer.
Then the share of encode() spent tokenizing, on all-MiniLM-L6-v2 (the smallest model this code runs,
so the largest share): the corpus's paragraphs, embedded with each backend.
"""
from __future__ import annotations

import os

# Before `tokenizers` is imported: one thread for its Rust pool, as the Python tokenizers have.
os.environ["RAYON_RS_NUM_CPUS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import datetime  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from bge_ref.testing.readme import machine, write_region  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARAGRAPHS = 400  # embedded for the encode() share


def seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def peers(directory: Path):
    """name -> a function that builds the tokenizer and returns its texts -> ids function."""
    from tokenizers import Tokenizer as RustTokenizer

    from bge_ref.tokenizer_json import wordpiece_tokenizer
    try:
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as BertTokenizer
    except ImportError:  # transformers 4: BertTokenizer is the pure-Python one
        from transformers import BertTokenizer
    from transformers.utils import logging
    logging.set_verbosity_error()  # "sequence longer than 512" warnings

    def ours():
        wp = wordpiece_tokenizer(directory / "tokenizer.json")
        return lambda texts: [wp.encode(t).ids for t in texts]

    def rust():
        tok = RustTokenizer.from_file(str(directory / "tokenizer.json"))
        tok.no_padding()
        tok.no_truncation()
        return lambda texts: [e.ids for e in tok.encode_batch(texts)]

    def bert_tokenizer():
        tok = BertTokenizer(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
        return lambda texts: [tok.encode(t) for t in texts]

    return {"bge_ref (pure Python)": ours, "tokenizers (Rust, 1 thread)": rust,
            "transformers BertTokenizer (pure Python)": bert_tokenizer}


def encode_share(directory: Path, texts: list[str], repeat: int) -> dict[str, tuple[float, float]]:
    """backend -> (seconds tokenizing, seconds in encode()) for the texts, best of repeat."""
    import bge_ref
    from bge_ref.tokenizer import Tokenizer
    out = {}
    for backend in ("python", "tokenizers"):
        model = bge_ref.load(directory, tokenizer=backend)
        path = directory / "tokenizer.json"
        fresh = [Tokenizer(path, model.max_length, model.config.pad_token_id, backend) for _ in range(repeat)]
        tokenize = min(seconds(lambda: t.encode(texts)) for t in fresh)  # what encode() calls, cold word cache
        embed = min(seconds(lambda: model.encode(texts)) for _ in range(repeat))
        out[backend] = (tokenize, embed)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions per peer (best kept)")
    ap.add_argument("--write-readme", action="store_true", help="replace the tokenizer region of docs/reports/tokenizer.md")
    args = ap.parse_args()
    from pydoc_data.topics import topics

    from bge_ref.testing.checkpoints import minilm_dir
    started = datetime.datetime.now(datetime.timezone.utc)
    directory, texts = minilm_dir(), list(topics.values())
    print(f"tokenizing {sum(map(len, texts)):,} characters...", file=sys.stderr)
    runs, ids = {}, {}
    for _ in range(args.repeat):  # peers interleaved, best of repeat
        for name, make in peers(directory).items():
            tokenize = make()  # built outside the timing; bge_ref's word cache starts empty
            t = time.perf_counter()
            ids[name] = tokenize(texts)
            runs[name] = min(runs.get(name, float("inf")), time.perf_counter() - t)
    reference = ids["tokenizers (Rust, 1 thread)"]
    assert ids["bge_ref (pure Python)"] == reference, "bge_ref's ids differ from tokenizers'"
    tokens = sum(map(len, reference))
    ours = runs["bge_ref (pure Python)"]

    print("encode() on all-MiniLM-L6-v2...", file=sys.stderr)
    paragraphs = [p for t in texts for p in re.split(r"\n\s*\n", t) if len(p.split()) >= 3][:PARAGRAPHS]
    share = encode_share(directory, paragraphs, args.repeat)

    cmd = "python benchmarks/tokenizer_bench.py" + (" --write-readme" if args.write_readme else "") + (
        f" --repeat {args.repeat}" if args.repeat != 3 else "")
    legacy = runs["transformers BertTokenizer (pure Python)"] / ours
    py_tok, py_enc = share["python"]
    lines = [
        f"Measured {started:%Y-%m-%d %H:%M} UTC with `{cmd}` on: {machine('tokenizers', 'transformers')}.",
        f"Corpus: pydoc_data.topics, {len(texts)} texts, {sum(map(len, texts)):,} characters, {tokens:,} tokens "
        "(identical ids from bge_ref and `tokenizers`, checked in the run); best of "
        f"{args.repeat}, on a fresh tokenizer each time.",
        "",
        "| tokenizer | tokens/s | bge_ref's speed over it |",
        "| --- | ---: | ---: |",
        *(f"| {name} | {tokens / t:,.0f} | {t / ours:.2f}x |" for name, t in runs.items()),
        "",
        f"Share of `encode()` spent tokenizing, all-MiniLM-L6-v2, {len(paragraphs)} paragraphs of the corpus "
        f"({sum(min(n, 256) for n in _counts(directory, paragraphs)):,} tokens, batch size 32):",
        "",
        "| tokenizer | tokenizing, s | encode(), s | share |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {b} | {t:.3f} | {e:.3f} | {t / e:.1%} |" for b, (t, e) in share.items()),
        "",
        "| measure | target | this run | met |",
        "| --- | --- | --- | --- |",
        f"| Python tokenizer vs transformers' pure-Python BertTokenizer | >= 1.0x | {legacy:.2f}x | "
        f"{'yes' if legacy >= 1.0 else '**no**'} |",
        f"| tokenizing, share of encode() on all-MiniLM-L6-v2 (Python tokenizer) | <= 5% | {py_tok / py_enc:.1%} | "
        f"{'yes' if py_tok / py_enc <= 0.05 else '**no**'} |",
    ]
    table = "\n".join(lines)
    print(table)
    if args.write_readme:
        write_region("tokenizer", table)


def _counts(directory, texts):
    import bge_ref
    return bge_ref.load(directory).count_tokens(texts)


if __name__ == "__main__":
    main()
