"""Two workers of one consumer group materialize seed state together, each holding only its partitions' state:
while runs' transitions flow, a worker is killed (SIGKILL) at random points and started again; the other takes its
partitions over (restoring their state from the state topic's partitions, not the whole topic), and in the end the
state equals a replay of the log. A state topic written with the old layout is refused, and --rebuild folds it
again."""

from __future__ import annotations

import contextlib
import os
import signal
import random
import time
import uuid

import pytest

from streams import Backbone, load_settings
from streams.state import read_state_topic
from streams.synthetic import synthetic_run
from views.run_view import RunView

from .test_processors import ProcessorsProcess, _free_port, _publish

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _free_ports(n: int) -> int:
    """A port p with p..p+n-1 all free on 127.0.0.1 now (``--workers`` puts its workers on the ports after the app's:
    a free port alone left a worker to find its neighbour taken, in CI)."""
    import socket

    for _ in range(100):
        base = _free_port()
        if base + n > 65535:
            continue
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + n):
                    s = held.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise RuntimeError(f"no {n} free ports in a row")


def _seeds(bb, runs):
    seeds = read_state_topic(bb, "state.kasmina.seeds")
    return {run: {v["seed"]: v for v in seeds.values() if v["run_id"] == run} for run in runs}


def test_two_workers_share_the_partitions_and_survive_kills(topic_registry, tmp_path):
    registry = topic_registry()
    bb = Backbone(load_settings(topic_prefix=registry.prefix, home=tmp_path), registry)
    group = f"{registry.prefix}scaled"
    workers = []
    for i in range(2):
        env = dict(os.environ, ESPER_TOPIC_PREFIX=registry.prefix, ESPER_HOME=str(tmp_path / f"w{i}"),
                   ESPER_PROCESSORS_PORT=str(_free_port()))
        workers.append(ProcessorsProcess(env, tmp_path / f"worker{i}.log",
                                         ("--agents", "seed-state", "--app-id", group)))
    rng = random.Random(11)
    runs = [f"run-{uuid.uuid4().hex[:6]}" for _ in range(6)]
    published = []
    recoveries = []
    try:
        for w in workers:
            w.start()
        for k, run in enumerate(runs):
            events = list(synthetic_run(run, seed=k))
            half = len(events) // 2
            published += _publish(bb, events[:half])
            victim = workers[rng.randrange(2)]
            time.sleep(rng.uniform(0.0, 2.0))
            victim.kill9()  # at a random point while the run's events are being materialized
            t0 = time.monotonic()
            published += _publish(bb, events[half:])
            want = RunView(run)
            for ev in published:
                want.apply(ev)
            deadline = time.monotonic() + 90
            while _seeds(bb, [run])[run] != want.seed_states and time.monotonic() < deadline:
                time.sleep(0.5)  # the survivor must take the dead worker's partitions over
            recoveries.append(round(time.monotonic() - t0, 1))
            assert _seeds(bb, [run])[run] == want.seed_states, f"run {run} not materialized after a kill"
            victim.start()
        expected = {}
        for run in runs:
            view = RunView(run)
            for ev in published:
                view.apply(ev)
            expected[run] = view.seed_states
        deadline = time.monotonic() + 60
        while (got := _seeds(bb, runs)) != expected and time.monotonic() < deadline:
            time.sleep(1)
        assert got == expected
        statuses = []
        for w in workers:
            deadline = time.monotonic() + 30
            while (st := w.status()) is None and time.monotonic() < deadline:
                time.sleep(0.5)
            statuses.append(st)
        print(f"recovery after each kill (s): {recoveries}; workers: {[s and s['stats'] for s in statuses]}")
    finally:
        for w in workers:
            if w.proc is not None and w.proc.poll() is None:
                w.stop()
        bb.close()


def test_state_laid_out_the_old_way_is_refused_and_rebuilt(topic_registry, tmp_path):
    import subprocess
    import sys

    from streams.state import encode_state_value

    registry = topic_registry()
    bb = Backbone(load_settings(topic_prefix=registry.prefix, home=tmp_path), registry)
    run = f"run-{uuid.uuid4().hex[:6]}"
    published = _publish(bb, synthetic_run(run, seed=5))
    old = {"run_id": "gone", "seed": "seed/0/0", "state": "GERMINATED", "version": 1, "epoch": 0,
           "kernel_artifact_id": None, "reason": "", "event_id": "e", "occurred_at_ms": 0}
    topic = bb.resolve_topic("state.kasmina.seeds")
    pub = bb.publisher()
    pub.publish_raw(topic, encode_state_value(bb.serde, registry.spec(topic), old), b"gone|seed/0/0")  # no header
    pub.flush()
    env = dict(os.environ, ESPER_TOPIC_PREFIX=registry.prefix, ESPER_HOME=str(tmp_path),
               ESPER_PROCESSORS_PORT=str(_free_port()))
    args = [sys.executable, "-m", "esper_runtime.cli.main", "processors", "--agents", "seed-state", "--app-id",
            f"{registry.prefix}relayout"]
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--rebuild" in res.stdout + res.stderr, res.stdout[-2000:] + res.stderr[-2000:]
    worker = ProcessorsProcess(env, tmp_path / "rebuilt.log", ("--agents", "seed-state", "--app-id",
                                                              f"{registry.prefix}relayout", "--rebuild-stale"))
    worker.start()
    try:
        want = RunView(run)
        for ev in published:
            want.apply(ev)
        deadline = time.monotonic() + 90
        # the status port opens after the rebuild has deleted and recreated the state topic; reading it before
        # may find no topic at all
        while worker.status() is None and time.monotonic() < deadline:
            assert worker.proc.poll() is None, worker.log.read_text()[-3000:]
            time.sleep(0.5)
        while (got := _seeds(bb, [run, "gone"])) != {run: want.seed_states, "gone": {}} and \
                time.monotonic() < deadline:
            time.sleep(1)
        assert got == {run: want.seed_states, "gone": {}}  # folded again from the log; the stray entry is gone
    finally:
        if worker.proc.poll() is None:
            worker.stop()
        bb.close()


