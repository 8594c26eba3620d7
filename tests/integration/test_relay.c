/*
 * The polling relay through its public API, against the test PostgreSQL
 * and the mock broker: what reaches Kafka (read back with a consumer of
 * our own), what the outbox records, order per aggregate, late commits,
 * retries, parking, and the configuration checks.
 *
 * Each test uses its own schema and topics, so a test never reads what
 * another one published.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "tests/integration/test_relay.h"

static void
relay_publishes_every_row_with_the_wire_contract(void **state)
{
    fixture_t *f = *state;
    static const char tp[] =
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    ob_header_t hdrs[2] = {{"traceparent", tp}, {"tenant", "ac\xc3\xa9me"}};
    ob_event_t ev = OB_EVENT_INIT;
    ob_append_result_t res;
    ob_relay_stats_t st;
    ob_error_t err;
    msgs_t m;
    char sql[512], *value;

    ev.aggregate_type = "Order";
    ev.aggregate_id = "o-1";
    ev.event_type = "OrderPlaced";
    ev.payload = "{\"total\":  42, \"items\": [1,2], \"a\": \"\\u00e9\"}";
    ev.headers = hdrs;
    ev.header_count = 2;
    obt_exec(f->conn, "BEGIN");
    assert_int_equal(ob_writer_append(f->writer, f->conn, &ev, &res, &err), 0);
    obt_exec(f->conn, "COMMIT");

    st = drain(f);
    assert_int_equal(st.published, 1);
    assert_int_equal(rows_where(f, "state = 'published' AND published_at "
                                   "IS NOT NULL"), 1);

    m = read_type(f, "order");
    assert_int_equal(m.n, 1);
    assert_string_equal(m.v[0].key, "o-1");
    snprintf(sql, sizeof(sql), "SELECT payload::text FROM %s.outbox",
             f->ident);
    value = obt_value(f->conn, sql, 0, NULL);
    assert_string_equal(m.v[0].value, value);
    free(value);
    assert_string_equal(header(&m.v[0], "idempotency-key"), res.key);
    assert_string_equal(header(&m.v[0], "event-id"), res.event_id);
    assert_string_equal(header(&m.v[0], "id"), res.event_id);
    assert_string_equal(header(&m.v[0], "event-type"), "OrderPlaced");
    assert_string_equal(header(&m.v[0], "aggregate-type"), "Order");
    assert_string_equal(header(&m.v[0], "aggregate-id"), "o-1");
    assert_string_equal(header(&m.v[0], "content-type"), "application/json");
    assert_string_equal(header(&m.v[0], "traceparent"), tp);
    assert_string_equal(header(&m.v[0], "tenant"), "ac\xc3\xa9me");
    assert_int_equal(rd_kafka_header_cnt(m.v[0].headers), 9);
    msgs_free(&m);
}

static void relay_routes_by_template_and_by_the_rows_topic(void **state)
{
    fixture_t *f = *state;
    ob_event_t ev = OB_EVENT_INIT;
    ob_error_t err;
    char own[128];
    msgs_t m;

    snprintf(own, sizeof(own), "%s-own.topic", f->prefix);
    append(f, "PaymentMethod", "p-1", "{\"n\": 1}");
    ev.aggregate_type = "PaymentMethod";
    ev.aggregate_id = "p-2";
    ev.event_type = "Other";
    ev.payload = "{\"n\": 2}";
    ev.topic = own;
    obt_exec(f->conn, "BEGIN");
    assert_int_equal(ob_writer_append(f->writer, f->conn, &ev, NULL, &err), 0);
    obt_exec(f->conn, "COMMIT");
    drain(f);

    m = read_type(f, "paymentmethod");
    assert_int_equal(m.n, 1);
    assert_string_equal(m.v[0].key, "p-1");
    msgs_free(&m);
    m = read_topic(own);
    assert_int_equal(m.n, 1);
    assert_string_equal(m.v[0].key, "p-2");
    msgs_free(&m);
}

static void relay_keeps_each_aggregates_order_across_batches(void **state)
{
    fixture_t *f = *state;
    ob_conf_t *conf = relay_conf(f);
    ob_relay_stats_t st;
    msgs_t m;
    int i;

    /* Interleaved aggregates, small batches: many batch boundaries. */
    for (i = 0; i < 40; i++) {
        append_run(f, "Cart", "c-1", i, 1);
        append_run(f, "Cart", "c-2", i, 1);
        append_run(f, "Cart", "c-3", i, 1);
    }
    set(conf, "relay.batch.size", "7");
    st = drain_with(conf);
    ob_conf_destroy(conf);
    assert_int_equal(st.published, 120);
    assert_true(st.batches >= 120 / 7);

    m = read_type(f, "cart");
    assert_int_equal(m.n, 120);
    assert_order(&m, "c-1", 0, 40, 0);
    assert_order(&m, "c-2", 0, 40, 0);
    assert_order(&m, "c-3", 0, 40, 0);
    msgs_free(&m);
}

