#!/bin/sh
# Installs the Debian packages that oncebox's build, tests and benchmarks
# need, when any is missing. As root it runs apt-get; otherwise it prints
# the command to run.
set -e

packages="build-essential pkg-config libpq-dev librdkafka-dev liblmdb-dev
libjansson-dev libcmocka-dev libssl-dev postgresql-15 kcat python3-kafka
lmdb-utils valgrind"

missing=""
for p in $packages; do
    if ! dpkg-query -W -f '${Status}' "$p" 2>/dev/null |
            grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "oncebox needs these Debian packages:$missing" >&2
    echo "install them with: sudo apt-get update &&" \
         "sudo apt-get install -y$missing" >&2
    exit 1
fi

echo "installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing
