"""``esper processors``: the stream processors (faust-streaming) that materialize state and sink telemetry."""

from __future__ import annotations

import os

import typer
from rich.console import Console


console = Console(stderr=True)
EXIT_WITH_PARENT = "ESPER_PROCESSORS_EXIT_WITH_PARENT"  # "1": stop when the starting process is gone


def processors(
    agents: str = typer.Option("seed-state,urza,distributions,telemetry-sink",
                               help="Which agents to run (comma-separated)."),
    port: int = typer.Option(None, help="Web port on 127.0.0.1 for /esper/status/ and SQL (default "
                                        "ESPER_PROCESSORS_PORT or 6066)."),
    loglevel: str = typer.Option("warning", help="faust's log level."),
    app_id: str = typer.Option(None, "--app-id", help="The consumer group (default <prefix>esper-processors). "
                               "Workers started with the same id and agents share the partitions: run "
                               "seed-state,distributions in as many as you like; urza and telemetry-sink in one."),
    rebuild: bool = typer.Option(False, "--rebuild", help="First fold the state again from the log: delete the "
                                 "state topics of these agents and the group's committed offsets (no worker of "
                                 "the group may be running), then run."),
    rebuild_stale: bool = typer.Option(False, "--rebuild-stale", help="--rebuild only if a state topic was laid out "
                                       "by an older Esper (what `esper demo` and `esper run` start them with)."),
    workers: int = typer.Option(1, "--workers", min=1, max=16,
                                help="Run seed-state and distributions in N child processes of one consumer group "
                                     "(<app id>-state, ports port+1..port+N, checked free first), each holding its "
                                     "partitions' state; this process keeps urza and telemetry-sink, starts a "
                                     "child that exits again (one that exits 5 times in 60 s is left down), and "
                                     "the children stop with it, also when it is killed."),
) -> None:
    """Run the processors' app until SIGTERM or Ctrl-C: seed state -> state.kasmina.seeds, Urza ->
    state.urza.library, Urabrask's peers -> state.urabrask.distributions, telemetry -> ClickHouse (this process
    owns the embedded store and serves `esper sql` while it runs)."""
    from processors.app import AGENTS, BENCH_AGENTS, SCALABLE, Processors

    chosen = tuple(a.strip() for a in agents.split(",") if a.strip())
    unknown = set(chosen) - set(AGENTS) - set(BENCH_AGENTS)
    if unknown:
        raise typer.BadParameter(f"unknown agents {sorted(unknown)}; choose from {', '.join(AGENTS)}")
    scaled = tuple(a for a in chosen if a in SCALABLE) if workers > 1 else ()
    procs = Processors(agents=tuple(a for a in chosen if a not in scaled), web_port=port, app_id=app_id)
    children_procs = Processors(agents=scaled, app_id=f"{procs.app_id}-state") if scaled else None
    if scaled:
        taken = _taken_ports(procs.web_port + 1, workers)
        if taken:
            raise typer.BadParameter(f"{workers} workers need ports {procs.web_port + 1}..{procs.web_port + workers} "
                                     f"(one each), and something holds {', '.join(map(str, taken))}: choose "
                                     "another --port", param_hint="--workers")
    for p in (procs, children_procs):
        if p is not None and (rebuild or (rebuild_stale and p.stale())):
            console.print(f"rebuilding: {', '.join(p.rebuild())} deleted; the state is folded again from the log")
    children = _spawn(scaled, children_procs.app_id, procs.web_port, workers, loglevel) if scaled else None
    if children is not None:
        procs.links["workers"] = [f"http://127.0.0.1:{procs.web_port + i}/esper/status/"
                                  for i in range(1, len(children) + 1)]
        procs.links["worker_restarts"] = children.restarts  # the list itself: the status shows it as it grows
    console.print(f"processors {procs.app_id}: {', '.join(procs.agents)}; status at "
                  f"http://127.0.0.1:{procs.web_port}/esper/status/"
                  + (f"; {len(children)} workers of {children_procs.app_id}: {', '.join(scaled)}" if children else ""))
    if os.environ.get(EXIT_WITH_PARENT) == "1":
        _exit_with_parent()
    try:
        procs.run(loglevel=loglevel)
    finally:
        if children is not None:
            children.stop()


