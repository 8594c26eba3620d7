/*
 * The schema and its migrations against a real PostgreSQL
 * (ONCEBOX_TEST_DB). Every test works in schemas of its own, with names
 * no other run uses, and drops them in its teardown.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "oncebox/schema.h"

#include "tests/support/testlib.h"

/* Generous: a loaded CI machine under valgrind is slow, never this slow. */
#define WAIT_MS 30000

typedef struct fixture {
    PGconn *conn;
    char *schemas[4];
    int nschemas;
    char *role;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    f->conn = obt_connect();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    int i;

    /* A test may end with the connection lost or its transaction open. */
    if (PQstatus(f->conn) != CONNECTION_OK) {
        PQfinish(f->conn);
        f->conn = obt_connect();
    }
    if (PQtransactionStatus(f->conn) != PQTRANS_IDLE)
        obt_exec(f->conn, "ROLLBACK");
    obt_exec(f->conn, "RESET ROLE");

    for (i = 0; i < f->nschemas; i++) {
        obt_drop_schema(f->conn, f->schemas[i]);
        free(f->schemas[i]);
    }
    if (f->role != NULL) {
        obt_exec(f->conn, "DROP ROLE IF EXISTS %s", f->role);
        free(f->role);
    }
    PQfinish(f->conn);
    free(f);
    return 0;
}

/* A fresh schema name that the teardown drops. */
static const char *fixture_schema(fixture_t *f, const char *prefix)
{
    assert_true(f->nschemas < 4);
    f->schemas[f->nschemas] = obt_unique_name(prefix);
    return f->schemas[f->nschemas++];
}

/*
 * A fresh schema name padded with copies of unit up to the longest name
 * that fits. misalign: start the padding so that the name's byte 56 falls
 * inside a unit, where a cut at 56 bytes would split a character.
 */
static const char *fixture_long_schema(fixture_t *f, const char *prefix,
                                       const char *unit, int misalign)
{
    size_t ulen = strlen(unit), len;
    char *s;

    fixture_schema(f, prefix);
    s = realloc(f->schemas[f->nschemas - 1], OB_SCHEMA_NAME_MAX + 1);
    assert_non_null(s);
    f->schemas[f->nschemas - 1] = s;

    len = strlen(s);
    if (misalign && (56 - len) % ulen == 0)
        s[len++] = 'x';
    while (len + ulen <= OB_SCHEMA_NAME_MAX) {
        memcpy(s + len, unit, ulen);
        len += ulen;
    }
    s[len] = '\0';
    return s;
}

static void migrate_ok(PGconn *conn, const char *schema)
{
    ob_error_t err;
    int rc = ob_schema_migrate(conn, schema, &err);

    if (rc != 0)
        fail_msg("ob_schema_migrate(%s): %s: %s", schema, ob_error_name(rc),
                 err.message);
}

static int version_of(PGconn *conn, const char *schema)
{
    ob_error_t err;
    int version = -1, rc = ob_schema_version(conn, schema, &version, &err);

    if (rc != 0)
        fail_msg("ob_schema_version(%s): %s: %s", schema, ob_error_name(rc),
                 err.message);
    return version;
}

/* The rows of the migrations table, including their row versions. */
static char *migration_rows(PGconn *conn, const char *schema)
{
    char *ident = obt_ident(schema), *sql = NULL, *rows;

    assert_true(asprintf(&sql,
                         "SELECT string_agg(version || ':' || name || ':' ||"
                         " applied_at || ':' || xmin, ',' ORDER BY version)"
                         " FROM %s.oncebox_migrations",
                         ident) > 0);
    rows = obt_value(conn, sql, 0, NULL);
    free(sql);
    free(ident);
    return rows;
}

/* pg_get_indexdef() of index name in schema, or NULL when there is none. */
static char *index_def(PGconn *conn, const char *schema, const char *name)
{
    const char *params[2] = {schema, name};
    PGresult *res = obt_query(
        conn,
        "SELECT pg_catalog.pg_get_indexdef(c.oid) FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'i'",
        2, params);
    char *def = PQntuples(res) == 1 ? strdup(PQgetvalue(res, 0, 0)) : NULL;

    PQclear(res);
    return def;
}

static void assert_index(PGconn *conn, const char *schema, const char *name,
                         const char *expected)
{
    char *def = index_def(conn, schema, name);

    if (def == NULL)
        fail_msg("index %s is missing", name);
    if (strstr(def, expected) == NULL)
        fail_msg("index %s is \"%s\", expected it to contain \"%s\"", name, def,
                 expected);
    free(def);
}

/* The names of schema's relations of one kind, comma-separated, sorted. */
static char *relations(PGconn *conn, const char *schema, const char *kind)
{
    const char *params[2] = {schema, kind};

    return obt_value(conn,
                     "SELECT string_agg(c.relname, ',' ORDER BY c.relname)"
                     " FROM pg_catalog.pg_class c"
                     " JOIN pg_catalog.pg_namespace n"
                     " ON n.oid = c.relnamespace"
                     " WHERE n.nspname = $1 AND c.relkind = $2::\"char\"",
                     2, params);
}

