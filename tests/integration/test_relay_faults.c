/*
 * The relay under broker faults injected through the mock broker's
 * control channel: failing produce requests (retriable ones, and a
 * permanent one in the middle of a stream), every broker down for
 * longer than the batch timeout, added latency. Nothing may be marked
 * without a delivery, nothing lost, each aggregate kept in order.
 *
 * The faults go to the shared mock broker; tests/run-integration.sh runs
 * one test binary at a time, and each test here resets the broker after
 * itself.
 */
#include "tests/integration/test_relay.h"

#define AGGS 6
#define BATCH_TEXT "50"

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

static int faults_teardown(void **state)
{
    broker("reset");
    return teardown(state);
}

static void agg_name(int a, char *out, size_t size)
{
    snprintf(out, size, "f-%d", a);
}

/* per events for each of AGGS aggregates, n = 0..per-1, interleaved. */
static void backlog(fixture_t *f, int per)
{
    ob_event_t ev[AGGS];
    char ids[AGGS][16], payloads[AGGS][32];
    ob_error_t err;
    int a, i;

    obt_exec(f->conn, "BEGIN");
    for (i = 0; i < per; i++) {
        for (a = 0; a < AGGS; a++) {
            ev[a] = (ob_event_t)OB_EVENT_INIT;
            agg_name(a, ids[a], sizeof(ids[a]));
            snprintf(payloads[a], sizeof(payloads[a]), "{\"n\": %d}", i);
            ev[a].aggregate_type = "Fault";
            ev[a].aggregate_id = ids[a];
            ev[a].event_type = "E";
            ev[a].payload = payloads[a];
        }
        if (ob_writer_append_batch(f->writer, f->conn, ev, AGGS, NULL, NULL,
                                   &err) != 0)
            fail_msg("append: %s", err.message);
    }
    obt_exec(f->conn, "COMMIT");
}

/* Everything arrived, in order per aggregate; returns the duplicates. */
static int check_kafka(fixture_t *f, int per)
{
    msgs_t m = read_type(f, "fault");
    char id[16];
    int a, dups = 0;

    for (a = 0; a < AGGS; a++) {
        agg_name(a, id, sizeof(id));
        dups += assert_order(&m, id, 0, per, 1);
    }
    assert_int_equal((int)m.n, per * AGGS + dups);
    msgs_free(&m);
    return dups;
}

static ob_conf_t *faults_conf(fixture_t *f)
{
    ob_conf_t *conf = relay_conf(f);

    set(conf, "relay.batch.size", BATCH_TEXT);
    return conf;
}

/*
 * Retriable errors are retried inside the producer; a permanent one
 * stops the producer (gap-less), fails the rest of the batch and gets a
 * new producer, without any later row overtaking a failed one.
 */
static void relay_keeps_order_through_failing_produce_requests(void **state)
{
    fixture_t *f = *state;
    ob_conf_t *conf = faults_conf(f);
    ob_relay_stats_t st;
    int per = 100;

    /* Large batches over several partitions: a request fails while
     * others of the same batch are queued or in flight. */
    set(conf, "relay.batch.size", "300");
    backlog(f, per);
    broker("request-error Produce 20 NOT_LEADER_FOR_PARTITION");
    broker("request-error Produce 1 INVALID_RECORD");
    broker("request-error Produce 10 REQUEST_TIMED_OUT");
    broker("request-error Produce 1 INVALID_MSG");
    st = drain_with(conf);
    ob_conf_destroy(conf);

    assert_int_equal(st.published, per * AGGS);
    assert_true(st.retried > 0);
    assert_true(st.producer_resets > 0);
    assert_true(rows_where(f, "last_error LIKE 'Kafka INVALID_%'") > 0);
    assert_int_equal(rows_where(f, "state <> 'published'"), 0);
    assert_true(check_kafka(f, per) <= 300);
}

static void wait_rows_at_least(fixture_t *f, const char *where, long long n)
{
    long long until = obt_now_ms() + WAIT_MS;

    while (rows_where(f, where) < n && obt_now_ms() < until)
        usleep(20000);
    if (rows_where(f, where) < n)
        fail_msg("fewer than %lld rows with %s", n, where);
}

