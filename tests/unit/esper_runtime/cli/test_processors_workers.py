"""``esper processors --workers``: the workers stop with their main process, and ports they would need that are
taken are found before anything starts."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import esper_runtime.cli.processors as cli


def test_the_workers_are_told_to_stop_when_their_main_process_is_gone(monkeypatch):
    started = []

    class FakePopen:
        pid, returncode = 1, None

        def __init__(self, args, env=None, start_new_session=False):
            started.append((args, env))
            assert start_new_session  # the terminal's Ctrl-C is for main alone

        def poll(self):
            return None

        def wait(self, timeout=None):
            return 0

        def terminate(self):
            self.returncode = -15

    monkeypatch.setattr("subprocess.Popen", FakePopen)
    workers = cli._spawn(("seed-state",), "app-state", 7000, 2, "warning")
    workers.stop()
    assert [args[args.index("--port") + 1] for args, _ in started] == ["7001", "7002"]
    assert all(env is not None and env[cli.EXIT_WITH_PARENT] == "1" for _, env in started)


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_worker_that_exits_is_started_again_and_one_that_keeps_exiting_is_left_down():
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    crasher = [sys.executable, "-c", "raise SystemExit(3)"]
    workers = cli._Workers([sleeper, crasher], poll=0.05, burst=3, window=60.0)
    try:
        first = workers.children[0].pid
        os.kill(first, signal.SIGKILL)  # killed from outside
        _wait_for(lambda: any(r["pid"] == first and r["started_again"] for r in workers.restarts))
        assert workers.children[0].pid != first and workers.children[0].poll() is None
        _wait_for(lambda: any(r["worker"] == 2 and not r["started_again"] for r in workers.restarts))
        crashes = [r for r in workers.restarts if r["worker"] == 2]
        assert [r["started_again"] for r in crashes] == [True, True, False]
        assert {r["exit_code"] for r in crashes} == {3}
        time.sleep(0.3)  # left down: not started a fourth time
        assert len([r for r in workers.restarts if r["worker"] == 2]) == 3
        restarted = workers.children[0]
    finally:
        workers.stop(grace=5)
    assert restarted.poll() is not None  # stopped with the rest, and not started again after it
    time.sleep(0.2)
    assert workers.children[0] is restarted


def test_a_taken_port_is_found():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert cli._taken_ports(port, 1) == [port]
    with socket.socket() as probe:  # a port nobody holds (the OS's pick, let go)
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert cli._taken_ports(free, 1) == []


def test_a_worker_that_cannot_be_started_again_is_tried_each_poll_then_left_down():
    crasher = [sys.executable, "-c", "raise SystemExit(3)"]
    workers = cli._Workers([crasher], poll=0.05, burst=3, window=60.0)
    real = workers._popen

    def failing(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    workers._popen = failing
    try:
        _wait_for(lambda: any(r["worker"] == 1 and "error" not in r and not r["started_again"]
                              for r in workers.restarts))
        assert [r.get("error", "")[:9] for r in workers.restarts] == ["[Errno 12", "[Errno 12", ""]
        assert workers._thread.is_alive()  # the watch goes on for the other workers
    finally:
        workers._popen = real
        workers.stop()
