/*
 * The key store's semantics, one suite run against both backends: the
 * PostgreSQL store on a freshly migrated schema of the test server, and
 * the LMDB store in a fresh environment in a temporary directory. Every
 * test goes through the public API only and says nothing about which
 * backend it runs on; the backend gives it transactions.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <lmdb.h>

#include "oncebox/oncebox.h"
#include "tests/support/testlib.h"

struct fixture;

/* What a backend gives the suite: a fresh store and its transactions. */
struct backend {
    const char *name;
    void (*open)(struct fixture *f);
    void (*close)(struct fixture *f);
    void *(*begin)(struct fixture *f);
    void (*commit)(struct fixture *f, void *txn);
    void (*rollback)(struct fixture *f, void *txn);
};

struct fixture {
    const struct backend *b;
    ob_dedup_t *d;
    PGconn *conn;
    char *schema;
    MDB_env *env;
    char dir[64];
};

/* The backend of the group being run. */
static const struct backend *current;

static void pg_open(struct fixture *f)
{
    ob_conf_t *conf;
    ob_error_t err;

    f->conn = obt_connect();
    f->schema = obt_unique_name("dedup");
    if (ob_schema_migrate(f->conn, f->schema, &err) != 0)
        fail_msg("migrate: %s", err.message);
    assert_int_equal(ob_conf_new(&conf, &err), 0);
    assert_int_equal(ob_conf_set(conf, "schema", f->schema, &err), 0);
    if (ob_dedup_pg_new(&f->d, conf, &err) != 0)
        fail_msg("ob_dedup_pg_new: %s", err.message);
    ob_conf_destroy(conf);
}

static void pg_close(struct fixture *f)
{
    if (PQtransactionStatus(f->conn) != PQTRANS_IDLE)
        PQclear(PQexec(f->conn, "ROLLBACK"));
    obt_drop_schema(f->conn, f->schema);
    PQfinish(f->conn);
    free(f->schema);
}

static void *pg_begin(struct fixture *f)
{
    obt_exec(f->conn, "BEGIN");
    return f->conn;
}

static void pg_commit(struct fixture *f, void *txn)
{
    (void)txn;
    obt_exec(f->conn, "COMMIT");
}

static void pg_rollback(struct fixture *f, void *txn)
{
    (void)txn;
    obt_exec(f->conn, "ROLLBACK");
}

static const struct backend pg_backend = {
    "postgresql", pg_open, pg_close, pg_begin, pg_commit, pg_rollback,
};

static void lmdb_open(struct fixture *f)
{
    ob_error_t err;

    snprintf(f->dir, sizeof(f->dir), "/tmp/ob-dedup-test.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    if (ob_lmdb_env_open(&f->env, f->dir, NULL, &err) != 0)
        fail_msg("ob_lmdb_env_open: %s", err.message);
    if (ob_dedup_lmdb_new(&f->d, f->env, NULL, &err) != 0)
        fail_msg("ob_dedup_lmdb_new: %s", err.message);
}

static void lmdb_close(struct fixture *f)
{
    char path[128];

    ob_lmdb_env_close(f->env);
    snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/lock.mdb", f->dir);
    unlink(path);
    rmdir(f->dir);
}

static void *lmdb_begin(struct fixture *f)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(f->env, NULL, 0, &txn);

    if (rc != 0)
        fail_msg("mdb_txn_begin: %s", mdb_strerror(rc));
    return txn;
}

static void lmdb_commit(struct fixture *f, void *txn)
{
    int rc = mdb_txn_commit(txn);

    (void)f;
    if (rc != 0)
        fail_msg("mdb_txn_commit: %s", mdb_strerror(rc));
}

static void lmdb_rollback(struct fixture *f, void *txn)
{
    (void)f;
    mdb_txn_abort(txn);
}

