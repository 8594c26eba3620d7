/*
 * The inbox store on PostgreSQL: the consumer's own connection, one
 * transaction per batch, the inbox, consumer_offsets and dead_letters
 * tables of the oncebox schema.
 *
 * Claims, lookups and purges go through the dedup store (dedup.h), on
 * this connection and in this transaction, so the inbox table has one
 * owner of its format.
 *
 * Round trips are what bound a consumer, so statements that need no
 * answer of their own (BEGIN, SAVEPOINT, RELEASE, ROLLBACK TO) are not
 * sent alone where it can be helped: they wait in a queue and go out in
 * one pipeline with the next statement of ours (the commit, a dead
 * letter), or just before a claim or the handler needs the connection.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/pg.h"
#include "inbox/store.h"
#include "oncebox/dedup.h"
#include "oncebox/schema.h"

/* The lowest schema version that has the consumer half's tables. */
#define PG_SCHEMA_MIN 2

#define PG_PENDING_MAX 4

enum { SQL_OFFSETS, SQL_LOAD, SQL_DEAD, SQL_COUNT };

/* Prepared statement names, in the order of the enum. */
static const char *const sql_names[SQL_COUNT] = {
    "ob_inbox_offsets", "ob_inbox_load", "ob_inbox_dead",
};

/* The statements; @S@ stands for the quoted schema. */
static const char *const sql_fmts[SQL_COUNT] = {
    [SQL_OFFSETS] =
        "INSERT INTO @S@.consumer_offsets AS c (consumer_group, topic,"
        " \"partition\", next_offset)"
        " SELECT $1, t, p, o FROM unnest($2::text[], $3::integer[],"
        " $4::bigint[]) AS u(t, p, o)"
        " ON CONFLICT ON CONSTRAINT consumer_offsets_pkey DO UPDATE"
        " SET next_offset = greatest(c.next_offset, EXCLUDED.next_offset),"
        " updated_at = now()",
    [SQL_LOAD] =
        "SELECT u.n, c.next_offset FROM unnest($2::text[], $3::integer[])"
        " WITH ORDINALITY AS u(t, p, n) JOIN @S@.consumer_offsets c"
        " ON c.consumer_group = $1 AND c.topic = u.t"
        " AND c.\"partition\" = u.p",
    [SQL_DEAD] =
        "INSERT INTO @S@.dead_letters (consumer_group, topic,"
        " \"partition\", \"offset\", key, value, headers, idempotency_key,"
        " reason, attempts) VALUES ($1, $2, $3::integer, $4::bigint,"
        " $5::bytea, $6::bytea, $7::jsonb, $8, $9, $10::integer)",
};

typedef struct pg_store {
    ob__inbox_store_t base;
    char *conninfo;
    char *schema;
    char *sql[SQL_COUNT];
    ob_dedup_t *dedup; /* the key store the claims go through */
    PGconn *conn;
    const char *pending[PG_PENDING_MAX];
    int npending;
    int in_txn; /* BEGIN sent or queued */
} pg_store_t;

/* One statement of a pipeline. Named: a prepared statement. */
typedef struct pg_stmt {
    const char *sql;
    int named;
    int nparams;
    const char *const *values;
    const int *lengths; /* NULL: all text */
    const int *formats;
} pg_stmt_t;

static pg_store_t *pg_of(ob__inbox_store_t *s)
{
    return (pg_store_t *)s;
}

static void pg_notice(void *arg, const char *message)
{
    const pg_store_t *s = arg;
    size_t len = strcspn(message, "\n");

    ob__log(&s->base.log, OB_LOG_NOTICE, "pg", "%.*s", (int)len, message);
}

static int pg_broken(const pg_store_t *s)
{
    return s->conn == NULL || PQstatus(s->conn) != CONNECTION_OK;
}

/* Sends one statement into the pipeline. */
static int pg_send(pg_store_t *s, const pg_stmt_t *st)
{
    if (st->named)
        return PQsendQueryPrepared(s->conn, st->sql, st->nparams,
                                   st->values, st->lengths, st->formats, 0);
    return PQsendQueryParams(s->conn, st->sql, st->nparams, NULL,
                             st->values, st->lengths, st->formats, 0);
}

