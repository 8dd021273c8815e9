"""Issue #13, item 4: what used to answer 500 answers 4xx with F.5's body, and the OpenAPI document says so. These
requests are refused before any data is read, so the app runs here on nothing; the full API against the broker and
chdb (and schemathesis over every operation) is in tests/integration/test_api.py."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from esper_runtime.api.app import MAX_BODY_BYTES, ApiData, create_app
from esper_runtime.api.auth import ApiSettings, TokenVerifier, generate_keypair, issue_token
from esper_runtime.blueprints import Blueprint, BlueprintInvalid, validate
from esper_runtime.blueprints.library import STARTER_LIBRARY
from esper_runtime.nissa.alerts import evaluate

ISS, AUD = "esper-test", "esper-api"


class NoData(ApiData):
    def __init__(self):
        pass

    def urza(self):
        raise AssertionError("a refused request must not read the library")

    def rows(self, sql):
        raise AssertionError("a refused request must not query")


@pytest.fixture(scope="module")
def app_and_key(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys")
    private, public = generate_keypair(keys)
    settings = ApiSettings(issuer=ISS, audience=AUD, public_keys=str(public))
    return create_app(NoData(), TokenVerifier(settings), settings), private.read_bytes()


@pytest.fixture(scope="module")
def client(app_and_key):
    app, key = app_and_key
    token = issue_token(key, "mallory", ["esper:read", "esper:write"], ISS, AUD)
    return TestClient(app, raise_server_exceptions=False), {"Authorization": f"Bearer {token}"}


def test_a_token_with_no_role_reads_nothing(app_and_key):
    app, key = app_and_key
    http = TestClient(app, raise_server_exceptions=False)
    token = issue_token(key, "nobody", [], ISS, AUD)
    for path in ("/api/v1/kernels", "/api/v1/runs", "/api/v1/alerts?run_id=r1", "/api/v1/blueprints/b1"):
        res = http.get(path, headers={"Authorization": f"Bearer {token}"})
        assert res.status_code == 403 and "esper:read" in res.json()["error"]["message"], path


def _residual(**over):
    return {**STARTER_LIBRARY[0], **over}


@pytest.mark.parametrize("body", [
    {"ir": _residual(tags=["mlp", 3, None])},  # mixed-type tags: sorted() raised TypeError
    {"ir": _residual(nodes=[{**STARTER_LIBRARY[0]["nodes"][0], "attrs": {"out": 4, "init": ["zeros"]}},
                            *STARTER_LIBRARY[0]["nodes"][1:]])},  # an unhashable init
    {"ir": _residual(), "chunk_widths": [1 << 40]},  # outside an Avro int: was accepted and published
    {"ir": _residual(), "chunk_widths": [1 << 70]},
    {"ir": _residual(description="x" * 70_000)},  # a document over the IR's size limit
    {"ir": "not an object"},
])
def test_bad_submissions_are_400s(client, body):
    http, auth = client
    res = http.post("/api/v1/blueprints", json=body, headers=auth)
    assert res.status_code == 400, res.text
    assert res.json()["error"]["code"] == 400


def test_a_body_over_the_limit_is_413_before_it_is_read(client):
    http, auth = client
    res = http.post("/api/v1/blueprints", content=b"{" + b" " * MAX_BODY_BYTES + b"}", headers=auth | {
        "Content-Type": "application/json"})
    assert res.status_code == 413 and res.json()["error"]["code"] == 413

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536
    res = http.post("/api/v1/blueprints", content=chunks(), headers=auth | {"Content-Type": "application/json"})
    assert res.status_code == 413


def test_the_openapi_document_says_what_the_app_answers(client):
    http, _ = client
    doc = http.get("/openapi.json").json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert "422" not in codes and {"400", "401", "403", "404"} <= codes, (path, method)
            if method == "post":
                assert "413" in codes, (path, method)
    assert "Error" in doc["components"]["schemas"]


def test_the_blueprint_checks_refuse_odd_shapes_with_their_own_error():
    for doc in (_residual(tags=[1, "a"]), _residual(tags="mlp")):
        with pytest.raises(BlueprintInvalid):
            validate(Blueprint.parse(doc))


class Rows:
    def __init__(self, rows):
        self._rows = rows

    def rows(self, sql):
        return self._rows if "val_loss" in sql and "prev_min" in sql else []


def test_an_alert_over_an_infinite_loss_is_said_not_raised():
    """ClickHouse returns an infinite loss as null: the message says so, the row keeps the null."""
    alerts = evaluate(Rows([{"epoch": 7, "val_loss": None, "prev_min": 0.25}]), "run-1")
    assert alerts[0]["message"] == "epoch 7: validation loss not finite is over 2.0x the recent minimum 0.2500"
    assert alerts[0]["row"]["val_loss"] is None
