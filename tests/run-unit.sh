#!/usr/bin/env bash
#
# run-unit.sh BUILD_DIR: runs every executable BUILD_DIR/tests/unit/test_*,
# each under a timeout, from the repository root, with its output in a
# log that is printed in full when the test fails (a passing test shows
# its last line). Ends with "unit: N passed, M failed"; exits 1 if a test
# failed or none ran.
#
# Environment:
#   ONLY=TEXT            run only the tests whose name contains TEXT
#   OB_TEST_WRAPPER=CMD  run each test binary as `CMD binary` (valgrind...)
#   OB_TEST_TIMEOUT=S    seconds each test may take (default 600)
# Each test gets OB_BUILD and OB_ROOT (absolute build and source dirs).
#
# The ob_* functions are also the runner of run-integration.sh, which
# sources this file; ob_unit_main runs only when this file is executed.

set -u -o pipefail

OB_TEST_TIMEOUT=${OB_TEST_TIMEOUT:-600}
OB_KIND=unit
OB_PASSED=0
OB_FAILED=0
OB_CHILD=
OB_RUN_DIR=
OB_WRAPPER=()

ob_die() {
    echo "$OB_KIND: $*" >&2
    exit 1
}

# The test runs in its own process group under timeout, so a Ctrl-C only
# reaches this shell; timeout passes the SIGTERM on to the whole group
# and SIGKILLs it 10 s later.
ob_on_signal() {
    trap '' INT TERM
    echo "$OB_KIND: interrupted" >&2
    if [[ -n $OB_CHILD ]]; then
        kill -TERM "$OB_CHILD" 2>/dev/null
        wait "$OB_CHILD"
    fi
    exit 130
}

ob_on_exit() {
    if declare -F ob_stop_services >/dev/null; then
        ob_stop_services
    fi
    if [[ -n $OB_RUN_DIR ]]; then
        rm -rf "$OB_RUN_DIR"
    fi
}

# ob_setup KIND BUILD_DIR: exports OB_ROOT and OB_BUILD, makes the run dir.
ob_setup() {
    OB_KIND=$1
    if [[ $# -ne 2 || ! -d $2 ]]; then
        echo "usage: run-$OB_KIND.sh BUILD_DIR" >&2
        exit 2
    fi
    OB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) ||
        ob_die "cannot find the repository root"
    OB_BUILD=$(cd "$2" && pwd) || ob_die "cannot enter $2"
    export OB_ROOT OB_BUILD
    read -r -a OB_WRAPPER <<<"${OB_TEST_WRAPPER:-}"

    trap ob_on_exit EXIT
    trap ob_on_signal INT TERM
    OB_RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/oncebox-$OB_KIND.XXXXXX") ||
        ob_die "cannot make a temporary directory"
    # Other accounts (the PostgreSQL server's) must reach into it.
    chmod 755 "$OB_RUN_DIR"
    mkdir "$OB_RUN_DIR/logs" || ob_die "cannot make $OB_RUN_DIR/logs"
}

ob_selected() {
    [[ -z ${ONLY:-} || $1 == *"$ONLY"* ]]
}

ob_describe_rc() {
    case $1 in
    124) echo "timed out after ${OB_TEST_TIMEOUT}s" ;;
    137) echo "killed" ;;
    *) if (($1 > 128)); then
           echo "killed by signal $(($1 - 128))"
       else
           echo "exit $1"
       fi ;;
    esac
}

ob_report() {
    local name=$1 rc=$2 secs=$3 log=$4

    if ((rc == 0)); then
        OB_PASSED=$((OB_PASSED + 1))
        echo "PASS $name (${secs}s)"
        if [[ -s $log ]]; then
            echo "    $(tail -n 1 "$log")"
        fi
        return 0
    fi
    OB_FAILED=$((OB_FAILED + 1))
    echo "FAIL $name ($(ob_describe_rc "$rc"), ${secs}s)"
    echo "---- output of $name ----"
    cat "$log"
    echo "---- end of $name ----"
}

# ob_run_test NAME CMD...: runs one test from the repository root.
# The test runs in the background and is waited for, so that a signal
# reaches the trap at once instead of after the test.
ob_run_test() {
    local name=$1 log start rc
    shift

    ob_selected "$name" || return 0
    if declare -F ob_before_test >/dev/null; then
        ob_before_test "$name"
    fi
    log="$OB_RUN_DIR/logs/$name.log"
    start=$SECONDS
    (cd "$OB_ROOT" && exec timeout -k 10 "$OB_TEST_TIMEOUT" "$@") \
        </dev/null >"$log" 2>&1 &
    OB_CHILD=$!
    wait "$OB_CHILD"
    rc=$?
    OB_CHILD=
    ob_report "$name" "$rc" "$((SECONDS - start))" "$log"
}

# ob_run_binaries DIR: every executable DIR/test_*, wrapped if asked.
ob_run_binaries() {
    local f

    for f in "$1"/test_*; do
        [[ -f $f && -x $f ]] || continue
        ob_run_test "$(basename "$f")" "${OB_WRAPPER[@]}" "$f"
    done
}

ob_finish() {
    if ((OB_PASSED + OB_FAILED == 0)); then
        echo "$OB_KIND: no test ran${ONLY:+ (ONLY=$ONLY)}" >&2
    fi
    echo "$OB_KIND: $OB_PASSED passed, $OB_FAILED failed"
    ((OB_FAILED == 0 && OB_PASSED > 0))
}

ob_unit_main() {
    ob_setup unit "$@"
    ob_run_binaries "$OB_BUILD/tests/unit"
    ob_finish
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    ob_unit_main "$@"
fi
