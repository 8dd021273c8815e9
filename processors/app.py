"""The processors' app: one faust-streaming application with an agent per concern.

- **seed-state**: every seed's current state per run (``fold_seed_record``), kept in the compacted ``state.kasmina.seeds``
  topic (``MaterializedState``: restored from it at start, each batch's changes written back).
- **urza**: the Urza library (``UrzaView``: blueprints, artifacts, status, tags), its changed entries written to the
  compacted ``state.urza.library`` topic (keyed by entry, so the latest value of a key is its state whatever
  partition the event came from) and restored from it on start.
- **distributions**: each validated kernel's measurements per hardware (``state.urabrask.distributions``), the peers
  Urabrask tags against.
- **telemetry-sink**: batched inserts into ClickHouse (``sink_records``: telemetry natively, the rest through
  ``rows_for_record``); the app owns the embedded store and serves SQL to other processes on 127.0.0.1
  (``/esper/sql/``, a token from ``endpoint.json``). Not a faust agent: it keeps no state, so it is a plain
  consumer-group reader (librdkafka, group ``<app id>-telemetry-sink``) on a thread of this process — faust's intake
  per record (what ``esper bench materialize``'s no-op agent measures) capped it at ~14k records/s.

Agents work in batches (``noack_take``, acknowledged once applied: ``_taken``). Delivery is at least once: a batch's
state writes (through a librdkafka producer, ``state_publisher``: faust's own producer is pure Python) and dead
letters (through faust's producer) are queued before its events are acknowledged, and before faust commits source
offsets it flushes its producer, which here flushes the state producer too (``_flush_before_commit``): so after any
stop — kill -9 included — the state is at or ahead of the committed offsets, and what is read again is skipped by
``originator_version`` (and by ``event_id`` in ClickHouse's ReplacingMergeTree). Undecodable records, records of the
wrong type for their topic and version gaps go to the dead-letter topic with the reason in headers; nothing stops an
agent. ``stream_wait_empty`` is off so SIGTERM stops the worker in seconds.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
import threading
import time
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust

from processors.clickhouse.sink import SINK_TOPICS, SinkPlan, backoff, plan_records, sink_plan
from processors.exceptions import StoreUnavailable
from processors.faust_patch import limit_fetch_wait, rewind_to_committed
from views.seed_state import APPLIED, GAP, fold_seed_record, seed_key
from streams.state import (BY_SOURCE_PARTITION, LAYOUT_HEADER, StateLayoutError, check_layout, encode_state_value,
                           read_state_topic)
from views.urza_view import URZA_TOPICS, UrzaView
from streams import Backbone
from streams.deadletter import dead_letter_headers, decode_for_topic
from streams.exceptions import ConfigError, DecodeError, EsperError

__all__ = ["Processors", "MaterializedState", "SEED_STATE_TOPIC", "URZA_STATE_TOPIC", "DISTRIBUTIONS_TOPIC",
           "URZA_TOPICS", "AGENTS", "BENCH_AGENTS", "SCALABLE"]

log = logging.getLogger("esper.processors")

SEED_STATE_TOPIC = "state.kasmina.seeds"
URZA_STATE_TOPIC = "state.urza.library"
DISTRIBUTIONS_TOPIC = "state.urabrask.distributions"
AGENTS = ("seed-state", "urza", "distributions", "telemetry-sink")
# not run by default: ``esper bench materialize``'s limit — the seed-state agent's input taken in the same batches
# and dropped (no decode, no fold, no write): what faust itself can take in on this machine
BENCH_AGENTS = ("noop",)
SCALABLE = ("seed-state", "distributions")  # state partitioned like their input: any number of workers per group
SINK_BATCH = 5000  # records the telemetry sink reads and inserts at a time


class Processors:
    """Builds the faust app for a backbone (settings, topic prefix) and runs it as a worker."""

    def __init__(self, backbone: Backbone | None = None, agents: tuple[str, ...] = AGENTS, app_id: str | None = None,
                 web_port: int | None = None, sink_batch: int = SINK_BATCH, batch: int = 2000,
                 batch_within: float = 0.02, fetch_wait_ms: int = 20):
        self.bb = backbone or Backbone()
        settings = self.bb.settings
        self.agents = tuple(agents)
        self.app_id = app_id or f"{settings.topic_prefix}esper-processors"
        self.web_port = web_port if web_port is not None else settings.processors_port
        self.sink_batch = sink_batch
        self.batch, self.batch_within = batch, batch_within
        self.fetch_wait_ms = fetch_wait_ms
        self.stats: dict[str, Counter] = defaultdict(Counter)
        # log append time -> applied, seed-state agent: the last 10,000 (status() sorts them for its quantiles)
        self.lag_ms: deque[float] = deque(maxlen=10_000)
        self._sink_marks: list[tuple[float, int]] = []  # (time an insert finished, its rows)
        self.links: dict[str, Any] = {}  # shown in status(): e.g. the status pages of the workers this one started
        self.store = None
        self._store_token: str | None = None
        # chdb is driven from one thread, and only by the sink agent and its SQL endpoint
        self._store_exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse") \
            if "telemetry-sink" in self.agents else None
        datadir = self.bb.settings.home / "processors" / "faust" / self.app_id
        datadir.mkdir(parents=True, exist_ok=True)  # faust creates the last level only
        self.app = faust.App(
            self.app_id,
            broker=[f"kafka://{hp}" for hp in self.bb.bootstrap.split(",")],
            store="memory://",
            # faust's own files under ESPER_HOME, not "<app id>-data" in whatever directory it was started from
            datadir=str(datadir),
            topic_partitions=3,
            topic_replication_factor=max(1, settings.topic_replication),  # faust's own (assignor) topic
            stream_wait_empty=False,
            web_enabled=True,
            web_bind="127.0.0.1",
            web_port=self.web_port,
            web_host="127.0.0.1",
            consumer_auto_offset_reset="earliest",
            broker_commit_livelock_soft_timeout=60.0,
            # a worker that dies (kill -9) holds its partitions until its session times out: 10 s, not faust's 60 s
            broker_session_timeout=10.0,
            broker_heartbeat_interval=1.0,
            producer_acks=-1,
        )
        self._raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        self._partitioned: list[tuple[str, MaterializedState]] = []  # (source topic, its partitioned state)
        self._state_publisher = None
        self._flush_before_commit()
        self._build()
        self.app.on_partitions_revoked.connect(self._on_revoked)

    # ------------------------------------------------------------------ helpers
    @property
    def serde(self):
        """The backbone's serde, built on first use (it reads the schemas on the log: not in the constructor)."""
        return self.bb.serde

    def _topic(self, *names: str):
        return self.app.topic(*(self.bb.resolve_topic(n) for n in names), **self._raw)

    @property
    def state_publisher(self):
        """The librdkafka producer state entries are written with (one per process, made on first use)."""
        if self._state_publisher is None:
            self._state_publisher = self.bb.publisher(**{"linger.ms": 2, "delivery.report.only.error": True})
        return self._state_publisher

    def _flush_before_commit(self) -> None:
        """faust flushes its producer right before it commits offsets (``Consumer.commit``): that flush waits for
        the state producer too."""
        producer = self.app.producer
        flush_faust = producer.flush

        async def flush() -> None:
            await flush_faust()
            await self._flush_state()

        producer.flush = flush

    async def _flush_state(self) -> None:
        if self._state_publisher is not None:  # raises PublishError when a write was not acknowledged
            await asyncio.get_running_loop().run_in_executor(None, self._state_publisher.flush)

    async def _dead_letter(self, event, reason: str, detail: str, agent: str) -> None:
        msg = event.message
        headers = dead_letter_headers(msg.headers, reason, detail, f"{msg.topic}/{msg.partition}/{msg.offset}",
                                      f"processors/{agent}")
        # straight to the Kafka client's queue (flushed before any commit), not through faust's producer buffer
        await self.app.producer.send(self.bb.registry.deadletter, msg.key, msg.value, None, None, headers)
        self.stats[agent]["dead_lettered"] += 1

    async def _decode_record(self, event, agent: str, typed: bool = False):
        """The decoded record (``Decoded``: schema name, Avro data; with ``typed`` the generated event), or None
        after dead-lettering what cannot be decoded, does not belong on its topic or (``typed``) has no type here:
        ``streams.deadletter``'s rule."""
        msg = event.message
        try:
            return decode_for_topic(self.serde, self.bb.registry, msg.value, msg.topic, typed=typed)
        except DecodeError as exc:
            await self._dead_letter(event, exc.reason, exc.detail, agent)
            return None

    async def _decode(self, event, agent: str) -> Any | None:
        """The typed event (see ``_decode_record``)."""
        return await self._decode_record(event, agent, typed=True)

    def _reports_crashes(self, name: str):
        """An agent's body, made to say loudly (log, ``status()``'s ``crashes``) that it raised before faust restarts
        it, so a restarted agent never leaves an unexplained gap in the figures."""
        def wrap(fun):
            @functools.wraps(fun)
            async def agent(stream):
                try:
                    await fun(stream)
                except Exception as exc:
                    self.stats[name]["crashes"] += 1
                    log.error("agent %s raised; faust restarts it: %r", name, exc, exc_info=exc)
                    raise
            return agent
        return wrap

    # ------------------------------------------------------------------ agents
    def _build(self) -> None:
        app = self.app
        if "noop" in self.agents:
            @app.agent(self._topic("kasmina.lifecycle.transitions"), name="noop")
            async def noop(stream):
                async for events in self._taken(stream):
                    self.stats["noop"]["applied"] += len(events)

        if "seed-state" in self.agents:
            seeds = self._state(SEED_STATE_TOPIC, "seed-state", partitioned=True)

            @app.agent(self._topic("kasmina.lifecycle.transitions"), name="seed-state")
            @self._reports_crashes("seed-state")
            async def seed_state(stream):
                # the hot path, per event: a decode (to the Avro record: the typed event would cost more than the
                # decode), the fold, no await; what goes to the dead-letter topic is sent after the batch's loop
                stats, registry, serde = self.stats["seed-state"], self.bb.registry, self.serde
                async for events in self._taken(stream):
                    now = time.time()
                    await seeds.ensure({event.message.partition for event in events})
                    outcomes: Counter = Counter()
                    dead = []  # (event, reason, detail)
                    for event in events:
                        msg = event.message
                        try:
                            record = decode_for_topic(serde, registry, msg.value, msg.topic).record
                        except DecodeError as exc:
                            dead.append((event, exc.reason, exc.detail))
                            continue
                        env = record["envelope"]
                        key = seed_key(env["run_id"], env["originator_id"])
                        current = seeds.get(key)
                        outcome, state = fold_seed_record(current, record)
                        outcomes[outcome] += 1
                        if outcome == APPLIED:
                            seeds.set(key, state, msg.partition)
                            self.lag_ms.append((now - msg.timestamp) * 1000)  # faust: seconds
                        elif outcome == GAP:
                            dead.append((event, "version-gap", f"{env['originator_id']} version "
                                         f"{env['originator_version']} arrived, expected "
                                         f"{(current or {}).get('version', 0) + 1}"))
                    stats.update(outcomes)
                    for event, reason, detail in dead:
                        await self._dead_letter(event, reason, detail, "seed-state")
                    await seeds.flush()

        if "urza" in self.agents:
            library = self._state(URZA_STATE_TOPIC, "urza")

            @app.agent(self._topic(*URZA_TOPICS), name="urza")
            @self._reports_crashes("urza")
            async def urza(stream):
                await library.load()
                view = UrzaView.restore(library.items(), lambda raw: self.serde.decode_typed(raw))
                async for batch in self._batches(stream, "urza"):
                    for event, ev in batch:
                        applied = view.apply(ev)
                        if view.last_rejection is not None:  # a record the fold cannot apply: skipped, kept aside
                            await self._dead_letter(event, "unapplicable", view.last_rejection, "urza")
                            continue
                        self.stats["urza"]["applied" if applied else "duplicate_or_waiting"] += 1
                    for key, value in view.take_dirty(self.serde.encode).items():
                        library.set(key, value)  # None: a tombstone
                    await library.flush()

        if "distributions" in self.agents:
            dist = self._state(DISTRIBUTIONS_TOPIC, "distributions", partitioned=True)

            @app.agent(self._topic("urabrask.kernels.reports"), name="distributions")
            @self._reports_crashes("distributions")
            async def distributions(stream):
                async for batch in self._batches(stream, "distributions"):
                    await dist.ensure({event.message.partition for event, _ in batch})
                    for event, ev in batch:
                        if type(ev).__name__ != "KernelValidationReport" or not ev.passed:
                            continue
                        key = f"{ev.hardware}|{ev.artifact_id}"
                        if dist.get(key) is not None:
                            self.stats["distributions"]["duplicate"] += 1
                            continue
                        dist.set(key, {"latency_ms_mean": ev.latency_ms_mean, "memory_mb_peak": ev.memory_mb_peak,
                                       "latency_ms_p99": ev.latency_ms_p99,
                                       "throughput_ops_per_sec": ev.throughput_ops_per_sec}, event.message.partition)
                        self.stats["distributions"]["applied"] += 1
                    await dist.flush()

        if "telemetry-sink" in self.agents:
            procs = self

            @app.page("/esper/sql/")
            class SqlView(faust.web.View):
                async def post(self, request):
                    given = request.headers.get("Authorization", "").encode()
                    if procs._store_token is None or \
                            not hmac.compare_digest(given, f"Bearer {procs._store_token}".encode()):
                        return self.json({"error": "missing or wrong token (see endpoint.json)"}, status=401)
                    try:
                        query = (await request.json())["query"]
                    except (ValueError, KeyError, TypeError):
                        return self.json({"error": "send {\"query\": \"SQL\"}"}, status=400)
                    try:
                        rows = await asyncio.get_running_loop().run_in_executor(procs._store_exec, procs.store.read,
                                                                                query)
                    except Exception as exc:  # StoreError: ClickHouse's message
                        return self.json({"error": str(exc)[:4000]}, status=400)
                    return self.json({"rows": rows})

        @app.page("/esper/status/")
        async def status_view(web, request):
            return web.json(self.status())

    # ------------------------------------------------------------------ the telemetry sink
    @property
    def sink_group(self) -> str:
        return f"{self.app_id}-telemetry-sink"

    def _sink_loop(self, stop: threading.Event) -> None:
        """The telemetry sink's thread: read a batch and hand it to the store's thread, then read the next while
        ClickHouse inserts (chdb lets go of the GIL); a batch's offsets are stored once its rows are in and its
        dead letters acknowledged. What raises is logged and counted (``crashes``) and the reader started again from
        the committed offsets, as faust restarts a crashed agent."""
        while not stop.is_set():
            consumer = self.bb.consumer([self.bb.resolve_topic(t) for t in SINK_TOPICS], group_id=self.sink_group,
                                        name="processors/telemetry-sink", **{"fetch.wait.max.ms": self.fetch_wait_ms})
            inflight = None  # (records, their messages, the insert's future)
            try:
                while not stop.is_set() or inflight is not None:
                    records = consumer.poll_raw(timeout=0.5, max_records=self.sink_batch) \
                        if not stop.is_set() else []
                    held = consumer.take_pending()
                    # framed and staged here while the store's thread inserts the last batch: the store's thread
                    # then only runs the INSERT
                    plan = self._plan(records) if records else None
                    try:
                        if inflight is not None:
                            done, messages, future = inflight
                            inflight = None
                            if not self._sink(consumer, done, stop, future):
                                break  # stopped while the store was away: read again on restart
                            consumer.store(messages)
                        if plan is not None:
                            inflight = (records, held, self._store_exec.submit(self._insert_plan, plan))
                            plan = None
                    finally:
                        if plan is not None:  # never handed to the store
                            plan.discard()
            except Exception as exc:  # noqa: BLE001 - reported, then the reader starts again
                self.stats["telemetry-sink"]["crashes"] += 1
                log.error("telemetry sink raised; starting it again: %r", exc, exc_info=exc)
                stop.wait(1.0)
            finally:
                consumer.unread_last()
                consumer.close()

    def _insert(self, records: list):
        """On the store's thread: (rows inserted per table, records to dead-letter, when the insert finished)."""
        return self._insert_plan(self._plan(records))

    def _plan(self, records: list) -> SinkPlan:
        return plan_records(self.store, self.serde, self.bb.registry, [(m.topic(), m.value()) for m in records])

    def _insert_plan(self, plan: SinkPlan):
        """``_insert`` for a batch the reader planned."""
        return (*sink_plan(self.store, self.serde, self.bb.registry, plan), time.monotonic())

    def _sink(self, consumer, records: list, stop: threading.Event | None = None, started=None) -> bool:
        """A batch of raw records into the store, on the store's thread (``sink_records``: native where it can,
        decoded otherwise; ``started``: its insert, already submitted); while the store is unavailable, wait
        (backing off) and retry the same batch, so the reader does not move on without it; records that do not
        decode or that the store refuses go to the dead-letter topic (acknowledged before the caller stores the
        batch's offsets). False when ``stop`` came first."""
        stats = self.stats["telemetry-sink"]
        future = started or self._store_exec.submit(self._insert, records)
        for delay in backoff():
            try:
                inserted, rejected, finished = future.result()
                break
            except StoreUnavailable as exc:
                stats["insert_retries"] += 1
                log.warning("telemetry sink: %s; retrying the batch in %.1f s", exc, delay)
                if stop is not None and stop.wait(delay):
                    return False
                if stop is None:
                    time.sleep(delay)
                future = self._store_exec.submit(self._insert, records)
        for table, n in inserted.items():
            stats[f"rows:{table}"] += n
        # when the rows went in, not when the reader came back for them: after the log's last batch the reader
        # waits out its poll (0.5 s) first, which is no part of the sink's rate
        self._sink_marks.append((finished, sum(inserted.values())))
        for i, reason, detail in rejected:
            log.warning("telemetry sink: record set aside (dead-letter topic): %s: %s", reason, detail[:300])
            consumer.deadletter.send(consumer.record_of(records[i]), reason, detail)
        if rejected:
            consumer.deadletter.publisher.flush()
            stats["dead_lettered"] += len(rejected)
        return True

    async def _on_revoked(self, sender, revoked, **kwargs) -> None:
        """A rebalance took partitions away: their state goes with them (their new owner restores it)."""
        for source, state in self._partitioned:
            state.revoke({tp.partition for tp in revoked if tp.topic == source})

    def _state(self, name: str, agent: str, partitioned: bool = False) -> "MaterializedState":
        state = MaterializedState(self.bb, name, lambda: self.state_publisher, self.stats[agent], partitioned)
        if partitioned:
            source = {SEED_STATE_TOPIC: "kasmina.lifecycle.transitions",
                      DISTRIBUTIONS_TOPIC: "urabrask.kernels.reports"}[name]
            registry = self.bb.registry
            if registry.spec(self.bb.resolve_topic(source)).partitions != state.spec.partitions:
                raise ConfigError(f"{name} must have as many partitions as {source}: each state partition is "
                                  "the state of one input partition")
            self._partitioned.append((self.bb.resolve_topic(source), state))
        return state

    async def _taken(self, stream):
        """The stream in batches of events, a batch acknowledged only when the agent comes back for the next one,
        i.e. after its state writes are queued. faust's ``take_events`` acknowledges a batch in a ``finally``, also
        when the agent was cancelled part way through it (a stop, SIGTERM): the consumer's commit on the way out
        then took events never applied past the committed offset, and the next worker never saw them (a seed's first
        transition lost that way left all its later ones version gaps). ``noack_take`` leaves acks to us: a batch
        cut short is not acknowledged, and is read again."""
        async for events in stream.noack_take(self.batch, within=self.batch_within):
            yield events
            for event in events:  # not reached when the agent stops inside the batch
                await stream.ack(event)

    async def _batches(self, stream, agent: str):
        """The stream in batches of decoded events (what cannot be decoded is dead-lettered on the way), each
        acknowledged as ``_taken`` does."""
        async for events in self._taken(stream):
            decoded = []
            for event in events:
                ev = await self._decode(event, agent)
                if ev is not None:
                    decoded.append((event, ev))
            yield decoded

    def status(self) -> dict:
        lags = sorted(self.lag_ms)

        def q(f):
            return round(lags[min(len(lags) - 1, int(f * len(lags)))], 1) if lags else None

        marks = self._sink_marks
        sink_rate = (sum(r for _, r in marks[1:]) / (marks[-1][0] - marks[0][0])
                     if len(marks) > 1 and marks[-1][0] > marks[0][0] else None)
        return {"app_id": self.app_id, "pid": os.getpid(), "agents": list(self.agents),
                "stats": {a: dict(c) for a, c in self.stats.items()}, "lag_p50_ms": q(0.5), "lag_p99_ms": q(0.99),
                "lag_samples": len(lags), "sink_inserts": len(marks),
                "sink_rows_per_s": round(sink_rate) if sink_rate else None, **self.links}

    # ------------------------------------------------------------------ running
    def open_store(self) -> None:
        from processors.clickhouse import open_store

        self.store = self._store_exec.submit(open_store, self.bb.settings, own=True).result()
        if hasattr(self.store, "advertise"):
            self._store_token = self.store.advertise(f"http://127.0.0.1:{self.web_port}")
        else:
            self._store_token = None

    def stale(self) -> bool:
        """Whether a partitioned state topic was laid out by an older Esper (``--rebuild`` folds it again)."""
        try:
            for _, state in self._partitioned:
                check_layout(self.bb, state.name, BY_SOURCE_PARTITION)
        except StateLayoutError:
            return True
        return False

    def rebuild(self, timeout: float = 60.0) -> list[str]:
        """Forget what this app materialized, so that it folds the log again from the start: its group's committed
        offsets and its agents' state topics are deleted (then recreated empty). Refused while a worker of the group
        runs. Returns what was deleted."""
        from confluent_kafka import KafkaException

        admin = self.bb.admin()
        gone = []
        try:
            admin.delete_consumer_groups([self.app_id], request_timeout=timeout)[self.app_id].result()
            gone.append(f"group {self.app_id}")
        except KafkaException as exc:
            err = exc.args[0]
            if err.name() == "NON_EMPTY_GROUP":
                raise ConfigError(f"workers of {self.app_id} are running: stop them before --rebuild") from None
            if err.name() != "GROUP_ID_NOT_FOUND":
                raise ConfigError(f"cannot reset {self.app_id}: {err.str()}") from None
        states = [self.bb.resolve_topic(t) for agent, t in (("seed-state", SEED_STATE_TOPIC), ("urza", URZA_STATE_TOPIC),
                                                            ("distributions", DISTRIBUTIONS_TOPIC))
                  if agent in self.agents]
        existing = set(admin.list_topics(timeout=timeout).topics)
        doomed = [t for t in states if t in existing]
        for topic, future in (admin.delete_topics(doomed, operation_timeout=timeout).items() if doomed else []):
            future.result()
            gone.append(topic)
        deadline = time.monotonic() + timeout
        while set(doomed) & set(admin.list_topics(timeout=timeout).topics) and time.monotonic() < deadline:
            time.sleep(0.5)  # deletion finishes in the background; recreating too early fails
        self.bb.ensure_topics()
        return gone

    def run(self, loglevel: str = "warning") -> None:
        """Run the worker until SIGTERM / SIGINT (blocking); the store is closed on the way out."""
        limit_fetch_wait(self.fetch_wait_ms)
        rewind_to_committed()
        stop_sink, sink = threading.Event(), None
        if "telemetry-sink" in self.agents:
            self.open_store()  # first: the sooner this process owns the store, the shorter a client's wait for it
        try:
            self.bb.ensure_topics()
            for _, state in self._partitioned:  # refuse, with what to do, a state topic laid out the old way
                check_layout(self.bb, state.name, BY_SOURCE_PARTITION)
            worker = faust.Worker(self.app, loglevel=loglevel, quiet=True, redirect_stdouts=False,
                                  override_logging=True)
            if "telemetry-sink" in self.agents:
                sink = threading.Thread(target=self._sink_loop, args=(stop_sink,), name="telemetry-sink", daemon=True)
                sink.start()
            worker.execute_from_commandline()
        finally:
            stop_sink.set()
            if sink is not None:
                sink.join(timeout=30)
            if self.store is not None:
                self._store_exec.submit(self.store.close).result(timeout=30)
            if self._store_exec is not None:
                self._store_exec.shutdown(wait=False)
            if self._state_publisher is not None:
                try:  # what the last batch wrote (its events are read again if it does not land)
                    self._state_publisher.flush(10)
                except EsperError as exc:
                    log.warning("processors: state writes not acknowledged at stop: %s", exc)
            self.bb.close()


