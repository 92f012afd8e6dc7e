"""Progress lines for long steps: count, rate and ETA, at most every few seconds.

    progress = Progress("[data]", "generating train", total=82_115, unit="synsets")
    for row in rows:
        ...
        progress.update()
    progress.done()

prints lines such as

    [data] generating train: 40,960/82,115 synsets (50%)  2,048 synsets/s  ETA 20s
    [data] generating train: 82,115 synsets in 40s (2,053 synsets/s)

Lines go through `log` (print by default), so they land in the CLI output,
a notebook cell or a test's captured log alike.
"""

from __future__ import annotations

import time


def format_duration(seconds: float) -> str:
    """`42s`, `3m07s`, `1h05m`."""
    seconds = round(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Counts work done and logs it with rate and ETA every `interval_seconds`.

    Args:
      tag: prefix of every line, e.g. "[data]".
      what: the step, e.g. "generating train".
      total: units expected, or None when unknown (then no percentage or ETA).
      unit: what is counted, e.g. "examples".
      log: where lines go.
      interval_seconds: least time between two lines; the first line comes
        after one interval, so short steps print only the final line.
    """

    def __init__(self, tag: str, what: str, total: int | None = None,
                 unit: str = "examples", log=print, interval_seconds: float = 10.0,
                 clock=time.monotonic):
        self.tag, self.what, self.total, self.unit = tag, what, total, unit
        self.log, self.interval_seconds, self.clock = log, interval_seconds, clock
        self.count = 0
        self.start = self.last = clock()

    def rate(self) -> float:
        return self.count / max(self.clock() - self.start, 1e-9)

    def line(self) -> str:
        rate = self.rate()
        if self.total:
            text = (f"{self.tag} {self.what}: {self.count:,}/{self.total:,} {self.unit} "
                    f"({self.count / self.total:.0%})  {rate:,.0f} {self.unit}/s")
            if rate > 0 and self.count < self.total:
                text += f"  ETA {format_duration((self.total - self.count) / rate)}"
            return text
        return (f"{self.tag} {self.what}: {self.count:,} {self.unit}  "
                f"{rate:,.0f} {self.unit}/s")

    def update(self, n: int = 1) -> None:
        self.count += n
        now = self.clock()
        if now - self.last >= self.interval_seconds:
            self.last = now
            self.log(self.line())

    def done(self, extra: str = "") -> float:
        """Logs the final line (count, time, rate); returns the seconds taken."""
        seconds = self.clock() - self.start
        self.log(f"{self.tag} {self.what}: {self.count:,} {self.unit} in "
                 f"{format_duration(seconds)} ({self.rate():,.0f} {self.unit}/s)"
                 + (f"  {extra}" if extra else ""))
        return seconds


def counted(iterable, progress: Progress, size=lambda item: 1):
    """Yields the items of `iterable`, adding `size(item)` to `progress` after each.

    Wraps a batch iterator without changing the code that consumes it, e.g.
    `counted(dataset, progress, lambda batch: int(batch[1].shape[0]))`.
    """
    for item in iterable:
        yield item
        progress.update(size(item))
