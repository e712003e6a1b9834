"""Named points where a test can SIGKILL the running command, to prove that it is crash-safe.

With `POSE_FACTORY_KILL_AT=<name>` (or `<name>:<n>`) in its environment, a process kills itself with SIGKILL,
so that no clean-up, `finally` or `atexit` runs, the first (or n-th) time it passes the point of that name.
Unset, a point costs one environment lookup. Names are `<command>:<step>` (`pull:after-swap`); tests list them.
"""

from __future__ import annotations

import os
import signal

from pose_factory.core.envnames import ENV_KILL_AT

_passes: dict[str, int] = {}


def reached(name: str) -> None:
    """Mark that the command has reached the step `name`; die here when a test asked for it."""
    spec = os.environ.get(ENV_KILL_AT)
    if not spec:
        return
    target, _, nth = spec.rpartition(":") if spec.rpartition(":")[2].isdigit() else (spec, "", "1")
    if target != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] >= int(nth):
        os.kill(os.getpid(), signal.SIGKILL)
