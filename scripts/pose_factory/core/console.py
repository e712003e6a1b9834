"""What the command lines print, and how a typed error becomes a message and an exit code.

`cli.py` (`pose-sync`) and `stages.py` (the commands dvc.yaml runs) print through these alone. Everything
goes through `printable` (and `redact`): names come from the bucket, and a key or folder name must not be
able to move the cursor or recolour the terminal. Output may span lines on purpose, so a name put into a
line is escaped whole, newlines included: it cannot fake a row.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pose_factory.core.errors import ExitCode, PoseFactoryError, from_os_error
from pose_factory.core.settings import redact

# Control characters (C0, DEL, C1), format characters (bidi overrides, zero-width), line and paragraph
# separators, and lone surrogates (undecodable bytes in a local file name).
_UNPRINTABLE = frozenset(("Cc", "Cf", "Cs", "Co", "Zl", "Zp"))


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """text with anything a terminal would act on shown as a Python-style escape (\\x1b, \\u202e, \\udcff).

    keep_newlines keeps '\\n' for output made of several lines on purpose (error lists, indented JSON).
    """
    lines = text.split("\n") if keep_newlines else [text]
    if all(line.isprintable() for line in lines):
        return text

    def escape(char: str) -> str:
        if (char == "\n" and keep_newlines) or unicodedata.category(char) not in _UNPRINTABLE:
            return char
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"

    return "".join(escape(char) for char in text)


def out(text: str = "") -> None:
    """A line (or lines) of the result, on stdout."""
    print(printable(redact(text), keep_newlines=True))


def err(text: str, *, keep_newlines: bool = False) -> None:
    """A note for the user, on stderr."""
    print(printable(redact(text), keep_newlines=keep_newlines), file=sys.stderr, flush=True)


def emit_json(document: dict[str, Any]) -> None:
    """A `--json` result on stdout."""
    # json.dumps escapes every control character already; printable keeps that true whatever the encoder.
    print(printable(redact(json.dumps(document, indent=2, sort_keys=False)), keep_newlines=True))


class _StderrLog(logging.Handler):
    """Log records as lines on stderr, escaped and redacted like everything else printed."""

    def emit(self, record: logging.LogRecord) -> None:
        err(self.format(record), keep_newlines=True)


# -v shows these loggers: ours (the commands pose-sync runs) and DVC's own, which runs in this process too.
VERBOSE_LOGGERS = ("pose_factory", "dvc")


@contextmanager
def verbose_log(verbose: bool) -> Iterator[None]:
    """With -v / --verbose, show what runs (git, dvc, rclone and blender commands, DVC's own log) on stderr.

    DVC, imported in this process, logs to the stdout and stderr it found when imported; while this is in effect
    its records come here instead, so they never mix with a `--json` result on stdout.
    """
    if not verbose:
        yield
        return
    handler = _StderrLog()
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = []
    for name in VERBOSE_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.handlers, logger.propagate))
        logger.handlers, logger.propagate = [handler], False
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, level, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)


def log_command(log: logging.Logger, command: list[str]) -> None:
    """Log a command about to run, as a shell line (`$ dvc add ...`); shown with -v."""
    if log.isEnabledFor(logging.INFO):
        words = ["dvc", *command[3:]] if command[1:3] == ["-m", "dvc"] else command
        log.info("$ %s", shlex.join(str(word) for word in words))


def report_error(exc: PoseFactoryError) -> int:
    """Print a typed error once (`error:` and `hint:` lines) and return its exit code."""
    # The message may list problems on several lines; where and hint are one line each, so a name with a
    # newline in it cannot fake a `hint:` line.
    message = printable(redact(exc.message), keep_newlines=True)
    where = f" ({printable(redact(exc.where))})" if exc.where else ""
    print(f"error: {message}{where}", file=sys.stderr, flush=True)
    if exc.hint:
        err(f"hint: {exc.hint}")
    return exc.exit_code


def run_reporting_errors(command: Callable[[], int]) -> int:
    """Run a command; an expected failure is reported once with its exit code, never as a traceback."""
    try:
        return command()
    except PoseFactoryError as exc:
        return report_error(exc)
    except OSError as exc:  # the local machine refused: disk full, read-only, permissions (see errors.py)
        return report_error(from_os_error(exc))
    except KeyboardInterrupt:
        err("interrupted: nothing was marked complete; run the same command again to resume")
        return ExitCode.INTERRUPTED
