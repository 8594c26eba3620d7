/*
 * The outbox writer: checks events completely before sending anything,
 * so that bad input never aborts the caller's transaction, then inserts
 * a whole batch with one statement and one round trip.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/internal.h"
#include "core/pg.h"
#include "oncebox/outbox.h"
#include "oncebox/wire.h"

/*
 * Four statements: a batch goes through unnest() of one array per
 * column, a single event through VALUES, which plans and runs faster.
 * Where every key is an event id generated here, no key can already be
 * in the outbox, so the insert skips ON CONFLICT and RETURNING.
 */
enum { SQL_BATCH, SQL_BATCH_FRESH, SQL_ONE, SQL_ONE_FRESH, SQL_COUNT };

struct ob_writer {
    char *sql[SQL_COUNT];
    ob_key_mode_t key_mode;
    size_t payload_max;
    ob__log_t log;
};

/* The statement's parameters: one text array per column. */
enum { COL_ID, COL_TYPE, COL_AGG, COL_EVENT, COL_PAYLOAD, COL_KEY,
       COL_TOPIC, COL_HEADERS, COL_COUNT };

static const char insert_head[] =
    "INSERT INTO %s.outbox (id, aggregate_type, aggregate_id, event_type,"
    " payload, idempotency_key, topic, headers)";

static const char batch_body[] =
    " SELECT id, t, a, e, p, k, tp, h FROM unnest($1::uuid[], $2::text[],"
    " $3::text[], $4::text[], $5::jsonb[], $6::text[], $7::text[],"
    " $8::jsonb[]) WITH ORDINALITY AS u(id, t, a, e, p, k, tp, h, n)"
    " ORDER BY n";

static const char one_body[] =
    " VALUES ($1::uuid, $2, $3, $4, $5::jsonb, $6, $7, $8::jsonb)";

static const char insert_dedup[] =
    " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id::text";

static const char *const reserved_headers[] = {
    OB_HEADER_IDEMPOTENCY_KEY, OB_HEADER_EVENT_ID, OB_HEADER_EVENT_TYPE,
    OB_HEADER_AGGREGATE_TYPE,  OB_HEADER_AGGREGATE_ID,
    OB_HEADER_CONTENT_TYPE,    OB_HEADER_ID,
};

static char *sql_build(const char *ident, int which)
{
    int one = which == SQL_ONE || which == SQL_ONE_FRESH;
    int fresh = which == SQL_BATCH_FRESH || which == SQL_ONE_FRESH;
    const char *body = one ? one_body : batch_body;
    const char *tail = fresh ? "" : insert_dedup;
    size_t cap = sizeof(insert_head) + strlen(ident) + strlen(body) +
                 strlen(tail);
    char *sql = ob__malloc(cap);

    if (sql == NULL)
        return NULL;

    snprintf(sql, cap, insert_head, ident);
    strcat(sql, body);
    strcat(sql, tail);
    return sql;
}

static int writer_sql(ob_writer_t *w, const char *schema, ob_error_t *err)
{
    char *ident = ob__sql_ident(schema);
    int i;

    if (ident == NULL)
        return ob__error_nomem(err, "writer");

    for (i = 0; i < SQL_COUNT; i++) {
        w->sql[i] = sql_build(ident, i);
        if (w->sql[i] == NULL)
            break;
    }
    ob__free(ident);
    return i == SQL_COUNT ? 0 : ob__error_nomem(err, "writer");
}

int ob_writer_new(ob_writer_t **writerp, const ob_conf_t *conf,
                  ob_error_t *err)
{
    ob_conf_t *defaults = NULL;
    ob_writer_t *w;
    int rc;

    if (writerp == NULL)
        return ob__error_set(err, OB_EINVAL, "writer: writerp is NULL");
    if (conf == NULL) {
        rc = ob_conf_new(&defaults, err);
        if (rc != 0)
            return rc;
        conf = defaults;
    }

    rc = ob__error_nomem(err, "writer");
    w = ob__calloc(1, sizeof(*w));
    if (w == NULL)
        goto out;

    rc = writer_sql(w, ob_conf_get(conf, "schema"), err);
    if (rc != 0)
        goto free_writer;

    w->key_mode = strcmp(ob_conf_get(conf, "writer.key.mode"), "content")
                      ? OB_KEY_MODE_EVENT_ID
                      : OB_KEY_MODE_CONTENT;
    w->payload_max =
        (size_t)ob__conf_int(conf, "writer.payload.max.bytes");
    w->log = *ob__conf_log(conf);
    *writerp = w;
    rc = 0;
    goto out;

free_writer:
    ob_writer_destroy(w);
out:
    ob_conf_destroy(defaults);
    return rc;
}