class MaterializedState:
    """An agent's state: a dict restored from its compacted topic, each batch's changes written back (the last
    value of each changed key) straight to the Kafka producer.

    ``partitioned`` (seed-state, distributions): an entry is written to the partition number of the input record
    it was folded from, so the worker that owns input partition p restores state partition p when it first sees a
    record from it (``ensure``) and drops it when the partition is revoked: several workers of one consumer group
    each hold only their partitions' state. Otherwise (Urza, whose inputs are keyed differently) the whole topic is
    restored when the agent starts, and entries go where their key hashes.

    Not a faust Table on purpose: a table's changelog writes go through faust's producer buffer, whose flush before
    a commit gives up after 0.1 s (``ProducerBuffer.flush_atmost``), so a commit can overtake them; a kill -9 then
    lost applied updates in our restart test. These writes go to a librdkafka producer (``publisher()``), queued
    before the batch's events are acknowledged and flushed inside faust's flush before each offset commit.
    """

    def __init__(self, backbone: Backbone, name: str, publisher, stats: Counter, partitioned: bool = False):
        self.bb, self.name, self.publisher, self.stats = backbone, name, publisher, stats
        self.topic = backbone.resolve_topic(name)
        self.spec = backbone.registry.spec(self.topic)  # its value_schema: what each value is encoded as
        self.partitioned = partitioned
        self._data: dict[str, Any] = {}
        self._partition: dict[str, int] = {}  # key -> the state partition it lives in (partitioned)
        self._loaded: set[int] = set()
        self._dirty: dict[str, tuple[Any, int | None]] = {}
        self._headers = [(LAYOUT_HEADER, BY_SOURCE_PARTITION.encode())] if partitioned else None

    async def load(self) -> None:
        """The whole topic (not partitioned)."""
        loop = asyncio.get_running_loop()
        self._data = await loop.run_in_executor(None, read_state_topic, self.bb, self.name)
        self.stats["restored_entries"] = len(self._data)

    async def ensure(self, partitions: set[int]) -> None:
        """The state partitions of a batch restored, each once per assignment (partitioned): one await per batch,
        not per event."""
        for partition in sorted(partitions - self._loaded):
            await self._restore(partition)

    async def _restore(self, partition: int) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        entries = await loop.run_in_executor(None, functools.partial(
            read_state_topic, self.bb, self.name, partitions={partition}, layout=BY_SOURCE_PARTITION))
        for key, value in entries.items():
            self._data[key] = value
            self._partition[key] = partition
        self._loaded.add(partition)
        self.stats["restored_entries"] += len(entries)
        self.stats["restored_partitions"] += 1
        self.stats["restore_ms"] += round((time.monotonic() - t0) * 1000)

    def revoke(self, partitions: set[int]) -> None:
        """Forget the state of partitions this worker no longer owns (their new owner restores them)."""
        if not partitions & self._loaded:
            return
        for key in [k for k, p in self._partition.items() if p in partitions]:
            del self._data[key], self._partition[key]
        self._loaded -= partitions

    def get(self, key: str) -> Any:
        return self._data.get(key)

    def items(self):
        return list(self._data.items())

    def set(self, key: str, value: Any, partition: int | None = None) -> None:
        if value is None:
            self._data.pop(key, None)
        else:
            self._data[key] = value
        if partition is not None:
            self._partition[key] = partition
        self._dirty[key] = (value, partition)

    async def flush(self) -> None:
        """The batch's changed entries handed to the producer (acknowledged before the next offset commit)."""
        publisher = self.publisher()
        for key, (value, partition) in self._dirty.items():
            raw = None if value is None else encode_state_value(self.bb.serde, self.spec, value)
            publisher.publish_raw(self.topic, raw, key.encode(), self._headers, partition=partition)
        self.stats["state_writes"] += len(self._dirty)
        self._dirty = {}
