"""The processors' app as a background process of this checkout (what ``esper demo`` starts when none runs).

``up`` does nothing when an app already answers on ``ESPER_PROCESSORS_PORT`` (a user's own ``esper processors``);
otherwise it starts one, logs to ``$ESPER_HOME/processors/processors.log``, and waits until its status page
answers. ``down`` stops only a process ``up`` started (by its PID, SIGTERM, then SIGKILL after a grace period), and
the app stops itself when the process that started it is gone (``exit_with_parent``).

The app ``up`` starts is recorded in ``$ESPER_HOME/processors/app-<app id>.pid`` until it is stopped, so one that
outlives its starter (an ``esper run`` killed with SIGKILL) is still found: ``stop_recorded`` (what ``esper infra
down`` calls) stops every app recorded under the home, each only after checking that its PID still runs Esper's
processors.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from streams.process import pid_alive, wait_or_kill
from views.live import processors_status
from streams.config import StreamSettings
from streams.exceptions import EsperError

__all__ = ["LocalProcessors", "stop_recorded"]

_COMMAND = (b"esper_runtime.cli.main", b"processors")  # what a recorded PID's command line must hold


class LocalProcessors:
    def __init__(self, settings: StreamSettings, agents: tuple[str, ...] | None = None, app_id: str | None = None,
                 loglevel: str = "warning", exit_with_parent: bool = True):
        self.settings = settings
        self.exit_with_parent = exit_with_parent  # the app stops itself when this process is gone
        self.loglevel = loglevel
        self.agents = agents
        self.app_id = app_id or f"{settings.topic_prefix}esper-processors"
        self.base = settings.home / "processors"
        self.proc: subprocess.Popen | None = None

    @property
    def pid_file(self) -> Path:
        return self.base / f"app-{self.app_id}.pid"

    def _env(self) -> dict[str, str]:
        """The child sees the same settings as this process (they may have come from code, not the environment)."""
        s = self.settings
        env = dict(os.environ, ESPER_HOME=str(s.home), ESPER_TOPIC_PREFIX=s.topic_prefix,
                   ESPER_PROCESSORS_PORT=str(s.processors_port), ESPER_KAFKA_PORT=str(s.kafka_port),
                   ESPER_PROCESSORS_EXIT_WITH_PARENT="1" if self.exit_with_parent else "0")
        for name, value in (("ESPER_KAFKA_BOOTSTRAP", s.kafka_bootstrap),
                            ("ESPER_SCHEMA_REGISTRY_URL", s.schema_registry_url),
                            ("ESPER_CLICKHOUSE_URL", s.clickhouse_dsn)):
            if value:
                env[name] = value
        return env

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.processors_port}/esper/status/"

    def status(self) -> dict | None:
        return processors_status(self.settings)

    def up(self, timeout: float = 90.0, echo=print) -> bool:
        """Start the app unless one answers; True when this call started it. An app this home records whose
        starter is gone (a run killed with SIGKILL: the app is stopping itself, or predates that) is stopped first
        and a new one started, rather than used while it goes away."""
        recorded = _recorded(self.pid_file)
        if recorded is not None and recorded[1] is not None and not pid_alive(recorded[1]):
            _stop_pid(recorded[0], 15.0, echo)
            self.pid_file.unlink(missing_ok=True)
            echo(f"stopped the processors' app a stopped process had started (pid {recorded[0]})")
        running = self.status()
        if running is not None:
            if running.get("app_id") != self.app_id:
                raise EsperError(f"another processors' app ({running.get('app_id')}) answers on port "
                                 f"{self.settings.processors_port}; set ESPER_PROCESSORS_PORT to a free port")
            echo(f"processors already running ({self.status_url})")
            return False
        self.base.mkdir(parents=True, exist_ok=True)
        log = (self.base / "processors.log").open("ab")
        # its state is a cache of the log kept for this home: one laid out by an older Esper is folded again
        args = [sys.executable, "-m", "esper_runtime.cli.main", "processors", "--rebuild-stale"]
        if self.agents:
            args += ["--agents", ",".join(self.agents)]
        if self.loglevel != "warning":
            args += ["--loglevel", self.loglevel]
        if self.app_id != f"{self.settings.topic_prefix}esper-processors":
            args += ["--app-id", self.app_id]
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self._env(),
                                     start_new_session=True)
        self.pid_file.write_text(f"{self.proc.pid} {os.getpid()}\n")  # the app and its starter
        deadline = time.monotonic() + timeout
        while self.status() is None:
            if self.proc.poll() is not None:
                self._forget()
                raise EsperError(f"the processors' app exited with {self.proc.returncode}; see "
                                 f"{self.base / 'processors.log'}")
            if time.monotonic() > deadline:
                self.down()
                raise EsperError(f"the processors' app did not answer within {timeout:.0f} s")
            time.sleep(0.3)
        echo(f"processors started (pid {self.proc.pid}, {self.status_url})")
        return True

    def kill(self) -> None:
        """SIGKILL the process ``up`` started (a crash: no clean leave of the consumer group)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._forget()

    def down(self, grace: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self._forget()
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._forget()

    def _forget(self) -> None:
        if self.proc is not None and _recorded_pid(self.pid_file) in (None, self.proc.pid):
            self.pid_file.unlink(missing_ok=True)


def _recorded(pid_file: Path) -> tuple[int, int | None] | None:
    """The app's PID a file records, and its starter's, while that app runs Esper's processors (not a reused PID)."""
    try:
        fields = pid_file.read_text().split()
        pid, starter = int(fields[0]), (int(fields[1]) if len(fields) > 1 else None)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return (pid, starter) if all(part in cmdline for part in _COMMAND) and pid_alive(pid) else None


def _recorded_pid(pid_file: Path) -> int | None:
    recorded = _recorded(pid_file)
    return recorded[0] if recorded is not None else None


def _stop_pid(pid: int, grace: float, echo) -> None:
    os.kill(pid, signal.SIGTERM)
    wait_or_kill(pid, grace, echo, "processors")


def stop_recorded(settings: StreamSettings, grace: float = 15.0, echo=lambda msg: None) -> list[int]:
    """Stop every processors' app recorded under ``settings.home`` (SIGTERM, then SIGKILL after ``grace``
    seconds) and clear the records; a record whose process is gone is just cleared. Returns the PIDs stopped."""
    stopped = []
    for pid_file in sorted((settings.home / "processors").glob("app-*.pid")):
        pid = _recorded_pid(pid_file)
        if pid is not None:
            _stop_pid(pid, grace, echo)
            echo(f"stopped the processors' app (pid {pid}, {pid_file.name[4:-4]})")
            stopped.append(pid)
        pid_file.unlink(missing_ok=True)
    return stopped
