"""The Urabrask worker: consumes KernelCompiled, measures each artifact in a sandbox process, tags it, reports.

For each new artifact: ``KernelValidationReport`` (the measurements, or the failure), then either
``KernelTagsAssigned`` + ``KernelStatusChanged`` -> VALIDATED, or ``KernelStatusChanged`` -> REJECTED. These
continue the artifact's own event sequence (``kernel/<artifact-id>``) after Tezzeret's ``KernelCompiled``.
An artifact already reported (seen in ``known``, folded from the log at start) is not measured again; one built for
hardware this host does not have (a CUDA kernel on a CPU host, another card's) is left for a worker that has it.
Percentile tags are per hardware label: a kernel is ranked against its peers built for the same hardware.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from esper_runtime.devices import hardware_label
from esper_runtime.urabrask.exceptions import SandboxServerError
from esper_runtime.urabrask.tagging import Distributions, assign_tags
from esper_runtime.urza.store import ArtifactNotFound, ArtifactStore
from streams.contracts import KernelCompiled, KernelStatusChanged, KernelTagsAssigned, KernelValidationReport
from streams.envelope import EnvelopeFactory
from streams.publisher import Publisher

__all__ = ["UrabraskWorker", "run_sandbox"]

log = logging.getLogger("esper.urabrask")
PRODUCER = "urabrask/0.1.0"


def run_sandbox(data: bytes, artifact_id: str, sha256: str, timeout: float = 120.0, runs: int = 3,
                iters: int = 200) -> dict:
    """Measure an artifact in a child process of its own. A crash, a hang or no verdict is a failed verdict.

    The child is forked from a server process that imported torch once (``SandboxServer``): each kernel still runs
    in a fresh process no other kernel ran in, without paying for torch's import each time (3.6 s of a 6.4 s
    sandbox on a 2-core machine). What the kernel prints goes to a file, shown in the verdict when the child fails."""
    with tempfile.TemporaryDirectory(prefix="urabrask-") as tmp:
        kernel, verdict, output = Path(tmp) / "artifact.kernel", Path(tmp) / "verdict.json", Path(tmp) / "output"
        kernel.write_bytes(data)
        args = [str(kernel), artifact_id, sha256, runs, iters, str(verdict), str(output)]
        try:
            code = _server().run(args, timeout)
        except SandboxServerError as exc:
            return {"passed": False, "failure": f"the sandbox could not run: {exc}"}
        if code is None:
            return {"passed": False, "failure": f"hang: no verdict within {timeout:.0f}s"}
        if code != 0:
            return {"passed": False, "failure": f"sandbox exited with status {code}: {_tail(output)}"}
        try:
            result = json.loads(verdict.read_text())
        except (OSError, ValueError):
            return {"passed": False, "failure": f"sandbox wrote no verdict: {_tail(output)}"}
    if not isinstance(result, dict):
        return {"passed": False, "failure": f"sandbox wrote a verdict that is not an object: {str(result)[:300]}"}
    return result


def _tail(path: Path, chars: int = 500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class SandboxServer:
    """``python -m esper_runtime.urabrask.sandbox --serve`` as this process's child, started on first use and again
    whenever it has gone away. ``run`` asks it to fork one sandbox and waits for that child's exit code; past the
    timeout the child is killed (by the PID the server reported) and ``run`` returns None."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.last_pid: int | None = None  # the last sandbox's
        self._buf = b""
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            self.proc = subprocess.Popen([sys.executable, "-m", "esper_runtime.urabrask.sandbox", "--serve"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
            self._buf = b""
        return self.proc

    def _line(self, deadline: float | None) -> dict | None:
        """The server's next line, or None when the deadline passed first."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], wait)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise SandboxServerError(f"the sandbox server exited (status {self.proc.wait()})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, args: list, timeout: float) -> int | None:
        with self._lock:
            proc = self._start()
            try:
                proc.stdin.write((json.dumps({"args": args}) + "\n").encode())
                proc.stdin.flush()
                pid = self._line(time.monotonic() + 60)  # the server answers as soon as it has forked
                if pid is None:
                    raise SandboxServerError("the sandbox server did not fork within 60 s")
                self.last_pid = int(pid["pid"])
                done = self._line(time.monotonic() + timeout)
                if done is not None:
                    return int(done["exit"])
                os.kill(pid["pid"], signal.SIGKILL)  # our sandbox, by the PID its server reported
                self._line(None)  # the server reaps it and says so
                return None
            except (OSError, ValueError, KeyError, SandboxServerError) as exc:
                self.close()  # whatever state it is in, the next kernel gets a new one
                raise SandboxServerError(str(exc) or type(exc).__name__) from exc

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # ours, by PID
            self.proc.wait()
        self.proc = None


_SERVER: SandboxServer | None = None


def _server() -> SandboxServer:
    global _SERVER
    if _SERVER is None:
        _SERVER = SandboxServer()
        atexit.register(_SERVER.close)
    return _SERVER


@dataclass
class UrabraskStats:
    validated: int = 0
    rejected: int = 0
    skipped: int = 0
    reports: list[dict] = field(default_factory=list)


class UrabraskWorker:
    def __init__(self, publisher: Publisher, store: ArtifactStore, distributions: Distributions | None = None,
                 known: set[str] | None = None, run_id: str = "urabrask", sandbox=run_sandbox):
        self.publisher = publisher
        self.store = store
        self.dist = distributions or Distributions()
        self.known = set(known or ())
        self.run_id = run_id
        self.sandbox = sandbox
        self.stats = UrabraskStats()
        # the hardware this host can measure on: its CPU, and its CUDA card when it has one
        self.hardware = {hardware_label("cpu")} | ({hardware_label("cuda")} if torch.cuda.is_available() else set())

    def can_measure(self, hardware: str) -> bool:
        """A CPU kernel (any ``cpu*`` label: a test's ``cpu`` too) on any host; a CUDA kernel on its own card."""
        return hardware.startswith("cpu") or hardware in self.hardware

    def handle(self, event: KernelCompiled) -> None:
        aid = event.artifact_id
        if aid in self.known:
            self.stats.skipped += 1
            return
        if not self.can_measure(event.hardware):
            # not this host's to judge: left (not marked known) for an Urabrask on hardware that runs it
            log.info("kernel %s is built for %s; this host measures %s: left for another worker", aid,
                     event.hardware, ", ".join(sorted(self.hardware)))
            self.stats.skipped += 1
            return
        self.known.add(aid)
        envs = EnvelopeFactory(self.run_id, PRODUCER, start={f"kernel/{aid}": event.envelope.originator_version})
        origin = f"kernel/{aid}"
        try:
            artifact = self.store.get_artifact(aid)
            result = self.sandbox(artifact.data, aid, event.sha256)  # the hash Tezzeret announced, not the store's
        except ArtifactNotFound as exc:
            result = {"passed": False, "failure": f"artifact missing from the store: {exc}"}
        passed = bool(result.get("passed"))
        report = KernelValidationReport(
            envelope=envs.next(origin), artifact_id=aid, hardware=event.hardware, passed=passed,
            latency_ms_mean=float(result.get("latency_ms_mean", 0.0)),
            latency_ms_p99=float(result.get("latency_ms_p99", 0.0)),
            throughput_ops_per_sec=float(result.get("throughput_ops_per_sec", 0.0)),
            memory_mb_peak=float(result.get("memory_mb_peak", 0.0)),
            power_watts_avg=float(result["power_watts_avg"]) if result.get("power_watts_avg") is not None else None,
            precision_drift_vs_fp32=float(result.get("precision_drift_vs_fp32", 0.0)),
            runs=int(result.get("runs", 0)), spread={k: float(v) for k, v in result.get("spread", {}).items()},
            failure=str(result.get("failure", ""))[:4000],
        )
        key = f"kernel/{aid}"
        self.publisher.publish(report, key=key)
        self.stats.reports.append(result)
        if not passed:
            log.warning("kernel %s rejected: %s", aid, report.failure)
            self.publisher.publish(KernelStatusChanged(
                envelope=envs.next(origin), artifact_id=aid, blueprint_id=event.blueprint_id, from_status="COMPILED",
                to_status="REJECTED", reason=report.failure[:1000]), key=key)
            self.stats.rejected += 1
            self.publisher.flush()
            return
        tags = assign_tags(self.dist, event.hardware, result)
        self.dist.add(event.hardware, aid, {"latency_ms_mean": report.latency_ms_mean,
                                            "memory_mb_peak": report.memory_mb_peak})
        self.publisher.publish(KernelTagsAssigned(
            envelope=envs.next(origin), artifact_id=aid, hardware=event.hardware, tags=tags.tags,
            risk_score=tags.risk_score, conf_level=tags.conf_level, method=tags.method,
            population=tags.population), key=key)
        self.publisher.publish(KernelStatusChanged(
            envelope=envs.next(origin), artifact_id=aid, blueprint_id=event.blueprint_id, from_status="COMPILED",
            to_status="VALIDATED", reason=f"{tags.method}: {', '.join(tags.tags)}"), key=key)
        self.publisher.flush()
        self.stats.validated += 1

    def run(self, consumer, idle_timeout: float | None = None) -> UrabraskStats:
        def handle(item):
            if item.name == KernelCompiled.AVRO_NAME:
                self.handle(item.decoded.typed())

        consumer.run(handle, idle_timeout=idle_timeout)
        return self.stats
