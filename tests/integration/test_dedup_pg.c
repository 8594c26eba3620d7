/*
 * What only the PostgreSQL key store has: it joins the caller's
 * transaction and refuses a connection outside one, costs one round trip
 * for a new key, writes the inbox row's columns as the schema defines
 * them, and lets exactly one of two concurrent transactions claim a key.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "oncebox/oncebox.h"
#include "tests/support/failalloc.h"
#include "tests/support/testlib.h"

struct fixture {
    PGconn *conn;
    char *schema;
    char *ident;
    ob_dedup_t *d;
};

static int setup_named(void **state, const char *prefix)
{
    struct fixture *f = calloc(1, sizeof(*f));
    ob_conf_t *conf;
    ob_error_t err;

    f->conn = obt_connect();
    f->schema = obt_unique_name(prefix);
    f->ident = obt_ident(f->schema);
    if (ob_schema_migrate(f->conn, f->schema, &err) != 0)
        fail_msg("migrate: %s", err.message);
    assert_int_equal(ob_conf_new(&conf, &err), 0);
    assert_int_equal(ob_conf_set(conf, "schema", f->schema, &err), 0);
    if (ob_dedup_pg_new(&f->d, conf, &err) != 0)
        fail_msg("ob_dedup_pg_new: %s", err.message);
    ob_conf_destroy(conf);
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_named(state, "dedup_pg");
}

static int setup_odd(void **state)
{
    return setup_named(state, "Odd \"De dup\" é");
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    ob_dedup_destroy(f->d);
    if (PQtransactionStatus(f->conn) != PQTRANS_IDLE)
        PQclear(PQexec(f->conn, "ROLLBACK"));
    obt_drop_schema(f->conn, f->schema);
    PQfinish(f->conn);
    free(f->ident);
    free(f->schema);
    free(f);
    return 0;
}

static ob_dedup_entry_t entry(const char *key, int64_t at_ms)
{
    ob_dedup_entry_t e = OB_DEDUP_ENTRY_INIT;

    e.key = key;
    e.at_ms = at_ms;
    return e;
}

static ob_dedup_result_t claim_ok(struct fixture *f, PGconn *conn,
                                  const ob_dedup_entry_t *e)
{
    ob_dedup_result_t res;
    ob_error_t err;

    if (ob_dedup_claim(f->d, conn, "g", e, &res, &err) != 0)
        fail_msg("claim %s: %s", e->key, err.message);
    return res;
}

static long long inbox_rows(struct fixture *f)
{
    char sql[256];

    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.inbox", f->ident);
    return obt_int(f->conn, sql, 0, NULL);
}

static void a_claim_outside_a_transaction_is_refused(void **state)
{
    struct fixture *f = *state;
    ob_dedup_entry_t e = entry("k", 1000);
    ob_dedup_info_t info;
    ob_error_t err;
    uint64_t n;
    size_t removed;

    assert_int_equal(ob_dedup_claim(f->d, f->conn, "g", &e, NULL, &err),
                     OB_ENOTXN);
    assert_non_null(strstr(err.message, "BEGIN"));
    assert_int_equal(inbox_rows(f), 0);

    /* Reading and purging need no transaction of the caller's. */
    obt_exec(f->conn, "BEGIN");
    claim_ok(f, f->conn, &e);
    obt_exec(f->conn, "COMMIT");
    assert_int_equal(
        ob_dedup_lookup(f->d, f->conn, "g", "k", 0, &info, &err), 0);
    assert_int_equal(info.found, 1);
    assert_int_equal(ob_dedup_count(f->d, f->conn, "g", &n, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(
        ob_dedup_purge(f->d, f->conn, "g", 2000, 0, &removed, &err), 0);
    assert_int_equal(removed, 1);
    assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_IDLE);
    assert_int_equal(inbox_rows(f), 0);
}

static void an_aborted_transaction_is_refused(void **state)
{
    struct fixture *f = *state;
    ob_dedup_entry_t e = entry("k", 1000);
    ob_dedup_info_t info;
    ob_error_t err;

    obt_exec(f->conn, "BEGIN");
    PQclear(PQexec(f->conn, "SELECT 1/0"));
    assert_int_equal(ob_dedup_claim(f->d, f->conn, "g", &e, NULL, &err),
                     OB_ENOTXN);
    assert_non_null(strstr(err.message, "aborted"));
    assert_int_equal(
        ob_dedup_lookup(f->d, f->conn, "g", "k", 0, &info, &err), OB_ENOTXN);
    obt_exec(f->conn, "ROLLBACK");
}

