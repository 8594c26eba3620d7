/*
 * ob_status_new(): the pipeline's health in one snapshot: the outbox
 * backlog and its ages, parked and published rows, which relay owns
 * which lane group, the inbox sizes and the CDC relay's slots.
 */
#include <stdlib.h>
#include <string.h>

#include "core/pg.h"
#include "oncebox/outbox.h"
#include "outbox/admin.h"

struct lane {
    long long pending;
    int pid; /* 0: no owner */
    char *application;
    char *client_addr;
    char *since;
};

struct inbox_ns {
    char *name;
    long long keys;
    double oldest_age;
};

struct slot {
    char *name;
    char *plugin;
    int active;
    long long lag_bytes;
    long long retained_bytes;
};

struct ob_status {
    char *schema;
    char *taken_at;
    long long pending, due, retrying, parked, published;
    double oldest_pending_age, oldest_published_age;
    int lanes, lanes_recorded, lanes_owned, relays;
    struct lane *lane;
    struct inbox_ns *inbox;
    size_t inbox_count;
    struct slot *slot;
    size_t slot_count;
};

/*
 * Each figure its own scalar subquery, so that each can use the partial
 * index whose predicate it repeats (published_at IS NOT NULL is the
 * published index's, equivalent to state = 'published').
 */
static const char outbox_sql[] =
    "SELECT"
    " (SELECT count(*) FROM %S.outbox WHERE state = 'pending'),"
    " (SELECT count(*) FROM %S.outbox WHERE state = 'pending'"
    "   AND next_attempt_at <= now()),"
    " (SELECT count(*) FROM %S.outbox WHERE state = 'pending'"
    "   AND retry_count > 0),"
    " (SELECT count(*) FROM %S.outbox WHERE state = 'parked'),"
    " (SELECT count(*) FROM %S.outbox WHERE published_at IS NOT NULL),"
    " (SELECT " OB__ADMIN_AGE_MS("min(created_at)") " FROM %S.outbox"
    "   WHERE state = 'pending'),"
    " (SELECT " OB__ADMIN_AGE_MS("min(published_at)") " FROM %S.outbox"
    "   WHERE published_at IS NOT NULL),"
    " " OB__ADMIN_ISO("now()");

static const char relay_config_sql[] =
    "SELECT pg_catalog.to_regclass($1) IS NOT NULL";

static const char lanes_recorded_sql[] =
    "SELECT lanes FROM %S.relay_config LIMIT 1";

static const char lane_pending_sql[] =
    "SELECT lane % $1::integer, count(*) FROM %S.outbox"
    " WHERE state = 'pending' GROUP BY 1";

/*
 * The owners, by the contract the relay keeps: group g of a schema is
 * the session advisory lock (hashtext('oncebox.relay:' || schema), g) in
 * this database, which pg_locks shows as classid (the hash, as an oid),
 * objid (g) and objsubid 2.
 */
static const char owners_sql[] =
    "SELECT l.objid::bigint, l.pid, a.application_name,"
    " pg_catalog.host(a.client_addr), " OB__ADMIN_ISO("a.backend_start")
    " FROM pg_catalog.pg_locks l"
    " LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2"
    " AND l.database = (SELECT oid FROM pg_catalog.pg_database"
    "   WHERE datname = pg_catalog.current_database())"
    " AND l.classid = pg_catalog.hashtext('oncebox.relay:' || $1)::oid"
    " AND l.objid::bigint < $2::bigint";

/* Every live relay holds (hashtext('oncebox.relay.member:' || schema), 0)
 * in shared mode, so the holders are the relays. */
static const char relays_sql[] =
    "SELECT count(*) FROM pg_catalog.pg_locks l"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2"
    " AND l.database = (SELECT oid FROM pg_catalog.pg_database"
    "   WHERE datname = pg_catalog.current_database())"
    " AND l.classid = pg_catalog.hashtext('oncebox.relay.member:' || $1)::oid"
    " AND l.objid = 0";

