#!/usr/bin/env bash
#
# oncebox relay as an operator runs it: usage errors exit 2, --once
# publishes the backlog and exits 0, the messages read back with
# kafka-python (an independent client) carry exactly what the outbox
# holds (key, value, every header, topic), and no password or librdkafka
# secret ever reaches the output, even at debug level.

. "$(dirname "$0")/../support/clitest.sh"

: "${ONCEBOX_TEST_BROKERS:?ONCEBOX_TEST_BROKERS must hold the mock brokers}"
BROKERS=$ONCEBOX_TEST_BROKERS
PY=/usr/bin/python3
RUN_ID="$$_$(date +%s%N)"

new_schema relaycli
S=$s
Q=$(ident "$S")
run "$ONCEBOX" migrate --db "$ONCEBOX_TEST_DB" --schema "$S"
check "migrate for the relay tests" rc_is 0

# Topics of this run only: PREFIX-<aggregate type>.
PREFIX="relaycli_$RUN_ID"
relay=("$ONCEBOX" relay --db "$ONCEBOX_TEST_DB" --schema "$S"
       --brokers "$BROKERS" -X "relay.topic.template=$PREFIX-{aggregate_type}")

# Bad usage: exit 2 before anything is published.
run "${relay[@]}" --mode cdc --once
check "--mode cdc exits 2" rc_is 2
check "--mode cdc says it is not available" err_has "not available yet"
run "$ONCEBOX" relay --db "$ONCEBOX_TEST_DB" --schema "$S" --once
check "a relay without --brokers exits 2" rc_is 2
check "and says --brokers is required" err_has "--brokers is required"
run "${relay[@]}" --once -X relay.batch.size=0
check "a bad -X value exits 2" rc_is 2
check "and names the key" err_has "relay.batch.size"
run "${relay[@]}" --once -X linger.ms=5
check "an unknown -X key exits 2" rc_is 2
check "and hints at the kafka. prefix" err_has "-X kafka.linger.ms"
run "${relay[@]}" --once -X kafka.acks=1
check "acks other than all are refused" rc_is 2
check "with the reason" err_has "kafka.acks must be all"
run "${relay[@]}" --once --lanes 0
check "--lanes 0 exits 2" rc_is 2
run "${relay[@]}" --once stray
check "an operand exits 2" rc_is 2
run "${relay[@]}" --once -X relay.topic.template=has\ space
check "a template that gives no topic name exits 2" rc_is 2

# A database that cannot be reached: exit 1 at once, no password shown.
run "$ONCEBOX" relay --db "host=127.0.0.1 port=1 password=$SECRET" \
    --schema "$S" --brokers "$BROKERS" --once
check "an unreachable database exits 1" rc_is 1
check "and says so" err_has "connecting to PostgreSQL"
check "without the password" no_secret

# The events: plain, with extra headers and a traceparent, a topic of its
# own, a content key, text that needs escaping.
TP=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01
app() {
    run "$ONCEBOX" append --db "$ONCEBOX_TEST_DB" --schema "$S" "$@"
    check "append $*" rc_is 0
}
app --aggregate-type Order --aggregate-id o-1 --event-type OrderPlaced \
    --payload '{"total_cents": 4200, "items": [1, 2]}'
app --aggregate-type Order --aggregate-id o-1 --event-type OrderPaid \
    --payload '{"paid": true}' --header "traceparent=$TP" \
    --header 'tenant=ac me'
app --aggregate-type Order --aggregate-id 'o-"2"' --event-type OrderPlaced \
    --payload '{"note": "caf\u00e9 \"quoted\" \\ done"}' --key-mode content
app --aggregate-type Payment --aggregate-id p-1 --event-type Captured \
    --payload '{"amount": 1}' --topic "$PREFIX-own.topic"

# With a password in the conninfo (the test server trusts everyone) and
# librdkafka secrets set, at debug level: none of them may be printed.
run PGPASSWORD="$SECRET" "${relay[@]}" --db \
    "$ONCEBOX_TEST_DB password=$SECRET" --once -vv \
    -X "kafka.sasl.password=$SECRET" -X "kafka.ssl.key.password=$SECRET" \
    -X kafka.debug=conf,generic
check "relay --once exits 0" rc_is 0
check "it says what it published" err_has "stopped: published 4"
check "no secret in its output, even with debug logs" no_secret
check "every row is marked published" test "$(psql_test -c \
    "SELECT count(*) FROM $Q.outbox WHERE state = 'published'
     AND published_at IS NOT NULL")" = 4

run "${relay[@]}" --once
check "a second --once finds nothing to do and exits 0" rc_is 0
check "and publishes nothing" err_has "stopped: published 0"

# What the outbox says each message must be, as JSON lines.
psql_test -c "SELECT json_build_object(
    'topic', coalesce(topic, '$PREFIX-' || lower(aggregate_type)),
    'key', aggregate_id, 'value', payload::text,
    'headers', json_build_object('idempotency-key', idempotency_key,
        'event-id', id::text, 'id', id::text, 'event-type', event_type,
        'aggregate-type', aggregate_type, 'aggregate-id', aggregate_id,
        'content-type', 'application/json')::jsonb
        || coalesce(headers, '{}'::jsonb))
    FROM $Q.outbox ORDER BY seq" >"$TMP/want.jsonl"

# Reads every message of the expected topics with kafka-python and
# compares topic, key, value and the full header list.
PY_CHECK='
import json, sys, time
from kafka import KafkaConsumer, TopicPartition

brokers, want_file = sys.argv[1].split(","), sys.argv[2]
want = [json.loads(line) for line in open(want_file, encoding="utf-8")]
topics = sorted({w["topic"] for w in want})
c = KafkaConsumer(bootstrap_servers=brokers, enable_auto_commit=False,
                  auto_offset_reset="earliest")
deadline = time.monotonic() + 45
tps = []
for t in topics:
    parts = None
    while not parts and time.monotonic() < deadline:
        parts = c.partitions_for_topic(t)
        if not parts:
            time.sleep(0.2)
    if not parts:
        sys.exit("no metadata for topic %s" % t)
    tps += [TopicPartition(t, p) for p in parts]
c.assign(tps)
c.seek_to_beginning()
end = c.end_offsets(tps)
got = []
while time.monotonic() < deadline and any(
        c.position(tp) < end[tp] for tp in tps):
    for batch in c.poll(timeout_ms=500).values():
        got.extend(batch)
c.close()

def norm(topic, key, value, headers):
    return (topic, key, value, sorted(headers))

w = sorted(norm(x["topic"], x["key"], x["value"],
                [(k, v) for k, v in x["headers"].items()]) for x in want)
g = sorted(norm(m.topic, m.key.decode(), m.value.decode(),
                [(k, v.decode()) for k, v in m.headers]) for m in got)
if w != g:
    print("expected:", *w[:10], sep="\n  ")
    print("got:", *g[:10], sep="\n  ")
    sys.exit("%d messages expected, %d read" % (len(w), len(g)))
print("kafka-python read %d messages exactly as the outbox holds them"
      % len(got))
'
run "$PY" -c "$PY_CHECK" "$BROKERS" "$TMP/want.jsonl"
check "kafka-python reads each message exactly as the outbox holds it" \
    rc_is 0
check "all four of them" out_has "read 4 messages exactly"

finish
