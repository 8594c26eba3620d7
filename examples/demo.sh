#!/usr/bin/env bash
# The main job on embedded defaults: a throwaway PostgreSQL and a mock
# Kafka broker, the schema, a producer service that writes orders and
# their events in one transaction each (some rolled back), one event
# appended from the command line, and the relay publishing the outbox to
# Kafka, read back with kcat. Everything it starts is stopped and removed
# at the end.
#
#   bash examples/demo.sh BUILD_DIR
set -euo pipefail

build=$(cd "${1:?usage: examples/demo.sh BUILD_DIR}" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d /tmp/oncebox-demo.XXXXXX)
chmod 755 "$tmp"

cleanup() {
    "$root/tests/support/broker" stop "$tmp/broker" >/dev/null 2>&1 || true
    "$root/tests/support/pg-tmp" stop "$tmp/pg" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

step() { printf '\n== %s\n' "$*"; }

step "a throwaway PostgreSQL"
export ONCEBOX_DB
ONCEBOX_DB=$("$root/tests/support/pg-tmp" start "$tmp/pg")
echo "$ONCEBOX_DB"

step "a mock Kafka broker (librdkafka's mock cluster, 3 brokers)"
brokers=$(OB_BUILD="$build" "$root/tests/support/broker" start "$tmp/broker")
echo "$brokers"

step "oncebox migrate"
"$build/oncebox" migrate

step "orders_service: 20 orders, every 5th transaction rolled back"
"$build/examples/orders_service" --orders 20 --customers 3 \
    --rollback-every 5 --seed 7 | tee "$tmp/orders.json"

step "the outbox holds exactly the committed orders' events"
psql "$ONCEBOX_DB" -X -q -c "
    SELECT count(*) AS events, count(DISTINCT aggregate_id) AS orders,
           (SELECT count(*) FROM oncebox.orders) AS order_rows
    FROM oncebox.outbox"
psql "$ONCEBOX_DB" -X -q -c "
    SELECT payload->>'customer_id' AS customer,
           sum((payload->>'total_cents')::bigint) AS total_cents
    FROM oncebox.outbox GROUP BY 1 ORDER BY 1"

step "oncebox append, twice with the same content key"
for i in 1 2; do
    "$build/oncebox" append --aggregate-type Invoice --aggregate-id inv-1 \
        --event-type InvoiceIssued --payload '{"amount": 1200}' \
        --key-mode content
done

step "oncebox append refuses bad input before touching the database"
"$build/oncebox" append --aggregate-type Invoice --aggregate-id inv-2 \
    --event-type InvoiceIssued --payload '{"amount": }' ||
    echo "(exit status $?)"

psql "$ONCEBOX_DB" -X -q -c "
    SELECT aggregate_type, aggregate_id, event_type, state,
           left(idempotency_key, 12) || '..' AS key
    FROM oncebox.outbox WHERE aggregate_type = 'Invoice'"
step "oncebox relay --once: publish everything due, then exit"
"$build/oncebox" relay --brokers "$brokers" --once

step "the outbox rows are marked published"
"$build/oncebox" status

step "three of the messages in Kafka, read back with kcat"
kcat -C -b "$brokers" -t order-events -o beginning -c 3 -e -q -m 30 \
    -f 'partition %p offset %o key %k\n  headers %h\n  value %s\n'

step "billing_consumer: each event applied once, in the handler's transaction"
"$build/examples/billing_consumer" --brokers "$brokers" --idle-exit-ms 3000
psql "$ONCEBOX_DB" -X -q -c "
    SELECT customer_id, total_cents FROM billing_balances ORDER BY 1"
echo "orders_service reported: $(tail -n 1 "$tmp/orders.json")"

step "the relay publishes everything again; the consumer applies nothing twice"
psql "$ONCEBOX_DB" -X -q -c "
    UPDATE oncebox.outbox SET state = 'pending', published_at = NULL"
"$build/oncebox" relay --brokers "$brokers" --once -q
"$build/examples/billing_consumer" --brokers "$brokers" --idle-exit-ms 3000
psql "$ONCEBOX_DB" -X -q -c "
    SELECT count(*) AS applied, count(DISTINCT idempotency_key) AS distinct_keys
    FROM billing_applied"

step "ledger_lmdb: the same events into an LMDB inbox"
"$build/examples/ledger_lmdb" --path "$tmp/ledger" --brokers "$brokers" \
    --idle-exit-ms 3000
"$build/examples/ledger_lmdb" --path "$tmp/ledger" --dump

echo
echo "demo: done"
