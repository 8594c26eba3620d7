/*
 * bench_dedup: claims per second of the key store alone, no consumer.
 *
 * LMDB: ob_dedup_claim() in transactions of B claims, B = 1, 100 and
 * 1000, each commit durable (LMDB's default sync), in a fresh
 * environment per run; beside it the ceiling, a raw mdb_put() of the
 * same key and value per claim into one plain database (the store makes
 * two puts per claim: the key and its time index entry).
 *
 * PostgreSQL, on the inbox table in transactions of B claims: one
 * ob_dedup_claim() per key beside one plain INSERT .. ON CONFLICT DO
 * NOTHING of the same row per key (the same round trips, without the
 * store); and one ob_dedup_claim_batch() per transaction beside one
 * plain INSERT .. SELECT FROM unnest(arrays) .. ON CONFLICT DO NOTHING
 * of the whole batch (one round trip each).
 *
 * Keys: time-ordered (ob_key_uuidv7, the writer's default) and random
 * (content keys, SHA-256 based). Each claim carries a 32-byte payload
 * hash. Durable first, then relaxed (MDB_NOSYNC; synchronous_commit
 * off), each the median of RUNS runs with the spread (min..max).
 *
 *   bench_dedup --db CONNINFO [--runs N] [--scale F] [--dir DIR]
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <lmdb.h>
#include <oncebox/oncebox.h>

#define NS "bench"
#define RUNS_MAX 16
#define MAP_BYTES "2147483648"

enum { KEYS_ORDERED, KEYS_RANDOM };
enum { PG_STORE, PG_PLAIN, PG_STORE_BATCH, PG_ARRAYS, PG_MODES };

struct keys {
    int n;
    char (*key)[OB_UUID_LEN + 1];
    unsigned char (*hash)[OB_DEDUP_HASH_LEN];
};

struct bench {
    PGconn *conn;
    ob_dedup_t *pg;
    int runs;
    double scale;
    const char *dir;
    struct keys keys[2];
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *why)
{
    fprintf(stderr, "bench_dedup: %s: %s\n", what, why);
    exit(1);
}

static void exec(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);

    if (PQresultStatus(res) != PGRES_COMMAND_OK &&
        PQresultStatus(res) != PGRES_TUPLES_OK)
        die(sql, PQerrorMessage(conn));
    PQclear(res);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

static double median(double *v, int n, double *lo, double *hi)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    *lo = v[0];
    *hi = v[n - 1];
    return v[n / 2];
}

/* n keys of one kind and a payload hash for each, made before timing. */
static void keys_make(struct keys *k, int n, int kind)
{
    char payload[64];
    int i, len;

    k->n = n;
    k->key = calloc((size_t)n, sizeof(*k->key));
    k->hash = calloc((size_t)n, sizeof(*k->hash));
    if (k->key == NULL || k->hash == NULL)
        die("keys", "out of memory");
    for (i = 0; i < n; i++) {
        len = snprintf(payload, sizeof(payload), "{\"n\": %d}", i);
        if (kind == KEYS_ORDERED ? ob_key_uuidv7(k->key[i], NULL)
                                 : ob_key_content("Order", "o", "Placed",
                                                  payload, (size_t)len,
                                                  k->key[i], NULL))
            die("keys", "key derivation failed");
        if (ob_dedup_hash(payload, (size_t)len, k->hash[i], NULL) != 0)
            die("keys", "hash failed");
    }
}

/* A fresh environment directory under the bench's directory. */
static void env_dir(const struct bench *bn, char *dir, size_t size)
{
    snprintf(dir, size, "%s/ob-bench-dedup.XXXXXX", bn->dir);
    if (mkdtemp(dir) == NULL)
        die(dir, "mkdtemp failed");
}