static void relay_marks_nothing_while_the_brokers_are_down(void **state)
{
    fixture_t *f = *state;
    ob_conf_t *conf = faults_conf(f);
    ob_relay_t *relay;
    int per = 20;
    pthread_t t;

    /* One attempt of a row's own would park it: an outage must not. */
    set(conf, "kafka.message.timeout.ms", "1500");
    set(conf, "relay.retry.max", "1");
    relay = relay_new(conf);
    ob_conf_destroy(conf);
    backlog(f, per);
    broker("broker down -1");
    t = run_start(relay);

    /* Two failed attempts of one row: retried through the outage. */
    wait_rows_at_least(f, "retry_count >= 2", 1);
    assert_int_equal(rows_where(f, "state = 'published'"), 0);
    assert_int_equal(rows_where(f, "state = 'parked'"), 0);
    assert_true(rows_where(f, "last_error LIKE '%PURGE%'") > 0);

    broker("broker up -1");
    wait_rows(f, "state = 'published'", per * AGGS);
    run_stop(relay, t);
    ob_relay_destroy(relay);
    assert_true(check_kafka(f, per) <= 50);
}

static void relay_keeps_order_with_slow_brokers(void **state)
{
    fixture_t *f = *state;
    ob_conf_t *conf = faults_conf(f);
    ob_relay_stats_t st;
    int per = 30;

    backlog(f, per);
    broker("rtt -1 300");
    st = drain_with(conf);
    ob_conf_destroy(conf);
    assert_int_equal(st.published, per * AGGS);
    assert_int_equal(check_kafka(f, per), 0);
}

/* A row's own failure counts; at relay.retry.max it is parked. */
static void relay_parks_a_row_after_its_own_failures(void **state)
{
    fixture_t *f = *state;
    ob_conf_t *conf = faults_conf(f);
    ob_relay_stats_t st;

    /* One row, so that every failing request is this row's; more
     * errors than it needs, so that it cannot get through by luck. */
    append_run(f, "Fault", "own-1", 0, 1);
    set(conf, "relay.retry.max", "3");
    broker("request-error Produce 10 INVALID_RECORD");
    st = drain_with(conf);
    assert_int_equal(rows_where(f, "state = 'parked' AND retry_count >= 3 "
                                   "AND last_error LIKE "
                                   "'%INVALID_RECORD%'"), 1);
    assert_int_equal(st.parked, 1);
    assert_int_equal(st.published, 0);

    /* The broker is fine again: the next row goes out. */
    broker("clear-errors Produce");
    append_run(f, "Fault", "own-2", 0, 1);
    assert_int_equal(drain_with(conf).published, 1);
    ob_conf_destroy(conf);
}

/*
 * A topic the brokers say does not exist (and do not create) is a
 * permanent failure: its rows are parked at once, and with blocking the
 * aggregate's later rows, on another topic, wait behind them.
 */
static void relay_parks_rows_of_a_missing_topic_at_once(void **state)
{
    fixture_t *f = *state;
    ob_conf_t *conf = faults_conf(f);
    ob_event_t ev = OB_EVENT_INIT;
    char topic[128], cmd[200];
    ob_relay_stats_t st;
    ob_error_t err;

    snprintf(topic, sizeof(topic), "%s-missing", f->prefix);
    snprintf(cmd, sizeof(cmd), "topic-error %s UNKNOWN_TOPIC_OR_PART", topic);
    broker(cmd);
    ev.aggregate_type = "Fault";
    ev.aggregate_id = "m-1";
    ev.event_type = "E";
    ev.payload = "{\"n\": 0}";
    ev.topic = topic;
    obt_exec(f->conn, "BEGIN");
    assert_int_equal(ob_writer_append(f->writer, f->conn, &ev, NULL, &err), 0);
    obt_exec(f->conn, "COMMIT");
    append_run(f, "Fault", "m-1", 1, 2);
    append_run(f, "Fault", "m-2", 0, 2);

    set(conf, "kafka.topic.metadata.propagation.max.ms", "500");
    st = drain_with(conf);
    ob_conf_destroy(conf);
    snprintf(cmd, sizeof(cmd), "topic-error %s NO_ERROR", topic);
    broker(cmd);
    assert_int_equal(st.parked, 1);
    assert_int_equal(st.published, 2);
    assert_int_equal(rows_where(f, "state = 'parked' AND retry_count = 1 "
                                   "AND last_error LIKE '%UNKNOWN_TOPIC%'"),
                     1);
    assert_int_equal(rows_where(f, "aggregate_id = 'm-1' AND state = "
                                   "'pending'"), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            relay_keeps_order_through_failing_produce_requests, setup,
            faults_teardown),
        cmocka_unit_test_setup_teardown(
            relay_marks_nothing_while_the_brokers_are_down, setup,
            faults_teardown),
        cmocka_unit_test_setup_teardown(relay_keeps_order_with_slow_brokers,
                                        setup, faults_teardown),
        cmocka_unit_test_setup_teardown(
            relay_parks_a_row_after_its_own_failures, setup,
            faults_teardown),
        cmocka_unit_test_setup_teardown(
            relay_parks_rows_of_a_missing_topic_at_once, setup,
            faults_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
