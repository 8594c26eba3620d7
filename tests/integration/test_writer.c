/*
 * The outbox writer against a real PostgreSQL: rows appear exactly when
 * the caller's transaction commits, duplicates are reported without
 * breaking the transaction, and bad input never reaches the server.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "oncebox/oncebox.h"
#include "tests/support/failalloc.h"
#include "tests/support/testlib.h"

struct fixture {
    PGconn *conn;
    char *schema;
    char *ident;
    ob_writer_t *writer;
};

static ob_writer_t *writer_for(const char *schema, const char *mode)
{
    ob_writer_t *w = NULL;
    ob_conf_t *conf;
    ob_error_t err;

    assert_int_equal(ob_conf_new(&conf, &err), 0);
    assert_int_equal(ob_conf_set(conf, "schema", schema, &err), 0);
    if (mode != NULL)
        assert_int_equal(ob_conf_set(conf, "writer.key.mode", mode, &err),
                         0);
    if (ob_writer_new(&w, conf, &err) != 0)
        fail_msg("writer: %s", err.message);
    ob_conf_destroy(conf);
    return w;
}

static int setup_named(void **state, const char *prefix)
{
    struct fixture *f = calloc(1, sizeof(*f));
    ob_error_t err;

    f->conn = obt_connect();
    f->schema = obt_unique_name(prefix);
    f->ident = obt_ident(f->schema);
    if (ob_schema_migrate(f->conn, f->schema, &err) != 0)
        fail_msg("migrate: %s", err.message);
    f->writer = writer_for(f->schema, NULL);
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_named(state, "writer");
}

static int setup_odd(void **state)
{
    return setup_named(state, "Odd \"Wri ter\" é");
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    ob_writer_destroy(f->writer);
    if (PQtransactionStatus(f->conn) != PQTRANS_IDLE)
        PQclear(PQexec(f->conn, "ROLLBACK"));
    obt_drop_schema(f->conn, f->schema);
    PQfinish(f->conn);
    free(f->ident);
    free(f->schema);
    free(f);
    return 0;
}

static ob_event_t order_event(const char *id, const char *payload)
{
    ob_event_t ev = OB_EVENT_INIT;

    ev.aggregate_type = "Order";
    ev.aggregate_id = id;
    ev.event_type = "OrderPlaced";
    ev.payload = payload;
    return ev;
}

static long long count_rows(struct fixture *f, const char *where)
{
    char sql[512];

    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.outbox WHERE %s",
             f->ident, where);
    return obt_int(f->conn, sql, 0, NULL);
}

static void append_ok(struct fixture *f, const ob_event_t *ev,
                      ob_append_result_t *res)
{
    ob_error_t err;

    if (ob_writer_append(f->writer, f->conn, ev, res, &err) != 0)
        fail_msg("append: %s: %s", ob_error_name(err.code), err.message);
}

/* One column of the outbox row with this id, as text. free() it. */
static char *row_value(struct fixture *f, const char *column,
                       const char *id)
{
    const char *params[1] = {id};
    char sql[512];

    snprintf(sql, sizeof(sql), "SELECT %s::text FROM %s.outbox WHERE "
             "id = $1::uuid", column, f->ident);
    return obt_value(f->conn, sql, 1, params);
}

static void assert_row(struct fixture *f, const char *id, const char *column,
                       const char *expected)
{
    char *value = row_value(f, column, id);

    if (expected == NULL)
        assert_null(value);
    else
        assert_string_equal(value, expected);
    free(value);
}

static void commit_gives_exactly_one_row_with_the_key(void **state)
{
    struct fixture *f = *state;
    ob_event_t ev = order_event("o-1", "{\"total_cents\": 4200}");
    ob_append_result_t res;

    obt_exec(f->conn, "BEGIN");
    append_ok(f, &ev, &res);
    assert_false(res.duplicate);
    assert_string_equal(res.key, res.event_id);
    assert_int_equal(strlen(res.event_id), OB_UUID_LEN);
    obt_exec(f->conn, "COMMIT");

    assert_int_equal(count_rows(f, "true"), 1);
    assert_row(f, res.event_id, "idempotency_key", res.key);
    assert_row(f, res.event_id, "aggregate_type", "Order");
    assert_row(f, res.event_id, "aggregate_id", "o-1");
    assert_row(f, res.event_id, "event_type", "OrderPlaced");
    assert_row(f, res.event_id, "payload", "{\"total_cents\": 4200}");
    assert_row(f, res.event_id, "state", "pending");
    assert_row(f, res.event_id, "published_at", NULL);
    assert_row(f, res.event_id, "topic", NULL);
    assert_row(f, res.event_id, "headers", NULL);
    assert_row(f, res.event_id, "retry_count", "0");
}

