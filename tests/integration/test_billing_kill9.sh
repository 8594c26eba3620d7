#!/usr/bin/env bash
#
# billing_consumer killed with SIGKILL at random points while events
# stream in, then restarted, several times: in the end every event is
# applied exactly once (one billing_applied row per key, every balance
# equal to the sum of its events). Run by tests/run-integration.sh.
#
# The events are order i = 0 .. N-1: key "o-<i>", customer "c-<i mod 7>",
# total_cents i + 1, so the expected balances follow from N alone. Each
# test run gets its own database, topic and group.

set -u -o pipefail

PY=/usr/bin/python3
N=${OBT_EVENTS:-3000}
KILLS=${OBT_KILLS:-4}
WAIT=90 # seconds any one step may take

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

[[ -n ${ONCEBOX_TEST_DB:-} && -n ${ONCEBOX_TEST_BROKERS:-} ]] ||
    fail "run me through tests/run-integration.sh"
ROOT=${OB_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${OB_BUILD:-$ROOT/build}/examples/billing_consumer
[[ -x $BIN ]] || fail "$BIN not built"

RUN_ID="$$_$(date +%s%N)"
DBNAME=kill9_$RUN_ID
TOPIC=kill9-$RUN_ID
WORK=$(mktemp -d) || fail "mktemp"
PRODUCER=
CONSUMER=

cleanup() {
    [[ -n $CONSUMER ]] && kill -KILL "$CONSUMER" 2>/dev/null
    [[ -n $PRODUCER ]] && kill -KILL "$PRODUCER" 2>/dev/null
    wait 2>/dev/null
    psql "$ONCEBOX_TEST_DB" -Xq -c "DROP DATABASE IF EXISTS $DBNAME" \
        >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT

psql "$ONCEBOX_TEST_DB" -Xq -c "CREATE DATABASE $DBNAME" ||
    fail "cannot create database $DBNAME"
DB="$ONCEBOX_TEST_DB dbname=$DBNAME"

# Produces orders FROM .. TO-1 at about RATE per second, with the wire
# contract's headers. The pace only spreads the events over time, so
# that the kills land mid-stream; nothing waits on it.
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
           headers=[("idempotency-key", ("o-%d" % i).encode()),
                    ("event-type", b"OrderPlaced"),
                    ("content-type", b"application/json")])
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

start_consumer() {
    "$BIN" --db "$DB" --brokers "$ONCEBOX_TEST_BROKERS" --topic "$TOPIC" \
        --group billing-kill9 --batch-size "$1" --idle-exit-ms "$2" \
        >>"$WORK/consumer.out" 2>>"$WORK/consumer.err" &
    CONSUMER=$!
}

# Waits until billing_applied holds at least $1 rows, or the consumer
# exits, or WAIT seconds pass.
wait_applied() {
    local want=$1 deadline=$((SECONDS + WAIT))

    while (($(applied) < want)); do
        kill -0 "$CONSUMER" 2>/dev/null ||
            fail "consumer exited early: $(tail -n 5 "$WORK/consumer.err")"
        ((SECONDS < deadline)) ||
            fail "only $(applied) of $want applied after ${WAIT}s"
        sleep 0.05
    done
}

"$PY" -c "$PY_PRODUCE" "$ONCEBOX_TEST_BROKERS" "$TOPIC" 0 "$N" 400 \
    2>"$WORK/producer.err" &
PRODUCER=$!

# Each round: run, wait for a random number of further events, SIGKILL.
# Batch sizes vary so the kills meet batches of different shapes.
target=0
for round in $(seq 1 "$KILLS"); do
    target=$((target + 100 + RANDOM % (N / (KILLS + 2))))
    ((target < N)) || break
    start_consumer $((1 + RANDOM % 64)) 0
    wait_applied "$target"
    kill -KILL "$CONSUMER"
    wait "$CONSUMER" 2>/dev/null
    CONSUMER=
    echo "round $round: killed with $(applied) applied"
done

wait "$PRODUCER" || fail "producer failed: $(cat "$WORK/producer.err")"
PRODUCER=

# The last run drains the topic and exits once idle.
start_consumer 100 3000
wait_applied "$N"
wait "$CONSUMER" || fail "final consumer exit $?: $(cat "$WORK/consumer.err")"
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

inbox=$(psql "$DB" -XAtc "SELECT count(*) FROM oncebox.inbox")
[[ $inbox == "$N" ]] || fail "the inbox holds $inbox keys, expected $N"
echo "billing kill -9: $N events over $KILLS kills, each applied once"
