#!/usr/bin/env bash
# Set up Esper on a fresh machine: system tools (Java 17+, Maven) if missing, the Python environment in .venv,
# and the pinned Kafka broker jars from Maven Central. Idempotent: a second run only checks.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

need_apt=()
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
if ((${#need_apt[@]})); then
  if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    say "installing ${need_apt[*]} (Kafka runs on the JVM; Maven fetches it)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    say "missing: ${need_apt[*]}. Install a JDK 17+ and Maven, then run this again."; exit 1
  fi
fi

# chromium: the headless browser the Nissa page's test renders in (optional for running Esper itself)
if ! command -v chromium >/dev/null; then
  if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    say "installing chromium (the Nissa page is tested in a headless browser)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    say "note: no chromium; the Nissa browser test will be skipped (install chromium to run it)"
  fi
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { say "Python 3.11+ is required"; exit 1; }
if [[ ! -x .venv/bin/python ]]; then
  say "creating .venv"
  "$python" -m venv .venv
fi
stamp=.venv/.esper-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  say "installing Python dependencies (torch is large: the first install takes minutes)"
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi

say "fetching the Kafka broker (Maven Central)"
bash ops/kafka/fetch.sh
.venv/bin/python -m streams.codegen --check >/dev/null
say "ready: .venv/bin/esper --help"
