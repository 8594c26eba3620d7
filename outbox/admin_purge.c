/*
 * ob_purge(): retention for the outbox's published rows, the inbox's keys
 * and the recorded dead letters. Every table goes in small batches, each
 * DELETE its own transaction, oldest rows first along the index that
 * orders them, so a purge of millions of rows holds no lock for long and
 * leaves the relay and the consumers running.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "core/pg.h"
#include "oncebox/outbox.h"
#include "outbox/admin.h"

/* One table's purge. Its DELETE takes $1 the cutoff, $2 the batch size
 * and, for tables purged one group at a time, $3 the group. */
struct target {
    unsigned bit;
    const char *what;
    const char *retention_key;
    const char *groups_sql; /* NULL: the table is purged in one walk */
    const char *delete_sql;
    size_t tally_offset; /* where ob_purge_result_t counts it */
};

struct purge {
    ob__admin_t a;
    const ob_conf_t *conf;
    const ob__log_t *log;
    char batch[24];
    long long batch_size;
    ob_purge_result_t tally;
};

/*
 * published_at < cutoff implies published_at IS NOT NULL, so the
 * planner walks the partial index on published_at; state = 'published'
 * is there so that no reading of the constraints could ever make this
 * delete a pending or parked row. The batch is collected into an array
 * first, so the delete itself is primary-key lookups whatever the
 * planner guesses about the batch's size (a join can turn into a scan
 * of the whole table).
 */
static const char outbox_delete_sql[] =
    "DELETE FROM %S.outbox WHERE state = 'published' AND id = ANY (ARRAY("
    "SELECT id FROM %S.outbox"
    " WHERE published_at < $1::timestamptz AND state = 'published'"
    " ORDER BY published_at LIMIT $2::integer FOR UPDATE SKIP LOCKED))";

/* The distinct namespaces, one index probe each (a loose index scan),
 * rather than a scan of every key. */
static const char inbox_groups_sql[] =
    "WITH RECURSIVE g(n) AS ("
    " (SELECT namespace FROM %S.inbox ORDER BY namespace LIMIT 1)"
    " UNION ALL"
    " SELECT (SELECT namespace FROM %S.inbox WHERE namespace > g.n"
    "   ORDER BY namespace LIMIT 1) FROM g WHERE g.n IS NOT NULL)"
    " SELECT n FROM g WHERE n IS NOT NULL";

static const char inbox_delete_sql[] =
    "DELETE FROM %S.inbox WHERE namespace = $3 AND idempotency_key = ANY ("
    "ARRAY(SELECT idempotency_key FROM %S.inbox"
    " WHERE namespace = $3 AND claimed_at < $1::timestamptz"
    " ORDER BY claimed_at LIMIT $2::integer FOR UPDATE SKIP LOCKED))";

static const char dead_groups_sql[] =
    "WITH RECURSIVE g(n) AS ("
    " (SELECT consumer_group FROM %S.dead_letters"
    "   ORDER BY consumer_group LIMIT 1)"
    " UNION ALL"
    " SELECT (SELECT consumer_group FROM %S.dead_letters"
    "   WHERE consumer_group > g.n ORDER BY consumer_group LIMIT 1)"
    " FROM g WHERE g.n IS NOT NULL)"
    " SELECT n FROM g WHERE n IS NOT NULL";

static const char dead_delete_sql[] =
    "DELETE FROM %S.dead_letters WHERE id = ANY (ARRAY("
    "SELECT id FROM %S.dead_letters"
    " WHERE consumer_group = $3 AND created_at < $1::timestamptz"
    " ORDER BY created_at LIMIT $2::integer FOR UPDATE SKIP LOCKED))";

static const char cutoff_sql[] =
    "SELECT pg_catalog.to_char((now() - pg_catalog.make_interval("
    "secs => $1::double precision)) AT TIME ZONE 'UTC',"
    " 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

static const struct target targets_table[] = {
    {OB_PURGE_OUTBOX, "outbox", "relay.retention.s", NULL,
     outbox_delete_sql, offsetof(ob_purge_result_t, outbox)},
    {OB_PURGE_INBOX, "inbox", "inbox.retention.s", inbox_groups_sql,
     inbox_delete_sql, offsetof(ob_purge_result_t, inbox)},
    {OB_PURGE_DEAD_LETTERS, "dead letters", "dead_letters.retention.s",
     dead_groups_sql, dead_delete_sql,
     offsetof(ob_purge_result_t, dead_letters)},
};

static long long *tally_of(struct purge *p, const struct target *t)
{
    return (long long *)(void *)((char *)&p->tally + t->tally_offset);
}

/* Runs a query with %S for the schema; the caller PQclear()s *resp. */
static int run(struct purge *p, const char *sql, int nparams,
               const char *const *values, const char *what,
               PGresult **resp, ob_error_t *err)
{
    char *text = ob__admin_sql(&p->a, sql);
    int rc;

    *resp = NULL;
    if (text == NULL)
        return ob__error_nomem(err, "purge statement");
    rc = ob__pg_exec_params(p->a.conn, text, nparams, values, what, resp,
                            err);
    ob__free(text);
    return rc;
}