static char *column_info(PGconn *conn, const char *schema, const char *table,
                         const char *what)
{
    const char *params[2] = {schema, table};
    char *sql = NULL, *value;

    assert_true(asprintf(&sql,
                         "SELECT string_agg(%s, ',' ORDER BY a.attnum)"
                         " FROM pg_catalog.pg_attribute a"
                         " JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
                         " JOIN pg_catalog.pg_namespace n"
                         " ON n.oid = c.relnamespace"
                         " WHERE n.nspname = $1 AND c.relname = $2"
                         " AND a.attnum > 0 AND NOT a.attisdropped",
                         what) > 0);
    value = obt_value(conn, sql, 2, params);
    free(sql);
    return value;
}

static void
migrate_creates_every_table_the_trigger_and_the_indexes(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_schema(f, "catalog");
    const char *params[1] = {s};
    PGconn *other = obt_connect();
    char *text;

    migrate_ok(f->conn, s);

    /* Run in its own transaction, committed: others see it at once. */
    assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_IDLE);
    assert_int_equal(obt_schema_exists(other, s), 1);
    PQfinish(other);

    text = relations(f->conn, s, "r");
    assert_string_equal(text, "consumer_offsets,dead_letters,inbox,"
                              "oncebox_migrations,outbox,relay_config");
    free(text);

    text = column_info(f->conn, s, "outbox", "a.attname");
    assert_string_equal(text, "id,aggregate_type,aggregate_id,event_type,"
                              "payload,idempotency_key,created_at,"
                              "published_at,retry_count,last_error,seq,"
                              "topic,headers,lane,state,next_attempt_at");
    free(text);
    text = column_info(f->conn, s, "outbox",
                       "a.attname || '=' || a.attgenerated::text || "
                       "a.attidentity::text");
    assert_non_null(strstr(text, ",seq=a,"));
    assert_non_null(strstr(text, ",lane=s,"));
    free(text);
    text = column_info(f->conn, s, "inbox", "a.attname");
    assert_string_equal(text, "namespace,idempotency_key,payload_hash,"
                              "claimed_at,topic,partition,offset");
    free(text);
    text = column_info(f->conn, s, "consumer_offsets", "a.attname");
    assert_string_equal(text, "consumer_group,topic,partition,next_offset,"
                              "updated_at");
    free(text);
    text = column_info(f->conn, s, "dead_letters", "a.attname");
    assert_string_equal(text, "id,consumer_group,topic,partition,offset,key,"
                              "value,headers,idempotency_key,reason,"
                              "attempts,created_at");
    free(text);

    assert_index(f->conn, s, "outbox_pkey", "UNIQUE INDEX outbox_pkey");
    assert_index(f->conn, s, "outbox_idempotency_key_key",
                 "UNIQUE INDEX outbox_idempotency_key_key");
    assert_index(f->conn, s, "outbox_claim_idx",
                 "USING btree (lane, seq) WHERE (state = 'pending'::text)");
    assert_index(f->conn, s, "outbox_published_at_idx",
                 "USING btree (published_at) "
                 "WHERE (published_at IS NOT NULL)");
    assert_index(f->conn, s, "outbox_parked_idx",
                 "USING btree (seq) WHERE (state = 'parked'::text)");
    assert_index(f->conn, s, "outbox_aggregate_idx",
                 "USING btree (aggregate_id, seq)");
    assert_index(f->conn, s, "inbox_pkey",
                 "USING btree (namespace, idempotency_key)");
    assert_index(f->conn, s, "inbox_claimed_at_idx",
                 "USING btree (namespace, claimed_at)");
    assert_index(f->conn, s, "consumer_offsets_pkey",
                 "USING btree (consumer_group, topic, partition)");
    assert_index(f->conn, s, "dead_letters_pkey", "USING btree (id)");
    assert_index(f->conn, s, "oncebox_migrations_pkey",
                 "USING btree (version)");

    /* 4 is TRIGGER_TYPE_INSERT alone: after, per statement, insert only. */
    assert_int_equal(obt_int(f->conn,
                             "SELECT t.tgtype FROM pg_catalog.pg_trigger t"
                             " JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid"
                             " JOIN pg_catalog.pg_namespace n"
                             " ON n.oid = c.relnamespace"
                             " WHERE n.nspname = $1 AND c.relname = 'outbox'"
                             " AND t.tgname = 'outbox_notify'"
                             " AND t.tgenabled = 'O' AND NOT t.tgisinternal",
                             1, params),
                     4);
}

