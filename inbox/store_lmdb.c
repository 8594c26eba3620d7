/*
 * The inbox store on LMDB: one write transaction per batch in an
 * environment the application opened, a nested transaction per message
 * in the careful pass, the keys in the dedup store's databases, the
 * offsets in "oncebox.inbox.offsets" and the dead letters in
 * "oncebox.inbox.dead".
 *
 * LMDB leaves a write transaction unusable after a failed write, and
 * the commonest such failure is MDB_MAP_FULL. The store turns it into a
 * retriable error of the batch, never into a message failure: the loop
 * aborts the transaction, and the store grows the map before the next
 * begin (when no transaction is open, as mdb_env_set_mapsize() needs),
 * so the batch runs again from memory in a larger map.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lmdb.h>

#include "core/buf.h"
#include "dedup/lmdb_internal.h"
#include "inbox/internal.h"
#include "inbox/store_lmdb.h"
#include "oncebox/dedup.h"

#define OFFSETS_DB "oncebox.inbox.offsets"
#define DEAD_DB "oncebox.inbox.dead"

/* How often begin() clears the reader slots of dead processes. */
#define READER_CHECK_MS 5000

/* group, topic and partition with two NULs: at most this many bytes. */
#define TP_KEY_MAX (255 + 1 + 249 + 1 + 11 + 8 + 1)

typedef struct lmdb_store {
    ob__inbox_store_t base;
    MDB_env *env;
    unsigned gen; /* the fork generation env belongs to */
    int acquired;
    ob_dedup_t *dedup;
    MDB_dbi offsets, dead;
    MDB_txn *txn;   /* the batch's, or NULL */
    MDB_txn *child; /* the message's nested one, or NULL */
    int grow;       /* the map filled up: grow before the next batch */
    int64_t next_reader_check_ms;
    ob_dedup_entry_t *entries; /* claim_batch's arrays, kept for reuse */
    ob_dedup_result_t *results;
    size_t cap;
} lmdb_store_t;

static lmdb_store_t *lm_of(ob__inbox_store_t *s)
{
    return (lmdb_store_t *)s;
}

static MDB_txn *lm_inner(const lmdb_store_t *s)
{
    return s->child != NULL ? s->child : s->txn;
}

/* An LMDB failure as err; a full map also asks for growth. */
static int lm_error(lmdb_store_t *s, ob_error_t *err, int rc,
                    const char *what)
{
    if (rc == MDB_MAP_FULL)
        s->grow = 1;
    return ob__error_lmdb(err, rc, what);
}

/* Same, for an error already in err (from the dedup store). */
static int lm_note(lmdb_store_t *s, int rc, const ob_error_t *err)
{
    if (rc != 0 && err != NULL && ob_lmdb_error_is_map_full(err))
        s->grow = 1;
    return rc;
}

/* Grows the map when a batch found it full; no transaction is open. */
static int lm_grow_pending(lmdb_store_t *s, ob_error_t *err)
{
    size_t size = 0;
    int rc;

    if (!s->grow)
        return 0;
    rc = ob_lmdb_env_grow(s->env, 0, &size, err);
    if (rc != 0) {
        ob__error_prefix(err, "LMDB inbox");
        return rc;
    }
    s->grow = 0;
    ob__log(&s->base.log, OB_LOG_NOTICE, "inbox", "LMDB map grown to %zu "
            "bytes; the batch runs again", size);
    return 0;
}

static void lm_reader_check(lmdb_store_t *s, int force)
{
    int64_t now = ob__now_ms();
    ob_error_t err;
    int cleared = 0;

    if (!force && now < s->next_reader_check_ms)
        return;
    s->next_reader_check_ms = now + READER_CHECK_MS;
    if (ob_lmdb_env_reader_check(s->env, &cleared, &err) != 0)
        ob__log(&s->base.log, OB_LOG_WARNING, "inbox", "%s", err.message);
    else if (cleared > 0)
        ob__log(&s->base.log, OB_LOG_NOTICE, "inbox", "cleared %d stale "
                "LMDB reader slot(s) of dead processes", cleared);
}

/* mdb_txn_begin(), adopting a map another process has grown. */
static int lm_txn_begin(lmdb_store_t *s, unsigned flags, MDB_txn **txnp,
                        ob_error_t *err)
{
    int rc = mdb_txn_begin(s->env, NULL, flags, txnp);

    if (rc == MDB_MAP_RESIZED) {
        rc = mdb_env_set_mapsize(s->env, 0);
        if (rc == 0)
            rc = mdb_txn_begin(s->env, NULL, flags, txnp);
    }
    if (rc != 0) {
        *txnp = NULL;
        return lm_error(s, err, rc, "LMDB inbox: begin");
    }
    return 0;
}