static void relay_deletes_delivered_rows_when_asked(void **state)
{
    fixture_t *f = *state;
    ob_conf_t *conf = relay_conf(f);
    ob_relay_stats_t st;
    msgs_t m;

    append_run(f, "Del", "d-1", 0, 5);
    set(conf, "relay.published", "delete");
    st = drain_with(conf);
    ob_conf_destroy(conf);
    assert_int_equal(st.published, 5);
    assert_int_equal(rows_where(f, "true"), 0);
    m = read_type(f, "del");
    assert_order(&m, "d-1", 0, 5, 0);
    msgs_free(&m);
}

/* A row whose transaction commits after later rows were published is
 * still published: rows are chosen by state, not by position. */
static void relay_publishes_a_row_that_commits_late(void **state)
{
    fixture_t *f = *state;
    PGconn *late = obt_connect();
    ob_writer_t *w = f->writer;
    ob_event_t ev = OB_EVENT_INIT;
    ob_error_t err;
    msgs_t m;

    ev.aggregate_type = "Late";
    ev.aggregate_id = "l-early-seq";
    ev.event_type = "E";
    ev.payload = "{\"n\": 0}";
    obt_exec(late, "BEGIN");
    assert_int_equal(ob_writer_append(w, late, &ev, NULL, &err), 0);

    append_run(f, "Late", "l-2", 0, 3);
    assert_int_equal(drain(f).published, 3);

    obt_exec(late, "COMMIT");
    PQfinish(late);
    assert_int_equal(drain(f).published, 1);
    assert_int_equal(rows_where(f, "state = 'published'"), 4);

    m = read_type(f, "late");
    assert_int_equal(m.n, 4);
    assert_order(&m, "l-early-seq", 0, 1, 0);
    assert_order(&m, "l-2", 0, 3, 0);
    msgs_free(&m);
}

/* A row waiting for its retry holds its aggregate back, not others. */
static void relay_holds_an_aggregate_behind_a_row_in_retry(void **state)
{
    fixture_t *f = *state;
    ob_conf_t *conf = relay_conf(f);
    ob_relay_t *relay = relay_new(conf);
    pthread_t t;
    msgs_t m;

    append_run(f, "Wait", "w-1", 0, 3);
    append_run(f, "Wait", "w-2", 0, 3);
    obt_exec(f->conn, "UPDATE %s.outbox SET retry_count = 1, next_attempt_at"
             " = now() + interval '1 hour' WHERE aggregate_id = 'w-1'"
             " AND payload->>'n' = '0'", f->ident);

    /* Every due row is claimable in the first batch; w-1's later rows
     * must stay behind all the same. */
    t = run_start(relay);
    wait_rows(f, "aggregate_id = 'w-2' AND state = 'published'", 3);
    run_stop(relay, t);
    assert_int_equal(rows_where(f, "aggregate_id = 'w-1' AND state = "
                                   "'pending'"), 3);

    obt_exec(f->conn, "UPDATE %s.outbox SET next_attempt_at = now()"
             " WHERE aggregate_id = 'w-1'", f->ident);
    assert_int_equal(ob_relay_drain(relay, NULL), 0);
    ob_relay_destroy(relay);
    ob_conf_destroy(conf);

    m = read_type(f, "wait");
    assert_int_equal(m.n, 6);
    assert_order(&m, "w-1", 0, 3, 0);
    assert_order(&m, "w-2", 0, 3, 0);
    msgs_free(&m);
}

