/*
 * `oncebox relay` processes against one schema while writers append:
 * two and three relays sharing the lane groups, one of them killed with
 * SIGKILL; PostgreSQL restarted under a relay; SIGTERM in the middle of
 * a backlog. What reaches Kafka is checked per aggregate: every event,
 * in order, duplicates only as many as one batch in flight.
 *
 * The PostgreSQL restart disturbs every session of the shared test
 * server, and added broker latency every client of the shared mock
 * broker; tests/run-integration.sh runs one test binary at a time.
 */
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>

#include "tests/integration/test_relay.h"

#define BATCH 50
#define BATCH_TEXT "50"
#define WRITERS 3
#define AGGS_EACH 4
#define AGGS (WRITERS * AGGS_EACH)

typedef struct writers {
    fixture_t *f;
    int reconnect;          /* ride out a PostgreSQL restart */
    int next[AGGS];         /* events committed per aggregate */
    volatile int stop;
    char error[512];        /* the first failure, "" if none */
    pthread_mutex_t lock;
    pthread_t t[WRITERS];
    int ids[WRITERS];
} writers_t;

static writers_t W;
static int writers_running;

/* Relays this test started, killed by the teardown if a check failed. */
static pid_t spawned[8];
static int spawned_count;

static void agg_name(int a, char *out, size_t size)
{
    snprintf(out, size, "agg-%d", a);
}

static void writer_fail(const char *what, const char *why)
{
    pthread_mutex_lock(&W.lock);
    if (W.error[0] == '\0')
        snprintf(W.error, sizeof(W.error), "%s: %s", what, why);
    pthread_mutex_unlock(&W.lock);
}

/* After a failure with the connection gone: reconnect, then learn from
 * the key whether the commit happened. -1: give up. */
static int writer_recover(PGconn *c, const char *key)
{
    const char *params[1] = {key};
    char sql[512];
    long long until = obt_now_ms() + WAIT_MS;
    PGresult *res;
    int found;

    while (PQstatus(c) != CONNECTION_OK && obt_now_ms() < until) {
        usleep(100000);
        PQreset(c);
    }
    if (PQstatus(c) != CONNECTION_OK)
        return -1;
    snprintf(sql, sizeof(sql), "SELECT 1 FROM %s.outbox WHERE "
             "idempotency_key = $1", W.f->ident);
    res = PQexecParams(c, sql, 1, NULL, params, NULL, NULL, 0);
    found = PQresultStatus(res) == PGRES_TUPLES_OK ? PQntuples(res) : -1;
    PQclear(res);
    return found;
}

/* BEGIN, one event, COMMIT. 1: committed, 0: not, -1: failed. */
static int writer_one(PGconn *c, int a)
{
    char id[32], payload[64], key[160];
    ob_event_t ev = OB_EVENT_INIT;
    ob_error_t err;
    PGresult *res;
    int ok;

    agg_name(a, id, sizeof(id));
    snprintf(payload, sizeof(payload), "{\"n\": %d}", W.next[a]);
    snprintf(key, sizeof(key), "%s/%s/%d", W.f->schema, id, W.next[a]);
    ev.aggregate_type = "Proc";
    ev.aggregate_id = id;
    ev.event_type = "Stepped";
    ev.payload = payload;
    ev.key = key;

    PQclear(PQexec(c, "BEGIN"));
    ok = ob_writer_append(W.f->writer, c, &ev, NULL, &err) == 0;
    res = PQexec(c, ok ? "COMMIT" : "ROLLBACK");
    ok = ok && PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (ok)
        return 1;
    if (!W.reconnect)
        return -1;
    return writer_recover(c, key);
}

static void *writer_main(void *arg)
{
    int id = *(int *)arg, i, rc;
    PGconn *c = PQconnectdb(getenv("ONCEBOX_TEST_DB"));

    if (PQstatus(c) != CONNECTION_OK)
        writer_fail("connect", PQerrorMessage(c));
    while (!W.stop && W.error[0] == '\0') {
        for (i = 0; i < AGGS_EACH && !W.stop; i++) {
            int a = id * AGGS_EACH + i;

            rc = writer_one(c, a);
            if (rc < 0)
                writer_fail("append", PQerrorMessage(c));
            if (rc == 1)
                W.next[a]++;
        }
    }
    PQfinish(c);
    return NULL;
}

static void writers_start(fixture_t *f, int reconnect)
{
    int i;

    memset(&W, 0, sizeof(W));
    W.f = f;
    W.reconnect = reconnect;
    pthread_mutex_init(&W.lock, NULL);
    writers_running = 1;
    for (i = 0; i < WRITERS; i++) {
        W.ids[i] = i;
        assert_int_equal(pthread_create(&W.t[i], NULL, writer_main,
                                        &W.ids[i]), 0);
    }
}

