"""The analytics store: embedded chdb by default, a ClickHouse server when ``ESPER_CLICKHOUSE_URL`` is set.

chdb allows one process per data directory, so the process that opens the embedded store owns it. The processors'
app is that owner while it runs: it advertises a local SQL endpoint (``endpoint.json``, readable by this user only,
with a random token) and ``open_store`` hands everyone else an ``OwnerClient`` that queries through it. Only when
nobody holds the store does a command open it directly; when it is held by a process that serves no endpoint the
caller is told so plainly (``StoreBusy``) instead of with chdb's own message. All three speak the same interface
(``rows``, ``query``, ``insert``, ``close``) and run the same DDL (``ops/clickhouse/schema.sql``).
"""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from streams.config import resource_dir
from streams.process import pid_alive
from processors.exceptions import StoreBusy, StoreError, StoreUnavailable

CONTAINER_MIN_RECORDS = 1000  # a native batch is split in containers of at least this many records (one per core)

__all__ = ["EmbeddedStore", "StagedContainer", "OwnerClient", "ServerStore", "StoreBusy", "StoreError",
           "StoreUnavailable", "open_store", "schema_sql", "READ_LIMITS"]


def schema_sql() -> str:
    """The tables' DDL (``ops/clickhouse/schema.sql``, from the checkout or the installed wheel)."""
    return (resource_dir("ops") / "clickhouse" / "schema.sql").read_text()


# what one user query may use (``_Store.read``): ClickHouse enforces them, with ``readonly = 1`` applied last so the
# query's own SETTINGS cannot lift any of them
READ_LIMITS = {"max_execution_time": 20, "max_memory_usage": 2 << 30, "max_result_rows": 1_000_000,
               "result_overflow_mode": "'throw'"}
MAX_QUERY_BYTES = 64 * 1024
OWNER_START_S = 30.0  # how long a client waits for a live owner whose web server is not up yet


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _json_rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.strip().splitlines() if line.strip()]


class _Store:
    """What every store offers: ``query`` (text in a ClickHouse format), ``rows`` (dicts), ``insert``, ``close``."""

    def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        raise NotImplementedError

    def rows(self, sql: str) -> list[dict]:
        return _json_rows(self.query(sql, "JSONEachRow"))

    def read(self, sql: str) -> list[dict]:
        """A user's query, read-only: exactly one SELECT (ClickHouse's own parser says so), run with ``readonly = 1``
        (no writes, DDL, SET, ``file()`` or ``url()``) under ``READ_LIMITS`` on time, memory and rows."""
        try:
            return self.rows(self._read_only(sql))
        except StoreError as exc:
            raise StoreError(f"SQL error: {exc}") from None

    def _read_only(self, sql: str) -> str:
        if not isinstance(sql, str) or not sql.strip():
            raise StoreError("send one SELECT query")
        if "\x00" in sql or len(sql.encode("utf-8", "replace")) > MAX_QUERY_BYTES:
            raise StoreError(f"a query is at most {MAX_QUERY_BYTES // 1024} KiB of text without NUL characters")
        sql = sql.encode("utf-8", "replace").decode()  # a lone surrogate becomes '?', not an encoder crash
        literal = "'" + sql.replace("\\", "\\\\").replace("'", "\\'") + "'"
        # one statement or a syntax error ("Multi-statements are not allowed"), normalized by ClickHouse's formatter
        single = self.rows(f"SELECT formatQuerySingleLine({literal}) AS q")[0]["q"]
        if not single.upper().startswith(("SELECT ", "WITH ")):
            raise StoreError(f"read-only: only SELECT queries are served, not {single.split(' ', 1)[0].upper()} "
                             "(the tables are a projection of the log: rebuild them with `esper sink`)")
        limits = ", ".join(f"{k} = {v}" for k, v in READ_LIMITS.items())
        return f"SELECT * FROM ({single}) SETTINGS {limits}, readonly = 1"

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def arrow_stream(table) -> bytes:
    """A pyarrow Table as Arrow IPC stream bytes (ClickHouse's ``ArrowStream`` input format)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _arrow_type(clickhouse_type: str):
    """The Arrow type that carries a value of this ClickHouse column type into chdb (the types our DDL uses)."""
    import pyarrow as pa

    t = clickhouse_type
    if t.startswith("LowCardinality("):
        t = t[len("LowCardinality("):-1]
    if t == "String":
        return pa.string()
    if t.startswith("Array(") and t.endswith(")"):
        return pa.list_(_arrow_type(t[len("Array("):-1]))
    if t.startswith("DateTime64(3"):
        return pa.timestamp("ms")  # the rows' naive datetimes are UTC, as the columns are
    simple = {"UInt8": pa.uint8(), "UInt16": pa.uint16(), "UInt32": pa.uint32(), "UInt64": pa.uint64(),
              "Int8": pa.int8(), "Int16": pa.int16(), "Int32": pa.int32(), "Int64": pa.int64(),
              "Float32": pa.float32(), "Float64": pa.float64()}
    if t not in simple:
        raise StoreError(f"no Arrow type for the ClickHouse type {clickhouse_type}")
    return simple[t]


@dataclass
class StagedContainer:
    """A native batch's containers on disk, waiting for their INSERT (``EmbeddedStore.stage_container``)."""

    name: str  # the writer schema's
    records: int
    table: str
    sql: str
    paths: list[Path]

    def discard(self) -> None:
        for path in self.paths:
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError):  # never written: nothing to remove
                pass


