"""Shared fixtures. Integration tests run against the real broker: the one ESPER_KAFKA_BOOTSTRAP names, or the
local broker that ops/kafka runs (started here if it is not up, and stopped again at the end if we started it)."""

from __future__ import annotations

import uuid

import pytest

from streams import SchemaCatalog, load_settings
from streams.topics import TOPICS, ensure_topics


BROKER_FIXTURES = {"kafka_bootstrap", "kafka_admin", "topic_registry"}


def unmarked_broker_tests(items) -> list[str]:
    """Tests that reach the broker (a broker fixture, directly or through another fixture, or a module under
    tests/integration) without the ``integration`` marker: ``pytest -m "not integration"`` would need a broker."""
    return [item.nodeid for item in items
            if (BROKER_FIXTURES & set(getattr(item, "fixturenames", ())) or "tests/integration/" in item.nodeid
                or item.nodeid.startswith("integration/"))
            and item.get_closest_marker("integration") is None]


def pytest_collection_modifyitems(config, items):
    unmarked = unmarked_broker_tests(items)
    if unmarked:
        raise pytest.UsageError("these tests need the broker but lack @pytest.mark.integration: " + ", ".join(unmarked))


@pytest.fixture(scope="session", autouse=True)
def shared_kernels(tmp_path_factory):
    """One compiled-kernel store for the session (``ESPER_ARTIFACTS_DIR``, which every ``esper`` the tests start
    inherits): a test with a fresh home compiles only the kernels no earlier test compiled. A test of the first run a
    new machine has (``test_demo``) takes it out of its environment. A store the runner names is kept."""
    import os

    if os.environ.get("ESPER_ARTIFACTS_DIR"):
        yield os.environ["ESPER_ARTIFACTS_DIR"]
        return
    path = str(tmp_path_factory.mktemp("kernels"))
    os.environ["ESPER_ARTIFACTS_DIR"] = path
    try:
        yield path
    finally:
        os.environ.pop("ESPER_ARTIFACTS_DIR", None)


@pytest.fixture(scope="session")
def catalog() -> SchemaCatalog:
    return SchemaCatalog.load()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    from esper_runtime.infra import LocalKafka

    settings = load_settings()
    broker = LocalKafka(settings)
    started = settings.uses_local_broker and broker.pid() is None
    broker.up(timeout=120)
    yield settings.bootstrap_servers
    if started:
        broker.down()


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def topic_registry(kafka_admin):
    """Every registry topic under a fresh ``t-<uuid>.`` prefix, created on the broker, deleted afterwards."""
    made = []

    def make():
        registry = TOPICS.with_prefix(f"t-{uuid.uuid4().hex[:10]}.")
        ensure_topics(kafka_admin, registry)
        made.append(registry)
        return registry

    yield make
    names = [n for r in made for n in r.names()]
    if names:
        kafka_admin.delete_topics(names, operation_timeout=30)
