"""The local Apache Kafka broker: fetched from Maven Central, formatted in KRaft mode, run as one process.

Everything lives under ``$ESPER_HOME/kafka`` (default ``<checkout>/.esper/kafka``): ``data/`` (the log),
``logs/`` (server.log and the JVM's stdout), ``server.properties`` and ``broker.pid``. The broker is stopped
only through that PID file, and only after checking the PID still belongs to the java process we started.
When ``ESPER_KAFKA_BOOTSTRAP`` is set nothing is started or stopped here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from streams.config import StreamSettings, in_checkout, resource_dir
from esper_runtime.infra.exceptions import BrokerError

__all__ = ["BrokerError", "BrokerStatus", "LocalKafka"]

KAFKA_MAIN = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"


@dataclass(frozen=True)
class BrokerStatus:
    bootstrap: str
    managed: bool  # True when this checkout runs the broker (no ESPER_KAFKA_BOOTSTRAP)
    running: bool
    pid: int | None
    reachable: bool
    detail: str = ""


class LocalKafka:
    def __init__(self, settings: StreamSettings):
        self.settings = settings
        self.ops_dir = resource_dir("ops") / "kafka"
        self.base = settings.home / "kafka"
        # the jars: beside the pom in a checkout (ops/setup.sh fetches them there); under ESPER_HOME when installed
        self.libs_dir = self.ops_dir / "libs" if in_checkout() else self.base / "libs"
        self.data_dir = self.base / "data"
        self.log_dir = self.base / "logs"
        self.config_file = self.base / "server.properties"
        self.pid_file = self.base / "broker.pid"

    # ---------------------------------------------------------------- queries
    @property
    def bootstrap(self) -> str:
        return self.settings.bootstrap_servers

    def pid(self) -> int | None:
        """PID of the broker this checkout started, if it is still alive and still ours."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if KAFKA_MAIN.encode() in cmdline and str(self.config_file).encode() in cmdline:
            return pid
        return None  # the PID was reused by some other process: never touch it

    def reachable(self, timeout: float = 2.0) -> bool:
        import logging

        from confluent_kafka.admin import AdminClient

        if self.settings.uses_local_broker and not _port_taken(self.settings.kafka_port):
            return False  # nothing listens: skip the client (and its connection-refused log lines)
        quiet = logging.getLogger("esper.infra.probe")
        quiet.setLevel(logging.CRITICAL)
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "socket.connection.setup.timeout.ms": 1000,
                             "logger": quiet})
        try:
            admin.list_topics(timeout=timeout)
            return True
        except Exception:  # noqa: BLE001 - any failure to answer means "not reachable"
            return False

    def status(self) -> BrokerStatus:
        if not self.settings.uses_local_broker:
            ok = self.reachable()
            return BrokerStatus(self.bootstrap, False, ok, None, ok, "ESPER_KAFKA_BOOTSTRAP is set; not managed here")
        pid = self.pid()
        ok = pid is not None and self.reachable()
        return BrokerStatus(self.bootstrap, True, pid is not None, pid, ok, f"logs: {self.log_dir}")

    # ---------------------------------------------------------------- actions
    def up(self, timeout: float = 90.0, echo=lambda msg: None) -> BrokerStatus:
        """Start the broker if it is not running; return once it answers. Idempotent."""
        if not self.settings.uses_local_broker:
            if not self.reachable(timeout=min(timeout, 10.0)):
                raise BrokerError(f"ESPER_KAFKA_BOOTSTRAP={self.bootstrap} does not answer")
            return self.status()
        if self.pid() is not None:
            self._wait_ready(timeout, self.pid())
            return self.status()

        java = self._require_java()
        self.fetch(echo)
        for port in (self.settings.kafka_port, self.settings.kafka_controller_port):
            if _port_taken(port):
                raise BrokerError(
                    f"port 127.0.0.1:{port} is already in use by another process; stop it, or set "
                    "ESPER_KAFKA_PORT / ESPER_KAFKA_CONTROLLER_PORT, or point ESPER_KAFKA_BOOTSTRAP at a running cluster"
                )
        self._write_config()
        self._format(java, echo)
        echo(f"starting Kafka on {self.bootstrap}")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_dir / "broker.out", "ab")
        cmd = [
            java,
            "-Xms256m",
            "-Xmx768m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.ops_dir / 'log4j2.properties'}",
            f"-Desper.kafka.logdir={self.log_dir}",
            f"-Dkafka.logs.dir={self.log_dir}",
            "-cp",
            f"{self.libs_dir}/*",
            KAFKA_MAIN,
            str(self.config_file),
        ]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.pid_file.write_text(str(proc.pid))
        self._wait_ready(timeout, proc.pid)
        echo(f"Kafka is up (pid {proc.pid})")
        return self.status()

    def down(self, timeout: float = 30.0, echo=lambda msg: None) -> bool:
        """Stop the broker this checkout started. Returns False when none was running."""
        if not self.settings.uses_local_broker:
            echo("ESPER_KAFKA_BOOTSTRAP is set: that cluster is not managed here, nothing stopped")
            return False
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            echo(f"broker pid {pid} did not stop in {timeout:.0f}s; killing it")
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    def fetch(self, echo=lambda msg: None) -> None:
        """Fetch the pinned broker jars from Maven Central (no-op when already there)."""
        script = self.ops_dir / "fetch.sh"
        stamp = self.libs_dir / ".complete"
        if not stamp.exists():
            echo("fetching Apache Kafka from Maven Central (first run only)")
        if shutil.which("mvn") is None and not stamp.exists():
            raise BrokerError("Maven (mvn) is not installed; it fetches the broker. On Debian: apt-get install maven")
        res = subprocess.run(["bash", str(script), str(self.libs_dir)], capture_output=True, text=True)
        if res.returncode != 0:
            raise BrokerError(f"fetching the broker failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")

    # ---------------------------------------------------------------- internals
    def _require_java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise BrokerError("java is not installed; Kafka needs Java 17+. On Debian: apt-get install openjdk-17-jre-headless")
        res = subprocess.run([java, "-version"], capture_output=True, text=True)
        version = _java_major(res.stderr or res.stdout)
        if version is not None and version < 17:
            raise BrokerError(f"java {version} found; Kafka 4 needs Java 17 or newer")
        return java

    def _write_config(self) -> None:
        template = (self.ops_dir / "server.properties.template").read_text()
        self.base.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            template.format(
                port=self.settings.kafka_port,
                controller_port=self.settings.kafka_controller_port,
                data_dir=self.data_dir,
            )
        )

    def _format(self, java: str, echo) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        echo("formatting broker storage (KRaft)")
        cluster_id = _kafka_uuid()
        res = subprocess.run(
            [java, "-cp", f"{self.libs_dir}/*", f"-Dlog4j2.configurationFile={self.ops_dir / 'log4j2.properties'}",
             f"-Desper.kafka.logdir={self.log_dir}", STORAGE_TOOL, "format", f"--cluster-id={cluster_id}",
             "-c", str(self.config_file), "--ignore-formatted"],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise BrokerError(f"formatting Kafka storage failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")

    def _wait_ready(self, timeout: float, pid: int | None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pid is not None and not _alive(pid):
                self.pid_file.unlink(missing_ok=True)
                raise BrokerError(f"the broker exited during start-up; last log lines:\n{self._log_tail()}")
            if self.reachable(timeout=2):
                return
            time.sleep(0.5)
        raise BrokerError(f"the broker did not answer on {self.bootstrap} within {timeout:.0f}s:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        chunks = []
        for name in ("broker.out", "server.log"):
            path = self.log_dir / name
            if path.exists():
                chunks.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(chunks) or "(no logs)"


def _alive(pid: int) -> bool:
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
        return False
    return True


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _java_major(version_text: str) -> int | None:
    import re

    m = re.search(r'version "(\d+)(?:\.(\d+))?', version_text)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


def _kafka_uuid() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (what StorageTool random-uuid prints).
    Like Kafka's own generator, never one that starts with '-': the format tool would read it as an option."""
    import base64

    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text
