"""``esper processors --workers``: the workers stop with their main process, and ports they would need that are
taken are found before anything starts."""

from __future__ import annotations

import socket

import esper_runtime.cli.processors as cli


def test_the_workers_are_told_to_stop_when_their_main_process_is_gone(monkeypatch):
    started = []

    class FakePopen:
        def __init__(self, args, env=None):
            started.append((args, env))

    monkeypatch.setattr("subprocess.Popen", FakePopen)
    cli._spawn(("seed-state",), "app-state", 7000, 2, "warning")
    assert [args[args.index("--port") + 1] for args, _ in started] == ["7001", "7002"]
    assert all(env is not None and env[cli.EXIT_WITH_PARENT] == "1" for _, env in started)


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
