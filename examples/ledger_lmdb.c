/*
 * ledger_lmdb: a consumer whose state lives in LMDB, next to its inbox.
 *
 * It reads OrderPlaced events ({"order_id", "customer_id",
 * "total_cents"}) and, in the LMDB write transaction the inbox gives the
 * handler, adds total_cents to the customer's balance in the database
 * "ledger.balances" and counts the event's idempotency key in
 * "ledger.applied". The count is there to be checked: an event applied
 * twice would show as a key counted 2.
 *
 *   ledger_lmdb --path DIR --brokers LIST [--group ledger]
 *               [--topic order-events] [--idle-exit-ms T]
 *               [--batch-size N] [-X key=value]... [--verbose]
 *   ledger_lmdb --path DIR --dump
 *
 * The environment is the directory DIR (made when missing). -X sets any
 * oncebox or librdkafka ("kafka.") configuration key, the environment's
 * "lmdb.*" ones included. It runs until SIGTERM or SIGINT (or T ms
 * without a message), then prints one JSON line of counters:
 *   {"applied": N, "duplicates": N, "dead_letters": N, ...}
 * --dump prints the ledger as one JSON line:
 *   {"balances": {"c-1": 1234, ...}, "applied": N, "double_applied": M}
 * where applied counts every application and double_applied the keys
 * applied more than once (0 when the inbox does its job).
 * Exit status: 0 after a clean stop, 1 on failure, 2 on bad usage.
 */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <lmdb.h>
#include <oncebox/oncebox.h>

#define BALANCES_DB "ledger.balances"
#define APPLIED_DB "ledger.applied"

static ob_consumer_t *running;

/* The ledger's databases, opened once before the consumer runs. */
struct ledger {
    MDB_dbi balances; /* customer id -> int64_t cents, host order */
    MDB_dbi applied;  /* idempotency key -> uint32_t applications */
};

static void on_signal(int sig)
{
    (void)sig;
    ob_consumer_stop(running); /* only sets a flag: async-signal-safe */
}

static void on_log(void *opaque, int level, const char *facility,
                   const char *message)
{
    (void)opaque;
    fprintf(stderr, "ledger_lmdb: <%d> [%s] %s\n", level, facility,
            message);
}

/* Fills the handler's err; the text ends up in the dead letters. */
static void reason(ob_error_t *err, int code, const char *what, int rc)
{
    memset(err, 0, sizeof(*err));
    err->code = code;
    snprintf(err->message, sizeof(err->message), "%s%s%s", what,
             rc != 0 ? ": " : "", rc != 0 ? mdb_strerror(rc) : "");
}

/* Adds delta to the int64 under key; a missing record counts as 0. */
static int add_int64(MDB_txn *txn, MDB_dbi dbi, const char *key,
                     size_t key_len, int64_t delta)
{
    MDB_val k = {key_len, (void *)key}, v;
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

static int count_key(MDB_txn *txn, MDB_dbi dbi, const char *key)
{
    MDB_val k = {strlen(key), (void *)key}, v;
    uint32_t n = 0;
    int rc = mdb_get(txn, dbi, &k, &v);

    if (rc == 0 && v.mv_size == sizeof(n))
        memcpy(&n, v.mv_data, sizeof(n));
    else if (rc != 0 && rc != MDB_NOTFOUND)
        return rc;
    n++;
    v.mv_size = sizeof(n);
    v.mv_data = &n;
    return mdb_put(txn, dbi, &k, &v, 0);
}

/*
 * The handler: both writes go into the inbox's transaction, so they
 * commit together with the claim of the event's key, or not at all. An
 * LMDB failure is returned as it is (MDB_MAP_FULL among them): the
 * consumer sees the transaction broken, grows the map and runs the
 * batch again. An event without the fields the ledger needs can never
 * succeed: it is rejected, and goes straight to the dead letters.
 */
static int apply_order(void *opaque, const ob_message_t *msg, ob_txn_t *txn,
                       ob_error_t *err)
{
    const struct ledger *l = opaque;
    json_t *ev = ob_message_json(msg);
    const char *customer = json_string_value(json_object_get(ev,
                                                             "customer_id"));
    json_t *cents = json_object_get(ev, "total_cents");
    MDB_txn *t = ob_txn_lmdb(txn);
    int rc;

    if (customer == NULL || customer[0] == '\0' ||
        strlen(customer) > 255 || !json_is_integer(cents)) {
        reason(err, OB_EINVAL, "not an order event: customer_id (a string "
               "of 1 to 255 bytes) and total_cents (integer) are required",
               0);
        return OB_HANDLER_REJECT;
    }
    rc = add_int64(t, l->balances, customer, strlen(customer),
                   (int64_t)json_integer_value(cents));
    if (rc == 0)
        rc = count_key(t, l->applied, ob_message_idempotency_key(msg));
    if (rc != 0)
        reason(err, OB_ELMDB, "ledger write", rc);
    return rc;
}

/* The ledger's databases, created when missing. */
static int open_ledger(MDB_env *env, struct ledger *l, unsigned flags)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(env, NULL, flags & MDB_RDONLY, &txn);

    if (rc == 0)
        rc = mdb_dbi_open(txn, BALANCES_DB, flags & MDB_CREATE,
                          &l->balances);
    if (rc == 0)
        rc = mdb_dbi_open(txn, APPLIED_DB, flags & MDB_CREATE, &l->applied);
    if (rc == 0)
        return mdb_txn_commit(txn);
    if (txn != NULL)
        mdb_txn_abort(txn);
    return rc;
}