static void migrations_table_lists_each_migration(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_schema(f, "rows");
    char *ident = obt_ident(s), *sql = NULL, *rows;

    migrate_ok(f->conn, s);
    assert_true(ob_schema_latest() >= 2);
    assert_int_equal(version_of(f->conn, s), ob_schema_latest());

    assert_true(asprintf(&sql,
                         "SELECT string_agg(version || '=' || name, ','"
                         " ORDER BY version) FROM %s.oncebox_migrations",
                         ident) > 0);
    rows = obt_value(f->conn, sql, 0, NULL);
    assert_non_null(rows);
    assert_memory_equal(rows, "1=outbox,2=inbox", 16);
    free(rows);
    free(sql);
    free(ident);
}

static void migrate_twice_changes_nothing(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_schema(f, "twice");
    char *before, *after, *objects_before, *objects_after;
    const char *params[1] = {s};
    static const char objects_sql[] =
        "SELECT string_agg(c.relname || ':' || c.xmin, ','"
        " ORDER BY c.relname) FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1";

    migrate_ok(f->conn, s);
    before = migration_rows(f->conn, s);
    objects_before = obt_value(f->conn, objects_sql, 1, params);

    migrate_ok(f->conn, s);
    after = migration_rows(f->conn, s);
    objects_after = obt_value(f->conn, objects_sql, 1, params);

    assert_int_equal(version_of(f->conn, s), ob_schema_latest());
    assert_string_equal(before, after);
    assert_string_equal(objects_before, objects_after);
    free(before);
    free(after);
    free(objects_before);
    free(objects_after);
}

static void assert_usable_schema(PGconn *conn, const char *s)
{
    char *ident = obt_ident(s);

    assert_int_equal(obt_schema_exists(conn, s), 1);
    assert_int_equal(version_of(conn, s), ob_schema_latest());
    obt_exec(conn,
             "INSERT INTO %s.outbox (id, aggregate_type, aggregate_id,"
             " event_type, payload, idempotency_key)"
             " VALUES (gen_random_uuid(), 'Order', 'o-1', 'Created', '{}',"
             " 'k-1')",
             ident);
    free(ident);
}

static void migrate_keeps_a_name_that_needs_quoting(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_schema(f, "Odd \"Schema\" name");

    migrate_ok(f->conn, s);
    assert_usable_schema(f->conn, s);
}

static void migrate_keeps_a_mixed_case_name(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_schema(f, "MixedCase");
    char *lower = strdup(s), *p;

    assert_non_null(lower);
    for (p = lower; *p != '\0'; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);

    migrate_ok(f->conn, s);
    assert_usable_schema(f->conn, s);
    assert_int_equal(obt_schema_exists(f->conn, lower), 0);
    free(lower);
}

static void migrate_takes_the_longest_name_and_no_longer(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_long_schema(f, "long", "x", 0);
    char name[OB_SCHEMA_NAME_MAX + 2];
    ob_error_t err;

    assert_int_equal(strlen(s), OB_SCHEMA_NAME_MAX);
    migrate_ok(f->conn, s);
    assert_usable_schema(f->conn, s);

    snprintf(name, sizeof(name), "%sx", s);
    assert_int_equal(ob_schema_migrate(f->conn, name, &err), OB_ETOOLONG);
    assert_int_equal(err.code, OB_ETOOLONG);

    /* Quotes double in the identifier: the longest statements there are. */
    s = fixture_long_schema(f, "\"", "\"", 0);
    assert_int_equal(strlen(s), OB_SCHEMA_NAME_MAX);
    migrate_ok(f->conn, s);
    assert_usable_schema(f->conn, s);
}

static void migrate_refuses_bad_arguments(void **state)
{
    fixture_t *f = *state;
    ob_error_t err;
    int version;

    assert_int_equal(ob_schema_migrate(NULL, "x", &err), OB_EINVAL);
    assert_int_equal(ob_schema_migrate(f->conn, "", &err), OB_EEMPTY);
    assert_int_equal(ob_schema_migrate(f->conn, "bad\xff", &err), OB_EUTF8);
    assert_int_equal(ob_schema_migrate(f->conn, "pg_oncebox", &err), OB_ENAME);
    assert_int_equal(err.domain, OB_DOMAIN_ONCEBOX);
    assert_false(ob_error_is_retriable(&err));
    assert_int_equal(ob_schema_version(f->conn, "x", NULL, &err), OB_EINVAL);
    assert_int_equal(ob_schema_version(NULL, "x", &version, &err), OB_EINVAL);

    /* Nothing was sent: the connection is as it was. */
    assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_IDLE);
    assert_int_equal(obt_schema_exists(f->conn, "pg_oncebox"), 0);
}

static void version_is_zero_before_migrate(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_schema(f, "empty");
    char *ident = obt_ident(s);

    assert_int_equal(version_of(f->conn, s), 0);
    obt_exec(f->conn, "CREATE SCHEMA %s", ident);
    assert_int_equal(version_of(f->conn, s), 0);
    migrate_ok(f->conn, s);
    assert_int_equal(version_of(f->conn, s), ob_schema_latest());
    free(ident);
}

