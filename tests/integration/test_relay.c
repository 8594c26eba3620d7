/*
 * The polling relay through its public API, against the test PostgreSQL
 * and the mock broker: what reaches Kafka (read back with a consumer of
 * our own), what the outbox records, order per aggregate, late commits,
 * retries, parking, and the configuration checks.
 *
 * Each test uses its own schema and topics, so a test never reads what
 * another one published.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <librdkafka/rdkafka.h>

#include "oncebox/oncebox.h"
#include "tests/support/testlib.h"

/* Generous: the machine is shared and slow at times. */
#define WAIT_MS 60000

typedef struct fixture {
    PGconn *conn;
    char *schema;
    char *ident;
    char prefix[64]; /* topics of this test: PREFIX-<aggregate type> */
    char template_[96];
    ob_writer_t *writer;
} fixture_t;

typedef struct msg {
    char *topic, *key, *value;
    int32_t partition;
    int64_t offset;
    rd_kafka_headers_t *headers;
} msg_t;

typedef struct msgs {
    msg_t *v;
    size_t n, cap;
} msgs_t;

static const char *brokers(void)
{
    const char *b = getenv("ONCEBOX_TEST_BROKERS");

    if (b == NULL || b[0] == '\0')
        fail_msg("ONCEBOX_TEST_BROKERS is not set: run the integration "
                 "tests with tests/run-integration.sh");
    return b;
}

static int setup(void **state)
{
    static unsigned n;
    fixture_t *f = calloc(1, sizeof(*f));
    ob_conf_t *conf;
    ob_error_t err;

    f->conn = obt_connect();
    f->schema = obt_unique_name("relay");
    f->ident = obt_ident(f->schema);
    snprintf(f->prefix, sizeof(f->prefix), "relay_%ld_%ld_%u", (long)getpid(),
             (long)time(NULL), ++n);
    snprintf(f->template_, sizeof(f->template_), "%s-{aggregate_type}",
             f->prefix);
    if (ob_schema_migrate(f->conn, f->schema, &err) != 0)
        fail_msg("migrate: %s", err.message);
    assert_int_equal(ob_conf_new(&conf, &err), 0);
    assert_int_equal(ob_conf_set(conf, "schema", f->schema, &err), 0);
    assert_int_equal(ob_writer_new(&f->writer, conf, &err), 0);
    ob_conf_destroy(conf);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;

    ob_writer_destroy(f->writer);
    obt_drop_schema(f->conn, f->schema);
    PQfinish(f->conn);
    free(f->ident);
    free(f->schema);
    free(f);
    return 0;
}

/* A configuration for this test's relay: schema, topics, brokers. */
static ob_conf_t *relay_conf(fixture_t *f)
{
    ob_conf_t *conf;
    ob_error_t err;

    assert_int_equal(ob_conf_new(&conf, &err), 0);
    assert_int_equal(ob_conf_set(conf, "schema", f->schema, &err), 0);
    assert_int_equal(ob_conf_set(conf, "relay.topic.template", f->template_,
                                 &err), 0);
    assert_int_equal(ob_conf_set(conf, "kafka.bootstrap.servers", brokers(),
                                 &err), 0);
    assert_int_equal(ob_conf_set(conf, "relay.retry.backoff.ms", "50", &err),
                     0);
    assert_int_equal(ob_conf_set(conf, "relay.retry.backoff.max.ms", "200",
                                 &err), 0);
    return conf;
}

static void set(ob_conf_t *conf, const char *name, const char *value)
{
    ob_error_t err;

    if (ob_conf_set(conf, name, value, &err) != 0)
        fail_msg("%s: %s", name, err.message);
}

static ob_relay_t *relay_new(ob_conf_t *conf)
{
    ob_relay_t *relay = NULL;
    ob_error_t err;

    if (ob_relay_new(&relay, getenv("ONCEBOX_TEST_DB"), conf, &err) != 0)
        fail_msg("ob_relay_new: %s: %s", ob_error_name(err.code),
                 err.message);
    return relay;
}

/* Runs one relay configured by conf until the backlog is published. */
static ob_relay_stats_t drain_with(ob_conf_t *conf)
{
    ob_relay_stats_t stats = {.size = sizeof(stats)};
    ob_relay_t *relay = relay_new(conf);
    ob_error_t err;

    if (ob_relay_drain(relay, &err) != 0)
        fail_msg("ob_relay_drain: %s: %s", ob_error_name(err.code),
                 err.message);
    ob_relay_stats(relay, &stats);
    ob_relay_destroy(relay);
    return stats;
}