struct options {
    const char *path;
    const char *brokers;
    const char *group;
    const char *topic;
    const char *idle_exit_ms;
    const char *batch_size;
    int dump;
    int verbose;
};

static void usage(void)
{
    fprintf(stderr, "usage: ledger_lmdb --path DIR --brokers LIST "
            "[--group ledger] [--topic order-events] [--idle-exit-ms T] "
            "[--batch-size N] [-X key=value]... [--verbose]\n"
            "       ledger_lmdb --path DIR --dump\n");
}

/* A -X key=value, applied at once so that a bad one is reported. */
static int set_pair(ob_conf_t *conf, char *pair)
{
    char *eq = strchr(pair, '=');
    ob_error_t err;

    if (eq == NULL) {
        fprintf(stderr, "ledger_lmdb: -X %s: expected key=value\n", pair);
        return -1;
    }
    *eq = '\0';
    if (ob_conf_set(conf, pair, eq + 1, &err) != 0) {
        fprintf(stderr, "ledger_lmdb: -X %s: %s\n", pair, err.message);
        return -1;
    }
    return 0;
}

static int parse_options(int argc, char **argv, struct options *o,
                         ob_conf_t *conf)
{
    static const struct option longs[] = {
        {"path", required_argument, NULL, 'p'},
        {"brokers", required_argument, NULL, 'b'},
        {"group", required_argument, NULL, 'g'},
        {"topic", required_argument, NULL, 't'},
        {"idle-exit-ms", required_argument, NULL, 'i'},
        {"batch-size", required_argument, NULL, 'n'},
        {"dump", no_argument, NULL, 'D'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;

    while ((ch = getopt_long(argc, argv, "X:vh", longs, NULL)) != -1) {
        switch (ch) {
        case 'p': o->path = optarg; break;
        case 'b': o->brokers = optarg; break;
        case 'g': o->group = optarg; break;
        case 't': o->topic = optarg; break;
        case 'i': o->idle_exit_ms = optarg; break;
        case 'n': o->batch_size = optarg; break;
        case 'D': o->dump = 1; break;
        case 'v': o->verbose = 1; break;
        case 'X':
            if (set_pair(conf, optarg) != 0)
                return -1;
            break;
        default: return -1;
        }
    }
    if (optind != argc || o->path == NULL ||
        (o->brokers == NULL && !o->dump))
        return -1;
    return 0;
}

static int configure(ob_conf_t *conf, const struct options *o)
{
    const char *pairs[][2] = {
        {"kafka.bootstrap.servers", o->brokers},
        {"kafka.group.id", o->group},
        {"consumer.topics", o->topic},
        {"consumer.idle.exit.ms", o->idle_exit_ms},
        {"consumer.batch.size", o->batch_size},
    };
    ob_error_t err;
    size_t i;

    for (i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        if (pairs[i][1] == NULL)
            continue;
        if (ob_conf_set(conf, pairs[i][0], pairs[i][1], &err) != 0) {
            fprintf(stderr, "ledger_lmdb: %s\n", err.message);
            return -1;
        }
    }
    ob_conf_set_log(conf, on_log, NULL,
                    o->verbose ? OB_LOG_INFO : OB_LOG_WARNING);
    return 0;
}

/* Each customer's balance, as members of a JSON object. */
static int dump_balances(MDB_txn *txn, MDB_dbi dbi, json_t *out)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, dbi, &cur);

    while (rc == 0 && (rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
        int64_t sum = 0;

        if (v.mv_size == sizeof(sum))
            memcpy(&sum, v.mv_data, sizeof(sum));
        json_object_setn_new(out, k.mv_data, k.mv_size, json_integer(sum));
    }
    if (rc == MDB_NOTFOUND)
        rc = 0;
    mdb_cursor_close(cur);
    return rc;
}

/* Applications in total, and keys applied more than once. */
static int dump_applied(MDB_txn *txn, MDB_dbi dbi, uint64_t *applied,
                        uint64_t *doubled)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, dbi, &cur);

    while (rc == 0 && (rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
        uint32_t n = 0;

        if (v.mv_size == sizeof(n))
            memcpy(&n, v.mv_data, sizeof(n));
        *applied += n;
        *doubled += n > 1;
    }
    if (rc == MDB_NOTFOUND)
        rc = 0;
    mdb_cursor_close(cur);
    return rc;
}

