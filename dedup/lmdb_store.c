/*
 * The key store on LMDB, inside the caller's MDB_txn.
 *
 * Two named databases:
 * - keys: namespace NUL key -> the entry (below). The namespace and the
 *   key hold no NUL byte, so one namespace's keys are contiguous and no
 *   two (namespace, key) pairs encode alike. 255 + 1 + 255 bytes is
 *   exactly LMDB's default maximum key size, 511.
 * - time: claimed time (8 bytes, big-endian, so byte order is time
 *   order) -> namespace NUL key, with MDB_DUPSORT, so it is ordered by
 *   (time, namespace, key) and a purge walks only the entries it
 *   expires. Sorted duplicates are what let the time index hold a
 *   511-byte name: a key of time and name would not fit.
 *
 * An entry is 53 bytes and the topic: the claim time (8, big-endian),
 * flags (1: bit 0 set when a hash is stored), the hash (32, zeros when
 * none), the partition (4, big-endian, two's complement, -1 none), the
 * offset (8, likewise) and the topic's bytes (none when absent).
 *
 * A claim makes no allocation: names and entries are built on the stack.
 */
#include <errno.h>
#include <string.h>

#include "dedup/lmdb_internal.h"
#include "dedup/store_internal.h"

#define KEYS_DB "oncebox.dedup.keys"
#define TIME_DB "oncebox.dedup.time"

#define NAME_MAX_LEN (OB_DEDUP_NAMESPACE_MAX + 1 + OB_KEY_MAX)

enum {
    V_TIME = 0,
    V_FLAGS = 8,
    V_HASH = 9,
    V_PARTITION = V_HASH + OB_DEDUP_HASH_LEN,
    V_OFFSET = V_PARTITION + 4,
    V_TOPIC = V_OFFSET + 8,
    V_MAX = V_TOPIC + OB_DEDUP_TOPIC_MAX
};

#define FLAG_HASH 0x1u

typedef struct lmdb_store {
    ob_dedup_t base;
    MDB_env *env;
    MDB_dbi keys, time;
    unsigned gen; /* fork generation of env */
} lmdb_store_t;

static void put_be(unsigned char *p, uint64_t v, int bytes)
{
    int i;

    for (i = 0; i < bytes; i++)
        p[i] = (unsigned char)(v >> (8 * (bytes - 1 - i)));
}

static uint64_t get_be(const unsigned char *p, int bytes)
{
    uint64_t v = 0;
    int i;

    for (i = 0; i < bytes; i++)
        v = v << 8 | p[i];
    return v;
}

/* Writes namespace NUL key into buf; returns its length. */
static size_t name_encode(const ob__dedup_name_t *n,
                          unsigned char buf[NAME_MAX_LEN])
{
    memcpy(buf, n->ns, n->ns_len);
    buf[n->ns_len] = '\0';
    memcpy(buf + n->ns_len + 1, n->key, n->key_len);
    return n->ns_len + 1 + n->key_len;
}

static size_t entry_encode(const ob__dedup_claim_t *c,
                           unsigned char buf[V_MAX])
{
    put_be(buf + V_TIME, (uint64_t)c->at_ms, 8);
    buf[V_FLAGS] = c->hash != NULL ? FLAG_HASH : 0;
    if (c->hash != NULL)
        memcpy(buf + V_HASH, c->hash, OB_DEDUP_HASH_LEN);
    else
        memset(buf + V_HASH, 0, OB_DEDUP_HASH_LEN);
    put_be(buf + V_PARTITION, (uint32_t)c->partition, 4);
    put_be(buf + V_OFFSET, (uint64_t)c->offset, 8);
    if (c->topic_len > 0)
        memcpy(buf + V_TOPIC, c->topic, c->topic_len);
    return V_TOPIC + c->topic_len;
}

