/*
 * The operations calls against a real PostgreSQL: status figures match
 * the rows exactly, lane owners are the sessions holding the relay's
 * advisory locks, parked rows list and replay, and the purge removes
 * exactly what is past its retention and nothing pending or parked.
 * Rows are made with the writer, then moved to other states with SQL, as
 * the relay would.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <pthread.h>

#include "oncebox/oncebox.h"
#include "tests/support/testlib.h"

#define MAX_ROWS 64

struct fixture {
    PGconn *conn;
    char *schema;
    char *ident;
    ob_writer_t *writer;
    char ids[MAX_ROWS][OB_UUID_LEN + 1];
    size_t count;
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
    if (ob_writer_new(&f->writer, conf, &err) != 0)
        fail_msg("writer: %s", err.message);
    ob_conf_destroy(conf);
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_named(state, "admin");
}

static int setup_odd(void **state)
{
    return setup_named(state, "Odd \"Ad min\" é");
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

/*
 * Appends n events of aggregates "<prefix>-0".."<prefix>-(n-1)" in one
 * transaction; their ids go to f->ids from f->count on. The event
 * number park (-1: none) is parked in that same transaction.
 */
static void append_rows_with(struct fixture *f, const char *prefix,
                             size_t n, long park)
{
    ob_event_t evs[MAX_ROWS];
    ob_append_result_t res[MAX_ROWS];
    char aggs[MAX_ROWS][32];
    ob_error_t err;
    size_t i;

    assert_true(f->count + n <= MAX_ROWS);
    for (i = 0; i < n; i++) {
        snprintf(aggs[i], sizeof(aggs[i]), "%s-%zu", prefix, i);
        evs[i] = (ob_event_t)OB_EVENT_INIT;
        evs[i].aggregate_type = "Order";
        evs[i].aggregate_id = aggs[i];
        evs[i].event_type = "OrderPlaced";
        evs[i].payload = "{\"total_cents\": 100}";
    }
    obt_exec(f->conn, "BEGIN");
    if (ob_writer_append_batch(f->writer, f->conn, evs, n, res, NULL,
                               &err) != 0)
        fail_msg("append: %s", err.message);
    if (park >= 0)
        obt_exec(f->conn, "UPDATE %s.outbox SET state = 'parked', "
                 "last_error = 'parked on append' WHERE id = '%s'",
                 f->ident, res[park].event_id);
    obt_exec(f->conn, "COMMIT");
    for (i = 0; i < n; i++)
        memcpy(f->ids[f->count++], res[i].event_id, OB_UUID_LEN + 1);
}

static void append_rows(struct fixture *f, const char *prefix, size_t n)
{
    append_rows_with(f, prefix, n, -1);
}

/* UPDATE outbox SET <set> WHERE id = ids[i]: what a relay would do. */
static void set_row(struct fixture *f, size_t i, const char *set)
{
    obt_exec(f->conn, "UPDATE %s.outbox SET %s WHERE id = '%s'", f->ident,
             set, f->ids[i]);
}

static const char published_8d[] =
    "state = 'published', published_at = now() - interval '8 days'";
static const char published_1d[] =
    "state = 'published', published_at = now() - interval '1 day'";
static const char parked[] =
    "state = 'parked', retry_count = 5, last_error = 'message too large'";

static long long count_where(struct fixture *f, const char *table,
                             const char *where)
{
    char sql[512];

    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.%s WHERE %s",
             f->ident, table, where);
    return obt_int(f->conn, sql, 0, NULL);
}

static char *row_field(struct fixture *f, size_t i, const char *column)
{
    const char *params[1] = {f->ids[i]};
    char sql[512];

    snprintf(sql, sizeof(sql), "SELECT %s::text FROM %s.outbox "
             "WHERE id = $1::uuid", column, f->ident);
    return obt_value(f->conn, sql, 1, params);
}

static void assert_field(struct fixture *f, size_t i, const char *column,
                         const char *expected)
{
    char *value = row_field(f, i, column);

    if (expected == NULL)
        assert_null(value);
    else
        assert_string_equal(value, expected);
    free(value);
}

static int row_exists(struct fixture *f, size_t i)
{
    const char *params[1] = {f->ids[i]};
    char sql[256];

    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.outbox "
             "WHERE id = $1::uuid", f->ident);
    return obt_int(f->conn, sql, 1, params) == 1;
}

static ob_status_t *status_ok(struct fixture *f)
{
    ob_status_t *s = NULL;
    ob_error_t err;

    if (ob_status_new(f->conn, f->schema, &s, &err) != 0)
        fail_msg("status: %s: %s", ob_error_name(err.code), err.message);
    assert_non_null(s);
    return s;
}

/* 10 rows: 3 pending (one of them aged an hour), 2 in retry (one not
 * due), 2 parked, 2 published, 1 published long ago. */
static void make_mixed_rows(struct fixture *f)
{
    append_rows(f, "mix", 10);
    set_row(f, 0, "created_at = now() - interval '1 hour'");
    set_row(f, 3, "retry_count = 2, next_attempt_at = now() + "
                  "interval '1 hour'");
    set_row(f, 4, "retry_count = 1, next_attempt_at = now() - "
                  "interval '1 second'");
    set_row(f, 5, parked);
    set_row(f, 6, parked);
    set_row(f, 7, published_1d);
    set_row(f, 8, "state = 'published', published_at = now()");
    set_row(f, 9, "state = 'published', published_at = now() - "
                  "interval '2 hours'");
}

