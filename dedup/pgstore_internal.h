/*
 * What the PostgreSQL key store's files share: the store, its
 * statements, and the helpers both single and batch claims use.
 * Private; never installed.
 */
#ifndef ONCEBOX_DEDUP_PGSTORE_INTERNAL_H
#define ONCEBOX_DEDUP_PGSTORE_INTERNAL_H

#include "core/pg.h"
#include "dedup/store_internal.h"

/*
 * Times cross as milliseconds since the epoch, both ways exactly:
 * timestamptz holds microseconds, and extract() returns numeric.
 */
#define MS_TO_TS(p) "timestamptz 'epoch' + " p "::bigint * interval '1 ms'"
#define TS_TO_MS "floor(extract(epoch FROM claimed_at) * 1000)::bigint"

enum { SQL_CLAIM, SQL_READ, SQL_CLAIM_MANY, SQL_READ_MANY, SQL_PURGE,
       SQL_COUNT_NS, SQL_COUNT_ALL, SQL_COUNT };

typedef struct ob__pgstore {
    ob_dedup_t base;
    char *sql[SQL_COUNT]; /* with the schema filled in */
} ob__pgstore_t;

/*
 * The connection's transaction state: in_txn_only for claims, which
 * must join the caller's transaction; the others may also run on an
 * idle connection.
 */
int ob__pgstore_check_conn(PGconn *conn, int in_txn_only, ob_error_t *err);

/* Writes n bytes as 2n lowercase hex digits and a NUL. */
void ob__pgstore_hex(const unsigned char *bytes, size_t n, char *out);

/* Decodes exactly OB_DEDUP_HASH_LEN bytes; non-zero on success. */
int ob__pgstore_hash_decode(const char *hex,
                            unsigned char out[OB_DEDUP_HASH_LEN]);

/* The operations of the table of ob__dedup_ops_t. */
int ob__pgstore_claim(ob_dedup_t *d, void *txn, const ob__dedup_claim_t *c,
                      ob_dedup_result_t *res, ob_error_t *err);
int ob__pgstore_claim_batch(ob_dedup_t *d, void *txn,
                            const ob__dedup_claim_t *c, size_t n,
                            ob_dedup_result_t *res, ob_error_t *err);

#endif
