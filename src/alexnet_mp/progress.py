"""Progress of long work (prepare, training epochs, evaluation) that reads well anywhere.

On a terminal it is a tqdm bar. When stdout is not a terminal (a log file, a batch
scheduler), carriage-return bars turn into one unreadable line, so it prints a plain
line every ``every_steps`` units or ``every_seconds`` seconds instead: done/total,
rate and ETA.

    with Progress(total=len(loader), desc="epoch 3/90", unit="batch", scale=128, scale_unit="images") as p:
        for batch in loader:
            ...
            p.update(1, loss=f"{loss:.3f}")
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

__all__ = ["Progress", "format_seconds"]


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class Progress:
    """A bar on a terminal, plain lines elsewhere; nothing at all when ``enabled`` is false.

    ``scale`` converts units to the reported rate's unit (``scale_unit``), e.g. batches
    of 128 reported as images/s. ``initial`` is where a resumed piece of work starts.
    """

    def __init__(self, total: int | None, desc: str, *, unit: str = "it", enabled: bool = True,
                 initial: int = 0, scale: float = 1.0, scale_unit: str | None = None,
                 every_steps: int = 0, every_seconds: float = 30.0, terminal: bool | None = None, stream=None):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.n, self.start_n = initial, initial
        self.scale, self.rate_unit = scale, scale_unit or unit
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.stream = stream or sys.stdout
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.postfix: dict[str, Any] = {}
        self.start = self.last_print = time.perf_counter()
        self.last_n = initial
        self._bar = None
        if enabled and self.terminal:
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=False,
                             file=self.stream)

    def rate(self) -> float:
        """Units of ``scale_unit`` per second since this piece of work started here."""
        elapsed = time.perf_counter() - self.start
        return (self.n - self.start_n) * self.scale / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        done = self.n - self.start_n
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{self.rate():.1f} {self.rate_unit}/s")
        if self.total and done > 0:
            parts.append(f"ETA {format_seconds(elapsed / done * (self.total - self.n))}")
        parts.append(f"elapsed {format_seconds(elapsed)}")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        self.postfix.update(postfix)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({**self.postfix, self.rate_unit + "/s": f"{self.rate():.0f}"}, refresh=False)
            return
        now = time.perf_counter()
        due_steps = self.every_steps and self.n - self.last_n >= self.every_steps
        due_time = self.every_seconds and now - self.last_print >= self.every_seconds
        if due_steps or due_time:
            self._print()

    def _print(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.last_print, self.last_n = time.perf_counter(), self.n

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.n != self.last_n:
            self._print()  # the final figures, once

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
