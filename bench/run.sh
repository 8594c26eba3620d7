#!/usr/bin/env bash
# Runs every benchmark against a throwaway PostgreSQL (durable settings:
# fsync and synchronous_commit on) and the mock broker, both started here
# and stopped afterwards. Each benchmark prints its own baseline and ratio.
#
#   bash bench/run.sh BUILD_DIR [bench_name ...]
set -euo pipefail

build=$(cd "${1:?usage: bench/run.sh BUILD_DIR [bench ...]}" && pwd)
shift
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d /tmp/oncebox-bench.XXXXXX)
chmod 755 "$tmp"

cleanup() {
    "$root/tests/support/broker" stop "$tmp/broker" >/dev/null 2>&1 || true
    "$root/tests/support/pg-tmp" stop "$tmp/pg" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

db=$("$root/tests/support/pg-tmp" start "$tmp/pg")
export OB_BUILD="$build" ONCEBOX_DB="$db"
export ONCEBOX_BENCH_BROKERS
ONCEBOX_BENCH_BROKERS=$(OB_BUILD="$build" \
    "$root/tests/support/broker" start "$tmp/broker")

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB;" \
     "PostgreSQL $(psql "$db" -XAtc 'show server_version')," \
     "fsync=$(psql "$db" -XAtc 'show fsync')," \
     "synchronous_commit=$(psql "$db" -XAtc 'show synchronous_commit')"

names=("$@")
if [ ${#names[@]} -eq 0 ]; then
    for b in "$build"/bench/bench_*; do names+=("$(basename "$b")"); done
fi
for name in "${names[@]}"; do
    echo
    "$build/bench/$name" --db "$db"
done
