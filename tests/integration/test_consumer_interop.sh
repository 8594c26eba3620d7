#!/usr/bin/env bash
#
# Events from independent Kafka clients reach billing_consumer and are
# applied once: the same event produced twice by kcat (two offsets, one
# key), once more by kafka-python, and another event by kafka-python,
# next to a message without the key header, which goes to the
# dead-letter topic with its reason. Run by tests/run-integration.sh.

set -u -o pipefail

PY=/usr/bin/python3
WAIT=60

fail() {
    echo "FAIL: $*" >&2
    [[ -f ${WORK:-}/consumer.err ]] && tail -n 20 "$WORK/consumer.err" >&2
    exit 1
}

[[ -n ${ONCEBOX_TEST_DB:-} && -n ${ONCEBOX_TEST_BROKERS:-} ]] ||
    fail "run me through tests/run-integration.sh"
ROOT=${OB_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BIN=${OB_BUILD:-$ROOT/build}/examples/billing_consumer
[[ -x $BIN ]] || fail "$BIN not built"

RUN_ID="$$_$(date +%s%N)"
DBNAME=interop_$RUN_ID
TOPIC=interop-orders-$RUN_ID
BROKERS=$ONCEBOX_TEST_BROKERS
WORK=$(mktemp -d) || fail "mktemp"

cleanup() {
    psql "$ONCEBOX_TEST_DB" -Xq -c "DROP DATABASE IF EXISTS $DBNAME" \
        >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT

psql "$ONCEBOX_TEST_DB" -Xq -c "CREATE DATABASE $DBNAME" ||
    fail "cannot create database $DBNAME"
DB="$ONCEBOX_TEST_DB dbname=$DBNAME"

EVENT='{"order_id": "o-1", "customer_id": "c-1", "total_cents": 4200}'

# kcat: the same event twice, headers as the wire contract has them.
for i in 1 2; do
    printf 'o-1|%s\n' "$EVENT"
done >"$WORK/kcat.in"
timeout "$WAIT" kcat -b "$BROKERS" -P -t "$TOPIC" -K '|' \
    -H idempotency-key=evt-o-1 -H event-type=OrderPlaced \
    -H content-type=application/json -l "$WORK/kcat.in" \
    2>"$WORK/kcat.err" || fail "kcat: $(cat "$WORK/kcat.err")"

# kafka-python: the same event a third time, another event, and a
# message without the key header.
PY_PRODUCE='
import sys
from kafka import KafkaProducer
brokers, topic, event = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
p = KafkaProducer(bootstrap_servers=brokers, acks="all")
p.send(topic, key=b"o-1", value=event.encode(),
       headers=[("idempotency-key", b"evt-o-1")])
p.send(topic, key=b"o-2", value=b"{\"order_id\": \"o-2\", "
       b"\"customer_id\": \"c-1\", \"total_cents\": 58}",
       headers=[("idempotency-key", b"evt-o-2")])
p.send(topic, key=b"o-3", value=b"{\"order_id\": \"o-3\", "
       b"\"customer_id\": \"c-2\", \"total_cents\": 1}", headers=[])
p.flush(timeout=60)
'
timeout "$WAIT" "$PY" -c "$PY_PRODUCE" "$BROKERS" "$TOPIC" "$EVENT" ||
    fail "kafka-python could not produce"

timeout 120 "$BIN" --db "$DB" --brokers "$BROKERS" --topic "$TOPIC" \
    --group interop --idle-exit-ms 2000 >"$WORK/consumer.out" \
    2>"$WORK/consumer.err" || fail "billing_consumer exited $?"

got=$(psql "$DB" -XAt -F ' ' -c "SELECT idempotency_key, order_id
    FROM billing_applied ORDER BY 1" | tr '\n' ';')
[[ $got == "evt-o-1 o-1;evt-o-2 o-2;" ]] ||
    fail "billing_applied holds '$got', expected each event once"
got=$(psql "$DB" -XAtc "SELECT total_cents FROM billing_balances
    WHERE customer_id = 'c-1'")
[[ $got == 4258 ]] || fail "c-1's balance is '$got', expected 4258"
grep -q '"duplicates": 2' "$WORK/consumer.out" ||
    fail "expected 2 duplicates: $(cat "$WORK/consumer.out")"

# The keyless message: in dead_letters and on the dead-letter topic.
got=$(psql "$DB" -XAtc "SELECT reason FROM oncebox.dead_letters")
[[ $got == "missing-key: "* ]] || fail "dead_letters holds '$got'"
timeout "$WAIT" kcat -b "$BROKERS" -C -t "$TOPIC.dlq" -o beginning -c 1 -e \
    -q -f '%k|%h\n' >"$WORK/dlq.out" 2>"$WORK/kcat.err" ||
    fail "kcat could not read $TOPIC.dlq: $(cat "$WORK/kcat.err")"
grep -q "^o-3|.*dlq-reason=missing-key" "$WORK/dlq.out" ||
    fail "dead letter on $TOPIC.dlq: '$(cat "$WORK/dlq.out")'"
grep -q "dlq-original-topic=$TOPIC" "$WORK/dlq.out" ||
    fail "dead letter does not name its topic: '$(cat "$WORK/dlq.out")'"
echo "consumer interop: kcat and kafka-python events applied once"
