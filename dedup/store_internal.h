/*
 * What the key store's front end (store.c) and its backends share: one
 * table of operations per backend, and the arguments as the front end
 * has already checked them, so a backend never sees bad input.
 * Private; never installed.
 */
#ifndef ONCEBOX_DEDUP_STORE_INTERNAL_H
#define ONCEBOX_DEDUP_STORE_INTERNAL_H

#include "core/internal.h"
#include "oncebox/dedup.h"

/* A namespace and a key, both checked, with their lengths. */
typedef struct ob__dedup_name {
    const char *ns;
    size_t ns_len;
    const char *key;
    size_t key_len;
} ob__dedup_name_t;

/* A checked claim: the name, the time to record and the entry. */
typedef struct ob__dedup_claim {
    ob__dedup_name_t name;
    int64_t at_ms;
    const unsigned char *hash; /* NULL: none */
    const char *topic;         /* NULL: none */
    size_t topic_len;
    int32_t partition; /* -1: none */
    int64_t offset;    /* -1: none */
} ob__dedup_claim_t;

/*
 * One backend. Each function gets a store of its own kind and a txn that
 * is not NULL; the front end has filled *res and *info with zeros (and
 * -1 for partition and offset) before the call. ns of purge is checked;
 * ns of count is NULL for every namespace.
 */
typedef struct ob__dedup_ops {
    const char *name;
    int (*claim)(ob_dedup_t *d, void *txn, const ob__dedup_claim_t *c,
                 ob_dedup_result_t *res, ob_error_t *err);
    /* n > 0 checked claims; results zeroed. */
    int (*claim_batch)(ob_dedup_t *d, void *txn, const ob__dedup_claim_t *c,
                       size_t n, ob_dedup_result_t *res, ob_error_t *err);
    int (*lookup)(ob_dedup_t *d, void *txn, const ob__dedup_name_t *n,
                  ob_dedup_info_t *info, ob_error_t *err);
    int (*purge)(ob_dedup_t *d, void *txn, const char *ns, size_t ns_len,
                 int64_t before_ms, size_t limit, size_t *removed,
                 ob_error_t *err);
    int (*count)(ob_dedup_t *d, void *txn, const char *ns, size_t ns_len,
                 uint64_t *count, ob_error_t *err);
    void (*destroy)(ob_dedup_t *d);
} ob__dedup_ops_t;

/* Every backend's store begins with this, so a store is one block. */
struct ob_dedup {
    const ob__dedup_ops_t *ops;
    ob__log_t log;
};

/*
 * Whether two stored hashes differ, as claims report it: only when both
 * sides have one.
 */
int ob__dedup_hash_differs(const unsigned char *given, int stored_has,
                           const unsigned char *stored);

#endif