static void rollback_leaves_no_row(void **state)
{
    struct fixture *f = *state;
    ob_event_t ev = order_event("o-2", "[1, 2, 3]");

    obt_exec(f->conn, "BEGIN");
    append_ok(f, &ev, NULL);
    assert_int_equal(count_rows(f, "true"), 1);
    obt_exec(f->conn, "ROLLBACK");
    assert_int_equal(count_rows(f, "true"), 0);
}

static void an_idle_connection_is_refused(void **state)
{
    struct fixture *f = *state;
    ob_event_t ev = order_event("o-3", "{}");
    ob_error_t err;

    assert_int_equal(ob_writer_append(f->writer, f->conn, &ev, NULL, &err),
                     OB_ENOTXN);
    assert_non_null(strstr(err.message, "BEGIN"));
    assert_int_equal(count_rows(f, "true"), 0);
}

static void an_aborted_transaction_is_refused(void **state)
{
    struct fixture *f = *state;
    ob_event_t ev = order_event("o-4", "{}");
    ob_error_t err;

    obt_exec(f->conn, "BEGIN");
    PQclear(PQexec(f->conn, "SELECT 1/0"));
    assert_int_equal(ob_writer_append(f->writer, f->conn, &ev, NULL, &err),
                     OB_ENOTXN);
    assert_non_null(strstr(err.message, "aborted"));
    obt_exec(f->conn, "ROLLBACK");
}

static void bad_input_leaves_the_transaction_usable(void **state)
{
    struct fixture *f = *state;
    ob_event_t bad = order_event("o-5", "{\"a\": }");
    ob_event_t good = order_event("o-5", "{\"a\": 1}");
    ob_error_t err;

    obt_exec(f->conn, "BEGIN");
    append_ok(f, &good, NULL);
    assert_int_equal(ob_writer_append(f->writer, f->conn, &bad, NULL, &err),
                     OB_EJSON);
    bad.payload = "{\"a\": \"\\ud800\"}";
    assert_int_equal(ob_writer_append(f->writer, f->conn, &bad, NULL, &err),
                     OB_EJSON);
    bad.payload = "{\"a\": 1}";
    bad.aggregate_id = "o-\xff";
    assert_int_equal(ob_writer_append(f->writer, f->conn, &bad, NULL, &err),
                     OB_EUTF8);
    assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_INTRANS);
    good.aggregate_id = "o-6";
    append_ok(f, &good, NULL);
    obt_exec(f->conn, "COMMIT");
    assert_int_equal(count_rows(f, "true"), 2);
}

static void a_duplicate_content_key_is_reported_and_commits(void **state)
{
    struct fixture *f = *state;
    ob_writer_t *w = writer_for(f->schema, "content");
    ob_event_t a = order_event("o-7", "{\"b\": 2, \"a\": [1, 2.0]}");
    ob_event_t b = order_event("o-7", " {\"a\":[1,2],\"b\":2.00} ");
    ob_append_result_t ra, rb;
    ob_error_t err;

    obt_exec(f->conn, "BEGIN");
    assert_int_equal(ob_writer_append(w, f->conn, &a, &ra, &err), 0);
    assert_int_equal(ob_writer_append(w, f->conn, &b, &rb, &err), 0);
    assert_false(ra.duplicate);
    assert_true(rb.duplicate);
    assert_string_equal(ra.key, rb.key);
    assert_int_equal(strlen(ra.key), OB_CONTENT_KEY_LEN);
    assert_string_not_equal(ra.event_id, rb.event_id);
    obt_exec(f->conn, "COMMIT");

    assert_int_equal(count_rows(f, "true"), 1);
    assert_row(f, ra.event_id, "idempotency_key", ra.key);
    ob_writer_destroy(w);
}

