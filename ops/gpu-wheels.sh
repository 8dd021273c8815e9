#!/usr/bin/env bash
# Wheels for a GPU machine that already has torch and triton but not the rest of what Esper imports (the device
# machines this project is lent have no package index): downloaded here into .whl/ for Python 3.12 on x86-64, the
# versions this checkout's .venv runs. ops/gpu-check.sh installs them from there when the folder exists.
#   bash ops/gpu-wheels.sh            # then carry .whl to the GPU machine beside the checkout
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "gpu-wheels: run 'bash ops/setup.sh' first (the versions come from .venv)" >&2; exit 2; }
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
PACKAGES="pydantic pydantic_core pydantic-settings annotated-types typing-inspection typing_extensions python-dotenv fastavro cramjam lz4 typer rich"
specs=""
for p in $PACKAGES; do
  v=$("$PY" -c "import importlib.metadata as m; print(m.version('$p'))")
  specs="$specs $p==$v"
done
platforms=""
for n in 2_17 2_27 2_28 2_31 2_34; do platforms="$platforms --platform manylinux_${n}_x86_64"; done
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 $platforms -d .whl $specs
ls .whl
du -sh .whl