/*
 * A payload of about 1 MB (the writer's limit is 1 MiB) is larger than
 * the producer's default message.max.bytes (1000000 with framing): it
 * can never be sent, so it is parked at once.
 */
static void relay_parks_a_row_too_large_for_the_producer(void **state)
{
    fixture_t *f = *state;
    ob_conf_t *conf = relay_conf(f);
    static const char head[] = "{\"n\": 0, \"x\": \"";
    size_t big_len = 1000 * 1000;
    char *big = malloc(sizeof(head) + big_len + 2), sql[256], *error;
    ob_relay_stats_t st;
    msgs_t m;

    memcpy(big, head, sizeof(head) - 1);
    memset(big + sizeof(head) - 1, 'x', big_len);
    strcpy(big + sizeof(head) - 1 + big_len, "\"}");
    append(f, "Big", "b-1", big);
    free(big);
    append_run(f, "Big", "b-1", 1, 2);
    append_run(f, "Big", "b-2", 0, 2);

    st = drain_with(conf);
    assert_int_equal(st.parked, 1);
    assert_int_equal(st.published, 2);
    assert_int_equal(rows_where(f, "state = 'parked' AND retry_count = 1"),
                     1);
    snprintf(sql, sizeof(sql), "SELECT last_error FROM %s.outbox WHERE "
             "state = 'parked'", f->ident);
    error = obt_value(f->conn, sql, 0, NULL);
    assert_non_null(strstr(error, "MSG_SIZE_TOO_LARGE"));
    free(error);
    /* Blocking (the default): b-1's later rows wait behind it. */
    assert_int_equal(rows_where(f, "aggregate_id = 'b-1' AND state = "
                                   "'pending'"), 2);

    /* An operator replays it where the limit is higher: all in order. */
    obt_exec(f->conn, "UPDATE %s.outbox SET state = 'pending', retry_count"
             " = 0, next_attempt_at = now() WHERE state = 'parked'",
             f->ident);
    set(conf, "kafka.message.max.bytes", "2000000");
    st = drain_with(conf);
    ob_conf_destroy(conf);
    assert_int_equal(st.published, 3);
    m = read_type(f, "big");
    assert_int_equal(m.n, 5);
    assert_order(&m, "b-1", 0, 3, 0);
    assert_order(&m, "b-2", 0, 2, 0);
    msgs_free(&m);
}

static void relay_bounds_batches_by_bytes(void **state)
{
    fixture_t *f = *state;
    ob_conf_t *conf = relay_conf(f);
    ob_relay_stats_t st;
    msgs_t m;

    /* Each payload is stored in more than 10 bytes: one row a batch. */
    append_run(f, "Bytes", "y-1", 0, 4);
    append_run(f, "Bytes", "y-2", 0, 4);
    set(conf, "relay.batch.bytes", "10");
    st = drain_with(conf);
    ob_conf_destroy(conf);
    assert_int_equal(st.published, 8);
    assert_int_equal(st.batches, 8);
    m = read_type(f, "bytes");
    assert_order(&m, "y-1", 0, 4, 0);
    assert_order(&m, "y-2", 0, 4, 0);
    msgs_free(&m);
}