static void a_duplicate_across_transactions_is_reported(void **state)
{
    struct fixture *f = *state;
    ob_event_t ev = order_event("o-8", "{}");
    ob_append_result_t res;

    ev.key = "request-42";
    obt_exec(f->conn, "BEGIN");
    append_ok(f, &ev, &res);
    assert_false(res.duplicate);
    obt_exec(f->conn, "COMMIT");

    ev.key_mode = OB_KEY_MODE_CONTENT;
    obt_exec(f->conn, "BEGIN");
    append_ok(f, &ev, &res);
    assert_true(res.duplicate);
    assert_string_equal(res.key, "request-42");
    obt_exec(f->conn, "COMMIT");
    assert_int_equal(count_rows(f, "idempotency_key = 'request-42'"), 1);
}

static void topic_and_headers_are_stored(void **state)
{
    struct fixture *f = *state;
    ob_header_t hs[2] = {
        {"traceparent",
         "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        {"x-tenant", "t \"1\"\n"},
    };
    ob_event_t ev = order_event("o-9", "{}");
    ob_append_result_t res;

    ev.topic = "orders.special";
    ev.headers = hs;
    ev.header_count = 2;
    obt_exec(f->conn, "BEGIN");
    append_ok(f, &ev, &res);
    obt_exec(f->conn, "COMMIT");

    assert_row(f, res.event_id, "topic", "orders.special");
    assert_row(f, res.event_id, "headers->>'traceparent'", hs[0].value);
    assert_row(f, res.event_id, "headers->>'x-tenant'", hs[1].value);
}

static void a_batch_is_appended_in_order_in_one_call(void **state)
{
    struct fixture *f = *state;
    ob_event_t evs[5];
    ob_append_result_t res[5];
    size_t dups = 99, i;
    char sql[512], *order;
    ob_error_t err;

    for (i = 0; i < 5; i++)
        evs[i] = order_event("o-10", "{\"n\": 1}");
    evs[1].payload = "{\"n\": 2}";
    evs[2].key = "batch-key";
    evs[3].key = "batch-key";
    evs[4].payload = "{\"n\": 5}";

    obt_exec(f->conn, "BEGIN");
    assert_int_equal(ob_writer_append_batch(f->writer, f->conn, evs, 5, res,
                                            &dups, &err), 0);
    obt_exec(f->conn, "COMMIT");

    assert_int_equal(dups, 1);
    assert_false(res[2].duplicate);
    assert_true(res[3].duplicate);
    assert_int_equal(count_rows(f, "aggregate_id = 'o-10'"), 4);

    /* seq follows the batch order, so the relay keeps it. */
    snprintf(sql, sizeof(sql), "SELECT string_agg(payload->>'n', ',' "
             "ORDER BY seq) FROM %s.outbox WHERE aggregate_id = 'o-10'",
             f->ident);
    order = obt_value(f->conn, sql, 0, NULL);
    assert_string_equal(order, "1,2,1,5");
    free(order);
}

static void a_batch_of_event_id_keys_is_appended_whole(void **state)
{
    struct fixture *f = *state;
    ob_event_t evs[20];
    ob_append_result_t res[20];
    char sql[512], payloads[20][32], numbers[20][8], *order;
    size_t dups = 99, i;
    ob_error_t err;

    for (i = 0; i < 20; i++) {
        snprintf(numbers[i], sizeof(numbers[i]), "%zu", i);
        snprintf(payloads[i], sizeof(payloads[i]), "{\"n\": %s}",
                 numbers[i]);
        evs[i] = order_event("o-16", payloads[i]);
    }
    obt_exec(f->conn, "BEGIN");
    assert_int_equal(ob_writer_append_batch(f->writer, f->conn, evs, 20, res,
                                            &dups, &err), 0);
    obt_exec(f->conn, "COMMIT");

    assert_int_equal(dups, 0);
    for (i = 0; i < 20; i++) {
        assert_false(res[i].duplicate);
        assert_string_equal(res[i].key, res[i].event_id);
        assert_row(f, res[i].event_id, "payload->>'n'", numbers[i]);
    }
    snprintf(sql, sizeof(sql), "SELECT string_agg(payload->>'n', ',' "
             "ORDER BY seq) FROM %s.outbox WHERE aggregate_id = 'o-16'",
             f->ident);
    order = obt_value(f->conn, sql, 0, NULL);
    assert_string_equal(order, "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,"
                               "17,18,19");
    free(order);
}

