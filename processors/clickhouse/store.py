"""The analytics store. Embedded default: chdb, persistent under ``$ESPER_HOME/clickhouse``.

chdb allows one process per data directory, so the process that opens the store owns it; a second one is told so
plainly (``StoreBusy``) instead of with chdb's own message. The schema is ``ops/clickhouse/schema.sql``.
"""

from __future__ import annotations

import os
from pathlib import Path

from streams.config import project_root
from streams.exceptions import EsperError

__all__ = ["EmbeddedStore", "StoreBusy", "open_store", "SCHEMA_FILE", "TABLES"]

SCHEMA_FILE = project_root() / "ops" / "clickhouse" / "schema.sql"
TABLES = ("epochs", "seed_telemetry", "lifecycle_transitions", "decisions", "kernel_measurements", "field_reports")


class StoreBusy(EsperError):
    """Another process owns the embedded store."""


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class EmbeddedStore:
    def __init__(self, path: Path):
        from chdb import session

        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        owner = self.path / "owner.pid"
        other = _live_owner(owner)
        if other is not None and other != os.getpid():
            raise StoreBusy(f"the ClickHouse store at {self.path} is owned by process {other} (the processors' app "
                            "or another esper command); stop it, or query through it")
        try:
            self._session = session.Session(str(self.path))
        except Exception as exc:  # chdb's lock error names no owner
            raise StoreBusy(f"the ClickHouse store at {self.path} is in use by another process: {exc}") from None
        owner.write_text(str(os.getpid()))
        self._owner_file = owner
        for statement in _statements(SCHEMA_FILE.read_text()):
            self._session.query(statement)

    def query(self, sql: str, fmt: str = "JSONEachRow") -> str:
        return str(self._session.query(sql, fmt))

    def rows(self, sql: str) -> list[dict]:
        import json

        text = self.query(sql, "JSONEachRow").strip()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def insert(self, table: str, rows: list[dict]) -> int:
        """Insert rows (dicts with the table's columns) in one statement."""
        if not rows:
            return 0
        import pandas as pd

        frame = pd.DataFrame(rows)  # noqa: F841 - chdb reads it by name through the Python() table function
        columns = ", ".join(rows[0])
        self._session.query(f"INSERT INTO esper.{table} ({columns}) SELECT {columns} FROM Python(frame)")
        return len(rows)

    def close(self) -> None:
        self._session.close()
        if _live_owner(self._owner_file) == os.getpid():
            self._owner_file.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _live_owner(owner: Path) -> int | None:
    try:
        pid = int(owner.read_text())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    except PermissionError:
        return pid


def open_store(home: Path) -> EmbeddedStore:
    """The embedded store under ``home``. (A ClickHouse server through ESPER_CLICKHOUSE_URL: issue #6.)"""
    return EmbeddedStore(Path(home) / "clickhouse")
