#!/usr/bin/env bash
#
# The LMDB inbox under a full map and dead readers, through the
# ledger_lmdb example: a map of 64 KiB that must grow many times while
# batches run loses nothing and counts no handler failure; a map that
# reaches its maximum stops the consumer with an error naming the limit,
# and a later run with a larger limit applies the rest exactly once; a
# reader process killed inside its read transaction is cleared while
# the consumer runs, after which the file stops growing with every
# commit.

. "$(dirname "$0")/../support/clitest.sh"

: "${ONCEBOX_TEST_BROKERS:?needs the mock broker (tests/run-integration.sh)}"
: "${ONCEBOX_TEST_BROKER_DIR:?needs the control directory of the broker}"

LEDGER=$OB_BUILD/examples/ledger_lmdb
BROKER=$(dirname "$0")/../support/broker
PY=/usr/bin/python3
BG=()
FAST=(-X kafka.session.timeout.ms=3000 -X kafka.heartbeat.interval.ms=500)
TINY=(-X lmdb.map.size.bytes=65536)

kill_bg() {
    local p

    for p in "${BG[@]}"; do
        kill -9 "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
}
trap 'kill_bg; clitest_cleanup' EXIT

cat >"$TMP/produce.py" <<'EOF'
import json, sys, uuid
from kafka import KafkaProducer

brokers, topic, first, n, out = sys.argv[1:6]
first, n = int(first), int(n)
p = KafkaProducer(bootstrap_servers=brokers, acks="all", linger_ms=5)
balances = {}
for i in range(first, first + n):
    customer = "c-%d" % (i % 7 + 1)
    cents = 100 + (i * 37) % 1000
    order = "%s-o-%d" % (topic, i)
    value = json.dumps({"order_id": order, "customer_id": customer,
                        "total_cents": cents}).encode()
    headers = [("idempotency-key", str(uuid.uuid4()).encode()),
               ("event-type", b"OrderPlaced"),
               ("content-type", b"application/json")]
    p.send(topic, key=order.encode(), value=value, headers=headers)
    balances[customer] = balances.get(customer, 0) + cents
p.flush(60)
json.dump({"balances": balances, "applied": n}, open(out, "w"))
EOF

# The balances and count of several produce runs together.
cat >"$TMP/expect.py" <<'EOF'
import json, sys
total = {"balances": {}, "applied": 0, "double_applied": 0}
for name in sys.argv[1:]:
    part = json.load(open(name))
    total["applied"] += part["applied"]
    for c, v in part["balances"].items():
        total["balances"][c] = total["balances"].get(c, 0) + v
print(json.dumps(total, sort_keys=True))
EOF

new_topic() {
    topic="ledger-$1-$$-$RANDOM"
    "$BROKER" cmd "$ONCEBOX_TEST_BROKER_DIR" "topic create $topic 4" \
        >/dev/null
}

norm() {
    $PY -c 'import json, sys
print(json.dumps(json.load(sys.stdin), sort_keys=True))'
}

dump_of() { "$LEDGER" --path "$1" --dump | norm; }

applied_of() {
    "$LEDGER" --path "$1" --dump |
        $PY -c 'import json, sys; print(json.load(sys.stdin)["applied"])'
}

same_json() {
    local got want

    got=$(dump_of "$1")
    want=$($PY "$TMP/expect.py" "${@:2}")
    [[ $got == "$want" ]]
}

file_size() { stat -c %s "$1/data.mdb"; }

# The reader table lists pid $2 (mdb_stat -r only reads it).
# (mdb_stat -r exits 1 after printing the table.)
has_reader() {
    { mdb_stat -r "$1" || true; } |
        awk -v p="$2" '$1 == p { f = 1 } END { exit !f }'
}

# wait_until CMD...: polls CMD for up to about 60 s.
wait_until() {
    local i

    for ((i = 0; i < 600; i++)); do
        "$@" && return 0
        sleep 0.1
    done
    return 1
}

# Starts mdb_dump on the ledger's applied keys into a pipe nobody reads:
# it blocks in write() inside its read transaction. Sets reader.
hold_reader() {
    local fifo=$TMP/fifo.$RANDOM

    mkfifo "$fifo"
    sleep 600 <"$fifo" &
    BG+=("$!")
    mdb_dump -s ledger.applied "$1" >"$fifo" 2>/dev/null &
    reader=$!
    BG+=("$reader")
}

