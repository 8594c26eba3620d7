/*
 * The sequence-gap torture: many writers append concurrently while one
 * relay runs throughout; some transactions stay open for seconds while
 * later ones commit (so rows with low seq commit long after rows with
 * high seq were published), some roll back. In the end the published
 * set must equal the committed set exactly: nothing skipped, nothing
 * rolled back published, nothing twice, each aggregate in order.
 *
 * Each aggregate has one writer, as in a service that serialises the
 * changes of one aggregate, so its commit order is its seq order.
 */
#include "tests/integration/test_relay.h"

#define WRITERS 8
#define AGGS_EACH 3
#define AGGS (WRITERS * AGGS_EACH)
#define RUN_MS 8000
#define KEYS_MAX 20000

typedef struct torture {
    fixture_t *f;
    int next[AGGS];         /* committed events per aggregate */
    char *rolled[KEYS_MAX]; /* keys of rolled back events */
    int rolled_count;
    int held, rollbacks, commits;
    volatile int stop;
    char error[512];
    pthread_mutex_t lock;
} torture_t;

static torture_t T;

typedef struct writer {
    int id;
    unsigned seed;
    pthread_t t;
} writer_t;

static void fail_later(const char *what, PGconn *c)
{
    pthread_mutex_lock(&T.lock);
    if (T.error[0] == '\0')
        snprintf(T.error, sizeof(T.error), "%.200s: %.300s", what,
                 c ? PQerrorMessage(c) : "");
    pthread_mutex_unlock(&T.lock);
}

static int exec_ok(PGconn *c, const char *sql)
{
    PGresult *res = PQexec(c, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;

    PQclear(res);
    if (!ok)
        fail_later(sql, c);
    return ok;
}

static void note_rolled_back(const char *key)
{
    pthread_mutex_lock(&T.lock);
    if (T.rolled_count < KEYS_MAX)
        T.rolled[T.rolled_count++] = strdup(key);
    T.rollbacks++;
    pthread_mutex_unlock(&T.lock);
}

/* One transaction of 1..3 events of one aggregate, then commit, hold
 * and commit, or roll back. */
static void one_txn(writer_t *w, PGconn *c, unsigned attempt)
{
    int a = w->id * AGGS_EACH + (int)(rand_r(&w->seed) % AGGS_EACH);
    int n = 1 + (int)(rand_r(&w->seed) % 3), i, fate;
    char id[16], payload[64], keys[3][96];
    ob_event_t ev = OB_EVENT_INIT;
    ob_error_t err;

    snprintf(id, sizeof(id), "t-%d", a);
    ev.aggregate_type = "Torture";
    ev.aggregate_id = id;
    ev.event_type = "E";
    ev.payload = payload;
    if (!exec_ok(c, "BEGIN"))
        return;
    for (i = 0; i < n; i++) {
        snprintf(payload, sizeof(payload), "{\"n\": %d}", T.next[a] + i);
        snprintf(keys[i], sizeof(keys[i]), "%s/%d/%u/%d", id, w->id, attempt,
                 i);
        ev.key = keys[i];
        if (ob_writer_append(T.f->writer, c, &ev, NULL, &err) != 0) {
            fail_later(err.message, NULL);
            return;
        }
    }

    fate = (int)(rand_r(&w->seed) % 10);
    if (fate == 0) {
        for (i = 0; i < n; i++)
            note_rolled_back(keys[i]);
        exec_ok(c, "ROLLBACK");
        return;
    }
    if (fate == 1) {
        /* Open for 1 to 3 s while the other writers commit later seqs. */
        usleep(1000000 + rand_r(&w->seed) % 2000000);
        __sync_fetch_and_add(&T.held, 1);
    }
    if (exec_ok(c, "COMMIT")) {
        T.next[a] += n;
        __sync_fetch_and_add(&T.commits, 1);
    }
}

static void *writer_main(void *arg)
{
    writer_t *w = arg;
    PGconn *c = PQconnectdb(getenv("ONCEBOX_TEST_DB"));
    unsigned attempt = 0;

    if (PQstatus(c) != CONNECTION_OK)
        fail_later("connect", c);
    while (!T.stop && T.error[0] == '\0') {
        one_txn(w, c, attempt++);
        usleep(rand_r(&w->seed) % 3000);
    }
    PQfinish(c);
    return NULL;
}

static int rolled_back(const char *key)
{
    int i;

    for (i = 0; i < T.rolled_count; i++) {
        if (strcmp(T.rolled[i], key) == 0)
            return 1;
    }
    return 0;
}

static void check_kafka(fixture_t *f, long long total)
{
    msgs_t m = read_type(f, "torture");
    char id[16];
    size_t i;
    int a;

    assert_int_equal((long long)m.n, total);
    for (a = 0; a < AGGS; a++) {
        snprintf(id, sizeof(id), "t-%d", a);
        assert_order(&m, id, 0, T.next[a], 0);
    }
    for (i = 0; i < m.n; i++) {
        if (rolled_back(header(&m.v[i], "idempotency-key")))
            fail_msg("rolled back event %s was published",
                     header(&m.v[i], "idempotency-key"));
    }
    msgs_free(&m);
}

static void published_set_equals_committed_set_under_torture(void **state)
{
    fixture_t *f = *state;
    writer_t w[WRITERS];
    ob_conf_t *conf = relay_conf(f);
    ob_relay_t *relay;
    long long total = 0, until;
    pthread_t rt;
    int i;

    memset(&T, 0, sizeof(T));
    T.f = f;
    pthread_mutex_init(&T.lock, NULL);
    set(conf, "relay.batch.size", "100");
    set(conf, "relay.poll.interval.ms", "100");
    relay = relay_new(conf);
    ob_conf_destroy(conf);
    rt = run_start(relay);

    for (i = 0; i < WRITERS; i++) {
        w[i].id = i;
        w[i].seed = (unsigned)(i * 7919 + time(NULL));
        assert_int_equal(pthread_create(&w[i].t, NULL, writer_main, &w[i]),
                         0);
    }
    until = obt_now_ms() + RUN_MS;
    while (obt_now_ms() < until && T.error[0] == '\0')
        usleep(50000);
    T.stop = 1;
    for (i = 0; i < WRITERS; i++)
        pthread_join(w[i].t, NULL);
    if (T.error[0] != '\0')
        fail_msg("writer: %s", T.error);

    for (i = 0; i < AGGS; i++)
        total += T.next[i];
    wait_rows(f, "state = 'published'", total);
    run_stop(relay, rt);
    ob_relay_destroy(relay);
    assert_int_equal(rows_where(f, "true"), total);
    print_message("%lld events in %d commits (%d held open), %d rolled "
                  "back\n", total, T.commits, T.held, T.rollbacks);
    assert_true(T.held > 0 && T.rollbacks > 0);
    check_kafka(f, total);

    for (i = 0; i < T.rolled_count; i++)
        free(T.rolled[i]);
    pthread_mutex_destroy(&T.lock);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            published_set_equals_committed_set_under_torture, setup,
            teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
