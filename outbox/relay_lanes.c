/*
 * Lane groups: which relay publishes which part of the outbox. The
 * locks are the truth (see relay.h); this file only decides, from what
 * pg_locks shows, how many groups this relay should hold, and takes or
 * releases the difference. It runs between batches, so a group is never
 * released while this relay has rows of it claimed.
 *
 * The rule, with N groups and K live relays: hold at most ceil(N/K);
 * while some relay holds fewer than floor(N/K), hold at most floor(N/K)
 * and leave the free groups to it. Every relay applying it alone
 * converges on shares that differ by at most one, without talking to
 * the others.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbox/relay_internal.h"

#define MEMBERS_MAX 1024

/* Every lane owner and every live relay of the schema in this database. */
static const char owners_sql[] =
    "SELECT l.objid::bigint, l.pid, l.classid = " OB__RELAY_MEMBER_KEY "::oid"
    " FROM pg_catalog.pg_locks l"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2"
    " AND l.database = (SELECT oid FROM pg_catalog.pg_database"
    " WHERE datname = pg_catalog.current_database())"
    " AND ((l.classid = " OB__RELAY_LANE_KEY "::oid"
    " AND l.objid::bigint < $2::bigint)"
    " OR (l.classid = " OB__RELAY_MEMBER_KEY "::oid AND l.objid = 0))";

static const char take_sql[] =
    "SELECT g FROM unnest($2::integer[]) AS g"
    " WHERE pg_catalog.pg_try_advisory_lock(" OB__RELAY_LANE_KEY ", g)";

static const char release_sql[] =
    "SELECT pg_catalog.pg_advisory_unlock(" OB__RELAY_LANE_KEY ", g)"
    " FROM unnest($2::integer[]) AS g";

typedef struct lanes_view {
    int owner[OB__LANES_MAX]; /* backend pid of the holder, 0: free */
    int members[MEMBERS_MAX];
    int member_count;
} lanes_view_t;

static void member_add(lanes_view_t *v, int pid)
{
    int i;

    for (i = 0; i < v->member_count; i++) {
        if (v->members[i] == pid)
            return;
    }
    if (v->member_count < MEMBERS_MAX)
        v->members[v->member_count++] = pid;
}

static int view_read(ob_relay_t *r, lanes_view_t *v, ob_error_t *err)
{
    char lanes[16];
    PGresult *res;
    int i, rc;
    long long g;

    snprintf(lanes, sizeof(lanes), "%d", r->set.lanes);
    rc = ob__relay_pg_query(r, owners_sql, 2, r->set.schema, lanes,
                            "reading the lane owners", &res, err);
    if (rc != 0)
        return rc;

    memset(v, 0, sizeof(*v));
    member_add(v, PQbackendPID(r->pg.conn));
    for (i = 0; i < PQntuples(res); i++) {
        g = atoll(PQgetvalue(res, i, 0));
        if (PQgetvalue(res, i, 2)[0] == 't')
            member_add(v, atoi(PQgetvalue(res, i, 1)));
        else if (g >= 0 && g < r->set.lanes)
            v->owner[g] = atoi(PQgetvalue(res, i, 1));
    }
    PQclear(res);
    return 0;
}

static int held_by(const lanes_view_t *v, int lanes, int pid)
{
    int g, n = 0;

    for (g = 0; g < lanes; g++)
        n += v->owner[g] == pid;
    return n;
}

/* How many groups this relay should hold now. */
static int share(const lanes_view_t *v, int lanes)
{
    int k = v->member_count, low = lanes / k, i;

    for (i = 0; i < k; i++) {
        if (held_by(v, lanes, v->members[i]) < low)
            return low;
    }
    return (lanes + k - 1) / k;
}

static int groups_query(ob_relay_t *r, const char *sql, const int *groups,
                        int n, PGresult **resp, ob_error_t *err)
{
    char list[OB__LANES_MAX * 6];
    size_t used = 0;
    int i;

    list[used++] = '{';
    for (i = 0; i < n; i++)
        used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%d",
                                 i ? "," : "", groups[i]);
    snprintf(list + used, sizeof(list) - used, "}");
    return ob__relay_pg_query(r, sql, 2, r->set.schema, list,
                              "changing the held lane groups", resp, err);
}

/* Releases the highest-numbered groups above the share. */
static int release(ob_relay_t *r, int count, ob_error_t *err)
{
    int groups[OB__LANES_MAX] = {0}, n = 0, g, rc;

    for (g = r->set.lanes - 1; g >= 0 && n < count; g--) {
        if (r->pg.held[g])
            groups[n++] = g;
    }
    rc = groups_query(r, release_sql, groups, n, NULL, err);
    if (rc != 0)
        return rc;
    for (g = 0; g < n; g++)
        r->pg.held[groups[g]] = 0;
    r->pg.held_count -= n;
    return 0;
}

/* Tries free groups, in random order so that relays starting together
 * rarely reach for the same ones. */
static int take(ob_relay_t *r, const lanes_view_t *v, int count,
                ob_error_t *err)
{
    int groups[OB__LANES_MAX] = {0}, n = 0, g, i, j, t, rc;
    PGresult *res;

    for (g = 0; g < r->set.lanes; g++) {
        if (v->owner[g] == 0)
            groups[n++] = g;
    }
    for (i = n - 1; i > 0; i--) {
        j = (int)(ob__relay_random(r) % (uint32_t)(i + 1));
        t = groups[i];
        groups[i] = groups[j];
        groups[j] = t;
    }
    rc = groups_query(r, take_sql, groups, n < count ? n : count, &res, err);
    if (rc != 0)
        return rc;
    for (i = 0; i < PQntuples(res); i++) {
        g = atoi(PQgetvalue(res, i, 0));
        if (g >= 0 && g < r->set.lanes && !r->pg.held[g]) {
            r->pg.held[g] = 1;
            r->pg.held_count++;
        }
    }
    PQclear(res);
    return 0;
}

/* What this session holds is what pg_locks says it holds. */
static void held_sync(ob_relay_t *r, const lanes_view_t *v)
{
    int me = PQbackendPID(r->pg.conn), g;

    r->pg.held_count = 0;
    for (g = 0; g < r->set.lanes; g++) {
        r->pg.held[g] = v->owner[g] == me;
        r->pg.held_count += r->pg.held[g];
    }
}

int ob__relay_pg_lanes(ob_relay_t *r, int force, ob_error_t *err)
{
    int before = r->pg.held_count, want, rc;
    lanes_view_t *v;

    if (!force && ob__now_ms() < r->pg.next_lanes_ms)
        return 0;
    r->pg.next_lanes_ms = ob__now_ms() + r->set.lanes_interval_ms;

    v = ob__malloc(sizeof(*v));
    if (v == NULL)
        return ob__error_nomem(err, "lane owners");
    rc = view_read(r, v, err);
    if (rc == 0) {
        held_sync(r, v);
        want = share(v, r->set.lanes);
        if (r->pg.held_count > want)
            rc = release(r, r->pg.held_count - want, err);
        else if (r->pg.held_count < want)
            rc = take(r, v, want - r->pg.held_count, err);
    }
    if (rc == 0 && (r->pg.held_count != before || force)) {
        ob__relay_log(r, OB_LOG_INFO, "relay", "holding %d of %d lane "
                      "groups (%d relays)", r->pg.held_count, r->set.lanes,
                      v->member_count);
        ob__relay_stats_changed(r);
    }
    ob__free(v);
    return rc;
}
