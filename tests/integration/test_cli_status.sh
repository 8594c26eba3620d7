#!/usr/bin/env bash
#
# oncebox status as an operator runs it: the figures of a schema whose
# rows were appended with `oncebox append` and moved to other states with
# SQL (as a relay would), the lane owners as sessions holding the relay's
# advisory locks, --json read back with Python, and exit 1 / 2 with clear
# messages and no password. Needs OB_BUILD and ONCEBOX_TEST_DB
# (tests/run-integration.sh provides both).

. "$(dirname "$0")/../support/clitest.sh"

PY=/usr/bin/python3

new_schema status
S=$s
SQ=$(ident "$S")
run "$ONCEBOX" migrate --db "$ONCEBOX_TEST_DB" --schema "$S"
check "migrate exits 0" rc_is 0

for i in 1 2 3 4 5 6; do
    run "$ONCEBOX" append --db "$ONCEBOX_TEST_DB" --schema "$S" \
        --aggregate-type Order --aggregate-id "o-$i" --event-type Placed \
        --payload "{\"n\": $i}"
    check "append $i exits 0" rc_is 0
done

# 2 pending (one aged an hour), 1 in retry and not due, 1 parked,
# 2 published.
psql_test -v ON_ERROR_STOP=1 >/dev/null <<SQL
UPDATE $SQ.outbox SET created_at = now() - interval '1 hour'
    WHERE aggregate_id = 'o-1';
UPDATE $SQ.outbox SET retry_count = 3,
    next_attempt_at = now() + interval '1 hour' WHERE aggregate_id = 'o-3';
UPDATE $SQ.outbox SET state = 'parked', retry_count = 5,
    last_error = 'too large' WHERE aggregate_id = 'o-4';
UPDATE $SQ.outbox SET state = 'published',
    published_at = now() - interval '3 days'
    WHERE aggregate_id IN ('o-5', 'o-6');
INSERT INTO $SQ.inbox (namespace, idempotency_key)
    VALUES ('billing', 'k1'), ('billing', 'k2'), ('audit', 'k3');
SQL

run "$ONCEBOX" status --db "$ONCEBOX_TEST_DB" --schema "$S"
check "status exits 0" rc_is 0
check "status is silent on stderr" err_empty
check "status names the schema" out_has "schema $SQ at "
check "status counts pending, due and retrying rows" \
    out_has "  pending    3 (due 2, retrying 1), oldest 60."
check "status counts parked rows" \
    out_has "  parked     1 (see 'oncebox dead list')"
check "status counts published rows" \
    out_has "  published  2 waiting for the purge, oldest 3.0 d"
check "status shows the default lane count" \
    out_has "lanes: 16 groups (default: no relay has run), 0 owned; 0 relays"
check "status shows groups without a relay" \
    out_has "  without a relay: groups 0-15 (pending 3)"
check "status sizes the inbox" out_has "  billing  2 keys, oldest "
check "status lists inbox namespaces in order" \
    test "$(grep -n 'keys, oldest' "$TMP/out" | head -1 | cut -d' ' -f3)" \
    = audit
check "status has no slots to show" out_has "replication slots: none"

run "$ONCEBOX" status --db "$ONCEBOX_TEST_DB" --schema "$S" --json
check "status --json exits 0" rc_is 0
check "status --json prints one line" test "$(wc -l <"$TMP/out")" -eq 1
check "status --json holds the exact figures" "$PY" -c '
import json, sys
d = json.load(open(sys.argv[1]))
o = d["outbox"]
assert d["schema"] == sys.argv[2], d["schema"]
assert (o["pending"], o["due"], o["retrying"], o["parked"],
        o["published"]) == (3, 2, 1, 1, 2), o
assert 3600 <= o["oldest_pending_age_s"] < 4200, o
assert 3 * 86400 <= o["oldest_published_age_s"] < 3 * 86400 + 600, o
l = d["lanes"]
assert (l["groups"], l["recorded"], l["owned"], l["relays"]) == \
    (16, False, 0, 0), l
assert len(l["by_group"]) == 16
assert sum(g["pending"] for g in l["by_group"]) == 3
assert all(g["owner"] is None for g in l["by_group"])
assert [(n["namespace"], n["keys"]) for n in d["inbox"]] == \
    [("audit", 1), ("billing", 2)], d["inbox"]
