"""The processors' app as a background process of this checkout (what ``esper demo`` starts when none runs).

``up`` does nothing when an app already answers on ``ESPER_PROCESSORS_PORT`` (a user's own ``esper processors``);
otherwise it starts one, logs to ``$ESPER_HOME/processors/processors.log``, and waits until its status page
answers. ``down`` stops only a process ``up`` started (by its PID, SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from views.live import processors_status
from streams.config import StreamSettings
from streams.exceptions import EsperError

__all__ = ["LocalProcessors"]


class LocalProcessors:
    def __init__(self, settings: StreamSettings, agents: tuple[str, ...] | None = None, app_id: str | None = None,
                 loglevel: str = "warning"):
        self.settings = settings
        self.loglevel = loglevel
        self.agents = agents
        self.app_id = app_id or f"{settings.topic_prefix}esper-processors"
        self.base = settings.home / "processors"
        self.proc: subprocess.Popen | None = None

    def _env(self) -> dict[str, str]:
        """The child sees the same settings as this process (they may have come from code, not the environment)."""
        s = self.settings
        env = dict(os.environ, ESPER_HOME=str(s.home), ESPER_TOPIC_PREFIX=s.topic_prefix,
                   ESPER_PROCESSORS_PORT=str(s.processors_port), ESPER_KAFKA_PORT=str(s.kafka_port))
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
        """Start the app unless one answers; True when this call started it."""
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
        deadline = time.monotonic() + timeout
        while self.status() is None:
            if self.proc.poll() is not None:
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

    def down(self, grace: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