static void the_row_holds_the_claim_in_the_schema_columns(void **state)
{
    struct fixture *f = *state;
    ob_dedup_entry_t e = entry("k-1", 1700000000123);
    unsigned char h[32];
    char sql[512];
    char *v;

    assert_int_equal(ob_dedup_hash("{}", 2, h, NULL), 0);
    e.hash = h;
    e.topic = "order-events";
    e.partition = 3;
    e.offset = 99;
    obt_exec(f->conn, "BEGIN");
    claim_ok(f, f->conn, &e);
    e = entry("bare", 1700000000124);
    claim_ok(f, f->conn, &e);
    obt_exec(f->conn, "COMMIT");

    snprintf(sql, sizeof(sql),
             "SELECT concat_ws('|', namespace, idempotency_key,"
             " encode(payload_hash, 'hex') = encode(sha256('{}'), 'hex'),"
             " claimed_at = '2023-11-14 22:13:20.123+00', topic,"
             " \"partition\", \"offset\") FROM %s.inbox"
             " WHERE idempotency_key = 'k-1'",
             f->ident);
    v = obt_value(f->conn, sql, 0, NULL);
    assert_string_equal(v, "g|k-1|t|t|order-events|3|99");
    free(v);

    snprintf(sql, sizeof(sql),
             "SELECT payload_hash IS NULL AND topic IS NULL AND"
             " \"partition\" IS NULL AND \"offset\" IS NULL FROM %s.inbox"
             " WHERE idempotency_key = 'bare'",
             f->ident);
    v = obt_value(f->conn, sql, 0, NULL);
    assert_string_equal(v, "t");
    free(v);
}

static void a_row_written_by_sql_reads_back_in_milliseconds(void **state)
{
    struct fixture *f = *state;
    ob_dedup_entry_t e = entry("by-sql", 5);
    ob_dedup_result_t res;
    ob_dedup_info_t info;
    ob_error_t err;

    obt_exec(f->conn,
             "INSERT INTO %s.inbox (namespace, idempotency_key, claimed_at)"
             " VALUES ('g', 'by-sql', '2023-11-14 22:13:20.123999+00')",
             f->ident);
    assert_int_equal(
        ob_dedup_lookup(f->d, f->conn, "g", "by-sql", 0, &info, &err), 0);
    assert_int_equal(info.claimed_at_ms, 1700000000123);
    assert_int_equal(info.has_hash, 0);

    obt_exec(f->conn, "BEGIN");
    res = claim_ok(f, f->conn, &e);
    obt_exec(f->conn, "COMMIT");
    assert_int_equal(res.duplicate, 1);
    assert_int_equal(res.claimed_at_ms, 1700000000123);
}

/* Counts the Sync messages, one per round trip, of a libpq trace. */
static int round_trips(FILE *trace)
{
    char line[4096];
    int n = 0;

    rewind(trace);
    while (fgets(line, sizeof(line), trace) != NULL) {
        if (line[0] == 'F' && strstr(line, "\tSync") != NULL)
            n++;
    }
    return n;
}

static void a_new_key_costs_one_round_trip_and_a_duplicate_two(void **state)
{
    struct fixture *f = *state;
    ob_dedup_entry_t e = entry("k", 1000);
    FILE *trace;

    obt_exec(f->conn, "BEGIN");
    trace = tmpfile();
    assert_non_null(trace);
    PQtrace(f->conn, trace);
    PQsetTraceFlags(f->conn, PQTRACE_SUPPRESS_TIMESTAMPS);
    assert_int_equal(claim_ok(f, f->conn, &e).duplicate, 0);
    fflush(trace);
    assert_int_equal(round_trips(trace), 1);

    assert_int_equal(claim_ok(f, f->conn, &e).duplicate, 1);
    fflush(trace);
    assert_int_equal(round_trips(trace), 3);
    PQuntrace(f->conn);
    fclose(trace);
    obt_exec(f->conn, "COMMIT");
}

static void a_batch_costs_one_round_trip_and_two_with_duplicates(
    void **state)
{
    struct fixture *f = *state;
    ob_dedup_entry_t e[100];
    ob_dedup_result_t res[100];
    char keys[100][16];
    ob_error_t err;
    FILE *trace;
    int i;

    for (i = 0; i < 100; i++) {
        snprintf(keys[i], sizeof(keys[i]), "b-%d", i);
        e[i] = entry(keys[i], 1000 + i);
    }
    obt_exec(f->conn, "BEGIN");
    trace = tmpfile();
    assert_non_null(trace);
    PQtrace(f->conn, trace);
    PQsetTraceFlags(f->conn, PQTRACE_SUPPRESS_TIMESTAMPS);
    assert_int_equal(ob_dedup_claim_batch(f->d, f->conn, "g", e, 50, res,
                                          &err), 0);
    fflush(trace);
    assert_int_equal(round_trips(trace), 1);

    /* Half of these were claimed just above. */
    assert_int_equal(ob_dedup_claim_batch(f->d, f->conn, "g", e + 25, 75,
                                          res, &err), 0);
    fflush(trace);
    assert_int_equal(round_trips(trace), 3);
    PQuntrace(f->conn);
    fclose(trace);
    obt_exec(f->conn, "COMMIT");
    for (i = 0; i < 75; i++)
        assert_int_equal(res[i].duplicate, i < 25);
    assert_int_equal(inbox_rows(f), 100);
}