assert d["replication_slots"] == []
assert d["taken_at"].endswith("Z")
' "$TMP/out" "$S"

# A relay's control session, kept open through a FIFO: closing the FIFO
# ends psql and with it the session and its locks.
mkfifo "$TMP/relay.in"
PGAPPNAME="oncebox relay clihost/4711" psql "$ONCEBOX_TEST_DB" -X -q \
    <"$TMP/relay.in" >/dev/null 2>"$TMP/relay.err" &
RELAY_PID=$!
exec 3>"$TMP/relay.in"
for g in 2 3 4 9; do
    echo "SELECT pg_advisory_lock(hashtext('oncebox.relay:' || " \
        "\$q\$$S\$q\$), $g);" >&3
done
echo "SELECT pg_advisory_lock_shared(hashtext('oncebox.relay.member:' ||" \
    "\$q\$$S\$q\$), 0);" >&3

owned() {
    psql_test -v s="$S" <<<"SELECT count(*) FROM pg_locks
        WHERE locktype = 'advisory' AND granted AND objsubid = 2
          AND classid IN (hashtext('oncebox.relay:' || :'s')::oid,
                          hashtext('oncebox.relay.member:' || :'s')::oid)"
}
deadline=$((SECONDS + 60))
while [[ $(owned) -lt 5 && $SECONDS -lt $deadline ]]; do sleep 0.1; done
check "the relay session holds its groups and membership" \
    test "$(owned)" -eq 5
relay_backend=$(psql_test -c "SELECT pid FROM pg_stat_activity
    WHERE application_name = 'oncebox relay clihost/4711'")

run "$ONCEBOX" status --db "$ONCEBOX_TEST_DB" --schema "$S"
check "status with owners exits 0" rc_is 0
check "status counts the owned groups and the relays" \
    out_has "16 groups (default: no relay has run), 4 owned; 1 relay running"
check "status names the relay session" \
    out_has "  pid $relay_backend  oncebox relay clihost/4711  127.0.0.1  since"
check "status lists the relay's groups as ranges" \
    out_has "    groups 2-4,9 (pending "
check "status lists the other groups" \
    out_has "  without a relay: groups 0-1,5-8,10-15 (pending "

run "$ONCEBOX" status --db "$ONCEBOX_TEST_DB" --schema "$S" --json
check "status --json names the owners" "$PY" -c '
import json, sys
d = json.load(open(sys.argv[1]))
owners = {g["group"]: g["owner"] for g in d["lanes"]["by_group"]
          if g["owner"] is not None}
assert sorted(owners) == [2, 3, 4, 9], owners
for o in owners.values():
    assert o["pid"] == int(sys.argv[2]), o
    assert o["application_name"] == "oncebox relay clihost/4711", o
    assert o["client_addr"] == "127.0.0.1", o
    assert o["since"].endswith("Z"), o
assert d["lanes"]["owned"] == 4 and d["lanes"]["relays"] == 1, d["lanes"]
' "$TMP/out" "$relay_backend"

exec 3>&-
wait "$RELAY_PID"
deadline=$((SECONDS + 60))
while [[ $(owned) -gt 0 && $SECONDS -lt $deadline ]]; do sleep 0.1; done
run "$ONCEBOX" status --db "$ONCEBOX_TEST_DB" --schema "$S"
check "a closed relay session owns nothing" \
    out_has "16 groups (default: no relay has run), 0 owned; 0 relays"

# Usage errors exit 2 before any connection.
run "$ONCEBOX" status --db "host=127.0.0.1 port=1" --frob
check "an unknown option exits 2" rc_is 2
check "an unknown option is named" err_has "unknown option '--frob'"
run "$ONCEBOX" status --db "host=127.0.0.1 port=1" extra
check "an operand exits 2" rc_is 2
check "an operand is named" err_has "unexpected argument 'extra'"

# Failures exit 1, and no password shows.
run "$ONCEBOX" status --db "host=127.0.0.1 port=1 password=$SECRET"
check "an unreachable database exits 1" rc_is 1
check "an unreachable database is reported" err_has "cannot connect"
check "no password in the messages" no_secret

new_schema never_migrated
run "$ONCEBOX" status --db "$ONCEBOX_TEST_DB" --schema "$s"
check "an unmigrated schema exits 1" rc_is 1
check "an unmigrated schema is explained" err_has "migrate it first"
check "an unmigrated schema prints nothing on stdout" out_empty

finish