static const struct backend lmdb_backend = {
    "lmdb", lmdb_open, lmdb_close, lmdb_begin, lmdb_commit, lmdb_rollback,
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    f->b = current;
    f->b->open(f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    ob_dedup_destroy(f->d);
    f->b->close(f);
    free(f);
    return 0;
}

static int group_pg(void **state)
{
    (void)state;
    current = &pg_backend;
    return 0;
}

static int group_lmdb(void **state)
{
    (void)state;
    current = &lmdb_backend;
    return 0;
}

/* A claim entry for key at time at_ms, with the hash of payload. */
static ob_dedup_entry_t entry(const char *key, int64_t at_ms,
                              const unsigned char *hash)
{
    ob_dedup_entry_t e = OB_DEDUP_ENTRY_INIT;

    e.key = key;
    e.at_ms = at_ms;
    e.hash = hash;
    return e;
}

static void hash_of(const char *payload, unsigned char out[32])
{
    ob_error_t err;

    if (ob_dedup_hash(payload, strlen(payload), out, &err) != 0)
        fail_msg("ob_dedup_hash: %s", err.message);
}

static ob_dedup_result_t claim_ok(struct fixture *f, void *txn,
                                  const char *ns, const ob_dedup_entry_t *e)
{
    ob_dedup_result_t res;
    ob_error_t err;

    memset(&res, 0x5a, sizeof(res));
    if (ob_dedup_claim(f->d, txn, ns, e, &res, &err) != 0)
        fail_msg("claim %s/%s: %s: %s", ns, e->key, ob_error_name(err.code),
                 err.message);
    return res;
}

/* Claims key in its own committed transaction; returns the result. */
static ob_dedup_result_t claim_committed(struct fixture *f, const char *ns,
                                         const char *key, int64_t at_ms,
                                         const unsigned char *hash)
{
    ob_dedup_entry_t e = entry(key, at_ms, hash);
    void *txn = f->b->begin(f);
    ob_dedup_result_t res = claim_ok(f, txn, ns, &e);

    f->b->commit(f, txn);
    return res;
}

static ob_dedup_info_t lookup(struct fixture *f, const char *ns,
                              const char *key)
{
    ob_dedup_info_t info;
    ob_error_t err;
    void *txn = f->b->begin(f);

    if (ob_dedup_lookup(f->d, txn, ns, key, 0, &info, &err) != 0)
        fail_msg("lookup %s/%s: %s", ns, key, err.message);
    f->b->commit(f, txn);
    return info;
}

static uint64_t count(struct fixture *f, const char *ns)
{
    ob_error_t err;
    uint64_t n = 12345;
    void *txn = f->b->begin(f);

    if (ob_dedup_count(f->d, txn, ns, &n, &err) != 0)
        fail_msg("count %s: %s", ns != NULL ? ns : "(all)", err.message);
    f->b->commit(f, txn);
    return n;
}

static size_t purge(struct fixture *f, const char *ns, int64_t before,
                    size_t limit)
{
    size_t removed = 12345;
    ob_error_t err;
    void *txn = f->b->begin(f);

    if (ob_dedup_purge(f->d, txn, ns, before, limit, &removed, &err) != 0)
        fail_msg("purge %s: %s", ns, err.message);
    f->b->commit(f, txn);
    return removed;
}

static void a_new_key_is_new_and_a_second_claim_a_duplicate(void **state)
{
    struct fixture *f = *state;
    unsigned char h[32];
    ob_dedup_result_t res;

    hash_of("{\"n\": 1}", h);
    res = claim_committed(f, "group-a", "k-1", 1700000000123, h);
    assert_int_equal(res.duplicate, 0);
    assert_int_equal(res.hash_differs, 0);
    assert_int_equal(res.claimed_at_ms, 1700000000123);

    res = claim_committed(f, "group-a", "k-1", 1700000009999, h);
    assert_int_equal(res.duplicate, 1);
    assert_int_equal(res.hash_differs, 0);
    assert_int_equal(res.claimed_at_ms, 1700000000123);
    assert_int_equal(count(f, "group-a"), 1);
}

static void a_reused_key_with_another_payload_is_flagged(void **state)
{
    struct fixture *f = *state;
    unsigned char h1[32], h2[32];
    ob_dedup_result_t res;

    hash_of("{\"n\": 1}", h1);
    hash_of("{\"n\": 2}", h2);
    claim_committed(f, "g", "k", 1000, h1);

    res = claim_committed(f, "g", "k", 2000, h2);
    assert_int_equal(res.duplicate, 1);
    assert_int_equal(res.hash_differs, 1);

    /* Without a hash on either side nothing can be compared. */
    res = claim_committed(f, "g", "k", 3000, NULL);
    assert_int_equal(res.duplicate, 1);
    assert_int_equal(res.hash_differs, 0);
    claim_committed(f, "g", "no-hash", 1000, NULL);
    res = claim_committed(f, "g", "no-hash", 2000, h1);
    assert_int_equal(res.duplicate, 1);
    assert_int_equal(res.hash_differs, 0);

    /* The stored hash stays the first one. */
    assert_memory_equal(lookup(f, "g", "k").hash, h1, 32);
}

static void a_claim_earlier_in_the_same_transaction_is_a_duplicate(
    void **state)
{
    struct fixture *f = *state;
    ob_dedup_entry_t e = entry("k", 5000, NULL);
    void *txn = f->b->begin(f);

    assert_int_equal(claim_ok(f, txn, "g", &e).duplicate, 0);
    e.at_ms = 6000;
    assert_int_equal(claim_ok(f, txn, "g", &e).duplicate, 1);
    assert_int_equal(claim_ok(f, txn, "g", &e).claimed_at_ms, 5000);
    f->b->commit(f, txn);
    assert_int_equal(count(f, "g"), 1);
}

static void a_rolled_back_claim_leaves_nothing(void **state)
{
    struct fixture *f = *state;
    ob_dedup_entry_t e = entry("k", 5000, NULL);
    void *txn = f->b->begin(f);

    assert_int_equal(claim_ok(f, txn, "g", &e).duplicate, 0);
    f->b->rollback(f, txn);

    assert_int_equal(lookup(f, "g", "k").found, 0);
    assert_int_equal(count(f, NULL), 0);
    assert_int_equal(claim_committed(f, "g", "k", 6000, NULL).duplicate, 0);
}

static void a_duplicate_leaves_the_transaction_usable(void **state)
{
    struct fixture *f = *state;
    ob_dedup_entry_t e = entry("k", 5000, NULL);
    void *txn;

    claim_committed(f, "g", "k", 1000, NULL);
    txn = f->b->begin(f);
    assert_int_equal(claim_ok(f, txn, "g", &e).duplicate, 1);
    e.key = "k2";
    assert_int_equal(claim_ok(f, txn, "g", &e).duplicate, 0);
    f->b->commit(f, txn);
    assert_int_equal(count(f, "g"), 2);
}

static void assert_refused(struct fixture *f, void *txn, const char *ns,
                           ob_dedup_entry_t e, int code, const char *words)
{
    ob_dedup_result_t res;
    ob_error_t err;

    assert_int_equal(ob_dedup_claim(f->d, txn, ns, &e, &res, &err), code);
    assert_int_equal(err.code, code);
    if (strstr(err.message, words) == NULL)
        fail_msg("expected \"%s\" in \"%s\"", words, err.message);
}

static void bad_input_is_refused_and_the_transaction_stays_usable(
    void **state)
{
    struct fixture *f = *state;
    char long_key[OB_KEY_MAX + 2], long_topic[OB_DEDUP_TOPIC_MAX + 2];
    ob_dedup_entry_t e = entry("k", 1000, NULL);
    void *txn = f->b->begin(f);

    memset(long_key, 'k', sizeof(long_key) - 1);
    long_key[sizeof(long_key) - 1] = '\0';
    memset(long_topic, 't', sizeof(long_topic) - 1);
    long_topic[sizeof(long_topic) - 1] = '\0';

    e.key = long_key;
    assert_refused(f, txn, "g", e, OB_ETOOLONG, "key is 256 bytes");
    assert_refused(f, txn, long_key, entry("k", 1, NULL), OB_ETOOLONG,
                   "namespace is 256 bytes");
    assert_refused(f, txn, "", entry("k", 1, NULL), OB_EEMPTY, "namespace");
    assert_refused(f, txn, NULL, entry("k", 1, NULL), OB_EEMPTY,
                   "namespace");
    assert_refused(f, txn, "g", entry("", 1, NULL), OB_EEMPTY, "key");
    assert_refused(f, txn, "g", entry(NULL, 1, NULL), OB_EEMPTY, "key");
    assert_refused(f, txn, "g\xc3", entry("k", 1, NULL), OB_EUTF8,
                   "namespace");
    assert_refused(f, txn, "g", entry("\xed\xa0\x80", 1, NULL), OB_EUTF8,
                   "key");
    e = entry("a\0b", 1, NULL);
    e.key_len = 3;
    assert_refused(f, txn, "g", e, OB_ENUL, "key");
    e = entry("k", 1, NULL);
    e.topic = long_topic;
    assert_refused(f, txn, "g", e, OB_ETOOLONG, "topic");
    e = entry("k", -5, NULL);
    assert_refused(f, txn, "g", e, OB_EINVAL, "negative");
    e = entry("k", 1, NULL);
    e.size = 8;
    assert_refused(f, txn, "g", e, OB_EINVAL, "OB_DEDUP_ENTRY_INIT");
    e = entry("k", 1, NULL);
    e.partition = -2;
    assert_refused(f, txn, "g", e, OB_EINVAL, "partition");

    e = entry("k", 1000, NULL);
    assert_int_equal(claim_ok(f, txn, "g", &e).duplicate, 0);
    f->b->commit(f, txn);
    assert_int_equal(count(f, NULL), 1);
}

static void the_longest_namespace_and_key_are_stored_and_purged(
    void **state)
{
    struct fixture *f = *state;
    char ns[OB_DEDUP_NAMESPACE_MAX + 1], key[OB_KEY_MAX + 1];
    ob_dedup_info_t info;

    /* Multi-byte characters, so the limits are in bytes: 85 x 3 = 255. */
    ns[0] = '\0';
    while (strlen(ns) < OB_DEDUP_NAMESPACE_MAX)
        strcat(ns, "\xe2\x82\xac");
    memset(key, 'x', OB_KEY_MAX);
    key[OB_KEY_MAX] = '\0';

    assert_int_equal(claim_committed(f, ns, key, 1000, NULL).duplicate, 0);
    assert_int_equal(claim_committed(f, ns, key, 2000, NULL).duplicate, 1);
    info = lookup(f, ns, key);
    assert_int_equal(info.found, 1);
    assert_int_equal(info.claimed_at_ms, 1000);
    assert_int_equal(count(f, ns), 1);
    assert_int_equal(purge(f, ns, 1001, 0), 1);
    assert_int_equal(count(f, NULL), 0);
}

static void namespaces_are_isolated(void **state)
{
    struct fixture *f = *state;
    unsigned char ha[32], hb[32];

    hash_of("a", ha);
    hash_of("b", hb);
    /* "ab" is a prefix of "abc": their keys must not mix. */
    assert_int_equal(claim_committed(f, "ab", "k", 1000, ha).duplicate, 0);
    assert_int_equal(claim_committed(f, "abc", "k", 1000, hb).duplicate, 0);
    assert_int_equal(claim_committed(f, "ab", "ck", 1000, ha).duplicate, 0);
    assert_int_equal(claim_committed(f, "abc", "k", 1000, hb).hash_differs,
                     0);

    assert_memory_equal(lookup(f, "ab", "k").hash, ha, 32);
    assert_memory_equal(lookup(f, "abc", "k").hash, hb, 32);
    assert_int_equal(lookup(f, "a", "bck").found, 0);
    assert_int_equal(count(f, "ab"), 2);
    assert_int_equal(count(f, "abc"), 1);
    assert_int_equal(count(f, "a"), 0);
    assert_int_equal(count(f, NULL), 3);

    assert_int_equal(purge(f, "ab", 5000, 0), 2);
    assert_int_equal(count(f, "ab"), 0);
    assert_int_equal(count(f, "abc"), 1);
}

static void lookup_reports_time_hash_and_source(void **state)
{
    struct fixture *f = *state;
    ob_dedup_entry_t e = entry("k", 1700000000456, NULL);
    unsigned char h[32];
    ob_dedup_info_t info;
    void *txn;

    hash_of("payload", h);
    e.hash = h;
    e.topic = "order-events";
    e.partition = 7;
    e.offset = 123456789012;
    txn = f->b->begin(f);
    claim_ok(f, txn, "g", &e);
    f->b->commit(f, txn);
    claim_committed(f, "g", "bare", 42, NULL);

    info = lookup(f, "g", "k");
    assert_int_equal(info.found, 1);
    assert_int_equal(info.claimed_at_ms, 1700000000456);
    assert_int_equal(info.has_hash, 1);
    assert_memory_equal(info.hash, h, 32);
    assert_string_equal(info.topic, "order-events");
    assert_int_equal(info.partition, 7);
    assert_int_equal(info.offset, 123456789012);

    info = lookup(f, "g", "bare");
    assert_int_equal(info.found, 1);
    assert_int_equal(info.claimed_at_ms, 42);
    assert_int_equal(info.has_hash, 0);
    assert_string_equal(info.topic, "");
    assert_int_equal(info.partition, -1);
    assert_int_equal(info.offset, -1);

    info = lookup(f, "g", "absent");
    assert_int_equal(info.found, 0);
    assert_int_equal(info.claimed_at_ms, 0);
    assert_int_equal(info.partition, -1);
}

static void a_claim_without_a_time_takes_the_wall_clock(void **state)
{
    struct fixture *f = *state;
    struct timespec ts;
    int64_t before, after;
    ob_dedup_result_t res;

    clock_gettime(CLOCK_REALTIME, &ts);
    before = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    res = claim_committed(f, "g", "k", 0, NULL);
    clock_gettime(CLOCK_REALTIME, &ts);
    after = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;

    assert_in_range(res.claimed_at_ms, before, after);
    assert_int_equal(lookup(f, "g", "k").claimed_at_ms, res.claimed_at_ms);
}

static void purge_removes_exactly_the_keys_claimed_before_the_time(
    void **state)
{
    struct fixture *f = *state;
    char key[32];
    int i;

    for (i = 1; i <= 10; i++) {
        snprintf(key, sizeof(key), "k-%02d", i);
        claim_committed(f, "g", key, 1000 * i, NULL);
    }
    claim_committed(f, "other", "k-01", 1000, NULL);

    /* Strictly before: the key claimed at 3000 stays. */
    assert_int_equal(purge(f, "g", 3000, 0), 2);
    assert_int_equal(lookup(f, "g", "k-02").found, 0);
    assert_int_equal(lookup(f, "g", "k-03").found, 1);
    assert_int_equal(count(f, "g"), 8);

    /* A limit takes the oldest first. */
    assert_int_equal(purge(f, "g", 100000, 3), 3);
    assert_int_equal(lookup(f, "g", "k-05").found, 0);
    assert_int_equal(lookup(f, "g", "k-06").found, 1);
    assert_int_equal(purge(f, "g", 7000, 0), 1);
    assert_int_equal(purge(f, "g", 7000, 0), 0);
    assert_int_equal(count(f, "g"), 4);
    assert_int_equal(count(f, "other"), 1);

    /* A purged key can be claimed again. */
    assert_int_equal(claim_committed(f, "g", "k-01", 20000, NULL).duplicate,
                     0);
}

static void purge_handles_many_keys_of_one_millisecond(void **state)
{
    struct fixture *f = *state;
    ob_dedup_entry_t e = entry(NULL, 0, NULL);
    char key[32];
    void *txn = f->b->begin(f);
    int i;

    /* Interleaved namespaces in one millisecond, and a later one. */
    for (i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "k-%03d", i);
        e.key = key;
        e.at_ms = i < 250 ? 5000 : 5001;
        claim_ok(f, txn, i % 3 == 0 ? "x" : "y", &e);
    }
    f->b->commit(f, txn);
    assert_int_equal(count(f, "x"), 100);
    assert_int_equal(count(f, "y"), 200);

    assert_int_equal(purge(f, "y", 5001, 0), 166);
    assert_int_equal(count(f, "y"), 34);
    assert_int_equal(count(f, "x"), 100);
    assert_int_equal(purge(f, "x", 5001, 50), 50);
    assert_int_equal(purge(f, "x", 5001, 50), 34);
    assert_int_equal(count(f, "x"), 16);
    assert_int_equal(purge(f, "x", 5002, 0), 16);
    assert_int_equal(purge(f, "y", 5002, 0), 34);
    assert_int_equal(count(f, NULL), 0);
}

