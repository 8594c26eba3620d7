/*
 * The relay's PostgreSQL session: one long-lived connection that holds
 * the lane locks, LISTENs for new rows, and runs every batch's
 * transaction. Claiming on the session that holds the locks means the
 * relay can only claim rows of a group while it owns it: when the
 * session ends, its transaction, its row locks and its lane locks end
 * together.
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/pg.h"
#include "core/schema_internal.h"
#include "oncebox/schema.h"
#include "outbox/relay_internal.h"

/* The schema version that created relay_config and the claim indexes. */
#define RELAY_SCHEMA_VERSION 3

#define CONNECT_TIMEOUT_MS 10000

#define CLAIM_STMT "oncebox_relay_claim"
#define FINISH_STMT "oncebox_relay_finish"

/*
 * The claim. cand walks the pending rows of the held groups in append
 * order and keeps those that are due and whose aggregate has no earlier
 * row waiting for a retry (nor, optionally, a parked one); it numbers
 * them (rn) and sums their stored payload sizes for the byte bound.
 * Each candidate is then locked by its ctid, skipping rows someone else
 * holds locked: such a row leaves a gap in rn, and ob__relay_plan()
 * holds back everything after it, so a skipped row is never overtaken.
 * A row that changed after cand read it no longer matches its ctid and
 * leaves a gap the same way.
 */
static const char claim_head[] =
    "WITH cand AS MATERIALIZED ("
    " SELECT c.tid, pg_catalog.row_number() OVER (ORDER BY c.seq) AS rn,"
    " pg_catalog.sum(c.bytes) OVER (ORDER BY c.seq) - c.bytes AS before"
    " FROM (SELECT o.ctid AS tid, o.seq,"
    " pg_catalog.pg_column_size(o.payload) AS bytes"
    " FROM @SCHEMA@.outbox o"
    " WHERE o.state = 'pending'"
    " AND o.lane % $1::integer = ANY ($2::integer[])"
    " AND o.next_attempt_at <= pg_catalog.now()"
    " AND NOT EXISTS (SELECT FROM @SCHEMA@.outbox w"
    " WHERE w.state = 'pending' AND w.next_attempt_at > w.created_at"
    " AND w.aggregate_id = o.aggregate_id AND w.seq < o.seq"
    " AND w.next_attempt_at > pg_catalog.now())";

static const char claim_parked[] =
    " AND NOT EXISTS (SELECT FROM @SCHEMA@.outbox p"
    " WHERE p.state = 'parked' AND p.aggregate_id = o.aggregate_id"
    " AND p.seq < o.seq)";

static const char claim_tail[] =
    " ORDER BY o.seq LIMIT $3::integer) c)"
    " SELECT c.rn, l.* FROM cand c, LATERAL ("
    " SELECT o.ctid::text, o.id::text, o.aggregate_type, o.aggregate_id,"
    " o.event_type, o.payload::text, o.idempotency_key, o.topic,"
    " o.headers::text, o.retry_count FROM @SCHEMA@.outbox o"
    " WHERE o.ctid = c.tid AND o.state = 'pending'"
    " FOR UPDATE SKIP LOCKED) l"
    " WHERE c.before < $4::bigint";

enum { COL_RN, COL_TID, COL_ID, COL_TYPE, COL_AGG, COL_EVENT, COL_PAYLOAD,
       COL_KEY, COL_TOPIC, COL_HEADERS, COL_RETRIES, COL_COUNT };

/* Records every outcome of a batch in one statement, by ctid (the rows
 * are locked by this transaction, so their ctids hold still). */
static const char finish_head[] =
    "WITH f AS (SELECT * FROM unnest($1::tid[], $2::uuid[], $3::smallint[],"
    " $4::text[], $5::bigint[]) AS f(tid, id, outcome, error, delay_ms)),";

static const char finish_mark[] =
    " done AS (UPDATE @SCHEMA@.outbox o SET state = 'published',"
    " published_at = pg_catalog.clock_timestamp() FROM f"
    " WHERE o.ctid = f.tid AND o.id = f.id AND f.outcome = 0 RETURNING 1),";

static const char finish_delete[] =
    " done AS (DELETE FROM @SCHEMA@.outbox o USING f"
    " WHERE o.ctid = f.tid AND o.id = f.id AND f.outcome = 0 RETURNING 1),";

