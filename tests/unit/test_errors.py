"""One error root: every error class Esper defines derives from ``EsperError`` and lives in its package's
``exceptions.py``; the CLI turns any of them into one line and its exit code, in one place."""

from __future__ import annotations

import ast
from pathlib import Path

from typer.testing import CliRunner

from esper_runtime.cli.main import app

ROOT = Path(__file__).resolve().parents[2]


def _error_classes():
    for path in sorted(p for pkg in ("streams", "views", "processors", "esper_runtime") for p in (ROOT / pkg).rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and any(
                    (isinstance(b, ast.Name) and b.id.endswith(("Error", "Exception"))) for b in node.bases):
                yield path.relative_to(ROOT).as_posix(), node.name


def test_every_error_class_is_in_an_exceptions_module_under_esper_error():
    import importlib

    from streams.exceptions import EsperError

    found = list(_error_classes())
    assert len(found) >= 20
    for rel, name in found:
        assert rel.endswith("exceptions.py"), f"{name} is defined in {rel}, not in its package's exceptions.py"
        cls = getattr(importlib.import_module(rel[:-3].replace("/", ".")), name)
        assert issubclass(cls, EsperError), f"{rel}: {name} does not derive from EsperError"


def test_the_cli_prints_an_esper_error_as_one_line_with_its_exit_code(tmp_path, monkeypatch):
    monkeypatch.setenv("ESPER_HOME", str(tmp_path))
    res = CliRunner().invoke(app, ["token", "issue", "--sub", "me"])
    assert res.exit_code == 1 and "no private key" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["study", "--tasks", "nope"])
    assert res.exit_code == 2 and "unknown task 'nope'" in res.output


def test_a_broker_that_does_not_answer_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("ESPER_HOME", str(tmp_path))
    monkeypatch.setenv("ESPER_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
    res = CliRunner().invoke(app, ["karn", "lineage"])
    assert res.exit_code == 1 and f"no Kafka broker answers at 127.0.0.1:{port}" in res.output, res.output
    assert "Traceback" not in res.output