static void status_counts_every_state_exactly(void **state)
{
    struct fixture *f = *state;
    ob_status_t *s;

    make_mixed_rows(f);
    s = status_ok(f);
    assert_string_equal(ob_status_schema(s), f->schema);
    assert_int_equal(ob_status_pending(s), 5);
    assert_int_equal(ob_status_due(s), 4);
    assert_int_equal(ob_status_retrying(s), 2);
    assert_int_equal(ob_status_parked(s), 2);
    assert_int_equal(ob_status_published(s), 3);
    assert_true(ob_status_oldest_pending_age(s) >= 3600.0);
    assert_true(ob_status_oldest_pending_age(s) < 3600.0 + 600.0);
    assert_true(ob_status_oldest_published_age(s) >= 86400.0);
    assert_true(ob_status_oldest_published_age(s) < 86400.0 + 600.0);
    assert_non_null(strstr(ob_status_taken_at(s), "T"));
    assert_int_equal(ob_status_taken_at(s)[strlen(ob_status_taken_at(s)) - 1],
                     'Z');
    ob_status_destroy(s);
}

static void status_of_an_empty_outbox_has_no_ages(void **state)
{
    struct fixture *f = *state;
    ob_status_t *s = status_ok(f);
    int g;

    assert_int_equal(ob_status_pending(s), 0);
    assert_int_equal(ob_status_published(s), 0);
    assert_true(ob_status_oldest_pending_age(s) < 0);
    assert_true(ob_status_oldest_published_age(s) < 0);
    assert_int_equal(ob_status_lanes(s), OB_STATUS_LANES_DEFAULT);
    assert_int_equal(ob_status_lanes_recorded(s), 0);
    assert_int_equal(ob_status_lanes_owned(s), 0);
    assert_int_equal(ob_status_relays(s), 0);
    for (g = 0; g < ob_status_lanes(s); g++) {
        assert_int_equal(ob_status_lane_pid(s, g), 0);
        assert_int_equal(ob_status_lane_pending(s, g), 0);
        assert_null(ob_status_lane_application(s, g));
    }
    assert_int_equal(ob_status_lane_pid(s, -1), 0);
    assert_null(ob_status_lane_since(s, ob_status_lanes(s)));
    assert_int_equal(ob_status_inbox_count(s), 0);
    assert_null(ob_status_inbox_namespace(s, 0));
    ob_status_destroy(s);
}

static void status_counts_the_backlog_of_each_lane_group(void **state)
{
    struct fixture *f = *state;
    ob_status_t *s;
    PGresult *res;
    char sql[512];
    long long expected[OB_STATUS_LANES_DEFAULT] = {0}, sum = 0;
    int i, g;

    append_rows(f, "lane", 40);
    set_row(f, 0, published_1d);
    set_row(f, 1, parked);
    snprintf(sql, sizeof(sql), "SELECT lane %% 16, count(*) FROM %s.outbox "
             "WHERE state = 'pending' GROUP BY 1", f->ident);
    res = obt_query(f->conn, sql, 0, NULL);
    for (i = 0; i < PQntuples(res); i++)
        expected[atoi(PQgetvalue(res, i, 0))] = atoll(PQgetvalue(res, i, 1));
    PQclear(res);

    s = status_ok(f);
    for (g = 0; g < OB_STATUS_LANES_DEFAULT; g++) {
        assert_int_equal(ob_status_lane_pending(s, g), expected[g]);
        sum += ob_status_lane_pending(s, g);
    }
    assert_int_equal(sum, 38);
    assert_int_equal(ob_status_pending(s), 38);
    ob_status_destroy(s);
}

/* A session like a relay's control session, with its application name. */
static PGconn *relay_session(const char *application)
{
    const char *keys[3] = {"dbname", "application_name", NULL};
    const char *values[3] = {getenv("ONCEBOX_TEST_DB"), application, NULL};
    PGconn *conn = PQconnectdbParams(keys, values, 1);

    if (PQstatus(conn) != CONNECTION_OK)
        fail_msg("relay session: %s", PQerrorMessage(conn));
    return conn;
}

static void take_group(PGconn *conn, const char *schema, int g)
{
    char group[16], *got;
    const char *params[2] = {schema, group};

    snprintf(group, sizeof(group), "%d", g);
    got = obt_value(conn, "SELECT pg_try_advisory_lock(hashtext("
                    "'oncebox.relay:' || $1), $2::integer)", 2, params);
    assert_string_equal(got, "t");
    free(got);
}

/* The shared lock every live relay of a schema holds. */
static void join_relays(PGconn *conn, const char *schema)
{
    const char *params[1] = {schema};
    char *got = obt_value(conn, "SELECT pg_try_advisory_lock_shared("
                          "hashtext('oncebox.relay.member:' || $1), 0)", 1,
                          params);

    assert_string_equal(got, "t");
    free(got);
}

static void status_names_the_sessions_that_own_lane_groups(void **state)
{
    struct fixture *f = *state;
    PGconn *relay = relay_session("oncebox relay testhost/4242");
    PGconn *other = relay_session("oncebox relay elsewhere/1");
    long long pid = obt_int(relay, "SELECT pg_backend_pid()", 0, NULL);
    ob_status_t *s;
    int g;

    take_group(relay, f->schema, 3);
    take_group(relay, f->schema, 5);
    take_group(relay, f->schema, 700); /* not a group of 16 */
    take_group(other, "some other schema", 4);
    join_relays(relay, f->schema);
    join_relays(other, f->schema);
    join_relays(other, "some other schema");

    s = status_ok(f);
    assert_int_equal(ob_status_lanes_owned(s), 2);
    assert_int_equal(ob_status_relays(s), 2);
    for (g = 0; g < ob_status_lanes(s); g++) {
        if (g != 3 && g != 5) {
            assert_int_equal(ob_status_lane_pid(s, g), 0);
            continue;
        }
        assert_int_equal(ob_status_lane_pid(s, g), pid);
        assert_string_equal(ob_status_lane_application(s, g),
                            "oncebox relay testhost/4242");
        assert_string_equal(ob_status_lane_client_addr(s, g), "127.0.0.1");
        assert_non_null(ob_status_lane_since(s, g));
        assert_int_equal(strlen(ob_status_lane_since(s, g)), 24);
    }
    ob_status_destroy(s);
    PQfinish(other);
    PQfinish(relay);
}