static const char finish_tail[] =
    " failed AS (UPDATE @SCHEMA@.outbox o SET"
    " retry_count = o.retry_count + 1, last_error = f.error,"
    " next_attempt_at = pg_catalog.clock_timestamp()"
    " + f.delay_ms * interval '1 millisecond',"
    " state = CASE WHEN f.outcome = 2 THEN 'parked' ELSE 'pending' END"
    " FROM f WHERE o.ctid = f.tid AND o.id = f.id AND f.outcome <> 0"
    " RETURNING 1)"
    " SELECT (SELECT pg_catalog.count(*) FROM done),"
    " (SELECT pg_catalog.count(*) FROM failed)";

/*
 * How long until the first row of the held groups that waits for a
 * retry is due; NULL when none waits. A row already due is not waiting:
 * the claim takes it, or it is held back by one that is waiting.
 */
static const char waiting_head[] =
    "SELECT pg_catalog.ceil(EXTRACT(epoch FROM"
    " pg_catalog.min(o.next_attempt_at) - pg_catalog.now()) * 1000)::bigint"
    " FROM @SCHEMA@.outbox o"
    " WHERE o.state = 'pending' AND o.next_attempt_at > o.created_at"
    " AND o.next_attempt_at > pg_catalog.now()"
    " AND o.lane % $1::integer = ANY ($2::integer[])";

static const char waiting_parked[] =
    " AND NOT EXISTS (SELECT FROM @SCHEMA@.outbox p"
    " WHERE p.state = 'parked' AND p.aggregate_id = o.aggregate_id"
    " AND p.seq < o.seq)";

/* Records the lane count if none is, and reads the one recorded. The
 * insert is not visible to the same statement's select, hence UNION. */
static const char config_sql[] =
    "WITH ins AS (INSERT INTO @SCHEMA@.relay_config (lanes)"
    " VALUES ($1::integer) ON CONFLICT (singleton) DO NOTHING"
    " RETURNING lanes)"
    " SELECT lanes FROM ins UNION ALL SELECT lanes FROM @SCHEMA@.relay_config";

static const char member_sql[] =
    "SELECT pg_catalog.pg_advisory_lock_shared(" OB__RELAY_MEMBER_KEY
    ", 0)";

static char *render3(const char *a, const char *b, const char *c,
                     const char *schema)
{
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    char *joined = ob__malloc(la + lb + lc + 1), *out;

    if (joined == NULL)
        return NULL;
    memcpy(joined, a, la);
    memcpy(joined + la, b, lb);
    memcpy(joined + la + lb, c, lc + 1);
    out = ob__schema_render(joined, schema);
    ob__free(joined);
    return out;
}

static int sql_init(ob_relay_t *r, ob_error_t *err)
{
    ob__relay_pg_t *pg = &r->pg;
    const ob__relay_settings_t *s = &r->set;
    const char *parked = s->park_blocks ? claim_parked : "";

    pg->claim_sql = render3(claim_head, parked, claim_tail, s->schema);
    pg->finish_sql = render3(finish_head,
                             s->delete_published ? finish_delete
                                                 : finish_mark,
                             finish_tail, s->schema);
    pg->waiting_sql = render3(waiting_head,
                              s->park_blocks ? waiting_parked : "", "",
                              s->schema);
    pg->config_sql = ob__schema_render(config_sql, s->schema);
    if (pg->claim_sql == NULL || pg->finish_sql == NULL ||
        pg->waiting_sql == NULL || pg->config_sql == NULL)
        return ob__error_nomem(err, "relay statements");
    return 0;
}

/*
 * Checks the connection string without connecting, and notes its
 * password as a secret. libpq's reason for refusing one may quote it,
 * so the message does not repeat it.
 */
static int conninfo_check(ob_relay_t *r, const char *conninfo,
                          ob_error_t *err)
{
    PQconninfoOption *opts, *o;
    char *errmsg = NULL;
    int rc = 0;

    if (conninfo[0] == '\0' || (strchr(conninfo, '=') == NULL &&
                                strstr(conninfo, "://") == NULL))
        return 0;

    opts = PQconninfoParse(conninfo, &errmsg);
    PQfreemem(errmsg);
    if (opts == NULL)
        return ob__error_set(err, OB_ECONF, "relay: the connection string "
                             "is malformed (see \"Connection Strings\" in "
                             "the libpq manual)");
    for (o = opts; o->keyword != NULL && rc == 0; o++) {
        if (strcmp(o->keyword, "password") == 0)
            rc = ob__relay_secret(r, o->val);
    }
    PQconninfoFree(opts);
    return rc != 0 ? ob__error_nomem(err, "relay secrets") : 0;
}

