/*
 * Parked rows: listing what the relay gave up on, and replaying it. A
 * replay only changes the row's state and attempt bookkeeping; its place
 * in its aggregate's order (seq) stays, which is what keeps the order
 * when the relay publishes it again.
 */
#include <stdlib.h>
#include <string.h>

#include "core/pg.h"
#include "oncebox/outbox.h"
#include "oncebox/schema.h"
#include "outbox/admin.h"

struct parked_row {
    char *id;
    char *aggregate_type;
    char *aggregate_id;
    char *event_type;
    int retry_count;
    char *last_error;
    char *created_at;
    char *topic;
};

struct ob_parked {
    long long total;
    size_t count;
    struct parked_row *rows;
};

/*
 * The window count runs before LIMIT, so it counts every parked row; an
 * empty result means there is none, as the limit is never 0.
 */
static const char list_sql[] =
    "SELECT id::text, aggregate_type, aggregate_id, event_type,"
    " retry_count, last_error, " OB__ADMIN_ISO("created_at") ", topic,"
    " count(*) OVER ()"
    " FROM %S.outbox WHERE state = 'parked' ORDER BY seq LIMIT $1::bigint";

/*
 * One statement: the update, then a wake-up for the relays when it
 * changed anything. NOTIFY is sent at commit, so a relay that wakes sees
 * the rows pending.
 */
static const char replay_sql[] =
    "WITH r AS (UPDATE %S.outbox SET state = 'pending', retry_count = 0,"
    " next_attempt_at = now()"
    " WHERE state = 'parked' AND ($1::uuid IS NULL OR id = $1::uuid)"
    " RETURNING 1)"
    " SELECT n, (SELECT count(*) FROM (SELECT pg_catalog.pg_notify($2, '')"
    "   WHERE n > 0) w)"
    " FROM (SELECT count(*) AS n FROM r) c";

static int row_read(struct parked_row *row, const PGresult *res, int i)
{
    int nomem = 0;

    row->id = ob__admin_text(res, i, 0, &nomem);
    row->aggregate_type = ob__admin_text(res, i, 1, &nomem);
    row->aggregate_id = ob__admin_text(res, i, 2, &nomem);
    row->event_type = ob__admin_text(res, i, 3, &nomem);
    row->retry_count = (int)ob__admin_ll(res, i, 4, 0);
    row->last_error = ob__admin_text(res, i, 5, &nomem);
    row->created_at = ob__admin_text(res, i, 6, &nomem);
    row->topic = ob__admin_text(res, i, 7, &nomem);
    return nomem;
}

static int list_read(ob_parked_t *p, ob__admin_t *a, size_t limit,
                     ob_error_t *err)
{
    char *sql = ob__admin_sql(a, list_sql), n[32];
    const char *values[1] = {limit > 0 ? n : NULL};
    PGresult *res;
    int rc, i, nomem = 0;

    if (sql == NULL)
        return ob__error_nomem(err, "parked rows");
    snprintf(n, sizeof(n), "%zu", limit);
    rc = ob__pg_exec_params(a->conn, sql, 1, values,
                            "reading the parked rows", &res, err);
    ob__free(sql);
    if (rc != 0)
        return rc;

    p->rows = ob__calloc((size_t)PQntuples(res) + 1, sizeof(*p->rows));
    nomem = p->rows == NULL;
    for (i = 0; !nomem && i < PQntuples(res); i++)
        nomem = row_read(&p->rows[p->count++], res, i);
    if (PQntuples(res) > 0)
        p->total = ob__admin_ll(res, 0, 8, 0);
    PQclear(res);
    return nomem ? ob__error_nomem(err, "parked rows") : 0;
}

int ob_parked_new(PGconn *conn, const char *schema, size_t limit,
                  ob_parked_t **parkedp, ob_error_t *err)
{
    ob_parked_t *p = NULL;
    ob__admin_t a;
    int rc;

    if (parkedp == NULL)
        return ob__error_set(err, OB_EINVAL, "parked: parkedp is NULL");
    *parkedp = NULL;
    rc = ob__admin_open(&a, conn, schema, err);
    if (rc != 0)
        return rc;

    p = ob__calloc(1, sizeof(*p));
    if (p == NULL) {
        rc = ob__error_nomem(err, "parked rows");
        goto close;
    }
    rc = ob__admin_require_schema(&a, err);
    if (rc == 0)
        rc = list_read(p, &a, limit, err);
close:
    ob__admin_close(&a);
    if (rc == 0)
        *parkedp = p;
    else
        ob_parked_destroy(p);
    return rc;
}

