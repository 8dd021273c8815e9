"""``esper tail TOPIC``: decoded events as a subscriber sees them."""

from __future__ import annotations

import json
import sys
import uuid
from datetime import datetime

import typer

from streams import Backbone, DecodeError


def _jsonable(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)


def tail(
    topic: str = typer.Argument(..., help="Topic to follow, e.g. kasmina.lifecycle.transitions"),
    from_beginning: bool = typer.Option(False, "--from-beginning", help="Start at the oldest record, not the newest."),
    max_records: int = typer.Option(0, "--max", help="Stop after N records (0: follow until Ctrl-C)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    idle_timeout: float = typer.Option(0.0, help="Stop after this many seconds without a record (0: never)."),
) -> None:
    """Print each event on TOPIC as it arrives. Undecodable records are shown with the reason, never skipped."""
    from confluent_kafka import Consumer, OFFSET_BEGINNING, OFFSET_END, TopicPartition

    bb = Backbone()
    topic = bb.resolve_topic(topic)
    serde = bb.serde
    consumer = Consumer({"bootstrap.servers": bb.bootstrap, "group.id": f"esper-tail-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    md = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if md is None or md.error is not None:
        typer.echo(f"error: topic {topic} does not exist on {bb.bootstrap}; run `esper infra up`", err=True)
        raise typer.Exit(1)
    start = OFFSET_BEGINNING if from_beginning else OFFSET_END
    consumer.assign([TopicPartition(topic, p, start) for p in md.partitions])
    shown, idle = 0, 0.0
    try:
        while max_records == 0 or shown < max_records:
            msg = consumer.poll(0.5)
            if msg is None:
                idle += 0.5
                if idle_timeout and idle >= idle_timeout:
                    break
                continue
            idle = 0.0
            if msg.error():
                continue
            where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
            try:
                decoded = serde.decode(msg.value(), topic)
            except DecodeError as exc:
                line = {"position": where, "error": exc.reason, "detail": exc.detail} if as_json else \
                    f"{where} UNDECODABLE ({exc.reason}): {exc.detail}"
            else:
                if as_json:
                    line = {"position": where, "key": (msg.key() or b"").decode(errors="replace"),
                            "type": decoded.name, "event": decoded.record}
                else:
                    rec = dict(decoded.record)
                    env = rec.pop("envelope", None) or {}
                    head = f"{where} {decoded.schema.short_name}"
                    if env:
                        head += f" {env.get('originator_id')}#{env.get('originator_version')} run={env.get('run_id')}"
                    line = f"{head} {json.dumps(rec, default=_jsonable)}"
            typer.echo(json.dumps(line, default=_jsonable) if as_json else line)
            sys.stdout.flush()
            shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
        bb.close()
