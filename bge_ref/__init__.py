"""bge_ref: a pure-NumPy reference implementation of the BAAI/bge-large-en-v1.5 text embedding model."""
from .config import BertConfig
from .embedder import QUERY_INSTRUCTION, Embedder, load
from .errors import BgeRefError, CheckpointError, InputError

__version__ = "0.1.0"
__all__ = ["load", "Embedder", "BertConfig", "QUERY_INSTRUCTION", "BgeRefError", "InputError", "CheckpointError"]