/* A claim run on another thread, which blocks on the first's row. */
struct racer {
    ob_dedup_t *d;
    PGconn *conn;
    const unsigned char *hash;
    int batch; /* claim with ob_dedup_claim_batch() */
    int rc;
    ob_dedup_result_t res;
    ob_error_t err;
};

static void *racer_run(void *arg)
{
    struct racer *r = arg;
    ob_dedup_entry_t e = entry("contended", 2000);

    e.hash = r->hash;
    if (r->batch)
        r->rc = ob_dedup_claim_batch(r->d, r->conn, "g", &e, 1, &r->res,
                                     &r->err);
    else
        r->rc = ob_dedup_claim(r->d, r->conn, "g", &e, &r->res, &r->err);
    return NULL;
}

/* Waits until the backend of conn waits for a lock, or fails. */
static void wait_until_blocked(PGconn *observer, PGconn *conn)
{
    long long deadline = obt_now_ms() + 60000;
    char pid[16], *waiting;
    const char *params[1] = {pid};
    struct timespec pause = {0, 10 * 1000 * 1000};

    snprintf(pid, sizeof(pid), "%d", PQbackendPID(conn));
    for (;;) {
        waiting = obt_value(observer,
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE pid = $1::int AND wait_event_type ="
                            " 'Lock'", 1, params);
        if (strcmp(waiting, "1") == 0) {
            free(waiting);
            return;
        }
        free(waiting);
        if (obt_now_ms() > deadline)
            fail_msg("the second claim never waited for the first");
        nanosleep(&pause, NULL);
    }
}

/*
 * The first transaction claims and holds the row; the second claim, on
 * another connection, waits for it; the first ends with end_sql.
 */
static void race(struct fixture *f, const char *end_sql, struct racer *r)
{
    ob_dedup_entry_t e = entry("contended", 1000);
    PGconn *observer = obt_connect();
    pthread_t thread;
    unsigned char h1[32];

    assert_int_equal(ob_dedup_hash("first", 5, h1, NULL), 0);
    e.hash = h1;
    r->d = f->d;
    r->conn = obt_connect();
    obt_exec(f->conn, "BEGIN");
    assert_int_equal(claim_ok(f, f->conn, &e).duplicate, 0);

    obt_exec(r->conn, "BEGIN");
    assert_int_equal(pthread_create(&thread, NULL, racer_run, r), 0);
    wait_until_blocked(observer, r->conn);
    obt_exec(f->conn, "%s", end_sql);
    assert_int_equal(pthread_join(thread, NULL), 0);

    if (r->rc != 0)
        fail_msg("second claim: %s", r->err.message);
    assert_int_equal(PQtransactionStatus(r->conn), PQTRANS_INTRANS);
    obt_exec(r->conn, "COMMIT");
    PQfinish(r->conn);
    PQfinish(observer);
}

static void of_two_concurrent_claims_the_second_waits_and_is_a_duplicate(
    void **state)
{
    struct fixture *f = *state;
    unsigned char h2[32];
    struct racer r;

    memset(&r, 0, sizeof(r));
    assert_int_equal(ob_dedup_hash("second", 6, h2, NULL), 0);
    r.hash = h2;
    race(f, "COMMIT", &r);
    assert_int_equal(r.res.duplicate, 1);
    assert_int_equal(r.res.hash_differs, 1);
    assert_int_equal(r.res.claimed_at_ms, 1000);
    assert_int_equal(inbox_rows(f), 1);
}

/* The batch reads the stored hash after waiting, so a reuse shows. */
static void a_batch_waiting_for_a_concurrent_claim_sees_its_hash(
    void **state)
{
    struct fixture *f = *state;
    unsigned char h2[32];
    struct racer r;

    memset(&r, 0, sizeof(r));
    assert_int_equal(ob_dedup_hash("second", 6, h2, NULL), 0);
    r.hash = h2;
    r.batch = 1;
    race(f, "COMMIT", &r);
    assert_int_equal(r.res.duplicate, 1);
    assert_int_equal(r.res.hash_differs, 1);
    assert_int_equal(r.res.claimed_at_ms, 1000);
}