def _readers_agree_with_the_replay(registry, home, port, run, want, want_urza, published) -> None:
    """What users read while several workers hold the state — the REST API (Nissa's data) and ``esper replay
    --verify``'s comparison — equals the replay: the API's library from the state topic, its run from the store the
    parent owns, the seeds from every worker's partitions."""
    from fastapi.testclient import TestClient

    from esper_runtime.api.app import ApiData, create_app
    from esper_runtime.api.auth import ApiSettings, TokenVerifier, generate_keypair, issue_token
    from streams.contracts import EpochCompleted, SeedLifecycleTransition
    from views.live import processors_running, verify

    settings = load_settings(topic_prefix=registry.prefix, home=home, processors_port=port)
    reader = Backbone(settings, registry)
    try:
        assert processors_running(settings)
        assert verify(reader, want, timeout=60) == []
        private, public = generate_keypair(home / "api-key")
        api = ApiSettings(issuer="https://id.test", audience="esper-api", public_keys=str(public))
        client = TestClient(create_app(ApiData(reader), TokenVerifier(api), api), raise_server_exceptions=False)
        auth = {"Authorization": "Bearer " + issue_token(private.read_bytes(), "alice", ["esper:read"],
                                                         "https://id.test", "esper-api", 600)}
        kernels = client.get("/api/v1/kernels", headers=auth)
        assert kernels.status_code == 200
        assert {k["artifact_id"] for k in kernels.json()["kernels"]} == set(want_urza["kernels"])
        ours = [ev for ev in published if ev.envelope.run_id == run]
        epochs = sum(1 for ev in ours if isinstance(ev, EpochCompleted))
        transitions = sum(1 for ev in ours if isinstance(ev, SeedLifecycleTransition))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the sink in the parent may still be inserting
            detail = client.get(f"/api/v1/runs/{run}", headers=auth)
            if detail.status_code == 200 and len(detail.json()["epochs"]) == epochs and \
                    len(detail.json()["transitions"]) == transitions:
                break
            time.sleep(1)
        assert detail.status_code == 200, detail.text
        body = detail.json()
        assert (len(body["epochs"]), len(body["transitions"])) == (epochs, transitions)
        last = {}
        for t in body["transitions"]:  # ordered by version: the last is the seed's state
            last[f"seed/{t['layer_id']}/{t['seed_id']}"] = t["to_state"]
        assert last == {seed: s["state"] for seed, s in want.seed_states.items()}
    finally:
        reader.close()


def test_workers_flag_runs_the_scalable_agents_in_children_and_stops_them(topic_registry, tmp_path):
    import json
    import urllib.request

    from streams.synthetic import synthetic_library
    from views.urza_view import UrzaView

    registry = topic_registry()
    bb = Backbone(load_settings(topic_prefix=registry.prefix, home=tmp_path), registry)
    port = _free_ports(3)  # the app's, and its two workers' (port+1, port+2)
    env = dict(os.environ, ESPER_TOPIC_PREFIX=registry.prefix, ESPER_HOME=str(tmp_path),
               ESPER_PROCESSORS_PORT=str(port))
    main = ProcessorsProcess(env, tmp_path / "main.log", ("--workers", "2"))
    run = f"run-{uuid.uuid4().hex[:6]}"
    main.start()
    try:
        published = _publish(bb, synthetic_library(4, seed=6)) + _publish(bb, synthetic_run(run, seed=6))
        want = RunView(run)
        for ev in published:
            want.apply(ev)
        want_urza = UrzaView().apply_all(published).state()

        def urza():
            entries = read_state_topic(bb, "state.urza.library")
            return UrzaView.restore(entries.items(), lambda raw: bb.serde.decode(raw).typed()).state()

        deadline = time.monotonic() + 120
        while (_seeds(bb, [run])[run] != want.seed_states or urza() != want_urza) and time.monotonic() < deadline:
            time.sleep(1)
        assert _seeds(bb, [run])[run] == want.seed_states and urza() == want_urza
        st = main.status()
        assert st["agents"] == ["urza", "telemetry-sink"] and len(st["workers"]) == 2
        _readers_agree_with_the_replay(registry, tmp_path, port, run, want, want_urza, published)
        pids = []
        for url in st["workers"]:
            with urllib.request.urlopen(url, timeout=5) as resp:
                worker = json.loads(resp.read())
                assert worker["agents"] == ["seed-state", "distributions"]
                pids.append(worker["pid"])
        os.kill(pids[0], signal.SIGKILL)  # a worker dies: main starts it again, on its port

        def worker_pid():
            try:
                with urllib.request.urlopen(st["workers"][0], timeout=2) as resp:
                    return json.loads(resp.read())["pid"]
            except OSError:
                return None

        deadline = time.monotonic() + 120
        while worker_pid() in (None, pids[0]) and time.monotonic() < deadline:
            time.sleep(1)
        assert worker_pid() not in (None, pids[0])
        [restart] = main.status()["worker_restarts"]
        assert restart["pid"] == pids[0] and restart["started_again"] and restart["new_pid"] == worker_pid()
        assert main.stop() < 30
        for url in st["workers"]:  # stopped with it
            with pytest.raises(OSError):
                urllib.request.urlopen(url, timeout=2)
    finally:
        if main.proc.poll() is None:
            main.proc.kill()
        bb.close()
