#!/usr/bin/env bash
#
# run-integration.sh BUILD_DIR: starts a throwaway PostgreSQL (pg-tmp) and
# a mock Kafka cluster (broker), then runs every executable
# BUILD_DIR/tests/integration/test_* and every tests/integration/test_*.sh
# (with bash), each under a timeout, from the repository root. Ends with
# "integration: N passed, M failed"; exits 1 if a test failed or none ran.
# The services and the temporary directory are removed on every exit,
# Ctrl-C included.
#
# Each test gets, besides OB_BUILD and OB_ROOT:
#   ONCEBOX_TEST_DB          libpq conninfo of the server
#   ONCEBOX_TEST_PGDIR       its pg-tmp directory (tests/support/pg-tmp
#                            kill|restart DIR to crash it)
#   ONCEBOX_TEST_BROKERS     bootstrap list of the mock cluster
#   ONCEBOX_TEST_BROKER_DIR  for tests/support/broker cmd DIR COMMAND...
#
# Before each test, the broker is reset (queued errors cleared, brokers up,
# no added latency) and PostgreSQL is restarted if a test left it down;
# either service is started anew if it no longer answers.
#
# ONLY, OB_TEST_WRAPPER and OB_TEST_TIMEOUT work as in run-unit.sh.

# shellcheck source=tests/run-unit.sh
source "$(dirname "${BASH_SOURCE[0]}")/run-unit.sh"

# Inherited values would point the cleanup at someone else's services.
unset ONCEBOX_TEST_DB ONCEBOX_TEST_PGDIR ONCEBOX_TEST_BROKERS \
    ONCEBOX_TEST_BROKER_DIR

ob_pg_tmp() {
    "$OB_ROOT/tests/support/pg-tmp" "$@"
}

ob_broker() {
    "$OB_ROOT/tests/support/broker" "$@"
}

# Runs a service command, its stdout into OB_SERVICE_OUT; on failure
# shows its stderr and ends the run as failed.
ob_service() {
    local what=$1
    shift

    if ! OB_SERVICE_OUT=$("$@" 2>"$OB_RUN_DIR/service.log"); then
        cat "$OB_RUN_DIR/service.log" >&2
        echo "FAIL services ($what)"
        OB_FAILED=$((OB_FAILED + 1))
        ob_finish
        exit 1
    fi
}

ob_start_pg() {
    ONCEBOX_TEST_PGDIR=$OB_RUN_DIR/pg
    ob_service "pg-tmp start" ob_pg_tmp start "$ONCEBOX_TEST_PGDIR"
    ONCEBOX_TEST_DB=$OB_SERVICE_OUT
    export ONCEBOX_TEST_PGDIR ONCEBOX_TEST_DB
}

ob_start_broker() {
    ONCEBOX_TEST_BROKER_DIR=$OB_RUN_DIR/broker
    ob_service "broker start" ob_broker start "$ONCEBOX_TEST_BROKER_DIR"
    ONCEBOX_TEST_BROKERS=$OB_SERVICE_OUT
    export ONCEBOX_TEST_BROKER_DIR ONCEBOX_TEST_BROKERS
}

ob_stop_services() {
    if [[ -n ${ONCEBOX_TEST_BROKER_DIR:-} ]]; then
        ob_broker stop "$ONCEBOX_TEST_BROKER_DIR" 2>/dev/null ||
            echo "integration: could not stop the broker" >&2
    fi
    if [[ -n ${ONCEBOX_TEST_PGDIR:-} ]]; then
        ob_pg_tmp stop "$ONCEBOX_TEST_PGDIR" 2>/dev/null ||
            echo "integration: could not stop PostgreSQL" >&2
    fi
}

# A test that crashes a service must not fail the tests after it.
ob_before_test() {
    if ! ob_broker cmd "$ONCEBOX_TEST_BROKER_DIR" reset >/dev/null; then
        echo "note: the broker did not answer before $1; starting a new one"
        ob_broker stop "$ONCEBOX_TEST_BROKER_DIR" 2>/dev/null
        ob_start_broker
    fi
    if ! ob_pg_tmp status "$ONCEBOX_TEST_PGDIR" >/dev/null 2>&1; then
        echo "note: PostgreSQL was down before $1; restarting it"
        ob_service "pg-tmp restart" ob_pg_tmp restart "$ONCEBOX_TEST_PGDIR"
    fi
}

ob_integration_main() {
    local f

    ob_setup integration "$@"
    ob_start_pg
    ob_start_broker

    ob_run_binaries "$OB_BUILD/tests/integration"
    for f in "$OB_ROOT"/tests/integration/test_*.sh; do
        [[ -f $f ]] || continue
        ob_run_test "$(basename "$f")" bash "$f"
    done
    ob_finish
}

ob_integration_main "$@"
