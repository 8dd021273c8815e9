"""``pytest -m "not integration"`` needs no broker: every test that reaches one carries the marker (the collection
hook in tests/conftest.py refuses to run otherwise), and this checks the hook on the real suite and on a test that
breaks the rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _collect(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_suite_without_integration_tests_reaches_no_broker():
    res = _collect("-m", "not integration", "tests")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    collected = [line for line in res.stdout.splitlines() if "::" in line]
    assert len(collected) > 300 and not [c for c in collected if c.startswith("tests/integration/")]


def test_a_broker_test_without_the_marker_is_refused(tmp_path):
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_sneaky.py").write_text("def test_sneaky(kafka_bootstrap):\n    pass\n")
    res = _collect(str(tmp_path), cwd=tmp_path)
    assert res.returncode != 0 and "test_sneaky" in res.stdout + res.stderr
