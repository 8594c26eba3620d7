/*
 * Helpers for integration tests that talk to PostgreSQL. Each failure
 * fails the current cmocka test with a message that says what was being
 * done and what the server said, so a test body stays a list of steps.
 *
 * ONCEBOX_TEST_DB must hold a libpq conninfo (tests/run-integration.sh
 * exports it); without it every test that connects fails loudly rather
 * than passing without having run.
 *
 * Call these from the test's own thread only: a failing cmocka assertion
 * jumps back into the test runner, which no other thread may do.
 */
#ifndef ONCEBOX_TESTLIB_H
#define ONCEBOX_TESTLIB_H

#include <libpq-fe.h>

#if defined(__GNUC__)
#define OBT_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define OBT_PRINTF(fmt, args)
#endif

/* A new connection to ONCEBOX_TEST_DB, or the test fails. PQfinish() it. */
PGconn *obt_connect(void);

/*
 * A schema name no other test, run or process uses: prefix followed by
 * "_<pid>_<time>_<n>". prefix may hold anything a schema name may (quotes,
 * spaces, UTF-8) and at most 30 bytes. free() it.
 */
char *obt_unique_name(const char *prefix);

/* name as a quoted identifier ("a""b"). free() it. */
char *obt_ident(const char *name);

/* Runs the SQL printf formats, which must succeed, and drops the result. */
void obt_exec(PGconn *conn, const char *fmt, ...) OBT_PRINTF(2, 3);

/*
 * Runs a query that must succeed; params are nparams text values. The
 * result is the caller's: PQclear() it.
 */
PGresult *obt_query(PGconn *conn, const char *sql, int nparams,
                    const char *const *params);

/*
 * The first column of the first row of a query that must return exactly
 * one row, as a new string (NULL for SQL NULL). free() it.
 */
char *obt_value(PGconn *conn, const char *sql, int nparams,
                const char *const *params);

/* The same, read as an integer (SQL NULL fails the test). */
long long obt_int(PGconn *conn, const char *sql, int nparams,
                  const char *const *params);

/*
 * Runs sql (printf format), which must fail with SQLSTATE sqlstate; fails
 * the test if it succeeds or fails otherwise. conn must be idle or in a
 * transaction: in one, the statement runs under a savepoint rolled back
 * afterwards, so the transaction stays usable.
 */
void obt_exec_fails(PGconn *conn, const char *sqlstate, const char *fmt, ...)
    OBT_PRINTF(3, 4);

/* Whether a schema of exactly this name exists. */
int obt_schema_exists(PGconn *conn, const char *name);

/* DROP SCHEMA IF EXISTS name CASCADE, which must succeed. */
void obt_drop_schema(PGconn *conn, const char *name);

/*
 * Waits up to timeout_ms for a notification on conn, which LISTENs:
 * returns it (PQfreemem() it) or NULL after the time is up.
 */
PGnotify *obt_wait_notify(PGconn *conn, int timeout_ms);

/* Milliseconds on a monotonic clock, for deadlines. */
long long obt_now_ms(void);

#endif
