#!/usr/bin/env bash
# The GPU checks of issue #18 in one run, under 8 minutes on one card: the CUDA tests (the Triton blend compiled for
# the card and under the interpreter, a kernel compiled for CUDA, loaded, measured), then three benches. Everything
# lands as JSON under $OUT (default ./gpu-check-out): device.json, tests.log, blend.json, kernel-load.json,
# dormant-overhead.json and summary.json (each target beside its figure). Exit status: 0 when the tests pass and
# every bench ran (a target missed is reported, not an error), 2 when this machine has no CUDA device, 1 otherwise.
#
#   bash ops/gpu-check.sh                       # in a checkout set up by ops/setup.sh, on a machine with a GPU
#   ESPER_CHECK_DEVICE=cpu bash ops/gpu-check.sh   # a rehearsal on any machine: the same steps on the CPU with
#                                               # short benches (the tests' CUDA cases skip), so the script itself
#                                               # is checked before a GPU's minutes are spent on it
#   bash ops/gpu-wheels.sh                      # on a machine without one but with PyPI: wheels into .whl/ for a
#                                               # GPU machine that has torch and triton and no package index; this
#                                               # script installs them from .whl/ when the folder is there
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
PY=${ESPER_PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import pydantic, pydantic_settings, dotenv, fastavro, lz4, cramjam, typer" 2>/dev/null \
    && ls .whl/*.whl >/dev/null 2>&1; then
  site=$(mktemp -d /tmp/esper-site.XXXX)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || { echo "gpu-check: installing the wheels in .whl failed" >&2; exit 1; }
  export PYTHONPATH="$site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
# a first run as a new machine sees it: an empty home and an empty compile cache
ESPER_HOME=$(mktemp -d /tmp/esper-home.XXXX)
TORCHINDUCTOR_CACHE_DIR=$(mktemp -d /tmp/esper-inductor.XXXX)
export ESPER_HOME TORCHINDUCTOR_CACHE_DIR
trap 'rm -rf "$ESPER_HOME" "$TORCHINDUCTOR_CACHE_DIR"' EXIT
started=$(date +%s)
DEVICE=${ESPER_CHECK_DEVICE:-cuda}
case "$DEVICE" in
  cuda) QUICK=() ;;
  cpu) QUICK=(--rounds 2 --max-rounds 2 --steps 2) ;;
  *) echo "gpu-check: ESPER_CHECK_DEVICE is cuda or cpu, not $DEVICE" >&2; exit 2 ;;
esac

"$PY" - > "$OUT/device.json" <<'PYEOF' || { echo "gpu-check: no CUDA device here (torch sees none): nothing to check" >&2; exit 2; }
import json, os, platform, sys
import torch, triton
from esper_runtime.devices import hardware_label
facts = {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
         "python": platform.python_version()}
if os.environ.get("ESPER_CHECK_DEVICE", "cuda") == "cpu":
    print(json.dumps({"name": platform.processor() or platform.machine(), "hardware": hardware_label("cpu"), **facts}))
    sys.exit(0)
if not torch.cuda.is_available():
    sys.exit(1)
p = torch.cuda.get_device_properties(0)
print(json.dumps({"name": p.name, "hardware": hardware_label("cuda"), "memory_gib": round(p.total_memory / 2**30, 1),
                  "multiprocessors": p.multi_processor_count, **facts}))
PYEOF
cat "$OUT/device.json"

failed=0
echo "== tests"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/gpu tests/unit/esper_runtime/kasmina/test_blend.py \
  tests/unit/esper_runtime/test_devices.py 2>&1 | tee "$OUT/tests.log"
tests_rc=${PIPESTATUS[0]}
[ "$tests_rc" -eq 0 ] || failed=1

bench() {  # name, timeout, args...
  local name=$1 limit=$2; shift 2
  echo "== bench $name"
  if timeout "$limit" "$PY" -m esper_runtime.cli.main bench "$name" --json --device "$DEVICE" "$@" > "$OUT/$name.out" \
      2> "$OUT/$name.err"; then
    tail -n 1 "$OUT/$name.out" > "$OUT/$name.json"
    cat "$OUT/$name.json"
  else
    echo "bench $name failed (exit $?): $(tail -n 5 "$OUT/$name.err")" >&2
    failed=1
  fi
  rm -f "$OUT/$name.out"
}
if [ "$DEVICE" = cpu ]; then bench blend 90 --rows 256 --features 512; else bench blend 90; fi
bench kernel-load 180
if [ "$DEVICE" = cpu ]; then bench dormant-overhead 150 "${QUICK[@]}"; else bench dormant-overhead 150 --max-rounds 60; fi

"$PY" - "$OUT" "$tests_rc" "$started" > "$OUT/summary.json" <<'PYEOF'
import json, pathlib, sys, time
out, tests_rc, started = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def read(name):
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() and path.stat().st_size else None
blend, load, dormant = read("blend"), read("kernel-load"), read("dormant-overhead")
targets = {
    "blend_over_copy": (blend and blend.get("blend_over_copy"), ">=", 0.8),
    "dormant_ratio": (dormant and dormant.get("ratio"), "<=", 1.01),
    "kernel_cold_ms": (load and load.get("cold_ms"), "<=", 50.0),
}
summary = {"device": json.loads((out / "device.json").read_text()), "tests_passed": tests_rc == 0, "seconds": int(time.time()) - started,
           "targets": {k: {"value": v, "target": f"{op} {t}",
                           "met": None if v is None else (v >= t if op == ">=" else v <= t)}
                       for k, (v, op, t) in targets.items()},
           "dormant_aa_spread": dormant and dormant.get("aa_spread"),
           "backward_over_copy": blend and blend.get("backward_over_copy")}
print(json.dumps(summary))
PYEOF
cat "$OUT/summary.json"
exit $failed