static void migrate_with_null_uses_the_default_schema(void **state)
{
    fixture_t *f = *state;

    /* The default name is shared: leave alone a database that has it. */
    if (obt_schema_exists(f->conn, OB_SCHEMA_DEFAULT))
        skip();
    f->schemas[f->nschemas++] = strdup(OB_SCHEMA_DEFAULT);

    migrate_ok(f->conn, NULL);
    assert_int_equal(obt_schema_exists(f->conn, OB_SCHEMA_DEFAULT), 1);
    assert_int_equal(version_of(f->conn, NULL), ob_schema_latest());
    assert_int_equal(version_of(f->conn, OB_SCHEMA_DEFAULT),
                     ob_schema_latest());
}

static void migrate_in_the_callers_transaction_leaves_commit_to_it(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_schema(f, "caller");
    PGconn *other = obt_connect();

    obt_exec(f->conn, "BEGIN");
    migrate_ok(f->conn, s);
    assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_INTRANS);
    assert_int_equal(version_of(f->conn, s), ob_schema_latest());
    assert_int_equal(obt_schema_exists(other, s), 0);

    obt_exec(f->conn, "COMMIT");
    assert_int_equal(obt_schema_exists(other, s), 1);
    assert_int_equal(version_of(other, s), ob_schema_latest());
    PQfinish(other);
}

static void migrate_in_a_transaction_then_rollback_leaves_nothing(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_schema(f, "rollback");

    obt_exec(f->conn, "BEGIN");
    migrate_ok(f->conn, s);
    assert_int_equal(obt_schema_exists(f->conn, s), 1);
    obt_exec(f->conn, "ROLLBACK");

    assert_int_equal(obt_schema_exists(f->conn, s), 0);
    assert_int_equal(version_of(f->conn, s), 0);
}

static void migrate_refuses_an_aborted_transaction(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_schema(f, "aborted");
    ob_error_t err;
    PGresult *res;
    int version;

    obt_exec(f->conn, "BEGIN");
    res = PQexec(f->conn, "SELECT 1 / 0");
    assert_int_equal(PQresultStatus(res), PGRES_FATAL_ERROR);
    PQclear(res);
    assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_INERROR);

    memset(&err, 0, sizeof(err));
    assert_int_equal(ob_schema_migrate(f->conn, s, &err), OB_ENOTXN);
    assert_int_equal(err.code, OB_ENOTXN);
    assert_int_equal(err.domain, OB_DOMAIN_ONCEBOX);
    assert_non_null(strstr(err.message, "aborted"));
    assert_int_equal(ob_schema_version(f->conn, s, &version, &err), OB_ENOTXN);

    obt_exec(f->conn, "ROLLBACK");
    assert_int_equal(obt_schema_exists(f->conn, s), 0);
}

static void migrate_refuses_a_newer_schema(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_schema(f, "newer");
    char *ident = obt_ident(s), *rows, *after, expect[64];
    int newer = ob_schema_latest() + 1;
    ob_error_t err;

    migrate_ok(f->conn, s);
    obt_exec(f->conn,
             "INSERT INTO %s.oncebox_migrations (version, name)"
             " VALUES (%d, 'from_the_future')",
             ident, newer);
    rows = migration_rows(f->conn, s);

    memset(&err, 0, sizeof(err));
    assert_int_equal(ob_schema_migrate(f->conn, s, &err), OB_ESCHEMA);
    assert_int_equal(err.code, OB_ESCHEMA);
    snprintf(expect, sizeof(expect), "at version %d", newer);
    assert_non_null(strstr(err.message, expect));
    assert_non_null(strstr(err.message, "upgrade oncebox"));
    assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_IDLE);
    assert_int_equal(version_of(f->conn, s), newer);

    /* In the caller's transaction the failure undoes only its own part. */
    obt_exec(f->conn, "BEGIN");
    obt_exec(f->conn, "CREATE TABLE %s.mine (x integer)", ident);
    assert_int_equal(ob_schema_migrate(f->conn, s, &err), OB_ESCHEMA);
    assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_INTRANS);
    obt_exec(f->conn, "INSERT INTO %s.mine VALUES (1)", ident);
    obt_exec(f->conn, "ROLLBACK");

    after = migration_rows(f->conn, s);
    assert_string_equal(after, rows);
    free(after);
    free(rows);
    free(ident);
}

