#!/usr/bin/env bash
#
# The whole path, as a user runs it: orders_service commits orders and
# their events (some transactions rolled back), `oncebox relay` publishes
# the outbox to Kafka, billing_consumer applies each event inside its own
# transaction with the PostgreSQL inbox. Every committed order must be
# counted exactly once in the balances, also when the relay publishes
# everything a second time and when the consumer is killed with -9 in the
# middle and started again. `oncebox check` judges the applied events.

. "$(dirname "$0")/../support/clitest.sh"

BROKER=$TMP/broker
OB_BUILD=$OB_BUILD "$OB_ROOT/tests/support/broker" start "$BROKER" \
    >"$TMP/bootstrap" || { echo "FAIL: broker start"; exit 1; }
trap '"$OB_ROOT/tests/support/broker" stop "$BROKER" >/dev/null 2>&1;
      clitest_cleanup' EXIT
BROKERS=$(cat "$TMP/bootstrap")

new_schema e2e
S=$s
# billing_consumer's own tables follow the search_path: keep them here.
export PGOPTIONS="-c search_path=$S"
GROUP=billing_$S

psql_e2e() { psql "$ONCEBOX_TEST_DB" -X -q -At -v ON_ERROR_STOP=1 "$@"; }

produce() {
    run "$OB_BUILD/examples/orders_service" --db "$ONCEBOX_TEST_DB" \
        --schema "$S" "$@"
    check "orders_service $* exits 0" rc_is 0
    tail -n 1 "$TMP/out" >>"$TMP/results"
}

relay_once() {
    run "$ONCEBOX" relay --db "$ONCEBOX_TEST_DB" --schema "$S" \
        --brokers "$BROKERS" --once -q
    check "relay --once exits 0" rc_is 0
}

consume() {
    env PGOPTIONS="$PGOPTIONS" timeout 180 \
        "$OB_BUILD/examples/billing_consumer" --db "$ONCEBOX_TEST_DB" \
        --brokers "$BROKERS" --schema "$S" --group "$GROUP" \
        --idle-exit-ms 4000 -X kafka.session.timeout.ms=6000 "$@" \
        >>"$TMP/consumer.log" 2>&1
}

# The committed totals per customer over every orders_service run.
expected_balances() {
    /usr/bin/python3 -c 'import json, sys
total = {}
for line in open(sys.argv[1]):
    for c, v in json.loads(line)["balances"].items():
        total[c] = total.get(c, 0) + v
print(json.dumps(total, sort_keys=True))' "$TMP/results"
}

applied_balances() {
    psql_e2e -c "SELECT coalesce(json_object_agg(customer_id, total_cents
                 ORDER BY customer_id), '{}') FROM billing_balances" |
        /usr/bin/python3 -c 'import json, sys
print(json.dumps(json.load(sys.stdin), sort_keys=True))'
}

committed() {
    /usr/bin/python3 -c 'import json, sys
print(sum(json.loads(l)["committed"] for l in open(sys.argv[1])))' \
        "$TMP/results"
}

applied_count() { psql_e2e -c "SELECT count(*) FROM billing_applied"; }

exactly_once() {
    psql_e2e -F $'\t' -c "SELECT idempotency_key, aggregate_id, seq
                          FROM $S.outbox" >"$TMP/committed.tsv"
    psql_e2e -c "SELECT idempotency_key FROM billing_applied" \
        >"$TMP/applied.tsv"
    run "$ONCEBOX" check --committed "$TMP/committed.tsv" \
        --applied "$TMP/applied.tsv"
    check "$1: oncebox check finds every event applied once" rc_is 0
    check "$1: the balances are the committed totals" \
        test "$(applied_balances)" = "$(expected_balances)"
    check "$1: one applied row per committed order" \
        test "$(applied_count)" = "$(committed)"
}

# 1. Orders in, relay, consumer: balances out.
produce --orders 200 --customers 5 --rollback-every 9 --seed 11
relay_once
consume
check "the consumer exits 0 when idle" test $? -eq 0
exactly_once "first pass"

# 2. The relay publishes everything again (a relay crash before marking
#    looks the same): new offsets, same keys, nothing applied twice.
psql_e2e -c "UPDATE $S.outbox SET state = 'pending', published_at = NULL"
relay_once
consume
exactly_once "after republishing"

# 3. The consumer is killed with -9 inside a batch and started again. A
#    session holding a SHARE lock on billing_balances makes the consumer
#    wait in the middle of its transaction, so the kill lands there.
produce --orders 300 --customers 5 --rollback-every 7 --seed 12
relay_once
before=$(applied_count)
PGAPPNAME=e2e_locker psql_e2e -c "BEGIN" \
    -c "LOCK TABLE billing_balances IN SHARE MODE" \
    -c "SELECT pg_sleep(300)" >/dev/null 2>&1 &
locker=$!
env PGOPTIONS="$PGOPTIONS" "$OB_BUILD/examples/billing_consumer" \
    --db "$ONCEBOX_TEST_DB" --brokers "$BROKERS" --schema "$S" \
    --group "$GROUP" --batch-size 10 --idle-exit-ms 60000 \
    -X kafka.session.timeout.ms=6000 >>"$TMP/consumer.log" 2>&1 &
pid=$!
blocked=0
for _ in $(seq 1 1200); do
    blocked=$(psql_e2e -c "
        SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
        JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE c.relname = 'billing_balances' AND NOT l.granted
          AND a.application_name <> 'e2e_locker'")
    [[ $blocked -gt 0 ]] && break
    sleep 0.1
done
check "the consumer waits inside its transaction" test "$blocked" -gt 0
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
psql_e2e -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'e2e_locker'" >/dev/null
wait "$locker" 2>/dev/null
check "the killed batch applied nothing" test "$(applied_count)" = "$before"
consume
exactly_once "after kill -9 inside a batch"

if [[ $FAILED -gt 0 ]]; then
    echo "consumer log:"
    tail -n 40 "$TMP/consumer.log"
fi
finish