/* The server's now() minus the retention, fixed for the whole table. */
static int cutoff_get(struct purge *p, const struct target *t, char *out,
                      size_t size, ob_error_t *err)
{
    const char *values[1] = {ob_conf_get(p->conf, t->retention_key)};
    PGresult *res;
    int rc = run(p, cutoff_sql, 1, values, "computing the purge cutoff",
                 &res, err);

    if (rc != 0)
        return rc;
    snprintf(out, size, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return 0;
}

/* Deletes batch after batch until one comes back short. */
static int delete_batches(struct purge *p, const struct target *t,
                          const char *cutoff, const char *group,
                          ob_error_t *err)
{
    const char *values[3] = {cutoff, p->batch, group};
    long long n;
    PGresult *res;
    int rc;

    do {
        rc = run(p, t->delete_sql, group != NULL ? 3 : 2, values,
                 t->what, &res, err);
        if (rc != 0)
            return rc;
        n = strtoll(PQcmdTuples(res), NULL, 10);
        PQclear(res);
        *tally_of(p, t) += n;
        p->tally.statements++;
    } while (n >= p->batch_size);
    return 0;
}

static int purge_groups(struct purge *p, const struct target *t,
                        const char *cutoff, ob_error_t *err)
{
    PGresult *groups;
    int rc, i;

    rc = run(p, t->groups_sql, 0, NULL, t->what, &groups, err);
    for (i = 0; rc == 0 && i < PQntuples(groups); i++)
        rc = delete_batches(p, t, cutoff, PQgetvalue(groups, i, 0), err);
    PQclear(groups);
    return rc;
}

static int purge_target(struct purge *p, const struct target *t,
                        ob_error_t *err)
{
    char cutoff[64];
    long long before = *tally_of(p, t);
    int rc = cutoff_get(p, t, cutoff, sizeof(cutoff), err);

    if (rc != 0)
        return rc;
    if (t->groups_sql != NULL)
        rc = purge_groups(p, t, cutoff, err);
    else
        rc = delete_batches(p, t, cutoff, NULL, err);
    if (rc != 0) {
        ob__error_prefix(err, "purging the %s", t->what);
        return rc;
    }
    ob__log(p->log, OB_LOG_INFO, "purge", "%s: %lld rows older than %s "
            "removed", t->what, *tally_of(p, t) - before, cutoff);
    return 0;
}

static int purge_all(struct purge *p, unsigned targets, ob_error_t *err)
{
    size_t i;
    int rc;

    if (p->a.inside)
        return ob__error_set(err, OB_ESTATE, "purge commits each batch "
                             "itself: call it outside a transaction");
    rc = ob__admin_require_schema(&p->a, err);
    for (i = 0; rc == 0 && i < OB__ARRAY_LEN(targets_table); i++) {
        if (targets & targets_table[i].bit)
            rc = purge_target(p, &targets_table[i], err);
    }
    return rc;
}

/* Only the fields that fit in the caller's size are written. */
static void result_copy(ob_purge_result_t *result,
                        const ob_purge_result_t *tally)
{
    size_t n;

    if (result == NULL)
        return;
    n = result->size < sizeof(*tally) ? result->size : sizeof(*tally);
    memcpy((char *)result + sizeof(result->size),
           (const char *)tally + sizeof(tally->size),
           n - sizeof(result->size));
}

static int args_check(unsigned targets, const ob_purge_result_t *result,
                      ob_error_t *err)
{
    if (targets & ~OB_PURGE_ALL)
        return ob__error_set(err, OB_EINVAL, "purge: unknown target bits "
                             "0x%x", targets & ~OB_PURGE_ALL);
    if (result != NULL &&
        result->size < offsetof(ob_purge_result_t, inbox))
        return ob__error_set(err, OB_EINVAL, "purge: result->size is not "
                             "set (initialise with OB_PURGE_RESULT_INIT)");
    return 0;
}

int ob_purge(PGconn *conn, const char *schema, const ob_conf_t *conf,
             unsigned targets, ob_purge_result_t *result, ob_error_t *err)
{
    struct purge p;
    ob_conf_t *defaults = NULL;
    int rc = args_check(targets, result, err);

    if (rc != 0)
        return rc;
    if (conf == NULL && (rc = ob_conf_new(&defaults, err)) != 0)
        return rc;

    memset(&p, 0, sizeof(p));
    p.conf = conf != NULL ? conf : defaults;
    p.log = ob__conf_log(conf);
    p.batch_size = ob__conf_int(p.conf, "purge.batch.size");
    snprintf(p.batch, sizeof(p.batch), "%lld", p.batch_size);
    rc = ob__admin_open(&p.a, conn,
                        schema != NULL ? schema
                                       : ob_conf_get(p.conf, "schema"),
                        err);
    if (rc == 0)
        rc = purge_all(&p, targets != 0 ? targets : OB_PURGE_ALL, err);

    result_copy(result, &p.tally);
    ob__admin_close(&p.a);
    ob_conf_destroy(defaults);
    return rc;
}