int ob__relay_pg_init(ob_relay_t *r, const char *conninfo, ob_error_t *err)
{
    char channel[OB_SCHEMA_CHANNEL_SIZE], *quoted;
    int rc;

    r->pg.conninfo = ob__strdup(conninfo != NULL ? conninfo : "");
    if (r->pg.conninfo == NULL)
        return ob__error_nomem(err, "relay connection string");
    rc = conninfo_check(r, r->pg.conninfo, err);
    if (rc == 0)
        rc = ob__relay_secret(r, getenv("PGPASSWORD"));
    if (rc == 0)
        rc = sql_init(r, err);
    if (rc == 0)
        rc = ob_schema_channel(r->set.schema, channel, sizeof(channel), err);
    if (rc != 0)
        return rc;

    quoted = ob__sql_ident(channel);
    if (quoted == NULL)
        return ob__error_nomem(err, "relay channel");
    snprintf(r->pg.channel, sizeof(r->pg.channel), "%s", quoted);
    ob__free(quoted);
    return 0;
}

void ob__relay_pg_close(ob_relay_t *r)
{
    if (r->pg.conn != NULL)
        PQfinish(r->pg.conn);
    r->pg.conn = NULL;
    memset(r->pg.held, 0, sizeof(r->pg.held));
    r->pg.held_count = 0;
    r->pg.next_lanes_ms = 0;
}

void ob__relay_pg_free(ob_relay_t *r)
{
    ob__relay_pg_close(r);
    ob__free(r->pg.conninfo);
    ob__free(r->pg.claim_sql);
    ob__free(r->pg.finish_sql);
    ob__free(r->pg.waiting_sql);
    ob__free(r->pg.config_sql);
}

int ob__relay_pg_connected(const ob_relay_t *r)
{
    return r->pg.conn != NULL;
}

static void notice_cb(void *opaque, const PGresult *res)
{
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    int level = OB_LOG_NOTICE;

    if (sev != NULL && strcmp(sev, "WARNING") == 0)
        level = OB_LOG_WARNING;
    else if (sev != NULL && strcmp(sev, "NOTICE") != 0)
        level = OB_LOG_DEBUG;
    ob__relay_log(opaque, level, "pg", "%s",
                  msg != NULL ? msg : PQresultErrorMessage(res));
}

/* The connect_timeout the connection string asks for, else ours. */
static int connect_timeout_ms(PGconn *conn)
{
    PQconninfoOption *opts = PQconninfo(conn), *o;
    int ms = CONNECT_TIMEOUT_MS;

    for (o = opts; o != NULL && o->keyword != NULL; o++) {
        if (strcmp(o->keyword, "connect_timeout") == 0 && o->val != NULL &&
            atoi(o->val) > 0)
            ms = atoi(o->val) * 1000;
    }
    PQconninfoFree(opts);
    return ms;
}

/*
 * Drives a non-blocking connect, so that ob_relay_stop() need not wait
 * for a server that does not answer. Returns 0 when connected.
 */
static int connect_poll(ob_relay_t *r, PGconn *conn, ob_error_t *err)
{
    int64_t until = ob__now_ms() + connect_timeout_ms(conn), left;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;

    while (st != PGRES_POLLING_OK) {
        left = until - ob__now_ms();
        if (st == PGRES_POLLING_FAILED)
            return ob__error_pg(err, conn, NULL, "connecting to PostgreSQL");
        if (left <= 0 || ob__relay_stopping(r))
            return ob__error_full(err, OB_EPG, OB_DOMAIN_POSTGRES, 0,
                                  OB_ERROR_RETRIABLE, "connecting to "
                                  "PostgreSQL: %s", left <= 0 ?
                                  "timed out" : "stopped");
        ob__relay_wait_fd(r, PQsocket(conn),
                          st == PGRES_POLLING_READING ? POLLIN : POLLOUT,
                          (int)left);
        st = PQconnectPoll(conn);
    }
    return 0;
}

