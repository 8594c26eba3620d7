#!/usr/bin/env bash
#
# The orders_service example keeps its contract: N transactions, every
# M-th rolled back after its append; the outbox holds an OrderPlaced event
# for exactly the committed orders; its last line of output is one JSON
# object whose balances are the committed totals per customer.

. "$(dirname "$0")/../support/clitest.sh"

SERVICE=$OB_BUILD/examples/orders_service
new_schema orders
S=$s
Q=$(ident "$S")

run "$SERVICE" --db "$ONCEBOX_TEST_DB" --schema "$S" --orders 50 \
    --customers 4 --rollback-every 7 --seed 3
check "orders_service exits 0" rc_is 0
tail -n 1 "$TMP/out" >"$TMP/result.json"

field() {
    /usr/bin/python3 -c 'import json, sys
doc = json.load(open(sys.argv[1]))
for part in sys.argv[2].split("."):
    doc = doc[part]
print(json.dumps(doc, sort_keys=True))' "$TMP/result.json" "$1"
}

check "the last line is one JSON object" field committed
check "50 orders, 7 rolled back: 43 committed" \
    test "$(field committed)" = 43
check "7 rolled back" test "$(field rolled_back)" = 7

# What the outbox holds, against what the service says it committed.
events=$(psql_test -c "SELECT count(*) FROM $Q.outbox")
check "one event per committed order" test "$events" = 43
check "every event follows the contract" test "$(psql_test -c "
    SELECT count(*) FROM $Q.outbox
    WHERE aggregate_type = 'Order' AND event_type = 'OrderPlaced'
      AND topic = 'order-events' AND aggregate_id = payload->>'order_id'
      AND payload->>'customer_id' ~ '^c-[1-4]\$'
      AND jsonb_typeof(payload->'total_cents') = 'number'")" = 43
check "events exist exactly for committed orders" test "$(psql_test -c "
    SELECT count(*) FROM $Q.orders o
    FULL JOIN $Q.outbox e ON e.aggregate_id = o.order_id
    WHERE e.id IS NULL OR o.order_id IS NULL")" = 0
balances=$(psql_test -c "
    SELECT json_object_agg(c, t ORDER BY c) FROM (
        SELECT payload->>'customer_id' AS c,
               sum((payload->>'total_cents')::bigint) AS t
        FROM $Q.outbox GROUP BY 1) s" |
    /usr/bin/python3 -c 'import json, sys
print(json.dumps(json.load(sys.stdin), sort_keys=True))')
check "the reported balances are the outbox's sums" \
    test "$balances" = "$(field balances)"

# The same seed gives the same customers and totals, with new order ids.
run "$SERVICE" --db "$ONCEBOX_TEST_DB" --schema "$S" --orders 50 \
    --customers 4 --rollback-every 7 --seed 3
check "a second run exits 0" rc_is 0
check "a second run with the same seed reports the same balances" \
    test "$(tail -n 1 "$TMP/out" | /usr/bin/python3 -c 'import json, sys
print(json.dumps(json.load(sys.stdin)["balances"], sort_keys=True))')" = \
    "$(field balances)"
check "a second run adds its own events" \
    test "$(psql_test -c "SELECT count(*) FROM $Q.outbox")" = 86

run "$SERVICE" --db "$ONCEBOX_TEST_DB" --orders -1
check "a bad option value exits 2" rc_is 2
check "a bad option value shows the usage" err_has "usage: orders_service"

finish
