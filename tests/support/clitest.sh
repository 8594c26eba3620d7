# Shared by the shell tests of the oncebox command; source it. Needs
# OB_BUILD (the build dir) and ONCEBOX_TEST_DB (a libpq conninfo), which
# tests/run-integration.sh exports. Provides:
#
#   run [NAME=VALUE]... CMD ARGS...   runs CMD with no database variables
#                                     but the given ones; sets RC, stdout
#                                     in $TMP/out, stderr in $TMP/err
#   check WHAT PREDICATE ARGS...      counts a check, reports a failure
#   finish                            prints the tally, exits 0 or 1
#   new_schema PREFIX                 sets s to a fresh schema name that
#                                     is dropped on exit
#   psql_test ARGS...                 psql on the test database
#   ident NAME                        NAME as a quoted SQL identifier
#
# and the predicates rc_is, out_is, out_has, err_has, err_empty,
# out_empty, no_secret ($SECRET in neither stream), matches TEXT REGEX.

set -u -o pipefail

: "${OB_BUILD:?OB_BUILD must name the build directory}"
: "${ONCEBOX_TEST_DB:?ONCEBOX_TEST_DB must hold a libpq conninfo}"

ONCEBOX=$OB_BUILD/oncebox
SECRET=s3cret
SCHEMAS=()
CHECKS=0
FAILED=0

if [[ ! -x $ONCEBOX ]]; then
    echo "FAIL: $ONCEBOX is missing; build it first"
    exit 1
fi
TMP=$(mktemp -d)

psql_test() {
    psql "$ONCEBOX_TEST_DB" -X -q -At -v ON_ERROR_STOP=1 "$@"
}

ident() {
    local s=${1//\"/\"\"}
    printf '"%s"' "$s"
}

clitest_cleanup() {
    local s

    for s in "${SCHEMAS[@]}"; do
        psql_test -c "SET client_min_messages = warning" \
            -c "DROP SCHEMA IF EXISTS $(ident "$s") CASCADE" ||
            echo "note: could not drop schema $s" >&2
    done
    rm -rf "$TMP"
}
trap clitest_cleanup EXIT

# Not in a subshell: the list of names to drop must grow here.
new_schema() {
    s="$1_$$_${#SCHEMAS[@]}_$RANDOM"
    SCHEMAS+=("$s")
}

run() {
    local envs=()

    while [[ $# -gt 0 && $1 == *=* ]]; do
        envs+=("$1")
        shift
    done
    env -u ONCEBOX_DB -u ONCEBOX_SCHEMA -u PGHOST -u PGHOSTADDR -u PGPORT \
        -u PGUSER -u PGDATABASE -u PGPASSWORD -u PGSERVICE -u PGOPTIONS \
        -u PGCONNECT_TIMEOUT "${envs[@]}" \
        timeout 60 "$@" >"$TMP/out" 2>"$TMP/err" <"${RUN_STDIN:-/dev/null}"
    RC=$?
}

# Like run, with standard input from the file $1.
run_stdin() {
    local RUN_STDIN=$1
    shift
    run "$@"
}

check() {
    local what=$1
    shift

    CHECKS=$((CHECKS + 1))
    if ! "$@"; then
        FAILED=$((FAILED + 1))
        echo "FAIL: $what"
        echo "  exit status: $RC"
        sed 's/^/  stdout: /' "$TMP/out"
        sed 's/^/  stderr: /' "$TMP/err"
    fi
}

finish() {
    echo "$CHECKS checks, $FAILED failed"
    [[ $FAILED -eq 0 && $CHECKS -gt 0 ]]
    exit
}

rc_is() { [[ $RC -eq $1 ]]; }
out_is() { [[ $(cat "$TMP/out") == "$1" ]]; }
out_has() { grep -qF -- "$1" "$TMP/out"; }
err_has() { grep -qF -- "$1" "$TMP/err"; }
err_empty() { [[ ! -s $TMP/err ]]; }
out_empty() { [[ ! -s $TMP/out ]]; }
no_secret() { ! grep -qF -- "$SECRET" "$TMP/out" "$TMP/err"; }
matches() { [[ $1 =~ $2 ]]; }
