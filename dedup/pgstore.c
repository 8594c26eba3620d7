/*
 * The key store on PostgreSQL: the inbox table of the oncebox schema, on
 * the caller's connection and inside the caller's transaction.
 *
 * A claim is INSERT ... ON CONFLICT DO NOTHING RETURNING: one round trip
 * when the key is new, and a duplicate is not an error, so it never
 * aborts the caller's transaction. Only on a conflict does a second
 * statement read the stored hash; being a new statement it has a new
 * snapshot (under READ COMMITTED), so it sees the row of a concurrent
 * transaction that the INSERT waited for.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dedup/pgstore_internal.h"

/* The statements; SCHEMA_MARK stands for the quoted schema name. */
#define SCHEMA_MARK "@S@"

static const char *const sql_templates[SQL_COUNT] = {
    [SQL_CLAIM] =
        "INSERT INTO @S@.inbox (namespace, idempotency_key, payload_hash,"
        " claimed_at, topic, \"partition\", \"offset\")"
        " VALUES ($1, $2, decode($3, 'hex'), " MS_TO_TS("$4") ","
        " $5, $6::integer, $7::bigint)"
        " ON CONFLICT (namespace, idempotency_key) DO NOTHING RETURNING 1",
    [SQL_READ] =
        "SELECT encode(payload_hash, 'hex'), " TS_TO_MS ", topic,"
        " \"partition\", \"offset\" FROM @S@.inbox"
        " WHERE namespace = $1 AND idempotency_key = $2",
    [SQL_CLAIM_MANY] =
        "INSERT INTO @S@.inbox (namespace, idempotency_key, payload_hash,"
        " claimed_at, topic, \"partition\", \"offset\")"
        " SELECT $1, k, decode(h, 'hex'), " MS_TO_TS("a") ", t, p, o"
        " FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[],"
        " $6::integer[], $7::bigint[]) AS u(k, h, a, t, p, o)"
        " ON CONFLICT (namespace, idempotency_key) DO NOTHING"
        " RETURNING idempotency_key",
    [SQL_READ_MANY] =
        "SELECT idempotency_key, encode(payload_hash, 'hex'), " TS_TO_MS
        " FROM @S@.inbox WHERE namespace = $1"
        " AND idempotency_key = ANY ($2::text[])",
    [SQL_PURGE] =
        "DELETE FROM @S@.inbox WHERE (namespace, idempotency_key) IN"
        " (SELECT namespace, idempotency_key FROM @S@.inbox"
        " WHERE namespace = $1 AND claimed_at < " MS_TO_TS("$2")
        " ORDER BY claimed_at LIMIT $3::bigint)",
    [SQL_COUNT_NS] = "SELECT count(*) FROM @S@.inbox WHERE namespace = $1",
    [SQL_COUNT_ALL] = "SELECT count(*) FROM @S@.inbox",
};

static void pg_destroy(ob_dedup_t *d)
{
    ob__pgstore_t *s = (ob__pgstore_t *)d;
    int i;

    for (i = 0; i < SQL_COUNT; i++)
        ob__free(s->sql[i]);
    ob__free(s);
}

/* tmpl with every SCHEMA_MARK replaced by ident, or NULL (no memory). */
static char *sql_expand(const char *tmpl, const char *ident)
{
    size_t mark = strlen(SCHEMA_MARK), id = strlen(ident), n = 0;
    const char *p, *q;
    char *out, *w;

    for (p = tmpl; (q = strstr(p, SCHEMA_MARK)) != NULL; p = q + mark)
        n++;
    out = ob__malloc(strlen(tmpl) + n * id + 1);
    if (out == NULL)
        return NULL;

    w = out;
    for (p = tmpl; (q = strstr(p, SCHEMA_MARK)) != NULL; p = q + mark) {
        memcpy(w, p, (size_t)(q - p));
        w += q - p;
        memcpy(w, ident, id);
        w += id;
    }
    strcpy(w, p);
    return out;
}

static int pg_sql_build(ob__pgstore_t *s, const char *schema, ob_error_t *err)
{
    char *ident = ob__sql_ident(schema);
    int i;

    if (ident == NULL)
        return ob__error_nomem(err, "dedup store");

    for (i = 0; i < SQL_COUNT; i++) {
        s->sql[i] = sql_expand(sql_templates[i], ident);
        if (s->sql[i] == NULL)
            break;
    }
    ob__free(ident);
    return i == SQL_COUNT ? 0 : ob__error_nomem(err, "dedup store");
}

int ob__pgstore_check_conn(PGconn *conn, int in_txn_only, ob_error_t *err)
{
    switch (PQtransactionStatus(conn)) {
    case PQTRANS_INTRANS:
        return 0;
    case PQTRANS_IDLE:
        if (!in_txn_only)
            return 0;
        return ob__error_set(err, OB_ENOTXN, "connection is not inside a "
                             "transaction: a claim joins the caller's "
                             "transaction, so call BEGIN first");
    case PQTRANS_INERROR:
        return ob__error_set(err, OB_ENOTXN, "the connection's transaction "
                             "is aborted; roll it back first");
    case PQTRANS_ACTIVE:
        return ob__error_set(err, OB_ESTATE, "a command is in progress on "
                             "the connection");
    default:
        return ob__error_full(err, OB_EPG, OB_DOMAIN_POSTGRES, 0,
                              OB_ERROR_RETRIABLE, "the connection is "
                              "broken");
    }
}