static ob_relay_stats_t drain(fixture_t *f)
{
    ob_conf_t *conf = relay_conf(f);
    ob_relay_stats_t stats = drain_with(conf);

    ob_conf_destroy(conf);
    return stats;
}

static void append(fixture_t *f, const char *type, const char *id,
                   const char *payload)
{
    ob_event_t ev = OB_EVENT_INIT;
    ob_error_t err;

    ev.aggregate_type = type;
    ev.aggregate_id = id;
    ev.event_type = "Happened";
    ev.payload = payload;
    obt_exec(f->conn, "BEGIN");
    if (ob_writer_append(f->writer, f->conn, &ev, NULL, &err) != 0)
        fail_msg("append: %s", err.message);
    obt_exec(f->conn, "COMMIT");
}

/* Appends count events of one aggregate, payload {"n": i} from first. */
static void append_run(fixture_t *f, const char *type, const char *id,
                       int first, int count)
{
    char payload[64];
    int i;

    for (i = first; i < first + count; i++) {
        snprintf(payload, sizeof(payload), "{\"n\": %d}", i);
        append(f, type, id, payload);
    }
}

static long long rows_where(fixture_t *f, const char *where)
{
    char sql[512];

    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.outbox WHERE %s",
             f->ident, where);
    return obt_int(f->conn, sql, 0, NULL);
}

static void msgs_free(msgs_t *m)
{
    size_t i;

    for (i = 0; i < m->n; i++) {
        free(m->v[i].topic);
        free(m->v[i].key);
        free(m->v[i].value);
        rd_kafka_headers_destroy(m->v[i].headers);
    }
    free(m->v);
    memset(m, 0, sizeof(*m));
}

static char *dup_n(const void *p, size_t n)
{
    char *s = malloc(n + 1);

    assert_non_null(s);
    if (n > 0)
        memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

static void msgs_add(msgs_t *m, const rd_kafka_message_t *km)
{
    rd_kafka_headers_t *h = NULL;
    msg_t *x;

    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 64;
        m->v = realloc(m->v, m->cap * sizeof(*m->v));
        assert_non_null(m->v);
    }
    x = &m->v[m->n++];
    x->topic = strdup(rd_kafka_topic_name(km->rkt));
    x->key = dup_n(km->key, km->key_len);
    x->value = dup_n(km->payload, km->len);
    x->partition = km->partition;
    x->offset = km->offset;
    if (rd_kafka_message_headers(km, &h) == RD_KAFKA_RESP_ERR_NO_ERROR)
        x->headers = rd_kafka_headers_copy(h);
    else
        x->headers = rd_kafka_headers_new(0);
}

static rd_kafka_t *consumer_new(void)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char errstr[512];
    rd_kafka_t *rk;

    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers(), errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "group.id", "oncebox-test-relay", errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "enable.partition.eof", "true", errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "log_level", "3", errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK)
        fail_msg("consumer conf: %s", errstr);
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    if (rk == NULL)
        fail_msg("consumer: %s", errstr);
    return rk;
}

static int partition_count(rd_kafka_t *rk, const char *topic)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    long long until = obt_now_ms() + WAIT_MS;
    int n = 0;

    while (n == 0 && obt_now_ms() < until) {
        if (rd_kafka_metadata(rk, 0, rkt, &md, 5000) ==
            RD_KAFKA_RESP_ERR_NO_ERROR) {
            if (md->topic_cnt == 1 && md->topics[0].err == 0)
                n = md->topics[0].partition_cnt;
            rd_kafka_metadata_destroy(md);
        }
        if (n == 0)
            usleep(100000);
    }
    rd_kafka_topic_destroy(rkt);
    return n;
}

/*
 * Everything in topic from the beginning, in each partition's order:
 * reads until every partition reports its end. Call it once the relay
 * is done: what it delivered was acknowledged by every replica.
 */
