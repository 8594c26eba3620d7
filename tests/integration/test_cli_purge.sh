#!/usr/bin/env bash
#
# oncebox purge as cron would run it: exactly the rows past their
# retention go, per table, in batches; pending and parked rows stay
# however old; durations and batch sizes are checked before anything is
# deleted (exit 2). Needs OB_BUILD and ONCEBOX_TEST_DB
# (tests/run-integration.sh provides both).

. "$(dirname "$0")/../support/clitest.sh"

PY=/usr/bin/python3

new_schema purge
S=$s
SQ=$(ident "$S")
run "$ONCEBOX" migrate --db "$ONCEBOX_TEST_DB" --schema "$S"
check "migrate exits 0" rc_is 0

count() {
    psql_test -c "SELECT count(*) FROM $SQ.$1 WHERE ${2:-true}"
}

# Outbox: 5 published 8 days ago, 3 published 1 day ago, 2 pending and 2
# parked appended 40 days ago, 1 fresh pending row. Inbox: 6 keys 8 days
# old, 4 keys 6 days old, over 3 namespaces. Dead letters: 40, 20 and 1
# day old.
psql_test >/dev/null <<SQL
INSERT INTO $SQ.outbox (id, aggregate_type, aggregate_id, event_type,
                        payload, idempotency_key)
    SELECT gen_random_uuid(), 'Order', 'o-' || i, 'E', '{}', 'k' || i
    FROM generate_series(1, 13) i;
UPDATE $SQ.outbox SET state = 'published',
    published_at = now() - interval '8 days'
    WHERE aggregate_id IN ('o-1', 'o-2', 'o-3', 'o-4', 'o-5');
UPDATE $SQ.outbox SET state = 'published',
    published_at = now() - interval '1 day'
    WHERE aggregate_id IN ('o-6', 'o-7', 'o-8');
UPDATE $SQ.outbox SET created_at = now() - interval '40 days'
    WHERE aggregate_id IN ('o-9', 'o-10', 'o-11', 'o-12');
UPDATE $SQ.outbox SET state = 'parked', last_error = 'gave up'
    WHERE aggregate_id IN ('o-11', 'o-12');
INSERT INTO $SQ.inbox (namespace, idempotency_key, claimed_at)
    SELECT 'ns' || (i % 3), 'old' || i, now() - interval '8 days'
    FROM generate_series(1, 6) i;
INSERT INTO $SQ.inbox (namespace, idempotency_key, claimed_at)
    SELECT 'ns' || (i % 3), 'new' || i, now() - interval '6 days'
    FROM generate_series(1, 4) i;
INSERT INTO $SQ.dead_letters (consumer_group, topic, partition, "offset",
                              reason, created_at)
    VALUES ('g1', 't', 0, 1, 'bad', now() - interval '40 days'),
           ('g2', 't', 0, 2, 'bad', now() - interval '20 days'),
           ('g1', 't', 0, 3, 'bad', now() - interval '1 day');
SQL

# Bad input first: nothing may go.
NODB="host=127.0.0.1 port=1"
bad() {
    local what=$1 msg=$2
    shift 2
    run "$ONCEBOX" purge --db "$NODB" "$@"
    check "$what exits 2" rc_is 2
    check "$what is explained" err_has "$msg"
}
for d in 7 7x d -1d 1.5d 7d- "" 3651d 99999999999999999999s; do
    bad "the duration '$d'" "--older-than takes a duration" \
        --older-than "$d"
done
bad "a batch of 0" "--batch takes a number from 1 to 100000" --batch 0
bad "a batch that is no number" "--batch takes a number" --batch many
bad "an unknown option" "unknown option '--everything'" --everything
bad "an operand" "unexpected argument 'now'" now
check "bad input removed nothing" test "$(count outbox)" -eq 13

run "$ONCEBOX" purge --db "$ONCEBOX_TEST_DB" --schema "$S" --outbox \
    --batch 2 -v
check "purge --outbox exits 0" rc_is 0
check "purge --outbox reports the outbox only" \
    out_is "outbox: 5 published rows removed"
check "purge -v logs the cutoff" err_has "outbox: 5 rows older than "
check "the rows published a day ago stay" \
    test "$(count outbox "state = 'published'")" -eq 3
check "old pending rows stay" test "$(count outbox "state = 'pending'")" -eq 3
check "old parked rows stay" test "$(count outbox "state = 'parked'")" -eq 2
check "the inbox is untouched" test "$(count inbox)" -eq 10
check "the dead letters are untouched" test "$(count dead_letters)" -eq 3

run "$ONCEBOX" purge --db "$ONCEBOX_TEST_DB" --schema "$S" --outbox \
    --older-than 12h
check "purge --older-than 12h exits 0" rc_is 0
check "purge --older-than 12h takes the day-old rows" \
    out_is "outbox: 3 published rows removed"
check "only pending and parked rows are left" \
    test "$(count outbox "state IN ('pending', 'parked')")" -eq 5
check "nothing else is left" test "$(count outbox)" -eq 5

run "$ONCEBOX" purge --db "$ONCEBOX_TEST_DB" --schema "$S" --json
check "purge of everything exits 0" rc_is 0
check "purge --json reports each table" "$PY" -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert (d["outbox"], d["inbox"], d["dead_letters"]) == (0, 6, 1), d
assert d["statements"] >= 1 + 3 + 2, d
' "$TMP/out"
check "the recent inbox keys stay" test "$(count inbox)" -eq 4
check "no old inbox key stays" \
    test "$(count inbox "idempotency_key LIKE 'old%'")" -eq 0
check "the recent dead letters stay" test "$(count dead_letters)" -eq 2

run "$ONCEBOX" purge --db "$ONCEBOX_TEST_DB" --schema "$S" --inbox \
    --dead-letters --older-than 1h
check "purge --inbox --dead-letters exits 0" rc_is 0
check "purge reports the chosen tables only" out_is "inbox: 4 keys removed
dead letters: 2 removed"
check "still only pending and parked rows in the outbox" \
    test "$(count outbox)" -eq 5

run "$ONCEBOX" purge --db "host=127.0.0.1 port=1 password=$SECRET"
check "an unreachable database exits 1" rc_is 1
check "no password in the messages" no_secret

new_schema never_migrated
run "$ONCEBOX" purge --db "$ONCEBOX_TEST_DB" --schema "$s"
check "an unmigrated schema exits 1" rc_is 1
check "an unmigrated schema is explained" err_has "migrate it first"

finish
