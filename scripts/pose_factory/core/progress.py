"""Progress for long work: a live bar on a terminal, a few plain lines in logs and CI, nothing when quiet.

Library code receives a Progress and calls `task()` / `advance()`; it never prints itself.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Progress:
    """Report progress of one piece of work at a time to stderr."""

    def __init__(self, enabled: bool = True, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()

    @contextmanager
    def task(self, description: str, total: float, unit: str = "files") -> Iterator[Task]:
        if not self.enabled:
            yield Task(None, description, total, unit, self._lock)
            return
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            count = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
            # markup=False: a description holds names (batch ids), which must not be read as rich markup.
            bar = RichProgress(TextColumn("{task.description}", markup=False), BarColumn(), count, TimeElapsedColumn(),
                               TimeRemainingColumn(), console=Console(file=self.stream), transient=False)
            with bar:
                task_id = bar.add_task(description, total=total)
                task = Task(lambda n: bar.advance(task_id, n), description, total, unit, self._lock)
                task._describe = lambda text: bar.update(task_id, description=text)
                yield task
        else:
            task = Task(None, description, total, unit, self._lock, log_stream=self.stream)
            yield task
            task.log_line(final=True)


class Task:
    """Handle to advance one progress bar (thread-safe)."""

    # In logs, print a line at most every this many seconds, so CI output stays short.
    LOG_INTERVAL_S = 5.0

    def __init__(self, advance_bar, description, total, unit, lock, log_stream=None):
        self._advance_bar = advance_bar
        self.description = description
        self.total = total
        self.unit = unit
        self.done = 0.0
        self._lock = lock
        self._log_stream = log_stream
        self._last_log = time.monotonic()
        self._describe = None
        self._note = ""

    def note(self, text: str) -> None:
        """Say what the current item is doing (e.g. a server's step 12/30) beside the description."""
        with self._lock:
            self._note = text
            if self._describe:
                self._describe(f"{self.description} {text}" if text else self.description)
            elif self._log_stream and time.monotonic() - self._last_log >= self.LOG_INTERVAL_S:
                self.log_line()  # a long item still shows signs of life in logs

    def advance(self, amount: float = 1) -> None:
        with self._lock:
            self.done += amount
            if self._advance_bar:
                self._advance_bar(amount)
            elif self._log_stream and time.monotonic() - self._last_log >= self.LOG_INTERVAL_S:
                self.log_line()

    def log_line(self, final: bool = False) -> None:
        if not self._log_stream:
            return
        self._last_log = time.monotonic()
        done = _human(self.done, self.unit)
        total = _human(self.total, self.unit)
        percent = 100.0 * self.done / self.total if self.total else 100.0
        note = f" [{self._note}]" if self._note and not final else ""
        print(f"{self.description}: {done}/{total} ({percent:.0f}%)" + (" done" if final else note),
              file=self._log_stream, flush=True)


def _human(value: float, unit: str) -> str:
    if unit != "bytes":
        return f"{int(value)}"
    for suffix in ("B", "KB", "MB", "GB"):
        if value < 1000 or suffix == "GB":
            return f"{value:.1f} {suffix}" if suffix != "B" else f"{int(value)} B"
        value /= 1000
    return f"{value:.1f} GB"


def human_bytes(value: float) -> str:
    """1234567 -> '1.2 MB'."""
    return _human(value, "bytes")