void ob_parked_destroy(ob_parked_t *parked)
{
    size_t i;

    if (parked == NULL)
        return;

    for (i = 0; i < parked->count; i++) {
        struct parked_row *r = &parked->rows[i];

        ob__free(r->id);
        ob__free(r->aggregate_type);
        ob__free(r->aggregate_id);
        ob__free(r->event_type);
        ob__free(r->last_error);
        ob__free(r->created_at);
        ob__free(r->topic);
    }
    ob__free(parked->rows);
    ob__free(parked);
}

static int hex_digit(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
           (c >= 'A' && c <= 'F');
}

/* The 8-4-4-4-12 form, so that no malformed id reaches the server. */
static int uuid_check(const char *id, ob_error_t *err)
{
    size_t i, len = strlen(id);

    for (i = 0; len == 36 && i < len; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;

        if (dash ? id[i] != '-' : !hex_digit(id[i]))
            break;
    }
    if (len == 36 && i == len)
        return 0;
    return ob__error_set(err, OB_EINVAL, "\"%.64s\" is not an event id (a "
                         "UUID such as 0190a5b2-7c4e-7d1a-9f3b-2c4d5e6f7a8b)",
                         id);
}

static int replay_run(ob__admin_t *a, const char *id, long long *countp,
                      ob_error_t *err)
{
    char channel[OB_SCHEMA_CHANNEL_SIZE], *sql;
    const char *values[2] = {id, channel};
    PGresult *res;
    int rc;

    rc = ob_schema_channel(a->schema, channel, sizeof(channel), err);
    if (rc != 0)
        return rc;
    sql = ob__admin_sql(a, replay_sql);
    if (sql == NULL)
        return ob__error_nomem(err, "replay");

    rc = ob__pg_exec_params(a->conn, sql, 2, values,
                            "replaying parked rows", &res, err);
    ob__free(sql);
    if (rc != 0)
        return rc;
    *countp = ob__admin_ll(res, 0, 0, 0);
    PQclear(res);
    return 0;
}

int ob_parked_replay(PGconn *conn, const char *schema, const char *id,
                     long long *countp, ob_error_t *err)
{
    long long count = 0;
    ob__admin_t a;
    int rc;

    if (id != NULL && (rc = uuid_check(id, err)) != 0)
        return rc;
    rc = ob__admin_open(&a, conn, schema, err);
    if (rc != 0)
        return rc;

    rc = ob__admin_require_schema(&a, err);
    if (rc == 0)
        rc = replay_run(&a, id, &count, err);
    if (rc == 0 && id != NULL && count == 0)
        rc = ob__error_set(err, OB_ENOTFOUND, "no parked row has the id "
                           "%s (it does not exist, or is pending or "
                           "published)", id);
    if (rc == 0 && countp != NULL)
        *countp = count;
    ob__admin_close(&a);
    return rc;
}

/* The accessors. Out-of-range indexes give NULL or -1. */

size_t ob_parked_count(const ob_parked_t *parked)
{
    return parked != NULL ? parked->count : 0;
}

long long ob_parked_total(const ob_parked_t *parked)
{
    return parked != NULL ? parked->total : 0;
}

static const struct parked_row *row_at(const ob_parked_t *parked, size_t i)
{
    if (parked == NULL || i >= parked->count)
        return NULL;
    return &parked->rows[i];
}

const char *ob_parked_id(const ob_parked_t *parked, size_t i)
{
    const struct parked_row *r = row_at(parked, i);

    return r != NULL ? r->id : NULL;
}

const char *ob_parked_aggregate_type(const ob_parked_t *parked, size_t i)
{
    const struct parked_row *r = row_at(parked, i);

    return r != NULL ? r->aggregate_type : NULL;
}

const char *ob_parked_aggregate_id(const ob_parked_t *parked, size_t i)
{
    const struct parked_row *r = row_at(parked, i);

    return r != NULL ? r->aggregate_id : NULL;
}

const char *ob_parked_event_type(const ob_parked_t *parked, size_t i)
{
    const struct parked_row *r = row_at(parked, i);

    return r != NULL ? r->event_type : NULL;
}

int ob_parked_retry_count(const ob_parked_t *parked, size_t i)
{
    const struct parked_row *r = row_at(parked, i);

    return r != NULL ? r->retry_count : -1;
}

const char *ob_parked_last_error(const ob_parked_t *parked, size_t i)
{
    const struct parked_row *r = row_at(parked, i);

    return r != NULL ? r->last_error : NULL;
}

const char *ob_parked_created_at(const ob_parked_t *parked, size_t i)
{
    const struct parked_row *r = row_at(parked, i);

    return r != NULL ? r->created_at : NULL;
}

const char *ob_parked_topic(const ob_parked_t *parked, size_t i)
{
    const struct parked_row *r = row_at(parked, i);

    return r != NULL ? r->topic : NULL;
}
