"""Worker processes that never outlive their parent.

:func:`die_with_parent` is the ``initializer`` of every process pool of the project
(``harl-masks``, ``harl-scenes``, mask evaluation). A worker it runs in ends as soon as the
process that started the pool is gone — ``kill -9`` included, which runs no cleanup in the
parent — instead of living on, orphaned and blocked on its task queue:

- on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` asks the kernel to kill the worker when its
  parent dies (immediate);
- everywhere, a daemon thread polls the parent id every ``interval`` seconds and exits the
  worker when it changed (the parent died and the worker was re-parented), which also covers
  a parent that died between the fork and the ``prctl`` call.

A worker killed this way may leave a half-written temporary file; the commands write under
temporary names and rename, and clean those up when rerun.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Optional

_PR_SET_PDEATHSIG = 1
_watching = False


def _set_pdeathsig() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover - no libc / prctl
        return False


def die_with_parent(parent_pid: Optional[int] = None, interval: float = 0.5) -> None:
    """Make this (worker) process exit when ``parent_pid`` (default: the current parent) dies."""
    global _watching
    parent = int(parent_pid) if parent_pid is not None else os.getppid()
    _set_pdeathsig()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    if _watching:
        return
    _watching = True

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="harl-parent-watch", daemon=True).start()


__all__ = ["die_with_parent"]
