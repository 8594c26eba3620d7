/*
 * The consumer with its inbox in LMDB, against the mock broker: a
 * failing handler undoes only its own message's writes (nested
 * transactions) and goes to the dead letters recorded in the
 * environment; a full map inside a nested transaction of the careful
 * pass is grown without counting a retry; offsets are read back from
 * the environment on the next run; the transaction accessors tell the
 * two stores apart.
 *
 * Every test has its own environment, topic and consumer group, produces
 * with a plain librdkafka producer following the wire contract, and runs
 * the consumer on the test's thread until it has been idle a moment.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <librdkafka/rdkafka.h>
#include <lmdb.h>

#include "oncebox/oncebox.h"
#include "tests/support/testlib.h"

#define WAIT_MS 60000

struct fixture {
    char dir[64];
    MDB_env *env;
    MDB_dbi applied; /* the test application's own database */
    char topic[96];
    char group[96];
    rd_kafka_t *producer;
};

/* What the test handler does, and what it saw. */
struct app {
    struct fixture *f;
    const char *fail_key;  /* fails every run, after writing */
    const char *fail_once; /* fails its first run only */
    size_t value_size;     /* bytes written per message */
    int calls;
    int fail_calls;        /* runs for fail_key */
    int saw_pg;            /* ob_txn_pg() gave non-NULL */
};

static const char *brokers(void)
{
    const char *b = getenv("ONCEBOX_TEST_BROKERS");

    if (b == NULL || b[0] == '\0')
        fail_msg("ONCEBOX_TEST_BROKERS is not set: run the integration "
                 "tests with tests/run-integration.sh");
    return b;
}

