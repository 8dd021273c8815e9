"""The Tezzeret worker: consumes BlueprintSubmitted, validates, compiles, stores, reports.

A worker compiles for one device (``cpu`` by default, ``cuda`` on a GPU host): its artifacts carry that device's
hardware label, so a GPU machine runs a CPU worker and a CUDA worker side by side when both libraries are wanted.

Run as many as you like in one consumer group (``tezzeret``); the blueprint topic's partitions spread the work.
Every outcome is an event: ``BlueprintRejected`` (static validation failed: stage and reason),
``KernelCompiled`` (one per width and pipeline), ``KernelCompilationFailed``. An artifact already in the store is
not compiled again: its ``KernelCompiled`` is re-announced with the original compile time, so a new run's Urza view
learns it without waiting. Compilation happens here, in this process, never in a training process.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from esper_runtime.blueprints import Blueprint, BlueprintInvalid, validate
from esper_runtime.devices import hardware_label, resolve
from esper_runtime.tezzeret.compiler import BUNDLE_KIND, CompilationError, artifact_id, compile_ir
from esper_runtime.urza.store import ArtifactStore
from streams.contracts import BlueprintRejected, BlueprintSubmitted, KernelCompilationFailed, KernelCompiled
from streams.envelope import EnvelopeFactory
from streams.publisher import Publisher

__all__ = ["TezzeretWorker", "WorkerStats", "DEFAULT_WIDTHS", "DEFAULT_PIPELINES"]

log = logging.getLogger("esper.tezzeret")
DEFAULT_WIDTHS = (8, 16, 32)
DEFAULT_PIPELINES = ("fast",)
PRODUCER = "tezzeret/0.1.0"


@dataclass
class WorkerStats:
    compiled: int = 0
    cached: int = 0
    failed: int = 0
    rejected: int = 0
    artifacts: list[str] = field(default_factory=list)


class TezzeretWorker:
    def __init__(self, publisher: Publisher, store: ArtifactStore, run_id: str | None = None,
                 widths: tuple[int, ...] = DEFAULT_WIDTHS, pipelines: tuple[str, ...] = DEFAULT_PIPELINES,
                 device: str = "cpu"):
        self.publisher = publisher
        self.device = resolve(device)  # what this worker compiles for (a CUDA worker needs a CUDA device)
        self.hardware = hardware_label(self.device)
        self.store = store
        self.widths = widths
        self.pipelines = pipelines
        self.envelopes = EnvelopeFactory(run_id or f"tezzeret-{uuid.uuid4().hex[:8]}", PRODUCER)
        self.stats = WorkerStats()

    def handle(self, event: BlueprintSubmitted) -> None:
        try:
            blueprint = Blueprint.parse(event.ir_json)
            validate(blueprint)
            if blueprint.blueprint_id != event.blueprint_id:
                raise BlueprintInvalid("parse", f"blueprint_id {event.blueprint_id} is not the hash of the IR "
                                                f"({blueprint.blueprint_id})")
        except BlueprintInvalid as exc:
            self._reject(event.blueprint_id, exc)
            return
        widths = tuple(event.chunk_widths) or self.widths
        pipelines = tuple(event.pipelines) or self.pipelines
        # a design that reads the layer's input is compiled for every (chunk width, input width) pair
        inputs = (tuple(event.input_widths) or self.widths) if blueprint.reads_input else (None,)
        valid_widths = []
        for width in widths:
            for in_width in inputs:
                try:
                    valid_widths.append((width, blueprint.instantiate(width, in_width)))
                except BlueprintInvalid as exc:
                    at = f"chunk width {width}" + (f", input width {in_width}" if in_width else "")
                    for pipeline in pipelines:
                        self._failed(blueprint.blueprint_id, pipeline, f"invalid at {at}: {exc}", width)
        if not valid_widths:
            self._reject(blueprint.blueprint_id, BlueprintInvalid("shapes", f"valid at none of the widths {widths}"))
            return
        for width, ir in valid_widths:
            for pipeline in pipelines:
                self._compile(blueprint, ir, pipeline)
        self.publisher.flush()

    def _compile(self, blueprint, ir, pipeline: str) -> None:
        hardware = self.hardware
        try:
            aid = artifact_id(ir, hardware, pipeline)
        except KeyError:
            self._failed(blueprint.blueprint_id, pipeline, f"unknown pipeline {pipeline!r}", ir.features)
            return
        if self.store.exists(aid):
            meta = self.store.meta(aid)
            artifact = self.store.get_artifact(aid)
            self._announce(aid, blueprint.blueprint_id, hardware, pipeline, meta.get("toolchain", ""), artifact.sha256,
                           len(artifact.data), float(meta.get("compile_ms", 0.0)), meta.get("signature", {}))
            self.stats.cached += 1
            return
        log.info("compiling %s (width %d%s, %s)", blueprint.name, ir.features,
                 f", input {ir.in_features}" if ir.in_features else "", pipeline)
        try:
            bundle = compile_ir(ir, pipeline, device=self.device)
        except CompilationError as exc:
            self._failed(blueprint.blueprint_id, pipeline, str(exc), ir.features)
            return
        self.store.put(bundle.artifact_id, BUNDLE_KIND, bundle.data,
                       {"compile_ms": bundle.compile_ms, "toolchain": bundle.toolchain, "signature": bundle.signature,
                        "blueprint_id": blueprint.blueprint_id, "width": ir.features})
        self._announce(bundle.artifact_id, blueprint.blueprint_id, hardware, pipeline, bundle.toolchain, bundle.sha256,
                       len(bundle.data), bundle.compile_ms, bundle.signature)
        self.stats.compiled += 1

    def _announce(self, aid, blueprint_id, hardware, pipeline, toolchain, sha256, size, compile_ms, signature) -> None:
        import json

        self.publisher.publish(KernelCompiled(
            envelope=self.envelopes.next(f"kernel/{aid}"), artifact_id=aid, blueprint_id=blueprint_id,
            hardware=hardware, pipeline=pipeline, toolchain_hash=toolchain, sha256=sha256, size_bytes=size,
            uri=f"urza://artifacts/{aid}", compile_ms=compile_ms, signature_json=json.dumps(signature, sort_keys=True),
        ), key=f"blueprint/{blueprint_id}")
        self.stats.artifacts.append(aid)

    def _failed(self, blueprint_id: str, pipeline: str, error: str, width: int | None = None) -> None:
        log.warning("compilation failed for %s (%s): %s", blueprint_id[:12], pipeline, error)
        self.publisher.publish(KernelCompilationFailed(
            envelope=self.envelopes.next(f"blueprint/{blueprint_id}/compile/{self.envelopes.run_id}"),
            blueprint_id=blueprint_id,
            hardware=self.hardware, pipeline=pipeline, error=error[:4000], chunk_width=width,
        ), key=f"blueprint/{blueprint_id}")
        self.stats.failed += 1

    def _reject(self, blueprint_id: str, exc: BlueprintInvalid) -> None:
        log.warning("blueprint %s rejected at %s: %s", blueprint_id[:12], exc.stage, exc.reason)
        self.publisher.publish(BlueprintRejected(
            envelope=self.envelopes.next(f"blueprint/{blueprint_id}/validation/{self.envelopes.run_id}"),
            blueprint_id=blueprint_id,
            stage=exc.stage, reason=exc.reason[:4000],
        ), key=f"blueprint/{blueprint_id}")
        self.publisher.flush()
        self.stats.rejected += 1

    def run(self, consumer, idle_timeout: float | None = None, max_events: int | None = None) -> WorkerStats:
        """Consume until ``idle_timeout`` seconds pass without a blueprint (None: forever) or ``max_events``."""
        def handle(item):
            if item.name == BlueprintSubmitted.AVRO_NAME:
                self.handle(item.decoded.typed())

        consumer.run(handle, idle_timeout=idle_timeout, max_events=max_events)
        return self.stats