static const char inbox_sql[] =
    "SELECT namespace, count(*), " OB__ADMIN_AGE_MS("min(claimed_at)")
    " FROM %S.inbox GROUP BY namespace ORDER BY namespace";

static const char slots_sql[] =
    "SELECT s.slot_name, s.plugin, s.active,"
    " pg_catalog.pg_wal_lsn_diff(c.lsn, s.confirmed_flush_lsn)::bigint,"
    " pg_catalog.pg_wal_lsn_diff(c.lsn, s.restart_lsn)::bigint"
    " FROM pg_catalog.pg_replication_slots s,"
    " (SELECT CASE WHEN pg_catalog.pg_is_in_recovery()"
    "   THEN pg_catalog.pg_last_wal_replay_lsn()"
    "   ELSE pg_catalog.pg_current_wal_lsn() END AS lsn) c"
    " WHERE pg_catalog.left(s.slot_name::text, 7) = 'oncebox'"
    " ORDER BY s.slot_name";

/* Runs sql (with %S for the schema) with text parameters. */
static int query(ob__admin_t *a, const char *sql, int nparams,
                 const char *const *values, const char *what,
                 PGresult **resp, ob_error_t *err)
{
    char *text = ob__admin_sql(a, sql);
    int rc;

    *resp = NULL;
    if (text == NULL)
        return ob__error_nomem(err, "status query");
    rc = ob__pg_exec_params(a->conn, text, nparams, values, what, resp, err);
    ob__free(text);
    return rc;
}

static int read_outbox(ob_status_t *s, ob__admin_t *a, ob_error_t *err)
{
    PGresult *res;
    int nomem = 0;
    int rc = query(a, outbox_sql, 0, NULL, "reading the outbox figures",
                   &res, err);

    if (rc != 0)
        return rc;

    s->pending = ob__admin_ll(res, 0, 0, 0);
    s->due = ob__admin_ll(res, 0, 1, 0);
    s->retrying = ob__admin_ll(res, 0, 2, 0);
    s->parked = ob__admin_ll(res, 0, 3, 0);
    s->published = ob__admin_ll(res, 0, 4, 0);
    s->oldest_pending_age = ob__admin_age(res, 0, 5);
    s->oldest_published_age = ob__admin_age(res, 0, 6);
    s->taken_at = ob__admin_text(res, 0, 7, &nomem);
    PQclear(res);
    return nomem ? ob__error_nomem(err, "status") : 0;
}

/* N as the relays recorded it, or the default when none has run yet. */
static int read_lane_count(ob_status_t *s, ob__admin_t *a, ob_error_t *err)
{
    char *table = ob__admin_sql(a, "%S.relay_config");
    const char *values[1] = {table};
    PGresult *res = NULL;
    int rc;

    s->lanes = OB_STATUS_LANES_DEFAULT;
    if (table == NULL)
        return ob__error_nomem(err, "status query");
    rc = ob__pg_exec_params(a->conn, relay_config_sql, 1, values,
                            "looking for the relay configuration", &res,
                            err);
    ob__free(table);
    if (rc != 0 || strcmp(PQgetvalue(res, 0, 0), "t") != 0)
        goto clear;

    PQclear(res);
    rc = query(a, lanes_recorded_sql, 0, NULL,
               "reading the relay configuration", &res, err);
    if (rc == 0 && PQntuples(res) == 1) {
        long long n = ob__admin_ll(res, 0, 0, 0);

        if (n >= 1 && n <= 1024) {
            s->lanes = (int)n;
            s->lanes_recorded = 1;
        }
    }
clear:
    PQclear(res);
    return rc;
}