static void env_open(struct fixture *f, const char *map_size)
{
    ob_conf_t *conf;
    ob_error_t err;
    MDB_txn *txn;

    assert_int_equal(ob_conf_new(&conf, &err), 0);
    if (map_size != NULL)
        assert_int_equal(ob_conf_set(conf, "lmdb.map.size.bytes", map_size,
                                     &err), 0);
    if (ob_lmdb_env_open(&f->env, f->dir, conf, &err) != 0)
        fail_msg("env: %s", err.message);
    ob_conf_destroy(conf);
    assert_int_equal(mdb_txn_begin(f->env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "test.applied", MDB_CREATE,
                                  &f->applied), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    char errstr[256], *base = obt_unique_name("t");

    snprintf(f->dir, sizeof(f->dir), "/tmp/ob-lmdb-inbox.XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        fail_msg("mkdtemp failed");
    snprintf(f->topic, sizeof(f->topic), "lmdb-inbox-%s", base);
    snprintf(f->group, sizeof(f->group), "group-%s", base);
    free(base);
    rd_kafka_conf_set(kc, "bootstrap.servers", brokers(), NULL, 0);
    rd_kafka_conf_set(kc, "acks", "all", NULL, 0);
    f->producer = rd_kafka_new(RD_KAFKA_PRODUCER, kc, errstr,
                               sizeof(errstr));
    if (f->producer == NULL)
        fail_msg("producer: %s", errstr);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[128];

    rd_kafka_flush(f->producer, 10000);
    rd_kafka_destroy(f->producer);
    ob_lmdb_env_close(f->env);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "note: could not remove %s\n", f->dir);
    free(f);
    return 0;
}

/* Events k-<from> .. k-<to - 1>, value {"n": i}, one partition. */
static void produce_range(struct fixture *f, int from, int to)
{
    char key[32], value[64];
    int i;

    for (i = from; i < to; i++) {
        rd_kafka_headers_t *h = rd_kafka_headers_new(2);
        rd_kafka_resp_err_t e;

        snprintf(key, sizeof(key), "k-%d", i);
        snprintf(value, sizeof(value), "{\"n\": %d}", i);
        rd_kafka_header_add(h, "idempotency-key", -1, key, -1);
        rd_kafka_header_add(h, "content-type", -1, "application/json", -1);
        e = rd_kafka_producev(f->producer, RD_KAFKA_V_TOPIC(f->topic),
                              RD_KAFKA_V_KEY("agg", 3),
                              RD_KAFKA_V_VALUE(value, strlen(value)),
                              RD_KAFKA_V_HEADERS(h),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                              RD_KAFKA_V_END);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
            fail_msg("produce: %s", rd_kafka_err2str(e));
    }
    if (rd_kafka_flush(f->producer, WAIT_MS) != RD_KAFKA_RESP_ERR_NO_ERROR)
        fail_msg("producer flush did not finish");
}

/*
 * The test handler: writes the key (with value_size bytes) into the
 * application's database through the inbox's transaction, then fails
 * as the test asks. An LMDB error is returned as it is.
 */
static int handler(void *opaque, const ob_message_t *msg, ob_txn_t *txn,
                   ob_error_t *err)
{
    struct app *a = opaque;
    const char *key = ob_message_idempotency_key(msg);
    MDB_txn *t = ob_txn_lmdb(txn);
    static char zeros[65536];
    MDB_val k = {strlen(key), (void *)key}, v = {1, zeros};
    int rc;

    a->calls++;
    a->saw_pg |= ob_txn_pg(txn) != NULL;
    if (a->value_size > 0)
        v.mv_size = a->value_size;
    rc = mdb_put(t, a->f->applied, &k, &v, 0);
    if (rc != 0)
        return rc;
    if (a->fail_key != NULL && strcmp(key, a->fail_key) == 0)
        a->fail_calls++;
    if ((a->fail_key != NULL && strcmp(key, a->fail_key) == 0) ||
        (a->fail_once != NULL && strcmp(key, a->fail_once) == 0 &&
         ob_message_attempt(msg) == 1)) {
        err->code = OB_EINVAL;
        snprintf(err->message, sizeof(err->message), "test refuses %s", key);
        return OB_EINVAL;
    }
    return 0;
}

static void test_log(void *opaque, int level, const char *facility,
                     const char *message)
{
    (void)opaque;
    if (level <= OB_LOG_NOTICE || getenv("OBT_DEBUG") != NULL)
        fprintf(stderr, "    log <%d> [%s] %s\n", level, facility, message);
}

static ob_conf_t *conf_new(struct fixture *f)
{
    static const char *const pairs[][2] = {
        {"consumer.idle.exit.ms", "1500"},
        {"consumer.retry.backoff.ms", "10"},
        {"kafka.session.timeout.ms", "3000"},
        {"kafka.heartbeat.interval.ms", "500"},
    };
    ob_conf_t *conf;
    ob_error_t err;
    size_t i;

    assert_int_equal(ob_conf_new(&conf, &err), 0);
    assert_int_equal(ob_conf_set(conf, "kafka.bootstrap.servers", brokers(),
                                 &err), 0);
    assert_int_equal(ob_conf_set(conf, "kafka.group.id", f->group, &err), 0);
    assert_int_equal(ob_conf_set(conf, "consumer.topics", f->topic, &err), 0);
    for (i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++)
        assert_int_equal(ob_conf_set(conf, pairs[i][0], pairs[i][1], &err),
                         0);
    ob_conf_set_log(conf, test_log, NULL, OB_LOG_DEBUG);
    return conf;
}

static ob_consumer_t *consumer_new(struct fixture *f)
{
    ob_conf_t *conf = conf_new(f);
    ob_consumer_t *c = NULL;
    ob_error_t err;

    if (ob_consumer_new_lmdb(&c, conf, f->env, &err) != 0)
        fail_msg("consumer: %s", err.message);
    ob_conf_destroy(conf);
    return c;
}

static ob_consumer_stats_t run(ob_consumer_t *c, struct app *a)
{
    ob_consumer_stats_t st = OB_CONSUMER_STATS_INIT;
    ob_error_t err;
    int rc;

    assert_int_equal(ob_consumer_set_handler(c, handler, a, 0, &err), 0);
    rc = ob_consumer_run(c, &err);
    if (rc != 0)
        fail_msg("run: %s (%s)", ob_error_name(rc), err.message);
    assert_int_equal(ob_consumer_stats(c, &st, &err), 0);
    ob_consumer_destroy(c);
    return st;
}

/* Entries of the named database name, in a read transaction. */
static size_t entries(struct fixture *f, const char *name)
{
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_stat st;

    assert_int_equal(mdb_txn_begin(f->env, NULL, MDB_RDONLY, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, name, 0, &dbi), 0);
    assert_int_equal(mdb_stat(txn, dbi, &st), 0);
    mdb_txn_abort(txn);
    return st.ms_entries;
}

static int has_key(struct fixture *f, const char *key)
{
    MDB_val k = {strlen(key), (void *)key}, v;
    MDB_txn *txn;
    int rc;

    assert_int_equal(mdb_txn_begin(f->env, NULL, MDB_RDONLY, &txn), 0);
    rc = mdb_get(txn, f->applied, &k, &v);
    mdb_txn_abort(txn);
    return rc == 0;
}

/* The one dead letter's record, as text (caller frees). */
static char *dead_record(struct fixture *f)
{
    MDB_cursor *cur;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_val k, v;
    char *text;

    assert_int_equal(mdb_txn_begin(f->env, NULL, MDB_RDONLY, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "oncebox.inbox.dead", 0, &dbi), 0);
    assert_int_equal(mdb_cursor_open(txn, dbi, &cur), 0);
    assert_int_equal(mdb_cursor_get(cur, &k, &v, MDB_FIRST), 0);
    text = strndup(v.mv_data, v.mv_size);
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return text;
}

static void lmdb_inbox_undoes_only_the_failing_message(void **s)
{
    struct fixture *f = *s;
    struct app a = {.f = f, .fail_key = "k-3"};
    ob_consumer_stats_t st;
    char *dead;

    env_open(f, NULL);
    produce_range(f, 0, 10);
    st = run(consumer_new(f), &a);

    assert_int_equal(st.applied, 9);
    assert_int_equal(st.dead_letters, 1);
    assert_int_equal(a.fail_calls, 3); /* the default attempts */
    assert_int_equal(a.saw_pg, 0);
    assert_int_equal(entries(f, "test.applied"), 9);
    assert_false(has_key(f, "k-3"));
    assert_true(has_key(f, "k-2"));
    assert_true(has_key(f, "k-4"));
    assert_int_equal(entries(f, "oncebox.inbox.dead"), 1);
    dead = dead_record(f);
    assert_non_null(strstr(dead, "\"reason\":\"handler-failed: test "
                                 "refuses k-3\""));
    assert_non_null(strstr(dead, "\"attempts\":3"));
    assert_non_null(strstr(dead, "\"idempotency_key\":\"k-3\""));
    free(dead);
    assert_int_equal(entries(f, "oncebox.inbox.offsets"), 1);
}

static void lmdb_inbox_starts_at_the_stored_offsets(void **s)
{
    struct fixture *f = *s;
    struct app a = {.f = f}, again = {.f = f};
    ob_consumer_stats_t st;

    env_open(f, NULL);
    produce_range(f, 0, 5);
    st = run(consumer_new(f), &a);
    assert_int_equal(st.applied, 5);

    produce_range(f, 5, 8);
    st = run(consumer_new(f), &again);
    assert_int_equal(again.calls, 3); /* only the new ones */
    assert_int_equal(st.applied, 3);
    assert_int_equal(st.duplicates, 0);
    assert_int_equal(entries(f, "test.applied"), 8);
}

/*
 * 40 messages of 8 KiB each do not fit into a 64 KiB map. The first
 * failure of k-0 sends the batch into the careful pass, where the full
 * map strikes inside nested transactions: the map grows, and the one
 * real failure is the only retry counted.
 */
static void lmdb_inbox_grows_the_map_inside_nested_transactions(void **s)
{
    struct fixture *f = *s;
    struct app a = {.f = f, .fail_once = "k-0", .value_size = 8192};
    ob_consumer_stats_t st;

    env_open(f, "65536");
    produce_range(f, 0, 40);
    st = run(consumer_new(f), &a);

    assert_int_equal(st.applied, 40);
    assert_int_equal(st.dead_letters, 0);
    assert_true(st.retries <= 1);
    assert_int_equal(entries(f, "test.applied"), 40);
}

static void lmdb_inbox_refuses_a_missing_environment(void **s)
{
    ob_consumer_t *c = NULL;
    ob_conf_t *conf;
    ob_error_t err;

    (void)s;
    assert_int_equal(ob_conf_new(&conf, &err), 0);
    assert_int_equal(ob_consumer_new_lmdb(&c, conf, NULL, &err), OB_EINVAL);
    assert_null(c);
    assert_null(ob_txn_lmdb(NULL));
    ob_conf_destroy(conf);
}

/* LMDB drops one handle's locks when another on the same files
 * closes: a second handle in one process is refused. */
static void lmdb_inbox_refuses_a_second_handle_on_the_environment(void **s)
{
    struct fixture *f = *s;
    ob_conf_t *conf = conf_new(f);
    ob_consumer_t *c = NULL;
    MDB_env *twin;
    ob_error_t err;

    env_open(f, NULL);
    assert_int_equal(mdb_env_create(&twin), 0);
    assert_int_equal(mdb_env_set_maxdbs(twin, 16), 0);
    assert_int_equal(mdb_env_open(twin, f->dir, 0, 0644), 0);
    assert_int_equal(ob_consumer_new_lmdb(&c, conf, twin, &err), OB_ESTATE);
    assert_null(c);
    assert_non_null(strstr(err.message, "open"));
    ob_conf_destroy(conf);
    /* This drops the fixture handle's file locks too; nothing else uses
     * the environment before teardown closes it. */
    mdb_env_close(twin);
}

/* A child after fork() shares the parent's lock file descriptors:
 * using the environment there is refused before anything is touched. */
static void lmdb_inbox_refuses_to_run_in_a_forked_child(void **s)
{
    struct fixture *f = *s;
    struct app a = {.f = f};
    ob_consumer_t *c;
    ob_error_t err;
    int status = -1;
    pid_t pid;

    env_open(f, NULL);
    c = consumer_new(f);
    assert_int_equal(ob_consumer_set_handler(c, handler, &a, 0, &err), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int refused = ob_consumer_run(c, &err) == OB_ESTATE &&
                      strstr(err.message, "fork") != NULL;

        ob_consumer_destroy(c); /* for valgrind in the child */
        _exit(refused ? 0 : 1);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(a.calls, 0);
    ob_consumer_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            lmdb_inbox_undoes_only_the_failing_message, setup, teardown),
        cmocka_unit_test_setup_teardown(
            lmdb_inbox_starts_at_the_stored_offsets, setup, teardown),
        cmocka_unit_test_setup_teardown(
            lmdb_inbox_grows_the_map_inside_nested_transactions, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            lmdb_inbox_refuses_a_second_handle_on_the_environment, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            lmdb_inbox_refuses_to_run_in_a_forked_child, setup, teardown),
        cmocka_unit_test(lmdb_inbox_refuses_a_missing_environment),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
