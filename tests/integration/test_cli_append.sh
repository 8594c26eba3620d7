#!/usr/bin/env bash
#
# oncebox append as a script would use it: one event per call in its own
# transaction, the event id and key on stdout, exit 2 with nothing written
# for bad input, duplicates reported without failing.

. "$(dirname "$0")/../support/clitest.sh"

new_schema append
S=$s
Q=$(ident "$S")
run "$ONCEBOX" migrate --db "$ONCEBOX_TEST_DB" --schema "$S"
check "migrate for the append tests" rc_is 0

rows() {
    psql_test -c "SELECT count(*) FROM $Q.outbox ${1:-}"
}

base=(--db "$ONCEBOX_TEST_DB" --schema "$S" --aggregate-type Order
      --event-type OrderPlaced)

# One event: id and key printed, one row with them.
run "$ONCEBOX" append "${base[@]}" --aggregate-id o-1 \
    --payload '{"total_cents": 100}'
check "append exits 0" rc_is 0
read -r id key extra <"$TMP/out"
check "append prints a UUIDv7 event id" matches "${id:-}" \
    '^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$'
check "the default key is the event id" test "${key:-}" = "${id:-}"
check "a new event is not a duplicate" test -z "${extra:-}"
check "the row is there with its key" test "$(rows "WHERE id = '$id'
    AND idempotency_key = '$key' AND aggregate_id = 'o-1'
    AND payload = '{\"total_cents\": 100}'")" = 1

# Content keys: equal content collapses, reported as a duplicate.
run "$ONCEBOX" append "${base[@]}" --aggregate-id o-2 --key-mode content \
    --payload '{"b": 1, "a": 2}'
check "a content-keyed append exits 0" rc_is 0
read -r _ ckey _ <"$TMP/out"
check "a content key is 32 hex characters" matches "${ckey:-}" \
    '^[0-9a-f]{32}$'
run "$ONCEBOX" append "${base[@]}" --aggregate-id o-2 --key-mode content \
    --payload '{"a":2,"b":1}' --json
check "a duplicate still exits 0" rc_is 0
check "a duplicate is reported" out_has '"duplicate": true'
check "the duplicate carries the same key" out_has "\"$ckey\""
check "a duplicate is noted on stderr" err_has "already in the outbox"
check "a duplicate adds no row" test "$(rows "WHERE aggregate_id = 'o-2'")" = 1

# Caller key, topic and headers, payload from standard input.
printf '{"from": "stdin"}' >"$TMP/payload.json"
run_stdin "$TMP/payload.json" "$ONCEBOX" append "${base[@]}" \
    --aggregate-id o-3 --payload @- --key req-7 --topic orders.special \
    --header traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 \
    --header "x-note=a=b"
check "append with key, topic and headers exits 0" rc_is 0
check "the caller's key is used" out_has " req-7"
check "topic and headers are stored" test "$(psql_test -c "
    SELECT topic || '|' || (headers->>'x-note') || '|' ||
           (payload->>'from') FROM $Q.outbox
    WHERE idempotency_key = 'req-7'")" = "orders.special|a=b|stdin"

# Bad input: exit 2, the field named, nothing written.
before=$(rows)
bad() {
    local what=$1 needle=$2
    shift 2
    run "$ONCEBOX" append "${base[@]}" "$@"
    check "$what exits 2" rc_is 2
    check "$what is explained" err_has "$needle"
    check "$what prints no result" out_empty
}
bad "invalid JSON" "invalid JSON" --aggregate-id o-4 --payload '{"a": }'
bad "an empty aggregate id" "aggregate id is empty" --aggregate-id '' \
    --payload '{}'
bad "a long event type" "event type is 101 bytes" --aggregate-id o-4 \
    --event-type "$(printf 'e%.0s' {1..101})" --payload '{}'
bad "invalid UTF-8" "not valid UTF-8" --aggregate-id "$(printf 'o-\xff')" \
    --payload '{}'
bad "a bad topic" "topic" --aggregate-id o-4 --payload '{}' --topic 'a/b'
bad "a reserved header" "set by oncebox itself" --aggregate-id o-4 \
    --payload '{}' --header 'event-id=x'
bad "a header without =" "NAME=VALUE" --aggregate-id o-4 --payload '{}' \
    --header novalue
bad "an unknown key mode" "--key-mode" --aggregate-id o-4 --payload '{}' \
    --key-mode random
bad "a missing payload" "--payload is required" --aggregate-id o-4
bad "an unreadable payload file" "--payload @/nonexistent" \
    --aggregate-id o-4 --payload @/nonexistent
check "bad input wrote nothing" test "$(rows)" = "$before"

# Bad input is refused before connecting: no database needed.
run "$ONCEBOX" append --db "host=127.0.0.1 port=1" --aggregate-type Order \
    --aggregate-id o-5 --event-type E --payload '[1,'
check "bad input without a database exits 2" rc_is 2

# A database failure is exit 1 and never shows the password.
run "$ONCEBOX" append --db "host=127.0.0.1 port=1 password=$SECRET" \
    --aggregate-type Order --aggregate-id o-5 --event-type E --payload '{}'
check "an unreachable database exits 1" rc_is 1
check "no password in the message" no_secret

new_schema not_migrated
run "$ONCEBOX" append --db "$ONCEBOX_TEST_DB" --schema "$s" \
    --aggregate-type Order --aggregate-id o-6 --event-type E --payload '{}'
check "an unmigrated schema exits 1" rc_is 1
check "an unmigrated schema is explained" err_has "42P01"

finish