static void status_splits_lanes_as_the_relays_recorded(void **state)
{
    struct fixture *f = *state;
    PGconn *relay = relay_session("oncebox relay fourlanes/1");
    long long expected[4] = {0};
    ob_status_t *s;
    PGresult *res;
    char sql[256];
    int i;

    snprintf(sql, sizeof(sql), "SELECT (pg_catalog.to_regclass('%s."
             "relay_config') IS NOT NULL)::int", f->ident);
    if (obt_int(f->conn, sql, 0, NULL) == 0) {
        PQfinish(relay);
        skip(); /* built without the relay's migration */
    }
    obt_exec(f->conn, "INSERT INTO %s.relay_config (lanes) VALUES (4)",
             f->ident);
    append_rows(f, "four", 20);
    snprintf(sql, sizeof(sql), "SELECT lane %% 4, count(*) FROM %s.outbox "
             "GROUP BY 1", f->ident);
    res = obt_query(f->conn, sql, 0, NULL);
    for (i = 0; i < PQntuples(res); i++)
        expected[atoi(PQgetvalue(res, i, 0))] = atoll(PQgetvalue(res, i, 1));
    PQclear(res);
    take_group(relay, f->schema, 3);
    take_group(relay, f->schema, 5); /* a group of 16, not of 4 */

    s = status_ok(f);
    assert_int_equal(ob_status_lanes(s), 4);
    assert_int_equal(ob_status_lanes_recorded(s), 1);
    assert_int_equal(ob_status_lanes_owned(s), 1);
    assert_int_equal(ob_status_lane_pid(s, 3),
                     obt_int(relay, "SELECT pg_backend_pid()", 0, NULL));
    for (i = 0; i < 4; i++)
        assert_int_equal(ob_status_lane_pending(s, i), expected[i]);
    assert_int_equal(ob_status_lane_pending(s, 4), 0);
    ob_status_destroy(s);
    PQfinish(relay);
}

static void a_lane_is_free_once_its_session_ends(void **state)
{
    struct fixture *f = *state;
    PGconn *relay = relay_session("oncebox relay testhost/77");
    long long deadline = obt_now_ms() + 30000;
    ob_status_t *s;
    int owned;

    take_group(relay, f->schema, 0);
    s = status_ok(f);
    assert_int_equal(ob_status_lanes_owned(s), 1);
    ob_status_destroy(s);

    /* The backend leaves pg_locks a moment after the socket closes. */
    PQfinish(relay);
    do {
        s = status_ok(f);
        owned = ob_status_lanes_owned(s);
        assert_int_equal(ob_status_lane_pid(s, 0) != 0, owned);
        ob_status_destroy(s);
    } while (owned != 0 && obt_now_ms() < deadline);
    assert_int_equal(owned, 0);
}

static void status_sizes_the_inbox_per_namespace(void **state)
{
    struct fixture *f = *state;
    ob_status_t *s;

    obt_exec(f->conn, "INSERT INTO %s.inbox (namespace, idempotency_key, "
             "claimed_at) SELECT 'billing', 'k' || i, now() - i * "
             "interval '1 minute' FROM generate_series(1, 30) i", f->ident);
    obt_exec(f->conn, "INSERT INTO %s.inbox (namespace, idempotency_key) "
             "VALUES ('audit', 'a1'), ('audit', 'a2')", f->ident);

    s = status_ok(f);
    assert_int_equal(ob_status_inbox_count(s), 2);
    assert_string_equal(ob_status_inbox_namespace(s, 0), "audit");
    assert_int_equal(ob_status_inbox_keys(s, 0), 2);
    assert_true(ob_status_inbox_oldest_age(s, 0) >= 0);
    assert_true(ob_status_inbox_oldest_age(s, 0) < 600);
    assert_string_equal(ob_status_inbox_namespace(s, 1), "billing");
    assert_int_equal(ob_status_inbox_keys(s, 1), 30);
    assert_true(ob_status_inbox_oldest_age(s, 1) >= 1800);
    assert_true(ob_status_inbox_oldest_age(s, 1) < 1800 + 600);
    ob_status_destroy(s);
}

static char *slot_name(const char *prefix)
{
    static unsigned n;
    char *name = NULL;

    if (asprintf(&name, "%s_%ld_%u", prefix, (long)getpid(), ++n) < 0)
        fail_msg("out of memory");
    return name;
}

static void status_lists_only_oncebox_slots_with_their_lag(void **state)
{
    struct fixture *f = *state;
    char *mine = slot_name("oncebox_admin_test");
    char *theirs = slot_name("other_admin_test");
    ob_status_t *s;
    size_t i, found = 0;

    obt_exec(f->conn, "SELECT pg_create_logical_replication_slot('%s', "
             "'pgoutput')", mine);
    obt_exec(f->conn, "SELECT pg_create_logical_replication_slot('%s', "
             "'pgoutput')", theirs);
    append_rows(f, "wal", 20); /* WAL the slot has not confirmed */

    s = status_ok(f);
    for (i = 0; i < ob_status_slot_count(s); i++) {
        assert_memory_equal(ob_status_slot_name(s, i), "oncebox", 7);
        if (strcmp(ob_status_slot_name(s, i), mine) != 0)
            continue;
        found++;
        assert_string_equal(ob_status_slot_plugin(s, i), "pgoutput");
        assert_false(ob_status_slot_active(s, i));
        assert_true(ob_status_slot_lag_bytes(s, i) > 0);
        assert_true(ob_status_slot_retained_bytes(s, i) >=
                    ob_status_slot_lag_bytes(s, i));
    }
    assert_int_equal(found, 1);
    ob_status_destroy(s);
    obt_exec(f->conn, "SELECT pg_drop_replication_slot('%s')", mine);
    obt_exec(f->conn, "SELECT pg_drop_replication_slot('%s')", theirs);
    free(mine);
    free(theirs);
}