static long long writers_stop(void)
{
    long long total = 0;
    int i;

    W.stop = 1;
    for (i = 0; i < WRITERS; i++)
        pthread_join(W.t[i], NULL);
    pthread_mutex_destroy(&W.lock);
    writers_running = 0;
    if (W.error[0] != '\0')
        fail_msg("writer: %s", W.error);
    for (i = 0; i < AGGS; i++)
        total += W.next[i];
    return total;
}

static char *log_path(fixture_t *f, int i)
{
    char *p = NULL;

    assert_true(asprintf(&p, "%s/relay-%s-%d.log",
                         getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
                         f->prefix, i) > 0);
    return p;
}

/* Starts `oncebox relay` with its output in log; extra ends in NULL. */
static pid_t relay_spawn(fixture_t *f, const char *log, const char *extra)
{
    char *bin = NULL, *tpl = NULL;
    pid_t pid;
    int fd;

    assert_true(asprintf(&bin, "%s/oncebox", getenv("OB_BUILD")) > 0);
    assert_true(asprintf(&tpl, "relay.topic.template=%s", f->template_) > 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        execl(bin, bin, "relay", "--db", getenv("ONCEBOX_TEST_DB"),
              "--schema", f->schema, "--brokers", brokers(), "-v", "-X", tpl,
              "-X", "relay.batch.size=" BATCH_TEXT, "-X",
              "relay.retry.backoff.ms=50", "-X",
              "relay.retry.backoff.max.ms=500", "-X",
              "relay.lanes.interval.ms=200", "-X",
              "relay.poll.interval.ms=200", extra, (char *)NULL);
        _exit(127);
    }
    free(bin);
    free(tpl);
    if (spawned_count < (int)(sizeof(spawned) / sizeof(spawned[0])))
        spawned[spawned_count++] = pid;
    return pid;
}

/* Waits for pid's exit; returns its status as a shell would. */
static int relay_reap(pid_t pid)
{
    long long until = obt_now_ms() + WAIT_MS;
    int status;

    while (obt_now_ms() < until) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status)
                                     : 128 + WTERMSIG(status);
        usleep(20000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    fail_msg("relay %ld did not exit within %d ms", (long)pid, WAIT_MS);
    return -1;
}

/* Lane locks per holding session, e.g. "5,5,6" (sorted). free() it. */
static char *lane_shares(fixture_t *f)
{
    const char *params[1] = {f->schema};
    char *v = obt_value(
        f->conn,
        "SELECT coalesce(string_agg(n::text, ',' ORDER BY n), '')"
        " FROM (SELECT count(*) AS n FROM pg_locks"
        " WHERE locktype = 'advisory' AND granted AND objsubid = 2"
        " AND classid = hashtext('oncebox.relay:' || $1)::oid"
        " AND database = (SELECT oid FROM pg_database"
        " WHERE datname = current_database()) GROUP BY pid) s",
        1, params);

    return v;
}

static void wait_shares(fixture_t *f, const char *want)
{
    long long until = obt_now_ms() + WAIT_MS, start = obt_now_ms();
    char *got = lane_shares(f);

    while (strcmp(got, want) != 0 && obt_now_ms() < until) {
        free(got);
        usleep(20000);
        got = lane_shares(f);
    }
    if (strcmp(got, want) != 0)
        fail_msg("lane shares are \"%s\", expected \"%s\"", got, want);
    print_message("lane shares %s after %lld ms\n", want,
                  obt_now_ms() - start);
    free(got);
}

static long long published(fixture_t *f)
{
    return rows_where(f, "state = 'published'");
}

static void wait_published(fixture_t *f, long long want)
{
    long long until = obt_now_ms() + WAIT_MS;

    while (published(f) < want && obt_now_ms() < until)
        usleep(20000);
    if (published(f) < want)
        fail_msg("%lld rows published, expected %lld", published(f), want);
}

/* Every committed event of every aggregate reached Kafka in order;
 * returns the number of duplicates. */
static int check_kafka(fixture_t *f, long long total)
{
    char id[32];
    int a, dups = 0;
    msgs_t m = read_type(f, "proc");

    for (a = 0; a < AGGS; a++) {
        agg_name(a, id, sizeof(id));
        dups += assert_order(&m, id, 0, W.next[a], 1);
    }
    assert_int_equal((long long)m.n, total + dups);
    msgs_free(&m);
    print_message("%lld events, %d duplicates\n", total, dups);
    return dups;
}