static int connect_start(ob_relay_t *r, ob_error_t *err)
{
    const char *keys[] = {"dbname", "application_name", NULL};
    const char *values[] = {r->pg.conninfo, r->pg.appname, NULL};
    char host[64] = "";
    int rc;

    /* Later keywords win over what the expanded conninfo says, so the
     * application name the lane contract needs is always this one. */
    gethostname(host, sizeof(host) - 1);
    snprintf(r->pg.appname, sizeof(r->pg.appname), "oncebox relay %s/%ld",
             host, (long)getpid());
    r->pg.conn = PQconnectStartParams(keys, values, 1);
    if (r->pg.conn == NULL)
        return ob__error_nomem(err, "PostgreSQL connection");
    if (PQstatus(r->pg.conn) == CONNECTION_BAD)
        return ob__error_pg(err, r->pg.conn, NULL,
                            "connecting to PostgreSQL");

    rc = connect_poll(r, r->pg.conn, err);
    if (rc == 0)
        PQsetNoticeReceiver(r->pg.conn, notice_cb, r);
    return rc;
}

static int schema_check(ob_relay_t *r, ob_error_t *err)
{
    int version, rc;

    rc = ob_schema_version(r->pg.conn, r->set.schema, &version, err);
    if (rc != 0)
        return rc;
    if (version < RELAY_SCHEMA_VERSION)
        return ob__error_set(err, OB_ESCHEMA, "schema \"%s\" is at version "
                             "%d; the relay needs version %d or newer: "
                             "run oncebox migrate", r->set.schema, version,
                             RELAY_SCHEMA_VERSION);
    if (version > ob_schema_latest())
        return ob__error_set(err, OB_ESCHEMA, "schema \"%s\" is at version "
                             "%d, newer than this relay knows (%d): "
                             "upgrade it", r->set.schema, version,
                             ob_schema_latest());
    return 0;
}

int ob__relay_pg_query(ob_relay_t *r, const char *sql, int n,
                       const char *p1, const char *p2, const char *what,
                       PGresult **resp, ob_error_t *err)
{
    const char *params[2] = {p1, p2};

    return ob__pg_exec_params(r->pg.conn, sql, n, params, what, resp, err);
}

/* The recorded lane count must be ours; the first relay records it. */
static int config_check(ob_relay_t *r, ob_error_t *err)
{
    PGresult *res = NULL;
    char lanes[16];
    int rc, tries, stored = -1;

    snprintf(lanes, sizeof(lanes), "%d", r->set.lanes);
    /* A concurrent first insert can leave both parts empty: read again. */
    for (tries = 0; tries < 3 && stored < 0; tries++) {
        rc = ob__relay_pg_query(r, r->pg.config_sql, 1, lanes, NULL,
                   "recording relay.lanes", &res, err);
        if (rc != 0)
            return rc;
        if (PQntuples(res) > 0)
            stored = atoi(PQgetvalue(res, 0, 0));
        PQclear(res);
    }
    if (stored == r->set.lanes)
        return 0;
    return ob__error_set(err, OB_ECONF, "relay.lanes is %d, but the relays "
                         "of schema \"%s\" split the outbox into %d lane "
                         "groups (its relay_config table): use %d, or stop "
                         "every relay and change it there", r->set.lanes,
                         r->set.schema, stored, stored);
}

static int prepare(ob_relay_t *r, const char *name, const char *sql,
                   ob_error_t *err)
{
    PGresult *res = PQprepare(r->pg.conn, name, sql, 0, NULL);
    int rc = 0;

    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = ob__error_pg(err, r->pg.conn, res, "preparing the relay's "
                          "statements");
    PQclear(res);
    return rc;
}

static int session_setup(ob_relay_t *r, ob_error_t *err)
{
    char listen[160];
    int rc;

    snprintf(listen, sizeof(listen), "LISTEN %s", r->pg.channel);
    rc = schema_check(r, err);
    if (rc == 0)
        rc = config_check(r, err);
    if (rc == 0)
        rc = ob__pg_exec(r->pg.conn, listen, "listening for new rows", err);
    if (rc == 0)
        rc = ob__relay_pg_query(r, member_sql, 1, r->set.schema, NULL,
                   "joining the schema's relays", NULL, err);
    if (rc == 0)
        rc = prepare(r, CLAIM_STMT, r->pg.claim_sql, err);
    if (rc == 0)
        rc = prepare(r, FINISH_STMT, r->pg.finish_sql, err);
    return rc;
}