/* A real relay on a thread of this test, against the test broker. */
struct relay_thread {
    ob_relay_t *relay;
    pthread_t thread;
    int rc;
    ob_error_t err;
};

static void *relay_main(void *arg)
{
    struct relay_thread *rt = arg;

    rt->rc = ob_relay_run(rt->relay, &rt->err);
    return NULL;
}

static void relay_start(struct fixture *f, struct relay_thread *rt)
{
    const char *brokers = getenv("ONCEBOX_TEST_BROKERS");
    ob_conf_t *conf;
    ob_error_t err;

    if (brokers == NULL || brokers[0] == '\0')
        fail_msg("ONCEBOX_TEST_BROKERS is not set");
    memset(rt, 0, sizeof(*rt));
    assert_int_equal(ob_conf_new(&conf, &err), 0);
    assert_int_equal(ob_conf_set(conf, "schema", f->schema, &err), 0);
    assert_int_equal(ob_conf_set(conf, "kafka.bootstrap.servers", brokers,
                                 &err), 0);
    if (ob_relay_new(&rt->relay, getenv("ONCEBOX_TEST_DB"), conf, &err) != 0)
        fail_msg("relay: %s", err.message);
    ob_conf_destroy(conf);
    assert_int_equal(pthread_create(&rt->thread, NULL, relay_main, rt), 0);
}

static void relay_stop(struct relay_thread *rt)
{
    ob_relay_stop(rt->relay);
    pthread_join(rt->thread, NULL);
    if (rt->rc != 0)
        fail_msg("relay: %s", rt->err.message);
    ob_relay_destroy(rt->relay);
}

/* Status snapshots until pred holds, for at most 60 s. */
static ob_status_t *status_until(struct fixture *f,
                                 int (*pred)(const ob_status_t *))
{
    long long deadline = obt_now_ms() + 60000;
    struct timespec pause = {0, 50000000};
    ob_status_t *s = status_ok(f);

    while (!pred(s) && obt_now_ms() < deadline) {
        ob_status_destroy(s);
        nanosleep(&pause, NULL);
        s = status_ok(f);
    }
    return s;
}

/*
 * The lane owners come from live views, the counts from a snapshot that
 * may predate the relay's recording of its lane count: wait for both.
 */
static int relay_owns_every_group(const ob_status_t *s)
{
    return ob_status_lanes_owned(s) == ob_status_lanes(s) &&
           ob_status_relays(s) == 1 && ob_status_lanes_recorded(s) == 1;
}

static int nineteen_published(const ob_status_t *s)
{
    return ob_status_published(s) == 19 && ob_status_pending(s) == 0;
}

static int twenty_published(const ob_status_t *s)
{
    return ob_status_published(s) == 20 && ob_status_parked(s) == 0;
}

static int no_relay_left(const ob_status_t *s)
{
    return ob_status_relays(s) == 0 && ob_status_lanes_owned(s) == 0;
}

static void status_shows_a_real_relay_and_replay_reaches_it(void **state)
{
    struct fixture *f = *state;
    struct relay_thread rt;
    ob_status_t *s;
    ob_error_t err;
    char suffix[32];
    const char *app;
    int g;

    relay_start(f, &rt);
    s = status_until(f, relay_owns_every_group);
    assert_true(relay_owns_every_group(s));
    assert_int_equal(ob_status_lanes_recorded(s), 1);
    snprintf(suffix, sizeof(suffix), "/%ld", (long)getpid());
    for (g = 0; g < ob_status_lanes(s); g++) {
        app = ob_status_lane_application(s, g);
        assert_non_null(app);
        assert_memory_equal(app, "oncebox relay ", 14);
        assert_string_equal(app + strlen(app) - strlen(suffix), suffix);
        assert_int_equal(ob_status_lane_pid(s, g), ob_status_lane_pid(s, 0));
    }
    ob_status_destroy(s);

    /* Parked in the appending transaction, so the relay never sees the
     * row pending before the replay. */
    append_rows_with(f, "real", 20, 7);
    s = status_until(f, nineteen_published);
    assert_true(nineteen_published(s));
    assert_int_equal(ob_status_parked(s), 1);
    ob_status_destroy(s);

    assert_int_equal(ob_parked_replay(f->conn, f->schema, f->ids[7], NULL,
                                      &err), 0);
    s = status_until(f, twenty_published);
    assert_true(twenty_published(s));
    ob_status_destroy(s);

    relay_stop(&rt);
    s = status_until(f, no_relay_left);
    assert_true(no_relay_left(s));
    ob_status_destroy(s);
}

static json_t *json_path(json_t *doc, const char *a, const char *b)
{
    json_t *v = json_object_get(doc, a);

    if (b != NULL)
        v = json_object_get(v, b);
    if (v == NULL)
        fail_msg("JSON has no %s%s%s", a, b ? "." : "", b ? b : "");
    return v;
}