static void a_failing_migrate_undoes_only_its_own_work(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_schema(f, "clash");
    char *ident = obt_ident(s), *sql = NULL, *tables;
    ob_error_t err;

    /* A table in the way makes the first migration fail half-way. */
    obt_exec(f->conn, "CREATE SCHEMA %s", ident);
    obt_exec(f->conn, "CREATE TABLE %s.outbox (x integer)", ident);

    memset(&err, 0, sizeof(err));
    assert_int_equal(ob_schema_migrate(f->conn, s, &err), OB_EPG);
    assert_int_equal(err.domain, OB_DOMAIN_POSTGRES);
    assert_string_equal(err.sqlstate, "42P07");
    assert_false(ob_error_is_retriable(&err));
    assert_non_null(strstr(err.message, "applying migration 1 (outbox)"));
    assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_IDLE);
    tables = relations(f->conn, s, "r");
    assert_string_equal(tables, "outbox");
    free(tables);

    /* In the caller's transaction, what the caller did survives. */
    obt_exec(f->conn, "BEGIN");
    obt_exec(f->conn, "INSERT INTO %s.outbox VALUES (1)", ident);
    assert_int_equal(ob_schema_migrate(f->conn, s, &err), OB_EPG);
    assert_string_equal(err.sqlstate, "42P07");
    assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_INTRANS);
    obt_exec(f->conn, "INSERT INTO %s.outbox VALUES (2)", ident);
    obt_exec(f->conn, "COMMIT");

    assert_true(asprintf(&sql, "SELECT count(*) FROM %s.outbox", ident) > 0);
    assert_int_equal(obt_int(f->conn, sql, 0, NULL), 2);
    tables = relations(f->conn, s, "r");
    assert_string_equal(tables, "outbox");
    free(tables);
    assert_int_equal(version_of(f->conn, s), 0);
    free(sql);
    free(ident);
}

/* One migrate on a connection of its own, for the concurrency tests. */
typedef struct migrator {
    PGconn *conn;
    const char *schema;
    pthread_barrier_t *start; /* NULL: start at once */
    int rc;
    ob_error_t err;
} migrator_t;

static void *migrator_main(void *arg)
{
    migrator_t *m = arg;

    if (m->start != NULL)
        pthread_barrier_wait(m->start);
    m->rc = ob_schema_migrate(m->conn, m->schema, &m->err);
    return NULL;
}

static void assert_migrated(const migrator_t *m)
{
    if (m->rc != 0)
        fail_msg("concurrent migrate: %s: %s", ob_error_name(m->rc),
                 m->err.message);
}

static int migration_count(PGconn *conn, const char *schema)
{
    char *ident = obt_ident(schema), *sql = NULL;
    int n;

    assert_true(asprintf(&sql, "SELECT count(*) FROM %s.oncebox_migrations",
                         ident) > 0);
    n = (int)obt_int(conn, sql, 0, NULL);
    free(sql);
    free(ident);
    return n;
}

/* Whether the backend pid waits for an advisory lock, polled until then. */
static int waits_for_advisory_lock(PGconn *watcher, int pid)
{
    long long deadline = obt_now_ms() + WAIT_MS;
    char pid_text[16];
    const char *params[1] = {pid_text};

    snprintf(pid_text, sizeof(pid_text), "%d", pid);
    while (obt_now_ms() < deadline) {
        if (obt_int(watcher,
                    "SELECT count(*) FROM pg_catalog.pg_locks"
                    " WHERE pid = $1::integer AND locktype = 'advisory'"
                    " AND NOT granted",
                    1, params) > 0)
            return 1;
        usleep(10000);
    }
    return 0;
}

static void a_second_migrate_waits_for_the_first_and_succeeds(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_schema(f, "serial");
    migrator_t second = {.conn = obt_connect(), .schema = s};
    PGconn *watcher = obt_connect();
    pthread_t thread;

    /* The first holds the lock until its caller commits. */
    obt_exec(f->conn, "BEGIN");
    migrate_ok(f->conn, s);

    assert_int_equal(pthread_create(&thread, NULL, migrator_main, &second), 0);
    assert_true(waits_for_advisory_lock(watcher, PQbackendPID(second.conn)));
    obt_exec(f->conn, "COMMIT");
    assert_int_equal(pthread_join(thread, NULL), 0);

    assert_migrated(&second);
    assert_int_equal(migration_count(f->conn, s), ob_schema_latest());
    assert_int_equal(version_of(f->conn, s), ob_schema_latest());
    PQfinish(second.conn);
    PQfinish(watcher);
}

static void two_threads_migrating_at_once_both_succeed(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_schema(f, "race");
    pthread_barrier_t start;
    migrator_t m[2];
    pthread_t threads[2];
    int i;

    assert_int_equal(pthread_barrier_init(&start, NULL, 2), 0);
    for (i = 0; i < 2; i++) {
        m[i] =
            (migrator_t){.conn = obt_connect(), .schema = s, .start = &start};
        assert_int_equal(
            pthread_create(&threads[i], NULL, migrator_main, &m[i]), 0);
    }
    for (i = 0; i < 2; i++)
        assert_int_equal(pthread_join(threads[i], NULL), 0);
    pthread_barrier_destroy(&start);

    for (i = 0; i < 2; i++) {
        assert_migrated(&m[i]);
        PQfinish(m[i].conn);
    }
    assert_int_equal(migration_count(f->conn, s), ob_schema_latest());
    assert_int_equal(version_of(f->conn, s), ob_schema_latest());
}

