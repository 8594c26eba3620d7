#!/usr/bin/env bash
#
# oncebox dead list and dead replay as an operator runs them: rows parked
# with SQL (as the relay parks them) are listed oldest first with their
# last error, --limit and --json work, replay by id and --all make them
# pending again, and bad usage exits 2 before any connection. Needs
# OB_BUILD and ONCEBOX_TEST_DB (tests/run-integration.sh provides both).

. "$(dirname "$0")/../support/clitest.sh"

PY=/usr/bin/python3

new_schema dead
S=$s
SQ=$(ident "$S")
run "$ONCEBOX" migrate --db "$ONCEBOX_TEST_DB" --schema "$S"
check "migrate exits 0" rc_is 0

ids=()
for i in 1 2 3 4; do
    run "$ONCEBOX" append --db "$ONCEBOX_TEST_DB" --schema "$S" \
        --aggregate-type Payment --aggregate-id "p-$i" --event-type Captured \
        --payload "{\"n\": $i}"
    check "append $i exits 0" rc_is 0
    ids+=("$(cut -d' ' -f1 "$TMP/out")")
done

state_of() {
    psql_test -c "SELECT state || '/' || retry_count FROM $SQ.outbox
        WHERE id = '$1'"
}

# p-2 and p-4 parked; p-2's error spans two lines, p-4 has a topic.
psql_test >/dev/null <<SQL
UPDATE $SQ.outbox SET state = 'parked', retry_count = 5,
    last_error = E'Broker: Message size too large\nsecond line'
    WHERE aggregate_id = 'p-2';
UPDATE $SQ.outbox SET state = 'parked', retry_count = 1, topic = 'payments',
    last_error = 'Broker: Unknown topic or partition'
    WHERE aggregate_id = 'p-4';
SQL

run "$ONCEBOX" dead list --db "$ONCEBOX_TEST_DB" --schema "$S"
check "dead list exits 0" rc_is 0
check "dead list is silent on stderr" err_empty
check "dead list shows the oldest first" \
    test "$(head -1 "$TMP/out")" = "${ids[1]}  Payment/p-2 Captured"
check "dead list shows attempts and the routed topic" \
    out_has "    attempts 5, appended 20"
check "dead list shows a row's own topic" out_has ", topic payments"
check "dead list shows a routed row as such" out_has ", topic (routed)"
check "dead list keeps a multi-line error on one line" \
    out_has "    last error: Broker: Message size too large?second line"
check "dead list shows the second row" out_has "${ids[3]}  Payment/p-4 Captured"
check "dead list shows no footer when all fit" \
    test "$(grep -c 'shown' "$TMP/out")" -eq 0

run "$ONCEBOX" dead list --db "$ONCEBOX_TEST_DB" --schema "$S" --limit 1
check "dead list --limit exits 0" rc_is 0
check "dead list --limit shows one row" \
    test "$(grep -c '^[0-9a-f]\{8\}-' "$TMP/out")" -eq 1
check "dead list --limit says what it left out" \
    out_has "1 of 2 parked rows shown (--limit)"

run "$ONCEBOX" dead list --db "$ONCEBOX_TEST_DB" --schema "$S" --json
check "dead list --json exits 0" rc_is 0
check "dead list --json holds every field" "$PY" -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert d["total"] == 2, d
r = d["rows"]
assert [x["id"] for x in r] == [sys.argv[2], sys.argv[3]], r
assert r[0]["aggregate_type"] == "Payment" and r[0]["aggregate_id"] == "p-2"
assert r[0]["event_type"] == "Captured" and r[0]["retry_count"] == 5
assert r[0]["last_error"] == "Broker: Message size too large\nsecond line"
assert r[0]["topic"] is None and r[1]["topic"] == "payments"
assert r[0]["created_at"].endswith("Z")
' "$TMP/out" "${ids[1]}" "${ids[3]}"

run "$ONCEBOX" dead replay --db "$ONCEBOX_TEST_DB" --schema "$S" \
    --id "${ids[1]}"
check "dead replay --id exits 0" rc_is 0
check "dead replay --id says what it did" out_is "replayed 1 row"
check "the replayed row is pending with a fresh count" \
    test "$(state_of "${ids[1]}")" = "pending/0"
check "the other parked row stays parked" \
    test "$(state_of "${ids[3]}")" = "parked/1"

run "$ONCEBOX" dead replay --db "$ONCEBOX_TEST_DB" --schema "$S" \
    --id "${ids[1]}"
check "replaying a row that is not parked exits 1" rc_is 1
check "replaying a row that is not parked is explained" \
    err_has "no parked row has the id ${ids[1]}"

run "$ONCEBOX" dead replay --db "$ONCEBOX_TEST_DB" --schema "$S" --all
check "dead replay --all exits 0" rc_is 0
check "dead replay --all counts" out_is "replayed 1 row"
check "no row is parked any more" test "$(psql_test -c \
    "SELECT count(*) FROM $SQ.outbox WHERE state = 'parked'")" -eq 0

run "$ONCEBOX" dead list --db "$ONCEBOX_TEST_DB" --schema "$S"
check "an empty list says so" out_is "no parked rows"
run "$ONCEBOX" dead replay --db "$ONCEBOX_TEST_DB" --schema "$S" --all
check "replaying nothing exits 0" rc_is 0
check "replaying nothing says so" out_is "replayed 0 rows"

# Bad usage exits 2 before connecting (the port is closed).
NODB="host=127.0.0.1 port=1"
usage() {
    local what=$1 msg=$2
    shift 2
    run "$ONCEBOX" dead --db "$NODB" "$@"
    check "$what exits 2" rc_is 2
    check "$what is explained" err_has "$msg"
}
usage "no action" "say 'list' or 'replay'"
usage "an unknown action" "unknown action 'show'" show
usage "two actions" "unexpected argument 'replay'" list replay
usage "replay without a choice" "replay takes --id ID or --all" replay
usage "replay with both choices" "replay takes --id ID or --all" \
    replay --all --id "${ids[0]}"
usage "a malformed id" "is not an event id" replay --id "${ids[0]}x"
usage "a short id" "is not an event id" replay --id 1234
usage "a limit of 0" "--limit takes a number" list --limit 0
usage "a limit that is no number" "--limit takes a number" list --limit ten
usage "--all on list" "--id and --all belong to 'replay'" list --all
usage "--json on replay" "--limit and --json belong to 'list'" \
    replay --all --json

run "$ONCEBOX" dead list --db "host=127.0.0.1 port=1 password=$SECRET"
check "an unreachable database exits 1" rc_is 1
check "no password in the messages" no_secret

new_schema never_migrated
run "$ONCEBOX" dead list --db "$ONCEBOX_TEST_DB" --schema "$s"
check "an unmigrated schema exits 1" rc_is 1
check "an unmigrated schema is explained" err_has "migrate it first"

finish
