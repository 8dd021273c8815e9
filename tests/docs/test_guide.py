"""The user guide runs: the site builds with warnings as errors (reference pages regenerated from the code), and every
fenced block of ``docs/*.md`` is executed in page order in a fresh folder, so a page cannot drift from the code.

Conventions for page authors (plain mkdocs renders only these fence forms, so they are the only ones accepted):

- ```` ```{.yaml title="run.yaml"} ````: written to ``run.yaml`` in the page's folder, not run (any language).
- ```` ```bash ````: run with ``bash -euo pipefail`` in that folder, the venv's ``bin/`` first on PATH.
- ```` ```python ````: run with the venv's python in that folder.
- ```` ```text ````, ```` ```console ````, ```` ```json ````, a fence with no language, or the ``.norun`` class
  (```` ```{.bash .norun} ````): shown, not run. Any other block must have a title or ``.norun``: nothing is
  skipped silently.
- ``<!-- test: integration -->`` as a page's first line: its blocks need the Kafka broker; the page runs under
  ``pytest -m integration`` with the session's broker, a temporary ``ESPER_HOME`` and a topic prefix.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
VENV_BIN = Path(sys.executable).parent
INTEGRATION_MARK = "<!-- test: integration -->"

SHOWN = {"", "text", "console", "json"}
RUNNERS = {"bash": "bash", "sh": "bash", "python": "python", "py": "python"}


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    classes: tuple[str, ...]
    title: str | None
    code: str
    action: str  # write, bash, python or show


def _action(lang: str, classes: tuple[str, ...], title: str | None, where: str) -> str:
    if title:
        return "write"
    if "norun" in classes or lang in SHOWN:
        return "show"
    if lang in RUNNERS:
        return RUNNERS[lang]
    raise ValueError(f"{where}: a {lang!r} block is neither run nor written: give it a title "
                     f'({{.{lang} title="NAME"}}) or mark it {{.{lang} .norun}}')


_OPEN = re.compile(r"^(?P<fence>`{3,}|~{3,})[ ]*(?P<info>.*)$")
_ATTR = re.compile(r'(\.[\w-]+)|(\w+)="([^"]*)"|(\S+)')


def _parse_info(info: str, where: str) -> tuple[str, tuple[str, ...], str | None]:
    info = info.strip()
    if not info:
        return "", (), None
    if re.fullmatch(r"[\w#.+-]+", info):
        return info.lstrip("."), (), None
    if info.startswith("{") and info.endswith("}"):
        classes, attrs = [], {}
        for cls, key, value, junk in _ATTR.findall(info[1:-1]):
            if junk:
                raise ValueError(f"{where}: cannot read {junk!r} in the fence's attributes {info!r}")
            if cls:
                classes.append(cls[1:])
            else:
                attrs[key] = value
        lang = classes[0] if classes else ""
        return lang, tuple(classes[1:]), attrs.get("title")
    raise ValueError(f"{where}: mkdocs renders the fence info {info!r} as inline code; write a bare language "
                     f'(```bash) or attributes (```{{.yaml title="run.yaml"}}, ```{{.bash .norun}})')


def extract_blocks(text: str, page: str = "<page>") -> list[Block]:
    """Every fenced code block of a Markdown page, in order. Fences must start at column 0 (Python-Markdown renders
    nothing else as a code block), so an indented one is an error rather than an example that silently never runs."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if m is None:
            if _OPEN.match(lines[i].lstrip()) and lines[i][:1].isspace():
                raise ValueError(f"{page}:{i + 1}: an indented fence is not rendered as a code block by mkdocs")
            i += 1
            continue
        fence, start = m.group("fence"), i
        where = f"{page}:{i + 1}"
        lang, classes, title = _parse_info(m.group("info"), where)
        action = _action(lang, classes, title, where)
        body, i = [], i + 1
        while i < len(lines) and not re.fullmatch(re.escape(fence) + "[ ]*", lines[i]):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{page}:{start + 1}: the fence opened here is never closed")
        blocks.append(Block(page, start + 1, lang, classes, title, "\n".join(body) + "\n", action))
        i += 1
    return blocks


def needs_broker(text: str) -> bool:
    return text.lstrip().startswith(INTEGRATION_MARK)