static int read_lane_pending(ob_status_t *s, ob__admin_t *a,
                             ob_error_t *err)
{
    char n[16];
    const char *values[1] = {n};
    PGresult *res;
    int rc, i;

    snprintf(n, sizeof(n), "%d", s->lanes);
    rc = query(a, lane_pending_sql, 1, values,
               "counting the backlog per lane group", &res, err);
    if (rc != 0)
        return rc;

    for (i = 0; i < PQntuples(res); i++) {
        long long g = ob__admin_ll(res, i, 0, -1);

        if (g >= 0 && g < s->lanes)
            s->lane[g].pending = ob__admin_ll(res, i, 1, 0);
    }
    PQclear(res);
    return 0;
}

static int read_owners(ob_status_t *s, ob__admin_t *a, ob_error_t *err)
{
    char n[16];
    const char *values[2] = {a->schema, n};
    PGresult *res;
    int rc, i, nomem = 0;

    snprintf(n, sizeof(n), "%d", s->lanes);
    rc = ob__pg_exec_params(a->conn, owners_sql, 2, values,
                            "reading the lane owners", &res, err);
    if (rc != 0)
        return rc;

    for (i = 0; i < PQntuples(res); i++) {
        long long g = ob__admin_ll(res, i, 0, -1);
        struct lane *l;

        /* A granted exclusive lock has one holder: one row per group. */
        if (g < 0 || g >= s->lanes || s->lane[g].pid != 0)
            continue;
        l = &s->lane[g];
        l->pid = (int)ob__admin_ll(res, i, 1, 0);
        l->application = ob__admin_text(res, i, 2, &nomem);
        l->client_addr = ob__admin_text(res, i, 3, &nomem);
        l->since = ob__admin_text(res, i, 4, &nomem);
        s->lanes_owned++;
    }
    PQclear(res);
    return nomem ? ob__error_nomem(err, "status") : 0;
}

static int read_relays(ob_status_t *s, ob__admin_t *a, ob_error_t *err)
{
    const char *values[1] = {a->schema};
    PGresult *res;
    int rc = ob__pg_exec_params(a->conn, relays_sql, 1, values,
                                "counting the live relays", &res, err);

    if (rc != 0)
        return rc;
    s->relays = (int)ob__admin_ll(res, 0, 0, 0);
    PQclear(res);
    return 0;
}

static int read_lanes(ob_status_t *s, ob__admin_t *a, ob_error_t *err)
{
    int rc = read_lane_count(s, a, err);

    if (rc != 0)
        return rc;

    s->lane = ob__calloc((size_t)s->lanes, sizeof(*s->lane));
    if (s->lane == NULL)
        return ob__error_nomem(err, "status");
    rc = read_lane_pending(s, a, err);
    if (rc == 0)
        rc = read_owners(s, a, err);
    if (rc == 0)
        rc = read_relays(s, a, err);
    return rc;
}

static int read_inbox(ob_status_t *s, ob__admin_t *a, ob_error_t *err)
{
    PGresult *res;
    int rc, i, nomem = 0;

    rc = query(a, inbox_sql, 0, NULL, "counting the inbox keys", &res, err);
    if (rc != 0)
        return rc;

    s->inbox = ob__calloc((size_t)PQntuples(res) + 1, sizeof(*s->inbox));
    if (s->inbox == NULL)
        nomem = 1;
    for (i = 0; !nomem && i < PQntuples(res); i++) {
        struct inbox_ns *ns = &s->inbox[s->inbox_count++];

        ns->name = ob__admin_text(res, i, 0, &nomem);
        ns->keys = ob__admin_ll(res, i, 1, 0);
        ns->oldest_age = ob__admin_age(res, i, 2);
    }
    PQclear(res);
    return nomem ? ob__error_nomem(err, "status") : 0;
}

