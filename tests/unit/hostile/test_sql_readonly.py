"""A user's SQL is read-only, one statement, bounded in time and memory — real SQL on chdb (``_Store.read``, what the
processors' SQL endpoint, ``esper sql`` and the API run)."""

import time

import pytest

from processors.clickhouse import EmbeddedStore, StoreError
from processors.clickhouse.store import READ_LIMITS


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with EmbeddedStore(tmp_path_factory.mktemp("ch")) as s:
        s.query("INSERT INTO esper.epochs (run_id, epoch, train_loss, val_loss, val_accuracy, params, learning_rate,"
                " duration_ms, event_id, occurred_at) VALUES ('r', 1, 1.0, 1.0, 0.5, 10, 0.1, 1.0, 'e1', now64(3))")
        yield s


def _epochs(store) -> int:
    return int(store.rows("SELECT count() AS n FROM esper.epochs")[0]["n"])


@pytest.mark.parametrize("query", [
    "SELECT run_id, max(val_accuracy) AS best FROM esper.epochs FINAL GROUP BY run_id",
    "  select run_id from esper.epochs ; ",
    "WITH e AS (SELECT run_id FROM esper.epochs) SELECT * FROM e",
    "(SELECT 'r' AS run_id) UNION ALL (SELECT run_id FROM esper.epochs)",
    "SELECT run_id FROM esper.epochs -- a comment\n",
    "SELECT 'it''s', 'a\\'b' AS q, run_id FROM esper.epochs",
])
def test_reads_are_served_as_written(store, query):
    assert store.read(query) == store.rows(query)


@pytest.mark.parametrize("query, says", [
    ("INSERT INTO esper.epochs (run_id) VALUES ('x')", "only SELECT"),
    ("DROP TABLE esper.epochs", "only SELECT"),
    ("ALTER TABLE esper.epochs DELETE WHERE 1", "only SELECT"),
    ("SET readonly = 0", "only SELECT"),
    ("SELECT 1; DROP TABLE esper.epochs", "Multi-statements"),
    ("SELECT 1); DROP TABLE esper.epochs; SELECT (1", "yntax"),
    ("SELECT * FROM file('/etc/hostname', 'LineAsString')", "readonly"),
    ("SELECT * FROM url('http://127.0.0.1:1/x', 'LineAsString')", "readonly"),
    ("SELECT * FROM file('/etc/hostname', 'LineAsString') SETTINGS readonly = 0", "readonly"),
    ("SELECT 1 INTO OUTFILE '/tmp/esper-x'", "yntax"),
    ("", "one SELECT"),
    ("SELECT '\x00'", "NUL"),
    ("SELECT '" + "x" * 70_000 + "'", "KiB"),
])
def test_everything_else_is_refused_and_nothing_changes(store, query, says):
    before = _epochs(store)
    with pytest.raises(StoreError, match=says):
        store.read(query)
    assert _epochs(store) == before


def test_a_runaway_query_is_stopped_by_the_time_limit_its_own_settings_cannot_lift(store):
    started = time.monotonic()
    with pytest.raises(StoreError, match="Timeout|TIMEOUT"):
        store.read("SELECT count() FROM numbers(100000000000000) SETTINGS max_execution_time = 0")
    assert time.monotonic() - started < READ_LIMITS["max_execution_time"] + 15


def test_a_lone_surrogate_is_a_query_error_not_a_crash(store):
    assert store.read("SELECT '\ud800' AS s") == [{"s": "?"}]