int ob__relay_pg_open(ob_relay_t *r, ob_error_t *err)
{
    int rc;

    ob__relay_pg_close(r);
    rc = connect_start(r, err);
    if (rc == 0)
        rc = session_setup(r, err);
    if (rc != 0) {
        ob__relay_pg_close(r);
        return rc;
    }
    ob__relay_log(r, OB_LOG_INFO, "relay", "connected to PostgreSQL as "
                  "\"%s\" (backend %d), schema \"%s\"", r->pg.appname,
                  PQbackendPID(r->pg.conn), r->set.schema);
    return 0;
}

/* "{1,4,7}": the held groups as an integer array literal. */
static void groups_literal(const ob__relay_pg_t *pg, int lanes, char *out,
                           size_t size)
{
    size_t n = 0;
    int g;

    out[n++] = '{';
    for (g = 0; g < lanes && n + 8 < size; g++) {
        if (pg->held[g])
            n += (size_t)snprintf(out + n, size - n, "%s%d",
                                  out[n - 1] == '{' ? "" : ",", g);
    }
    out[n++] = '}';
    out[n] = '\0';
}

static int rows_reserve(ob__relay_batch_t *b, size_t count, ob_error_t *err)
{
    ob__relay_row_t *grown;

    if (count <= b->cap)
        return 0;
    grown = ob__realloc(b->rows, count * sizeof(*grown));
    if (grown == NULL)
        return ob__error_nomem(err, "relay batch");
    b->rows = grown;
    b->cap = count;
    return 0;
}

static const char *value_or_null(const PGresult *res, int i, int col)
{
    return PQgetisnull(res, i, col) ? NULL : PQgetvalue(res, i, col);
}

static void row_load(ob__relay_row_t *row, const PGresult *res, int i)
{
    memset(row, 0, sizeof(*row));
    row->rn = atoi(PQgetvalue(res, i, COL_RN));
    row->tid = PQgetvalue(res, i, COL_TID);
    row->id = PQgetvalue(res, i, COL_ID);
    row->aggregate_type = PQgetvalue(res, i, COL_TYPE);
    row->aggregate_id = PQgetvalue(res, i, COL_AGG);
    row->aggregate_id_len = (size_t)PQgetlength(res, i, COL_AGG);
    row->event_type = PQgetvalue(res, i, COL_EVENT);
    row->payload = PQgetvalue(res, i, COL_PAYLOAD);
    row->payload_len = (size_t)PQgetlength(res, i, COL_PAYLOAD);
    row->key = PQgetvalue(res, i, COL_KEY);
    row->topic_column = value_or_null(res, i, COL_TOPIC);
    row->headers = value_or_null(res, i, COL_HEADERS);
    row->retry_count = atoi(PQgetvalue(res, i, COL_RETRIES));
    row->partition = -1;
}

static int by_rn(const void *a, const void *b)
{
    const ob__relay_row_t *x = a, *y = b;

    return (x->rn > y->rn) - (x->rn < y->rn);
}

/* A row whose topic is no Kafka name fails when produced, permanently. */
static void row_route(ob_relay_t *r, ob__relay_row_t *row)
{
    ob_error_t e;

    if (ob__relay_topic(r->set.topic_template, row->aggregate_type,
                        row->topic_column, row->topic, sizeof(row->topic),
                        &e) == 0)
        return;
    row->topic[0] = '\0';
    row->err = RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION;
    row->error = ob__strdup(e.message);
    if (row->error == NULL)
        row->error = ob__strdup("no valid topic");
}

static int batch_load(ob_relay_t *r, PGresult *res, ob_error_t *err)
{
    ob__relay_batch_t *b = &r->batch;
    int i, n = PQntuples(res);
    int rc;

    if (PQnfields(res) != COL_COUNT) {
        PQclear(res);
        return ob__error_set(err, OB_EINTERNAL, "claim: %d columns, "
                             "expected %d", PQnfields(res), COL_COUNT);
    }
    rc = rows_reserve(b, (size_t)n, err);
    if (rc != 0) {
        PQclear(res);
        return rc;
    }
    b->res = res;
    for (i = 0; i < n; i++)
        row_load(&b->rows[i], res, i);
    b->count = (size_t)n;
    if (n > 1)
        qsort(b->rows, b->count, sizeof(*b->rows), by_rn);
    for (i = 0; i < n; i++)
        row_route(r, &b->rows[i]);
    return 0;
}