static int read_slots(ob_status_t *s, ob__admin_t *a, ob_error_t *err)
{
    PGresult *res;
    int rc, i, nomem = 0;

    rc = ob__pg_exec_params(a->conn, slots_sql, 0, NULL,
                            "reading the replication slots", &res, err);
    if (rc != 0)
        return rc;

    s->slot = ob__calloc((size_t)PQntuples(res) + 1, sizeof(*s->slot));
    if (s->slot == NULL)
        nomem = 1;
    for (i = 0; !nomem && i < PQntuples(res); i++) {
        struct slot *sl = &s->slot[s->slot_count++];

        sl->name = ob__admin_text(res, i, 0, &nomem);
        sl->plugin = ob__admin_text(res, i, 1, &nomem);
        sl->active = strcmp(PQgetvalue(res, i, 2), "t") == 0;
        sl->lag_bytes = ob__admin_ll(res, i, 3, -1);
        sl->retained_bytes = ob__admin_ll(res, i, 4, -1);
    }
    PQclear(res);
    return nomem ? ob__error_nomem(err, "status") : 0;
}

static int read_all(ob_status_t *s, ob__admin_t *a, ob_error_t *err)
{
    int rc = ob__admin_require_schema(a, err);

    if (rc == 0)
        rc = read_outbox(s, a, err);
    if (rc == 0)
        rc = read_lanes(s, a, err);
    if (rc == 0)
        rc = read_inbox(s, a, err);
    if (rc == 0)
        rc = read_slots(s, a, err);
    return rc;
}

int ob_status_new(PGconn *conn, const char *schema, ob_status_t **statusp,
                  ob_error_t *err)
{
    ob_status_t *s = NULL;
    ob__admin_t a;
    int rc;

    if (statusp == NULL)
        return ob__error_set(err, OB_EINVAL, "status: statusp is NULL");
    *statusp = NULL;
    rc = ob__admin_open(&a, conn, schema, err);
    if (rc != 0)
        return rc;

    s = ob__calloc(1, sizeof(*s));
    if (s == NULL || (s->schema = ob__strdup(a.schema)) == NULL) {
        rc = ob__error_nomem(err, "status");
        goto close;
    }
    rc = ob__admin_begin_read(&a, err);
    if (rc != 0)
        goto close;

    rc = read_all(s, &a, err);
    if (ob__admin_end(&a, rc != 0, err) != 0)
        rc = OB_EPG;
close:
    ob__admin_close(&a);
    if (rc == 0)
        *statusp = s;
    else
        ob_status_destroy(s);
    return rc;
}

void ob_status_destroy(ob_status_t *status)
{
    size_t i;
    int g;

    if (status == NULL)
        return;

    for (g = 0; status->lane != NULL && g < status->lanes; g++) {
        ob__free(status->lane[g].application);
        ob__free(status->lane[g].client_addr);
        ob__free(status->lane[g].since);
    }
    for (i = 0; i < status->inbox_count; i++)
        ob__free(status->inbox[i].name);
    for (i = 0; i < status->slot_count; i++) {
        ob__free(status->slot[i].name);
        ob__free(status->slot[i].plugin);
    }
    ob__free(status->lane);
    ob__free(status->inbox);
    ob__free(status->slot);
    ob__free(status->taken_at);
    ob__free(status->schema);
    ob__free(status);
}

/* The accessors. Out-of-range indexes give "nothing" rather than crash. */

const char *ob_status_schema(const ob_status_t *status)
{
    return status != NULL ? status->schema : NULL;
}

const char *ob_status_taken_at(const ob_status_t *status)
{
    return status != NULL ? status->taken_at : NULL;
}

long long ob_status_pending(const ob_status_t *status)
{
    return status != NULL ? status->pending : 0;
}

long long ob_status_due(const ob_status_t *status)
{
    return status != NULL ? status->due : 0;
}

long long ob_status_retrying(const ob_status_t *status)
{
    return status != NULL ? status->retrying : 0;
}

long long ob_status_parked(const ob_status_t *status)
{
    return status != NULL ? status->parked : 0;
}

long long ob_status_published(const ob_status_t *status)
{
    return status != NULL ? status->published : 0;
}

double ob_status_oldest_pending_age(const ob_status_t *status)
{
    return status != NULL ? status->oldest_pending_age : -1.0;
}