static void when_the_first_of_two_claims_rolls_back_the_second_is_new(
    void **state)
{
    struct fixture *f = *state;
    struct racer r;
    ob_dedup_info_t info;

    memset(&r, 0, sizeof(r));
    race(f, "ROLLBACK", &r);
    assert_int_equal(r.res.duplicate, 0);
    assert_int_equal(r.res.claimed_at_ms, 2000);
    assert_int_equal(
        ob_dedup_lookup(f->d, f->conn, "g", "contended", 0, &info, NULL), 0);
    assert_int_equal(info.claimed_at_ms, 2000);
    assert_int_equal(inbox_rows(f), 1);
}

static void a_missing_schema_fails_without_breaking_later_work(void **state)
{
    struct fixture *f = *state;
    ob_dedup_entry_t e = entry("k", 1000);
    ob_dedup_t *d;
    ob_conf_t *conf;
    ob_error_t err;

    assert_int_equal(ob_conf_new(&conf, &err), 0);
    assert_int_equal(ob_conf_set(conf, "schema", "no_such_schema", &err), 0);
    assert_int_equal(ob_dedup_pg_new(&d, conf, &err), 0);
    ob_conf_destroy(conf);

    obt_exec(f->conn, "BEGIN");
    assert_int_equal(ob_dedup_claim(d, f->conn, "g", &e, NULL, &err),
                     OB_EPG);
    assert_string_equal(err.sqlstate, "42P01");
    assert_false(ob_error_is_retriable(&err));
    obt_exec(f->conn, "ROLLBACK");
    ob_dedup_destroy(d);

    obt_exec(f->conn, "BEGIN");
    assert_int_equal(claim_ok(f, f->conn, &e).duplicate, 0);
    obt_exec(f->conn, "COMMIT");
}

static void a_schema_name_with_quotes_and_spaces_works(void **state)
{
    struct fixture *f = *state;
    ob_dedup_entry_t e = entry("k", 1000);

    obt_exec(f->conn, "BEGIN");
    assert_int_equal(claim_ok(f, f->conn, &e).duplicate, 0);
    assert_int_equal(claim_ok(f, f->conn, &e).duplicate, 1);
    obt_exec(f->conn, "COMMIT");
    assert_int_equal(inbox_rows(f), 1);
}

static void every_failed_allocation_of_a_batch_is_reported(void **state)
{
    struct fixture *f = *state;
    ob_dedup_entry_t e[4];
    ob_dedup_result_t res[4];
    ob_error_t err;
    long n, live;
    int rc;

    e[0] = entry("old", 1);
    obt_exec(f->conn, "BEGIN");
    claim_ok(f, f->conn, &e[0]);
    obt_exec(f->conn, "COMMIT");
    e[1] = entry("new", 2);
    e[2] = entry("old", 3);
    e[3] = entry("new", 4);
    for (n = 0;; n++) {
        obt_exec(f->conn, "BEGIN");
        obt_failalloc_install(n);
        rc = ob_dedup_claim_batch(f->d, f->conn, "g", e, 4, res, &err);
        live = obt_failalloc_remove();
        obt_exec(f->conn, "ROLLBACK");
        if (live != 0)
            fail_msg("allocation %ld failed: %ld blocks leaked", n, live);
        if (rc == 0)
            break;
        if (rc != OB_ENOMEM)
            fail_msg("allocation %ld failed: %s: %s", n, ob_error_name(rc),
                     err.message);
    }
    assert_true(n >= 3);
    assert_int_equal(res[0].duplicate, 1);
    assert_int_equal(res[1].duplicate, 0);
    assert_int_equal(res[2].duplicate, 1);
    assert_int_equal(res[3].duplicate, 1);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(a_claim_outside_a_transaction_is_refused),
        T(an_aborted_transaction_is_refused),
        T(the_row_holds_the_claim_in_the_schema_columns),
        T(a_row_written_by_sql_reads_back_in_milliseconds),
        T(a_new_key_costs_one_round_trip_and_a_duplicate_two),
        T(a_batch_costs_one_round_trip_and_two_with_duplicates),
        T(of_two_concurrent_claims_the_second_waits_and_is_a_duplicate),
        T(a_batch_waiting_for_a_concurrent_claim_sees_its_hash),
        T(when_the_first_of_two_claims_rolls_back_the_second_is_new),
        T(a_missing_schema_fails_without_breaking_later_work),
        T(every_failed_allocation_of_a_batch_is_reported),
        cmocka_unit_test_setup_teardown(
            a_schema_name_with_quotes_and_spaces_works, setup_odd, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