def run_blocks(blocks: list[Block], workdir: Path, env: dict[str, str], timeout: float) -> int:
    """Write or run each block in order in ``workdir``; fail naming the page and line of the first that fails.
    Returns how many blocks ran."""
    scripts = workdir.parent / f"{workdir.name}-blocks"
    scripts.mkdir(exist_ok=True)
    ran = 0
    for block in blocks:
        action = block.action
        if action == "show":
            continue
        if action == "write":
            target = workdir / block.title
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code)
            continue
        if action == "bash":
            cmd = ["bash", "-euo", "pipefail", "-c", block.code]
        else:
            script = scripts / f"{Path(block.page).stem}-line{block.line}.py"
            script.write_text(block.code)
            cmd = [str(VENV_BIN / "python"), str(script)]
        try:
            res = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{block.page}:{block.line} ({action}) ran past {timeout:.0f} s\n--- block ---\n{block.code}"
                        f"--- stderr ---\n{(exc.stderr or b'')[-3000:]!r}")
        if res.returncode != 0:
            pytest.fail(f"{block.page}:{block.line} ({action}) exited {res.returncode}\n--- block ---\n{block.code}"
                        f"--- stdout ---\n{res.stdout[-2000:]}\n--- stderr ---\n{res.stderr[-4000:]}")
        ran += 1
    return ran


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _snippet_env(home: Path, prefix: str, **extra: str) -> dict[str, str]:
    return dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", ESPER_HOME=str(home),
                ESPER_TOPIC_PREFIX=prefix, ESPER_PROCESSORS_PORT=str(_free_port()), **extra)


def _pages() -> list:
    params = []
    for path in sorted(DOCS.glob("*.md")):
        marks = [pytest.mark.integration, pytest.mark.timeout(3600)] if needs_broker(path.read_text()) else []
        params.append(pytest.param(path, marks=marks, id=path.name))
    return params


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_reference"] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------- the extractor
PAGE = '''<!-- test: integration -->
# A page

```{.yaml title="conf/run.yaml"}
epochs: 3
```

````text
```bash
not a block of its own
```
````

```bash
esper run --config conf/run.yaml
```

```python
print("hi")
```

```{.bash .norun}
rm -rf /
```

```
plain
```
'''


def test_the_extractor_reads_blocks_in_order_with_their_lines_and_actions():
    blocks = extract_blocks(PAGE, "page.md")
    assert [(b.line, b.action) for b in blocks] == [(4, "write"), (8, "show"), (14, "bash"), (18, "python"),
                                                    (22, "show"), (26, "show")]
    assert blocks[0].title == "conf/run.yaml" and blocks[0].code == "epochs: 3\n"
    assert blocks[1].code == "```bash\nnot a block of its own\n```\n"
    assert blocks[2].code == "esper run --config conf/run.yaml\n"
    assert needs_broker(PAGE) and not needs_broker("# A page\n\n" + INTEGRATION_MARK)


@pytest.mark.parametrize("page, problem", [
    ("```yaml\na: 1\n```\n", "neither run nor written"),
    ('```yaml title="run.yaml"\na: 1\n```\n', "renders the fence info"),
    ("- item\n\n    ```bash\n    ls\n    ```\n", "indented fence"),
    ("```bash\nls\n", "never closed"),
], ids=["unknown language", "title in the info string", "indented fence", "unclosed fence"])
def test_the_extractor_refuses_blocks_that_would_not_run_as_written(page, problem):
    with pytest.raises(ValueError, match=problem):
        extract_blocks(page, "page.md")


def test_run_blocks_writes_files_runs_in_order_and_names_the_failing_line(tmp_path):
    page = ('```{.text title="data.txt"}\n41\n```\n\n'
            '```python\nn = int(open("data.txt").read())\nopen("out.txt", "w").write(str(n + 1))\n```\n\n'
            '```bash\ntest "$(cat out.txt)" = 42\n```\n\n'
            '```bash\nfalse | true\necho unreachable > later.txt\n```\n')
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(pytest.fail.Exception, match=r"page\.md:14 \(bash\) exited 1"):
        run_blocks(extract_blocks(page, "page.md"), work, _snippet_env(tmp_path / "home", "t."), timeout=60)
    assert (work / "out.txt").read_text() == "42" and not (work / "later.txt").exists()