static int pg_result_ok(const PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);

    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

/*
 * Reads the result of one pipelined statement, and the NULL that ends
 * it. The first failure is described in err; *rc keeps it.
 */
static PGresult *pg_read_one(pg_store_t *s, const char *what, int *rc,
                             ob_error_t *err)
{
    PGresult *res = PQgetResult(s->conn), *extra;

    if (res == NULL) {
        if (*rc == 0)
            *rc = ob__error_pg(err, s->conn, NULL, what);
        return NULL;
    }
    while ((extra = PQgetResult(s->conn)) != NULL)
        PQclear(extra);
    if (!pg_result_ok(res) && *rc == 0)
        *rc = ob__error_pg(err, s->conn, res, what);
    return res;
}

/* Reads n results and the sync point; keeps the last one in *lastp. */
static int pg_read_all(pg_store_t *s, int n, const char *what,
                       PGresult **lastp, ob_error_t *err)
{
    PGresult *res;
    int i, rc = 0;

    for (i = 0; i < n && !pg_broken(s); i++) {
        res = pg_read_one(s, what, &rc, err);
        if (i == n - 1 && lastp != NULL && rc == 0)
            *lastp = res;
        else
            PQclear(res);
    }
    if (pg_broken(s))
        return rc != 0 ? rc : ob__error_pg(err, s->conn, NULL, what);

    res = PQgetResult(s->conn);
    if (res == NULL || PQresultStatus(res) != PGRES_PIPELINE_SYNC) {
        PQclear(res);
        return rc != 0 ? rc : ob__error_pg(err, s->conn, NULL, what);
    }
    PQclear(res);
    PQexitPipelineMode(s->conn);
    return rc;
}

/*
 * Runs the queued commands and then stmts in one pipeline: one round
 * trip. On success *lastp (when not NULL and n > 0) is the result of
 * the last statement, the caller's to PQclear().
 */
static int pg_pipeline(pg_store_t *s, const pg_stmt_t *stmts, int n,
                       const char *what, PGresult **lastp, ob_error_t *err)
{
    pg_stmt_t utility = {NULL, 0, 0, NULL, NULL, NULL};
    int i, total = s->npending + n, rc;

    if (lastp != NULL)
        *lastp = NULL;
    if (total == 0)
        return 0;
    if (pg_broken(s) || !PQenterPipelineMode(s->conn))
        return ob__error_pg(err, s->conn, NULL, what);

    for (i = 0; i < s->npending; i++) {
        utility.sql = s->pending[i];
        if (!pg_send(s, &utility))
            return ob__error_pg(err, s->conn, NULL, what);
    }
    s->npending = 0;
    for (i = 0; i < n; i++) {
        if (!pg_send(s, &stmts[i]))
            return ob__error_pg(err, s->conn, NULL, what);
    }
    if (!PQpipelineSync(s->conn))
        return ob__error_pg(err, s->conn, NULL, what);

    rc = pg_read_all(s, total, what, n > 0 ? lastp : NULL, err);
    return rc;
}

static int pg_queue(pg_store_t *s, const char *sql, ob_error_t *err)
{
    if (s->npending == PG_PENDING_MAX)
        return ob__error_set(err, OB_EINTERNAL, "inbox: too many queued "
                             "commands");
    s->pending[s->npending++] = sql;
    return 0;
}

static int pg_prepare_all(pg_store_t *s, ob_error_t *err)
{
    PGresult *res;
    int i, rc = 0;

    for (i = 0; i < SQL_COUNT && rc == 0; i++) {
        res = PQprepare(s->conn, sql_names[i], s->sql[i], 0, NULL);
        if (!pg_result_ok(res))
            rc = ob__error_pg(err, s->conn, res, "inbox: prepare");
        PQclear(res);
    }
    return rc;
}