static void one_bad_event_fails_the_whole_batch(void **state)
{
    struct fixture *f = *state;
    ob_event_t evs[3];
    ob_error_t err;

    evs[0] = order_event("o-11", "{}");
    evs[1] = order_event("o-11", "{}");
    evs[2] = order_event("", "{}");
    obt_exec(f->conn, "BEGIN");
    assert_int_equal(ob_writer_append_batch(f->writer, f->conn, evs, 3,
                                            NULL, NULL, &err), OB_EEMPTY);
    assert_non_null(strstr(err.message, "event 2: aggregate id"));
    obt_exec(f->conn, "COMMIT");
    assert_int_equal(count_rows(f, "true"), 0);
}

static void append_commit_commits_in_the_same_call(void **state)
{
    struct fixture *f = *state;
    ob_event_t evs[2];
    ob_append_result_t res[2];
    size_t dups = 99;
    ob_error_t err;
    char sql[256];

    evs[0] = order_event("o-17", "{\"a\": 1}");
    evs[1] = order_event("o-17", "{\"a\": 2}");
    evs[1].key = "commit-key";
    obt_exec(f->conn, "BEGIN");
    obt_exec(f->conn, "CREATE TABLE %s.domain (n int)", f->ident);
    assert_int_equal(ob_writer_append_commit(f->writer, f->conn, evs, 2, res,
                                             &dups, &err), 0);
    assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_IDLE);
    assert_int_equal(dups, 0);
    assert_int_equal(count_rows(f, "aggregate_id = 'o-17'"), 2);

    /* The same key again: reported, nothing added, still committed. */
    obt_exec(f->conn, "BEGIN");
    obt_exec(f->conn, "INSERT INTO %s.domain VALUES (1)", f->ident);
    assert_int_equal(ob_writer_append_commit(f->writer, f->conn, &evs[1], 1,
                                             res, &dups, &err), 0);
    assert_true(res[0].duplicate);
    assert_int_equal(dups, 1);
    assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_IDLE);
    assert_int_equal(count_rows(f, "aggregate_id = 'o-17'"), 2);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.domain", f->ident);
    assert_int_equal(obt_int(f->conn, sql, 0, NULL), 1);

    /* No events: just the commit. */
    obt_exec(f->conn, "BEGIN");
    assert_int_equal(ob_writer_append_commit(f->writer, f->conn, NULL, 0,
                                             NULL, NULL, &err), 0);
    assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_IDLE);
}

static void a_failed_append_commit_leaves_the_rollback_to_the_caller(
    void **state)
{
    struct fixture *f = *state;
    ob_writer_t *w = writer_for("no_such_schema_here", NULL);
    ob_event_t ev = order_event("o-18", "{}");
    ob_error_t err;

    obt_exec(f->conn, "BEGIN");
    assert_int_equal(ob_writer_append_commit(w, f->conn, &ev, 1, NULL, NULL,
                                             &err), OB_EPG);
    assert_string_equal(err.sqlstate, "42P01");
    assert_non_null(strstr(err.message, "append: "));
    assert_int_equal(PQpipelineStatus(f->conn), PQ_PIPELINE_OFF);
    assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_INERROR);
    obt_exec(f->conn, "ROLLBACK");

    assert_int_equal(ob_writer_append_commit(f->writer, f->conn, &ev, 1,
                                             NULL, NULL, &err), OB_ENOTXN);
    assert_int_equal(count_rows(f, "true"), 0);
    ob_writer_destroy(w);
}

static void a_missing_schema_is_a_postgres_error(void **state)
{
    struct fixture *f = *state;
    ob_writer_t *w = writer_for("no_such_schema_here", NULL);
    ob_event_t ev = order_event("o-12", "{}");
    ob_error_t err;

    obt_exec(f->conn, "BEGIN");
    assert_int_equal(ob_writer_append(w, f->conn, &ev, NULL, &err), OB_EPG);
    assert_int_equal(err.domain, OB_DOMAIN_POSTGRES);
    assert_string_equal(err.sqlstate, "42P01");
    assert_false(ob_error_is_retriable(&err));
    obt_exec(f->conn, "ROLLBACK");
    ob_writer_destroy(w);
}