def _exit_with_parent(poll: float = 1.0) -> None:
    """SIGTERM this process once the process that started it is gone (its parent changes when it dies: the app
    is then re-parented), so an ``esper run`` killed with SIGKILL does not leave its app running."""
    import signal
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        console.print(f"the process that started this app ({parent}) is gone; stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _taken_ports(first: int, n: int) -> list[int]:
    """Which of ports ``first``..``first + n - 1`` on 127.0.0.1 something already holds."""
    from esper_runtime.infra.local_kafka import _port_taken

    return [port for port in range(first, first + n) if _port_taken(port)]


def _spawn(agents: tuple[str, ...], app_id: str, port: int, n: int, loglevel: str) -> "_Workers":
    """The workers, each told to stop when this process is gone (a SIGKILLed main would otherwise leave them
    running: ``_stop`` is never reached), and watched (``_Workers``)."""
    import sys

    env = {**os.environ, EXIT_WITH_PARENT: "1"}
    return _Workers([[sys.executable, "-m", "esper_runtime.cli.main", "processors", "--agents", ",".join(agents),
                      "--app-id", app_id, "--port", str(port + i), "--loglevel", loglevel] for i in range(1, n + 1)],
                    env)


class _Workers:
    """Child processes watched from a thread: one that exits while this process runs is started again with the
    same command (its partitions go to the other workers of the group meanwhile, and come back by the group's
    rebalance); one that exits ``burst`` times within ``window`` seconds is left down. Each exit is said on the
    console and listed in ``restarts`` (the app's status shows it as ``worker_restarts``)."""

    def __init__(self, commands: list[list[str]], env: dict | None = None, poll: float = 1.0, burst: int = 5,
                 window: float = 60.0):
        import collections
        import subprocess
        import threading

        self.commands, self.env, self.poll, self.burst, self.window = commands, env, poll, burst, window
        self._popen = subprocess.Popen
        self.children = [self._start(c) for c in commands]
        self.restarts: list[dict] = []
        self._exits = [collections.deque() for _ in commands]
        self._down: set[int] = set()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="processors-workers", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        return len(self.children)

    def _start(self, command: list[str]):
        # a session of its own: a Ctrl-C at the terminal reaches this process only, which then stops the workers
        # (``stop``), instead of every worker at once, each then seen exiting and started again
        return self._popen(command, env=self.env, start_new_session=True)

    def _watch(self) -> None:
        import time

        while not self._stopping.wait(self.poll):
            with self._lock:
                if self._stopping.is_set():
                    return
                for i, child in enumerate(self.children):
                    if i in self._down or child.poll() is None:
                        continue
                    now = time.monotonic()
                    exits = self._exits[i]
                    exits.append(now)
                    while now - exits[0] > self.window:
                        exits.popleft()
                    entry = {"worker": i + 1, "pid": child.pid, "exit_code": child.returncode,
                             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                    if len(exits) >= self.burst:
                        self._down.add(i)
                        self.restarts.append({**entry, "started_again": False})
                        console.print(f"worker {i + 1} (pid {child.pid}) exited with code {child.returncode}, "
                                      f"{len(exits)} times in {self.window:.0f} s: left down; the other workers "
                                      "hold its partitions")
                        continue
                    try:
                        self.children[i] = self._start(self.commands[i])
                    except OSError as exc:  # no fork, no memory: tried again next poll, until left down
                        self.restarts.append({**entry, "started_again": False, "error": str(exc)})
                        console.print(f"worker {i + 1} (pid {child.pid}) exited with code {child.returncode}; "
                                      f"starting it again failed: {exc}")
                        continue
                    self.restarts.append({**entry, "started_again": True, "new_pid": self.children[i].pid})
                    console.print(f"worker {i + 1} (pid {child.pid}) exited with code {child.returncode}; started "
                                  f"again as pid {self.children[i].pid}")

    def stop(self, grace: float = 15.0) -> None:
        """Stop watching, then stop the children (``_stop``)."""
        self._stopping.set()
        with self._lock:
            _stop(self.children, grace)
        self._thread.join(timeout=5)


def _stop(children: list, grace: float = 15.0) -> None:
    """SIGTERM the children this process started, then SIGKILL what is left after ``grace`` seconds."""
    import time

    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: it did not stop in time
            child.kill()
            child.wait()