/* The schema must have the consumer tables and not be newer than us. */
static int pg_check_schema(pg_store_t *s, ob_error_t *err)
{
    int version = 0, rc;

    rc = ob_schema_version(s->conn, s->schema, &version, err);
    if (rc != 0)
        return rc;
    if (version < PG_SCHEMA_MIN || version > ob_schema_latest())
        return ob__error_set(err, OB_ESCHEMA, "inbox: schema \"%s\" is at "
                             "version %d; this library needs %d to %d "
                             "(run oncebox migrate)", s->schema, version,
                             PG_SCHEMA_MIN, ob_schema_latest());
    return 0;
}

static int pg_open(ob__inbox_store_t *base, int *fresh, ob_error_t *err)
{
    pg_store_t *s = pg_of(base);
    int rc;

    *fresh = 0;
    if (!pg_broken(s))
        return 0;
    *fresh = 1;

    PQfinish(s->conn);
    s->npending = 0;
    s->in_txn = 0;
    s->conn = PQconnectdb(s->conninfo != NULL ? s->conninfo : "");
    if (s->conn == NULL)
        return ob__error_nomem(err, "PostgreSQL connection");
    if (PQstatus(s->conn) != CONNECTION_OK)
        return ob__error_pg(err, s->conn, NULL, "inbox: connect");

    PQsetNoticeProcessor(s->conn, pg_notice, s);
    rc = pg_check_schema(s, err);
    if (rc == 0)
        rc = pg_prepare_all(s, err);
    /* A half-prepared connection must not pass for a usable one. */
    if (rc != 0) {
        PQfinish(s->conn);
        s->conn = NULL;
    }
    return rc;
}

static int pg_begin(ob__inbox_store_t *base, ob_error_t *err)
{
    pg_store_t *s = pg_of(base);

    s->npending = 0;
    s->in_txn = 1;
    return pg_queue(s, "BEGIN", err);
}

static void pg_abort(ob__inbox_store_t *base)
{
    pg_store_t *s = pg_of(base);
    int only_begin = s->npending > 0 && strcmp(s->pending[0], "BEGIN") == 0;
    PGresult *res;

    s->npending = 0;
    if (!s->in_txn || only_begin || pg_broken(s)) {
        s->in_txn = 0;
        return;
    }
    s->in_txn = 0;
    if (PQpipelineStatus(s->conn) != PQ_PIPELINE_OFF) {
        /* A failure inside a pipeline leaves it to the reconnect. */
        PQfinish(s->conn);
        s->conn = NULL;
        return;
    }
    res = PQexec(s->conn, "ROLLBACK");
    PQclear(res);
}

/* Appends the decimal of v as one element of an array literal. */
static void array_int(ob__buf_t *b, long long v)
{
    char num[24];

    snprintf(num, sizeof(num), "%lld", v);
    if (b->len > 1)
        ob__buf_putc(b, ',');
    ob__buf_puts(b, num);
}

static void array_text(ob__buf_t *b, const char *s, size_t n)
{
    if (b->len > 1)
        ob__buf_putc(b, ',');
    ob__buf_array_elem(b, s, n);
}

static void entry_of(const ob__inbox_item_t *item, ob_dedup_entry_t *e)
{
    ob_dedup_entry_t init = OB_DEDUP_ENTRY_INIT;

    *e = init;
    e->key = item->key;
    e->key_len = item->key_len;
    e->hash = item->hash;
    e->at_ms = item->at_ms;
    e->topic = item->topic;
    e->partition = item->partition;
    e->offset = item->offset;
}

static void claim_of(const ob_dedup_result_t *r, ob__inbox_claim_t *res)
{
    res->duplicate = r->duplicate;
    res->hash_differs = r->hash_differs;
}

/*
 * Claims go through the dedup store, which joins the transaction as it
 * is: the queued BEGIN or SAVEPOINT goes out first.
 */