static int entry_decode(const MDB_val *v, ob_dedup_info_t *info,
                        ob_error_t *err)
{
    const unsigned char *p = v->mv_data;
    size_t topic_len;

    if (v->mv_size < V_TOPIC || v->mv_size > V_MAX)
        return ob__error_full(err, OB_ELMDB, OB_DOMAIN_LMDB, MDB_CORRUPTED,
                              0, "dedup: a stored entry is %zu bytes, not "
                              "an oncebox entry", v->mv_size);
    info->found = 1;
    info->claimed_at_ms = (int64_t)get_be(p + V_TIME, 8);
    info->has_hash = (p[V_FLAGS] & FLAG_HASH) != 0;
    if (info->has_hash)
        memcpy(info->hash, p + V_HASH, OB_DEDUP_HASH_LEN);
    info->partition = (int32_t)(uint32_t)get_be(p + V_PARTITION, 4);
    info->offset = (int64_t)get_be(p + V_OFFSET, 8);
    topic_len = v->mv_size - V_TOPIC;
    memcpy(info->topic, p + V_TOPIC, topic_len);
    info->topic[topic_len] = '\0';
    return 0;
}

/* The checks every operation makes of its transaction. */
static int check_txn(const lmdb_store_t *s, MDB_txn *txn, ob_error_t *err)
{
    int rc = ob__lmdb_check_fork(s->gen, err);

    if (rc != 0)
        return rc;
    if (mdb_txn_env(txn) != s->env)
        return ob__error_set(err, OB_EINVAL, "dedup: the transaction "
                             "belongs to another LMDB environment");
    return 0;
}

/* An LMDB failure of a write, with a hint for a read-only transaction. */
static int write_error(ob_error_t *err, int rc, const char *what)
{
    if (rc == EACCES)
        return ob__error_full(err, OB_ELMDB, OB_DOMAIN_LMDB, rc, 0,
                              "%s: the transaction is read-only", what);
    return ob__error_lmdb(err, rc, what);
}

static int lmdb_duplicate(const ob__dedup_claim_t *c, const MDB_val *v,
                          ob_dedup_result_t *res, ob_error_t *err)
{
    ob_dedup_info_t info;
    int rc;

    memset(&info, 0, sizeof(info));
    rc = entry_decode(v, &info, err);
    if (rc != 0)
        return rc;
    res->duplicate = 1;
    res->hash_differs = ob__dedup_hash_differs(c->hash, info.has_hash,
                                               info.hash);
    res->claimed_at_ms = info.claimed_at_ms;
    return 0;
}

static int lmdb_claim(ob_dedup_t *d, void *txn, const ob__dedup_claim_t *c,
                      ob_dedup_result_t *res, ob_error_t *err)
{
    lmdb_store_t *s = (lmdb_store_t *)d;
    unsigned char name[NAME_MAX_LEN], entry[V_MAX], at[8];
    MDB_val k, v, tk, tv;
    int rc = check_txn(s, txn, err);

    if (rc != 0)
        return rc;

    k.mv_size = name_encode(&c->name, name);
    k.mv_data = name;
    v.mv_size = entry_encode(c, entry);
    v.mv_data = entry;
    rc = mdb_put(txn, s->keys, &k, &v, MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST)
        return lmdb_duplicate(c, &v, res, err);
    if (rc != 0)
        return write_error(err, rc, "dedup claim");

    put_be(at, (uint64_t)c->at_ms, 8);
    tk.mv_size = sizeof(at);
    tk.mv_data = at;
    tv.mv_size = k.mv_size;
    tv.mv_data = name;
    rc = mdb_put(txn, s->time, &tk, &tv, MDB_NODUPDATA);
    if (rc != 0)
        return write_error(err, rc, "dedup claim: time index");
    res->claimed_at_ms = c->at_ms;
    return 0;
}

static int lmdb_claim_batch(ob_dedup_t *d, void *txn,
                            const ob__dedup_claim_t *c, size_t n,
                            ob_dedup_result_t *res, ob_error_t *err)
{
    size_t i;
    int rc = 0;

    for (i = 0; i < n && rc == 0; i++)
        rc = lmdb_claim(d, txn, &c[i], &res[i], err);
    return rc;
}

static int lmdb_lookup(ob_dedup_t *d, void *txn, const ob__dedup_name_t *n,
                       ob_dedup_info_t *info, ob_error_t *err)
{
    lmdb_store_t *s = (lmdb_store_t *)d;
    unsigned char name[NAME_MAX_LEN];
    MDB_val k, v;
    int rc = check_txn(s, txn, err);

    if (rc != 0)
        return rc;

    k.mv_size = name_encode(n, name);
    k.mv_data = name;
    rc = mdb_get(txn, s->keys, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc != 0)
        return ob__error_lmdb(err, rc, "dedup lookup");
    rc = entry_decode(&v, info, err);
    if (rc != 0) {
        memset(info, 0, sizeof(*info));
        info->partition = -1;
        info->offset = -1;
    }
    return rc;
}