static void listen(PGconn *conn, const char *channel)
{
    char *ident = obt_ident(channel);

    obt_exec(conn, "LISTEN %s", ident);
    free(ident);
}

/*
 * Counts the notifications on channel that arrive before one the
 * listener sends itself: notifications are delivered in commit order, so
 * afterwards nothing committed earlier is still on its way.
 */
static int notifications_before_marker(PGconn *listener, const char *channel)
{
    char *marker = obt_unique_name("marker"), *ident = obt_ident(marker);
    PGnotify *n;
    int count = 0;

    listen(listener, marker);
    obt_exec(listener, "NOTIFY %s", ident);
    for (;;) {
        n = obt_wait_notify(listener, WAIT_MS);
        if (n == NULL)
            fail_msg("the marker notification did not arrive");
        if (strcmp(n->relname, marker) == 0) {
            PQfreemem(n);
            break;
        }
        count += strcmp(n->relname, channel) == 0;
        PQfreemem(n);
    }
    free(ident);
    free(marker);
    return count;
}

static void insert_rows(PGconn *conn, const char *schema, int rows)
{
    char *ident = obt_ident(schema);

    obt_exec(conn,
             "INSERT INTO %s.outbox (id, aggregate_type, aggregate_id,"
             " event_type, payload, idempotency_key)"
             " SELECT gen_random_uuid(), 'Order', 'o-' || i, 'Created',"
             " '{}', gen_random_uuid()::text"
             " FROM generate_series(1, %d) AS i",
             ident, rows);
    free(ident);
}

static void expect_notify_on_insert(fixture_t *f, const char *s)
{
    char channel[OB_SCHEMA_CHANNEL_SIZE];
    PGconn *listener = obt_connect();
    ob_error_t err;
    PGnotify *n;

    migrate_ok(f->conn, s);
    assert_int_equal(ob_schema_channel(s, channel, sizeof(channel), &err), 0);
    listen(listener, channel);

    /* A rolled back insert wakes nobody. */
    obt_exec(f->conn, "BEGIN");
    insert_rows(f->conn, s, 1);
    obt_exec(f->conn, "ROLLBACK");
    assert_int_equal(notifications_before_marker(listener, channel), 0);

    /* A committed batch wakes the listener once. */
    insert_rows(f->conn, s, 3);
    n = obt_wait_notify(listener, WAIT_MS);
    assert_non_null(n);
    assert_string_equal(n->relname, channel);
    assert_int_equal(n->be_pid, PQbackendPID(f->conn));
    PQfreemem(n);
    assert_int_equal(notifications_before_marker(listener, channel), 0);
    PQfinish(listener);
}

static void insert_notifies_the_schema_channel(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_schema(f, "Notify \"Me\"");
    char channel[OB_SCHEMA_CHANNEL_SIZE];

    assert_int_equal(ob_schema_channel(s, channel, sizeof(channel), NULL), 0);
    assert_int_equal(strlen(channel), strlen(s) + strlen(".outbox"));
    assert_memory_equal(channel, s, strlen(s));
    assert_string_equal(channel + strlen(s), ".outbox");
    expect_notify_on_insert(f, s);
}

/*
 * A name past 56 bytes whose 57th byte is inside a three-byte character,
 * so that both the trigger and ob_schema_channel() must cut before it.
 */
static void long_schema_names_notify_on_a_cut_channel(void **state)
{
    fixture_t *f = *state;
    char channel[OB_SCHEMA_CHANNEL_SIZE], *encoding;
    const char *s;
    size_t base, keep;

    encoding = obt_value(f->conn, "SHOW server_encoding", 0, NULL);
    if (strcmp(encoding, "UTF8") != 0) {
        free(encoding);
        skip();
    }
    free(encoding);

    s = fixture_long_schema(f, "long", "\xe2\x82\xac", 1); /* U+20AC */
    base = strcspn(s, "\xe2");
    keep = base + (56 - base) / 3 * 3;
    assert_true(strlen(s) > 56);
    assert_true(keep < 56);

    assert_int_equal(ob_schema_channel(s, channel, sizeof(channel), NULL), 0);
    assert_int_equal(strlen(channel), keep + strlen(".outbox"));
    assert_memory_equal(channel, s, keep);
    assert_string_equal(channel + keep, ".outbox");
    expect_notify_on_insert(f, s);
}

