/*
 * What the relay's integration tests share: a fixture with its own
 * schema and topics, appending events, running a relay, and reading a
 * topic back with a consumer of our own. Included by test_relay*.c.
 */
#ifndef ONCEBOX_TEST_RELAY_H
#define ONCEBOX_TEST_RELAY_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <librdkafka/rdkafka.h>

#include "oncebox/oncebox.h"
#include "tests/support/testlib.h"

/* Not every test file uses every helper. */
#define RT_HELPER static __attribute__((unused))

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

RT_HELPER const char *brokers(void)
{
    const char *b = getenv("ONCEBOX_TEST_BROKERS");

    if (b == NULL || b[0] == '\0')
        fail_msg("ONCEBOX_TEST_BROKERS is not set: run the integration "
                 "tests with tests/run-integration.sh");
    return b;
}

RT_HELPER int setup(void **state)
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

RT_HELPER int teardown(void **state)
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
RT_HELPER ob_conf_t *relay_conf(fixture_t *f)
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

RT_HELPER void set(ob_conf_t *conf, const char *name, const char *value)
{
    ob_error_t err;

    if (ob_conf_set(conf, name, value, &err) != 0)
        fail_msg("%s: %s", name, err.message);
}

RT_HELPER ob_relay_t *relay_new(ob_conf_t *conf)
{
    ob_relay_t *relay = NULL;
    ob_error_t err;

    if (ob_relay_new(&relay, getenv("ONCEBOX_TEST_DB"), conf, &err) != 0)
        fail_msg("ob_relay_new: %s: %s", ob_error_name(err.code),
                 err.message);
    return relay;
}

/* Runs one relay configured by conf until the backlog is published. */
RT_HELPER ob_relay_stats_t drain_with(ob_conf_t *conf)
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

RT_HELPER ob_relay_stats_t drain(fixture_t *f)
{
    ob_conf_t *conf = relay_conf(f);
    ob_relay_stats_t stats = drain_with(conf);

    ob_conf_destroy(conf);
    return stats;
}

RT_HELPER void append(fixture_t *f, const char *type, const char *id,
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
RT_HELPER void append_run(fixture_t *f, const char *type, const char *id,
                       int first, int count)
{
    char payload[64];
    int i;

    for (i = first; i < first + count; i++) {
        snprintf(payload, sizeof(payload), "{\"n\": %d}", i);
        append(f, type, id, payload);
    }
}

RT_HELPER long long rows_where(fixture_t *f, const char *where)
{
    char sql[512];

    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.outbox WHERE %s",
             f->ident, where);
    return obt_int(f->conn, sql, 0, NULL);
}

RT_HELPER void msgs_free(msgs_t *m)
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

RT_HELPER char *dup_n(const void *p, size_t n)
{
    char *s = malloc(n + 1);

    assert_non_null(s);
    if (n > 0)
        memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

RT_HELPER void msgs_add(msgs_t *m, const rd_kafka_message_t *km)
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

RT_HELPER rd_kafka_t *consumer_new(void)
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

RT_HELPER int partition_count(rd_kafka_t *rk, const char *topic)
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
RT_HELPER msgs_t read_topic(const char *topic)
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

RT_HELPER char *topic_of(fixture_t *f, const char *lower_type)
{
    char *t = NULL;

    assert_true(asprintf(&t, "%s-%s", f->prefix, lower_type) > 0);
    return t;
}

RT_HELPER msgs_t read_type(fixture_t *f, const char *lower_type)
{
    char *t = topic_of(f, lower_type);
    msgs_t m = read_topic(t);

    free(t);
    return m;
}

RT_HELPER const char *header(const msg_t *m, const char *name)
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
RT_HELPER int n_of(const msg_t *m)
{
    const char *p = strstr(m->value, "\"n\": ");

    assert_non_null(p);
    return atoi(p + 5);
}

/*
 * Per key, in each partition's order, the first copies of the n values
 * must be first, first + 1, ...: no loss, no reordering. Later copies
 * are duplicates: allowed only with allow_dups. Returns their number.
 */
RT_HELPER int assert_order(const msgs_t *m, const char *key, int first,
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
    return dups;
}

RT_HELPER void *run_thread(void *arg)
{
    ob_error_t err;
    int *rc = malloc(sizeof(int));

    *rc = ob_relay_run(arg, &err);
    return rc;
}

RT_HELPER pthread_t run_start(ob_relay_t *relay)
{
    pthread_t t;

    assert_int_equal(pthread_create(&t, NULL, run_thread, relay), 0);
    return t;
}

RT_HELPER void run_stop(ob_relay_t *relay, pthread_t t)
{
    void *rc;

    ob_relay_stop(relay);
    assert_int_equal(pthread_join(t, &rc), 0);
    assert_int_equal(*(int *)rc, 0);
    free(rc);
}

RT_HELPER void wait_rows(fixture_t *f, const char *where, long long want)
{
    long long until = obt_now_ms() + WAIT_MS;

    while (rows_where(f, where) < want && obt_now_ms() < until)
        usleep(10000);
    assert_int_equal(rows_where(f, where), want);
}

#endif
