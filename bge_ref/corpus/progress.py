"""Progress of a corpus job on stderr: a bar redrawn in place on a terminal, a line now and then
otherwise, with an ETA from tokens.

Texts run shortest first within a window, so texts done say little about the time left: the ETA is
the tokens left over the tokens/s so far. A window's tokens are known once it is tokenized; for the
windows not yet tokenized they are estimated from their characters, at the tokens per character of
the windows measured so far."""
from __future__ import annotations

import sys
import time

from .constants import PROGRESS_EVERY


def hms(seconds) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """Texts and tokens done, tokens/s and ETA on stderr: a bar redrawn in place on a terminal,
    a line every `every` seconds otherwise; nothing when quiet (but for warn)."""

    def __init__(self, total=0, done=0, *, window_chars=(), pending=(), quiet=False, every=PROGRESS_EVERY,
                 stream=None, clock=time.monotonic):
        self.stream = stream or sys.stderr
        self.total, self.done, self.start_done, self.tokens = total, done, done, 0
        self.chars, self.pending = list(window_chars), set(pending)  # per window; windows left to embed
        self.measured: dict[int, int] = {}  # window -> its tokens
        self.skipped_tokens = 0             # tokens of pending windows committed by an earlier run
        self.quiet, self.every, self.clock = quiet, every, clock
        self.tty = self.stream.isatty()
        self.t0 = self.last = clock()

    def say(self, message):
        if not self.quiet:
            print(f"embed-corpus: {message}", file=self.stream, flush=True)

    def warn(self, message):
        """Said even when quiet: something was wrong and was repaired."""
        if self.tty and not self.quiet:
            print(file=self.stream)  # below the bar
        print(f"embed-corpus: {message}", file=self.stream, flush=True)

    def measure(self, window, tokens, committed=0):
        """Window `window` holds `tokens` tokens, `committed` of them already embedded by an earlier run."""
        self.measured[window] = tokens
        self.skipped_tokens += committed

    def update(self, texts, tokens):
        self.done, self.tokens = self.done + texts, self.tokens + tokens
        now = self.clock()
        if not self.quiet and now - self.last >= (0.2 if self.tty else self.every):
            self.last = now
            self._draw(now)

    def tokens_left(self) -> tuple[float, float] | None:
        """(tokens left, tokens in all) estimated, or None before any window is measured."""
        chars = sum(self.chars[w] for w in self.measured)
        if not chars:
            return None
        per_char = sum(self.measured.values()) / chars
        estimate = [self.measured.get(w, c * per_char) for w, c in enumerate(self.chars)]
        left = sum(estimate[w] for w in self.pending) - self.skipped_tokens - self.tokens
        return max(left, 0.0), sum(estimate)

    def _draw(self, now):
        elapsed = max(now - self.t0, 1e-9)
        rate = self.tokens / elapsed
        estimate = self.tokens_left()
        if estimate is None:
            eta, frac = "?", self.done / self.total if self.total else 1.0
        else:
            left, whole = estimate
            eta = hms(left / rate) if rate > 0 else "?"
            frac = 1 - left / whole if whole else 1.0
        stats = f"{self.done:,}/{self.total:,} texts, {self.tokens:,} tokens, {rate:,.0f} tokens/s, ETA {eta}"
        if self.tty:
            bar = "#" * int(30 * frac)
            print(f"\r{frac:4.0%} |{bar:<30}| {stats}\033[K", end="", file=self.stream, flush=True)
        else:
            print(f"embed-corpus: {frac:.1%} {stats}", file=self.stream, flush=True)

    def close(self, message):
        if self.quiet:
            return
        if self.tty:
            self._draw(self.clock())
            print(file=self.stream)
        elapsed = self.clock() - self.t0
        self.say(f"{message}: {self.done - self.start_done:,} texts, {self.tokens:,} tokens embedded in "
                 f"{hms(elapsed)} ({self.tokens / max(elapsed, 1e-9):,.0f} tokens/s)")