static void channel_refuses_a_small_buffer(void **state)
{
    char buf[OB_SCHEMA_CHANNEL_SIZE];
    ob_error_t err;

    (void)state;
    assert_int_equal(ob_schema_channel(NULL, buf, sizeof(buf), &err), 0);
    assert_string_equal(buf, OB_SCHEMA_DEFAULT ".outbox");
    assert_int_equal(ob_schema_channel("x", buf, sizeof(buf) - 1, &err),
                     OB_EINVAL);
    assert_int_equal(ob_schema_channel("x", NULL, sizeof(buf), &err),
                     OB_EINVAL);
    assert_int_equal(ob_schema_channel("", buf, sizeof(buf), &err), OB_EEMPTY);
}

static void lane_is_a_stable_bucket_of_the_aggregate_id(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_schema(f, "lane");
    char *ident = obt_ident(s), *sql = NULL;
    PGresult *res;

    migrate_ok(f->conn, s);

    /* 200 aggregates, twice each, in two statements. */
    insert_rows(f->conn, s, 200);
    insert_rows(f->conn, s, 200);

    assert_true(asprintf(&sql,
                         "SELECT min(lane), max(lane), count(DISTINCT lane),"
                         " count(*) FILTER (WHERE lane IS DISTINCT FROM"
                         " (hashtextextended(aggregate_id, 0) & 1023)::int),"
                         " (SELECT count(*) FROM (SELECT aggregate_id"
                         " FROM %s.outbox GROUP BY aggregate_id"
                         " HAVING count(DISTINCT lane) <> 1) AS split),"
                         " count(*) FROM %s.outbox",
                         ident, ident) > 0);
    res = obt_query(f->conn, sql, 0, NULL);
    assert_true(atoi(PQgetvalue(res, 0, 0)) >= 0);
    assert_true(atoi(PQgetvalue(res, 0, 1)) <= 1023);
    /* 200 keys into 1024 buckets: all but a few distinct. */
    assert_true(atoi(PQgetvalue(res, 0, 2)) > 150);
    assert_int_equal(atoi(PQgetvalue(res, 0, 3)), 0);
    assert_int_equal(atoi(PQgetvalue(res, 0, 4)), 0);
    assert_int_equal(atoi(PQgetvalue(res, 0, 5)), 400);
    PQclear(res);

    /* The lane is computed, never written. */
    obt_exec_fails(f->conn, "428C9",
                   "INSERT INTO %s.outbox (id, aggregate_type, aggregate_id,"
                   " event_type, payload, idempotency_key, lane)"
                   " VALUES (gen_random_uuid(), 'A', 'a', 'E', '{}', 'k', 7)",
                   ident);
    free(sql);
    free(ident);
}

/* Inserts an outbox row with the given column list and values. */
static void outbox_refuses(PGconn *conn, const char *ident,
                           const char *sqlstate, const char *columns,
                           const char *values)
{
    obt_exec_fails(conn, sqlstate,
                   "INSERT INTO %s.outbox (id, aggregate_type, aggregate_id,"
                   " event_type, payload, idempotency_key%s)"
                   " VALUES (gen_random_uuid(), %s)",
                   ident, columns, values);
}

static void outbox_checks_refuse_bad_rows(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_schema(f, "checks");
    char *ident = obt_ident(s);

    migrate_ok(f->conn, s);
    outbox_refuses(f->conn, ident, "23514", "", "'', 'a', 'E', '{}', 'k1'");
    outbox_refuses(f->conn, ident, "23514", "",
                   "repeat('t', 101), 'a', 'E', '{}', 'k1'");
    outbox_refuses(f->conn, ident, "23514", "",
                   "'A', repeat('a', 256), 'E', '{}', 'k1'");
    outbox_refuses(f->conn, ident, "23514", "",
                   "'A', 'a', repeat('e', 101), '{}', 'k1'");
    outbox_refuses(f->conn, ident, "23514", "", "'A', 'a', 'E', '{}', ''");
    outbox_refuses(f->conn, ident, "23514", ", state",
                   "'A', 'a', 'E', '{}', 'k1', 'lost'");
    outbox_refuses(f->conn, ident, "23514", ", state",
                   "'A', 'a', 'E', '{}', 'k1', 'published'");
    outbox_refuses(f->conn, ident, "23514", ", headers",
                   "'A', 'a', 'E', '{}', 'k1', '{\"n\": 1}'");
    outbox_refuses(f->conn, ident, "23514", ", headers",
                   "'A', 'a', 'E', '{}', 'k1', '[\"x\"]'");
    outbox_refuses(f->conn, ident, "23514", ", topic",
                   "'A', 'a', 'E', '{}', 'k1', 'has space'");
    outbox_refuses(f->conn, ident, "23514", ", topic",
                   "'A', 'a', 'E', '{}', 'k1', '..'");
    outbox_refuses(f->conn, ident, "23514", ", retry_count",
                   "'A', 'a', 'E', '{}', 'k1', -1");

    /* The good row, then the same key again. */
    obt_exec(f->conn,
             "INSERT INTO %s.outbox (id, aggregate_type, aggregate_id,"
             " event_type, payload, idempotency_key, topic, headers)"
             " VALUES (gen_random_uuid(), 'A', 'a', 'E', '{}', 'k1',"
             " 'orders.v1_x-y', '{\"tenant\": \"t1\"}')",
             ident);
    outbox_refuses(f->conn, ident, "23505", "", "'A', 'a', 'E', '{}', 'k1'");
    free(ident);
}