void ob_writer_destroy(ob_writer_t *writer)
{
    int i;

    if (writer == NULL)
        return;

    for (i = 0; i < SQL_COUNT; i++)
        ob__free(writer->sql[i]);
    ob__free(writer);
}

/* Kafka's topic names: 1..249 of [a-zA-Z0-9._-], and not "." or "..". */
static int check_topic(const char *topic, ob_error_t *err)
{
    size_t len = strlen(topic), i;

    if (len == 0)
        return ob__error_set(err, OB_EEMPTY, "topic is empty");
    if (len > OB_TOPIC_MAX)
        return ob__error_set(err, OB_ETOOLONG, "topic is %zu bytes long, "
                             "the limit is %d", len, OB_TOPIC_MAX);
    for (i = 0; i < len; i++) {
        char c = topic[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return ob__error_set(err, OB_ENAME, "topic \"%s\": only "
                                 "letters, digits, '.', '_' and '-' are "
                                 "allowed", topic);
    }
    if (strcmp(topic, ".") == 0 || strcmp(topic, "..") == 0)
        return ob__error_set(err, OB_ENAME, "topic \"%s\" is not allowed",
                             topic);
    return 0;
}

static int lower_hex(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    }
    return 1;
}

/* W3C trace context: 2 hex version, 32 hex trace id, 16 hex parent id,
 * 2 hex flags, dash-separated. Version ff is invalid. */
static int check_traceparent(const char *v, ob_error_t *err)
{
    if (strlen(v) < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' ||
        !lower_hex(v, 2) || !lower_hex(v + 3, 32) ||
        !lower_hex(v + 36, 16) || !lower_hex(v + 53, 2) ||
        strncmp(v, "ff", 2) == 0 || (strncmp(v, "00", 2) == 0 && v[55]))
        return ob__error_set(err, OB_ENAME, "header traceparent: \"%.60s\" "
                             "is not a W3C traceparent "
                             "(00-<32 hex>-<16 hex>-<2 hex>)", v);
    return 0;
}

static int header_reserved(const char *name)
{
    size_t i;

    for (i = 0; i < OB__ARRAY_LEN(reserved_headers); i++) {
        if (strcasecmp(name, reserved_headers[i]) == 0)
            return 1;
    }
    return 0;
}

static int check_header(const ob_header_t *hs, size_t i, ob_error_t *err)
{
    const ob_header_t *h = &hs[i];
    size_t j, len;
    int rc;

    if (h->name == NULL || h->value == NULL)
        return ob__error_set(err, OB_EINVAL, "header %zu: name or value is "
                             "NULL", i);

    rc = ob__check_text("header name", h->name, strlen(h->name),
                        OB_HEADER_NAME_MAX, err);
    if (rc != 0)
        return rc;
    if (header_reserved(h->name))
        return ob__error_set(err, OB_ERESERVED, "header \"%s\" is set by "
                             "oncebox itself", h->name);
    for (j = 0; j < i; j++) {
        if (strcmp(hs[j].name, h->name) == 0)
            return ob__error_set(err, OB_EINVAL, "header \"%s\" is given "
                                 "twice", h->name);
    }

    len = strlen(h->value);
    if (len > OB_HEADER_VALUE_MAX)
        return ob__error_set(err, OB_ETOOLONG, "header \"%s\": value is %zu "
                             "bytes long, the limit is %d", h->name, len,
                             OB_HEADER_VALUE_MAX);
    if (!ob__utf8_valid(h->value, len))
        return ob__error_set(err, OB_EUTF8, "header \"%s\": value is not "
                             "valid UTF-8", h->name);
    if (strcmp(h->name, OB_HEADER_TRACEPARENT) == 0)
        return check_traceparent(h->value, err);
    return 0;
}

