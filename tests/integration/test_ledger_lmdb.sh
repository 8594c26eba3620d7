#!/usr/bin/env bash
#
# The ledger_lmdb example keeps its contract, and its LMDB inbox applies
# every event exactly once: events from an independent producer
# (kafka-python, following the wire contract) with duplicates of the
# same idempotency key at other offsets; a second run that finds
# everything done; and a consumer killed with -9 at random points again
# and again (mostly inside its durable commits, where a batch of one
# message spends its time), restarted each time on the same environment
# with no recovery step.

. "$(dirname "$0")/../support/clitest.sh"

: "${ONCEBOX_TEST_BROKERS:?needs the mock broker (tests/run-integration.sh)}"
: "${ONCEBOX_TEST_BROKER_DIR:?needs the control directory of the mock broker}"

LEDGER=$OB_BUILD/examples/ledger_lmdb
BROKER=$(dirname "$0")/../support/broker
PY=/usr/bin/python3
BG=()
# A member killed with -9 holds its partitions until its session ends.
FAST=(-X kafka.session.timeout.ms=3000 -X kafka.heartbeat.interval.ms=500)

kill_bg() {
    local p

    for p in "${BG[@]}"; do
        kill -9 "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
}
trap 'kill_bg; clitest_cleanup' EXIT

# produce TOPIC N DUPS EXPECTED_JSON: N OrderPlaced events, then the
# first DUPS of them again with the same headers; writes the balances
# and the count the ledger must end with.
cat >"$TMP/produce.py" <<'EOF'
import json, sys, uuid
from kafka import KafkaProducer

brokers, topic, n, dups, out = sys.argv[1:6]
n, dups = int(n), int(dups)
p = KafkaProducer(bootstrap_servers=brokers, acks="all", linger_ms=5)
balances, sent = {}, []
for i in range(n):
    customer = "c-%d" % (i % 7 + 1)
    cents = 100 + (i * 37) % 1000
    order = "%s-o-%d" % (topic, i)
    value = json.dumps({"order_id": order, "customer_id": customer,
                        "total_cents": cents}).encode()
    headers = [("idempotency-key", str(uuid.uuid4()).encode()),
               ("event-id", str(uuid.uuid4()).encode()),
               ("event-type", b"OrderPlaced"),
               ("aggregate-type", b"Order"),
               ("aggregate-id", order.encode()),
               ("content-type", b"application/json")]
    p.send(topic, key=order.encode(), value=value, headers=headers)
    sent.append((order, value, headers))
    balances[customer] = balances.get(customer, 0) + cents
for order, value, headers in sent[:dups]:
    p.send(topic, key=order.encode(), value=value, headers=headers)
p.flush(60)
json.dump({"balances": balances, "applied": n, "double_applied": 0},
          open(out, "w"), sort_keys=True)
EOF

new_topic() {
    topic="ledger-$1-$$-$RANDOM"
    "$BROKER" cmd "$ONCEBOX_TEST_BROKER_DIR" "topic create $topic 4" \
        >/dev/null
}

# The dump, normalised for comparison with the expected JSON.
dump_of() {
    "$LEDGER" --path "$1" --dump | norm
}

field_of() {
    "$LEDGER" --path "$1" --dump |
        $PY -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' \
            "$2"
}

applied_of() { field_of "$1" applied; }
doubled_of() { field_of "$1" double_applied; }

norm() {
    $PY -c 'import json, sys
print(json.dumps(json.load(sys.stdin), sort_keys=True))'
}

same_json() {
    local got want

    got=$(dump_of "$1")
    want=$(norm <"$2")
    [[ $got == "$want" ]]
}

# Waits (bounded) until the ledger in $1 holds more than $2 applications
# or the process $3 has ended.
# A restarted member waits for the killed one's session to end and for
# the group to rebalance, which on a loaded machine can take long: the
# bound is generous and in wall time.
# Returns 0 on progress (or when the consumer exited), 2 when every one of
# the $4 events is applied already (nothing left to cut), 1 on a stall.
wait_progress() {
    local deadline=$((SECONDS + 180)) now

    while ((SECONDS < deadline)); do
        now=$(applied_of "$1")
        [[ $now -ge $4 ]] && return 2
        [[ $now -gt $2 ]] && return 0
        kill -0 "$3" 2>/dev/null || return 0
        sleep 0.05
    done
    return 1
}

# --- once, with duplicates from an independent producer -------------
new_topic once
ENV1=$TMP/env1
$PY "$TMP/produce.py" "$ONCEBOX_TEST_BROKERS" "$topic" 300 40 \
    "$TMP/expected1.json" 2>"$TMP/err"