static void relay_lets_an_aggregate_pass_a_parked_row_if_asked(void **state)
{
    fixture_t *f = *state;
    ob_conf_t *conf = relay_conf(f);
    ob_relay_stats_t st;
    msgs_t m;

    /* A topic name Kafka refuses is a permanent failure: parked at once.
     * The aggregate is the id: the type routes only. */
    append(f, "Bad Type", "x-1", "{\"n\": 0}");
    append_run(f, "Fine", "x-1", 1, 2);
    set(conf, "relay.park.blocks.aggregate", "false");
    st = drain_with(conf);
    ob_conf_destroy(conf);
    assert_int_equal(st.parked, 1);
    assert_int_equal(st.published, 2);
    assert_int_equal(rows_where(f, "state = 'parked' AND last_error LIKE "
                                   "'%not a Kafka topic name%'"), 1);
    m = read_type(f, "fine");
    assert_order(&m, "x-1", 1, 2, 0);
    msgs_free(&m);
}

static void relay_refuses_a_lane_count_other_relays_use(void **state)
{
    fixture_t *f = *state;
    ob_conf_t *conf = relay_conf(f);
    ob_relay_t *relay;
    ob_error_t err;

    drain_with(conf);
    set(conf, "relay.lanes", "8");
    relay = relay_new(conf);
    assert_int_equal(ob_relay_drain(relay, &err), OB_ECONF);
    assert_non_null(strstr(err.message, "16"));
    ob_relay_destroy(relay);
    ob_conf_destroy(conf);
}

static void relay_refuses_a_schema_that_is_not_migrated(void **state)
{
    fixture_t *f = *state;
    ob_conf_t *conf = relay_conf(f);
    ob_relay_t *relay;
    ob_error_t err;

    set(conf, "schema", "oncebox_missing_schema");
    relay = relay_new(conf);
    assert_int_equal(ob_relay_run(relay, &err), OB_ESCHEMA);
    assert_non_null(strstr(err.message, "migrate"));
    ob_relay_destroy(relay);
    ob_conf_destroy(conf);
}

static void relay_checks_its_configuration_up_front(void **state)
{
    fixture_t *f = *state;
    ob_conf_t *conf = relay_conf(f);
    ob_relay_t *relay = NULL;
    ob_error_t err;

    set(conf, "relay.topic.template", "no spaces {aggregate_type}");
    assert_int_equal(ob_relay_new(&relay, NULL, conf, &err), OB_ECONF);
    assert_null(relay);
    set(conf, "relay.topic.template", NULL);
    set(conf, "kafka.acks", "1");
    assert_int_equal(ob_relay_new(&relay, NULL, conf, &err), OB_ECONF);
    assert_non_null(strstr(err.message, "kafka.acks"));
    set(conf, "kafka.acks", NULL);
    set(conf, "kafka.no.such.property", "1");
    assert_int_equal(ob_relay_new(&relay, NULL, conf, &err), OB_ECONF);
    set(conf, "kafka.no.such.property", NULL);
    set(conf, "kafka.bootstrap.servers", NULL);
    assert_int_equal(ob_relay_new(&relay, NULL, conf, &err), OB_ECONF);
    assert_int_equal(ob_relay_new(&relay, "host='unterminated", NULL, &err),
                     OB_ECONF);
    assert_null(strstr(err.message, "unterminated"));
    assert_int_equal(ob_relay_new(NULL, NULL, NULL, &err), OB_EINVAL);
    ob_conf_destroy(conf);
}

/*
 * With the poll and lane intervals at an hour, only a NOTIFY can wake
 * the relay once it idles after its first, empty claim.
 */
static void relay_wakes_on_notify(void **state)
{
    fixture_t *f = *state;
    ob_conf_t *conf = relay_conf(f);
    ob_relay_t *relay;
    long long until;
    pthread_t t;

    set(conf, "relay.poll.interval.ms", "3600000");
    set(conf, "relay.lanes.interval.ms", "3600000");
    relay = relay_new(conf);
    ob_conf_destroy(conf);
    t = run_start(relay);

    /* Idle: the last thing it asked was when a retry is next due. */
    until = obt_now_ms() + WAIT_MS;
    while (obt_now_ms() < until &&
           obt_int(f->conn, "SELECT count(*) FROM pg_stat_activity WHERE "
                   "application_name LIKE 'oncebox relay %' AND state = "
                   "'idle' AND query LIKE 'SELECT pg_catalog.ceil(%'", 0,
                   NULL) == 0)
        usleep(20000);
    assert_true(obt_now_ms() < until);
    append_run(f, "Wake", "k-1", 0, 1);
    wait_rows(f, "state = 'published'", 1);
    run_stop(relay, t);
    ob_relay_destroy(relay);
}