static int pg_claim_batch(ob__inbox_store_t *base, const char *ns,
                          const ob__inbox_item_t *items, size_t n,
                          ob__inbox_claim_t *res, ob_error_t *err)
{
    pg_store_t *s = pg_of(base);
    ob_dedup_entry_t *entries;
    ob_dedup_result_t *results;
    size_t i;
    int rc;

    if (n == 0)
        return 0;
    rc = pg_pipeline(s, NULL, 0, "inbox: begin", NULL, err);
    if (rc != 0)
        return rc;
    entries = ob__calloc(n, sizeof(*entries));
    results = ob__calloc(n, sizeof(*results));
    if (entries == NULL || results == NULL)
        rc = ob__error_nomem(err, "inbox claim");
    for (i = 0; rc == 0 && i < n; i++)
        entry_of(&items[i], &entries[i]);
    if (rc == 0)
        rc = ob_dedup_claim_batch(s->dedup, s->conn, ns, entries, n,
                                  results, err);
    for (i = 0; rc == 0 && i < n; i++)
        claim_of(&results[i], &res[i]);
    ob__free(entries);
    ob__free(results);
    return rc;
}

static int pg_claim(ob__inbox_store_t *base, const char *ns,
                    const ob__inbox_item_t *item, ob__inbox_claim_t *res,
                    ob_error_t *err)
{
    pg_store_t *s = pg_of(base);
    ob_dedup_entry_t e;
    ob_dedup_result_t r;
    int rc;

    rc = pg_pipeline(s, NULL, 0, "inbox: savepoint", NULL, err);
    if (rc != 0)
        return rc;
    entry_of(item, &e);
    rc = ob_dedup_claim(s->dedup, s->conn, ns, &e, &r, err);
    if (rc == 0)
        claim_of(&r, res);
    return rc;
}

static int pg_savepoint(ob__inbox_store_t *base, ob_error_t *err)
{
    return pg_queue(pg_of(base), "SAVEPOINT ob_message", err);
}

static int pg_release(ob__inbox_store_t *base, ob_error_t *err)
{
    return pg_queue(pg_of(base), "RELEASE SAVEPOINT ob_message", err);
}

static int pg_rollback_to(ob__inbox_store_t *base, ob_error_t *err)
{
    return pg_queue(pg_of(base), "ROLLBACK TO SAVEPOINT ob_message", err);
}

static int pg_check(ob__inbox_store_t *base, ob_error_t *err)
{
    pg_store_t *s = pg_of(base);

    if (pg_broken(s))
        return ob__error_pg(err, s->conn, NULL, "inbox: after the handler");
    switch (PQtransactionStatus(s->conn)) {
    case PQTRANS_INTRANS:
        return 0;
    case PQTRANS_INERROR:
        return ob__error_set(err, OB_ENOTXN, "the handler left the "
                             "transaction aborted (a statement failed)");
    case PQTRANS_IDLE:
        return ob__error_set(err, OB_ESTATE, "the handler ended the "
                             "transaction (COMMIT or ROLLBACK); handlers "
                             "must leave that to the consumer");
    default:
        return ob__error_set(err, OB_ESTATE, "the handler left a command "
                             "in progress on the connection");
    }
}

/* Hands the connection to the handler: queued commands are run first. */
static void *pg_handle(ob__inbox_store_t *base)
{
    pg_store_t *s = pg_of(base);
    ob_error_t ignored;

    /* A failure here shows in the handler's own first statement and is
     * caught by pg_check() afterwards. */
    if (s->npending > 0)
        (void)pg_pipeline(s, NULL, 0, "inbox: savepoint", NULL, &ignored);
    return s->conn;
}

static int pg_dead_one(pg_store_t *s, const char *group,
                       const ob__inbox_dead_t *d, ob_error_t *err)
{
    const ob__inbox_item_t *it = d->item;
    char part[16], off[24], attempts[16];
    const char *values[10] = {group, it->topic, part, off,
                              it->kafka_key, it->value, it->headers_json,
                              it->key, d->reason, attempts};
    int lengths[10] = {0, 0, 0, 0, (int)it->kafka_key_len,
                       (int)it->value_len, 0, 0, 0, 0};
    int formats[10] = {0, 0, 0, 0, 1, 1, 0, 0, 0, 0};
    pg_stmt_t st = {sql_names[SQL_DEAD], 1, 10, values, lengths, formats};

    snprintf(part, sizeof(part), "%d", (int)it->partition);
    snprintf(off, sizeof(off), "%lld", (long long)it->offset);
    snprintf(attempts, sizeof(attempts), "%d", d->attempts);
    return pg_pipeline(s, &st, 1, "inbox: record dead letter", NULL, err);
}

