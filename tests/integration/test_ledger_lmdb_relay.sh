#!/usr/bin/env bash
#
# End to end through the relay: orders_service commits orders with their
# OrderPlaced events in the outbox (some transactions rolled back),
# `oncebox relay --once` publishes them, ledger_lmdb applies them; its
# balances are the committed totals, each event once. Then every
# outbox row is set back to pending and published again, as a relay
# that lost its marks would: the ledger applies none of them twice.
#
# The broker is this test's own, so that only these events are on
# order-events.

. "$(dirname "$0")/../support/clitest.sh"

LEDGER=$OB_BUILD/examples/ledger_lmdb
SERVICE=$OB_BUILD/examples/orders_service
BROKER=$(dirname "$0")/../support/broker
PY=/usr/bin/python3
FAST=(-X kafka.session.timeout.ms=3000 -X kafka.heartbeat.interval.ms=500)

trap '"$BROKER" stop "$TMP/broker" >/dev/null 2>&1; clitest_cleanup' EXIT
BROKERS=$("$BROKER" start "$TMP/broker" --brokers 1 \
    --topic order-events:4)
check "the test's own broker started" test -n "$BROKERS"

new_schema ledger
S=$s
Q=$(ident "$S")

norm() {
    $PY -c 'import json, sys
doc = json.load(sys.stdin)
print(json.dumps(doc.get(sys.argv[1], doc), sort_keys=True))' "$1"
}

run "$SERVICE" --db "$ONCEBOX_TEST_DB" --schema "$S" --orders 120 \
    --customers 5 --rollback-every 6 --seed 8
check "orders_service exits 0" rc_is 0
tail -n 1 "$TMP/out" >"$TMP/service.json"
committed=$(norm committed <"$TMP/service.json")
check "100 orders committed, 20 rolled back" test "$committed" = 100

run "$ONCEBOX" relay --db "$ONCEBOX_TEST_DB" --schema "$S" \
    --brokers "$BROKERS" --once
check "the relay publishes the outbox and exits 0" rc_is 0
check "every event is marked published" test "$(psql_test -c "
    SELECT count(*) FROM $Q.outbox WHERE state = 'published'")" = 100

run "$LEDGER" --path "$TMP/env" --brokers "$BROKERS" --idle-exit-ms 1500 \
    "${FAST[@]}"
check "ledger_lmdb exits 0" rc_is 0
check "it applies the 100 committed events" out_has '"applied": 100,'
"$LEDGER" --path "$TMP/env" --dump >"$TMP/dump.json"
check "the ledger's balances are the committed totals" \
    test "$(norm balances <"$TMP/dump.json")" = \
    "$(norm balances <"$TMP/service.json")"
check "no event applied twice" \
    test "$(norm double_applied <"$TMP/dump.json")" = 0

# A relay that lost its marks publishes everything again.
psql_test -c "UPDATE $Q.outbox SET state = 'pending', published_at = NULL"
run "$ONCEBOX" relay --db "$ONCEBOX_TEST_DB" --schema "$S" \
    --brokers "$BROKERS" --once
check "the republishing relay exits 0" rc_is 0
run "$LEDGER" --path "$TMP/env" --brokers "$BROKERS" --idle-exit-ms 1500 \
    "${FAST[@]}"
check "ledger_lmdb exits 0 after the republish" rc_is 0
check "the republished events are duplicates, applied 0 times" \
    out_has '"applied": 0, "duplicates": 100,'
"$LEDGER" --path "$TMP/env" --dump >"$TMP/dump.json"
check "the balances are unchanged" \
    test "$(norm balances <"$TMP/dump.json")" = \
    "$(norm balances <"$TMP/service.json")"
check "still 100 applications" \
    test "$(norm applied <"$TMP/dump.json")" = 100

finish