static void status_json_holds_the_same_figures(void **state)
{
    struct fixture *f = *state;
    PGconn *relay = relay_session("oncebox relay jsonhost/9");
    json_t *doc, *groups, *owner;
    json_error_t jerr;
    ob_status_t *s;
    ob_error_t err;
    char *text;

    make_mixed_rows(f);
    obt_exec(f->conn, "INSERT INTO %s.inbox (namespace, idempotency_key) "
             "VALUES ('g1', 'k1')", f->ident);
    take_group(relay, f->schema, 2);
    s = status_ok(f);
    assert_int_equal(ob_status_json(s, &text, &err), 0);
    doc = json_loads(text, 0, &jerr);
    assert_non_null(doc);

    assert_string_equal(json_string_value(json_path(doc, "schema", NULL)),
                        f->schema);
    assert_int_equal(json_integer_value(json_path(doc, "outbox", "pending")),
                     5);
    assert_int_equal(json_integer_value(json_path(doc, "outbox", "due")), 4);
    assert_int_equal(
        json_integer_value(json_path(doc, "outbox", "retrying")), 2);
    assert_int_equal(json_integer_value(json_path(doc, "outbox", "parked")),
                     2);
    assert_int_equal(
        json_integer_value(json_path(doc, "outbox", "published")), 3);
    assert_true(json_real_value(json_path(doc, "outbox",
                                          "oldest_pending_age_s")) >= 3600);
    assert_int_equal(json_integer_value(json_path(doc, "lanes", "groups")),
                     16);
    assert_true(json_is_false(json_path(doc, "lanes", "recorded")));
    assert_int_equal(json_integer_value(json_path(doc, "lanes", "owned")),
                     1);
    assert_int_equal(json_integer_value(json_path(doc, "lanes", "relays")),
                     0);

    groups = json_path(doc, "lanes", "by_group");
    assert_int_equal(json_array_size(groups), 16);
    assert_true(json_is_null(json_object_get(json_array_get(groups, 0),
                                             "owner")));
    owner = json_object_get(json_array_get(groups, 2), "owner");
    assert_int_equal(json_integer_value(json_object_get(owner, "pid")),
                     ob_status_lane_pid(s, 2));
    assert_string_equal(
        json_string_value(json_object_get(owner, "application_name")),
        "oncebox relay jsonhost/9");
    assert_string_equal(
        json_string_value(json_object_get(owner, "client_addr")),
        "127.0.0.1");
    assert_int_equal(json_array_size(json_path(doc, "inbox", NULL)), 1);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_path(doc, "inbox", NULL), 0),
                            "namespace")),
                        "g1");
    assert_true(json_is_array(json_path(doc, "replication_slots", NULL)));

    json_decref(doc);
    ob_free(text);
    ob_status_destroy(s);
    PQfinish(relay);
}

static void status_refuses_a_schema_that_is_not_migrated(void **state)
{
    struct fixture *f = *state;
    ob_status_t *s = (ob_status_t *)&s;
    ob_parked_t *p = (ob_parked_t *)&p;
    ob_error_t err;

    assert_int_equal(ob_status_new(f->conn, "no_such_schema_here", &s, &err),
                     OB_ESCHEMA);
    assert_null(s);
    assert_non_null(strstr(err.message, "no_such_schema_here"));
    assert_int_equal(ob_parked_new(f->conn, "no_such_schema_here", 0, &p,
                                   &err), OB_ESCHEMA);
    assert_null(p);
    assert_int_equal(ob_status_new(f->conn, "", &s, &err), OB_EEMPTY);
    assert_int_equal(ob_status_new(NULL, NULL, &s, &err), OB_EINVAL);
    assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_IDLE);
}

static void status_runs_inside_the_callers_transaction(void **state)
{
    struct fixture *f = *state;
    ob_status_t *s;
    ob_error_t err;

    append_rows(f, "txn", 2);
    obt_exec(f->conn, "BEGIN");
    set_row(f, 0, parked);
    s = status_ok(f);
    assert_int_equal(ob_status_parked(s), 1);
    assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_INTRANS);
    ob_status_destroy(s);
    obt_exec(f->conn, "ROLLBACK");

    obt_exec(f->conn, "BEGIN");
    PQclear(PQexec(f->conn, "SELECT 1/0"));
    assert_int_equal(ob_status_new(f->conn, f->schema, &s, &err),
                     OB_ENOTXN);
    obt_exec(f->conn, "ROLLBACK");
}

static ob_parked_t *parked_ok(struct fixture *f, size_t limit)
{
    ob_parked_t *p = NULL;
    ob_error_t err;

    if (ob_parked_new(f->conn, f->schema, limit, &p, &err) != 0)
        fail_msg("parked: %s: %s", ob_error_name(err.code), err.message);
    return p;
}

static void parked_rows_are_listed_oldest_first(void **state)
{
    struct fixture *f = *state;
    ob_parked_t *p;

    append_rows(f, "park", 5);
    set_row(f, 3, parked);
    set_row(f, 1, "state = 'parked', retry_count = 7, topic = 'special', "
                  "last_error = 'Broker: Topic authorization failed'");
    set_row(f, 4, "state = 'parked'");

    p = parked_ok(f, 2);
    assert_int_equal(ob_parked_count(p), 2);
    assert_int_equal(ob_parked_total(p), 3);
    assert_string_equal(ob_parked_id(p, 0), f->ids[1]);
    assert_string_equal(ob_parked_aggregate_type(p, 0), "Order");
    assert_string_equal(ob_parked_aggregate_id(p, 0), "park-1");
    assert_string_equal(ob_parked_event_type(p, 0), "OrderPlaced");
    assert_int_equal(ob_parked_retry_count(p, 0), 7);
    assert_string_equal(ob_parked_last_error(p, 0),
                        "Broker: Topic authorization failed");
    assert_string_equal(ob_parked_topic(p, 0), "special");
    assert_int_equal(strlen(ob_parked_created_at(p, 0)), 24);
    assert_string_equal(ob_parked_id(p, 1), f->ids[3]);
    assert_null(ob_parked_topic(p, 1));
    assert_null(ob_parked_id(p, 2));
    assert_int_equal(ob_parked_retry_count(p, 2), -1);
    ob_parked_destroy(p);

    p = parked_ok(f, 0);
    assert_int_equal(ob_parked_count(p), 3);
    assert_string_equal(ob_parked_id(p, 2), f->ids[4]);
    assert_null(ob_parked_last_error(p, 2));
    ob_parked_destroy(p);
}

