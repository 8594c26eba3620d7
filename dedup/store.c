/*
 * The key store's front end: checks every argument once, the same way
 * for both backends, before a backend is called, so that bad input never
 * reaches a database and both backends refuse it with the same errors.
 */
#include <openssl/evp.h>
#include <string.h>

#include "dedup/store_internal.h"

int ob__dedup_hash_differs(const unsigned char *given, int stored_has,
                           const unsigned char *stored)
{
    if (given == NULL || !stored_has)
        return 0;
    return memcmp(given, stored, OB_DEDUP_HASH_LEN) != 0;
}

int ob_dedup_hash(const void *payload, size_t len,
                  unsigned char out[OB_DEDUP_HASH_LEN], ob_error_t *err)
{
    unsigned int out_len = 0;
    EVP_MD_CTX *ctx;
    int ok;

    if (out == NULL || (payload == NULL && len > 0))
        return ob__error_set(err, OB_EINVAL, "dedup hash: %s is NULL",
                             out == NULL ? "out" : "payload");

    ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return ob__error_nomem(err, "SHA-256 context");

    ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
         (len == 0 || EVP_DigestUpdate(ctx, payload, len) == 1) &&
         EVP_DigestFinal_ex(ctx, out, &out_len) == 1 &&
         out_len == OB_DEDUP_HASH_LEN;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return ob__error_set(err, OB_EINTERNAL, "SHA-256 failed");
    return 0;
}

static int check_ns(const char *ns, size_t *lenp, ob_error_t *err)
{
    *lenp = ns != NULL ? strlen(ns) : 0;
    return ob__check_text("namespace", ns, *lenp, OB_DEDUP_NAMESPACE_MAX,
                          err);
}

/* Checks ns and key into *n; key_len 0 means strlen(key). */
static int check_name(const char *ns, const char *key, size_t key_len,
                      ob__dedup_name_t *n, ob_error_t *err)
{
    int rc = check_ns(ns, &n->ns_len, err);

    if (rc != 0)
        return rc;
    if (key != NULL && key_len == 0)
        key_len = strlen(key);
    n->ns = ns;
    n->key = key;
    n->key_len = key_len;
    return ob__check_text("key", key, key_len, OB_KEY_MAX, err);
}

int ob_dedup_check(const char *ns, const char *key, size_t key_len,
                   ob_error_t *err)
{
    ob__dedup_name_t n;

    return check_name(ns, key, key_len, &n, err);
}

void ob_dedup_destroy(ob_dedup_t *d)
{
    if (d != NULL)
        d->ops->destroy(d);
}

const char *ob_dedup_backend(const ob_dedup_t *d)
{
    return d != NULL ? d->ops->name : NULL;
}

static int check_entry_numbers(const ob_dedup_entry_t *e, ob_error_t *err)
{
    if (e->size < sizeof(ob_dedup_entry_t))
        return ob__error_set(err, OB_EINVAL, "dedup entry: size %zu is "
                             "too small; initialise it with "
                             "OB_DEDUP_ENTRY_INIT", e->size);
    if (e->at_ms < 0)
        return ob__error_set(err, OB_EINVAL, "dedup entry: claim time "
                             "%lld is negative", (long long)e->at_ms);
    if (e->partition < -1)
        return ob__error_set(err, OB_EINVAL, "dedup entry: partition %d "
                             "is below -1", (int)e->partition);
    if (e->offset < -1)
        return ob__error_set(err, OB_EINVAL, "dedup entry: offset %lld "
                             "is below -1", (long long)e->offset);
    return 0;
}

static int check_claim(const char *ns, const ob_dedup_entry_t *e,
                       ob__dedup_claim_t *c, ob_error_t *err)
{
    int rc = check_entry_numbers(e, err);

    if (rc == 0)
        rc = check_name(ns, e->key, e->key_len, &c->name, err);
    if (rc != 0)
        return rc;

    c->topic = e->topic;
    c->topic_len = e->topic != NULL ? strlen(e->topic) : 0;
    if (c->topic != NULL) {
        rc = ob__check_text("topic", c->topic, c->topic_len,
                            OB_DEDUP_TOPIC_MAX, err);
        if (rc != 0)
            return rc;
    }
    c->at_ms = e->at_ms != 0 ? e->at_ms : ob__wall_ms();
    c->hash = e->hash;
    c->partition = e->partition;
    c->offset = e->offset;
    return 0;
}

