"""Whether a process still runs: what every PID file Esper keeps (the broker's nodes, the store's owner, the
processors) is checked with before anyone is signalled or waited for."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

__all__ = ["pid_alive", "wait_or_kill"]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie child counts as gone, and is reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        if state == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            return False
    except (OSError, IndexError):
        return not Path("/proc/self/stat").exists()  # it just exited; or no /proc here, and kill(0) answered
    return True


def wait_or_kill(pid: int, timeout: float, echo=lambda msg: None, what: str = "process") -> None:
    """Wait up to ``timeout`` seconds for ``pid`` (already asked to stop) to exit, then SIGKILL it and wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        echo(f"{what} pid {pid} did not stop in {timeout:.0f}s; killing it")
        os.kill(pid, signal.SIGKILL)
        while pid_alive(pid):
            time.sleep(0.05)