static int check_headers(const ob_event_t *ev, ob_error_t *err)
{
    size_t i;
    int rc;

    if (ev->header_count == 0)
        return 0;
    if (ev->headers == NULL)
        return ob__error_set(err, OB_EINVAL, "headers is NULL but "
                             "header_count is %zu", ev->header_count);
    if (ev->header_count > OB_HEADERS_MAX)
        return ob__error_set(err, OB_ETOOLONG, "%zu headers, the limit is "
                             "%d", ev->header_count, OB_HEADERS_MAX);

    for (i = 0; i < ev->header_count; i++) {
        rc = check_header(ev->headers, i, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static size_t payload_length(const ob_event_t *ev)
{
    return ev->payload_len != 0 ? ev->payload_len : strlen(ev->payload);
}

static int check_payload(const ob_writer_t *w, const ob_event_t *ev,
                         ob_error_t *err)
{
    size_t len;
    int rc;

    if (ev->payload == NULL || (len = payload_length(ev)) == 0)
        return ob__error_set(err, OB_EEMPTY, "payload is empty");
    if (len > w->payload_max)
        return ob__error_set(err, OB_ETOOBIG, "payload is %zu bytes, the "
                             "limit (writer.payload.max.bytes) is %zu", len,
                             w->payload_max);

    rc = ob_json_validate(ev->payload, len, err);
    if (rc != 0)
        ob__error_prefix(err, "payload");
    return rc;
}

static int check_event(const ob_writer_t *w, const ob_event_t *ev,
                       ob_error_t *err)
{
    int rc;

    if (ev == NULL || ev->size < sizeof(ob_event_t))
        return ob__error_set(err, OB_EINVAL, "event is NULL or was not "
                             "initialised with OB_EVENT_INIT");

    rc = ob__check_text("aggregate type", ev->aggregate_type,
                        ev->aggregate_type ? strlen(ev->aggregate_type) : 0,
                        OB_AGGREGATE_TYPE_MAX, err);
    if (rc == 0)
        rc = ob__check_text("aggregate id", ev->aggregate_id,
                            ev->aggregate_id ? strlen(ev->aggregate_id) : 0,
                            OB_AGGREGATE_ID_MAX, err);
    if (rc == 0)
        rc = ob__check_text("event type", ev->event_type,
                            ev->event_type ? strlen(ev->event_type) : 0,
                            OB_EVENT_TYPE_MAX, err);
    if (rc == 0 && ev->key != NULL)
        rc = ob__check_text("key", ev->key, strlen(ev->key), OB_KEY_MAX,
                            err);
    if (rc == 0 && (ev->key_mode < OB_KEY_MODE_DEFAULT ||
                    ev->key_mode > OB_KEY_MODE_CONTENT))
        rc = ob__error_set(err, OB_EINVAL, "key mode %d is unknown",
                           (int)ev->key_mode);
    if (rc == 0 && ev->topic != NULL)
        rc = check_topic(ev->topic, err);
    if (rc == 0)
        rc = check_headers(ev, err);
    if (rc == 0)
        rc = check_payload(w, ev, err);
    return rc;
}

int ob_writer_check(const ob_writer_t *writer, const ob_event_t *ev,
                    ob_error_t *err)
{
    if (writer == NULL)
        return ob__error_set(err, OB_EINVAL, "writer is NULL");
    return check_event(writer, ev, err);
}

/* The append runs inside the caller's transaction and nowhere else. */
static int check_conn(PGconn *conn, ob_error_t *err)
{
    if (conn == NULL)
        return ob__error_set(err, OB_EINVAL, "connection is NULL");
    if (PQstatus(conn) != CONNECTION_OK)
        return ob__error_full(err, OB_EPG, OB_DOMAIN_POSTGRES, 0,
                              OB_ERROR_RETRIABLE, "connection is not open");
    if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF)
        return ob__error_set(err, OB_ESTATE, "connection is in pipeline "
                             "mode; append needs it off");

    switch (PQtransactionStatus(conn)) {
    case PQTRANS_INTRANS:
        return 0;
    case PQTRANS_IDLE:
        return ob__error_set(err, OB_ENOTXN, "connection is not inside a "
                             "transaction: append joins the caller's "
                             "transaction, so call BEGIN first");
    case PQTRANS_INERROR:
        return ob__error_set(err, OB_ENOTXN, "the connection's transaction "
                             "is aborted; roll it back first");
    case PQTRANS_ACTIVE:
        return ob__error_set(err, OB_ESTATE, "a command is in progress on "
                             "the connection");
    default:
        return ob__error_full(err, OB_EPG, OB_DOMAIN_POSTGRES, 0,
                              OB_ERROR_RETRIABLE,
                              "connection state is unknown");
    }
}

/* Fills res with the event's id and key, deriving the key if needed. */
static int event_keys(const ob_writer_t *w, const ob_event_t *ev,
                      ob_append_result_t *res, ob_error_t *err)
{
    ob_key_mode_t mode = ev->key_mode ? ev->key_mode : w->key_mode;
    int rc;

    rc = ob_key_uuidv7(res->event_id, err);
    if (rc != 0)
        return rc;

    res->duplicate = 0;
    if (ev->key != NULL) {
        snprintf(res->key, sizeof(res->key), "%s", ev->key);
        return 0;
    }
    if (mode == OB_KEY_MODE_CONTENT)
        return ob_key_content(ev->aggregate_type, ev->aggregate_id,
                              ev->event_type, ev->payload,
                              payload_length(ev), res->key, err);

    memcpy(res->key, res->event_id, sizeof(res->event_id));
    return 0;
}

static void headers_json(ob__buf_t *b, const ob_event_t *ev)
{
    size_t i;

    ob__buf_putc(b, '{');
    for (i = 0; i < ev->header_count; i++) {
        const ob_header_t *h = &ev->headers[i];

        if (i > 0)
            ob__buf_putc(b, ',');
        ob__buf_json_string(b, h->name, strlen(h->name));
        ob__buf_putc(b, ':');
        ob__buf_json_string(b, h->value, strlen(h->value));
    }
    ob__buf_putc(b, '}');
}

static void column_elem(ob__buf_t *b, ob__buf_t *scratch,
                        const ob_event_t *ev, const ob_append_result_t *res,
                        int col)
{
    const char *s = NULL;
    size_t n = 0;

    switch (col) {
    case COL_ID: s = res->event_id; break;
    case COL_TYPE: s = ev->aggregate_type; break;
    case COL_AGG: s = ev->aggregate_id; break;
    case COL_EVENT: s = ev->event_type; break;
    case COL_PAYLOAD: s = ev->payload; n = payload_length(ev); break;
    case COL_KEY: s = res->key; break;
    case COL_TOPIC: s = ev->topic; break;
    case COL_HEADERS:
        if (ev->header_count == 0)
            break;
        ob__buf_reset(scratch);
        headers_json(scratch, ev);
        s = scratch->failed ? "" : scratch->data;
        n = scratch->len;
        break;
    }

    if (s == NULL) {
        ob__buf_puts(b, "NULL");
        return;
    }
    ob__buf_array_elem(b, s, n != 0 ? n : strlen(s));
}

/*
 * Writes the COL_COUNT array literals one after the other into b, each
 * NUL-terminated, and records where each starts.
 */
static int build_params(const ob_event_t *events, size_t count,
                        const ob_append_result_t *results, ob__buf_t *b,
                        size_t offsets[COL_COUNT], ob_error_t *err)
{
    ob__buf_t scratch = OB__BUF_INIT;
    size_t i;
    int col;

    for (col = 0; col < COL_COUNT; col++) {
        offsets[col] = b->len;
        ob__buf_putc(b, '{');
        for (i = 0; i < count; i++) {
            if (i > 0)
                ob__buf_putc(b, ',');
            column_elem(b, &scratch, &events[i], &results[i], col);
        }
        ob__buf_append(b, "}", 2);
    }

    if (scratch.failed)
        b->failed = 1;
    ob__buf_free(&scratch);
    return b->failed ? ob__error_nomem(err, "append parameters") : 0;
}

/* The parameters of the VALUES form: the event's own strings. */
static int build_one(const ob_event_t *ev, const ob_append_result_t *res,
                     ob__buf_t *b, const char *values[COL_COUNT],
                     ob_error_t *err)
{
    size_t payload_at, headers_at = 0;

    /* The payload may not be NUL-terminated at payload_len: copy it. */
    payload_at = b->len;
    ob__buf_append(b, ev->payload, payload_length(ev));
    ob__buf_append(b, "", 1);
    if (ev->header_count > 0) {
        headers_at = b->len;
        headers_json(b, ev);
    }
    if (b->failed)
        return ob__error_nomem(err, "append parameters");

    values[COL_ID] = res->event_id;
    values[COL_TYPE] = ev->aggregate_type;
    values[COL_AGG] = ev->aggregate_id;
    values[COL_EVENT] = ev->event_type;
    values[COL_PAYLOAD] = b->data + payload_at;
    values[COL_KEY] = res->key;
    values[COL_TOPIC] = ev->topic;
    values[COL_HEADERS] = ev->header_count > 0 ? b->data + headers_at
                                               : NULL;
    return 0;
}

static int id_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Rows whose id came back were inserted; the others were duplicates. */
static int mark_duplicates(PGresult *res, ob_append_result_t *results,
                           size_t count, size_t *duplicatesp,
                           ob_error_t *err)
{
    size_t n = (size_t)PQntuples(res), i, dups = 0;
    char **ids = ob__calloc(n ? n : 1, sizeof(*ids));

    if (ids == NULL)
        return ob__error_nomem(err, "append result");

    for (i = 0; i < n; i++)
        ids[i] = PQgetvalue(res, (int)i, 0);
    qsort(ids, n, sizeof(*ids), id_cmp);

    for (i = 0; i < count; i++) {
        char *id = results[i].event_id;

        results[i].duplicate =
            bsearch(&id, ids, n, sizeof(*ids), id_cmp) == NULL;
        dups += (size_t)results[i].duplicate;
    }
    ob__free(ids);
    if (duplicatesp != NULL)
        *duplicatesp = dups;
    return 0;
}

static int check_all(const ob_writer_t *w, const ob_event_t *events,
                     size_t count, ob_error_t *err)
{
    size_t i;
    int rc;

    for (i = 0; i < count; i++) {
        rc = check_event(w, &events[i], err);
        if (rc != 0) {
            if (count > 1)
                ob__error_prefix(err, "event %zu", i);
            return rc;
        }
    }
    return 0;
}

/* Whether every key is an event id generated by this call. */
static int keys_fresh(const ob_writer_t *w, const ob_event_t *events,
                      size_t count)
{
    size_t i;

    for (i = 0; i < count; i++) {
        ob_key_mode_t mode = events[i].key_mode ? events[i].key_mode
                                                : w->key_mode;

        if (events[i].key != NULL || mode != OB_KEY_MODE_EVENT_ID)
            return 0;
    }
    return 1;
}

/*
 * Runs the insert and then COMMIT as one pipeline, so both cost a single
 * round trip. On success *resp is the insert's result.
 */
static int exec_commit(PGconn *conn, const char *sql,
                       const char *const *values, PGresult **resp,
                       ob_error_t *err)
{
    int query = 0, rc = 0, synced = 0;
    PGresult *res;

    if (!PQenterPipelineMode(conn))
        return ob__error_pg(err, conn, NULL, "append");
    if (!PQsendQueryParams(conn, sql, COL_COUNT, NULL, values, NULL, NULL,
                           0) ||
        !PQsendQueryParams(conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) ||
        !PQpipelineSync(conn)) {
        rc = ob__error_pg(err, conn, NULL, "append");
        goto exit_pipeline;
    }

    /* The insert's result, NULL, COMMIT's result, NULL, the sync. */
    while (!synced && PQstatus(conn) == CONNECTION_OK) {
        res = PQgetResult(conn);
        if (res == NULL) {
            query++;
            continue;
        }
        switch (PQresultStatus(res)) {
        case PGRES_PIPELINE_SYNC:
            synced = 1;
            break;
        case PGRES_TUPLES_OK:
        case PGRES_COMMAND_OK:
            if (query == 0 && rc == 0) {
                *resp = res;
                res = NULL;
            }
            break;
        default:
            if (rc == 0)
                rc = ob__error_pg(err, conn, res,
                                  query == 0 ? "append" : "commit");
        }
        PQclear(res);
    }
    if (!synced && rc == 0)
        rc = ob__error_pg(err, conn, NULL, "commit");

exit_pipeline:
    if (!PQexitPipelineMode(conn) && rc == 0)
        rc = ob__error_pg(err, conn, NULL, "commit");
    return rc;
}

static int send_batch(ob_writer_t *w, PGconn *conn,
                      const ob_event_t *events, size_t count, int commit,
                      ob_append_result_t *results, size_t *duplicatesp,
                      ob_error_t *err)
{
    int fresh = keys_fresh(w, events, count), which;
    ob__buf_t params = OB__BUF_INIT;
    const char *values[COL_COUNT];
    size_t offsets[COL_COUNT], i;
    PGresult *res = NULL;
    int rc;

    for (i = 0; i < count; i++) {
        rc = event_keys(w, &events[i], &results[i], err);
        if (rc != 0)
            goto free_params;
    }
    if (count == 1) {
        which = fresh ? SQL_ONE_FRESH : SQL_ONE;
        rc = build_one(events, results, &params, values, err);
    } else {
        which = fresh ? SQL_BATCH_FRESH : SQL_BATCH;
        rc = build_params(events, count, results, &params, offsets, err);
        for (i = 0; rc == 0 && i < COL_COUNT; i++)
            values[i] = params.data + offsets[i];
    }
    if (rc != 0)
        goto free_params;

    if (commit)
        rc = exec_commit(conn, w->sql[which], values, &res, err);
    else
        rc = ob__pg_exec_params(conn, w->sql[which], COL_COUNT, values,
                                "append", &res, err);
    if (rc == 0 && !fresh)
        rc = mark_duplicates(res, results, count, duplicatesp, err);
    if (rc == 0)
        ob__log(&w->log, OB_LOG_DEBUG, "writer", "appended %zu events%s",
                count, commit ? " and committed" : "");

free_params:
    PQclear(res);
    ob__buf_free(&params);
    return rc;
}

static int append_events(ob_writer_t *writer, PGconn *conn,
                         const ob_event_t *events, size_t count, int commit,
                         ob_append_result_t *results, size_t *duplicatesp,
                         ob_error_t *err)
{
    ob_append_result_t *own = NULL;
    int rc;

    if (writer == NULL || (events == NULL && count > 0))
        return ob__error_set(err, OB_EINVAL, "writer or events is NULL");
    if (duplicatesp != NULL)
        *duplicatesp = 0;

    rc = check_conn(conn, err);
    if (rc == 0)
        rc = check_all(writer, events, count, err);
    if (rc != 0)
        return rc;
    if (count == 0)
        return commit ? ob__pg_exec(conn, "COMMIT", "commit", err) : 0;

    if (results == NULL) {
        own = ob__calloc(count, sizeof(*own));
        if (own == NULL)
            return ob__error_nomem(err, "append results");
        results = own;
    }
    rc = send_batch(writer, conn, events, count, commit, results,
                    duplicatesp, err);
    ob__free(own);
    return rc;
}

int ob_writer_append_batch(ob_writer_t *writer, PGconn *conn,
                           const ob_event_t *events, size_t count,
                           ob_append_result_t *results, size_t *duplicatesp,
                           ob_error_t *err)
{
    return append_events(writer, conn, events, count, 0, results,
                         duplicatesp, err);
}

int ob_writer_append_commit(ob_writer_t *writer, PGconn *conn,
                            const ob_event_t *events, size_t count,
                            ob_append_result_t *results, size_t *duplicatesp,
                            ob_error_t *err)
{
    return append_events(writer, conn, events, count, 1, results,
                         duplicatesp, err);
}

int ob_writer_append(ob_writer_t *writer, PGconn *conn, const ob_event_t *ev,
                     ob_append_result_t *res, ob_error_t *err)
{
    ob_append_result_t own;

    if (ev == NULL)
        return ob__error_set(err, OB_EINVAL, "event is NULL");
    return append_events(writer, conn, ev, 1, 0, res != NULL ? res : &own,
                         NULL, err);
}
