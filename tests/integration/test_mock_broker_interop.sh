#!/usr/bin/env bash
#
# Proves that independent Kafka clients (kcat on librdkafka, kafka-python)
# work against the mock cluster the runner started, headers included, and
# that its control channel answers fault commands. Run by
# tests/run-integration.sh, which sets ONCEBOX_TEST_BROKERS and
# ONCEBOX_TEST_BROKER_DIR.

set -u -o pipefail

PY=/usr/bin/python3
WAIT=60 # seconds any one client may take

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

step() {
    echo "== $*"
}

[[ -n ${ONCEBOX_TEST_BROKERS:-} && -n ${ONCEBOX_TEST_BROKER_DIR:-} ]] ||
    fail "ONCEBOX_TEST_BROKERS and ONCEBOX_TEST_BROKER_DIR must be set" \
        "(run me through tests/run-integration.sh)"
ROOT=${OB_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
BROKERS=$ONCEBOX_TEST_BROKERS
WORK=$(mktemp -d) || fail "mktemp"
trap 'rm -rf "$WORK"' EXIT

# Unique per run, so that a broker that outlives one run cannot mix them up.
RUN_ID="$$-$(date +%s%N)"

# kcat with the cluster and a metadata wait fit for a loaded machine
# (kcat's own default is 5 s), under a bound for the whole run.
kcat_() {
    timeout "$WAIT" kcat -b "$BROKERS" -m 30 "$@"
}

# broker_expect ANSWER COMMAND...: the command must be answered exactly so.
broker_expect() {
    local want=$1 got
    shift

    got=$("$ROOT/tests/support/broker" cmd "$ONCEBOX_TEST_BROKER_DIR" "$@")
    [[ $got == "$want" ]] ||
        fail "broker cmd '$*' answered '$got', expected '$want'"
}

# broker_error COMMAND...: the command must be refused with "error: ...".
broker_error() {
    local got

    if got=$("$ROOT/tests/support/broker" cmd "$ONCEBOX_TEST_BROKER_DIR" "$@")
    then
        fail "broker cmd '$*' succeeded ('$got'), expected an error"
    fi
    [[ $got == "error: "* ]] ||
        fail "broker cmd '$*' answered '$got', expected 'error: ...'"
}

# Messages for the kcat -> kafka-python direction. Keys cannot hold the
# '|' key delimiter; values can, and hold bytes that must survive as-is.
KCAT_KEYS=(k1 k2 k3)
KCAT_VALUES=(
    "hello world"
    $'z\xc3\xb3\xc5\x82w ; , = : | \xe2\x9c\x93'
    $'tab\there and \x01\x7f\xff'
)
KCAT_HEADERS=(
    "trace-id=abc-123"
    "blob=a=b,c d"
    $'utf8=\xc5\xbc\xc3\xb3\xc5\x82\xc4\x87 \xe2\x9c\x93'
    "empty="
    "dup=1"
    "dup=2"
)

kcat_produce_with_headers() {
    local topic=$1 i hargs=()

    for i in "${!KCAT_HEADERS[@]}"; do
        hargs+=(-H "${KCAT_HEADERS[$i]}")
    done
    for i in "${!KCAT_KEYS[@]}"; do
        printf '%s|%s\n' "${KCAT_KEYS[$i]}" "${KCAT_VALUES[$i]}"
    done >"$WORK/kcat.in"
    kcat_ -P -t "$topic" -K '|' "${hargs[@]}" -l "$WORK/kcat.in" \
        2>"$WORK/kcat.err" ||
        fail "kcat could not produce to $topic: $(cat "$WORK/kcat.err")"
}

# Consumes all messages of a topic with kafka-python (no group) and checks
# each key, value and header byte for byte. argv: brokers topic
# header-count headers... keys-and-values...
PY_CONSUME_CHECK='
import os, sys, time
from kafka import KafkaConsumer, TopicPartition

brokers, topic, nh = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3])
raw = [os.fsencode(a) for a in sys.argv[4:]]
headers = [(h.split(b"=", 1)[0].decode(), h.split(b"=", 1)[1])
           for h in raw[:nh]]
want = dict(zip(raw[nh::2], raw[nh + 1::2]))

c = KafkaConsumer(bootstrap_servers=brokers, auto_offset_reset="earliest",
                  enable_auto_commit=False, consumer_timeout_ms=1000)