static void parked_json_holds_every_row(void **state)
{
    struct fixture *f = *state;
    json_t *doc, *row;
    json_error_t jerr;
    ob_parked_t *p;
    ob_error_t err;
    char *text;

    append_rows(f, "pj", 2);
    set_row(f, 1, parked);
    p = parked_ok(f, 10);
    assert_int_equal(ob_parked_json(p, &text, &err), 0);
    doc = json_loads(text, 0, &jerr);
    assert_non_null(doc);
    assert_int_equal(json_integer_value(json_object_get(doc, "total")), 1);
    assert_int_equal(json_array_size(json_object_get(doc, "rows")), 1);
    row = json_array_get(json_object_get(doc, "rows"), 0);
    assert_string_equal(json_string_value(json_object_get(row, "id")),
                        f->ids[1]);
    assert_string_equal(
        json_string_value(json_object_get(row, "aggregate_id")), "pj-1");
    assert_int_equal(json_integer_value(json_object_get(row, "retry_count")),
                     5);
    assert_string_equal(json_string_value(json_object_get(row, "last_error")),
                        "message too large");
    assert_true(json_is_null(json_object_get(row, "topic")));
    assert_non_null(json_string_value(json_object_get(row, "created_at")));
    json_decref(doc);
    ob_free(text);
    ob_parked_destroy(p);
}

static void replay_by_id_makes_one_row_pending_and_wakes_relays(void **state)
{
    struct fixture *f = *state;
    PGconn *listener = obt_connect();
    char channel[OB_SCHEMA_CHANNEL_SIZE], *quoted;
    PGnotify *n;
    long long count = -1;
    ob_error_t err;

    append_rows(f, "rp", 3);
    set_row(f, 0, parked);
    set_row(f, 1, parked);
    assert_int_equal(ob_schema_channel(f->schema, channel, sizeof(channel),
                                       &err), 0);
    quoted = obt_ident(channel);
    obt_exec(listener, "LISTEN %s", quoted);

    assert_int_equal(ob_parked_replay(f->conn, f->schema, f->ids[1], &count,
                                      &err), 0);
    assert_int_equal(count, 1);
    assert_field(f, 1, "state", "pending");
    assert_field(f, 1, "retry_count", "0");
    assert_field(f, 1, "last_error", "message too large");
    assert_field(f, 1, "(next_attempt_at <= now())", "true");
    assert_field(f, 0, "state", "parked");
    assert_field(f, 2, "state", "pending");

    n = obt_wait_notify(listener, 30000);
    assert_non_null(n);
    assert_string_equal(n->relname, channel);
    PQfreemem(n);
    free(quoted);
    PQfinish(listener);
}

static void replay_refuses_bad_and_unknown_ids(void **state)
{
    struct fixture *f = *state;
    long long count = 42;
    ob_error_t err;

    append_rows(f, "bad", 2);
    set_row(f, 0, parked);
    assert_int_equal(ob_parked_replay(f->conn, f->schema, "not-a-uuid",
                                      &count, &err), OB_EINVAL);
    assert_non_null(strstr(err.message, "not-a-uuid"));
    assert_int_equal(ob_parked_replay(f->conn, f->schema,
                                      "0190a5b2-7c4e-7d1a-9f3b-2c4d5e6f7a8",
                                      &count, &err), OB_EINVAL);
    assert_int_equal(ob_parked_replay(f->conn, f->schema,
                                      "0190a5b2-7c4e-7d1a-9f3b-2c4d5e6f7a8b",
                                      &count, &err), OB_ENOTFOUND);
    /* A pending row is not parked: nothing to replay. */
    assert_int_equal(ob_parked_replay(f->conn, f->schema, f->ids[1], &count,
                                      &err), OB_ENOTFOUND);
    assert_int_equal(count, 42);
    assert_field(f, 0, "state", "parked");
    assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_IDLE);
}

static void replay_all_makes_every_parked_row_pending(void **state)
{
    struct fixture *f = *state;
    long long count = -1;
    ob_error_t err;

    append_rows(f, "all", 4);
    set_row(f, 0, parked);
    set_row(f, 2, parked);
    set_row(f, 3, published_1d);
    assert_int_equal(ob_parked_replay(f->conn, f->schema, NULL, &count,
                                      &err), 0);
    assert_int_equal(count, 2);
    assert_int_equal(count_where(f, "outbox", "state = 'parked'"), 0);
    assert_int_equal(count_where(f, "outbox", "state = 'pending'"), 3);
    assert_field(f, 3, "state", "published");

    assert_int_equal(ob_parked_replay(f->conn, f->schema, NULL, &count,
                                      &err), 0);
    assert_int_equal(count, 0);
}

static void replay_in_a_rolled_back_transaction_changes_nothing(void **state)
{
    struct fixture *f = *state;
    long long count = 0;
    ob_error_t err;

    append_rows(f, "rb", 1);
    set_row(f, 0, parked);
    obt_exec(f->conn, "BEGIN");
    assert_int_equal(ob_parked_replay(f->conn, f->schema, NULL, &count,
                                      &err), 0);
    assert_int_equal(count, 1);
    obt_exec(f->conn, "ROLLBACK");
    assert_field(f, 0, "state", "parked");
}

