"""embed-corpus --ray: Ray Data reads the pending windows and a pool of actors embeds them into the
same chunk files a local run writes; the driver then assembles them as a local run does."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .batches import embed_window
from .constants import RAY_EXTRA
from .readers import Source, window_texts
from .store import CorpusError


def run_ray(address, src, pending, parts, job, model, actors, progress):
    """Ray Data reads the pending windows (one read task each) and a pool of actors, each loading the
    checkpoint once, embeds them into parts/ exactly as a local run does. Needs parts/ and the input on
    a filesystem every node sees. Actors that die are restarted and their windows retried by Ray Data;
    chunks committed before are kept."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise InputError(f"--ray needs Ray Data: {RAY_EXTRA}") from None
    if not pending:
        return
    import logging
    level = logging.ERROR if progress.quiet else logging.WARNING  # Ray's INFO lines would bury ours
    connected_here = not ray.is_initialized()
    if connected_here:  # a bare --ray joins a running cluster (RAY_ADDRESS, `ray start`) or starts one
        ray.init(address=None if address is True else address, log_to_driver=False, logging_level=level)
    logging.getLogger("ray.data").setLevel(level)
    try:
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < 2:
            raise CorpusError(f"the Ray cluster has {cpus:g} CPUs; embed-corpus needs 2 or more "
                              "(one is left to Ray Data's read tasks)")
        actors = actors or max(1, int(cpus) - 1)
        per_actor = (cpus - 1) / actors  # leave Ray Data a CPU: with none, a 2-CPU cluster deadlocks
        threads = max(1, int(per_actor))
        env = {k: str(threads) for k in ("BGE_REF_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        # A checkpoint directory must be a path every node sees; a hub id is found in each node's cache.
        from ..hub import DEFAULT_MODEL
        model_ref = str(model) if model is not None else os.environ.get("BGE_REF_MODEL") or DEFAULT_MODEL
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours is on stderr
        specs = [{"window": w, "offset": o, "number": n, "count": c} for w, o, n, c in pending]
        ds = ray.data.from_items(specs, override_num_blocks=len(specs))
        ds = ds.map_batches(_read_windows, batch_size=1, fn_kwargs={"src": src})
        ds = ds.map_batches(_WindowEmbedder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
                            num_cpus=per_actor, runtime_env={"env_vars": env},
                            fn_constructor_kwargs={"model": model_ref, "threads": threads, "parts": str(parts),
                                                   "job": job})
        progress.say(f"on Ray: {len(pending)} windows, {actors} actors of {per_actor:g} CPUs "
                     f"({threads} BLAS thread{'s' if threads > 1 else ''} each)")
        try:
            for row in ds.iter_rows():
                progress.measure(int(row["window"]), int(row["window_tokens"]), int(row["committed_tokens"]))
                progress.update(int(row["texts"]), int(row["tokens"]))
        except Exception as e:  # Ray wraps the actor's error; report its message, not Ray's traceback
            cause = e
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise CorpusError(f"the Ray job failed: {str(cause).strip().splitlines()[-1]}") from None
    finally:
        if connected_here:
            ray.shutdown()


def _read_windows(batch, src: Source):
    """Ray Data read task: the texts of each window spec, as one JSON list per window."""
    texts = [json.dumps(window_texts(src, int(o), int(n), int(c)))
             for o, n, c in zip(batch["offset"], batch["number"], batch["count"])]
    return {"window": np.asarray(batch["window"]), "texts": np.array(texts, dtype=object)}


class _WindowEmbedder:
    """Ray Data actor: loads the checkpoint once, with BLAS on the CPUs Ray gave it, then embeds windows."""

    def __init__(self, model, threads, parts, job):
        from .. import hub
        from ..embedder import load
        from .job import model_sha256
        try:
            from threadpoolctl import threadpool_limits
            self._limits = threadpool_limits(threads, user_api="blas")
        except ImportError:  # the env vars set for this actor already bound OpenBLAS
            self._limits = None
        directory = hub.resolve(model)
        sha = model_sha256(directory)
        if sha != job.model_sha256:
            raise CorpusError(f"{directory}: the checkpoint on this node (sha256 {sha[:12]}...) is not the "
                              f"driver's ({job.model_sha256[:12]}...)")
        self.model, self.parts, self.job = load(directory), Path(parts), job

    def __call__(self, batch):
        rows = []  # per window: texts and tokens embedded, tokens in all, tokens committed before
        for w, payload in zip(batch["window"], batch["texts"]):
            seen = []
            done = list(embed_window(self.model, json.loads(payload), int(w), self.parts, self.job,
                                     lambda _, tokens, committed: seen.extend((tokens, committed))))
            rows.append((sum(d[0] for d in done), sum(d[1] for d in done), *seen))
        texts, tokens, window_tokens, committed_tokens = (np.array(c, dtype=np.int64) for c in zip(*rows))
        return {"window": np.asarray(batch["window"]), "texts": texts, "tokens": tokens,
                "window_tokens": window_tokens, "committed_tokens": committed_tokens}
