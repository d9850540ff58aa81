"""The corpus job's defaults and fixed names: the one source for the API, the CLI and the docs."""
from ..embedder import TOKENIZE_CHUNK

FORMAT = 2                # of the manifest and the parts directory (1: the input hash also covered its name)
BATCH_SIZE = 32           # texts per forward, as encode()'s default
WINDOW = TOKENIZE_CHUNK   # texts sorted by length together, as encode() sorts them
CHUNK_TOKENS = 8192       # padded tokens per committed chunk: ~30 s of bge-large on 2 cores
CHUNK_TEXTS = 1024        # and at most this many texts
PROGRESS_EVERY = 10.0     # seconds between progress lines when stderr is not a terminal
KINDS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
PARQUET_EXTRA = 'pip install "bge-ref[parquet]"'
RAY_EXTRA = 'pip install "bge-ref[ray]"'