static void env_dir_remove(const char *dir)
{
    char path[600];

    snprintf(path, sizeof(path), "%s/data.mdb", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/lock.mdb", dir);
    unlink(path);
    rmdir(dir);
}

/* The raw ceiling's record: the store's name encoding, a 53-byte value. */
static void raw_put(MDB_txn *txn, MDB_dbi dbi, const char *key)
{
    unsigned char name[300], value[53] = {0};
    size_t klen = strlen(key);
    MDB_val k, v;
    int rc;

    memcpy(name, NS, sizeof(NS));
    memcpy(name + sizeof(NS), key, klen);
    k.mv_size = sizeof(NS) + klen;
    k.mv_data = name;
    v.mv_size = sizeof(value);
    v.mv_data = value;
    rc = mdb_put(txn, dbi, &k, &v, MDB_NOOVERWRITE);
    if (rc != 0)
        die("mdb_put", mdb_strerror(rc));
}

static void lmdb_claim(ob_dedup_t *d, MDB_txn *txn, const struct keys *k,
                       int i)
{
    ob_dedup_entry_t e = OB_DEDUP_ENTRY_INIT;
    ob_dedup_result_t res;
    ob_error_t err;

    e.key = k->key[i];
    e.hash = k->hash[i];
    if (ob_dedup_claim(d, txn, NS, &e, &res, &err) != 0)
        die("claim", err.message);
    if (res.duplicate)
        die("claim", "a fresh key was reported as a duplicate");
}

/* Claims k->n keys in transactions of batch; returns claims/s. */
static double lmdb_loop(MDB_env *env, ob_dedup_t *d, MDB_dbi raw,
                        const struct keys *k, int n, int batch)
{
    MDB_txn *txn;
    double t0 = now_s();
    int i, j, rc;

    for (i = 0; i < n; i += batch) {
        rc = mdb_txn_begin(env, NULL, 0, &txn);
        if (rc != 0)
            die("mdb_txn_begin", mdb_strerror(rc));
        for (j = i; j < i + batch && j < n; j++) {
            if (d != NULL)
                lmdb_claim(d, txn, k, j);
            else
                raw_put(txn, raw, k->key[j]);
        }
        rc = mdb_txn_commit(txn);
        if (rc != 0)
            die("mdb_txn_commit", mdb_strerror(rc));
    }
    return n / (now_s() - t0);
}

static ob_conf_t *lmdb_conf(int relaxed)
{
    ob_conf_t *conf;
    ob_error_t err;

    if (ob_conf_new(&conf, &err) != 0 ||
        ob_conf_set(conf, "lmdb.map.size.bytes", MAP_BYTES, &err) != 0 ||
        ob_conf_set(conf, "lmdb.durability", relaxed ? "nosync" : "durable",
                    &err) != 0)
        die("conf", err.message);
    return conf;
}

/* One run in a fresh environment: the store, or raw puts. */
static double lmdb_run(const struct bench *bn, const struct keys *k, int n,
                       int batch, int raw, int relaxed)
{
    ob_conf_t *conf = lmdb_conf(relaxed);
    ob_dedup_t *d = NULL;
    MDB_dbi dbi = 0;
    MDB_env *env;
    MDB_txn *txn;
    ob_error_t err;
    char dir[512];
    double rate;

    env_dir(bn, dir, sizeof(dir));
    if (ob_lmdb_env_open(&env, dir, conf, &err) != 0)
        die("open", err.message);
    if (!raw && ob_dedup_lmdb_new(&d, env, NULL, &err) != 0)
        die("store", err.message);
    if (raw && (mdb_txn_begin(env, NULL, 0, &txn) != 0 ||
                mdb_dbi_open(txn, "raw", MDB_CREATE, &dbi) != 0 ||
                mdb_txn_commit(txn) != 0))
        die("raw", "cannot open the database");

    rate = lmdb_loop(env, d, dbi, k, n, batch);
    ob_dedup_destroy(d);
    ob_lmdb_env_close(env);
    env_dir_remove(dir);
    ob_conf_destroy(conf);
    return rate;
}

static void lmdb_report(const struct bench *bn, int kind, int batch, int n,
                        int relaxed)
{
    double store[RUNS_MAX], raw[RUNS_MAX], ms, mr, lo1, hi1, lo2, hi2;
    const struct keys *k = &bn->keys[kind];
    int r;

    if (n > k->n)
        n = k->n;
    for (r = 0; r < bn->runs; r++) {
        raw[r] = lmdb_run(bn, k, n, batch, 1, relaxed);
        store[r] = lmdb_run(bn, k, n, batch, 0, relaxed);
    }
    ms = median(store, bn->runs, &lo1, &hi1);
    mr = median(raw, bn->runs, &lo2, &hi2);
    printf("  batch %4d, %6d claims: store %8.0f/s (%.0f..%.0f)   "
           "raw mdb_put %8.0f/s (%.0f..%.0f)   store/raw %.2f\n",
           batch, n, ms, lo1, hi1, mr, lo2, hi2, ms / mr);
}

static int scaled(const struct bench *bn, int n, int batch)
{
    int m = (int)(n * bn->scale);

    return m < batch ? batch : m / batch * batch;
}

static void lmdb_all(const struct bench *bn, int relaxed)
{
    static const char *const kinds[] = {"time-ordered UUIDv7",
                                        "random content"};
    int kind;

    printf("LMDB, %s:\n", relaxed ? "relaxed (MDB_NOSYNC)"
                                  : "durable (LMDB's default sync)");
    lmdb_run(bn, &bn->keys[0], 2000, 100, 0, relaxed); /* warm-up */
    for (kind = 0; kind < 2; kind++) {
        printf(" keys: %s\n", kinds[kind]);
        lmdb_report(bn, kind, 1, scaled(bn, 1000, 1), relaxed);
        lmdb_report(bn, kind, 100, scaled(bn, 20000, 100), relaxed);
        lmdb_report(bn, kind, 1000, scaled(bn, 100000, 1000), relaxed);
    }
}

static void hex(const unsigned char *b, char out[2 * OB_DEDUP_HASH_LEN + 1])
{
    static const char digits[] = "0123456789abcdef";
    int i;

    for (i = 0; i < OB_DEDUP_HASH_LEN; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 0xf];
    }
    out[2 * OB_DEDUP_HASH_LEN] = '\0';
}