static void an_up_to_date_migrate_needs_no_create_privilege(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_schema(f, "priv");
    const char *fresh = fixture_schema(f, "priv_fresh");
    char *ident = obt_ident(s);
    ob_error_t err;

    if (obt_int(f->conn,
                "SELECT count(*) FROM pg_catalog.pg_roles"
                " WHERE rolname = current_user AND rolsuper",
                0, NULL) == 0)
        skip();

    migrate_ok(f->conn, s);
    f->role = obt_ident(f->schemas[0]);
    obt_exec(f->conn, "CREATE ROLE %s NOLOGIN", f->role);
    obt_exec(f->conn, "GRANT USAGE ON SCHEMA %s TO %s", ident, f->role);
    obt_exec(f->conn, "GRANT SELECT ON %s.oncebox_migrations TO %s", ident,
             f->role);
    obt_exec(f->conn, "SET ROLE %s", f->role);

    migrate_ok(f->conn, s);
    assert_int_equal(version_of(f->conn, s), ob_schema_latest());

    memset(&err, 0, sizeof(err));
    assert_int_equal(ob_schema_migrate(f->conn, fresh, &err), OB_EPG);
    assert_int_equal(err.domain, OB_DOMAIN_POSTGRES);
    assert_string_equal(err.sqlstate, "42501");
    assert_false(ob_error_is_retriable(&err));
    assert_non_null(strstr(err.message, "permission denied"));
    assert_int_equal(PQtransactionStatus(f->conn), PQTRANS_IDLE);

    obt_exec(f->conn, "RESET ROLE");
    obt_exec(f->conn, "REVOKE ALL ON SCHEMA %s FROM %s", ident, f->role);
    obt_exec(f->conn, "REVOKE ALL ON %s.oncebox_migrations FROM %s", ident,
             f->role);
    free(ident);
}

static void a_lost_connection_is_a_retriable_pg_error(void **state)
{
    fixture_t *f = *state;
    const char *s = fixture_schema(f, "lost");
    PGconn *killer = obt_connect();
    char pid[16];
    const char *params[1] = {pid};
    ob_error_t err;
    char *killed;
    int version;

    /* Waits until the backend is gone, so the next call must notice. */
    snprintf(pid, sizeof(pid), "%d", PQbackendPID(f->conn));
    killed = obt_value(killer,
                       "SELECT pg_terminate_backend($1::integer, 30000)::text",
                       1, params);
    assert_string_equal(killed, "true");
    free(killed);
    PQfinish(killer);

    memset(&err, 0, sizeof(err));
    assert_int_equal(ob_schema_migrate(f->conn, s, &err), OB_EPG);
    assert_int_equal(err.domain, OB_DOMAIN_POSTGRES);
    assert_true(ob_error_is_retriable(&err));
    assert_int_equal(strlen(err.sqlstate), 5);

    /* Now libpq knows the connection is gone. */
    assert_int_equal(ob_schema_version(f->conn, s, &version, &err), OB_EPG);
    assert_true(ob_error_is_retriable(&err));
    assert_string_equal(err.sqlstate, "08006");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(migrate_creates_every_table_the_trigger_and_the_indexes),
        T(migrations_table_lists_each_migration),
        T(migrate_twice_changes_nothing),
        T(migrate_keeps_a_name_that_needs_quoting),
        T(migrate_keeps_a_mixed_case_name),
        T(migrate_takes_the_longest_name_and_no_longer),
        T(migrate_refuses_bad_arguments),
        T(version_is_zero_before_migrate),
        T(migrate_with_null_uses_the_default_schema),
        T(migrate_in_the_callers_transaction_leaves_commit_to_it),
        T(migrate_in_a_transaction_then_rollback_leaves_nothing),
        T(migrate_refuses_an_aborted_transaction),
        T(migrate_refuses_a_newer_schema),
        T(a_failing_migrate_undoes_only_its_own_work),
        T(a_second_migrate_waits_for_the_first_and_succeeds),
        T(two_threads_migrating_at_once_both_succeed),
        T(insert_notifies_the_schema_channel),
        T(long_schema_names_notify_on_a_cut_channel),
        T(lane_is_a_stable_bucket_of_the_aggregate_id),
        T(outbox_checks_refuse_bad_rows),
        T(an_up_to_date_migrate_needs_no_create_privilege),
        T(a_lost_connection_is_a_retriable_pg_error),
#undef T
        cmocka_unit_test(channel_refuses_a_small_buffer),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