int ob__relay_pg_claim(ob_relay_t *r, ob_error_t *err)
{
    char lanes[16], limit[16], bytes[32], groups[OB__LANES_MAX * 6];
    const char *params[4] = {lanes, groups, limit, bytes};
    PGresult *res;
    int rc;

    if (r->pg.held_count == 0)
        return 0;
    snprintf(lanes, sizeof(lanes), "%d", r->set.lanes);
    snprintf(limit, sizeof(limit), "%d", r->set.batch_size);
    snprintf(bytes, sizeof(bytes), "%lld", r->set.batch_bytes);
    groups_literal(&r->pg, r->set.lanes, groups, sizeof(groups));

    /* SKIP LOCKED and the re-check of a changed row need READ COMMITTED,
     * whatever default_transaction_isolation says. */
    rc = ob__pg_exec(r->pg.conn, "BEGIN ISOLATION LEVEL READ COMMITTED",
                     "beginning a batch", err);
    if (rc != 0)
        return rc;
    res = PQexecPrepared(r->pg.conn, CLAIM_STMT, 4, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = ob__error_pg(err, r->pg.conn, res, "claiming a batch");
        PQclear(res);
        return rc;
    }
    return batch_load(r, res, err);
}

void ob__relay_pg_abort(ob_relay_t *r)
{
    if (r->pg.conn != NULL &&
        PQtransactionStatus(r->pg.conn) != PQTRANS_IDLE)
        ob__pg_exec(r->pg.conn, "ROLLBACK", "rolling back a batch", NULL);
}

/* The five array literals of the finish statement. */
typedef struct finish_args {
    ob__buf_t tid, id, outcome, error, delay;
    size_t n;
} finish_args_t;

static void args_add(finish_args_t *a, const char *tid, const char *id,
                     int outcome, const char *error, int64_t delay)
{
    char num[32];
    ob__buf_t *all[5] = {&a->tid, &a->id, &a->outcome, &a->error, &a->delay};
    size_t i;

    for (i = 0; i < 5; i++)
        ob__buf_putc(all[i], a->n == 0 ? '{' : ',');
    ob__buf_array_elem(&a->tid, tid, strlen(tid));
    ob__buf_puts(&a->id, id);
    snprintf(num, sizeof(num), "%d", outcome);
    ob__buf_puts(&a->outcome, num);
    if (error != NULL)
        ob__buf_array_elem(&a->error, error, strlen(error));
    else
        ob__buf_puts(&a->error, "NULL");
    snprintf(num, sizeof(num), "%lld", (long long)delay);
    ob__buf_puts(&a->delay, num);
    a->n++;
}

static void args_free(finish_args_t *a)
{
    ob__buf_free(&a->tid);
    ob__buf_free(&a->id);
    ob__buf_free(&a->outcome);
    ob__buf_free(&a->error);
    ob__buf_free(&a->delay);
}

static void park_log(ob_relay_t *r, const ob__relay_row_t *row)
{
    ob__relay_log(r, OB_LOG_WARNING, "relay", "parked row %s (aggregate "
                  "%s %.100s, %d failed attempts): %s", row->id,
                  row->aggregate_type, row->aggregate_id,
                  row->retry_count + 1, row->error ? row->error : "?");
}

/* Adds one row's outcome; held rows are left exactly as they were. */
static void outcome_add(ob_relay_t *r, finish_args_t *a,
                        const ob__relay_row_t *row, ob__relay_outcome_t *out)
{
    const ob__relay_settings_t *s = &r->set;
    int64_t delay;

    if (row->state == OB__ROW_HELD) {
        out->held++;
        return;
    }
    if (row->state == OB__ROW_DELIVERED) {
        args_add(a, row->tid, row->id, 0, NULL, 0);
        out->delivered++;
        return;
    }
    out->outages += row->err_class == OB__ERR_OUTAGE;
    if (ob__relay_parks(row, s->retry_max)) {
        args_add(a, row->tid, row->id, 2, row->error, 0);
        park_log(r, row);
        out->parked++;
        return;
    }
    delay = ob__relay_backoff_ms(row->retry_count + 1, s->backoff_ms,
                                 s->backoff_max_ms, ob__relay_random(r));
    args_add(a, row->tid, row->id, 1, row->error, delay);
    out->retried++;
}

