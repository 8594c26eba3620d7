/*
 * PostgreSQL helpers for the integration tests; see testlib.h.
 */
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/support/testlib.h"

long long obt_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *vformat(const char *fmt, va_list ap)
{
    char *s = NULL;

    if (vasprintf(&s, fmt, ap) < 0)
        fail_msg("out of memory formatting SQL");
    return s;
}

PGconn *obt_connect(void)
{
    const char *conninfo = getenv("ONCEBOX_TEST_DB");
    PGconn *conn;

    if (conninfo == NULL || conninfo[0] == '\0')
        fail_msg("ONCEBOX_TEST_DB is not set: run the integration tests "
                 "with tests/run-integration.sh, or export a conninfo");

    conn = PQconnectdb(conninfo);
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
        /* PQerrorMessage never holds the password, only the server. */
        print_error("cannot connect to ONCEBOX_TEST_DB: %s",
                    conn != NULL ? PQerrorMessage(conn) : "out of memory");
        PQfinish(conn);
        fail();
    }
    return conn;
}

char *obt_unique_name(const char *prefix)
{
    static unsigned counter;
    char *name = NULL;

    assert_true(strlen(prefix) <= 30);
    if (asprintf(&name, "%s_%ld_%lld_%u", prefix, (long)getpid(),
                 (long long)time(NULL), ++counter) < 0)
        fail_msg("out of memory");
    return name;
}

char *obt_ident(const char *name)
{
    size_t len = strlen(name), i;
    char *out = malloc(2 * len + 3), *w = out;

    assert_non_null(out);
    *w++ = '"';
    for (i = 0; i < len; i++) {
        if (name[i] == '"')
            *w++ = '"';
        *w++ = name[i];
    }
    *w++ = '"';
    *w = '\0';
    return out;
}

static void result_check(PGconn *conn, PGresult *res, const char *sql)
{
    ExecStatusType st = PQresultStatus(res);

    if (res != NULL && (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK))
        return;
    print_error("SQL failed: %s\n  in: %s\n",
                res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(conn),
                sql);
    PQclear(res);
    fail();
}

void obt_exec(PGconn *conn, const char *fmt, ...)
{
    PGresult *res;
    va_list ap;
    char *sql;

    va_start(ap, fmt);
    sql = vformat(fmt, ap);
    va_end(ap);

    res = PQexec(conn, sql);
    result_check(conn, res, sql);
    PQclear(res);
    free(sql);
}

PGresult *obt_query(PGconn *conn, const char *sql, int nparams,
                    const char *const *params)
{
    PGresult *res =
        PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);

    result_check(conn, res, sql);
    return res;
}

char *obt_value(PGconn *conn, const char *sql, int nparams,
                const char *const *params)
{
    PGresult *res = obt_query(conn, sql, nparams, params);
    char *value = NULL;

    if (PQntuples(res) != 1 || PQnfields(res) < 1) {
        print_error("expected one row, got %d\n  in: %s\n", PQntuples(res),
                    sql);
        PQclear(res);
        fail();
    }
    if (!PQgetisnull(res, 0, 0)) {
        value = strdup(PQgetvalue(res, 0, 0));
        assert_non_null(value);
    }
    PQclear(res);
    return value;
}

long long obt_int(PGconn *conn, const char *sql, int nparams,
                  const char *const *params)
{
    char *value = obt_value(conn, sql, nparams, params);
    long long n;

    if (value == NULL)
        fail_msg("expected a number, got NULL from: %s", sql);
    n = strtoll(value, NULL, 10);
    free(value);
    return n;
}

void obt_exec_fails(PGconn *conn, const char *sqlstate, const char *fmt, ...)
{
    int inside = PQtransactionStatus(conn) == PQTRANS_INTRANS;
    const char *state;
    PGresult *res;
    va_list ap;
    char *sql;

    va_start(ap, fmt);
    sql = vformat(fmt, ap);
    va_end(ap);

    if (inside)
        obt_exec(conn, "SAVEPOINT obt_fails");
    res = PQexec(conn, sql);
    state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (PQresultStatus(res) != PGRES_FATAL_ERROR || state == NULL ||
        strcmp(state, sqlstate) != 0) {
        print_error("expected SQLSTATE %s, got %s (%s)\n  in: %s\n", sqlstate,
                    state != NULL ? state : "none",
                    PQresStatus(PQresultStatus(res)), sql);
        PQclear(res);
        fail();
    }
    PQclear(res);
    free(sql);
    if (inside)
        obt_exec(conn, "ROLLBACK TO SAVEPOINT obt_fails");
}

int obt_schema_exists(PGconn *conn, const char *name)
{
    const char *params[1] = {name};

    return (int)obt_int(conn,
                        "SELECT count(*) FROM pg_catalog.pg_namespace"
                        " WHERE nspname = $1",
                        1, params);
}

void obt_drop_schema(PGconn *conn, const char *name)
{
    char *ident = obt_ident(name);

    /* The drop's NOTICE lists every object; tests have no use for it. */
    obt_exec(conn, "SET client_min_messages = warning");
    obt_exec(conn, "DROP SCHEMA IF EXISTS %s CASCADE", ident);
    obt_exec(conn, "RESET client_min_messages");
    free(ident);
}

PGnotify *obt_wait_notify(PGconn *conn, int timeout_ms)
{
    long long deadline = obt_now_ms() + timeout_ms, left;
    struct pollfd pfd;
    PGnotify *n;

    for (;;) {
        if (PQconsumeInput(conn) == 0)
            fail_msg("reading notifications: %s", PQerrorMessage(conn));
        n = PQnotifies(conn);
        if (n != NULL || obt_now_ms() >= deadline)
            return n;

        pfd.fd = PQsocket(conn);
        pfd.events = POLLIN;
        pfd.revents = 0;
        left = deadline - obt_now_ms();
        poll(&pfd, 1, left > 0 ? (int)left : 0);
    }
}