static int lm_open(ob__inbox_store_t *base, int *fresh, ob_error_t *err)
{
    lmdb_store_t *s = lm_of(base);
    int rc = ob__lmdb_check_fork(s->gen, err);

    *fresh = 0;
    if (rc == 0)
        rc = lm_grow_pending(s, err);
    return rc;
}

/* "group\0topic\0partition": the key of one offset. */
static size_t tp_key(char out[TP_KEY_MAX], const char *group,
                     const char *topic, int32_t partition)
{
    size_t g = strlen(group), t = strlen(topic);
    int n;

    if (g > 255 || t > OB_DEDUP_TOPIC_MAX)
        return 0;
    memcpy(out, group, g + 1);
    memcpy(out + g + 1, topic, t + 1);
    n = snprintf(out + g + t + 2, TP_KEY_MAX - g - t - 2, "%ld",
                 (long)partition);
    return g + t + 2 + (size_t)n;
}

static void be64_put(unsigned char out[8], uint64_t v)
{
    int i;

    for (i = 7; i >= 0; i--) {
        out[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

static int64_t be64_get(const unsigned char in[8])
{
    uint64_t v = 0;
    int i;

    for (i = 0; i < 8; i++)
        v = (v << 8) | in[i];
    return (int64_t)v;
}

/* The stored next offset of one partition in txn, or -1. */
static int offset_get(lmdb_store_t *s, MDB_txn *txn, const char *group,
                      const char *topic, int32_t part, int64_t *next,
                      ob_error_t *err)
{
    char key[TP_KEY_MAX];
    MDB_val k, v;
    int rc;

    *next = -1;
    k.mv_data = key;
    k.mv_size = tp_key(key, group, topic, part);
    if (k.mv_size == 0)
        return ob__error_set(err, OB_ETOOLONG, "LMDB inbox: group or "
                             "topic too long");
    rc = mdb_get(txn, s->offsets, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc != 0)
        return lm_error(s, err, rc, "LMDB inbox: read offset");
    if (v.mv_size != 8)
        return ob__error_set(err, OB_EINTERNAL, "LMDB inbox: offset of %s "
                             "[%d] is %zu bytes, not 8", topic, (int)part,
                             v.mv_size);
    *next = be64_get(v.mv_data);
    return 0;
}

static int lm_load_offsets(ob__inbox_store_t *base, const char *group,
                           ob__inbox_offset_t *offs, size_t n,
                           ob_error_t *err)
{
    lmdb_store_t *s = lm_of(base);
    MDB_txn *txn;
    size_t i;
    int rc = ob__lmdb_check_fork(s->gen, err);

    for (i = 0; i < n; i++)
        offs[i].next_offset = -1;
    if (rc == 0)
        rc = lm_txn_begin(s, MDB_RDONLY, &txn, err);
    if (rc != 0)
        return rc;
    for (i = 0; i < n && rc == 0; i++)
        rc = offset_get(s, txn, group, offs[i].topic, offs[i].partition,
                        &offs[i].next_offset, err);
    mdb_txn_abort(txn);
    return rc;
}

static int lm_begin(ob__inbox_store_t *base, ob_error_t *err)
{
    lmdb_store_t *s = lm_of(base);
    int rc = ob__lmdb_check_fork(s->gen, err);

    if (rc == 0 && s->txn != NULL)
        rc = ob__error_set(err, OB_ESTATE, "LMDB inbox: a batch is open");
    if (rc == 0)
        rc = lm_grow_pending(s, err);
    if (rc != 0)
        return rc;
    lm_reader_check(s, 0);
    return lm_txn_begin(s, 0, &s->txn, err);
}

static void entry_fill(ob_dedup_entry_t *e, const ob__inbox_item_t *it)
{
    ob_dedup_entry_t init = OB_DEDUP_ENTRY_INIT;

    *e = init;
    e->key = it->key;
    e->key_len = it->key_len;
    e->hash = it->hash;
    e->at_ms = it->at_ms;
    e->topic = it->topic;
    e->partition = it->partition;
    e->offset = it->offset;
}

static int arrays_reserve(lmdb_store_t *s, size_t n, ob_error_t *err)
{
    ob_dedup_entry_t *e;
    ob_dedup_result_t *r;

    if (n <= s->cap)
        return 0;
    e = ob__realloc(s->entries, n * sizeof(*e));
    if (e != NULL)
        s->entries = e;
    r = e != NULL ? ob__realloc(s->results, n * sizeof(*r)) : NULL;
    if (r == NULL)
        return ob__error_nomem(err, "LMDB inbox claims");
    s->results = r;
    s->cap = n;
    return 0;
}

static int lm_claim_batch(ob__inbox_store_t *base, const char *ns,
                          const ob__inbox_item_t *items, size_t n,
                          ob__inbox_claim_t *res, ob_error_t *err)
{
    lmdb_store_t *s = lm_of(base);
    size_t i;
    int rc;

    if (n == 0)
        return 0;
    rc = arrays_reserve(s, n, err);
    if (rc != 0)
        return rc;
    for (i = 0; i < n; i++)
        entry_fill(&s->entries[i], &items[i]);
    rc = ob_dedup_claim_batch(s->dedup, lm_inner(s), ns, s->entries, n,
                              s->results, err);
    for (i = 0; rc == 0 && i < n; i++) {
        res[i].duplicate = s->results[i].duplicate;
        res[i].hash_differs = s->results[i].hash_differs;
    }
    return lm_note(s, rc, err);
}

static int lm_claim(ob__inbox_store_t *base, const char *ns,
                    const ob__inbox_item_t *item, ob__inbox_claim_t *res,
                    ob_error_t *err)
{
    lmdb_store_t *s = lm_of(base);
    ob_dedup_entry_t e;
    ob_dedup_result_t r;
    int rc;

    entry_fill(&e, item);
    rc = ob_dedup_claim(s->dedup, lm_inner(s), ns, &e, &r, err);
    if (rc == 0) {
        res->duplicate = r.duplicate;
        res->hash_differs = r.hash_differs;
    }
    return lm_note(s, rc, err);
}

static int lm_savepoint(ob__inbox_store_t *base, ob_error_t *err)
{
    lmdb_store_t *s = lm_of(base);
    int rc;

    if (s->txn == NULL || s->child != NULL)
        return ob__error_set(err, OB_ESTATE, "LMDB inbox: savepoint "
                             "outside a batch, or nested twice");
    rc = mdb_txn_begin(s->env, s->txn, 0, &s->child);
    if (rc != 0) {
        s->child = NULL;
        return lm_error(s, err, rc, "LMDB inbox: nested begin");
    }
    return 0;
}

/* Merges the message's nested transaction into the batch's. */
static int lm_release(ob__inbox_store_t *base, ob_error_t *err)
{
    lmdb_store_t *s = lm_of(base);
    MDB_txn *child = s->child;
    int rc;

    if (child == NULL)
        return ob__error_set(err, OB_ESTATE, "LMDB inbox: release without "
                             "a savepoint");
    s->child = NULL;
    rc = mdb_txn_commit(child);
    return rc != 0 ? lm_error(s, err, rc, "LMDB inbox: nested commit") : 0;
}

/* Undoes the message's writes and opens a new scope, as ROLLBACK TO
 * keeps its savepoint. */
static int lm_rollback_to(ob__inbox_store_t *base, ob_error_t *err)
{
    lmdb_store_t *s = lm_of(base);

    if (s->child == NULL)
        return ob__error_set(err, OB_ESTATE, "LMDB inbox: rollback without "
                             "a savepoint");
    mdb_txn_abort(s->child);
    s->child = NULL;
    return lm_savepoint(base, err);
}

/*
 * A write that failed inside the handler (MDB_MAP_FULL, in practice:
 * LMDB's other such failures are MDB_TXN_FULL, ENOMEM and I/O errors)
 * leaves the transaction blocked, and every later call on it answers
 * MDB_BAD_TXN. A lookup of a one-byte key in the small offsets database
 * asks without changing anything.
 */
static int lm_check(ob__inbox_store_t *base, ob_error_t *err)
{
    lmdb_store_t *s = lm_of(base);
    MDB_val k = {1, (void *)""}, v;
    int rc;

    if (lm_inner(s) == NULL)
        return ob__error_set(err, OB_ESTATE, "LMDB inbox: no transaction "
                             "after the handler");
    rc = mdb_get(lm_inner(s), s->offsets, &k, &v);
    if (rc == 0 || rc == MDB_NOTFOUND)
        return 0;
    s->grow = 1;
    return ob__error_full(err, OB_ELMDB, OB_DOMAIN_LMDB, rc,
                          OB_ERROR_RETRIABLE, "LMDB inbox: a write of the "
                          "handler left the transaction unusable (%s); "
                          "taken for a full map: the batch runs again "
                          "after the map grows", mdb_strerror(rc));
}

static void *lm_handle(ob__inbox_store_t *base)
{
    return lm_inner(lm_of(base));
}

static void base64_put(ob__buf_t *b, const unsigned char *p, size_t n)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop"
                              "qrstuvwxyz0123456789+/";
    size_t i;

    for (i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;

        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        ob__buf_putc(b, abc[(v >> 18) & 63]);
        ob__buf_putc(b, abc[(v >> 12) & 63]);
        ob__buf_putc(b, i + 1 < n ? abc[(v >> 6) & 63] : '=');
        ob__buf_putc(b, i + 2 < n ? abc[v & 63] : '=');
    }
}

/* The record of one dead letter: a JSON object, see inbox.h. */
static void dead_record(ob__buf_t *b, const ob__inbox_dead_t *d)
{
    const ob__inbox_item_t *it = d->item;
    char num[64];

    ob__buf_puts(b, "{\"reason\":");
    ob__buf_json_string(b, d->reason, strlen(d->reason));
    snprintf(num, sizeof(num), ",\"attempts\":%d,\"at_ms\":%lld",
             d->attempts, (long long)ob__wall_ms());
    ob__buf_puts(b, num);
    ob__buf_puts(b, ",\"idempotency_key\":");
    if (it->key != NULL)
        ob__buf_json_string(b, it->key, it->key_len);
    else
        ob__buf_puts(b, "null");
    ob__buf_puts(b, ",\"key_base64\":\"");
    base64_put(b, it->kafka_key, it->kafka_key_len);
    ob__buf_puts(b, "\",\"value_base64\":\"");
    base64_put(b, it->value, it->value_len);
    ob__buf_puts(b, "\",\"headers\":");
    ob__buf_puts(b, it->headers_json != NULL ? it->headers_json : "[]");
    ob__buf_putc(b, '}');
}

static int dead_one(lmdb_store_t *s, const char *group,
                    const ob__inbox_dead_t *d, ob_error_t *err)
{
    char key[TP_KEY_MAX + 9];
    ob__buf_t b = OB__BUF_INIT;
    MDB_val k, v;
    int rc;

    k.mv_size = tp_key(key, group, d->item->topic, d->item->partition);
    if (k.mv_size == 0)
        return ob__error_set(err, OB_ETOOLONG, "LMDB inbox: group or "
                             "topic too long");
    key[k.mv_size++] = '\0';
    be64_put((unsigned char *)key + k.mv_size, (uint64_t)d->item->offset);
    k.mv_size += 8;
    k.mv_data = key;

    dead_record(&b, d);
    if (b.failed) {
        ob__buf_free(&b);
        return ob__error_nomem(err, "LMDB inbox dead letter");
    }
    v.mv_data = b.data;
    v.mv_size = b.len;
    rc = mdb_put(s->txn, s->dead, &k, &v, 0);
    ob__buf_free(&b);
    return rc != 0 ? lm_error(s, err, rc, "LMDB inbox: dead letter") : 0;
}

static int lm_dead_letters(ob__inbox_store_t *base, const char *group,
                           const ob__inbox_dead_t *dead, size_t n,
                           ob_error_t *err)
{
    lmdb_store_t *s = lm_of(base);
    size_t i;
    int rc = 0;

    for (i = 0; i < n && rc == 0; i++)
        rc = dead_one(s, group, &dead[i], err);
    return rc;
}

/* Stores one next offset unless the stored one is further already. */
static int offset_put(lmdb_store_t *s, const char *group,
                      const ob__inbox_offset_t *o, ob_error_t *err)
{
    char key[TP_KEY_MAX];
    unsigned char val[8];
    int64_t stored;
    MDB_val k, v;
    int rc;

    rc = offset_get(s, s->txn, group, o->topic, o->partition, &stored, err);
    if (rc != 0 || stored >= o->next_offset)
        return rc;
    k.mv_data = key;
    k.mv_size = tp_key(key, group, o->topic, o->partition);
    be64_put(val, (uint64_t)o->next_offset);
    v.mv_data = val;
    v.mv_size = sizeof(val);
    rc = mdb_put(s->txn, s->offsets, &k, &v, 0);
    return rc != 0 ? lm_error(s, err, rc, "LMDB inbox: store offset") : 0;
}

static int lm_commit(ob__inbox_store_t *base, const char *group,
                     const ob__inbox_offset_t *offs, size_t n,
                     ob_error_t *err)
{
    lmdb_store_t *s = lm_of(base);
    MDB_txn *txn = s->txn;
    size_t i;
    int rc = 0;

    if (txn == NULL || s->child != NULL)
        return ob__error_set(err, OB_ESTATE, "LMDB inbox: commit outside "
                             "a batch, or inside a message's scope");
    for (i = 0; i < n && rc == 0; i++)
        rc = offset_put(s, group, &offs[i], err);
    if (rc != 0)
        return rc;
    /* mdb_txn_commit() ends the transaction, also when it fails. */
    s->txn = NULL;
    rc = mdb_txn_commit(txn);
    return rc != 0 ? lm_error(s, err, rc, "LMDB inbox: commit") : 0;
}

static void lm_abort(ob__inbox_store_t *base)
{
    lmdb_store_t *s = lm_of(base);

    if (s->child != NULL)
        mdb_txn_abort(s->child);
    if (s->txn != NULL)
        mdb_txn_abort(s->txn);
    s->child = NULL;
    s->txn = NULL;
}

static int lm_purge(ob__inbox_store_t *base, const char *ns,
                    int64_t before_ms, size_t limit, size_t *removed,
                    ob_error_t *err)
{
    lmdb_store_t *s = lm_of(base);
    MDB_txn *txn;
    int rc;

    *removed = 0;
    lm_reader_check(s, 0);
    rc = ob__lmdb_check_fork(s->gen, err);
    if (rc == 0)
        rc = lm_grow_pending(s, err);
    if (rc == 0)
        rc = lm_txn_begin(s, 0, &txn, err);
    if (rc != 0)
        return rc;
    rc = lm_note(s, ob_dedup_purge(s->dedup, txn, ns, before_ms, limit,
                                   removed, err), err);
    if (rc != 0) {
        mdb_txn_abort(txn);
        *removed = 0;
        return rc;
    }
    rc = mdb_txn_commit(txn);
    if (rc != 0) {
        *removed = 0;
        return lm_error(s, err, rc, "LMDB inbox: purge commit");
    }
    return 0;
}

static void lm_destroy(ob__inbox_store_t *base)
{
    lmdb_store_t *s = lm_of(base);

    if (s == NULL)
        return;
    lm_abort(base);
    ob_dedup_destroy(s->dedup);
    if (s->acquired)
        ob__lmdb_env_release(s->env);
    ob__free(s->entries);
    ob__free(s->results);
    ob__free(s);
}

static const ob__inbox_store_ops_t lmdb_ops = {
    "lmdb",         lm_open,        lm_load_offsets, lm_begin,
    lm_claim_batch, lm_claim,       lm_savepoint,    lm_release,
    lm_rollback_to, lm_check,       lm_handle,       lm_dead_letters,
    lm_commit,      lm_abort,       lm_purge,        lm_destroy,
};

static int open_databases(lmdb_store_t *s, ob_error_t *err)
{
    MDB_txn *txn;
    int rc = lm_txn_begin(s, 0, &txn, err);

    if (rc != 0)
        return rc;
    rc = mdb_dbi_open(txn, OFFSETS_DB, MDB_CREATE, &s->offsets);
    if (rc == 0)
        rc = mdb_dbi_open(txn, DEAD_DB, MDB_CREATE, &s->dead);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return lm_error(s, err, rc, "LMDB inbox: open its databases");
    }
    rc = mdb_txn_commit(txn);
    return rc != 0 ? lm_error(s, err, rc, "LMDB inbox: open its "
                              "databases") : 0;
}

int ob__inbox_lmdb_new(ob__inbox_store_t **sp, const ob_conf_t *conf,
                       MDB_env *env, ob_error_t *err)
{
    lmdb_store_t *s = ob__calloc(1, sizeof(*s));
    int rc;

    if (s == NULL)
        return ob__error_nomem(err, "LMDB inbox");
    s->base.ops = &lmdb_ops;
    s->base.log = *ob__conf_log(conf);
    s->env = env;
    rc = ob__lmdb_env_acquire(env, conf, &s->gen, err);
    s->acquired = rc == 0;
    if (rc == 0)
        rc = ob_dedup_lmdb_new(&s->dedup, env, conf, err);
    if (rc == 0)
        rc = open_databases(s, err);
    if (rc != 0) {
        lm_destroy(&s->base);
        return rc;
    }
    lm_reader_check(s, 1);
    *sp = &s->base;
    return 0;
}

MDB_txn *ob_txn_lmdb(ob_txn_t *txn)
{
    if (txn == NULL || txn->store->ops != &lmdb_ops)
        return NULL;
    return lm_inner(lm_of(txn->store));
}

int ob_consumer_new_lmdb(ob_consumer_t **cp, const ob_conf_t *conf,
                         MDB_env *env, ob_error_t *err)
{
    if (env == NULL)
        return ob__error_set(err, OB_EINVAL, "consumer: env is NULL");
    return ob__consumer_new(cp, conf, NULL, env, err);
}