# --- growth from 64 KiB while batches run -----------------------------
new_topic grow
grow_topic=$topic
ENV1=$TMP/env1
$PY "$TMP/produce.py" "$ONCEBOX_TEST_BROKERS" "$topic" 0 3000 \
    "$TMP/grow.json" 2>"$TMP/err"
check "kafka-python produced the events" test -s "$TMP/grow.json"

run "$LEDGER" --path "$ENV1" --brokers "$ONCEBOX_TEST_BROKERS" \
    --group grow --topic "$topic" --idle-exit-ms 1500 --batch-size 200 \
    "${FAST[@]}" "${TINY[@]}" --verbose
check "the run with a 64 KiB map exits 0" rc_is 0
check "the map grew while batches ran" err_has "LMDB map grown to"
counts='"applied": 3000, "duplicates": 0, "dead_letters": 0, "key_reused": 0'
check "a full map is neither a handler failure nor a dead letter" \
    out_has "$counts, \"retries\": 0"
check "nothing lost, nothing applied twice" same_json "$ENV1" \
    "$TMP/grow.json"
check "the map outgrew 64 KiB" test "$(file_size "$ENV1")" -gt 65536

# --- the map's maximum ------------------------------------------------
new_topic max
ENV2=$TMP/env2
$PY "$TMP/produce.py" "$ONCEBOX_TEST_BROKERS" "$topic" 0 3000 \
    "$TMP/max.json" 2>"$TMP/err"
run "$LEDGER" --path "$ENV2" --brokers "$ONCEBOX_TEST_BROKERS" \
    --group max --topic "$topic" --idle-exit-ms 1500 --batch-size 200 \
    "${FAST[@]}" "${TINY[@]}" -X lmdb.map.max.bytes=262144
check "a map at its maximum stops the consumer with exit 1" rc_is 1
check "the error names the limit" err_has "lmdb.map.max.bytes"
part=$(applied_of "$ENV2")
check "only part was applied before the limit" test "$part" -lt 3000
run "$LEDGER" --path "$ENV2" --brokers "$ONCEBOX_TEST_BROKERS" \
    --group max --topic "$topic" --idle-exit-ms 1500 --batch-size 200 \
    "${FAST[@]}"
check "with the default limit the rest is applied" rc_is 0
check "the stopped batch was lost nowhere and applied once" \
    same_json "$ENV2" "$TMP/max.json"

# --- a reader killed inside its read transaction -----------------------
# A slot only stays stale while another process keeps the environment
# open (the first to open it alone resets the table): the consumer does.
"$LEDGER" --path "$ENV1" --brokers "$ONCEBOX_TEST_BROKERS" --group grow \
    --topic "$grow_topic" --batch-size 1 "${FAST[@]}" >"$TMP/bg.out" \
    2>"$TMP/bg.err" &
consumer=$!
BG+=("$consumer")
check "the consumer registers as a reader of the environment" \
    wait_until has_reader "$ENV1" "$consumer"

hold_reader "$ENV1"
check "a reader holds a read transaction" \
    wait_until has_reader "$ENV1" "$reader"
kill -9 "$reader"
wait "$reader" 2>/dev/null
dead=$reader

# Only mdb_reader_check() frees a dead process's slot while the
# environment is open elsewhere; the consumer runs it between batches.
$PY "$TMP/produce.py" "$ONCEBOX_TEST_BROKERS" "$grow_topic" 3000 1500 \
    "$TMP/more.json" 2>"$TMP/err"
check "the running consumer clears the dead reader's slot" \
    wait_until eval '! has_reader "$ENV1" "$dead"'
check "the running consumer applies the new events" \
    wait_until eval '[[ $(applied_of "$ENV1") -ge 4500 ]]'

# One commit per event: with old pages pinned by a reader each commit
# adds pages (1500 such commits grew this ledger by about 70 MiB when
# measured); with the slot cleared freed pages are used again.
before=$(file_size "$ENV1")
$PY "$TMP/produce.py" "$ONCEBOX_TEST_BROKERS" "$grow_topic" 4500 1500 \
    "$TMP/last.json" 2>"$TMP/err"
check "the running consumer applies the last events" \
    wait_until eval '[[ $(applied_of "$ENV1") -ge 6000 ]]'
kill -TERM "$consumer"
wait "$consumer"
RC=$?
check "the consumer stops cleanly on SIGTERM" rc_is 0
after=$(file_size "$ENV1")
check "1500 commits grew the file by under 16 MiB" \
    test $((after - before)) -lt $((16 << 20))
check "every event applied once" same_json "$ENV1" "$TMP/grow.json" \
    "$TMP/more.json" "$TMP/last.json"

finish
