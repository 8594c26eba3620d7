/*
 * bench_inbox_lmdb: messages per second through the LMDB inbox with the
 * ledger handler of examples/ledger_lmdb.c (a balance per customer and
 * a count per key, written in the inbox's transaction).
 *
 * The consumer reads a topic of N OrderPlaced messages (about 80-byte
 * JSON values, 4 partitions) from the mock broker in another process,
 * in batches of B = 1, 100 and 1000 ("consumer.batch.size"), each batch
 * one durable commit, into a fresh environment per run. The clock runs
 * from the first handler call to the commit that settles the N-th
 * message (seen through ob_consumer_stats()).
 *
 * Beside it, in the same run:
 * - baseline: a naive consumer loop without Kafka, one durable LMDB
 *   transaction per message (claim with ob_dedup_claim(), the ledger's
 *   two writes, the offset, commit);
 * - ceiling: raw mdb_put() of the same keys with the value, in
 *   transactions of B, durable.
 *
 * Keys: time-ordered (UUIDv7, the writer's default) and random (content
 * hash style, 32 hex digits). Durable first, then relaxed
 * ("lmdb.durability" = "nosync") for the consumer. Each figure is the
 * median of RUNS runs with the spread (min..max).
 *
 *   bench_inbox_lmdb [--db CONNINFO] [--runs N] [--scale F] [--dir DIR]
 *
 * The broker comes from ONCEBOX_BENCH_BROKERS (bench/run.sh sets it);
 * --db is accepted and ignored, since nothing here uses PostgreSQL.
 */
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <lmdb.h>
#include <oncebox/oncebox.h>

#define RUNS_MAX 16
#define MAP_BYTES "4294967296"

enum { KEYS_ORDERED, KEYS_RANDOM };

struct bench {
    int runs;
    double scale;
    const char *brokers;
    char dir[200];
    rd_kafka_t *producer;
    unsigned serial;
};

struct keys {
    char (*k)[OB_UUID_LEN + 1];
    int n;
};