static msgs_t read_topic(const char *topic)
{
    rd_kafka_t *rk = consumer_new();
    rd_kafka_topic_partition_list_t *parts;
    long long until = obt_now_ms() + WAIT_MS;
    int n = partition_count(rk, topic), eofs = 0, i;
    msgs_t m = {0};

    if (n == 0)
        fail_msg("topic %s has no partitions (never created?)", topic);
    parts = rd_kafka_topic_partition_list_new(n);
    for (i = 0; i < n; i++)
        rd_kafka_topic_partition_list_add(parts, topic, i)->offset =
            RD_KAFKA_OFFSET_BEGINNING;
    assert_int_equal(rd_kafka_assign(rk, parts), 0);
    rd_kafka_topic_partition_list_destroy(parts);

    while (eofs < n && obt_now_ms() < until) {
        rd_kafka_message_t *km = rd_kafka_consumer_poll(rk, 200);

        if (km == NULL)
            continue;
        if (km->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
            eofs++;
        else if (km->err == 0)
            msgs_add(&m, km);
        rd_kafka_message_destroy(km);
    }
    if (eofs < n)
        fail_msg("topic %s: only %d of %d partitions read to the end", topic,
                 eofs, n);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return m;
}

static char *topic_of(fixture_t *f, const char *lower_type)
{
    char *t = NULL;

    assert_true(asprintf(&t, "%s-%s", f->prefix, lower_type) > 0);
    return t;
}

static msgs_t read_type(fixture_t *f, const char *lower_type)
{
    char *t = topic_of(f, lower_type);
    msgs_t m = read_topic(t);

    free(t);
    return m;
}

static const char *header(const msg_t *m, const char *name)
{
    static char buf[8200];
    const void *v;
    size_t len;

    if (rd_kafka_header_get_last(m->headers, name, &v, &len) != 0)
        return NULL;
    snprintf(buf, sizeof(buf), "%.*s", (int)len, (const char *)v);
    return buf;
}

/* The payload's "n", which the tests use as a per-aggregate sequence. */
static int n_of(const msg_t *m)
{
    const char *p = strstr(m->value, "\"n\": ");

    assert_non_null(p);
    return atoi(p + 5);
}

/*
 * Per key, in each partition's order, the first copies of the n values
 * must be first, first + 1, ...: no loss, no reordering; duplicates
 * (later copies) are allowed only when allow_dups is set.
 */
static void assert_order(const msgs_t *m, const char *key, int first,
                         int count, int allow_dups)
{
    int next = first, dups = 0, n;
    size_t i;

    for (i = 0; i < m->n; i++) {
        if (strcmp(m->v[i].key, key) != 0)
            continue;
        n = n_of(&m->v[i]);
        if (n < next) {
            dups++;
            continue;
        }
        if (n != next)
            fail_msg("key %s: got n=%d where n=%d was due", key, n, next);
        next++;
    }
    if (next != first + count)
        fail_msg("key %s: got up to n=%d, expected %d", key, next - 1,
                 first + count - 1);
    if (!allow_dups)
        assert_int_equal(dups, 0);
}

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

static void *run_thread(void *arg)
{
    ob_error_t err;
    int *rc = malloc(sizeof(int));

    *rc = ob_relay_run(arg, &err);
    return rc;
}

static pthread_t run_start(ob_relay_t *relay)
{
    pthread_t t;

    assert_int_equal(pthread_create(&t, NULL, run_thread, relay), 0);
    return t;
}

static void run_stop(ob_relay_t *relay, pthread_t t)
{
    void *rc;

    ob_relay_stop(relay);
    assert_int_equal(pthread_join(t, &rc), 0);
    assert_int_equal(*(int *)rc, 0);
    free(rc);
}

static void wait_rows(fixture_t *f, const char *where, long long want)
{
    long long until = obt_now_ms() + WAIT_MS;

    while (rows_where(f, where) < want && obt_now_ms() < until)
        usleep(10000);
    assert_int_equal(rows_where(f, where), want);
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

static void relay_parks_a_row_too_large_for_the_producer(void **state)
{
    fixture_t *f = *state;
    ob_conf_t *conf = relay_conf(f);
    static const char head[] = "{\"n\": 0, \"x\": \"";
    size_t big_len = 200 * 1024;
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

    set(conf, "kafka.message.max.bytes", "100000");
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
    set(conf, "kafka.message.max.bytes", "1000000");
    st = drain_with(conf);
    ob_conf_destroy(conf);
    assert_int_equal(st.published, 3);
    m = read_type(f, "big");
    assert_int_equal(m.n, 5);
    assert_order(&m, "b-1", 0, 3, 0);
    assert_order(&m, "b-2", 0, 2, 0);
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

    until = obt_now_ms() + WAIT_MS;
    while (obt_now_ms() < until &&
           obt_int(f->conn, "SELECT count(*) FROM pg_stat_activity WHERE "
                   "application_name LIKE 'oncebox relay %' AND state = "
                   "'idle' AND query = 'ROLLBACK'", 0, NULL) == 0)
        usleep(20000);
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
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