static void pg_plain(PGconn *conn, const struct keys *k, int i)
{
    char h[2 * OB_DEDUP_HASH_LEN + 1];
    const char *params[3] = {NS, k->key[i], h};
    PGresult *res;

    hex(k->hash[i], h);
    res = PQexecParams(conn, "INSERT INTO bench_dedup.inbox (namespace,"
                       " idempotency_key, payload_hash) VALUES ($1, $2,"
                       " decode($3, 'hex')) ON CONFLICT DO NOTHING", 3,
                       NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        die("insert", PQerrorMessage(conn));
    PQclear(res);
}

/* One INSERT of keys [i, end) from two arrays. */
static void pg_arrays(PGconn *conn, const struct keys *k, int i, int end)
{
    size_t cap = (size_t)(end - i) * 80 + 8, kl = 0, hl = 0;
    char *ks = malloc(cap), *hs = malloc(cap), h[65];
    const char *params[3] = {NS, ks, hs};
    PGresult *res;
    int j;

    if (ks == NULL || hs == NULL)
        die("arrays", "out of memory");
    kl += (size_t)snprintf(ks, cap, "{");
    hl += (size_t)snprintf(hs, cap, "{");
    for (j = i; j < end; j++) {
        hex(k->hash[j], h);
        kl += (size_t)snprintf(ks + kl, cap - kl, "%s%s", j > i ? "," : "",
                               k->key[j]);
        hl += (size_t)snprintf(hs + hl, cap - hl, "%s%s", j > i ? "," : "",
                               h);
    }
    snprintf(ks + kl, cap - kl, "}");
    snprintf(hs + hl, cap - hl, "}");
    res = PQexecParams(conn, "INSERT INTO bench_dedup.inbox (namespace,"
                       " idempotency_key, payload_hash) SELECT $1, k,"
                       " decode(h, 'hex') FROM unnest($2::text[],"
                       " $3::text[]) AS u(k, h) ON CONFLICT DO NOTHING", 3,
                       NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        die("insert arrays", PQerrorMessage(conn));
    PQclear(res);
    free(ks);
    free(hs);
}

static void pg_claim(const struct bench *bn, const struct keys *k, int i)
{
    ob_dedup_entry_t e = OB_DEDUP_ENTRY_INIT;
    ob_dedup_result_t res;
    ob_error_t err;

    e.key = k->key[i];
    e.hash = k->hash[i];
    if (ob_dedup_claim(bn->pg, bn->conn, NS, &e, &res, &err) != 0)
        die("claim", err.message);
    if (res.duplicate)
        die("claim", "a fresh key was reported as a duplicate");
}

/* One ob_dedup_claim_batch() of keys [i, end). */
static void pg_claim_batch(const struct bench *bn, const struct keys *k,
                           int i, int end, ob_dedup_entry_t *e,
                           ob_dedup_result_t *res)
{
    ob_error_t err;
    int j;

    for (j = i; j < end; j++) {
        e[j - i] = (ob_dedup_entry_t)OB_DEDUP_ENTRY_INIT;
        e[j - i].key = k->key[j];
        e[j - i].hash = k->hash[j];
    }
    if (ob_dedup_claim_batch(bn->pg, bn->conn, NS, e, (size_t)(end - i),
                             res, &err) != 0)
        die("claim batch", err.message);
    for (j = 0; j < end - i; j++) {
        if (res[j].duplicate)
            die("claim batch", "a fresh key was reported as a duplicate");
    }
}

/* One transaction of keys [i, end) in one of the modes. */
static void pg_txn(const struct bench *bn, const struct keys *k, int i,
                   int end, int mode, ob_dedup_entry_t *e,
                   ob_dedup_result_t *res)
{
    int j;

    exec(bn->conn, "BEGIN");
    if (mode == PG_ARRAYS)
        pg_arrays(bn->conn, k, i, end);
    else if (mode == PG_STORE_BATCH)
        pg_claim_batch(bn, k, i, end, e, res);
    for (j = i; j < end && mode == PG_STORE; j++)
        pg_claim(bn, k, j);
    for (j = i; j < end && mode == PG_PLAIN; j++)
        pg_plain(bn->conn, k, j);
    exec(bn->conn, "COMMIT");
}

/* Claims n keys in transactions of batch; returns claims/s. */
static double pg_run(const struct bench *bn, const struct keys *k, int n,
                     int batch, int mode)
{
    ob_dedup_entry_t *e = calloc((size_t)batch, sizeof(*e));
    ob_dedup_result_t *res = calloc((size_t)batch, sizeof(*res));
    double t0;
    int i;

    if (e == NULL || res == NULL)
        die("batch", "out of memory");
    exec(bn->conn, "TRUNCATE bench_dedup.inbox");
    t0 = now_s();
    for (i = 0; i < n; i += batch)
        pg_txn(bn, k, i, i + batch < n ? i + batch : n, mode, e, res);
    t0 = now_s() - t0;
    free(e);
    free(res);
    return n / t0;
}

static void pg_report(const struct bench *bn, int kind, int batch, int n)
{
    double v[PG_MODES][RUNS_MAX], m[PG_MODES], lo[PG_MODES], hi[PG_MODES];
    const struct keys *k = &bn->keys[kind];
    int modes = batch > 1 ? PG_MODES : PG_STORE_BATCH, r, mode;

    if (n > k->n)
        n = k->n;
    for (r = 0; r < bn->runs; r++) {
        for (mode = 0; mode < modes; mode++)
            v[mode][r] = pg_run(bn, k, n, batch, mode);
    }
    for (mode = 0; mode < modes; mode++)
        m[mode] = median(v[mode], bn->runs, &lo[mode], &hi[mode]);
    printf("  batch %4d, %5d claims: one statement per claim: store "
           "%6.0f/s (%.0f..%.0f), plain INSERT %6.0f/s (%.0f..%.0f), "
           "store/plain %.2f\n", batch, n, m[0], lo[0], hi[0], m[1], lo[1],
           hi[1], m[0] / m[1]);
    if (modes == PG_MODES)
        printf("%27s one per transaction: claim_batch %6.0f/s "
               "(%.0f..%.0f), INSERT of arrays %6.0f/s (%.0f..%.0f), "
               "store/plain %.2f\n", "", m[2], lo[2], hi[2], m[3], lo[3],
               hi[3], m[2] / m[3]);
}

static void pg_all(const struct bench *bn, int relaxed)
{
    static const char *const kinds[] = {"time-ordered UUIDv7",
                                        "random content"};
    int kind;

    printf("PostgreSQL, %s:\n", relaxed ? "relaxed (synchronous_commit off)"
                                        : "durable (synchronous_commit on)");
    exec(bn->conn, relaxed ? "SET synchronous_commit = off"
                           : "SET synchronous_commit = on");
    pg_run(bn, &bn->keys[0], 1000, 100, PG_STORE); /* warm-up */
    for (kind = 0; kind < 2; kind++) {
        printf(" keys: %s\n", kinds[kind]);
        pg_report(bn, kind, 1, scaled(bn, 400, 1));
        pg_report(bn, kind, 100, scaled(bn, 3000, 100));
        pg_report(bn, kind, 1000, scaled(bn, 5000, 1000));
    }
}

static void pg_setup(struct bench *bn, const char *db)
{
    ob_conf_t *conf;
    ob_error_t err;

    bn->conn = PQconnectdb(db != NULL ? db : "");
    if (PQstatus(bn->conn) != CONNECTION_OK)
        die("connect", PQerrorMessage(bn->conn));
    if (ob_schema_migrate(bn->conn, "bench_dedup", &err) != 0)
        die("migrate", err.message);
    if (ob_conf_new(&conf, &err) != 0 ||
        ob_conf_set(conf, "schema", "bench_dedup", &err) != 0 ||
        ob_dedup_pg_new(&bn->pg, conf, &err) != 0)
        die("store", err.message);
    ob_conf_destroy(conf);
}

static int parse_args(int argc, char **argv, struct bench *bn,
                      const char **db)
{
    static const struct option longopts[] = {
        {"db", required_argument, NULL, 'd'},
        {"runs", required_argument, NULL, 'r'},
        {"scale", required_argument, NULL, 's'},
        {"dir", required_argument, NULL, 'D'},
        {NULL, 0, NULL, 0},
    };
    int c;

    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': *db = optarg; break;
        case 'r': bn->runs = atoi(optarg); break;
        case 's': bn->scale = atof(optarg); break;
        case 'D': bn->dir = optarg; break;
        default: return -1;
        }
    }
    return bn->runs >= 1 && bn->runs <= RUNS_MAX && bn->scale > 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    struct bench bn = {NULL, NULL, 3, 1.0, "/var/tmp", {{0}}};
    const char *db = getenv("ONCEBOX_DB");
    int n;

    if (parse_args(argc, argv, &bn, &db) != 0) {
        fprintf(stderr, "usage: bench_dedup --db CONNINFO [--runs N] "
                        "[--scale F] [--dir DIR]\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    n = scaled(&bn, 100000, 1000);
    keys_make(&bn.keys[KEYS_ORDERED], n, KEYS_ORDERED);
    keys_make(&bn.keys[KEYS_RANDOM], n, KEYS_RANDOM);
    pg_setup(&bn, db);

    printf("bench_dedup: claims/s of the key store alone, 1 process, "
           "keys of 32..36 bytes with a 32-byte payload hash, a fresh "
           "store per run, median of %d runs (min..max); LMDB in %s\n",
           bn.runs, bn.dir);
    lmdb_all(&bn, 0);
    pg_all(&bn, 0);
    lmdb_all(&bn, 1);
    pg_all(&bn, 1);

    exec(bn.conn, "SET client_min_messages = warning");
    exec(bn.conn, "DROP SCHEMA bench_dedup CASCADE");
    ob_dedup_destroy(bn.pg);
    PQfinish(bn.conn);
    free(bn.keys[0].key);
    free(bn.keys[0].hash);
    free(bn.keys[1].key);
    free(bn.keys[1].hash);
    return 0;
}
