"""The local Apache Kafka cluster: fetched from Maven Central, formatted in KRaft mode, one process per node
(one node by default; ``ESPER_KAFKA_BROKERS=3`` or ``esper infra up --brokers 3`` for a replicated cluster).

Everything lives under ``$ESPER_HOME/kafka`` (default ``<checkout>/.esper/kafka``; ``kafka/node-i`` for each node
of several): ``data/`` (the log), ``logs/`` (server.log and the JVM's stdout), ``server.properties`` and
``broker.pid``. A node is stopped only through its PID file, and only after checking the PID still belongs to the
java process we started. When ``ESPER_KAFKA_BOOTSTRAP`` is set nothing is started or stopped here.
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

from streams.process import pid_alive, wait_or_kill
from streams.config import CLUSTER_SIZE_FILE, StreamSettings, in_checkout, resource_dir
from esper_runtime.infra.exceptions import BrokerError

__all__ = ["BrokerError", "BrokerStatus", "KafkaNode", "LocalKafka", "NodeStatus"]

KAFKA_MAIN = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"


@dataclass(frozen=True)
class KafkaNode:
    """One node of the local cluster: its ports and the directory with its ``data/``, ``logs/``,
    ``server.properties`` and ``broker.pid``."""

    node_id: int
    port: int
    controller_port: int
    base: Path

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log_dir(self) -> Path:
        return self.base / "logs"

    @property
    def config_file(self) -> Path:
        return self.base / "server.properties"

    @property
    def pid_file(self) -> Path:
        return self.base / "broker.pid"


@dataclass(frozen=True)
class NodeStatus:
    node_id: int
    address: str
    pid: int | None  # None: not running (or not ours)
    in_cluster: bool  # the cluster's metadata lists it as a live broker


@dataclass(frozen=True)
class BrokerStatus:
    bootstrap: str
    managed: bool  # True when this checkout runs the broker (no ESPER_KAFKA_BOOTSTRAP)
    running: bool
    pid: int | None
    reachable: bool
    detail: str = ""
    nodes: tuple[NodeStatus, ...] = ()
    controller: int | None = None  # the node id the cluster names as its controller
    under_replicated: int | None = None  # partitions with fewer in-sync replicas than replicas


class LocalKafka:
    """The local KRaft cluster: ``kafka_brokers`` nodes (one by default), each a broker and a controller in one
    JVM. One node keeps its files directly under ``$ESPER_HOME/kafka``; node i of several under ``kafka/node-i``."""

    def __init__(self, settings: StreamSettings):
        self.settings = settings
        self.ops_dir = resource_dir("ops") / "kafka"
        self.base = settings.home / "kafka"
        # the jars: beside the pom in a checkout (ops/setup.sh fetches them there); under ESPER_HOME when installed
        self.libs_dir = self.ops_dir / "libs" if in_checkout() else self.base / "libs"
        many = settings.kafka_brokers > 1
        self.nodes = [KafkaNode(i + 1, port, cport, self.base / f"node-{i + 1}" if many else self.base)
                      for i, (port, cport) in enumerate(settings.local_ports)]
        first = self.nodes[0]
        self.data_dir, self.log_dir, self.config_file, self.pid_file = (first.data_dir, first.log_dir,
                                                                       first.config_file, first.pid_file)

    # ---------------------------------------------------------------- queries
    @property
    def bootstrap(self) -> str:
        return self.settings.bootstrap_servers

    def node(self, node_id: int) -> KafkaNode:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise BrokerError(f"no node {node_id}: the local cluster has nodes 1..{len(self.nodes)}")

    def pid(self, node_id: int = 1) -> int | None:
        """PID of a node this checkout started, if it is still alive and still ours."""
        node = self.node(node_id)
        try:
            pid = int(node.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if KAFKA_MAIN.encode() in cmdline and str(node.config_file).encode() in cmdline:
            return pid
        return None  # the PID was reused by some other process: never touch it

    def _admin(self, timeout_ms: int = 1000):
        import logging

        from confluent_kafka.admin import AdminClient

        quiet = logging.getLogger("esper.infra.probe")
        quiet.setLevel(logging.CRITICAL)
        return AdminClient({"bootstrap.servers": self.bootstrap, "socket.connection.setup.timeout.ms": timeout_ms,
                            "logger": quiet})

    def _listening(self) -> bool:
        return not self.settings.uses_local_broker or any(_port_taken(n.port) for n in self.nodes)

    def reachable(self, timeout: float = 2.0) -> bool:
        if not self._listening():
            return False  # nothing listens: skip the client (and its connection-refused log lines)
        try:
            self._admin().list_topics(timeout=timeout)
            return True
        except Exception:  # noqa: BLE001 - any failure to answer means "not reachable"
            return False

    def cluster(self, timeout: float = 5.0) -> tuple[set[int], int | None, int]:
        """(live broker ids, the controller's id, under-replicated partitions) as the cluster reports them."""
        admin = self._admin()
        meta = admin.list_topics(timeout=timeout)
        controller = None
        try:
            controller = admin.describe_cluster(request_timeout=timeout).result(timeout=timeout).controller.id
        except Exception:  # noqa: BLE001 - an older broker or a cluster mid-election: say nothing rather than guess
            controller = None
        under = sum(1 for t in meta.topics.values() for p in t.partitions.values() if len(p.isrs) < len(p.replicas))
        return set(meta.brokers), controller, under

    def status(self) -> BrokerStatus:
        if not self.settings.uses_local_broker:
            ok = self.reachable()
            return BrokerStatus(self.bootstrap, False, ok, None, ok, "ESPER_KAFKA_BOOTSTRAP is set; not managed here")
        pids = {n.node_id: self.pid(n.node_id) for n in self.nodes}
        ok = any(p is not None for p in pids.values()) and self.reachable()
        live, controller, under = (self.cluster() if ok else (set(), None, None))
        nodes = tuple(NodeStatus(n.node_id, f"127.0.0.1:{n.port}", pids[n.node_id], n.node_id in live)
                      for n in self.nodes)
        return BrokerStatus(self.bootstrap, True, pids[1] is not None or any(pids.values()), pids[1], ok,
                            f"logs: {self.log_dir if len(self.nodes) == 1 else self.base / 'node-*' / 'logs'}",
                            nodes, controller, under)

    # ---------------------------------------------------------------- actions
    def up(self, timeout: float = 90.0, echo=lambda msg: None) -> BrokerStatus:
        """Start every node that is not running; return once the cluster answers with all of them. Idempotent."""
        if not self.settings.uses_local_broker:
            if not self.reachable(timeout=min(timeout, 10.0)):
                raise BrokerError(f"ESPER_KAFKA_BOOTSTRAP={self.bootstrap} does not answer")
            return self.status()
        ports = [p for n in self.nodes for p in (n.port, n.controller_port)]
        if len(set(ports)) != len(ports):
            raise BrokerError(f"the local cluster's ports overlap ({ports}): node i uses ESPER_KAFKA_PORT + 2(i-1) "
                              "and ESPER_KAFKA_CONTROLLER_PORT + 2(i-1); set the controller port to the broker "
                              "port + 1")
        down = [n for n in self.nodes if self.pid(n.node_id) is None]
        if down:
            java = self._require_java()
            self.fetch(echo)
            for node in down:
                for port in (node.port, node.controller_port):
                    if _port_taken(port):
                        raise BrokerError(
                            f"port 127.0.0.1:{port} is already in use by another process; stop it, or set "
                            "ESPER_KAFKA_PORT / ESPER_KAFKA_CONTROLLER_PORT, or point ESPER_KAFKA_BOOTSTRAP at a "
                            "running cluster")
            started = {node.node_id: self.start_node(node.node_id, java=java, echo=echo) for node in down}
        self._wait_ready(timeout, started if down else {})
        (self.base / CLUSTER_SIZE_FILE).write_text(f"{len(self.nodes)}\n")  # later commands find every node
        if down:
            echo(f"Kafka is up ({len(self.nodes)} node{'s' if len(self.nodes) > 1 else ''} at {self.bootstrap})")
        return self.status()

    def start_node(self, node_id: int, java: str | None = None, echo=lambda msg: None) -> int:
        """Start one node (formatting its storage the first time); returns its PID without waiting for it."""
        node = self.node(node_id)
        if (pid := self.pid(node_id)) is not None:
            return pid
        java = java or self._require_java()
        self._write_config(node)
        self._format(java, node, echo)
        echo(f"starting Kafka node {node.node_id} on 127.0.0.1:{node.port}")
        node.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(node.log_dir / "broker.out", "ab")
        cmd = [
            java,
            "-Xms256m",
            "-Xmx768m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.ops_dir / 'log4j2.properties'}",
            f"-Desper.kafka.logdir={node.log_dir}",
            f"-Dkafka.logs.dir={node.log_dir}",
            "-cp",
            f"{self.libs_dir}/*",
            KAFKA_MAIN,
            str(node.config_file),
        ]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        node.pid_file.write_text(str(proc.pid))
        return proc.pid

    def kill_node(self, node_id: int, sig: int = signal.SIGKILL, timeout: float = 30.0) -> bool:
        """Stop one node: SIGKILL by default (a crash, for fault tests), SIGTERM for a clean stop. False when it
        was not running."""
        node = self.node(node_id)
        pid = self.pid(node_id)
        if pid is None:
            node.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, sig)
        wait_or_kill(pid, timeout, what="broker")
        node.pid_file.unlink(missing_ok=True)
        return True

    def down(self, timeout: float = 30.0, echo=lambda msg: None) -> bool:
        """Stop every node this checkout started. Returns False when none was running."""
        if not self.settings.uses_local_broker:
            echo("ESPER_KAFKA_BOOTSTRAP is set: that cluster is not managed here, nothing stopped")
            return False
        running = {n.node_id: self.pid(n.node_id) for n in self.nodes}
        for node in self.nodes:
            if running[node.node_id] is None:
                node.pid_file.unlink(missing_ok=True)
            else:
                os.kill(running[node.node_id], signal.SIGTERM)  # all at once: the quorum shuts down together
        stopped = False
        for node in self.nodes:
            pid = running[node.node_id]
            if pid is None:
                continue
            wait_or_kill(pid, timeout, echo, "broker")
            node.pid_file.unlink(missing_ok=True)
            stopped = True
        return stopped

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

    def _write_config(self, node: KafkaNode) -> None:
        template = (self.ops_dir / "server.properties.template").read_text()
        node.base.mkdir(parents=True, exist_ok=True)
        node.data_dir.mkdir(parents=True, exist_ok=True)
        replication = min(3, len(self.nodes))
        node.config_file.write_text(
            template.format(
                node_id=node.node_id,
                voters=",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes),
                port=node.port,
                controller_port=node.controller_port,
                data_dir=node.data_dir,
                replication=replication,
                min_isr=2 if replication >= 3 else 1,
            )
        )

    def _cluster_id(self) -> str:
        """One id for every node of the cluster, kept beside them (a node formatted with another would not join)."""
        if len(self.nodes) == 1:
            return _kafka_uuid()
        path = self.base / "cluster.id"
        if not path.exists():
            self.base.mkdir(parents=True, exist_ok=True)
            path.write_text(_kafka_uuid())
        return path.read_text().strip()

    def _format(self, java: str, node: KafkaNode, echo) -> None:
        if (node.data_dir / "meta.properties").exists():
            return
        echo(f"formatting node {node.node_id}'s storage (KRaft)")
        res = subprocess.run(
            [java, "-cp", f"{self.libs_dir}/*", f"-Dlog4j2.configurationFile={self.ops_dir / 'log4j2.properties'}",
             f"-Desper.kafka.logdir={node.log_dir}", STORAGE_TOOL, "format", f"--cluster-id={self._cluster_id()}",
             "-c", str(node.config_file), "--ignore-formatted"],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise BrokerError(f"formatting Kafka storage failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")

    def _wait_ready(self, timeout: float, started: dict[int, int]) -> None:
        """Until the cluster answers and lists every node as a live broker (a node that exits is an error).
        ``started``: the PIDs of the nodes just started (their command line may not name Kafka yet)."""
        deadline = time.monotonic() + timeout
        want = {n.node_id for n in self.nodes}
        while time.monotonic() < deadline:
            for node in self.nodes:
                pid = started.get(node.node_id) or self.pid(node.node_id)
                if pid is None or not pid_alive(pid):
                    node.pid_file.unlink(missing_ok=True)
                    raise BrokerError(f"Kafka node {node.node_id} exited during start-up; last log lines:\n"
                                      f"{self._log_tail(node)}")
            if self.reachable(timeout=2):
                try:
                    if self.cluster(timeout=2)[0] >= want:
                        return
                except Exception:  # noqa: BLE001 - not all there yet
                    pass
            time.sleep(0.5)
        raise BrokerError(f"the cluster did not answer on {self.bootstrap} with all of nodes {sorted(want)} within "
                          f"{timeout:.0f}s:\n" + "\n".join(self._log_tail(n) for n in self.nodes))

    def _log_tail(self, node: KafkaNode, lines: int = 30) -> str:
        chunks = []
        for name in ("broker.out", "server.log"):
            path = node.log_dir / name
            if path.exists():
                chunks.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(chunks) or "(no logs)"


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
