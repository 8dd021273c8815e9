"""The processors' app against the real broker and chdb: killed (-9) and stopped (SIGTERM) at several points while
events flow, restarted each time, it ends in exactly the state a clean replay of the log gives — every seed of every
run, the Urza library, Urabrask's peers and the ClickHouse tables — and bad records end on the dead-letter topic."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from views.run_view import RunView
from streams.state import read_state_topic
from views.urza_view import UrzaView
from streams import Backbone, load_settings
from streams.contracts import SeedLifecycleTransition, SeedState
from streams.envelope import EnvelopeFactory
from streams.synthetic import synthetic_library, synthetic_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessorsProcess:
    """``esper processors`` as a child process of this test (the only processes it ever signals)."""

    def __init__(self, env: dict, log: Path, args: tuple[str, ...] = ()):
        self.env, self.log, self.proc, self.args = env, log, None, tuple(args)

    def start(self) -> None:
        loglevel = os.environ.get("ESPER_TEST_PROCESSORS_LOGLEVEL", "warning")  # info: to chase a failure
        self.proc = subprocess.Popen([sys.executable, "-m", "esper_runtime.cli.main", "processors", "--loglevel", loglevel,
                                      *self.args],
                                     env=self.env,
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

    def status(self) -> dict | None:
        try:
            url = f"http://127.0.0.1:{self.env['ESPER_PROCESSORS_PORT']}/esper/status/"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return json.loads(resp.read())
        except OSError:
            return None

    def wait_applied(self, agent: str, at_least: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            st = self.status()
            if st and st["stats"].get(agent, {}).get("applied", 0) >= at_least:
                return
            time.sleep(0.1)
        raise AssertionError(f"{agent} applied fewer than {at_least}: {self.status()}")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> float:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        return time.monotonic() - t0


def _publish(bb: Backbone, triples) -> list:
    pub = bb.publisher()
    events = []
    for topic, key, ev in triples:
        pub.publish(ev, topic=bb.resolve_topic(topic), key=key)
        events.append(ev)
    pub.flush()
    return events


@pytest.fixture
def processors_process(tmp_path):
    """Started by the test; whatever happens, not left running after it."""
    made = []

    def make(env):
        made.append(ProcessorsProcess(env, tmp_path / "processors.log"))
        return made[-1]

    yield make
    for p in made:
        if p.proc is not None and p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(timeout=10)


def test_processors_survive_kill_and_restart_and_match_a_replay(topic_registry, tmp_path, processors_process):
    registry = topic_registry()
    env = dict(os.environ, ESPER_TOPIC_PREFIX=registry.prefix, ESPER_HOME=str(tmp_path),
               ESPER_PROCESSORS_PORT=str(_free_port()))
    bb = Backbone(load_settings(topic_prefix=registry.prefix, home=tmp_path), registry)
    runs = [f"run-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    procs = processors_process(env)

    published = _publish(bb, synthetic_library(12, seed=1))
    published += _publish(bb, synthetic_run(runs[0], seed=1))
    procs.start()
    procs.wait_applied("seed-state", 1)
    procs.kill9()  # early: tables barely written, offsets maybe not committed

    first_half = list(synthetic_run(runs[1], seed=2))
    published += _publish(bb, first_half[: len(first_half) // 2])
    procs.start()
    published += _publish(bb, first_half[len(first_half) // 2:])
    published += _publish(bb, synthetic_library(12, seed=2))
    procs.wait_applied("seed-state", 10)
    procs.kill9()  # mid-stream

    # redelivered events (same ids), a version gap, bad bytes and a record on the wrong topic
    again = [(t, k, e) for t, k, e in synthetic_run(runs[0], seed=1)][:40]
    gap_envs = EnvelopeFactory(runs[2], "test", start={"seed/9/9": 1})  # version 2 with no version 1
    gap = SeedLifecycleTransition(envelope=gap_envs.next("seed/9/9"), layer_id=9, seed_id=9,
                                  from_state=SeedState.DORMANT, to_state=SeedState.GERMINATED, epoch=0,
                                  command_id=None, kernel_artifact_id=None, reason="test")
    published += _publish(bb, again + [("kasmina.lifecycle.transitions", "seed/9/9", gap)])
    pub = bb.publisher()
    pub.publish_raw(bb.resolve_topic("kasmina.lifecycle.transitions"), b"\x00\x01 this is not avro at all", b"seed/0/0")
    stray = next(iter(synthetic_run("x")))[2]  # a RunStarted, valid Avro, on Urza's topic
    pub.publish_raw(bb.resolve_topic("urza.kernels.events"), bb.serde.encode(stray), b"kernel/x")
    pub.flush()
    procs.start()
    published += _publish(bb, synthetic_run(runs[2], seed=3))
    procs.wait_applied("seed-state", 5)
    assert procs.stop() < 10  # SIGTERM stops it in seconds
    procs.start()
    procs.kill9()  # while starting up

    procs.start()
    expected_runs = {}
    for run in runs:
        view = RunView(run)
        for ev in published:
            view.apply(ev)
        expected_runs[run] = view
    expected_urza = UrzaView().apply_all(published)
    expected_dist = {f"{e.hardware}|{e.artifact_id}": e.latency_ms_mean for e in published
                     if type(e).__name__ == "KernelValidationReport" and e.passed}

    def materialized():
        seeds = read_state_topic(bb, "state.kasmina.seeds")
        urza = read_state_topic(bb, "state.urza.library")
        dist = read_state_topic(bb, "state.urabrask.distributions")
        by_run = {run: {v["seed"]: v for v in seeds.values() if v["run_id"] == run} for run in runs}
        view = UrzaView.restore(urza.items(), lambda raw: bb.serde.decode(raw).typed())
        return by_run, view.state(), {k: v["latency_ms_mean"] for k, v in dist.items()}

    want = ({run: v.seed_states for run, v in expected_runs.items()}, expected_urza.state(), expected_dist)
    deadline = time.monotonic() + 90
    while (got := materialized()) != want and time.monotonic() < deadline:
        time.sleep(1)
    assert got[0] == want[0]
    assert got[1] == want[1]
    assert got[2] == want[2]
    assert expected_runs[runs[2]].gaps and "seed/9/9" not in got[0][runs[2]]

    # ClickHouse: every epoch, decision, transition, report and seed-health row exactly once (FINAL dedups)
    counts = Counter(type(e).__name__ for e in {e.envelope.event_id: e for e in published}.values())
    health_rows = sum(len(e.seeds) for e in {e.envelope.event_id: e for e in published}.values()
                      if type(e).__name__ == "SeedTelemetry")
    want_rows = {"epochs": counts["EpochCompleted"], "decisions": counts["TamiyoDecision"],
                 "lifecycle_transitions": counts["SeedLifecycleTransition"], "field_reports": counts["FieldReport"],
                 "kernel_measurements": counts["KernelValidationReport"], "seed_telemetry": health_rows}
    from processors.clickhouse import open_store

    deadline = time.monotonic() + 90  # the last worker may still be starting (the state above was already there)
    while procs.status() is None and time.monotonic() < deadline:
        assert procs.proc.poll() is None, procs.log.read_text()[-3000:]
        time.sleep(0.5)
    store = open_store(load_settings(home=tmp_path))  # through the running processors' SQL endpoint
    if type(store).__name__ != "OwnerClient":
        store.close()  # on the way to failing, never keep this process's one embedded chdb from later tests
    assert type(store).__name__ == "OwnerClient"
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:  # every read runs on the sink's one chdb thread: poll gently
        got_rows = {t: store.rows(f"SELECT count() AS n FROM esper.{t} FINAL")[0]["n"] for t in want_rows}
        if got_rows == want_rows:
            break
        time.sleep(3)
    assert got_rows == want_rows, procs.status()  # the agents' counters, for a sink that fell behind
    # the endpoint serves reads only: no DDL, no writes, no file() for a token holder; the owner's sink still writes
    from processors.clickhouse import StoreError

    for hostile in ("DROP TABLE esper.epochs", "SELECT * FROM file('/etc/hostname', 'LineAsString')",
                    "SELECT 1; TRUNCATE TABLE esper.epochs"):
        with pytest.raises(StoreError):
            store.rows(hostile)
    assert store.rows("SELECT count() AS n FROM esper.epochs FINAL")[0]["n"] == want_rows["epochs"]
    procs.stop()

    # the bad records are on the dead-letter topic, with their reasons
    reasons = Counter()
    for rec in bb.replay_reader().records([registry.deadletter]):
        reasons[(rec.header("esper.dlq.reason") or b"").decode()] += 1
    assert reasons["bad-magic"] >= 1 and reasons["wrong-topic"] >= 1 and reasons["version-gap"] >= 1, reasons
    bb.close()