/* Whether the time index value tv names a key of namespace ns. */
static int in_namespace(const MDB_val *tv, const char *ns, size_t ns_len)
{
    const unsigned char *p = tv->mv_data;

    return tv->mv_size > ns_len && p[ns_len] == '\0' &&
           memcmp(p, ns, ns_len) == 0;
}

/* Removes the key the cursor's time index entry names, and the entry. */
static int purge_one(lmdb_store_t *s, MDB_txn *txn, MDB_cursor *cur,
                     const MDB_val *tv, ob_error_t *err)
{
    unsigned char name[NAME_MAX_LEN];
    MDB_val k;
    int rc;

    if (tv->mv_size > sizeof(name))
        return ob__error_full(err, OB_ELMDB, OB_DOMAIN_LMDB, MDB_CORRUPTED,
                              0, "dedup purge: a time index entry is %zu "
                              "bytes long", tv->mv_size);
    memcpy(name, tv->mv_data, tv->mv_size);
    k.mv_size = tv->mv_size;
    k.mv_data = name;

    rc = mdb_del(txn, s->keys, &k, NULL);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return write_error(err, rc, "dedup purge");
    rc = mdb_cursor_del(cur, 0);
    if (rc != 0)
        return write_error(err, rc, "dedup purge: time index");
    return 0;
}

/*
 * Walks the time index from its oldest entry. After mdb_cursor_del()
 * the cursor already refers to the entry that followed, and LMDB
 * documents that MDB_NEXT then returns that entry, so every step is
 * MDB_NEXT.
 */
static int purge_walk(lmdb_store_t *s, MDB_txn *txn, MDB_cursor *cur,
                      const char *ns, size_t ns_len, int64_t before_ms,
                      size_t limit, size_t *removed, ob_error_t *err)
{
    MDB_val tk, tv;
    int rc;

    rc = mdb_cursor_get(cur, &tk, &tv, MDB_FIRST);
    while (rc == 0 && (limit == 0 || *removed < limit)) {
        if (tk.mv_size != 8)
            return ob__error_full(err, OB_ELMDB, OB_DOMAIN_LMDB,
                                  MDB_CORRUPTED, 0, "dedup purge: a time "
                                  "index key is %zu bytes long",
                                  tk.mv_size);
        if (get_be(tk.mv_data, 8) >= (uint64_t)before_ms)
            return 0;
        if (in_namespace(&tv, ns, ns_len)) {
            rc = purge_one(s, txn, cur, &tv, err);
            if (rc != 0)
                return rc;
            (*removed)++;
        }
        rc = mdb_cursor_get(cur, &tk, &tv, MDB_NEXT);
    }
    if (rc != 0 && rc != MDB_NOTFOUND)
        return ob__error_lmdb(err, rc, "dedup purge");
    return 0;
}

static int lmdb_purge(ob_dedup_t *d, void *txn, const char *ns,
                      size_t ns_len, int64_t before_ms, size_t limit,
                      size_t *removed, ob_error_t *err)
{
    lmdb_store_t *s = (lmdb_store_t *)d;
    MDB_cursor *cur;
    int rc = check_txn(s, txn, err);

    if (rc != 0)
        return rc;

    rc = mdb_cursor_open(txn, s->time, &cur);
    if (rc != 0)
        return ob__error_lmdb(err, rc, "dedup purge");
    rc = purge_walk(s, txn, cur, ns, ns_len, before_ms, limit, removed, err);
    mdb_cursor_close(cur);
    return rc;
}

