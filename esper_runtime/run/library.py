"""Kernels for the widths a run needs: what Urza has, else the starter library compiled and measured now.

A width is *settled* for a blueprint when Urza shows how it ended there: a kernel validated or rejected by Urabrask,
a compilation that failed at that width, or the blueprint rejected outright. Missing widths are submitted; a
Tezzeret and an Urabrask worker run in their own processes (their output goes to log files under
``$ESPER_HOME/logs``) with no idle timeout — a cold compile can take longer than any guess — and are stopped once
every blueprint is settled at every width. A width left with no validated kernel is an error naming the cause and
the logs: a run never trains on a library that cannot grow it.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from streams import Backbone
from esper_runtime.run.exceptions import LibraryError

__all__ = ["LibraryError", "WidthStatus", "Workers", "kernels_at", "library_status", "ensure_library", "wait_settled"]

ENDED = ("VALIDATED", "REJECTED", "RETIRED")


@dataclass
class WidthStatus:
    width: int
    in_features: int | None = None  # the seed layer's input width (designs that read it are built per width)
    validated: int = 0
    rejected: int = 0  # by Urabrask, or the blueprint by Tezzeret
    failed: int = 0  # compilation failed at this width
    pending: int = 0  # submitted or compiled, not settled yet

    @property
    def settled(self) -> bool:
        return self.pending == 0

    def as_dict(self) -> dict:
        return {"width": self.width, "in_features": self.in_features, "validated": self.validated,
                "rejected": self.rejected, "failed": self.failed, "pending": self.pending}


def library_status(view, blueprint_ids: list[str], width: int, in_features: int | None = None,
                   reads_input: set[str] = frozenset(), device: str = "cpu") -> WidthStatus:
    """How the blueprints ended at chunk width ``width`` for a seed whose layer has ``in_features`` inputs: those in
    ``reads_input`` count only kernels built for that input width (and none when it is None: a Conv2d layer). Only
    kernels a model on ``device`` takes count (``esper_runtime.devices.runs_on``)."""
    from esper_runtime.devices import runs_on

    status = WidthStatus(width, in_features)
    by_blueprint: dict[str, list] = {}
    for k in view.kernels.values():
        if k.features == width and runs_on(k.hardware, device):
            by_blueprint.setdefault(k.blueprint_id, []).append(k)
    for bid in blueprint_ids:
        if bid in reads_input and in_features is None:
            continue
        kernels = kernels_at(by_blueprint.get(bid, []), width, in_features, bid in reads_input)
        record = view.blueprints.get(bid)
        if any(k.status == "VALIDATED" for k in kernels):
            status.validated += 1
        elif any(k.status in ENDED for k in kernels) or (record is not None and record.status == "REJECTED"):
            status.rejected += 1
        elif record is not None and width in record.failed_widths:
            status.failed += 1
        else:
            status.pending += 1
    return status


def kernels_at(kernels, width: int, in_features: int | None, reads_input: bool) -> list:
    """Of a blueprint's ``kernels``, those built for a seed of chunk width ``width`` whose layer has ``in_features``
    inputs: a design that reads a wide input only at that input width, one that reads its chunk alone without one."""
    want = in_features if reads_input else None
    return [k for k in kernels if k.features == width and k.in_features == want]


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


Shape = tuple[int, int | None]  # (chunk width F, the seed layer's input width D; None for a Conv2d layer)


def _label(shape: Shape) -> str:
    return f"{shape[0]}" + (f" (layer input {shape[1]})" if shape[1] is not None else "")


def ensure_library(bb: Backbone, shapes, echo=print, progress=None, timeout_s: float = 3600,
                   device: str = "cpu") -> dict[Shape, WidthStatus]:
    """Make sure Urza has validated kernels for every seed shape in ``shapes`` — (chunk width, layer input width)
    pairs, or bare chunk widths — built for ``device`` (a model on CUDA takes kernels compiled for its card), and
    return each shape's status. Raises LibraryError when a shape ends with none."""
    from esper_runtime.blueprints import starter_blueprints
    from esper_runtime.urza.library import load_view, submit_blueprint
    from streams.envelope import EnvelopeFactory

    shapes = sorted({s if isinstance(s, tuple) else (s, None) for s in shapes}, key=lambda s: (s[0], s[1] or 0))
    starters = list(starter_blueprints())
    ids = [bp.blueprint_id for bp in starters]
    readers = {bp.blueprint_id for bp in starters if bp.reads_input}
    view = load_view(bb)
    status = {s: library_status(view, ids, *s, readers, device) for s in shapes}
    missing = [s for s in shapes if not status[s].settled]
    if not missing:
        echo("Urza has " + ", ".join(f"{st.validated} validated kernels for chunk width {_label(s)}"
                                     for s, st in status.items()))
        return _checked(status, None)
    echo(f"compiling the starter library ({len(starters)} blueprints) for chunk width "
         f"{', '.join(_label(s) for s in missing)}: Tezzeret and Urabrask in their own processes")
    envs = EnvelopeFactory(f"library-{uuid.uuid4().hex[:6]}", "esper-run")
    with bb.publisher() as pub:
        for bp in starters:
            todo = [s for s in missing if library_status(view, [bp.blueprint_id], *s, readers, device).pending]
            if todo:
                submit_blueprint(pub, envs, bp, "esper-run", widths=tuple(sorted({f for f, _ in todo})),
                                 pipelines=("fast",),
                                 input_widths=tuple(sorted({d for _, d in todo if d is not None})))
    with Workers(bb, sorted({f for f, _ in missing}), device) as workers:
        status = wait_settled(bb, ids, readers, missing, workers, progress, timeout_s, status, device=device)
    return _checked(status, workers.logs)