static void relay_stop_before_run_returns_at_once(void **state)
{
    fixture_t *f = *state;
    ob_conf_t *conf = relay_conf(f);
    ob_relay_t *relay = relay_new(conf);
    ob_error_t err;

    append_run(f, "Stop", "s-1", 0, 2);
    ob_relay_stop(relay);
    assert_int_equal(ob_relay_run(relay, &err), 0);
    assert_int_equal(rows_where(f, "state = 'pending'"), 2);
    /* The request is used up: the next drain publishes. */
    assert_int_equal(ob_relay_drain(relay, &err), 0);
    assert_int_equal(rows_where(f, "state = 'published'"), 2);
    ob_relay_destroy(relay);
    ob_conf_destroy(conf);
}

/* A listener that never answers: a connect to it hangs. */
static int silent_listener(int *portp)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 4), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *portp = ntohs(a.sin_port);
    return fd;
}

typedef struct hang {
    ob_relay_t *relay;
    int rc;
} hang_t;

static void *drain_thread(void *arg)
{
    hang_t *h = arg;
    ob_error_t err;

    h->rc = ob_relay_drain(h->relay, &err);
    return NULL;
}

/* Stop must not wait for a server that does not answer (60 s here). */
static void relay_stop_ends_a_connect_that_hangs(void **state)
{
    fixture_t *f = *state;
    ob_conf_t *conf = relay_conf(f);
    char conninfo[128];
    hang_t h = {NULL, -1};
    long long start;
    pthread_t t;
    int port, fd = silent_listener(&port);

    snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1 port=%d "
             "dbname=x user=x connect_timeout=60", port);
    assert_int_equal(ob_relay_new(&h.relay, conninfo, conf, NULL), 0);
    ob_conf_destroy(conf);
    assert_int_equal(pthread_create(&t, NULL, drain_thread, &h), 0);
    /* Most likely inside the connect by then; a stop that comes before
     * it must end the drain with 0 just the same. */
    usleep(300000);
    start = obt_now_ms();
    ob_relay_stop(h.relay);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(h.rc, 0);
    assert_true(obt_now_ms() - start < 30000);
    ob_relay_destroy(h.relay);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            relay_publishes_every_row_with_the_wire_contract, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            relay_routes_by_template_and_by_the_rows_topic, setup, teardown),
        cmocka_unit_test_setup_teardown(
            relay_keeps_each_aggregates_order_across_batches, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            relay_deletes_delivered_rows_when_asked, setup, teardown),
        cmocka_unit_test_setup_teardown(
            relay_publishes_a_row_that_commits_late, setup, teardown),
        cmocka_unit_test_setup_teardown(
            relay_holds_an_aggregate_behind_a_row_in_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(
            relay_parks_a_row_too_large_for_the_producer, setup, teardown),
        cmocka_unit_test_setup_teardown(
            relay_lets_an_aggregate_pass_a_parked_row_if_asked, setup,
            teardown),
        cmocka_unit_test_setup_teardown(relay_bounds_batches_by_bytes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            relay_refuses_a_lane_count_other_relays_use, setup, teardown),
        cmocka_unit_test_setup_teardown(
            relay_refuses_a_schema_that_is_not_migrated, setup, teardown),
        cmocka_unit_test_setup_teardown(
            relay_checks_its_configuration_up_front, setup, teardown),
        cmocka_unit_test_setup_teardown(relay_wakes_on_notify, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            relay_stop_before_run_returns_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(
            relay_stop_ends_a_connect_that_hangs, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
