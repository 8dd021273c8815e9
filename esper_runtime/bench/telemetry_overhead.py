"""``esper bench telemetry-overhead``: what publishing telemetry to Kafka adds to training.

Wrapped copies of the same model train on the same batches in one process; after every ``steps`` steps each ends
an epoch (``kasmina.end_epoch``): one with a real Kafka publisher (per-layer ``SeedTelemetry`` built and
published, plus any transitions), one with none (nothing built, nothing sent), and one publishing to an in-memory
log (built and encoded the same way, nothing sent: ``in_memory_ratio`` is the training thread's own share, the
rest of ``ratio`` is librdkafka's and the broker's work on the same cores). A fourth, unpublished copy is the A/A
reference. With a broker this checkout started, the broker's CPU time over the rounds is reported too. Rounds
alternate the order; ``ratio`` is the median over rounds of published/unpublished time per training step, the
epoch boundary included; rounds are added until the A/A spread is under 0.01
(``esper_runtime.bench.paired``). Short epochs are the worst case: the per-epoch cost is spread over
fewer steps.

Publishing leaves work behind: librdkafka compresses and sends on its own threads, and the broker receives, on
the same cores, after ``end_epoch`` has returned. In training that work overlaps the publishing model's next
epoch, so that is where it is charged: in a round each copy first runs one untimed epoch (which absorbs what the
copy before it left running), then ``timed_epochs`` timed ones, whose mean is the round's figure. Timed one epoch
each, the copy that ran after the published one paid for it (the A/A ratio read 1.03 with the twin always second).

A run's publisher gathers its events for ``run_linger_ms`` (500 ms) into one produce request, so its sends come
at times of their own, in whichever copy is running then. The published copy's block is therefore timed over at
least four lingers' worth of epochs and ends with a flush inside its timing: every record it published is sent,
and acknowledged by the broker, on its own clock — one request a block more than a run would make, so the figure
errs against the publisher, never for it.
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import time
import uuid
from pathlib import Path

import torch

from esper_runtime.bench.dormant import _mlp, _step_fn
from esper_runtime.bench.paired import paired_rounds, ratio
from esper_runtime.kasmina import KasminaConfig, wrap
from streams import Backbone
from streams.topics import ensure_topics


def run(rounds: int = 30, steps: int = 10, max_rounds: int = 150, timed_epochs: int = 2,
        linger_ms: int | None = None) -> dict:
    bb = Backbone()
    linger_ms = bb.settings.run_linger_ms if linger_ms is None else linger_ms
    registry = bb.registry.with_prefix(f"bench-{uuid.uuid4().hex[:8]}.")
    admin = bb.admin()
    ensure_topics(admin, registry)
    from streams.publisher import InMemoryPublisher, KafkaPublisher

    publisher = KafkaPublisher(bb.bootstrap, bb.serde, registry, **{"linger.ms": linger_ms})
    try:
        torch.manual_seed(0)
        host, x, y = _mlp()
        config = KasminaConfig()
        models = {"published": wrap(copy.deepcopy(host), config, publisher=publisher, run_id="bench-telemetry"),
                  "in_memory": wrap(copy.deepcopy(host), config, publisher=InMemoryPublisher(bb.serde, registry=registry),
                                    run_id="bench-telemetry"),
                  "quiet": wrap(copy.deepcopy(host), config), "twin": wrap(copy.deepcopy(host), config)}
        fns = {name: _step_fn(m, x, y) for name, m in models.items()}
        epochs = {name: 0 for name in models}
        boundary: dict[str, list[float]] = {name: [] for name in models}

        def epoch(name: str) -> float:
            fn, model = fns[name], models[name]
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            t1 = time.perf_counter()
            model.kasmina.end_epoch(epochs[name])
            t2 = time.perf_counter()
            boundary[name].append(t2 - t1)
            epochs[name] += 1
            return (t2 - t0) / steps

        def block(name: str) -> float:
            epoch(name)  # absorbs the background work the previous copy left running
            t0 = time.perf_counter()
            for _ in range(timed_epochs):
                epoch(name)
            if name == "published":
                publisher.flush()  # what it lingers on is sent, and acknowledged, on its own clock
            return (time.perf_counter() - t0) / (timed_epochs * steps)

        for name in models:  # warm-up: allocator, kernels, the producer's connection and metadata
            for _ in range(3):
                epoch(name)
        publisher.flush()
        # a block spans four lingers at least: the publisher's own sends fall mostly inside its own block
        epoch_s = statistics.median(epoch("quiet") for _ in range(5)) * steps
        timed_epochs = max(timed_epochs, math.ceil(4 * linger_ms / 1000 / epoch_s))
        broker = _broker_cpu_seconds(bb.settings)
        started = time.monotonic()
        run_ = paired_rounds({name: (lambda name=name: block(name)) for name in ("quiet", "twin", "published",
                                                                                 "in_memory")},
                             reference="quiet", twin="twin", min_rounds=rounds, max_rounds=max(rounds, max_rounds))
        times = run_["times"]
        publisher.flush()
        elapsed, broker_after = time.monotonic() - started, _broker_cpu_seconds(bb.settings)
        broker_cpu = None if broker is None or broker_after is None else (broker_after - broker) / elapsed
        return {"bench": "telemetry-overhead", "ratio": round(ratio(times, "published", "quiet"), 4),
                "in_memory_ratio": round(ratio(times, "in_memory", "quiet"), 4),
                "end_epoch_ms": {name: round(statistics.median(v) * 1000, 3) for name, v in boundary.items()},
                "broker_cpu_ms_per_s": None if broker_cpu is None else round(broker_cpu * 1000, 1),
                "aa_ratio": round(ratio(times, "twin", "quiet"), 4), "aa_spread": run_["aa_spread"],
                "aa_spread_met": run_["aa_spread_met"],
                "step_ms": round(statistics.median(times["quiet"]) * 1000, 3), "steps_per_epoch": steps,
                "timed_epochs_per_round": timed_epochs, "linger_ms": linger_ms,
                "rounds": run_["rounds"], "events_published": models["published"].kasmina.events_published,
                "seed_layers": len(models["published"].seed_layers()),
                "notes": "per-step time with the epoch boundary included, published to the real broker vs no "
                         "publisher, each copy's timed epochs after one untimed one, the published copy's ending with a "
                         "flush (its records sent and acknowledged on its clock; the timed epochs span 4 x "
                         "linger_ms); in_memory_ratio: the same "
                         "telemetry built and encoded but kept in memory (the training thread's share); aa_ratio "
                         "is an identical unpublished copy (the measurement's noise); broker_cpu_ms_per_s: the "
                         "local broker's CPU time over the rounds (null when the broker is not one this checkout "
                         "started)"}
    finally:
        publisher.close()
        admin.delete_topics(registry.names(), operation_timeout=30)
        bb.close()


def _broker_cpu_seconds(settings) -> float | None:
    """CPU time (user + system, all threads) of the local broker this checkout started, from ``/proc``; None for
    an external cluster or where ``/proc`` is not there."""
    from esper_runtime.infra import LocalKafka

    if not settings.uses_local_broker:
        return None
    cluster = LocalKafka(settings)
    pids = [pid for node in cluster.nodes if (pid := cluster.pid(node.node_id)) is not None]
    if not pids:
        return None
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime: every thread's, summed by the kernel
    return total
