"""Progress bars (tqdm) with rate and ETA, shown on rank 0 only and quiet when not a terminal unless asked."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from unsolo.utils.dist import is_main_process


def progress(iterable=None, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0, **kw):
    """A tqdm bar (images/s or it/s, ETA) on rank 0; disabled on other ranks."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        disable=not is_main_process(),
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=0.5,
        **kw,
    )


#: a CPU job expected to run longer than this says so once, with the flag that shortens it
LONG_JOB_SECONDS = 3600.0
#: iterations timed before the estimate (the first ones include start-up costs)
ETA_AFTER = 3


class LongJobWarning:
    """Says once, early, when a job on a CPU will take more than an hour, and which flag shortens it.

    Call :meth:`step` after every iteration with the iteration count so far; after :data:`ETA_AFTER` timed
    iterations it estimates the remaining time from their mean and, if it exceeds :data:`LONG_JOB_SECONDS`, logs
    one warning such as "pretrain will take about 9.6 h on this CPU (320 iterations left at 108 s each); --preset
    small_r18 (the CPU preset) or --epochs N shortens it". GPUs are not checked (a GPU job is expected to be long).
    """

    def __init__(self, what: str, total: int, device, hint: str, logger, start: int = 0):
        import time

        self.what, self.total, self.hint, self.log = what, int(total), hint, logger
        self.on_cpu = str(getattr(device, "type", device)).startswith("cpu")
        self.start, self.t0, self.done = start, time.perf_counter(), not self.on_cpu
        self.message: str | None = None

    def step(self, iteration: int) -> None:
        if self.done or iteration - self.start < ETA_AFTER:
            return
        import time

        self.done = True
        per_it = (time.perf_counter() - self.t0) / (iteration - self.start)
        left = (self.total - iteration) * per_it
        if left > LONG_JOB_SECONDS:
            self.message = (f"{self.what} will take about {left / 3600:.1f} h on this CPU ({self.total - iteration} "
                            f"iterations left at {per_it:.1f} s each); {self.hint} shortens it")
            self.log.warning(self.message)
