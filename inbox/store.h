/*
 * The inbox store: what the consumer loop needs from a backend, as a
 * table of operations, so that one loop serves every backend. The loop
 * owns the order of calls; a store only knows its own transaction.
 *
 * One batch is:
 *
 *   begin
 *   claim_batch                       optimistic pass: every key at once
 *   (handler runs, on the transaction handle)
 *   dead_letter ...                   messages sent to dead letters
 *   commit(offsets)                   stores offsets and commits
 *
 * or, after a handler failed, the careful pass:
 *
 *   begin
 *   for each message:
 *       savepoint, claim, handler, release       (success, duplicate)
 *       savepoint, claim, handler, rollback_to   (failure, then again)
 *   dead_letter ...
 *   commit(offsets)
 *
 * abort ends a transaction in any state. Errors follow core.h: a
 * retriable error (OB_ERROR_RETRIABLE) means the batch may be run again
 * after open; anything else ends the consumer. Private; never installed.
 */
#ifndef ONCEBOX_INBOX_STORE_H
#define ONCEBOX_INBOX_STORE_H

#include <stdint.h>

#include "core/internal.h"
#include "oncebox/inbox.h"

typedef struct ob__inbox_store ob__inbox_store_t;

/* One partition's next offset, as stored or to be stored. */
typedef struct ob__inbox_offset {
    const char *topic;
    int32_t partition;
    int64_t next_offset; /* -1: none stored */
} ob__inbox_offset_t;

/* What a claim found, as the dedup store reports it. */
typedef struct ob__inbox_claim {
    int duplicate;
    int hash_differs;
} ob__inbox_claim_t;

/* What the loop hands a store for a claim or a dead letter. */
typedef struct ob__inbox_item {
    const char *key; /* NULL: no valid key (dead letters only) */
    size_t key_len;
    const unsigned char *hash; /* 32 bytes: SHA-256 of the value */
    const char *topic;
    int32_t partition;
    int64_t offset;
    int64_t at_ms; /* claim time, wall clock */
    const void *kafka_key;
    size_t kafka_key_len;
    const void *value;
    size_t value_len;
    const char *headers_json; /* the headers as a JSON array, or NULL */
} ob__inbox_item_t;

/* A dead letter to record next to the batch. */
typedef struct ob__inbox_dead {
    const ob__inbox_item_t *item;
    const char *reason; /* "<code>: <sentence>" */
    int attempts;
} ob__inbox_dead_t;

typedef struct ob__inbox_store_ops {
    const char *name;

    /* (Re)connects: called before the first batch and after a retriable
     * failure. Cheap when the store is already usable; *fresh is set to
     * 1 when a new connection was made, else 0. */
    int (*open)(ob__inbox_store_t *s, int *fresh, ob_error_t *err);

    /* Fills next_offset of each entry (-1 when none is stored), outside
     * any batch. */
    int (*load_offsets)(ob__inbox_store_t *s, const char *group,
                        ob__inbox_offset_t *offs, size_t n,
                        ob_error_t *err);

    int (*begin)(ob__inbox_store_t *s, ob_error_t *err);

    /* Claims n keys in order, as n claims would; res has n entries. */
    int (*claim_batch)(ob__inbox_store_t *s, const char *ns,
                       const ob__inbox_item_t *items, size_t n,
                       ob__inbox_claim_t *res, ob_error_t *err);
    int (*claim)(ob__inbox_store_t *s, const char *ns,
                 const ob__inbox_item_t *item, ob__inbox_claim_t *res,
                 ob_error_t *err);

    /* A nested scope per message, for the careful pass. */
    int (*savepoint)(ob__inbox_store_t *s, ob_error_t *err);
    int (*release)(ob__inbox_store_t *s, ob_error_t *err);
    int (*rollback_to)(ob__inbox_store_t *s, ob_error_t *err);

    /*
     * After a handler ran: 0 when the transaction is usable; OB_ENOTXN
     * when the handler left it aborted (a message failure); a retriable
     * OB_EPG when the connection is gone; OB_ESTATE when the handler
     * ended the transaction.
     */
    int (*check)(ob__inbox_store_t *s, ob_error_t *err);

    /* The handle ob_txn_t wraps: PGconn *, MDB_txn * ... */
    void *(*handle)(ob__inbox_store_t *s);

    int (*dead_letters)(ob__inbox_store_t *s, const char *group,
                        const ob__inbox_dead_t *dead, size_t n,
                        ob_error_t *err);

    /* Stores the offsets (never moving one back) and commits. */
    int (*commit)(ob__inbox_store_t *s, const char *group,
                  const ob__inbox_offset_t *offs, size_t n,
                  ob_error_t *err);

    void (*abort)(ob__inbox_store_t *s);

    /* Removes at most limit keys of ns claimed before before_ms, in a
     * transaction of its own, outside any batch. */
    int (*purge)(ob__inbox_store_t *s, const char *ns, int64_t before_ms,
                 size_t limit, size_t *removed, ob_error_t *err);

    void (*destroy)(ob__inbox_store_t *s);
} ob__inbox_store_ops_t;

struct ob__inbox_store {
    const ob__inbox_store_ops_t *ops;
    ob__log_t log;
};

/* The PostgreSQL store. conninfo NULL: libpq's environment. */
int ob__inbox_pg_new(ob__inbox_store_t **sp, const ob_conf_t *conf,
                     const char *conninfo, ob_error_t *err);

#endif
