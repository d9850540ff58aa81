"""The server's counters and histograms, rendered in Prometheus' text format at GET /metrics."""
from __future__ import annotations

import bisect
import math
import threading


class Metrics:
    """Counters and histograms, updated from the event loop and the worker (hence the lock)."""
    BUCKETS = {
        "bge_ref_batch_size": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
        "bge_ref_queue_seconds": (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        "bge_ref_request_seconds": (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    }
    HELP = {
        "bge_ref_requests_total": ("counter", "HTTP requests answered, by route and status (499: the client left)"),
        "bge_ref_texts_embedded_total": ("counter", "texts (or token-id inputs) computed"),
        "bge_ref_tokens_embedded_total": ("counter", "tokens computed, [CLS] and [SEP] included, after truncation"),
        "bge_ref_texts_dropped_total": ("counter", "texts dropped before computing: their client left, or their request had already failed"),
        "bge_ref_compute_seconds_total": ("counter", "time the worker spent computing batches (its busy time)"),
        "bge_ref_requests_in_flight": ("gauge", "requests admitted and not yet answered"),
        "bge_ref_batch_size": ("histogram", "texts per computed batch"),
        "bge_ref_queue_seconds": ("histogram", "from a request's arrival at the worker to its first batch"),
        "bge_ref_request_seconds": ("histogram", "request latency, by route"),
    }

    def __init__(self):
        self.lock = threading.Lock()
        self.values: dict[tuple, float] = {}              # (name, labels) -> value
        self.hists: dict[tuple, list] = {}                # (name, labels) -> [bucket counts..., sum, count]

    def add(self, name, value=1, **labels):
        key = (name, tuple(sorted(labels.items())))
        with self.lock:
            self.values[key] = self.values.get(key, 0) + value

    def observe(self, name, value, **labels):
        key, bounds = (name, tuple(sorted(labels.items()))), self.BUCKETS[name]
        with self.lock:
            h = self.hists.setdefault(key, [0] * (len(bounds) + 3))
            h[bisect.bisect_left(bounds, value)] += 1     # the first bucket whose bound is >= value
            h[-2] += value
            h[-1] += 1

    def render(self) -> str:
        def fmt(labels):
            return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else ""
        lines = []
        with self.lock:
            for name, (kind, text) in self.HELP.items():
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                if kind != "histogram":
                    rows = sorted((k[1], v) for k, v in self.values.items() if k[0] == name) or [((), 0)]
                    lines += [f"{name}{fmt(labels)} {v:g}" for labels, v in rows]
                    continue
                for (n, labels), h in sorted(self.hists.items()):
                    if n != name:
                        continue
                    bounds, total = self.BUCKETS[name], 0
                    for bound, count in zip([*bounds, math.inf], h):
                        total += count
                        le = "+Inf" if bound == math.inf else f"{bound:g}"
                        lines.append(f"{name}_bucket{fmt((*labels, ('le', le)))} {total}")
                    lines += [f"{name}_sum{fmt(labels)} {h[-2]:g}", f"{name}_count{fmt(labels)} {h[-1]}"]
        return "\n".join(lines) + "\n"
