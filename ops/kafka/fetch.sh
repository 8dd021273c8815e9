#!/usr/bin/env bash
# Fetch the pinned Apache Kafka broker and a log4j2 binding from Maven Central into ops/kafka/libs (or the directory
# given as the first argument: an installed Esper keeps them under $ESPER_HOME/kafka/libs).
# Idempotent: a complete libs/ (marked by .complete, tied to the pom's hash) is kept as it is.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
libs="${1:-$here/libs}"
stamp="$libs/.complete"
want="$(sha256sum "$here/pom.xml" | cut -d' ' -f1)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
command -v java >/dev/null || { echo "fetch.sh: java not found; install a JDK 17 or newer (Debian: apt-get install openjdk-17-jre-headless)" >&2; exit 3; }
command -v mvn >/dev/null || { echo "fetch.sh: mvn not found; install Maven (Debian: apt-get install maven)" >&2; exit 3; }

rm -rf "$libs.tmp"
mkdir -p "$(dirname "$libs")"
# Maven may write beside the pom: run it on a copy, so an installed (read-only) share/esper/ops stays untouched
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/pom.xml" "$work/pom.xml"
mvn -q -B -f "$work/pom.xml" \
  org.apache.maven.plugins:maven-dependency-plugin:3.7.1:copy-dependencies \
  -DoutputDirectory="$libs.tmp" -DincludeScope=runtime
rm -rf "$libs"
mv "$libs.tmp" "$libs"
echo "$want" > "$stamp"
echo "fetch.sh: $(ls "$libs"/*.jar | wc -l) jars in $libs"