class Workers:
    """A Tezzeret and an Urabrask worker in their own processes for as long as the ``with`` block lasts (logs under
    ``$ESPER_HOME/logs``, no idle timeout: a cold compile can take longer than any guess); stopped by PID after."""

    def __init__(self, bb: Backbone, widths, device: str = "cpu"):
        self.bb = bb
        self.widths = sorted(set(widths))
        self.device = device  # what Tezzeret compiles for
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}

    @property
    def logs(self) -> dict[str, Path]:
        return {name: log for name, (_, log) in self.procs.items()}

    def __enter__(self) -> "Workers":
        logs = self.bb.settings.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        cmd = [sys.executable, "-m", "esper_runtime.cli.main"]
        specs = {"tezzeret": ["tezzeret", "--widths", ",".join(str(w) for w in self.widths), "--device", self.device],
                 "urabrask": ["urabrask"]}
        try:
            for name, args in specs.items():
                log = logs / f"{name}-{stamp}.log"
                with log.open("ab") as fh:
                    self.procs[name] = (subprocess.Popen(cmd + args, stdout=fh, stderr=subprocess.STDOUT), log)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def check(self, unsettled: int) -> None:
        """LibraryError when a worker has stopped while ``unsettled`` kernels still wait for it."""
        for name, (proc, log) in self.procs.items():
            if proc.poll() is not None:
                raise LibraryError(f"the {name} worker stopped (exit {proc.returncode}) with {unsettled} "
                                   f"kernels unsettled; its log: {log} ({_log_tail(log)})")

    def stop(self) -> None:
        for proc, _ in self.procs.values():  # ours, by PID
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_settled(bb, ids, readers, missing, workers: Workers, progress=None, timeout_s: float = 3600,
                 status: dict | None = None, label: str = "kernels settled (compiled and measured)",
                 device: str = "cpu"):
    """Wait until every blueprint in ``ids`` is settled at every shape in ``missing``; the status per shape."""
    from contextlib import nullcontext

    from esper_runtime.urza.library import load_view

    status = dict(status or {})
    total = sum(len(ids) - (len(set(ids) & set(readers)) if d is None else 0) for _, d in missing)
    deadline = time.monotonic() + timeout_s
    with (progress() if progress else nullcontext()) as bar:
        task = bar.add_task(label, total=total) if bar else None
        while True:
            view = load_view(bb)
            status.update({s: library_status(view, ids, *s, readers, device) for s in missing})
            settled = total - sum(status[s].pending for s in missing)
            if bar:
                bar.update(task, completed=settled)
            if all(status[w].settled for w in missing):
                return status
            workers.check(total - settled)
            if time.monotonic() > deadline:
                raise LibraryError(f"the library was not ready after {timeout_s:.0f} s ({total - settled} kernels "
                                   f"unsettled); logs: {', '.join(str(log) for log in workers.logs.values())}")
            time.sleep(2)


def _checked(status: dict, logs: dict[str, Path] | None) -> dict:
    empty = [s for s in status.values() if s.validated == 0]
    if empty:
        where = f"; logs: {', '.join(str(p) for p in logs.values())}" if logs else \
            " (settled by earlier runs on this log; `esper blueprints list` shows why)"
        raise LibraryError("no validated kernel for chunk width " + ", ".join(
            f"{_label((s.width, s.in_features))} ({s.rejected} rejected, {s.failed} failed to compile)" for s in empty)
            + f": no seed of that width could grow{where}")
    return status