/* Rows written by hand, not through the writer, meet the same rules. */
static void the_table_refuses_topics_kafka_refuses(void **state)
{
    struct fixture *f = *state;
    static const char insert[] =
        "INSERT INTO %s.outbox (id, aggregate_type, aggregate_id, "
        "event_type, payload, idempotency_key, topic) VALUES "
        "(gen_random_uuid(), 'T', 'a', 'E', '{}', gen_random_uuid()::text, "
        "%s)";

    obt_exec_fails(f->conn, "23514", insert, f->ident, "'a/b'");
    obt_exec_fails(f->conn, "23514", insert, f->ident, "'..'");
    obt_exec_fails(f->conn, "23514", insert, f->ident, "''");
    obt_exec_fails(f->conn, "23514", insert, f->ident, "repeat('t', 250)");
    obt_exec(f->conn, insert, f->ident, "repeat('t', 249)");
    obt_exec(f->conn, insert, f->ident, "'Orders.v1_x-y'");
    assert_int_equal(count_rows(f, "true"), 2);
}

static void a_quoted_schema_name_works(void **state)
{
    struct fixture *f = *state;
    ob_event_t ev = order_event("o-13", "{\"ok\": true}");
    ob_append_result_t res;

    obt_exec(f->conn, "BEGIN");
    append_ok(f, &ev, &res);
    obt_exec(f->conn, "COMMIT");
    assert_row(f, res.event_id, "payload->>'ok'", "true");
}

static void append_survives_every_failed_allocation(void **state)
{
    struct fixture *f = *state;
    ob_writer_t *w = writer_for(f->schema, "content");
    ob_header_t h = {"x-h", "v"};
    ob_event_t evs[2];
    ob_error_t err;
    long n;
    int rc;

    evs[0] = order_event("o-14", "{\"z\": [1, {\"y\": \"\\u00e9\"}]}");
    evs[1] = order_event("o-15", "{\"k\": 1}");
    evs[1].headers = &h;
    evs[1].header_count = 1;
    for (n = 0;; n++) {
        obt_exec(f->conn, "BEGIN");
        obt_failalloc_install(n);
        rc = ob_writer_append_batch(w, f->conn, evs, 2, NULL, NULL, &err);
        obt_failalloc_remove();
        assert_int_equal(obt_live_blocks, 0);
        /* Nothing was sent when memory ran out: the transaction lives. */
        assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_INTRANS);
        obt_exec(f->conn, "ROLLBACK");
        if (rc == 0)
            break;
        assert_int_equal(rc, OB_ENOMEM);
    }
    assert_true(n >= 4);
    ob_writer_destroy(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            commit_gives_exactly_one_row_with_the_key, setup, teardown),
        cmocka_unit_test_setup_teardown(rollback_leaves_no_row, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(an_idle_connection_is_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(an_aborted_transaction_is_refused,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            bad_input_leaves_the_transaction_usable, setup, teardown),
        cmocka_unit_test_setup_teardown(
            a_duplicate_content_key_is_reported_and_commits, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            a_duplicate_across_transactions_is_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(topic_and_headers_are_stored, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            a_batch_is_appended_in_order_in_one_call, setup, teardown),
        cmocka_unit_test_setup_teardown(
            a_batch_of_event_id_keys_is_appended_whole, setup, teardown),
        cmocka_unit_test_setup_teardown(one_bad_event_fails_the_whole_batch,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            append_commit_commits_in_the_same_call, setup, teardown),
        cmocka_unit_test_setup_teardown(
            a_failed_append_commit_leaves_the_rollback_to_the_caller, setup,
            teardown),
        cmocka_unit_test_setup_teardown(a_missing_schema_is_a_postgres_error,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            the_table_refuses_topics_kafka_refuses, setup, teardown),
        cmocka_unit_test_setup_teardown(a_quoted_schema_name_works,
                                        setup_odd, teardown),
        cmocka_unit_test_setup_teardown(
            append_survives_every_failed_allocation, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
