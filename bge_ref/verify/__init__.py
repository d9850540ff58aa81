"""Stage-by-stage verification, behind `bge-ref verify`, `reference` and `compare`, in three rooms:

- `stages`: the NumPy comparison of two forward passes in the dump layout (compare_stages, Report,
  the one TOLERANCES table), needing nothing but NumPy;
- `reference`: bge_ref's own run in that layout, reference files, and comparing two dump files;
- `torch_run`: transformers' BertModel as the other side of `bge-ref verify` (torch imported lazily).

The float64 oracle study that the Verification report and the accuracy tests run lives with them, in
bge_ref.testing.oracle.
"""
from .reference import (DEFAULT_TEXTS, FORMAT, compare_dumps, config_hash, layout, reference, run_ours,
                        write_reference)
from .stages import (IDS, TOLERANCES, Report, Row, TokenDiff, compare_stages, diff_stage, format_table, stage_order,
                     states, token_diffs, tolerance)
from .torch_run import DTYPES, MissingDependencyError, compare, load_transformers, run_transformers

__all__ = ["DEFAULT_TEXTS", "DTYPES", "FORMAT", "IDS", "TOLERANCES", "MissingDependencyError", "Report", "Row",
           "TokenDiff", "compare", "compare_dumps", "compare_stages", "config_hash", "diff_stage", "format_table",
           "layout", "load_transformers", "reference", "run_ours", "run_transformers", "stage_order", "states",
           "token_diffs", "tolerance", "write_reference"]