static void counts_follow_claims_and_purges(void **state)
{
    struct fixture *f = *state;
    char key[32];
    int i;

    assert_int_equal(count(f, NULL), 0);
    assert_int_equal(count(f, "g"), 0);
    for (i = 0; i < 25; i++) {
        snprintf(key, sizeof(key), "%d", i);
        claim_committed(f, i < 20 ? "g" : "h", key, 1000 + i, NULL);
    }
    claim_committed(f, "g", "0", 9999, NULL);
    assert_int_equal(count(f, "g"), 20);
    assert_int_equal(count(f, "h"), 5);
    assert_int_equal(count(f, NULL), 25);
    assert_int_equal(purge(f, "g", 1010, 0), 10);
    assert_int_equal(count(f, "g"), 10);
    assert_int_equal(count(f, NULL), 15);
}

static void null_arguments_are_refused(void **state)
{
    struct fixture *f = *state;
    ob_dedup_entry_t e = entry("k", 1, NULL);
    ob_dedup_info_t info;
    ob_error_t err;
    uint64_t n;
    void *txn = f->b->begin(f);

    assert_int_equal(ob_dedup_claim(NULL, txn, "g", &e, NULL, &err),
                     OB_EINVAL);
    assert_int_equal(ob_dedup_claim(f->d, NULL, "g", &e, NULL, &err),
                     OB_EINVAL);
    assert_int_equal(ob_dedup_claim(f->d, txn, "g", NULL, NULL, &err),
                     OB_EINVAL);
    assert_int_equal(ob_dedup_lookup(f->d, txn, "g", "k", 0, NULL, &err),
                     OB_EINVAL);
    assert_int_equal(ob_dedup_count(f->d, txn, "g", NULL, &err), OB_EINVAL);
    assert_int_equal(ob_dedup_purge(f->d, NULL, "g", 5, 0, NULL, &err),
                     OB_EINVAL);
    assert_int_equal(ob_dedup_purge(f->d, txn, "", 5, 0, NULL, &err),
                     OB_EEMPTY);
    assert_int_equal(ob_dedup_lookup(f->d, txn, "g", "", 0, &info, &err),
                     OB_EEMPTY);
    assert_int_equal(info.found, 0);
    assert_int_equal(ob_dedup_count(f->d, txn, "", &n, &err), OB_EEMPTY);

    /* Nothing above broke the transaction. */
    assert_int_equal(claim_ok(f, txn, "g", &e).duplicate, 0);
    f->b->commit(f, txn);
    assert_string_equal(ob_dedup_backend(f->d), f->b->name);
}