static int args_finish(finish_args_t *a, ob_error_t *err)
{
    ob__buf_t *all[5] = {&a->tid, &a->id, &a->outcome, &a->error, &a->delay};
    size_t i;

    for (i = 0; i < 5; i++) {
        ob__buf_putc(all[i], '}');
        if (all[i]->failed)
            return ob__error_nomem(err, "relay batch outcome");
    }
    return 0;
}

static int finish_exec(ob_relay_t *r, finish_args_t *a,
                       const ob__relay_outcome_t *out, ob_error_t *err)
{
    const char *params[5] = {a->tid.data, a->id.data, a->outcome.data,
                             a->error.data, a->delay.data};
    PGresult *res;
    long long done, failed;

    res = PQexecPrepared(r->pg.conn, FINISH_STMT, 5, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        int rc = ob__error_pg(err, r->pg.conn, res, "recording a batch");

        PQclear(res);
        return rc;
    }
    done = atoll(PQgetvalue(res, 0, 0));
    failed = atoll(PQgetvalue(res, 0, 1));
    PQclear(res);

    /* The rows are locked by this transaction: nothing else can change
     * them, so a difference means a bug, not a race. */
    if ((size_t)done != out->delivered ||
        (size_t)failed != out->retried + out->parked)
        ob__relay_log(r, OB_LOG_ERR, "relay", "recorded %lld delivered and "
                      "%lld failed rows, expected %zu and %zu", done, failed,
                      out->delivered, out->retried + out->parked);
    return 0;
}

int ob__relay_pg_finish(ob_relay_t *r, ob__relay_outcome_t *out,
                        ob_error_t *err)
{
    finish_args_t a;
    size_t i;
    int rc = 0;

    memset(&a, 0, sizeof(a));
    for (i = 0; i < r->batch.count; i++)
        outcome_add(r, &a, &r->batch.rows[i], out);
    if (a.n > 0) {
        rc = args_finish(&a, err);
        if (rc == 0)
            rc = finish_exec(r, &a, out, err);
    }
    args_free(&a);
    if (rc == 0)
        rc = ob__pg_exec(r->pg.conn, "COMMIT", "committing a batch", err);
    return rc;
}

int ob__relay_pg_waiting(ob_relay_t *r, int64_t *msp, ob_error_t *err)
{
    char lanes[16], groups[OB__LANES_MAX * 6];
    PGresult *res;
    int rc;

    *msp = -1;
    if (r->pg.held_count == 0)
        return 0;
    snprintf(lanes, sizeof(lanes), "%d", r->set.lanes);
    groups_literal(&r->pg, r->set.lanes, groups, sizeof(groups));
    rc = ob__relay_pg_query(r, r->pg.waiting_sql, 2, lanes, groups,
               "looking for rows waiting to be retried", &res, err);
    if (rc != 0)
        return rc;
    if (!PQgetisnull(res, 0, 0)) {
        *msp = atoll(PQgetvalue(res, 0, 0));
        if (*msp < 0)
            *msp = 0;
    }
    PQclear(res);
    return 0;
}

/* Reads what the server sent; 1 if it held a notification. */
static int notifies(ob_relay_t *r, ob_error_t *err)
{
    PGnotify *n;
    int got = 0;

    if (!PQconsumeInput(r->pg.conn))
        return ob__error_pg(err, r->pg.conn, NULL, "waiting for new rows");
    while ((n = PQnotifies(r->pg.conn)) != NULL) {
        got = 1;
        PQfreemem(n);
    }
    return got;
}

int ob__relay_pg_wait(ob_relay_t *r, int timeout_ms, ob_error_t *err)
{
    int got = notifies(r, err);

    if (got != 0 || timeout_ms <= 0)
        return got;
    ob__relay_kafka_poll(r);
    if (ob__relay_wait_fd(r, PQsocket(r->pg.conn), POLLIN, timeout_ms))
        got = notifies(r, err);
    return got;
}
