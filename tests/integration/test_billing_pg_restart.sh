#!/usr/bin/env bash
#
# PostgreSQL restarted (an immediate shutdown, a crash for its clients)
# twice under a running billing_consumer while events stream in: the
# consumer reconnects, runs the batch it lost again, and every event is
# applied exactly once. Run by tests/run-integration.sh.

set -u -o pipefail

PY=/usr/bin/python3
N=${OBT_EVENTS:-3000}
WAIT=120

fail() {
    echo "FAIL: $*" >&2
    [[ -f ${WORK:-}/consumer.err ]] && tail -n 20 "$WORK/consumer.err" >&2
    exit 1
}

[[ -n ${ONCEBOX_TEST_DB:-} && -n ${ONCEBOX_TEST_BROKERS:-} &&
   -n ${ONCEBOX_TEST_PGDIR:-} ]] ||
    fail "run me through tests/run-integration.sh"
ROOT=${OB_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${OB_BUILD:-$ROOT/build}/examples/billing_consumer
[[ -x $BIN ]] || fail "$BIN not built"

RUN_ID="$$_$(date +%s%N)"
DBNAME=pgrestart_$RUN_ID
TOPIC=pgrestart-$RUN_ID
WORK=$(mktemp -d) || fail "mktemp"
PRODUCER=
CONSUMER=

cleanup() {
    [[ -n $CONSUMER ]] && kill -KILL "$CONSUMER" 2>/dev/null
    [[ -n $PRODUCER ]] && kill -KILL "$PRODUCER" 2>/dev/null
    wait 2>/dev/null
    "$ROOT/tests/support/pg-tmp" status "$ONCEBOX_TEST_PGDIR" >/dev/null 2>&1 ||
        "$ROOT/tests/support/pg-tmp" restart "$ONCEBOX_TEST_PGDIR" >/dev/null
    psql "$ONCEBOX_TEST_DB" -Xq -c "DROP DATABASE IF EXISTS $DBNAME" \
        >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT

psql "$ONCEBOX_TEST_DB" -Xq -c "CREATE DATABASE $DBNAME" ||
    fail "cannot create database $DBNAME"
DB="$ONCEBOX_TEST_DB dbname=$DBNAME"

# Orders FROM .. TO-1 at about RATE per second, so that the restarts
# land mid-stream; nothing waits on the pace.
PY_PRODUCE='
import json, sys, time
from kafka import KafkaProducer
brokers, topic = sys.argv[1].split(","), sys.argv[2]
first, last, rate = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
p = KafkaProducer(bootstrap_servers=brokers, acks="all", retries=10)
start = time.monotonic()
for i in range(first, last):
    value = json.dumps({"order_id": "o-%d" % i, "customer_id": "c-%d" % (i % 7),
                        "total_cents": i + 1}).encode()
    p.send(topic, key=("o-%d" % i).encode(), value=value,
           headers=[("idempotency-key", ("o-%d" % i).encode())])
    ahead = (i - first + 1) / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
p.flush(timeout=60)
p.close()
'

applied() {
    psql "$DB" -XAtc "SELECT count(*) FROM billing_applied" 2>/dev/null ||
        echo 0
}

wait_applied() {
    local want=$1 deadline=$((SECONDS + WAIT))

    while (($(applied) < want)); do
        kill -0 "$CONSUMER" 2>/dev/null || fail "consumer exited early"
        ((SECONDS < deadline)) ||
            fail "only $(applied) of $want applied after ${WAIT}s"
        sleep 0.05
    done
}

"$PY" -c "$PY_PRODUCE" "$ONCEBOX_TEST_BROKERS" "$TOPIC" 0 "$N" 300 \
    2>"$WORK/producer.err" &
PRODUCER=$!
"$BIN" --db "$DB" --brokers "$ONCEBOX_TEST_BROKERS" --topic "$TOPIC" \
    --group billing-restart --batch-size 50 --idle-exit-ms 4000 \
    -X consumer.reconnect.backoff.max.ms=1000 \
    >"$WORK/consumer.out" 2>"$WORK/consumer.err" &
CONSUMER=$!

for at in $((N / 6)) $((N / 2)); do
    wait_applied "$at"
    "$ROOT/tests/support/pg-tmp" restart "$ONCEBOX_TEST_PGDIR" >/dev/null \
        2>>"$WORK/pg-tmp.err" ||
        fail "pg-tmp restart failed"
    echo "PostgreSQL restarted with $(applied) applied"
done

wait "$PRODUCER" || fail "producer failed: $(cat "$WORK/producer.err")"
PRODUCER=
wait_applied "$N"
wait "$CONSUMER" || fail "consumer exited $?"
CONSUMER=

read -r rows keys < <(psql "$DB" -XAt -F ' ' -c \
    "SELECT count(*), count(DISTINCT idempotency_key) FROM billing_applied")
[[ $rows == "$N" && $keys == "$N" ]] ||
    fail "billing_applied has $rows rows for $keys keys, expected $N each"
wrong=$(psql "$DB" -XAtc "
    WITH want AS (SELECT 'c-' || (i % 7) AS customer_id,
                         sum(i + 1) AS total_cents
                  FROM generate_series(0, $N - 1) i GROUP BY 1)
    SELECT count(*) FROM want FULL JOIN billing_balances b USING (customer_id)
    WHERE want.total_cents IS DISTINCT FROM b.total_cents")
[[ $wrong == 0 ]] || fail "$wrong balances differ from the events' sums"

reconnects=$(sed -n 's/.*"reconnects": \([0-9]*\).*/\1/p' "$WORK/consumer.out")
((reconnects >= 1)) || fail "the consumer reports $reconnects reconnects"
echo "billing PostgreSQL restarts: $N events, $reconnects reconnects," \
    "each event applied once"
