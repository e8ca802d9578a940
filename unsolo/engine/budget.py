"""Training sized by time: measure the first iterations, then fix the length that fills a budget.

A run with ``solver.max_time = T`` seconds trains :data:`CALIBRATION_SKIP` iterations (data loader start-up,
allocator warm-up), times the next :data:`CALIBRATION_ITERS`, and then fixes its length to the number of
iterations that fill ``T`` (counted from the loop's first iteration). The LR schedule is re-fitted to that length
once (:func:`unsolo.engine.schedule.fit_schedule`: a proper warm-up and its steps at the same fractions), and the
length is written to ``RUN/time_budget.json`` so that a resumed run keeps it instead of measuring again. The
length, not the clock, ends the run: the same budget on the same machine gives the same schedule, and a slower
iteration later on (another job on the machine) makes the run overshoot rather than end early.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

from unsolo.errors import UnsoloError
from unsolo.utils.io import atomic_write

CALIBRATION_SKIP = 3  # iterations not timed (first batches, worker start-up, allocator warm-up)
CALIBRATION_ITERS = 10  # iterations timed to estimate the seconds per iteration
BUDGET_FILE = "time_budget.json"
log = logging.getLogger("unsolo.run")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str | float | int | None) -> float | None:
    """Seconds from ``600``, ``600s``, ``10m``, ``1.5h`` (None / ``none`` / ``off`` -> None); bad values are a
    one-line error."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "none", "off", "null")):
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+)\s*(s|m|min|h)?\s*", str(text).lower())
        if not m:
            raise UnsoloError(f"bad time budget {text!r}: give seconds (600), minutes (10m) or hours (1.5h)")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or ""]
    if not math.isfinite(seconds) or seconds <= 0:
        raise UnsoloError(f"the time budget must be positive, got {text!r}")
    return seconds


def check_budget(max_time) -> float | None:
    """Validate ``solver.max_time`` (seconds or a duration string) and return it in seconds."""
    return parse_duration(max_time)


def fitted_length(budget_s: float, elapsed_s: float, iters_done: int, sec_per_iter: float) -> int:
    """Total iterations that fill ``budget_s``: the ``iters_done`` already run in ``elapsed_s`` plus what the rest
    of the budget holds at ``sec_per_iter`` (at least the iterations already done, at least 1)."""
    more = math.floor(max(budget_s - elapsed_s, 0.0) / max(sec_per_iter, 1e-9))
    return max(iters_done + more, iters_done, 1)


def read_budget(out: Path, budget_s: float, setup: dict | None = None) -> int | None:
    """The length fixed by an earlier run of the same budget and ``setup`` (precision, batch, processes: what sets
    the seconds per iteration) in ``out``, or None: none, another budget or setup, or an unreadable file (then the
    run measures again)."""
    path = out / BUDGET_FILE
    try:
        rec = json.loads(path.read_text())
        if abs(float(rec["max_time"]) - budget_s) > 1e-6 or rec.get("setup", {}) != (setup or {}):
            return None
        return int(rec["max_iter"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_budget(out: Path, budget_s: float, max_iter: int, sec_per_iter: float, setup: dict | None = None) -> None:
    rec = {"max_time": budget_s, "max_iter": max_iter, "sec_per_iter": round(sec_per_iter, 5), "setup": setup or {}}
    atomic_write(out / BUDGET_FILE, lambda f: f.write(json.dumps(rec) + "\n"))


class Calibration:
    """Times iterations ``start + SKIP .. start + SKIP + ITERS`` of a loop; :meth:`step` returns the seconds per
    iteration once, when the window closes, and None otherwise."""

    def __init__(self, start_iter: int, skip: int = CALIBRATION_SKIP, iters: int = CALIBRATION_ITERS):
        self.first = start_iter + skip  # the window opens when this iteration starts
        self.last = self.first + iters  # ... and closes when this iteration starts
        self.t_open: float | None = None
        self.done = False

    def step(self, next_iter: int, now: float) -> float | None:
        """Call after each iteration with the index of the next one and the clock."""
        if self.done:
            return None
        if next_iter == self.first:
            self.t_open = now
        if next_iter >= self.last and self.t_open is not None:
            self.done = True
            return (now - self.t_open) / (self.last - self.first)
        return None


def share_of_budget(plan_path: Path, key: str, left_s: float, shares: list[float], reserve_s: float,
                    write: bool = True) -> float:
    """Seconds a stage of a multi-stage run gets: ``shares[0] / sum(shares)`` of the ``left_s`` seconds still in the
    run's budget, after ``reserve_s`` for each of the ``len(shares)`` stages left (their non-training work), and at
    least 30 s. Decided once per ``key`` and kept in ``plan_path`` (JSON), so a resumed run keeps the same length."""
    try:
        plan = json.loads(plan_path.read_text())
        plan = plan if isinstance(plan, dict) else {}
    except (OSError, ValueError):
        plan = {}
    if key in plan:
        return float(plan[key])
    seconds = round(max(30.0, (left_s - reserve_s * len(shares)) * shares[0] / sum(shares)), 1)  # as kept
    plan[key] = seconds
    if write:
        atomic_write(plan_path, lambda f: f.write(json.dumps(plan, indent=2) + "\n"))
        log.info("[%s] time budget: %.0f s of the %.0f s left", key, seconds, left_s)
    return seconds
