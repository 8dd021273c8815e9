"""Esper installed from a wheel, not run from a checkout: the wheel is built from a copy of this checkout, installed
with pip under a temporary prefix, and imported from a directory that is no checkout — it finds its schemas, the
ClickHouse DDL, the broker's scripts and Nissa's page in the installed copy, and keeps its state in ~/.esper."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from streams.config import project_root

ROOT = project_root()

PROBE = r"""
import json, sys
from pathlib import Path
import streams
from streams.config import in_checkout, load_settings, resource_dir, schemas_dir
from streams.schemas import SchemaCatalog
from processors.clickhouse.store import schema_sql
from esper_runtime.infra.local_kafka import LocalKafka
from esper_runtime.api.app import NISSA_DIR

settings = load_settings()
kafka = LocalKafka(settings)
print(json.dumps({
    "streams": streams.__file__, "in_checkout": in_checkout(), "schemas": str(schemas_dir()),
    "ops": str(resource_dir("ops")), "n_schemas": len(SchemaCatalog.load()), "ddl": schema_sql(),
    "kafka_files": sorted(p.name for p in kafka.ops_dir.iterdir()), "libs": str(kafka.libs_dir),
    "home": str(settings.home), "nissa": (NISSA_DIR / "index.html").is_file(),
}))
"""


def _env_has_esper(cwd: Path) -> bool:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", "import streams"], cwd=cwd, env=env).returncode == 0


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", ".esper", "out", "build", "libs",
                                                             "*.egg-info", "__pycache__", ".pytest_cache", "tests"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist")],
                   check=True, capture_output=True)
    wheel = next((tmp / "dist").glob("esper-*.whl"))
    prefix = tmp / "prefix"
    before = _env_has_esper(tmp)
    # --ignore-installed: without it pip "upgrades" the esper installed in this environment, i.e. uninstalls it
    subprocess.run(pip + ["install", "--no-deps", "--ignore-installed", "--prefix", str(prefix), str(wheel)], check=True,
                   capture_output=True)
    assert _env_has_esper(tmp) == before, "installing the wheel under a prefix changed this environment's esper"
    site = Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))
    home = tmp / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_")}
    env.update(PYTHONPATH=str(site), HOME=str(home))
    res = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return {"prefix": prefix, "site": site, "user_home": home, **json.loads(res.stdout.strip().splitlines()[-1])}


def test_the_installed_copy_runs_not_the_checkout(installed):
    assert Path(installed["streams"]).is_relative_to(installed["site"])
    assert installed["in_checkout"] is False


def test_schemas_and_ops_come_from_the_wheel(installed):
    share = installed["prefix"] / "share" / "esper"
    assert Path(installed["schemas"]) == (share / "schemas").resolve()
    assert Path(installed["ops"]) == (share / "ops").resolve()
    from streams.schemas import SchemaCatalog

    assert installed["n_schemas"] == len(SchemaCatalog.load())  # every schema the checkout has
    assert installed["ddl"] == (ROOT / "ops" / "clickhouse" / "schema.sql").read_text()
    assert set(installed["kafka_files"]) >= {"fetch.sh", "pom.xml", "log4j2.properties", "server.properties.template"}
    assert installed["nissa"]


def test_every_schema_file_is_in_the_wheel(installed):
    share = installed["prefix"] / "share" / "esper"
    want = {p.relative_to(ROOT) for p in (ROOT / "schemas").rglob("*.avsc")}
    got = {p.relative_to(share) for p in (share / "schemas").rglob("*.avsc")}
    assert got == want  # a schema directory added to schemas/ needs its line in pyproject's data-files


def test_state_lives_in_the_users_home(installed):
    assert Path(installed["home"]) == installed["user_home"] / ".esper"
    assert Path(installed["libs"]) == installed["user_home"] / ".esper" / "kafka" / "libs"  # fetched there, once
