"""The processors' app a run started is found again by its PID record: stopped by ``esper infra down`` (what a run
killed with SIGKILL left), never a process whose PID was reused, and records of gone processes are cleared. The
app's own exit-with-parent watch is held to its contract with a real parent that dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esper_runtime.infra import LocalProcessors, stop_recorded
from streams.config import load_settings
from streams.process import pid_alive

# a stand-in with the app's command line (sys.argv after -c is free), so the record's check accepts it
_LOOKALIKE = [sys.executable, "-c", "import time; time.sleep(120)", "esper_runtime.cli.main", "processors"]


def _start(args) -> subprocess.Popen:
    """Started, and past its exec (until then /proc shows the forking process's command line)."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while args[-1].encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc


@pytest.fixture
def settings(tmp_path):
    s = load_settings(home=tmp_path / "home", topic_prefix="t.")
    (s.home / "processors").mkdir(parents=True)
    return s


def test_stop_recorded_stops_the_recorded_app_and_clears_the_record(settings):
    app = _start(_LOOKALIKE)
    try:
        record = LocalProcessors(settings).pid_file
        record.write_text(f"{app.pid} 999999999\n")
        said = []
        assert stop_recorded(settings, grace=10, echo=said.append) == [app.pid]
        assert not pid_alive(app.pid)  # (reaped by the check: Popen cannot see how it ended)
        assert not record.exists() and str(app.pid) in said[0]
    finally:
        app.kill()
        app.wait()


def test_a_reused_pid_is_never_signalled(settings):
    other = _start([sys.executable, "-c", "import time; time.sleep(120)"])  # not the processors
    try:
        record = LocalProcessors(settings).pid_file
        record.write_text(f"{other.pid} {os.getpid()}\n")
        assert stop_recorded(settings, grace=1) == []
        assert other.poll() is None, "a process that is not the processors was signalled"
        assert not record.exists()
    finally:
        other.kill()
        other.wait()


def test_records_of_gone_or_garbled_processes_are_cleared(settings):
    dead = _start([sys.executable, "-c", "pass"])
    dead.wait()
    base = settings.home / "processors"
    (base / "app-a.pid").write_text(f"{dead.pid} 1\n")
    (base / "app-b.pid").write_text("not a pid\n")
    assert stop_recorded(settings) == []
    assert list(base.glob("app-*.pid")) == []


def test_up_stops_an_app_whose_starter_is_gone_before_using_it(settings, monkeypatch):
    """A run killed with SIGKILL left its app (it is going away, or predates the watch): the next run stops it
    rather than reuse one that is leaving. (The status page is stood in for: what is held here is that the orphan
    is stopped before anything answering is taken for the app.)"""
    app = _start(_LOOKALIKE)
    try:
        lp = LocalProcessors(settings)
        lp.pid_file.write_text(f"{app.pid} 999999999\n")  # a starter that no longer runs
        asked = []
        monkeypatch.setattr(LocalProcessors, "status",
                            lambda self: asked.append(pid_alive(app.pid)) or {"app_id": self.app_id})
        said = []
        assert lp.up(timeout=3, echo=said.append) is False  # "already running": the stand-in answered
        assert asked == [False], "the status was asked while the orphan still ran"
        assert not lp.pid_file.exists() and any(f"pid {app.pid}" in line for line in said)
    finally:
        app.kill()
        app.wait()


def test_up_leaves_an_app_whose_starter_runs(settings, monkeypatch):
    app = _start(_LOOKALIKE)
    try:
        lp = LocalProcessors(settings)
        lp.pid_file.write_text(f"{app.pid} {os.getpid()}\n")  # another run, still going, shares the home
        monkeypatch.setattr(LocalProcessors, "status", lambda self: {"app_id": self.app_id})
        assert lp.up(timeout=3, echo=lambda m: None) is False
        assert pid_alive(app.pid) and lp.pid_file.exists()
    finally:
        app.kill()
        app.wait()


def test_the_app_stops_when_its_starter_is_killed(tmp_path):
    """The real watch (``_exit_with_parent``): a starter runs it and is SIGKILLed; the watcher sees its parent change
    and SIGTERMs itself."""
    pid_out = tmp_path / "child.pid"
    child_code = ("import os, sys, time, signal\n"
                  "from esper_runtime.cli.processors import _exit_with_parent\n"
                  "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n"
                  f"open({str(pid_out)!r}, 'w').write(str(os.getpid()))\n"
                  "_exit_with_parent(poll=0.1)\n"
                  "time.sleep(60)\n")
    starter_code = ("import subprocess, sys, time\n"
                    f"subprocess.Popen([sys.executable, '-c', {child_code!r}], start_new_session=True)\n"
                    "time.sleep(60)\n")
    starter = _start([sys.executable, "-c", starter_code])
    try:
        deadline = time.monotonic() + 30
        while not (pid_out.exists() and pid_out.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        child = int(pid_out.read_text())
        assert pid_alive(child)
        starter.kill()
        starter.wait()
        deadline = time.monotonic() + 15
        while pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(child), "the app outlived the process that started it"
    finally:
        if starter.poll() is None:
            starter.kill()
        if pid_out.exists() and pid_out.read_text() and pid_alive(int(pid_out.read_text())):
            os.kill(int(pid_out.read_text()), signal.SIGKILL)


def test_records_live_in_the_home(settings):
    assert LocalProcessors(settings).pid_file == Path(settings.home) / "processors" / "app-t.esper-processors.pid"