int ob_dedup_claim(ob_dedup_t *d, void *txn, const char *ns,
                   const ob_dedup_entry_t *e, ob_dedup_result_t *res,
                   ob_error_t *err)
{
    ob_dedup_result_t ignored;
    ob__dedup_claim_t c;
    int rc;

    if (d == NULL || txn == NULL || e == NULL)
        return ob__error_set(err, OB_EINVAL, "dedup claim: %s is NULL",
                             d == NULL ? "store" : txn == NULL ? "txn"
                                                               : "entry");
    rc = check_claim(ns, e, &c, err);
    if (rc != 0)
        return rc;

    if (res == NULL)
        res = &ignored;
    memset(res, 0, sizeof(*res));
    return d->ops->claim(d, txn, &c, res, err);
}

int ob_dedup_claim_batch(ob_dedup_t *d, void *txn, const char *ns,
                         const ob_dedup_entry_t *entries, size_t n,
                         ob_dedup_result_t *results, ob_error_t *err)
{
    ob__dedup_claim_t *cs;
    size_t i;
    int rc = 0;

    if (d == NULL || txn == NULL || (n > 0 && (entries == NULL ||
                                               results == NULL)))
        return ob__error_set(err, OB_EINVAL, "dedup claim batch: %s is "
                             "NULL", d == NULL ? "store" : txn == NULL
                             ? "txn" : entries == NULL ? "entries"
                             : "results");
    if (n == 0)
        return 0;

    cs = ob__calloc(n, sizeof(*cs));
    if (cs == NULL)
        return ob__error_nomem(err, "dedup claim batch");
    for (i = 0; i < n && rc == 0; i++) {
        rc = check_claim(ns, &entries[i], &cs[i], err);
        if (rc != 0)
            ob__error_prefix(err, "entry %zu", i);
    }
    if (rc == 0) {
        memset(results, 0, n * sizeof(*results));
        rc = d->ops->claim_batch(d, txn, cs, n, results, err);
    }
    ob__free(cs);
    return rc;
}

int ob_dedup_lookup(ob_dedup_t *d, void *txn, const char *ns,
                    const char *key, size_t key_len, ob_dedup_info_t *info,
                    ob_error_t *err)
{
    ob__dedup_name_t n;
    int rc;

    if (d == NULL || txn == NULL || info == NULL)
        return ob__error_set(err, OB_EINVAL, "dedup lookup: %s is NULL",
                             d == NULL ? "store" : txn == NULL ? "txn"
                                                               : "info");
    memset(info, 0, sizeof(*info));
    info->partition = -1;
    info->offset = -1;
    rc = check_name(ns, key, key_len, &n, err);
    if (rc != 0)
        return rc;
    return d->ops->lookup(d, txn, &n, info, err);
}

int ob_dedup_purge(ob_dedup_t *d, void *txn, const char *ns,
                   int64_t before_ms, size_t limit, size_t *removed,
                   ob_error_t *err)
{
    size_t ignored, ns_len;
    int rc;

    if (removed == NULL)
        removed = &ignored;
    *removed = 0;
    if (d == NULL || txn == NULL)
        return ob__error_set(err, OB_EINVAL, "dedup purge: %s is NULL",
                             d == NULL ? "store" : "txn");
    rc = check_ns(ns, &ns_len, err);
    if (rc != 0)
        return rc;
    if (before_ms <= 0)
        return 0;
    return d->ops->purge(d, txn, ns, ns_len, before_ms, limit, removed,
                         err);
}

int ob_dedup_count(ob_dedup_t *d, void *txn, const char *ns,
                   uint64_t *count, ob_error_t *err)
{
    size_t ns_len = 0;
    int rc;

    if (d == NULL || txn == NULL || count == NULL)
        return ob__error_set(err, OB_EINVAL, "dedup count: %s is NULL",
                             d == NULL ? "store" : txn == NULL ? "txn"
                                                               : "count");
    *count = 0;
    if (ns != NULL) {
        rc = check_ns(ns, &ns_len, err);
        if (rc != 0)
            return rc;
    }
    return d->ops->count(d, txn, ns, ns_len, count, err);
}