/* The ledger's databases and the run's clock. */
struct ledger {
    MDB_dbi balances, applied;
    _Atomic long long first_ns;
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *why)
{
    fprintf(stderr, "bench_inbox_lmdb: %s: %s\n", what, why);
    exit(1);
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
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void keys_make(struct keys *k, int n, int kind)
{
    unsigned char h[OB_DEDUP_HASH_LEN];
    ob_error_t err;
    int i, j;

    k->k = calloc((size_t)n, sizeof(*k->k));
    k->n = n;
    for (i = 0; i < n; i++) {
        if (kind == KEYS_ORDERED) {
            if (ob_key_uuidv7(k->k[i], &err) != 0)
                die("uuidv7", err.message);
            continue;
        }
        ob_dedup_hash(&i, sizeof(i), h, NULL);
        for (j = 0; j < 16; j++)
            sprintf(k->k[i] + 2 * j, "%02x", h[j]);
    }
}

static int value_of(int i, char *out, size_t size)
{
    return snprintf(out, size, "{\"order_id\": \"o-%d\", \"customer_id\": "
                    "\"c-%d\", \"total_cents\": %d}", i, i % 100 + 1,
                    100 + i % 1000);
}

static void env_dir(struct bench *bn, char *dir, size_t size)
{
    snprintf(dir, size, "%s/env-%u", bn->dir, bn->serial++);
}

static void env_dir_remove(const char *dir)
{
    char cmd[512];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_inbox_lmdb: could not remove %s\n", dir);
}

static MDB_env *env_new(const char *dir, int relaxed)
{
    ob_conf_t *conf;
    ob_error_t err;
    MDB_env *env;

    if (ob_conf_new(&conf, &err) != 0 ||
        ob_conf_set(conf, "lmdb.map.size.bytes", MAP_BYTES, &err) != 0 ||
        ob_conf_set(conf, "lmdb.map.max.bytes", MAP_BYTES, &err) != 0 ||
        ob_conf_set(conf, "lmdb.durability", relaxed ? "nosync" : "durable",
                    &err) != 0 ||
        ob_lmdb_env_open(&env, dir, conf, &err) != 0)
        die("environment", err.message);
    ob_conf_destroy(conf);
    return env;
}

/* The ledger's databases, as the example opens them. */
static void ledger_open(MDB_env *env, struct ledger *l)
{
    MDB_txn *txn;

    if (mdb_txn_begin(env, NULL, 0, &txn) != 0 ||
        mdb_dbi_open(txn, "ledger.balances", MDB_CREATE, &l->balances) ||
        mdb_dbi_open(txn, "ledger.applied", MDB_CREATE, &l->applied) ||
        mdb_txn_commit(txn) != 0)
        die("ledger", "cannot open its databases");
    atomic_store(&l->first_ns, 0);
}

static int add_int64(MDB_txn *txn, MDB_dbi dbi, const char *key,
                     size_t len, int64_t delta)
{
    MDB_val k = {len, (void *)key}, v;
    int64_t sum = 0;
    int rc = mdb_get(txn, dbi, &k, &v);

    if (rc == 0 && v.mv_size == sizeof(sum))
        memcpy(&sum, v.mv_data, sizeof(sum));
    else if (rc != 0 && rc != MDB_NOTFOUND)
        return rc;
    sum += delta;
    v.mv_size = sizeof(sum);
    v.mv_data = &sum;
    return mdb_put(txn, dbi, &k, &v, 0);
}

/* The ledger's two writes; customer and cents come from the caller. */
static int ledger_apply(const struct ledger *l, MDB_txn *txn,
                        const char *customer, int64_t cents,
                        const char *key)
{
    int rc = add_int64(txn, l->balances, customer, strlen(customer), cents);

    return rc != 0 ? rc : add_int64(txn, l->applied, key, strlen(key), 1);
}

static int handler(void *opaque, const ob_message_t *msg, ob_txn_t *txn,
                   ob_error_t *err)
{
    struct ledger *l = opaque;
    json_t *ev = ob_message_json(msg);
    const char *customer = json_string_value(json_object_get(ev,
                                                             "customer_id"));
    json_t *cents = json_object_get(ev, "total_cents");
    long long zero = 0;

    (void)err;
    if (atomic_load(&l->first_ns) == 0)
        atomic_compare_exchange_strong(&l->first_ns, &zero,
                                       (long long)(now_s() * 1e9));
    if (customer == NULL || !json_is_integer(cents))
        return OB_HANDLER_REJECT;
    return ledger_apply(l, ob_txn_lmdb(txn), customer,
                        json_integer_value(cents),
                        ob_message_idempotency_key(msg));
}

/* A topic holding n messages with the keys k, produced once. */
static void topic_fill(struct bench *bn, char *topic, size_t size,
                       const struct keys *k, int n)
{
    char value[160];
    int i;

    snprintf(topic, size, "bench-inbox-lmdb-%d-%u", (int)getpid(),
             bn->serial++);
    for (i = 0; i < n; i++) {
        rd_kafka_headers_t *h = rd_kafka_headers_new(2);
        int len = value_of(i, value, sizeof(value));

        rd_kafka_header_add(h, "idempotency-key", -1, k->k[i], -1);
        rd_kafka_header_add(h, "content-type", -1, "application/json", -1);
        while (rd_kafka_producev(bn->producer, RD_KAFKA_V_TOPIC(topic),
                                 RD_KAFKA_V_KEY((value + 14), 6),
                                 RD_KAFKA_V_VALUE(value, (size_t)len),
                                 RD_KAFKA_V_HEADERS(h),
                                 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                 RD_KAFKA_V_END) ==
               RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(bn->producer, 10);
    }
    if (rd_kafka_flush(bn->producer, 120000) != RD_KAFKA_RESP_ERR_NO_ERROR)
        die("produce", "flush did not finish");
}

struct watch {
    ob_consumer_t *c;
    struct ledger *l;
    uint64_t n;
    _Atomic int done; /* ob_consumer_run() returned */
    uint64_t settled; /* messages committed when the clock stopped */
    double end;
};

/*
 * Stops the consumer once n messages are committed, noting when. Should
 * fewer arrive, the consumer's idle exit ends the run, and the figure
 * counts what was settled until the last commit.
 */
static void *watch_run(void *arg)
{
    struct watch *w = arg;
    ob_consumer_stats_t st = OB_CONSUMER_STATS_INIT;
    struct timespec nap = {0, 1000000}; /* 1 ms: runs last seconds */

    w->settled = 0;
    w->end = now_s();
    while (!atomic_load(&w->done)) {
        ob_consumer_stats(w->c, &st, NULL);
        if (st.messages > w->settled) {
            w->settled = st.messages;
            w->end = now_s();
        }
        if (st.messages >= w->n)
            break;
        nanosleep(&nap, NULL);
    }
    ob_consumer_stop(w->c);
    return NULL;
}

static ob_consumer_t *consumer_new(struct bench *bn, MDB_env *env,
                                   const char *topic, int batch)
{
    char group[64], size[16];
    ob_consumer_t *c;
    ob_conf_t *conf;
    ob_error_t err;

    snprintf(group, sizeof(group), "bench-%d-%u", (int)getpid(),
             bn->serial++);
    snprintf(size, sizeof(size), "%d", batch);
    if (ob_conf_new(&conf, &err) != 0 ||
        ob_conf_set(conf, "kafka.bootstrap.servers", bn->brokers, &err) ||
        ob_conf_set(conf, "kafka.group.id", group, &err) ||
        ob_conf_set(conf, "consumer.topics", topic, &err) ||
        ob_conf_set(conf, "consumer.batch.size", size, &err) ||
        ob_conf_set(conf, "consumer.kafka.commit", "false", &err) ||
        ob_conf_set(conf, "consumer.idle.exit.ms", "5000", &err) ||
        ob_conf_set(conf, "kafka.fetch.max.bytes", "52428800", &err) ||
        ob_consumer_new_lmdb(&c, conf, env, &err) != 0)
        die("consumer", err.message);
    ob_conf_destroy(conf);
    return c;
}

/* One consumer run over topic into a fresh environment: messages/s. */
static double consumer_run(struct bench *bn, const char *topic, int n,
                           int batch, int relaxed)
{
    char dir[256];
    struct ledger l;
    struct watch w;
    pthread_t th;
    ob_error_t err;
    MDB_env *env;

    env_dir(bn, dir, sizeof(dir));
    env = env_new(dir, relaxed);
    ledger_open(env, &l);
    w.c = consumer_new(bn, env, topic, batch);
    w.l = &l;
    w.n = (uint64_t)n;
    atomic_store(&w.done, 0);
    if (ob_consumer_set_handler(w.c, handler, &l, OB_HANDLER_JSON, &err))
        die("handler", err.message);
    pthread_create(&th, NULL, watch_run, &w);
    if (ob_consumer_run(w.c, &err) != 0)
        die("consumer run", err.message);
    atomic_store(&w.done, 1);
    pthread_join(th, NULL);
    ob_consumer_destroy(w.c);
    ob_lmdb_env_close(env);
    env_dir_remove(dir);
    if (w.settled < w.n)
        fprintf(stderr, "bench_inbox_lmdb: only %llu of %d messages "
                "arrived\n", (unsigned long long)w.settled, n);
    return (double)w.settled /
           (w.end - (double)atomic_load(&l.first_ns) / 1e9);
}

/* The naive consumer: one durable transaction per message, no Kafka. */
static double naive_run(struct bench *bn, const struct keys *k, int n)
{
    static const char offset_key[] = "group\0topic\0000";
    char dir[256], value[160], customer[16];
    ob_dedup_entry_t e = OB_DEDUP_ENTRY_INIT;
    ob_dedup_result_t r;
    struct ledger l;
    ob_dedup_t *d;
    ob_error_t err;
    MDB_env *env;
    MDB_dbi offs;
    MDB_txn *txn;
    double t0;
    int i;

    env_dir(bn, dir, sizeof(dir));
    env = env_new(dir, 0);
    ledger_open(env, &l);
    if (ob_dedup_lmdb_new(&d, env, NULL, &err) != 0)
        die("dedup", err.message);
    mdb_txn_begin(env, NULL, 0, &txn);
    mdb_dbi_open(txn, "naive.offsets", MDB_CREATE, &offs);
    mdb_txn_commit(txn);

    t0 = now_s();
    for (i = 0; i < n; i++) {
        int64_t next = i + 1;
        MDB_val ok = {sizeof(offset_key), (void *)offset_key};
        MDB_val ov = {sizeof(next), &next};

        value_of(i, value, sizeof(value));
        snprintf(customer, sizeof(customer), "c-%d", i % 100 + 1);
        e.key = k->k[i];
        if (mdb_txn_begin(env, NULL, 0, &txn) != 0 ||
            ob_dedup_claim(d, txn, "bench", &e, &r, &err) != 0 ||
            (!r.duplicate && ledger_apply(&l, txn, customer, 100 + i % 1000,
                                          k->k[i]) != 0) ||
            mdb_put(txn, offs, &ok, &ov, 0) != 0 || mdb_txn_commit(txn))
            die("naive", "a transaction failed");
    }
    t0 = n / (now_s() - t0);
    ob_dedup_destroy(d);
    ob_lmdb_env_close(env);
    env_dir_remove(dir);
    return t0;
}

/* The ceiling: one raw put per message with its value, batch per txn. */
static double raw_run(struct bench *bn, const struct keys *k, int n,
                      int batch)
{
    char dir[256], value[160];
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    double t0;
    int i;

    env_dir(bn, dir, sizeof(dir));
    env = env_new(dir, 0);
    mdb_txn_begin(env, NULL, 0, &txn);
    mdb_dbi_open(txn, "raw", MDB_CREATE, &dbi);
    mdb_txn_commit(txn);

    t0 = now_s();
    for (i = 0; i < n; i += batch) {
        int j;

        if (mdb_txn_begin(env, NULL, 0, &txn) != 0)
            die("raw", "begin failed");
        for (j = i; j < i + batch && j < n; j++) {
            MDB_val kv = {strlen(k->k[j]), k->k[j]};
            MDB_val vv = {(size_t)value_of(j, value, sizeof(value)), value};

            if (mdb_put(txn, dbi, &kv, &vv, 0) != 0)
                die("raw", "put failed");
        }
        if (mdb_txn_commit(txn) != 0)
            die("raw", "commit failed");
    }
    t0 = n / (now_s() - t0);
    ob_lmdb_env_close(env);
    env_dir_remove(dir);
    return t0;
}

static int scaled(const struct bench *bn, int batch)
{
    int n = batch == 1 ? 3000 : batch == 100 ? 50000 : 100000;

    n = (int)(n * bn->scale);
    return n < batch * 4 ? batch * 4 : n;
}

static const char *kind_name(int kind)
{
    return kind == KEYS_ORDERED ? "uuidv7" : "random";
}

static void report(struct bench *bn, int kind, int batch, int relaxed,
                   double naive)
{
    double c[RUNS_MAX], r[RUNS_MAX], mc, mr, lo1, hi1, lo2, hi2;
    int n = scaled(bn, batch), i;
    char topic[96];
    struct keys k;

    keys_make(&k, n, kind);
    topic_fill(bn, topic, sizeof(topic), &k, n);
    for (i = 0; i < bn->runs; i++) {
        c[i] = consumer_run(bn, topic, n, batch, relaxed);
        r[i] = relaxed ? 0 : raw_run(bn, &k, n, batch);
    }
    mc = median(c, bn->runs, &lo1, &hi1);
    mr = median(r, bn->runs, &lo2, &hi2);
    printf("%-7s %-6s B=%-4d n=%-6d consumer %9.0f msg/s (%.0f..%.0f)",
           relaxed ? "relaxed" : "durable", kind_name(kind), batch, n, mc,
           lo1, hi1);
    if (!relaxed)
        printf("  raw mdb_put %9.0f/s (%.0f..%.0f)  %4.0f%% of ceiling",
               mr, lo2, hi2, 100 * mc / mr);
    printf("  %6.1fx naive\n", mc / naive);
    fflush(stdout);
    free(k.k);
}

static double naive_all(struct bench *bn, int kind)
{
    double v[RUNS_MAX], m, lo, hi;
    int n = (int)(2000 * bn->scale), i;
    struct keys k;

    keys_make(&k, n < 100 ? 100 : n, kind);
    for (i = 0; i < bn->runs; i++)
        v[i] = naive_run(bn, &k, k.n);
    m = median(v, bn->runs, &lo, &hi);
    printf("durable %-6s naive consumer (1 durable transaction per "
           "message, no Kafka) %.0f msg/s (%.0f..%.0f)\n", kind_name(kind),
           m, lo, hi);
    free(k.k);
    return m;
}

static void parse_args(int argc, char **argv, struct bench *bn)
{
    static const struct option longs[] = {
        {"db", required_argument, NULL, 'd'},
        {"runs", required_argument, NULL, 'r'},
        {"scale", required_argument, NULL, 's'},
        {"dir", required_argument, NULL, 'D'},
        {NULL, 0, NULL, 0},
    };
    int ch;

    while ((ch = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (ch) {
        case 'd': break;
        case 'r': bn->runs = atoi(optarg); break;
        case 's': bn->scale = atof(optarg); break;
        case 'D': snprintf(bn->dir, sizeof(bn->dir), "%s", optarg); break;
        default: exit(2);
        }
    }
    if (bn->runs < 1 || bn->runs > RUNS_MAX || bn->scale <= 0) {
        fprintf(stderr, "usage: bench_inbox_lmdb [--db CONNINFO] [--runs "
                "1..%d] [--scale F] [--dir DIR]\n", RUNS_MAX);
        exit(2);
    }
}

static rd_kafka_t *producer_new(const char *brokers)
{
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    char errstr[256];
    rd_kafka_t *rk;

    rd_kafka_conf_set(kc, "bootstrap.servers", brokers, NULL, 0);
    rd_kafka_conf_set(kc, "linger.ms", "20", NULL, 0);
    rd_kafka_conf_set(kc, "queue.buffering.max.messages", "1000000", NULL,
                      0);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, errstr, sizeof(errstr));
    if (rk == NULL)
        die("producer", errstr);
    return rk;
}

int main(int argc, char **argv)
{
    static const int batches[] = {1, 100, 1000};
    struct bench bn = {3, 1.0, NULL, "", NULL, 0};
    double naive[2];
    int kind, i, own_dir = 0;

    parse_args(argc, argv, &bn);
    bn.brokers = getenv("ONCEBOX_BENCH_BROKERS");
    if (bn.brokers == NULL || bn.brokers[0] == '\0')
        die("ONCEBOX_BENCH_BROKERS", "not set (run it from bench/run.sh)");
    if (bn.dir[0] == '\0') {
        snprintf(bn.dir, sizeof(bn.dir), "/tmp/bench-inbox-lmdb.XXXXXX");
        if (mkdtemp(bn.dir) == NULL)
            die("mkdtemp", "failed");
        own_dir = 1;
    }
    bn.producer = producer_new(bn.brokers);
    printf("bench_inbox_lmdb: LMDB inbox with the ledger handler, mock "
           "broker in another process, 4 partitions, ~80-byte values; "
           "median of %d runs (min..max); environments in %s\n", bn.runs,
           bn.dir);
    for (kind = KEYS_ORDERED; kind <= KEYS_RANDOM; kind++)
        naive[kind] = naive_all(&bn, kind);
    for (kind = KEYS_ORDERED; kind <= KEYS_RANDOM; kind++) {
        for (i = 0; i < 3; i++)
            report(&bn, kind, batches[i], 0, naive[kind]);
    }
    report(&bn, KEYS_ORDERED, 1, 1, naive[KEYS_ORDERED]);
    report(&bn, KEYS_ORDERED, 1000, 1, naive[KEYS_ORDERED]);
    rd_kafka_destroy(bn.producer);
    if (own_dir)
        rmdir(bn.dir);
    return 0;
}