/* A configuration for the purge: schema, and retention keys as given. */
static ob_conf_t *purge_conf(struct fixture *f, const char *batch)
{
    ob_conf_t *conf;
    ob_error_t err;

    assert_int_equal(ob_conf_new(&conf, &err), 0);
    assert_int_equal(ob_conf_set(conf, "schema", f->schema, &err), 0);
    if (batch != NULL)
        assert_int_equal(ob_conf_set(conf, "purge.batch.size", batch, &err),
                         0);
    return conf;
}

static void purge_ok(struct fixture *f, const ob_conf_t *conf,
                     unsigned targets, ob_purge_result_t *res)
{
    ob_error_t err;

    if (ob_purge(f->conn, NULL, conf, targets, res, &err) != 0)
        fail_msg("purge: %s: %s", ob_error_name(err.code), err.message);
}

/* 12 rows: 5 published 8 days ago, 3 a day ago, 2 pending and 2 parked
 * created 30 days ago. */
static void make_aged_rows(struct fixture *f)
{
    size_t i;

    append_rows(f, "age", 12);
    for (i = 0; i < 5; i++)
        set_row(f, i, published_8d);
    for (i = 5; i < 8; i++)
        set_row(f, i, published_1d);
    obt_exec(f->conn, "UPDATE %s.outbox SET created_at = now() - "
             "interval '30 days' WHERE state = 'pending'", f->ident);
    set_row(f, 8, parked);
    set_row(f, 9, parked);
}

static void purge_removes_exactly_the_old_published_rows(void **state)
{
    struct fixture *f = *state;
    ob_conf_t *conf = purge_conf(f, "2");
    ob_purge_result_t res = OB_PURGE_RESULT_INIT;
    size_t i;

    make_aged_rows(f);
    purge_ok(f, conf, OB_PURGE_OUTBOX, &res);
    assert_int_equal(res.outbox, 5);
    assert_int_equal(res.inbox, 0);
    assert_int_equal(res.dead_letters, 0);
    assert_int_equal(res.statements, 3); /* 2 + 2 + 1 */
    for (i = 0; i < 5; i++)
        assert_false(row_exists(f, i));
    assert_int_equal(count_where(f, "outbox", "state = 'published'"), 3);
    assert_int_equal(count_where(f, "outbox", "state = 'pending'"), 2);
    assert_int_equal(count_where(f, "outbox", "state = 'parked'"), 2);
    for (i = 5; i < 12; i++)
        assert_true(row_exists(f, i));

    /* Nothing left past the retention: one statement, nothing removed. */
    res = (ob_purge_result_t)OB_PURGE_RESULT_INIT;
    purge_ok(f, conf, OB_PURGE_OUTBOX, &res);
    assert_int_equal(res.outbox, 0);
    assert_int_equal(res.statements, 1);
    ob_conf_destroy(conf);
}

static void purge_with_a_shorter_retention_takes_more(void **state)
{
    struct fixture *f = *state;
    ob_conf_t *conf = purge_conf(f, NULL);
    ob_purge_result_t res = OB_PURGE_RESULT_INIT;
    ob_error_t err;

    make_aged_rows(f);
    assert_int_equal(ob_conf_set(conf, "relay.retention.s", "3600", &err), 0);
    purge_ok(f, conf, OB_PURGE_OUTBOX, &res);
    assert_int_equal(res.outbox, 8);
    assert_int_equal(res.statements, 1);
    assert_int_equal(count_where(f, "outbox", "true"), 4);
    assert_int_equal(count_where(f, "outbox", "state = 'published'"), 0);
    ob_conf_destroy(conf);
}

static void purge_skips_rows_another_session_holds(void **state)
{
    struct fixture *f = *state;
    PGconn *holder = obt_connect();
    ob_conf_t *conf = purge_conf(f, "10");
    ob_purge_result_t res = OB_PURGE_RESULT_INIT;

    make_aged_rows(f);
    obt_exec(holder, "BEGIN");
    obt_exec(holder, "SELECT 1 FROM %s.outbox WHERE id = '%s' FOR UPDATE",
             f->ident, f->ids[2]);
    /* A purge that waited would hit this instead of returning. */
    obt_exec(f->conn, "SET statement_timeout = '20s'");
    purge_ok(f, conf, OB_PURGE_OUTBOX, &res);
    assert_int_equal(res.outbox, 4);
    assert_field(f, 2, "state", "published");
    obt_exec(holder, "ROLLBACK");
    obt_exec(f->conn, "RESET statement_timeout");
    PQfinish(holder);
    ob_conf_destroy(conf);
}

static void make_inbox_and_dead_letters(struct fixture *f)
{
    obt_exec(f->conn, "INSERT INTO %s.inbox (namespace, idempotency_key, "
             "claimed_at) SELECT 'ns' || (i %% 3), 'old' || i, now() - "
             "interval '8 days' FROM generate_series(1, 25) i", f->ident);
    obt_exec(f->conn, "INSERT INTO %s.inbox (namespace, idempotency_key, "
             "claimed_at) SELECT 'ns' || (i %% 3), 'new' || i, now() - "
             "interval '6 days' FROM generate_series(1, 7) i", f->ident);
    obt_exec(f->conn, "INSERT INTO %s.dead_letters (consumer_group, topic, "
             "partition, \"offset\", reason, created_at) SELECT 'g' || "
             "(i %% 2), 't', 0, i, 'handler failed', now() - i * "
             "interval '10 days' FROM generate_series(1, 9) i", f->ident);
}

