"""transformers' BertModel as the other side of `bge-ref verify`: load it, run it in the dump layout,
and compare bge_ref with it. torch and transformers are imported inside the functions that need
them; their absence is a MissingDependencyError with the fix, not an ImportError."""
from __future__ import annotations

import numpy as np

from ..errors import BgeRefError, InputError
from .reference import DEFAULT_TEXTS, layout, run_ours
from .stages import IDS, TOLERANCES, Report, compare_stages


DTYPES = ("float32", "float64")  # the compute dtypes bge_ref and transformers are compared in


class MissingDependencyError(BgeRefError):
    """Verification needs torch and transformers (the `test` extra), which are not installed."""


def _torch():
    try:
        import torch
        import transformers
    except ImportError as e:
        raise MissingDependencyError(
            f"verification compares against transformers, which needs torch and transformers ({e}); "
            "install them with: pip install torch==2.13.0 && pip install -e '.[test]'") from None
    transformers.logging.set_verbosity_error()  # no load report for the pooler a BertModel skips
    transformers.logging.disable_progress_bar()
    return torch, transformers


def load_transformers(directory, **config):
    """transformers' BertModel (no pooler, eval mode, float32) from a checkpoint directory; `config`
    overrides config.json entries (hidden_act=..., layer_norm_eps=...)."""
    _, transformers = _torch()
    return transformers.BertModel.from_pretrained(str(directory), add_pooling_layer=False, **config).eval()


def run_transformers(model, batch, dtype="float32", pooling="cls") -> dict:
    """transformers' run in the documented layout; pooling done in torch as sentence-transformers does.
    The model is cast to `dtype` in place (as model.double() does)."""
    torch, _ = _torch()
    model.to(getattr(torch, dtype))
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(np.array(batch[k])) for k in IDS if k in batch},  # a copy: dumps are read-only
                    output_hidden_states=True)
        h = out.last_hidden_state                                       # (B, S, D)
        m = torch.from_numpy(np.array(batch["attention_mask"])).unsqueeze(-1).to(h.dtype)  # (B, S, 1)
        pooled = {"cls": h[:, 0], "mean": (h * m).sum(1) / m.sum(1).clamp(min=1e-9)}
        embedding = torch.nn.functional.normalize(pooled[pooling], dim=-1)
    return layout(batch, [s.numpy() for s in out.hidden_states], {k: v.numpy() for k, v in pooled.items()},
                   embedding.numpy())


def compare(model, texts=None, dtype="float32", *, hf_model=None, batch=None, forward=None) -> Report:
    """bge_ref against transformers on one tokenized batch, in `dtype`: a Report of one Row per stage.

    model: a checkpoint directory (or an Embedder already loaded in `dtype`). hf_model: a loaded
    transformers BertModel to reuse (cast to `dtype` in place); by default loaded from the directory.
    forward: bge_ref.load's forward= ("fast" | "reference"); by default load's own default.
    """
    from ..embedder import Embedder, load
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    _torch()  # fail before the (possibly slow) load if torch is missing
    ours = model if isinstance(model, Embedder) else load(model, dtype=dtype, **({"forward": forward} if forward else {}))
    if ours.dtype != np.dtype(dtype):
        raise InputError(f"the Embedder computes in {ours.dtype}, but dtype={dtype!r} was asked for")
    batch = batch if batch is not None else ours.tokenize(list(texts or DEFAULT_TEXTS))
    hf = hf_model if hf_model is not None else load_transformers(ours.name)
    ref = run_transformers(hf, batch, dtype, ours.pooling)
    meta = {"model": ours.name, "dtype": dtype} | ({"forward": forward} if forward else {})
    return compare_stages(ref, run_ours(ours, batch), TOLERANCES[dtype], title=f"bge_ref vs transformers, {dtype}",
                          meta=meta)