static void claim_batch_ok(struct fixture *f, void *txn, const char *ns,
                           const ob_dedup_entry_t *e, size_t n,
                           ob_dedup_result_t *res)
{
    ob_error_t err;

    memset(res, 0x5a, n * sizeof(*res));
    if (ob_dedup_claim_batch(f->d, txn, ns, e, n, res, &err) != 0)
        fail_msg("claim batch: %s: %s", ob_error_name(err.code),
                 err.message);
}

static void a_batch_claims_as_claims_one_by_one_would(void **state)
{
    struct fixture *f = *state;
    unsigned char h1[32], h2[32], h3[32];
    ob_dedup_entry_t e[5];
    ob_dedup_result_t res[5];
    void *txn;

    hash_of("1", h1);
    hash_of("2", h2);
    hash_of("3", h3);
    claim_committed(f, "g", "k1", 1000, h1);
    e[0] = entry("k2", 2000, h1);
    e[1] = entry("k1", 2001, h2);
    e[2] = entry("k2", 2002, h3);
    e[3] = entry("k3", 2003, NULL);
    e[4] = entry("k1", 2004, h1);
    txn = f->b->begin(f);
    claim_batch_ok(f, txn, "g", e, 5, res);
    f->b->commit(f, txn);

    assert_int_equal(res[0].duplicate, 0);
    assert_int_equal(res[0].claimed_at_ms, 2000);
    assert_int_equal(res[1].duplicate, 1);
    assert_int_equal(res[1].hash_differs, 1);
    assert_int_equal(res[1].claimed_at_ms, 1000);
    assert_int_equal(res[2].duplicate, 1);
    assert_int_equal(res[2].hash_differs, 1);
    assert_int_equal(res[2].claimed_at_ms, 2000);
    assert_int_equal(res[3].duplicate, 0);
    assert_int_equal(res[3].hash_differs, 0);
    assert_int_equal(res[4].duplicate, 1);
    assert_int_equal(res[4].hash_differs, 0);
    assert_int_equal(count(f, "g"), 3);
    assert_memory_equal(lookup(f, "g", "k2").hash, h1, 32);
    assert_int_equal(lookup(f, "g", "k3").has_hash, 0);
}