static void relays_survive_a_kill(fixture_t *f, int n, const char *shares,
                                  const char *after)
{
    pid_t pids[3];
    long long total, mark;
    char *logs[3];
    int i;

    for (i = 0; i < n; i++) {
        logs[i] = log_path(f, i);
        pids[i] = relay_spawn(f, logs[i], NULL);
    }
    wait_shares(f, shares);
    writers_start(f, 0);
    wait_published(f, 300);

    kill(pids[0], SIGKILL);
    assert_int_equal(relay_reap(pids[0]), 128 + SIGKILL);
    wait_shares(f, after);
    mark = published(f);
    wait_published(f, mark + 300);

    total = writers_stop();
    wait_published(f, total);
    for (i = 1; i < n; i++) {
        kill(pids[i], SIGTERM);
        assert_int_equal(relay_reap(pids[i]), 0);
    }
    /* Only the killed relay's batch in flight may come twice. */
    assert_true(check_kafka(f, total) <= BATCH);
    for (i = 0; i < n; i++) {
        unlink(logs[i]);
        free(logs[i]);
    }
}

static void two_relays_share_the_lanes_and_survive_a_kill(void **state)
{
    relays_survive_a_kill(*state, 2, "8,8", "16");
}

static void three_relays_share_the_lanes_and_survive_a_kill(void **state)
{
    relays_survive_a_kill(*state, 3, "5,5,6", "8,8");
}