deadline = time.monotonic() + 60
parts = None
while not parts and time.monotonic() < deadline:
    parts = c.partitions_for_topic(topic)
    if not parts:
        time.sleep(0.2)
if not parts:
    sys.exit("no metadata for topic %s" % topic)
c.assign([TopicPartition(topic, p) for p in parts])
got = []
while len(got) < len(want) and time.monotonic() < deadline:
    for batch in c.poll(timeout_ms=500).values():
        got.extend(batch)
c.close()

errors = []
if len(got) != len(want):
    errors.append("got %d messages, expected %d" % (len(got), len(want)))
for m in got:
    if m.key not in want:
        errors.append("unexpected key %r" % m.key)
        continue
    if m.value != want[m.key]:
        errors.append("key %r: value %r, expected %r"
                      % (m.key, m.value, want[m.key]))
    if list(m.headers) != headers:
        errors.append("key %r: headers %r, expected %r"
                      % (m.key, m.headers, headers))
if errors:
    sys.exit("\n".join(errors))
print("kafka-python read %d messages, keys, values and headers exact"
      % len(got))
'

check_kcat_to_python() {
    local topic=interop-kcat-$RUN_ID i args=()

    step "kcat produces with headers to $topic, kafka-python checks"
    kcat_produce_with_headers "$topic"
    for i in "${!KCAT_KEYS[@]}"; do
        args+=("${KCAT_KEYS[$i]}" "${KCAT_VALUES[$i]}")
    done
    timeout "$WAIT" "$PY" -c "$PY_CONSUME_CHECK" "$BROKERS" "$topic" \
        "${#KCAT_HEADERS[@]}" "${KCAT_HEADERS[@]}" "${args[@]}" ||
        fail "kafka-python did not read back what kcat produced to $topic"
}

# Produces with kafka-python and writes the exact bytes kcat must print
# for -f '%k|%s|%h\n' (headers as name=value joined by commas). kcat
# prints header values as C strings, so they hold no NUL byte.
# argv: brokers topic expected-file
PY_PRODUCE='
import sys
from kafka import KafkaProducer

brokers, topic, expected = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
msgs = [
    (b"p1", b"plain value", [("h1", b"one")]),
    (b"p2", b"nul\x00 and \xff\x01 bytes",
     [("bin", b"\x01\x7f\xff"),
      ("utf8-\u00fc", "\u017c\u00f3\u0142\u0107 \u2713".encode())]),
    (b"p3", b"no headers", []),
    (b"p4", b"empty header", [("e", b""), ("dup", b"1"), ("dup", b"2")]),
]
p = KafkaProducer(bootstrap_servers=brokers, acks="all", retries=5)
with open(expected, "wb") as f:
    for key, value, headers in msgs:
        p.send(topic, key=key, value=value, headers=headers,
               partition=0).get(timeout=60)
        hs = b",".join(n.encode() + b"=" + v for n, v in headers)
        f.write(key + b"|" + value + b"|" + hs + b"\n")
p.close()
print("kafka-python produced %d messages" % len(msgs))
'

check_python_to_kcat() {
    local topic=interop-py-$RUN_ID

    step "kafka-python produces with headers to $topic, kcat checks"
    broker_expect ok topic create "$topic" 1
    timeout "$WAIT" "$PY" -c "$PY_PRODUCE" "$BROKERS" "$topic" \
        "$WORK/py.expected" || fail "kafka-python could not produce to $topic"
    kcat_ -C -t "$topic" -p 0 -o beginning -c 4 -e -q -f '%k|%s|%h\n' \
        >"$WORK/kcat.out" 2>"$WORK/kcat.err" ||
        fail "kcat could not consume $topic: $(cat "$WORK/kcat.err")"
    if ! cmp -s "$WORK/py.expected" "$WORK/kcat.out"; then
        echo "expected:" >&2
        od -c "$WORK/py.expected" >&2
        echo "kcat printed:" >&2
        od -c "$WORK/kcat.out" >&2
        fail "kcat did not print what kafka-python produced to $topic"
    fi
    echo "kcat read 4 messages, keys, values and headers exact"
}

# One Produce request per call: a single message, acks=all, no retries,
# so the outcome is that of exactly one request. Prints ok or the error.
PY_PRODUCE_ONCE='
import sys
from kafka import KafkaProducer