static void a_batch_with_a_bad_entry_claims_nothing(void **state)
{
    struct fixture *f = *state;
    ob_dedup_entry_t e[3];
    ob_dedup_result_t res[3];
    ob_error_t err;
    void *txn;

    e[0] = entry("good", 1000, NULL);
    e[1] = entry("also-good", 1000, NULL);
    e[2] = entry("", 1000, NULL);
    txn = f->b->begin(f);
    assert_int_equal(ob_dedup_claim_batch(f->d, txn, "g", e, 3, res, &err),
                     OB_EEMPTY);
    assert_string_equal(err.message, "entry 2: key is empty");
    assert_int_equal(ob_dedup_claim_batch(f->d, txn, "", e, 2, res, &err),
                     OB_EEMPTY);
    assert_int_equal(ob_dedup_claim_batch(f->d, txn, "g", NULL, 2, res,
                                          &err), OB_EINVAL);
    assert_int_equal(ob_dedup_claim_batch(f->d, txn, "g", e, 0, NULL, &err),
                     0);
    claim_batch_ok(f, txn, "g", e, 1, res);
    f->b->commit(f, txn);
    assert_int_equal(res[0].duplicate, 0);
    assert_int_equal(count(f, "g"), 1);
}

static void a_large_batch_of_odd_keys_mixes_new_and_duplicates(void **state)
{
    static const char *const odd[] = {
        "a\"b", "c\\d", "{e,f}", "NULL", " spaced ", "\xc3\xa9t\xc3\xa9",
        "", "''",
    };
    enum { N = 1000 };
    struct fixture *f = *state;
    ob_dedup_entry_t *e = calloc(N, sizeof(*e));
    ob_dedup_result_t *res = calloc(N, sizeof(*res));
    char (*keys)[32] = calloc(N, sizeof(*keys));
    ob_dedup_info_t info;
    void *txn;
    int i;

    assert_non_null(e);
    assert_non_null(res);
    assert_non_null(keys);
    for (i = 0; i < N; i++) {
        snprintf(keys[i], sizeof(keys[i]), "%s%d", odd[i % 8], i / 2);
        e[i] = entry(keys[i], 5000 + i, NULL);
        if (i % 3 == 0)
            claim_committed(f, "g", keys[i], 100, NULL);
    }
    txn = f->b->begin(f);
    claim_batch_ok(f, txn, "g", e, N, res);
    f->b->commit(f, txn);

    for (i = 0; i < N; i++) {
        if (res[i].duplicate != (i % 3 == 0))
            fail_msg("entry %d (%s): duplicate %d", i, keys[i],
                     res[i].duplicate);
        assert_int_equal(res[i].claimed_at_ms, i % 3 == 0 ? 100 : 5000 + i);
    }
    assert_int_equal(count(f, "g"), N);
    txn = f->b->begin(f);
    assert_int_equal(ob_dedup_lookup(f->d, txn, "g", "{e,f}1", 0, &info,
                                     NULL), 0);
    f->b->commit(f, txn);
    assert_int_equal(info.claimed_at_ms, 5002);
    free(keys);
    free(res);
    free(e);
}