static int by_string(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int file_has(const char *path, const char *text)
{
    char line[4096];
    FILE *fp = fopen(path, "r");
    int found = 0;

    while (fp != NULL && !found && fgets(line, sizeof(line), fp) != NULL)
        found = strstr(line, text) != NULL;
    if (fp != NULL)
        fclose(fp);
    return found;
}

static void broker(const char *command)
{
    char *cmd = NULL;

    assert_true(asprintf(&cmd, "'%s/tests/support/broker' cmd '%s' %s "
                         ">/dev/null", getenv("OB_ROOT"),
                         getenv("ONCEBOX_TEST_BROKER_DIR"), command) > 0);
    if (system(cmd) != 0)
        fail_msg("broker cmd %s failed", command);
    free(cmd);
}

static void pg_restart(void)
{
    char *cmd = NULL;

    assert_true(asprintf(&cmd, "'%s/tests/support/pg-tmp' restart '%s' "
                         ">/dev/null 2>&1", getenv("OB_ROOT"),
                         getenv("ONCEBOX_TEST_PGDIR")) > 0);
    assert_int_equal(system(cmd), 0);
    free(cmd);
}

static void relay_recovers_from_a_postgresql_restart(void **state)
{
    fixture_t *f = *state;
    char *log = log_path(f, 0);
    long long total, mark;
    pid_t pid;

    pid = relay_spawn(f, log, NULL);
    wait_shares(f, "16");
    writers_start(f, 1);
    wait_published(f, 300);

    pg_restart();
    PQreset(f->conn);
    assert_int_equal(PQstatus(f->conn), CONNECTION_OK);
    mark = published(f);
    wait_published(f, mark + 300);

    total = writers_stop();
    wait_published(f, total);
    assert_int_equal(waitpid(pid, NULL, WNOHANG), 0);
    kill(pid, SIGTERM);
    assert_int_equal(relay_reap(pid), 0);
    assert_true(file_has(log, "connecting again"));
    assert_true(check_kafka(f, total) <= BATCH);
    unlink(log);
    free(log);
}

/* A backlog of rows, AGGS aggregates with n = 0..per-1 each. */
static void backlog(fixture_t *f, int per)
{
    ob_event_t ev[AGGS];
    char ids[AGGS][32], payloads[AGGS][32];
    ob_error_t err;
    int a, i;

    for (i = 0; i < per; i++) {
        for (a = 0; a < AGGS; a++) {
            ev[a] = (ob_event_t)OB_EVENT_INIT;
            agg_name(a, ids[a], sizeof(ids[a]));
            snprintf(payloads[a], sizeof(payloads[a]), "{\"n\": %d}", i);
            ev[a].aggregate_type = "Proc";
            ev[a].aggregate_id = ids[a];
            ev[a].event_type = "Stepped";
            ev[a].payload = payloads[a];
        }
        if (i % 100 == 0)
            obt_exec(f->conn, "BEGIN");
        if (ob_writer_append_batch(f->writer, f->conn, ev, AGGS, NULL, NULL,
                                   &err) != 0)
            fail_msg("append: %s", err.message);
        if (i % 100 == 99 || i == per - 1)
            obt_exec(f->conn, "COMMIT");
    }
}

/* After SIGTERM, what Kafka holds is exactly what the outbox marked. */
static void relay_exits_0_on_sigterm_with_nothing_in_flight(void **state)
{
    fixture_t *f = *state;
    char *log = log_path(f, 0), id[32], where[128];
    int per = 1500, a;
    msgs_t m;
    pid_t pid;

    memset(&W, 0, sizeof(W));
    backlog(f, per);
    pid = relay_spawn(f, log, NULL);
    wait_published(f, 1000);
    kill(pid, SIGTERM);
    assert_int_equal(relay_reap(pid), 0);
    assert_true(file_has(log, "stopped: published"));
    print_message("%lld of %d rows published before the stop\n",
                  published(f), per * AGGS);

    m = read_type(f, "proc");
    assert_int_equal((long long)m.n, published(f));
    for (a = 0; a < AGGS; a++) {
        agg_name(a, id, sizeof(id));
        snprintf(where, sizeof(where), "state = 'published' AND "
                 "aggregate_id = '%s'", id);
        assert_order(&m, id, 0, (int)rows_where(f, where), 0);
        W.next[a] = per;
    }
    msgs_free(&m);

    pid = relay_spawn(f, log, "--once");
    assert_int_equal(relay_reap(pid), 0);
    assert_int_equal(published(f), per * AGGS);
    assert_int_equal(check_kafka(f, per * AGGS), 0);
    unlink(log);
    free(log);
}

static int procs_teardown(void **state)
{
    int i;

    if (writers_running) {
        W.stop = 1;
        for (i = 0; i < WRITERS; i++)
            pthread_join(W.t[i], NULL);
        writers_running = 0;
    }
    for (i = 0; i < spawned_count; i++) {
        if (kill(spawned[i], SIGKILL) == 0)
            waitpid(spawned[i], NULL, 0);
    }
    spawned_count = 0;
    broker("reset");
    if (PQstatus(((fixture_t *)*state)->conn) != CONNECTION_OK)
        PQreset(((fixture_t *)*state)->conn);
    return teardown(state);
}

/* The keys in Kafka are exactly the outbox's: copies carry the same. */
static void assert_same_keys(fixture_t *f, long long rows)
{
    msgs_t m = read_type(f, "proc");
    char **keys = calloc(m.n, sizeof(*keys));
    size_t i, distinct = 0;

    for (i = 0; i < m.n; i++)
        keys[i] = strdup(header(&m.v[i], "idempotency-key"));
    qsort(keys, m.n, sizeof(*keys), by_string);
    for (i = 0; i < m.n; i++)
        distinct += i == 0 || strcmp(keys[i], keys[i - 1]) != 0;
    assert_int_equal((long long)distinct, rows);
    for (i = 0; i < m.n; i++)
        free(keys[i]);
    free(keys);
    msgs_free(&m);
}

/* Killed with SIGKILL mid-backlog, then started again: the rows it had
 * not marked go out again, with their keys, and nothing is lost. */
static void relay_killed_and_restarted_loses_nothing(void **state)
{
    fixture_t *f = *state;
    char *log = log_path(f, 0);
    int per = 1500, a;
    pid_t pid;

    memset(&W, 0, sizeof(W));
    backlog(f, per);
    /* Slow brokers keep each batch in flight most of the time. */
    broker("rtt -1 200");
    pid = relay_spawn(f, log, NULL);
    wait_published(f, 300);
    kill(pid, SIGKILL);
    assert_int_equal(relay_reap(pid), 128 + SIGKILL);
    broker("reset");
    print_message("%lld of %d rows marked before the kill\n", published(f),
                  per * AGGS);

    pid = relay_spawn(f, log, "--once");
    assert_int_equal(relay_reap(pid), 0);
    assert_int_equal(published(f), per * AGGS);
    for (a = 0; a < AGGS; a++)
        W.next[a] = per;
    assert_true(check_kafka(f, per * AGGS) <= BATCH);
    assert_same_keys(f, per * AGGS);
    unlink(log);
    free(log);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            two_relays_share_the_lanes_and_survive_a_kill, setup,
            procs_teardown),
        cmocka_unit_test_setup_teardown(
            three_relays_share_the_lanes_and_survive_a_kill, setup,
            procs_teardown),
        cmocka_unit_test_setup_teardown(
            relay_exits_0_on_sigterm_with_nothing_in_flight, setup,
            procs_teardown),
        cmocka_unit_test_setup_teardown(
            relay_killed_and_restarted_loses_nothing, setup,
            procs_teardown),
        cmocka_unit_test_setup_teardown(
            relay_recovers_from_a_postgresql_restart, setup,
            procs_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