static void purge_removes_old_inbox_keys_and_dead_letters(void **state)
{
    struct fixture *f = *state;
    ob_conf_t *conf = purge_conf(f, "4");
    ob_purge_result_t res = OB_PURGE_RESULT_INIT;

    make_aged_rows(f);
    make_inbox_and_dead_letters(f);
    purge_ok(f, conf, OB_PURGE_INBOX, &res);
    assert_int_equal(res.inbox, 25);
    assert_int_equal(res.outbox, 0);
    assert_int_equal(count_where(f, "inbox", "true"), 7);
    assert_int_equal(count_where(f, "inbox", "idempotency_key LIKE 'old%'"),
                     0);
    assert_int_equal(count_where(f, "dead_letters", "true"), 9);
    assert_int_equal(count_where(f, "outbox", "true"), 12);

    /* 30 days: the letters 10 and 20 days old stay. */
    res = (ob_purge_result_t)OB_PURGE_RESULT_INIT;
    purge_ok(f, conf, OB_PURGE_DEAD_LETTERS, &res);
    assert_int_equal(res.dead_letters, 7);
    assert_int_equal(count_where(f, "dead_letters", "true"), 2);
    assert_int_equal(count_where(f, "dead_letters",
                                 "created_at > now() - interval '25 days'"),
                     2);
    ob_conf_destroy(conf);
}

static void purge_of_everything_reports_each_table(void **state)
{
    struct fixture *f = *state;
    ob_purge_result_t res = OB_PURGE_RESULT_INIT;
    ob_error_t err;

    make_aged_rows(f);
    make_inbox_and_dead_letters(f);
    /* No configuration: the defaults, and the schema named directly. */
    if (ob_purge(f->conn, f->schema, NULL, 0, &res, &err) != 0)
        fail_msg("purge: %s", err.message);
    assert_int_equal(res.outbox, 5);
    assert_int_equal(res.inbox, 25);
    assert_int_equal(res.dead_letters, 7);
    assert_int_equal(count_where(f, "outbox", "true"), 7);
}

static void purge_writes_only_what_an_older_result_holds(void **state)
{
    struct fixture *f = *state;
    ob_purge_result_t res;
    ob_error_t err;

    make_aged_rows(f);
    memset(&res, 0x5a, sizeof(res));
    res.size = offsetof(ob_purge_result_t, inbox);
    assert_int_equal(ob_purge(f->conn, f->schema, NULL, OB_PURGE_OUTBOX,
                              &res, &err), 0);
    assert_int_equal(res.outbox, 5);
    assert_int_equal(res.size, offsetof(ob_purge_result_t, inbox));
    assert_true(res.statements == 0x5a5a5a5a5a5a5a5aLL);

    res.size = 0;
    assert_int_equal(ob_purge(f->conn, f->schema, NULL, OB_PURGE_OUTBOX,
                              &res, &err), OB_EINVAL);
}

static void purge_refuses_a_transaction_and_bad_targets(void **state)
{
    struct fixture *f = *state;
    ob_purge_result_t res = OB_PURGE_RESULT_INIT;
    ob_error_t err;

    make_aged_rows(f);
    obt_exec(f->conn, "BEGIN");
    assert_int_equal(ob_purge(f->conn, f->schema, NULL, 0, &res, &err),
                     OB_ESTATE);
    assert_non_null(strstr(err.message, "outside a transaction"));
    obt_exec(f->conn, "ROLLBACK");
    assert_int_equal(ob_purge(f->conn, f->schema, NULL, 0x10, &res, &err),
                     OB_EINVAL);
    assert_int_equal(ob_purge(f->conn, "not_migrated_here", NULL, 0, &res,
                              &err), OB_ESCHEMA);
    assert_int_equal(count_where(f, "outbox", "true"), 12);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(status_counts_every_state_exactly),
        T(status_of_an_empty_outbox_has_no_ages),
        T(status_counts_the_backlog_of_each_lane_group),
        T(status_names_the_sessions_that_own_lane_groups),
        T(status_splits_lanes_as_the_relays_recorded),
        T(a_lane_is_free_once_its_session_ends),
        T(status_sizes_the_inbox_per_namespace),
        T(status_lists_only_oncebox_slots_with_their_lag),
        T(status_json_holds_the_same_figures),
        T(status_shows_a_real_relay_and_replay_reaches_it),
        T(status_refuses_a_schema_that_is_not_migrated),
        T(status_runs_inside_the_callers_transaction),
        T(parked_rows_are_listed_oldest_first),
        T(parked_json_holds_every_row),
        T(replay_by_id_makes_one_row_pending_and_wakes_relays),
        T(replay_refuses_bad_and_unknown_ids),
        T(replay_all_makes_every_parked_row_pending),
        T(replay_in_a_rolled_back_transaction_changes_nothing),
        T(purge_removes_exactly_the_old_published_rows),
        T(purge_with_a_shorter_retention_takes_more),
        T(purge_skips_rows_another_session_holds),
        T(purge_removes_old_inbox_keys_and_dead_letters),
        T(purge_of_everything_reports_each_table),
        T(purge_writes_only_what_an_older_result_holds),
        T(purge_refuses_a_transaction_and_bad_targets),
        cmocka_unit_test_setup_teardown(
            status_names_the_sessions_that_own_lane_groups, setup_odd,
            teardown),
        cmocka_unit_test_setup_teardown(
            replay_by_id_makes_one_row_pending_and_wakes_relays, setup_odd,
            teardown),
        cmocka_unit_test_setup_teardown(
            purge_removes_exactly_the_old_published_rows, setup_odd,
            teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
