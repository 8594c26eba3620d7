#!/usr/bin/env bash
#
# oncebox check finds each way delivery can go wrong: lost, duplicated,
# out of order within an aggregate, and phantom (rolled back or never
# committed, yet applied); and says yes only when none happened.

. "$(dirname "$0")/../support/clitest.sh"

C=$TMP/committed R=$TMP/rolled A=$TMP/applied
cat >"$C" <<'JSON'
{"key": "k1", "aggregate": "a", "seq": 1}
{"key": "k2", "aggregate": "a", "seq": 2}
{"key": "k3", "aggregate": "b", "seq": 1}
{"key": "k4", "aggregate": "a", "seq": 3}
JSON
printf 'r1\tb\t\n' >"$R"

apply() { printf '%s\n' "$@" >"$A"; }
checkit() { run "$ONCEBOX" check --committed "$C" --applied "$A" \
    --rolled-back "$R" "$@"; }
count_is() {
    /usr/bin/python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
sys.exit(0 if r[sys.argv[2]] == int(sys.argv[3]) else 1)' "$TMP/out" "$1" "$2"
}

# Every event once, in order (aggregates interleaved, TSV and JSON mixed).
apply 'k1	a	1' '{"key": "k3"}' 'k2' '{"key": "k4", "seq": 3}'
checkit
check "a clean run exits 0" rc_is 0
check "a clean run says so" out_has "exactly once: yes"
check "a clean run counts" out_has "committed 4, rolled back 1, applied 4"

checkit --json
check "--json exits 0 when clean" rc_is 0
check "--json says ok" out_has '"ok": true'
check "--json counts the applied" count_is applied 4

apply k1 k2 k3
checkit --json
check "a lost event exits 1" rc_is 1
check "a lost event is counted" count_is lost 1
check "the lost event is named" out_has '"key": "k4"'

apply k1 k2 k3 k4 k2
checkit
check "a duplicate exits 1" rc_is 1
check "a duplicate is counted" out_has "duplicated: 1"
check "the duplicate is named" out_has '{"aggregate":"a","key":"k2","seq":2}'

apply k2 k1 k3 k4
checkit --json
check "out of order exits 1" rc_is 1
check "out of order is counted once" count_is out_of_order 1
check "out of order says after what" out_has "applied after seq 2"

apply k1 k2 k3 k4 r1 x9
checkit --json
check "phantoms exit 1" rc_is 1
check "both phantoms are counted" count_is phantom 2
check "a rolled-back phantom is named" out_has "rolled back"
check "an unknown phantom is named" out_has "never committed"

apply k1 k2 k3 k4 k4 k4
checkit --examples 0
check "--examples 0 still counts" out_has "duplicated: 1"
check "--examples 0 shows no example" test "$(grep -c '^  {' "$TMP/out")" = 0

printf '{"key": 7}\n' >"$A"
checkit
check "a malformed line exits 2" rc_is 2
check "a malformed line is located" err_has "$A:1:"

run "$ONCEBOX" check --committed "$C" --applied "$TMP/none"
check "a missing file exits 2" rc_is 2
check "a missing file is named" err_has "$TMP/none"

run "$ONCEBOX" check --applied "$A"
check "a missing --committed exits 2" rc_is 2
run "$ONCEBOX" check --committed "$C" --applied "$A" --examples x
check "a bad --examples exits 2" rc_is 2

finish