/* Counts the keys that start with namespace NUL. */
static int count_namespace(lmdb_store_t *s, MDB_txn *txn, const char *ns,
                           size_t ns_len, uint64_t *count, ob_error_t *err)
{
    unsigned char prefix[OB_DEDUP_NAMESPACE_MAX + 1];
    MDB_cursor *cur;
    MDB_val k, v;
    int rc;

    memcpy(prefix, ns, ns_len);
    prefix[ns_len] = '\0';
    k.mv_size = ns_len + 1;
    k.mv_data = prefix;

    rc = mdb_cursor_open(txn, s->keys, &cur);
    if (rc != 0)
        return ob__error_lmdb(err, rc, "dedup count");
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size > ns_len &&
           memcmp(k.mv_data, prefix, ns_len + 1) == 0) {
        (*count)++;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return ob__error_lmdb(err, rc, "dedup count");
    return 0;
}

static int lmdb_count(ob_dedup_t *d, void *txn, const char *ns,
                      size_t ns_len, uint64_t *count, ob_error_t *err)
{
    lmdb_store_t *s = (lmdb_store_t *)d;
    MDB_stat st;
    int rc = check_txn(s, txn, err);

    if (rc != 0)
        return rc;
    if (ns != NULL)
        return count_namespace(s, txn, ns, ns_len, count, err);

    rc = mdb_stat(txn, s->keys, &st);
    if (rc != 0)
        return ob__error_lmdb(err, rc, "dedup count");
    *count = st.ms_entries;
    return 0;
}

static void lmdb_destroy(ob_dedup_t *d)
{
    lmdb_store_t *s = (lmdb_store_t *)d;

    ob__lmdb_env_release(s->env);
    ob__free(s);
}

static const ob__dedup_ops_t lmdb_ops = {
    "lmdb",     lmdb_claim, lmdb_claim_batch, lmdb_lookup,
    lmdb_purge, lmdb_count, lmdb_destroy,
};

/* Opens (creating when missing) the two databases in a transaction. */
static int open_databases(lmdb_store_t *s, ob_error_t *err)
{
    const char *step = "dedup: beginning a transaction";
    MDB_txn *txn;
    int rc;

    rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc == 0) {
        step = "dedup: opening database " KEYS_DB;
        rc = mdb_dbi_open(txn, KEYS_DB, MDB_CREATE, &s->keys);
    }
    if (rc == 0) {
        step = "dedup: opening database " TIME_DB;
        rc = mdb_dbi_open(txn, TIME_DB, MDB_CREATE | MDB_DUPSORT, &s->time);
    }
    if (rc == 0) {
        step = "dedup: committing the databases";
        rc = mdb_txn_commit(txn);
        txn = NULL;
    }
    if (rc != 0) {
        if (txn != NULL)
            mdb_txn_abort(txn);
        return ob__error_lmdb(err, rc, step);
    }
    return 0;
}

/* The environment can hold the store's longest names, and is sane. */
static int check_env(MDB_env *env, ob_error_t *err)
{
    int maxkey = mdb_env_get_maxkeysize(env), dead, rc;

    if (maxkey < NAME_MAX_LEN)
        return ob__error_full(err, OB_ELMDB, OB_DOMAIN_LMDB, MDB_BAD_VALSIZE,
                              0, "dedup: this LMDB allows keys of %d "
                              "bytes, the store needs %d", maxkey,
                              NAME_MAX_LEN);
    rc = mdb_reader_check(env, &dead);
    return rc != 0 ? ob__error_lmdb(err, rc, "mdb_reader_check") : 0;
}

int ob_dedup_lmdb_new(ob_dedup_t **dp, MDB_env *env, const ob_conf_t *conf,
                      ob_error_t *err)
{
    lmdb_store_t *s;
    int rc;

    if (dp == NULL || env == NULL)
        return ob__error_set(err, OB_EINVAL, "dedup store: %s is NULL",
                             dp == NULL ? "dp" : "env");
    *dp = NULL;

    s = ob__calloc(1, sizeof(*s));
    if (s == NULL)
        return ob__error_nomem(err, "dedup store");
    s->base.ops = &lmdb_ops;
    s->base.log = *ob__conf_log(conf);
    s->env = env;

    rc = ob__lmdb_env_acquire(env, conf, &s->gen, err);
    if (rc != 0)
        goto free_store;
    rc = check_env(env, err);
    if (rc == 0)
        rc = open_databases(s, err);
    if (rc != 0)
        goto release_env;
    *dp = &s->base;
    return 0;

release_env:
    ob__lmdb_env_release(env);
free_store:
    ob__free(s);
    return rc;
}
