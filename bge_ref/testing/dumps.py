"""Other implementations' dumps, for tests/test_compare.py and scripts/compare_tolerances.py.

Each function runs some implementation of the checkpoint on a tokenized batch and returns its run in
the documented layout (bge_ref/verify.py): what anyone would write to a dump file. Needs the `test`
extra (torch, transformers, onnx, onnxruntime).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..pooling import l2_normalize
from ..verify import IDS, load_transformers, run_transformers


def transformers_run(directory, batch, dtype="float32", pooling="cls", **config) -> dict:
    """transformers' BertModel in `dtype`; `config` overrides config.json (hidden_act=, layer_norm_eps=)."""
    return run_transformers(load_transformers(directory, **config), batch, dtype, pooling)


def export_onnx(directory, out: Path, batch) -> Path:
    """The checkpoint's BertModel exported to ONNX with every hidden state as an output
    (hidden_states.0 .. hidden_states.L), as a third party would export it for their runtime."""
    import torch
    model = load_transformers(directory)
    L = model.config.num_hidden_layers

    class AllStates(torch.nn.Module):  # the exporter wants positional inputs and a flat tuple of outputs
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                          output_hidden_states=True, return_dict=True).hidden_states

    names = [f"hidden_states.{i}" for i in range(L + 1)]
    args = tuple(torch.from_numpy(np.asarray(batch[k])) for k in IDS)
    torch.onnx.export(AllStates(model), args, str(out), dynamo=False, opset_version=17, input_names=list(IDS),
                      output_names=names, dynamic_axes={n: {0: "b", 1: "s"} for n in list(IDS) + names})
    return out


def quantize_int8(src: Path, out: Path) -> Path:
    """ONNX Runtime's dynamic quantization: int8 weights for every MatMul, activations quantized per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8)
    return out


def onnx_run(path: Path, batch, pooling="cls", threads=2) -> dict:
    """Run an exported model in ONNX Runtime (CPU) and pool in NumPy: a dump as its user would write it."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    feeds = {k: np.asarray(batch[k], np.int64) for k in IDS}
    run = dict(zip(names, sess.run(None, feeds)))
    last = run[names[-1]]                                                    # (B, S, D)
    m = feeds["attention_mask"][..., None].astype(last.dtype)                # (B, S, 1)
    pooled = {"cls": last[:, 0], "mean": (last * m).sum(1) / np.maximum(m.sum(1), 1e-9)}
    return {**feeds, **run, "last_hidden_state": last, "pooled.cls": pooled["cls"], "pooled.mean": pooled["mean"],
            "embedding": l2_normalize(pooled[pooling])}