class EmbeddedStore(_Store):
    def __init__(self, path: Path):
        from chdb import session

        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        owner = self.path / "owner.pid"
        other = _live_owner(owner)
        if other is not None and other != os.getpid():
            raise StoreBusy(f"the ClickHouse store at {self.path} is busy: owned by process {other}, which serves no SQL "
                            "endpoint; stop it, or start the processors (`esper processors`) and query through them")
        try:
            self._session = session.Session(str(self.path))
        except Exception as exc:  # chdb's lock error names no owner
            raise StoreBusy(f"the ClickHouse store at {self.path} is busy (in use by another process): {exc}") from None
        owner.write_text(str(os.getpid()))
        self._owner_file = owner
        self._types: dict[str, dict] = {}
        for statement in _statements(schema_sql()):
            self._session.query(statement)

    def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        try:
            return str(self._session.query(sql, fmt))
        except Exception as exc:  # chdb raises RuntimeError with ClickHouse's message
            raise StoreError(str(exc)[:4000]) from None

    def insert(self, table: str, rows: list[dict]) -> int:
        """Insert rows (dicts with the table's columns) in one statement, as an Arrow table typed by the table's
        own columns: a value of the wrong type (a string where a number goes, a negative id) is refused, naming the
        column, instead of being coerced."""
        if not rows:
            return 0
        import pyarrow as pa

        columns = list(rows[0])
        try:
            types = self.arrow_types(table)
            arrow = pa.Table.from_pylist(rows, schema=pa.schema([(c, types[c]) for c in columns]))
        except KeyError as exc:
            raise StoreError(f"insert into {table}: no column {exc} in esper.{table}") from None
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise StoreError(f"insert into {table}: {type(exc).__name__}: {str(exc)[:2000]}") from None
        self.insert_arrow_stream(table, columns, arrow_stream(arrow))
        return len(rows)

    def insert_arrow_stream(self, table: str, columns: list[str], data: bytes) -> None:
        """An Arrow IPC stream straight into ``INSERT INTO esper.<table> (columns)``: no SQL-side scan of a Python
        object (what ``insert`` ends with, and what ``esper bench telemetry`` times alone as the limit)."""
        try:
            with self._session.send_insert(f"INSERT INTO esper.{table} ({', '.join(columns)})", "ArrowStream") as ins:
                ins.append(data)
                ins.finish()
        except Exception as exc:  # chdb: ClickHouse's message in a RuntimeError; in-process, so never "unavailable"
            raise StoreError(f"insert into {table}: {str(exc)[:4000]}") from None

    def insert_container(self, writer, bodies: list[bytes], containers: int | None = None,
                         table: str | None = None) -> tuple[str, int] | None:
        """Avro bodies of ``writer``'s records (undecoded) inserted by ClickHouse itself: object containers, read
        and mapped to rows by SQL (``native``). Returns (table, rows inserted), or None when ``writer`` has no native
        mapping (the caller decodes). A record ClickHouse cannot read or check raises StoreError for the whole batch
        (nothing of it is inserted: one statement). ``stage_container`` then ``insert_staged``; ``table``: a scratch
        copy of the mapping's table instead of it (the bench)."""
        staged = self.stage_container(writer, bodies, containers, table)
        return None if staged is None else self.insert_staged(staged)

    def stage_container(self, writer, bodies: list[bytes], containers: int | None = None,
                        table: str | None = None) -> "StagedContainer | None":
        """The containers of ``insert_container`` written, nothing inserted yet: what a reader thread does while
        ClickHouse inserts the previous batch. Any thread may stage; ``insert_staged`` (the store's thread) inserts
        and removes the files, ``StagedContainer.discard`` removes them unused. None: no native mapping.

        A large batch is split into ``containers`` (default: one per core, each of at least
        ``CONTAINER_MIN_RECORDS``) read by one glob: ClickHouse parses files in parallel, one per thread
        (``esper bench telemetry`` reports the native insert both ways)."""
        from processors.clickhouse.native import NATIVE, native_insert_sql, object_container

        inbox = self.path / "incoming"
        tag = f"{os.getpid()}-{secrets.token_hex(8)}"
        made = native_insert_sql(writer, str(inbox / f"{tag}-*.avro"), table)
        if made is None:
            return None
        sql, schema_json = made
        parts = containers or max(1, min(os.cpu_count() or 1, len(bodies) // CONTAINER_MIN_RECORDS))
        per = -(-len(bodies) // parts)
        staged = StagedContainer(writer.name, len(bodies), table or NATIVE[writer.name].table, sql,
                                 [inbox / f"{tag}-{k}.avro" for k in range(parts)])
        try:
            inbox.mkdir(exist_ok=True)
            for k, path in enumerate(staged.paths):
                path.write_bytes(object_container(schema_json, bodies[k * per:(k + 1) * per]))
        except OSError as exc:  # e.g. the disk full: the caller decodes the batch instead, as for a refused one
            staged.discard()
            raise StoreError(f"staging {len(bodies)} {writer.name} records: {exc}") from None
        except BaseException:
            staged.discard()
            raise
        return staged

    def insert_staged(self, staged: "StagedContainer") -> tuple[str, int]:
        """A staged batch inserted (one statement) and its files removed, inserted or not."""
        try:
            result = self._session.query(staged.sql, "TSV")
        except Exception as exc:  # chdb: ClickHouse's message in a RuntimeError
            raise StoreError(f"insert of {staged.records} {staged.name} records: {str(exc)[:4000]}") from None
        finally:
            staged.discard()
        return staged.table, int(result.rows_written())

    def arrow_types(self, table: str) -> dict:
        """The Arrow type of each column of ``esper.<table>`` (asked once per table)."""
        known = self._types.get(table)
        if known is None:
            rows = _json_rows(self.query(f"SELECT name, type FROM system.columns WHERE database = 'esper' AND "
                                         f"table = '{table}'", "JSONEachRow"))
            if not rows:
                raise StoreError(f"insert into {table}: no table esper.{table}")
            known = self._types[table] = {r["name"]: _arrow_type(r["type"]) for r in rows}
        return known

    def advertise(self, url: str) -> str:
        """Tell other processes where to query this store; returns the token they must present."""
        token = secrets.token_urlsafe(24)
        endpoint = self.path / "endpoint.json"
        tmp = endpoint.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": os.getpid(), "url": url, "token": token}, fh)
        os.replace(tmp, endpoint)
        return token

    def close(self) -> None:
        self._session.close()
        if _live_owner(self._owner_file) == os.getpid():
            (self.path / "endpoint.json").unlink(missing_ok=True)
            self._owner_file.unlink(missing_ok=True)


class OwnerClient(_Store):
    """The embedded store, queried through the process that owns it (the processors' app)."""

    def __init__(self, url: str, token: str, owner_pid: int):
        self.url, self._token, self.owner_pid = url.rstrip("/"), token, owner_pid

    def _post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {self._token}",
                                              "Content-Type": "application/json"})
        deadline = time.monotonic() + OWNER_START_S
        while True:
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                try:
                    message = json.loads(exc.read()).get("error", "")
                except ValueError:
                    message = ""
                raise StoreError(message or f"the store's owner (pid {self.owner_pid}) answered {exc.code}") from None
            except (urllib.error.URLError, OSError) as exc:
                # the owner advertises its endpoint before its web server listens: while it is alive, it is starting
                refused = isinstance(getattr(exc, "reason", exc), ConnectionRefusedError)
                if refused and time.monotonic() < deadline and pid_alive(self.owner_pid):
                    time.sleep(0.5)
                    continue
                raise StoreBusy(f"the store's owner (pid {self.owner_pid}) does not answer at {self.url}: {exc}") \
                    from None

    def rows(self, sql: str) -> list[dict]:
        """Through the owner every query is read-only (the owner runs ``read``)."""
        return self._post("/esper/sql/", {"query": sql})["rows"]

    def read(self, sql: str) -> list[dict]:
        return self.rows(sql)

    def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        if fmt != "JSONEachRow":
            raise StoreError("through the store's owner only JSONEachRow is served")
        return "\n".join(json.dumps(r) for r in self.rows(sql))

    def insert(self, table: str, rows: list[dict]) -> int:
        raise StoreError("inserts go through the processors' telemetry sink, not through another process")


class ServerStore(_Store):
    """A ClickHouse server through clickhouse-connect (``ESPER_CLICKHOUSE_URL``): same DDL, same queries."""

    def __init__(self, url: str):
        import clickhouse_connect

        try:
            self._client = clickhouse_connect.get_client(dsn=url)
            for statement in _statements(schema_sql()):
                self._client.command(statement)
        except Exception as exc:
            raise StoreError(f"cannot use the ClickHouse server at {_redact(url)}: {exc}") from None

    def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        try:
            return self._client.raw_query(sql, fmt=fmt).decode()
        except Exception as exc:
            raise StoreError(str(exc)[:4000]) from None

    def insert(self, table: str, rows: list[dict]) -> int:
        if not rows:
            return 0
        from clickhouse_connect.driver.exceptions import OperationalError

        columns = list(rows[0])
        try:
            self._client.insert(f"esper.{table}", [[r[c] for c in columns] for r in rows], column_names=columns)
        except (OperationalError, OSError) as exc:  # connection refused, reset, timed out: the server is away
            raise StoreUnavailable(f"ClickHouse server unreachable: {str(exc)[:1000]}") from None
        except Exception as exc:
            raise StoreError(f"insert into {table}: {str(exc)[:4000]}") from None
        return len(rows)

    def close(self) -> None:
        self._client.close()


def _redact(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl() \
        if parts.hostname else url


def _live_owner(owner: Path) -> int | None:
    try:
        pid = int(owner.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def open_store(settings, *, own: bool = False):
    """The analytics store the settings name: the server at ``clickhouse_url`` (ESPER_CLICKHOUSE_URL) if set; else
    the embedded one under ``home`` — through its owner when another process holds it and serves an endpoint,
    directly when nobody does. ``own=True`` (the processors' app) insists on holding it."""
    if settings.clickhouse_dsn:
        return ServerStore(settings.clickhouse_dsn)
    path = Path(settings.home) / "clickhouse"
    if not own:
        owner = _live_owner(path / "owner.pid")
        if owner is not None and owner != os.getpid():
            try:
                endpoint = json.loads((path / "endpoint.json").read_text())
            except (FileNotFoundError, ValueError):
                endpoint = None
            if endpoint and endpoint.get("pid") == owner:
                return OwnerClient(endpoint["url"], endpoint["token"], owner)
    return EmbeddedStore(path)
