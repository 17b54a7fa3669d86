"""Progress of a long loop (an epoch, a download, an extraction): a tqdm bar or log lines.

Airflow task logs are not terminals, so there a line "done of total, rate, figures, ETA" is
logged every `log_every_s` seconds instead of a bar that would fill the log with carriage returns.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Callable

from tqdm import tqdm

log = logging.getLogger(__name__)


class Progress:
    """`update(n)` after each step; `figures` is a callable (e.g. the running loss) so the caller
    pays for computing it (a device sync) only when a line is actually shown. Unit "B" shows MiB.
    """

    def __init__(self, total: int | None, desc: str, *, unit: str = "img", log_every_s: float = 10.0,
                 enabled: bool = True, tty: bool | None = None):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.done = 0
        self.log_every_s = log_every_s
        self.start = self._last_shown = time.perf_counter()
        self._logged = -1  # the `done` of the last line logged
        self._bar = None
        if enabled and (sys.stderr.isatty() if tty is None else tty):
            binary = unit == "B"
            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024 if binary else 1000,
                             dynamic_ncols=True, leave=False)
            self.log_every_s = min(log_every_s, 1.0)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(final_line=exc[0] is None)

    def update(self, n: int, figures: Callable[[], dict[str, float]] | None = None) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        now = time.perf_counter()
        finished = self.total is not None and self.done >= self.total
        if not self.enabled or (now - self._last_shown < self.log_every_s and not finished):
            return
        self._last_shown = now
        shown = figures() if figures else {}
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        else:
            self._log(now, shown)

    def close(self, final_line: bool = False) -> None:
        """End the bar; in a log, `final_line` shows where the loop stopped if no line did yet."""
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and final_line and self._logged != self.done:
            self._log(time.perf_counter(), {})

    def _log(self, now: float, figures: dict[str, float]) -> None:
        self._logged = self.done
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        scale, unit = (2**20, "MiB") if self.unit == "B" else (1, self.unit)
        done = f"{self.done / scale:,.{1 if scale > 1 else 0}f}"
        total = f"{self.total / scale:,.{1 if scale > 1 else 0}f}" if self.total else "?"
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = (self.total - self.done) / rate if self.total and rate > 0 else math.nan
        extra = "".join(f", {k} {v:.4f}" for k, v in figures.items())
        log.info("%s: %s/%s %s%s, %.1f %s/s%s, ETA %s", self.desc, done, total, unit, percent, rate / scale, unit,
                 extra, duration(eta))


def duration(seconds: float) -> str:
    """H:MM:SS or M:SS; "?" when unknown (NaN)."""
    if math.isnan(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