static int dump(MDB_env *env)
{
    struct ledger l;
    json_t *balances = json_object();
    uint64_t applied = 0, doubled = 0;
    MDB_txn *txn = NULL;
    char *text;
    int rc = open_ledger(env, &l, MDB_CREATE);

    if (rc == 0)
        rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    if (rc == 0)
        rc = dump_balances(txn, l.balances, balances);
    if (rc == 0)
        rc = dump_applied(txn, l.applied, &applied, &doubled);
    if (txn != NULL)
        mdb_txn_abort(txn);
    if (rc != 0) {
        fprintf(stderr, "ledger_lmdb: dump: %s\n", mdb_strerror(rc));
        json_decref(balances);
        return 1;
    }
    text = json_dumps(balances, JSON_SORT_KEYS);
    printf("{\"balances\": %s, \"applied\": %" PRIu64
           ", \"double_applied\": %" PRIu64 "}\n", text != NULL ? text : "{}",
           applied, doubled);
    free(text);
    json_decref(balances);
    return 0;
}

static void print_stats(const ob_consumer_t *c)
{
    ob_consumer_stats_t st = OB_CONSUMER_STATS_INIT;

    ob_consumer_stats(c, &st, NULL);
    printf("{\"applied\": %" PRIu64 ", \"duplicates\": %" PRIu64
           ", \"dead_letters\": %" PRIu64 ", \"key_reused\": %" PRIu64
           ", \"retries\": %" PRIu64 ", \"batches\": %" PRIu64 "}\n",
           st.applied, st.duplicates, st.dead_letters, st.key_reused,
           st.retries, st.batches);
    fflush(stdout);
}

static int consume(MDB_env *env, ob_conf_t *conf)
{
    struct sigaction sa;
    struct ledger l;
    ob_consumer_t *c = NULL;
    ob_error_t err;
    int rc = open_ledger(env, &l, MDB_CREATE);

    if (rc != 0) {
        fprintf(stderr, "ledger_lmdb: %s\n", mdb_strerror(rc));
        return 1;
    }
    rc = ob_consumer_new_lmdb(&c, conf, env, &err);
    if (rc == 0)
        rc = ob_consumer_set_handler(c, apply_order, &l, OB_HANDLER_JSON,
                                     &err);
    if (rc != 0) {
        fprintf(stderr, "ledger_lmdb: %s\n", err.message);
        ob_consumer_destroy(c);
        return rc == OB_ECONF ? 2 : 1;
    }

    running = c;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    rc = ob_consumer_run(c, &err);
    if (rc != 0)
        fprintf(stderr, "ledger_lmdb: %s: %s\n", ob_error_name(rc),
                err.message);
    print_stats(c);
    running = NULL;
    ob_consumer_destroy(c);
    return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    struct options o = {NULL, NULL, "ledger", "order-events", NULL, NULL,
                        0, 0};
    MDB_env *env = NULL;
    ob_conf_t *conf;
    ob_error_t err;
    int rc;

    /* A member that died without leaving holds its partitions until its
     * session times out (45 s by default): 10 s moves them sooner. -X
     * kafka.session.timeout.ms=... overrides it. */
    if (ob_conf_new(&conf, &err) != 0 ||
        ob_conf_set(conf, "kafka.session.timeout.ms", "10000", &err) != 0) {
        fprintf(stderr, "ledger_lmdb: %s\n", err.message);
        ob_conf_destroy(conf);
        return 1;
    }
    if (parse_options(argc, argv, &o, conf) != 0 || configure(conf, &o)) {
        usage();
        ob_conf_destroy(conf);
        return 2;
    }
    if (ob_lmdb_env_open(&env, o.path, conf, &err) != 0) {
        fprintf(stderr, "ledger_lmdb: %s\n", err.message);
        ob_conf_destroy(conf);
        return 1;
    }
    rc = o.dump ? dump(env) : consume(env, conf);
    ob_lmdb_env_close(env);
    ob_conf_destroy(conf);
    return rc;
}
