"""A helper process forked to share a command's work: it starts in about a millisecond with the memory of the
process that forks it (nothing to import, nothing to pickle), and answers through a pipe in JSON.

Linux only (see can_fork); validate and materialize do the work themselves, or start fresh interpreters,
elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import orjson

from pose_factory.core.errors import PoseFactoryError
from pose_factory.core.fsutil import die_with_parent


def can_fork() -> bool:
    """Whether a helper may be forked: on Linux, while this process runs one thread (forking copies only the
    calling thread; macOS's system libraries are not safe to use in a forked child at all)."""
    threading = sys.modules.get("threading")
    return sys.platform.startswith("linux") and (threading is None or threading.active_count() == 1)


class ForkedHelper:
    """A forked child that runs `work` and answers with the JSON of what it returns, or of the error it raised.

    It dies with this process (fsutil.die_with_parent: a killed build leaves nothing running) and never runs
    this process's cleanup (it ends with os._exit). `result()` waits for its answer; `close()` ends it if it
    is still running.
    """

    def __init__(self, work: Callable[[], Any], purpose: str) -> None:
        self.purpose = purpose  # the command, for an error's `where`
        read_end, write_end = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                os.close(read_end)
                die_with_parent(parent)
                try:
                    answer: Any = {"result": work()}
                except OSError as exc:  # raised again in the parent, as if it had been raised there
                    answer = {"os_error": [exc.errno, exc.strerror, exc.filename]}
                except Exception as exc:
                    answer = {"error": f"{type(exc).__name__}: {exc}"}
                data = memoryview(orjson.dumps(answer))
                while data:
                    data = data[os.write(write_end, data):]
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        self.pid: int | None = pid
        self.fd = read_end

    def result(self) -> Any:
        """What `work` returned in the child; its OSError raised again here."""
        chunks = []
        while chunk := os.read(self.fd, 1 << 20):
            chunks.append(chunk)
        _, status = os.waitpid(self.pid, 0) if self.pid else (0, 0)
        self.pid = None
        try:
            answer = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            raise PoseFactoryError(f"the helper process ended without its result (exit status {status})",
                                   where=self.purpose, hint="run it again")
        if "os_error" in answer:
            raise OSError(*answer["os_error"])
        if "error" in answer:
            raise PoseFactoryError(f"the helper process failed: {answer['error']}", where=self.purpose,
                                   hint="run it again")
        return answer["result"]

    def close(self) -> None:
        """End the child if it is still running (SIGKILL: it writes nothing that could be left half done)."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = None
        os.close(self.fd)