static void a_rolled_back_batch_leaves_nothing(void **state)
{
    struct fixture *f = *state;
    ob_dedup_entry_t e[2];
    ob_dedup_result_t res[2];
    void *txn = f->b->begin(f);

    e[0] = entry("k1", 1000, NULL);
    e[1] = entry("k2", 1000, NULL);
    claim_batch_ok(f, txn, "g", e, 2, res);
    f->b->rollback(f, txn);
    assert_int_equal(count(f, NULL), 0);
}

#define SUITE_TEST(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

static const struct CMUnitTest suite[] = {
    SUITE_TEST(a_new_key_is_new_and_a_second_claim_a_duplicate),
    SUITE_TEST(a_reused_key_with_another_payload_is_flagged),
    SUITE_TEST(a_claim_earlier_in_the_same_transaction_is_a_duplicate),
    SUITE_TEST(a_rolled_back_claim_leaves_nothing),
    SUITE_TEST(a_duplicate_leaves_the_transaction_usable),
    SUITE_TEST(bad_input_is_refused_and_the_transaction_stays_usable),
    SUITE_TEST(the_longest_namespace_and_key_are_stored_and_purged),
    SUITE_TEST(namespaces_are_isolated),
    SUITE_TEST(lookup_reports_time_hash_and_source),
    SUITE_TEST(a_claim_without_a_time_takes_the_wall_clock),
    SUITE_TEST(purge_removes_exactly_the_keys_claimed_before_the_time),
    SUITE_TEST(purge_handles_many_keys_of_one_millisecond),
    SUITE_TEST(counts_follow_claims_and_purges),
    SUITE_TEST(null_arguments_are_refused),
    SUITE_TEST(a_batch_claims_as_claims_one_by_one_would),
    SUITE_TEST(a_batch_with_a_bad_entry_claims_nothing),
    SUITE_TEST(a_large_batch_of_odd_keys_mixes_new_and_duplicates),
    SUITE_TEST(a_rolled_back_batch_leaves_nothing),
};

int main(void)
{
    int failed = 0;

    failed += cmocka_run_group_tests_name("dedup_store_postgresql", suite,
                                          group_pg, NULL);
    failed += cmocka_run_group_tests_name("dedup_store_lmdb", suite,
                                          group_lmdb, NULL);
    return failed != 0;
}
