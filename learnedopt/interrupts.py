"""Stopping a training run cleanly: on SIGINT / SIGTERM, and before a wall-clock deadline.

:class:`StopRequests` turns the first SIGINT or SIGTERM into a request that the training loop
honours at its next safe point, the end of the current iteration (including that iteration's
validation and checkpoint, if due): it writes last.pt and raises :class:`RunInterrupted`, whose
message is the one line "interrupted at iteration N; resume with: learnedopt train --resume DIR".
A second signal while the first is pending stops at once (the iteration is abandoned, no new
checkpoint; the previous last.pt is intact, since every write is atomic). Handlers are installed
only in the main thread (Python delivers signals nowhere else) and restored afterwards.

:class:`Deadline` (``--time-limit``) stops before the deadline: before each iteration it compares
the time left with the estimated cost of one more iteration (its validation, if due) and the
final checkpoint write, from measured times, and raises :class:`TimeLimitReached` after writing
the checkpoint when they no longer fit.
"""

from __future__ import annotations

import math
import re
import shlex
import signal
import threading
import time
from collections import deque

SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells do
TIME_LIMIT_EXIT_CODE = 75  # EX_TEMPFAIL: not finished, run the same command (--resume) again


def resume_command(run_dir) -> str:
    return f"learnedopt train --resume {shlex.quote(str(run_dir))}"


class _Stopped:
    """What a stopped run reports: the iteration reached, the run directory, and an exit code."""

    def __init__(self, message: str, iteration: int, run_dir, exit_code: int):
        super().__init__(message)
        self.iteration, self.run_dir, self.exit_code = iteration, run_dir, exit_code


class RunInterrupted(_Stopped, KeyboardInterrupt):
    """Training stopped by SIGINT / SIGTERM (a KeyboardInterrupt, so Python code that expects
    Ctrl-C to raise one still works)."""


class TimeLimitReached(_Stopped, Exception):
    """Training stopped before its time limit, with a checkpoint to resume from."""


class StopRequests:
    """``with StopRequests() as stop:`` ... ``stop.signum`` is the first signal received (or
    None). ``iteration`` (kept current by the loop): the last iteration completed, which an
    immediate stop (a second signal) reports."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, run_dir, describe_checkpoint=lambda: "no checkpoint"):
        self.run_dir = run_dir
        self.describe_checkpoint = describe_checkpoint
        self.signum: int | None = None
        self.iteration = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            return
        raise RunInterrupted(
            f"interrupted again: stopped at once, without a new checkpoint "
            f"({self.describe_checkpoint()} is intact); resume with: "
            f"{resume_command(self.run_dir)}", self.iteration, self.run_dir,
            SIGNAL_EXIT_CODES.get(signum, 130))

    def stopped(self, iteration: int) -> RunInterrupted:
        """The exception for a pending signal, once its checkpoint at ``iteration`` is written."""
        # signum is None on a rank of a distributed job whose signal reached another rank only.
        name = signal.Signals(self.signum).name if self.signum is not None else "another rank's signal"
        return RunInterrupted(f"interrupted at iteration {iteration} ({name}); resume with: "
                              f"{resume_command(self.run_dir)}", iteration, self.run_dir,
                              SIGNAL_EXIT_CODES.get(self.signum, 130))


class Deadline:
    """Whether one more iteration still fits before ``seconds`` from now (see the module doc).

    Estimates: an iteration costs 1.5 x the longest of the last 20 measured; a validation the last
    measured one (before any, the longest iteration x ceil(val_tasks / meta_batch), the number of
    task batches it evaluates); the final checkpoint 2 x the longest write measured (before any, a
    measured in-memory serialisation, ``checkpoint_s``); plus a margin of 1 s."""

    MARGIN_S = 1.0

    def __init__(self, seconds: float, text: str | None = None):
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"time limit must be a positive number of seconds, got {seconds!r}")
        self.seconds, self.text = float(seconds), text or format_duration(seconds)
        self.ends = time.monotonic() + self.seconds
        self.iterations: deque[float] = deque(maxlen=20)
        self.validation_s: float | None = None
        self.checkpoint_s = 0.0

    def record_iteration(self, seconds: float) -> None:
        self.iterations.append(seconds)

    def record_validation(self, seconds: float) -> None:
        self.validation_s = seconds

    def record_checkpoint(self, seconds: float) -> None:
        self.checkpoint_s = max(self.checkpoint_s, seconds)

    def left(self) -> float:
        return self.ends - time.monotonic()

    def fits(self, validates: bool, validation_batches: int) -> bool:
        """Whether the next iteration (with its validation if ``validates``) and a checkpoint
        write after it end before the deadline."""
        longest = max(self.iterations, default=0.0)
        need = 1.5 * longest + 2 * self.checkpoint_s + self.MARGIN_S
        if validates:
            need += (self.validation_s if self.validation_s is not None
                     else longest * validation_batches)
        return self.left() >= need

    def stopped(self, iteration: int, run_dir) -> TimeLimitReached:
        return TimeLimitReached(f"time limit {self.text} reached: stopped at iteration {iteration} "
                                f"with a checkpoint; resume with: {resume_command(run_dir)}",
                                iteration, run_dir, TIME_LIMIT_EXIT_CODE)


_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(d|h|m|s|)", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in '2h', '90m', '45s', '1h30m', '1.5h' or a plain number of seconds ('3600')."""
    raw = str(text).strip()
    pos, total, parts = 0, 0.0, 0
    while pos < len(raw):
        match = _PART.match(raw, pos)
        # A bare number is seconds only as the whole text ("5m3" is refused, not 5m + 3s).
        if not match or (match.group(2) == "" and (parts or match.end() != len(raw))):
            break
        total += float(match.group(1)) * _UNITS[match.group(2).lower()]
        pos, parts = match.end(), parts + 1
        while pos < len(raw) and raw[pos] == " ":
            pos += 1
    if not raw or pos != len(raw) or parts == 0 or not (math.isfinite(total) and total > 0):
        raise ValueError(f"expected a duration such as 2h, 90m, 1h30m, 45s or 3600 (seconds), "
                         f"greater than 0, got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds >= 3600 and seconds % 60 == 0:
        h, m = divmod(int(seconds) // 60, 60)
        return f"{h}h{m:02d}m" if m else f"{h}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds) // 60}m"
    return f"{seconds:g}s"