static int pg_dead_letters(ob__inbox_store_t *base, const char *group,
                           const ob__inbox_dead_t *dead, size_t n,
                           ob_error_t *err)
{
    size_t i;
    int rc;

    for (i = 0; i < n; i++) {
        rc = pg_dead_one(pg_of(base), group, &dead[i], err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* The three array parameters of SQL_OFFSETS or the two of SQL_LOAD. */
static void offset_arrays(ob__buf_t *a, const ob__inbox_offset_t *offs,
                          size_t n, int with_offsets)
{
    size_t i;
    int j;

    for (j = 0; j < 3; j++)
        ob__buf_putc(&a[j], '{');
    for (i = 0; i < n; i++) {
        array_text(&a[0], offs[i].topic, strlen(offs[i].topic));
        array_int(&a[1], offs[i].partition);
        if (with_offsets)
            array_int(&a[2], offs[i].next_offset);
    }
    for (j = 0; j < 3; j++)
        ob__buf_putc(&a[j], '}');
}

static int pg_commit(ob__inbox_store_t *base, const char *group,
                     const ob__inbox_offset_t *offs, size_t n,
                     ob_error_t *err)
{
    pg_store_t *s = pg_of(base);
    ob__buf_t a[3] = {OB__BUF_INIT, OB__BUF_INIT, OB__BUF_INIT};
    const char *values[4];
    pg_stmt_t st[2] = {{sql_names[SQL_OFFSETS], 1, 4, values, NULL, NULL},
                       {"COMMIT", 0, 0, NULL, NULL, NULL}};
    int rc;

    offset_arrays(a, offs, n, 1);
    if (a[0].failed || a[1].failed || a[2].failed) {
        rc = ob__error_nomem(err, "inbox offsets");
        goto free_arrays;
    }
    values[0] = group;
    values[1] = a[0].data;
    values[2] = a[1].data;
    values[3] = a[2].data;

    rc = pg_pipeline(s, n > 0 ? st : st + 1, n > 0 ? 2 : 1, "inbox: commit",
                     NULL, err);
    /* A COMMIT that fails leaves the transaction ended: nothing to undo,
     * and one that did not run is rolled back with the connection. */
    if (rc == 0 || PQtransactionStatus(s->conn) != PQTRANS_INERROR)
        s->in_txn = 0;
free_arrays:
    ob__buf_free(&a[0]);
    ob__buf_free(&a[1]);
    ob__buf_free(&a[2]);
    return rc;
}

static int load_results(const PGresult *res, ob__inbox_offset_t *offs,
                        size_t n)
{
    int i;

    for (i = 0; i < PQntuples(res); i++) {
        long long idx = strtoll(PQgetvalue(res, i, 0), NULL, 10);

        if (idx >= 1 && (size_t)idx <= n)
            offs[idx - 1].next_offset =
                strtoll(PQgetvalue(res, i, 1), NULL, 10);
    }
    return 0;
}

static int pg_load_offsets(ob__inbox_store_t *base, const char *group,
                           ob__inbox_offset_t *offs, size_t n,
                           ob_error_t *err)
{
    pg_store_t *s = pg_of(base);
    ob__buf_t a[3] = {OB__BUF_INIT, OB__BUF_INIT, OB__BUF_INIT};
    const char *values[3];
    pg_stmt_t st = {sql_names[SQL_LOAD], 1, 3, values, NULL, NULL};
    PGresult *res = NULL;
    size_t i;
    int rc;

    for (i = 0; i < n; i++)
        offs[i].next_offset = -1;
    offset_arrays(a, offs, n, 0);
    if (a[0].failed || a[1].failed) {
        rc = ob__error_nomem(err, "inbox offsets");
        goto free_arrays;
    }
    values[0] = group;
    values[1] = a[0].data;
    values[2] = a[1].data;

    rc = pg_pipeline(s, &st, 1, "inbox: load offsets", &res, err);
    if (rc == 0)
        rc = load_results(res, offs, n);
    PQclear(res);
free_arrays:
    for (i = 0; i < 3; i++)
        ob__buf_free(&a[i]);
    return rc;
}

/* Through the dedup store, on the idle connection: it commits alone. */
static int pg_purge(ob__inbox_store_t *base, const char *ns,
                    int64_t before_ms, size_t limit, size_t *removed,
                    ob_error_t *err)
{
    pg_store_t *s = pg_of(base);

    *removed = 0;
    if (pg_broken(s))
        return ob__error_pg(err, s->conn, NULL, "inbox: purge");
    return ob_dedup_purge(s->dedup, s->conn, ns, before_ms, limit, removed,
                          err);
}

static void pg_destroy(ob__inbox_store_t *base)
{
    pg_store_t *s = pg_of(base);
    int i;

    if (s == NULL)
        return;
    PQfinish(s->conn);
    ob_dedup_destroy(s->dedup);
    for (i = 0; i < SQL_COUNT; i++)
        ob__free(s->sql[i]);
    ob__free(s->schema);
    ob__free(s->conninfo);
    ob__free(s);
}

static const ob__inbox_store_ops_t pg_ops = {
    "postgresql",   pg_open,        pg_load_offsets, pg_begin,
    pg_claim_batch, pg_claim,       pg_savepoint,    pg_release,
    pg_rollback_to, pg_check,       pg_handle,       pg_dead_letters,
    pg_commit,      pg_abort,       pg_purge,        pg_destroy,
};

/* tmpl with each "@S@" replaced by ident, or NULL (no memory). */
static char *sql_expand(const char *tmpl, const char *ident)
{
    ob__buf_t b = OB__BUF_INIT;
    const char *p = tmpl, *q;

    while ((q = strstr(p, "@S@")) != NULL) {
        ob__buf_append(&b, p, (size_t)(q - p));
        ob__buf_puts(&b, ident);
        p = q + 3;
    }
    ob__buf_puts(&b, p);
    if (b.failed) {
        ob__buf_free(&b);
        return NULL;
    }
    return b.data;
}

static int pg_build_sql(pg_store_t *s, ob_error_t *err)
{
    char *ident = ob__sql_ident(s->schema);
    int i;

    if (ident == NULL)
        return ob__error_nomem(err, "inbox");
    for (i = 0; i < SQL_COUNT; i++) {
        s->sql[i] = sql_expand(sql_fmts[i], ident);
        if (s->sql[i] == NULL)
            break;
    }
    ob__free(ident);
    return i == SQL_COUNT ? 0 : ob__error_nomem(err, "inbox");
}

int ob__inbox_pg_new(ob__inbox_store_t **sp, const ob_conf_t *conf,
                     const char *conninfo, ob_error_t *err)
{
    pg_store_t *s = ob__calloc(1, sizeof(*s));
    int rc;

    if (s == NULL)
        return ob__error_nomem(err, "inbox");
    s->base.ops = &pg_ops;
    s->base.log = *ob__conf_log(conf);
    s->schema = ob__strdup(ob_conf_get(conf, "schema"));
    if (conninfo != NULL && conninfo[0] != '\0')
        s->conninfo = ob__strdup(conninfo);
    if (s->schema == NULL ||
        (conninfo != NULL && conninfo[0] != '\0' && s->conninfo == NULL)) {
        pg_destroy(&s->base);
        return ob__error_nomem(err, "inbox");
    }
    rc = pg_build_sql(s, err);
    if (rc == 0)
        rc = ob_dedup_pg_new(&s->dedup, conf, err);
    if (rc != 0) {
        pg_destroy(&s->base);
        return rc;
    }
    *sp = &s->base;
    return 0;
}