check "kafka-python produced the events" test -s "$TMP/expected1.json"

run "$LEDGER" --path "$ENV1" --brokers "$ONCEBOX_TEST_BROKERS" \
    --group g1 --topic "$topic" --idle-exit-ms 1500 "${FAST[@]}"
check "ledger_lmdb exits 0 after its idle time" rc_is 0
check "it reports 300 applied and 40 duplicates" \
    out_has '"applied": 300, "duplicates": 40, "dead_letters": 0'
"$LEDGER" --path "$ENV1" --dump >"$TMP/dump1"
check "the dump is one JSON line" test "$(wc -l <"$TMP/dump1")" = 1
check "every event applied once, duplicates not at all" \
    same_json "$ENV1" "$TMP/expected1.json"

run "$LEDGER" --path "$ENV1" --brokers "$ONCEBOX_TEST_BROKERS" \
    --group g1 --topic "$topic" --idle-exit-ms 1500 "${FAST[@]}"
check "a second run exits 0" rc_is 0
check "a second run starts at the stored offsets: nothing to apply" \
    out_has '"applied": 0, "duplicates": 0'
check "the ledger is unchanged" same_json "$ENV1" "$TMP/expected1.json"

# --- killed with -9 at random points, restarted -----------------------
new_topic kill
ENV2=$TMP/env2
$PY "$TMP/produce.py" "$ONCEBOX_TEST_BROKERS" "$topic" 10000 300 \
    "$TMP/expected2.json" 2>"$TMP/err"
# The 300 duplicates apply nothing: 10000 events are the whole backlog.
check "kafka-python produced the events to kill for" \
    test -s "$TMP/expected2.json"

last=0
kills=0
total=10000
done_early=0
for round in 1 2 3 4 5 6; do
    # The first round commits one message at a time, so it is always cut
    # mid-run; later ones may finish the backlog before their kill.
    batch=$(((round > 1 && RANDOM % 3 == 0) ? 50 : 1))
    "$LEDGER" --path "$ENV2" --brokers "$ONCEBOX_TEST_BROKERS" \
        --group g2 --topic "$topic" --batch-size "$batch" "${FAST[@]}" \
        >"$TMP/kill$round.out" 2>"$TMP/kill$round.err" &
    pid=$!
    BG+=("$pid")
    wait_progress "$ENV2" "$last" "$pid" "$total"
    case $? in
    1)
        check "round $round: the consumer makes progress within 180 s" false
        break
        ;;
    2)
        done_early=1
        kill -9 "$pid"
        wait "$pid" 2>/dev/null
        break
        ;;
    esac
    # A random point in the run: the kill needs no synchronisation.
    sleep "$(printf '0.%03d' $((RANDOM % 300 + 10)))"
    if ! kill -0 "$pid" 2>/dev/null; then
        check "round $round: the consumer runs until it is killed" false
        sed 's/^/  consumer: /' "$TMP/kill$round.err" | tail -n 20
        break
    fi
    kill -9 "$pid"
    wait "$pid" 2>/dev/null
    kills=$((kills + 1))
    now=$(applied_of "$ENV2")
    check "round $round: the environment opens after kill -9" \
        test -n "$now"
    check "round $round: no event applied twice" \
        test "$(doubled_of "$ENV2")" = 0
    last=$now
done
check "the consumer was killed mid-run at least once" test "$kills" -ge 1
check "the consumer was killed mid-run 4 times, or the backlog ran out" \
    test "$kills" -ge 4 -o "$done_early" = 1
check "LMDB reads the killed environment without recovery" \
    mdb_stat "$ENV2"

run "$LEDGER" --path "$ENV2" --brokers "$ONCEBOX_TEST_BROKERS" \
    --group g2 --topic "$topic" --idle-exit-ms 1500 "${FAST[@]}"
check "the last run exits 0" rc_is 0
check "after the kills every event is applied exactly once" \
    same_json "$ENV2" "$TMP/expected2.json"

# --- usage ------------------------------------------------------------
run "$LEDGER" --path "$TMP/env3"
check "no --brokers exits 2" rc_is 2
check "no --brokers shows the usage" err_has "usage: ledger_lmdb"
run "$LEDGER" --brokers "$ONCEBOX_TEST_BROKERS" --dump
check "no --path exits 2" rc_is 2
run "$LEDGER" --path "$TMP/env3" --brokers "$ONCEBOX_TEST_BROKERS" \
    -X lmdb.durability=sometimes
check "a bad durability mode exits 2" rc_is 2
check "a bad durability mode is named" err_has "lmdb.durability"

finish