void ob__pgstore_hex(const unsigned char *bytes, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 0xf];
    }
    out[2 * n] = '\0';
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int ob__pgstore_hash_decode(const char *hex,
                            unsigned char out[OB_DEDUP_HASH_LEN])
{
    int i, hi, lo;

    if (strlen(hex) != 2 * OB_DEDUP_HASH_LEN)
        return 0;
    for (i = 0; i < OB_DEDUP_HASH_LEN; i++) {
        hi = hex_value(hex[2 * i]);
        lo = hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return 0;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 1;
}

/*
 * A key as a C string for libpq. Keys are checked to hold no NUL, and
 * OB_KEY_MAX is small, so a stack buffer does.
 */
static void key_text(const ob__dedup_name_t *n, char out[OB_KEY_MAX + 1])
{
    memcpy(out, n->key, n->key_len);
    out[n->key_len] = '\0';
}

/* Fills the stored fields of one SQL_READ row into *info. */
static int pg_row_info(const PGresult *res, ob_dedup_info_t *info,
                       ob_error_t *err)
{
    info->found = 1;
    info->claimed_at_ms = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    if (!PQgetisnull(res, 0, 0)) {
        if (!ob__pgstore_hash_decode(PQgetvalue(res, 0, 0), info->hash))
            return ob__error_set(err, OB_ESCHEMA, "dedup: the stored "
                                 "payload hash is not %d bytes",
                                 OB_DEDUP_HASH_LEN);
        info->has_hash = 1;
    }
    if (!PQgetisnull(res, 0, 2))
        snprintf(info->topic, sizeof(info->topic), "%s",
                 PQgetvalue(res, 0, 2));
    if (!PQgetisnull(res, 0, 3))
        info->partition = (int32_t)strtol(PQgetvalue(res, 0, 3), NULL, 10);
    if (!PQgetisnull(res, 0, 4))
        info->offset = strtoll(PQgetvalue(res, 0, 4), NULL, 10);
    return 0;
}

/* Reads the stored entry of n; info->found stays 0 when there is none. */
static int pg_read(ob__pgstore_t *s, PGconn *conn, const ob__dedup_name_t *n,
                   ob_dedup_info_t *info, ob_error_t *err)
{
    char key[OB_KEY_MAX + 1];
    const char *params[2] = {n->ns, key};
    PGresult *res;
    int rc;

    key_text(n, key);
    rc = ob__pg_exec_params(conn, s->sql[SQL_READ], 2, params,
                            "dedup: reading a claimed key", &res, err);
    if (rc != 0)
        return rc;
    if (PQntuples(res) == 1)
        rc = pg_row_info(res, info, err);
    PQclear(res);
    return rc;
}

/* Runs the INSERT; *inserted says whether the key was new. */
static int pg_insert(ob__pgstore_t *s, PGconn *conn, const ob__dedup_claim_t *c,
                     int *inserted, ob_error_t *err)
{
    char key[OB_KEY_MAX + 1], hash[2 * OB_DEDUP_HASH_LEN + 1];
    char at[24], partition[16], offset[24];
    const char *params[7];
    PGresult *res;
    int rc;

    key_text(&c->name, key);
    if (c->hash != NULL)
        ob__pgstore_hex(c->hash, OB_DEDUP_HASH_LEN, hash);
    snprintf(at, sizeof(at), "%lld", (long long)c->at_ms);
    snprintf(partition, sizeof(partition), "%d", (int)c->partition);
    snprintf(offset, sizeof(offset), "%lld", (long long)c->offset);

    params[0] = c->name.ns;
    params[1] = key;
    params[2] = c->hash != NULL ? hash : NULL;
    params[3] = at;
    params[4] = c->topic;
    params[5] = c->partition >= 0 ? partition : NULL;
    params[6] = c->offset >= 0 ? offset : NULL;
    rc = ob__pg_exec_params(conn, s->sql[SQL_CLAIM], 7, params,
                            "dedup: claiming a key", &res, err);
    if (rc != 0)
        return rc;
    *inserted = PQntuples(res) == 1;
    PQclear(res);
    return 0;
}

/*
 * A key can vanish between the INSERT that found it and the read that
 * follows, when a purge commits in between; the claim then starts over,
 * and a key that keeps vanishing is reported as a retriable failure.
 */
#define CLAIM_ATTEMPTS 3

/* Reads the entry a conflicting INSERT found; *found 0 if it is gone. */
static int pg_duplicate(ob__pgstore_t *s, PGconn *conn,
                        const ob__dedup_claim_t *c, ob_dedup_result_t *res,
                        int *found, ob_error_t *err)
{
    ob_dedup_info_t info;
    int rc;

    memset(&info, 0, sizeof(info));
    rc = pg_read(s, conn, &c->name, &info, err);
    *found = info.found;
    if (rc != 0 || !info.found)
        return rc;

    res->duplicate = 1;
    res->hash_differs = ob__dedup_hash_differs(c->hash, info.has_hash,
                                               info.hash);
    res->claimed_at_ms = info.claimed_at_ms;
    return 0;
}

int ob__pgstore_claim(ob_dedup_t *d, void *txn, const ob__dedup_claim_t *c,
                    ob_dedup_result_t *res, ob_error_t *err)
{
    ob__pgstore_t *s = (ob__pgstore_t *)d;
    int attempt, inserted, found, rc;

    rc = ob__pgstore_check_conn(txn, 1, err);
    if (rc != 0)
        return rc;

    for (attempt = 0; attempt < CLAIM_ATTEMPTS; attempt++) {
        rc = pg_insert(s, txn, c, &inserted, err);
        if (rc != 0)
            return rc;
        if (inserted) {
            res->claimed_at_ms = c->at_ms;
            return 0;
        }
        rc = pg_duplicate(s, txn, c, res, &found, err);
        if (rc != 0 || found)
            return rc;
    }
    return ob__error_full(err, OB_EPG, OB_DOMAIN_POSTGRES, 0,
                          OB_ERROR_RETRIABLE, "dedup: key \"%.*s\" was "
                          "removed while it was being claimed, %d times",
                          (int)c->name.key_len, c->name.key,
                          CLAIM_ATTEMPTS);
}

static int pg_lookup(ob_dedup_t *d, void *txn, const ob__dedup_name_t *n,
                     ob_dedup_info_t *info, ob_error_t *err)
{
    int rc = ob__pgstore_check_conn(txn, 0, err);

    if (rc != 0)
        return rc;
    rc = pg_read((ob__pgstore_t *)d, txn, n, info, err);
    if (rc != 0) {
        memset(info, 0, sizeof(*info));
        info->partition = -1;
        info->offset = -1;
    }
    return rc;
}

static int pg_purge(ob_dedup_t *d, void *txn, const char *ns, size_t ns_len,
                    int64_t before_ms, size_t limit, size_t *removed,
                    ob_error_t *err)
{
    ob__pgstore_t *s = (ob__pgstore_t *)d;
    char before[24], lim[24];
    const char *params[3] = {ns, before, limit > 0 ? lim : NULL};
    PGresult *res;
    int rc;

    (void)ns_len;
    rc = ob__pgstore_check_conn(txn, 0, err);
    if (rc != 0)
        return rc;

    snprintf(before, sizeof(before), "%lld", (long long)before_ms);
    snprintf(lim, sizeof(lim), "%zu", limit);
    rc = ob__pg_exec_params(txn, s->sql[SQL_PURGE], 3, params,
                            "dedup: purging keys", &res, err);
    if (rc != 0)
        return rc;
    *removed = (size_t)strtoull(PQcmdTuples(res), NULL, 10);
    PQclear(res);
    return 0;
}

static int pg_count(ob_dedup_t *d, void *txn, const char *ns, size_t ns_len,
                    uint64_t *count, ob_error_t *err)
{
    ob__pgstore_t *s = (ob__pgstore_t *)d;
    const char *params[1] = {ns};
    PGresult *res;
    int rc;

    (void)ns_len;
    rc = ob__pgstore_check_conn(txn, 0, err);
    if (rc != 0)
        return rc;

    rc = ob__pg_exec_params(txn, s->sql[ns != NULL ? SQL_COUNT_NS
                                                   : SQL_COUNT_ALL],
                            ns != NULL ? 1 : 0, params,
                            "dedup: counting keys", &res, err);
    if (rc != 0)
        return rc;
    *count = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return 0;
}

static const ob__dedup_ops_t pg_ops = {
    "postgresql", ob__pgstore_claim, ob__pgstore_claim_batch,
    pg_lookup,    pg_purge,          pg_count,
    pg_destroy,
};

int ob_dedup_pg_new(ob_dedup_t **dp, const ob_conf_t *conf, ob_error_t *err)
{
    ob_conf_t *defaults = NULL;
    ob__pgstore_t *s;
    int rc;

    if (dp == NULL)
        return ob__error_set(err, OB_EINVAL, "dedup store: dp is NULL");
    *dp = NULL;
    if (conf == NULL) {
        rc = ob_conf_new(&defaults, err);
        if (rc != 0)
            return rc;
        conf = defaults;
    }

    s = ob__calloc(1, sizeof(*s));
    if (s == NULL) {
        rc = ob__error_nomem(err, "dedup store");
        goto free_defaults;
    }
    s->base.ops = &pg_ops;
    s->base.log = *ob__conf_log(conf);

    rc = pg_sql_build(s, ob_conf_get(conf, "schema"), err);
    if (rc != 0) {
        pg_destroy(&s->base);
        goto free_defaults;
    }
    *dp = &s->base;

free_defaults:
    ob_conf_destroy(defaults);
    return rc;
}
