"""Progress of a corpus job on stderr: a bar redrawn in place on a terminal, a line now and then
otherwise."""
from __future__ import annotations

import sys
import time

from .constants import PROGRESS_EVERY


def hms(seconds) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """Texts and tokens done, tokens/s and ETA on stderr: a bar redrawn in place on a terminal,
    a line every `every` seconds otherwise; nothing when quiet."""

    def __init__(self, total, done=0, *, quiet=False, every=PROGRESS_EVERY, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.done, self.start_done, self.tokens = total, done, done, 0
        self.quiet, self.every = quiet, every
        self.tty = self.stream.isatty()
        self.t0 = self.last = time.monotonic()

    def say(self, message):
        if not self.quiet:
            print(f"embed-corpus: {message}", file=self.stream, flush=True)

    def update(self, texts, tokens):
        self.done, self.tokens = self.done + texts, self.tokens + tokens
        now = time.monotonic()
        if not self.quiet and now - self.last >= (0.2 if self.tty else self.every):
            self.last = now
            self._draw(now)

    def _draw(self, now):
        elapsed = max(now - self.t0, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        eta = hms((self.total - self.done) / rate) if rate > 0 else "?"
        frac = self.done / self.total if self.total else 1.0
        stats = (f"{self.done:,}/{self.total:,} texts, {self.tokens:,} tokens, "
                 f"{self.tokens / elapsed:,.0f} tokens/s, ETA {eta}")
        if self.tty:
            bar = "#" * int(30 * frac)
            print(f"\r{frac:4.0%} |{bar:<30}| {stats}\033[K", end="", file=self.stream, flush=True)
        else:
            print(f"embed-corpus: {frac:.1%} {stats}", file=self.stream, flush=True)

    def close(self, message):
        if self.quiet:
            return
        if self.tty:
            self._draw(time.monotonic())
            print(file=self.stream)
        elapsed = time.monotonic() - self.t0
        self.say(f"{message}: {self.done - self.start_done:,} texts, {self.tokens:,} tokens embedded in "
                 f"{hms(elapsed)} ({self.tokens / max(elapsed, 1e-9):,.0f} tokens/s)")