brokers, topic, value = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
p = KafkaProducer(bootstrap_servers=brokers, acks="all", retries=0,
                  max_block_ms=60000)
p.partitions_for(topic)  # metadata first, so Produce is the one request
try:
    p.send(topic, value=value.encode(), partition=0).get(timeout=60)
    print("ok")
except Exception as e:
    print(type(e).__name__)
p.close()
'

produce_once() {
    timeout "$WAIT" "$PY" -c "$PY_PRODUCE_ONCE" "$BROKERS" "$1" "$2" ||
        fail "kafka-python producer crashed on $1"
}

# Two single requests fail on the injected errors, kcat's producer
# retries through the third, and then the error stack is empty again:
# with any other count one of the single requests gives it away.
check_request_errors() {
    local topic=interop-fault-$RUN_ID got i

    step "request-error Produce 3 NOT_LEADER_FOR_PARTITION on $topic"
    broker_expect ok topic create "$topic" 1
    broker_expect ok request-error Produce 3 NOT_LEADER_FOR_PARTITION

    for i in 1 2; do
        got=$(produce_once "$topic" refused)
        [[ $got == NotLeaderForPartitionError ]] ||
            fail "Produce $i without retries gave '$got'," \
                "expected NotLeaderForPartitionError from the injected error"
    done

    # librdkafka's msg debug log is the one place that shows the retry.
    echo "after-retries" |
        kcat_ -P -t "$topic" -p 0 -X retry.backoff.ms=10 -d msg \
            2>"$WORK/kcat.err" ||
        fail "kcat did not deliver through the third injected error:" \
            "$(grep -v '|7|' "$WORK/kcat.err")"
    got=$(grep -c 'encountered error: Broker: Not leader for partition' \
        "$WORK/kcat.err")
    [[ $got == 1 ]] ||
        fail "kcat's producer met NOT_LEADER_FOR_PARTITION $got times," \
            "expected once (the third injected error)"

    got=$(produce_once "$topic" clean)
    [[ $got == ok ]] ||
        fail "a Produce after the 3 errors were used up gave '$got'"

    kcat_ -C -t "$topic" -p 0 -o beginning -c 3 -e -q -f '%s\n' \
        >"$WORK/fault.out" 2>"$WORK/kcat.err" ||
        fail "kcat could not consume $topic: $(cat "$WORK/kcat.err")"
    printf 'after-retries\nclean\n' >"$WORK/fault.expected"
    cmp -s "$WORK/fault.expected" "$WORK/fault.out" ||
        fail "$topic holds '$(tr '\n' ' ' <"$WORK/fault.out")'," \
            "expected '$(tr '\n' ' ' <"$WORK/fault.expected")'"
    broker_expect ok clear-errors Produce
    echo "injected errors hit exactly 3 requests; delivery went through"
}

check_broker_down_up() {
    local topic=interop-updown-$RUN_ID

    step "broker down 1 / broker up 1"
    broker_expect ok broker down 1
    broker_expect ok broker up 1
    echo "still-there" | kcat_ -P -t "$topic" 2>"$WORK/kcat.err" ||
        fail "kcat could not produce after broker up: $(cat "$WORK/kcat.err")"
    kcat_ -C -t "$topic" -o beginning -c 1 -q -f '%s\n' \
        >"$WORK/updown.out" 2>"$WORK/kcat.err" ||
        fail "kcat could not consume after broker up: $(cat "$WORK/kcat.err")"
    [[ $(cat "$WORK/updown.out") == still-there ]] ||
        fail "read '$(cat "$WORK/updown.out")' after broker up," \
            "expected 'still-there'"
    echo "cluster serves clients again after broker up"
}

check_bad_commands() {
    step "garbage commands are refused, the broker keeps answering"
    broker_error florp --zz
    broker_error $'\x01\xff\xfe'
    broker_error broker down 99
    broker_error request-error NoSuchApi 1 NOT_LEADER_FOR_PARTITION
    broker_error request-error Produce 1 NO_SUCH_ERROR
    broker_error topic create "bad/name" 1
    broker_expect ok ping
    echo "bad commands got error:, ping still ok"
}

check_kcat_to_python
check_python_to_kcat
check_request_errors
check_broker_down_up
check_bad_commands
echo "mock broker interop: all checks passed"