double ob_status_oldest_published_age(const ob_status_t *status)
{
    return status != NULL ? status->oldest_published_age : -1.0;
}

int ob_status_lanes(const ob_status_t *status)
{
    return status != NULL ? status->lanes : 0;
}

int ob_status_lanes_recorded(const ob_status_t *status)
{
    return status != NULL ? status->lanes_recorded : 0;
}

int ob_status_lanes_owned(const ob_status_t *status)
{
    return status != NULL ? status->lanes_owned : 0;
}

int ob_status_relays(const ob_status_t *status)
{
    return status != NULL ? status->relays : 0;
}

static const struct lane *lane_at(const ob_status_t *status, int g)
{
    if (status == NULL || g < 0 || g >= status->lanes)
        return NULL;
    return &status->lane[g];
}

long long ob_status_lane_pending(const ob_status_t *status, int g)
{
    const struct lane *l = lane_at(status, g);

    return l != NULL ? l->pending : 0;
}

int ob_status_lane_pid(const ob_status_t *status, int g)
{
    const struct lane *l = lane_at(status, g);

    return l != NULL ? l->pid : 0;
}

const char *ob_status_lane_application(const ob_status_t *status, int g)
{
    const struct lane *l = lane_at(status, g);

    return l != NULL ? l->application : NULL;
}

const char *ob_status_lane_client_addr(const ob_status_t *status, int g)
{
    const struct lane *l = lane_at(status, g);

    return l != NULL ? l->client_addr : NULL;
}

const char *ob_status_lane_since(const ob_status_t *status, int g)
{
    const struct lane *l = lane_at(status, g);

    return l != NULL ? l->since : NULL;
}

size_t ob_status_inbox_count(const ob_status_t *status)
{
    return status != NULL ? status->inbox_count : 0;
}

static const struct inbox_ns *inbox_at(const ob_status_t *status, size_t i)
{
    if (status == NULL || i >= status->inbox_count)
        return NULL;
    return &status->inbox[i];
}

const char *ob_status_inbox_namespace(const ob_status_t *status, size_t i)
{
    const struct inbox_ns *ns = inbox_at(status, i);

    return ns != NULL ? ns->name : NULL;
}

long long ob_status_inbox_keys(const ob_status_t *status, size_t i)
{
    const struct inbox_ns *ns = inbox_at(status, i);

    return ns != NULL ? ns->keys : 0;
}

double ob_status_inbox_oldest_age(const ob_status_t *status, size_t i)
{
    const struct inbox_ns *ns = inbox_at(status, i);

    return ns != NULL ? ns->oldest_age : -1.0;
}

size_t ob_status_slot_count(const ob_status_t *status)
{
    return status != NULL ? status->slot_count : 0;
}

static const struct slot *slot_at(const ob_status_t *status, size_t i)
{
    if (status == NULL || i >= status->slot_count)
        return NULL;
    return &status->slot[i];
}

const char *ob_status_slot_name(const ob_status_t *status, size_t i)
{
    const struct slot *sl = slot_at(status, i);

    return sl != NULL ? sl->name : NULL;
}

const char *ob_status_slot_plugin(const ob_status_t *status, size_t i)
{
    const struct slot *sl = slot_at(status, i);

    return sl != NULL ? sl->plugin : NULL;
}

int ob_status_slot_active(const ob_status_t *status, size_t i)
{
    const struct slot *sl = slot_at(status, i);

    return sl != NULL ? sl->active : 0;
}

long long ob_status_slot_lag_bytes(const ob_status_t *status, size_t i)
{
    const struct slot *sl = slot_at(status, i);

    return sl != NULL ? sl->lag_bytes : -1;
}

long long ob_status_slot_retained_bytes(const ob_status_t *status, size_t i)
{
    const struct slot *sl = slot_at(status, i);

    return sl != NULL ? sl->retained_bytes : -1;
}
