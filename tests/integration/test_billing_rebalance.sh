#!/usr/bin/env bash
#
# Two billing_consumer processes in one group while events stream in:
# the second joins mid-stream (a rebalance), then the first is stopped
# with SIGTERM (another one: it must finish its batch, leave the group
# and exit 0), and the second half of the events is produced only then,
# so the second consumer must take the first one's partitions over.
# Every event is applied exactly once, and the applied counts the two
# report add up to the events. Once with the eager
# assignor (range, librdkafka's default) and once with
# cooperative-sticky. Run by tests/run-integration.sh.

set -u -o pipefail

PY=/usr/bin/python3
N=${OBT_EVENTS:-4000}
WAIT=90

fail() {
    local f

    echo "FAIL: $*" >&2
    for f in "${WORK:-/nonexistent}"/*.err; do
        [[ -f $f ]] || continue
        echo "---- last lines of $(basename "$f") ----" >&2
        tail -n 15 "$f" >&2
    done
    exit 1
}

[[ -n ${ONCEBOX_TEST_DB:-} && -n ${ONCEBOX_TEST_BROKERS:-} ]] ||
    fail "run me through tests/run-integration.sh"
ROOT=${OB_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${OB_BUILD:-$ROOT/build}/examples/billing_consumer
[[ -x $BIN ]] || fail "$BIN not built"

RUN_ID="$$_$(date +%s%N)"
WORK=$(mktemp -d) || fail "mktemp"
DBS=()
PIDS=()

cleanup() {
    local p d

    for p in "${PIDS[@]}"; do
        kill -KILL "$p" 2>/dev/null
    done
    wait 2>/dev/null
    for d in "${DBS[@]}"; do
        psql "$ONCEBOX_TEST_DB" -Xq -c "DROP DATABASE IF EXISTS $d" \
            >/dev/null 2>&1
    done
    if [[ -n ${OBT_KEEP:-} ]]; then
        echo "logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# Orders FROM .. TO-1 at about RATE per second; the pace spreads them
# over the rebalances, nothing waits on it.
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

# wait_until DESCRIPTION COMMAND...: polls until the command succeeds.
wait_until() {
    local what=$1 deadline=$((SECONDS + WAIT))
    shift

    until "$@"; do
        ((SECONDS < deadline)) || fail "$what: not after ${WAIT}s"
        sleep 0.05
    done
}

at_least() {
    (($(applied) >= $1))
}

# assigned LOG [N]: the log shows at least N (default 1) assignments of
# one partition or more.
assigned() {
    (($(grep -cs "assigned [1-9][0-9]* partition" "$1") >= ${2:-1}))
}

# The "applied" figure of a consumer's closing JSON line.
reported() {
    sed -n 's/.*"applied": \([0-9]*\).*/\1/p' "$1" | tail -n 1
}

start_member() {
    local name=$1 strategy=$2

    "$BIN" --db "$DB" --brokers "$ONCEBOX_TEST_BROKERS" --topic "$TOPIC" \
        --group "$GROUP" --batch-size 20 --idle-exit-ms "$3" --verbose \
        -X "kafka.partition.assignment.strategy=$strategy" \
        >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS+=($!)
    eval "${name}_PID=$!"
}

run_case() {
    local strategy=$1 producer a_applied b_applied rows keys wrong dead

    DBNAME=rebalance_${strategy//-/_}_$RUN_ID
    TOPIC=rebalance-$strategy-$RUN_ID
    GROUP=billing-$strategy
    DBS+=("$DBNAME")
    psql "$ONCEBOX_TEST_DB" -Xq -c "CREATE DATABASE $DBNAME" ||
        fail "cannot create database $DBNAME"
    DB="$ONCEBOX_TEST_DB dbname=$DBNAME"

    "$PY" -c "$PY_PRODUCE" "$ONCEBOX_TEST_BROKERS" "$TOPIC" 0 $((N * 3 / 4)) \
        150 2>"$WORK/producer.err" &
    producer=$!
    PIDS+=("$producer")

    start_member A "$strategy" 0
    wait_until "$strategy: A applies events" at_least 200
    start_member B "$strategy" 4000
    wait_until "$strategy: B gets partitions" assigned "$WORK/B.err"
    kill -0 "$producer" 2>/dev/null ||
        echo "note: $strategy: B joined after the first part was produced"
    wait "$producer" || fail "producer: $(cat "$WORK/producer.err")"

    kill -TERM "$A_PID"
    wait "$A_PID" || fail "$strategy: A exited $? after SIGTERM:" \
        "$(tail -n 5 "$WORK/A.err")"
    grep -q "revoked\|lost" "$WORK/A.err" ||
        fail "$strategy: A never gave its partitions back"

    # Every partition gets some of these: B has to take A's over.
    "$PY" -c "$PY_PRODUCE" "$ONCEBOX_TEST_BROKERS" "$TOPIC" $((N * 3 / 4)) \
        "$N" 1000 2>"$WORK/producer.err" ||
        fail "producer: $(cat "$WORK/producer.err")"
    wait_until "$strategy: B takes over A's partitions" assigned \
        "$WORK/B.err" 2
    wait_until "$strategy: all $N applied" at_least "$N"
    wait "$B_PID" || fail "$strategy: B exited $?: $(tail -n 5 "$WORK/B.err")"

    read -r rows keys < <(psql "$DB" -XAt -F ' ' -c "SELECT count(*),
        count(DISTINCT idempotency_key) FROM billing_applied")
    [[ $rows == "$N" && $keys == "$N" ]] ||
        fail "$strategy: $rows rows for $keys keys, expected $N each"
    wrong=$(psql "$DB" -XAtc "
        WITH want AS (SELECT 'c-' || (i % 7) AS customer_id,
                             sum(i + 1) AS total_cents
                      FROM generate_series(0, $N - 1) i GROUP BY 1)
        SELECT count(*) FROM want FULL JOIN billing_balances b
            USING (customer_id)
        WHERE want.total_cents IS DISTINCT FROM b.total_cents")
    [[ $wrong == 0 ]] || fail "$strategy: $wrong balances are wrong"

    dead=$(psql "$DB" -XAtc "SELECT count(*) FROM oncebox.dead_letters")
    [[ $dead == 0 ]] ||
        fail "$strategy: $dead dead letters: contention is not a failure"

    a_applied=$(reported "$WORK/A.out")
    b_applied=$(reported "$WORK/B.out")
    ((a_applied > 0 && b_applied > 0)) ||
        fail "$strategy: A applied '$a_applied', B '$b_applied': both must"
    ((a_applied + b_applied == N)) ||
        fail "$strategy: A and B applied $a_applied + $b_applied, not $N"
    echo "$strategy: A applied $a_applied, B $b_applied, each event once"
}

run_case range
run_case cooperative-sticky
echo "billing rebalance: eager and cooperative, each event applied once"