# ---------------------------------------------------------------------------------------------- the reference
def test_the_generator_covers_every_source(tmp_path):
    """Each reference page names every field, command, record, table and endpoint its source has."""
    gen = _load_generator()
    assert gen.main([str(tmp_path)]) == 0
    pages = {p.name: p.read_text() for p in tmp_path.glob("*.md")}
    assert sorted(pages) == ["cli.md", "clickhouse.md", "config.md", "events.md", "rest.md"]

    from esper_runtime.config import EsperConfig

    for section in ("kasmina", "tamiyo", "tolaria", "hierarchical_control"):
        model = EsperConfig.model_fields[section].annotation
        model = gen._models_in(model)[0]
        assert f"### {model.__name__} " in pages["config.md"], section
        for field in model.model_fields:
            assert f"| `{field}` |" in pages["config.md"], f"{section}.{field}"

    import typer.main

    from esper_runtime.cli.main import app

    def commands(cmd, path):
        yield path
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            if not sub.hidden:
                yield from commands(sub, f"{path} {name}")

    for path in commands(typer.main.get_command(app), "esper"):
        assert f" {path} {{#" in pages["cli.md"], path

    for avsc in (ROOT / "schemas").glob("**/*.avsc"):
        assert f"### {json.loads(avsc.read_text())['name']} {{#" in pages["events.md"], avsc
    from streams.topics import TOPICS

    for spec in TOPICS:
        assert f"| `{spec.name}` |" in pages["events.md"], spec.name

    ddl = (ROOT / "ops" / "clickhouse" / "schema.sql").read_text()
    for table in re.findall(r"CREATE TABLE IF NOT EXISTS (\S+)", ddl):
        assert f"## {table} {{#" in pages["clickhouse.md"], table

    for path, ops in gen.build_openapi()["paths"].items():
        for method in ops:
            assert f"`{method.upper()} {path}`" in pages["rest.md"], (method, path)


def test_the_generator_fails_loudly_on_a_model_it_cannot_import(tmp_path, capsys):
    gen = _load_generator()
    assert gen.main([str(tmp_path), "--models", "esper_runtime.config.EsperConfig", "esper_runtime.nowhere.Cfg"]) == 1
    assert "esper_runtime.nowhere.Cfg" in capsys.readouterr().err
    assert not (tmp_path / "config.md").exists()


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(site)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]
    for page, expected in [("reference/config/index.html", "TolariaConfig"), ("reference/cli/index.html", "esper demo"),
                           ("reference/events/index.html", "SeedTelemetry"),
                           ("reference/clickhouse/index.html", "esper.epochs"),
                           ("reference/rest/index.html", "/api/v1/kernels/query"), ("index.html", "Quickstart")]:
        assert expected in (site / page).read_text(), page


# ---------------------------------------------------------------------------------------------- the pages
def test_every_block_parses_without_the_broker(tmp_path):
    """The broker pages only run under ``-m integration``; their blocks still parse here, and their configs
    validate: a block titled ``run.yaml`` as a RunConfig, ``esper.yaml`` as an EsperConfig."""
    import yaml

    from esper_runtime.config import load_config
    from esper_runtime.run.config import load_run_config

    checked = 0
    for page in sorted(DOCS.glob("*.md")):
        for block in extract_blocks(page.read_text(), f"docs/{page.name}"):
            where = f"{block.page}:{block.line}"
            if block.action == "python":
                compile(block.code, where, "exec")
            elif block.action == "bash":
                res = subprocess.run(["bash", "-n", "-c", block.code], capture_output=True, text=True)
                assert res.returncode == 0, f"{where}: {res.stderr}"
            elif block.action == "write" and block.title.endswith((".yaml", ".yml")):
                yaml.safe_load(block.code)
                target = tmp_path / block.title
                target.write_text(block.code)
                if target.name == "run.yaml":
                    load_run_config(target)
                elif target.name == "esper.yaml":
                    load_config(target)
            else:
                continue
            checked += 1
    assert checked > 0


@pytest.fixture(scope="module")
def broker_env(request, tmp_path_factory):
    """One home and topic prefix for every page that needs the broker: the first page builds the kernel library,
    the others reuse it."""
    from esper_runtime.infra import stop_recorded
    from streams.config import load_settings

    bootstrap = request.getfixturevalue("kafka_bootstrap")
    home = tmp_path_factory.mktemp("guide-home")
    yield _snippet_env(home, f"guide-{uuid.uuid4().hex[:8]}.", ESPER_KAFKA_BOOTSTRAP=bootstrap)
    stop_recorded(load_settings(home=home))  # an app a snippet's run left behind (its run timed out, say)


@pytest.mark.parametrize("page", _pages())
def test_the_page_runs(page, request, tmp_path):
    text = page.read_text()
    blocks = extract_blocks(text, f"docs/{page.name}")
    if needs_broker(text):
        env, timeout = request.getfixturevalue("broker_env"), 1800
    else:
        env, timeout = _snippet_env(tmp_path / "home", f"guide-{uuid.uuid4().hex[:8]}."), 300
    work = tmp_path / "work"
    work.mkdir()
    run_blocks(blocks, work, env, timeout)
