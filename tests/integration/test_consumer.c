/*
 * The consumer against a real PostgreSQL and the mock broker: each
 * event applied once however often it arrives, offsets read from the
 * database, failing handlers and malformed input sent to the dead
 * letters without stalling the partition, reused keys flagged, and a
 * PostgreSQL restart in the middle of a batch survived.
 *
 * Every test has its own schema, topic and consumer group, produces its
 * messages with a plain librdkafka producer following the wire contract,
 * and runs the consumer on the test's thread until it has been idle for
 * a moment (or a handler stops it).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <librdkafka/rdkafka.h>

#include "oncebox/oncebox.h"
#include "tests/support/testlib.h"

#define WAIT_MS 60000

struct fixture {
    PGconn *conn;
    char *schema;
    char *ident;
    char topic[96];
    char group[96];
    rd_kafka_t *producer;
};

/* What the test handler does, and what it saw. */
struct app {
    struct fixture *f;
    ob_consumer_t *c;
    const char *fail_key;    /* fails every time, after writing */
    const char *commit_key;  /* commits the transaction: not allowed */
    int restart_at;          /* restarts PostgreSQL at this call, once */
    const char *batch_fail_key; /* the batch handler fails on it */
    int batch_calls;
    int batch_messages;
    int stop_at;             /* ob_consumer_stop() at this call */
    int slow_at;             /* this call takes 2.5 s */
    int calls;
    int fail_calls;
};

static const char *brokers(void)
{
    const char *b = getenv("ONCEBOX_TEST_BROKERS");

    if (b == NULL || b[0] == '\0')
        fail_msg("ONCEBOX_TEST_BROKERS is not set: run the integration "
                 "tests with tests/run-integration.sh");
    return b;
}

static rd_kafka_t *producer_new(void)
{
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    char errstr[256];
    rd_kafka_t *rk;

    rd_kafka_conf_set(kc, "bootstrap.servers", brokers(), NULL, 0);
    rd_kafka_conf_set(kc, "acks", "all", NULL, 0);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, errstr, sizeof(errstr));
    if (rk == NULL)
        fail_msg("producer: %s", errstr);
    return rk;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    char *base;
    ob_error_t err;

    f->conn = obt_connect();
    f->schema = obt_unique_name("consumer");
    f->ident = obt_ident(f->schema);
    if (ob_schema_migrate(f->conn, f->schema, &err) != 0)
        fail_msg("migrate: %s", err.message);
    obt_exec(f->conn, "CREATE TABLE %s.applied (key text, value text)",
             f->ident);

    /* Topic and group names from the schema's unique suffix. */
    base = obt_unique_name("t");
    snprintf(f->topic, sizeof(f->topic), "consumer-%s", base);
    snprintf(f->group, sizeof(f->group), "group-%s", base);
    free(base);
    f->producer = producer_new();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    rd_kafka_flush(f->producer, 10000);
    rd_kafka_destroy(f->producer);
    obt_drop_schema(f->conn, f->schema);
    PQfinish(f->conn);
    free(f->ident);
    free(f->schema);
    free(f);
    return 0;
}

/* Produces one message; key NULL: no idempotency-key header. */
static void produce_raw(struct fixture *f, const char *key, size_t key_len,
                        const void *value, size_t len)
{
    rd_kafka_headers_t *h = rd_kafka_headers_new(2);
    rd_kafka_resp_err_t e;

    if (key != NULL)
        rd_kafka_header_add(h, "idempotency-key", -1, key,
                            (ssize_t)key_len);
    rd_kafka_header_add(h, "content-type", -1, "application/json", -1);
    e = rd_kafka_producev(f->producer, RD_KAFKA_V_TOPIC(f->topic),
                          RD_KAFKA_V_KEY("agg", 3),
                          RD_KAFKA_V_VALUE((void *)value, len),
                          RD_KAFKA_V_HEADERS(h),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                          RD_KAFKA_V_END);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        fail_msg("produce: %s", rd_kafka_err2str(e));
}

static void produce(struct fixture *f, const char *key, const char *value)
{
    produce_raw(f, key, key != NULL ? strlen(key) : 0, value, strlen(value));
}

/* Events k-<from> .. k-<to - 1>, value {"n": i}. */
static void produce_range(struct fixture *f, int from, int to)
{
    char key[32], value[64];
    int i;

    for (i = from; i < to; i++) {
        snprintf(key, sizeof(key), "k-%d", i);
        snprintf(value, sizeof(value), "{\"n\": %d}", i);
        produce(f, key, value);
    }
}

static void flush_producer(struct fixture *f)
{
    if (rd_kafka_flush(f->producer, WAIT_MS) != RD_KAFKA_RESP_ERR_NO_ERROR)
        fail_msg("producer flush did not finish");
}

static void exec_or_fail(PGconn *conn, const char *sql, int n,
                         const char *const *values, ob_error_t *err)
{
    PGresult *res = PQexecParams(conn, sql, n, NULL, values, NULL, NULL, 0);

    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        memset(err, 0, sizeof(*err));
        err->code = OB_EPG;
        snprintf(err->message, sizeof(err->message), "%s",
                 PQresultErrorMessage(res));
    }
    PQclear(res);
}

static void restart_postgres(void)
{
    const char *dir = getenv("ONCEBOX_TEST_PGDIR");
    char cmd[1024];

    assert_non_null(dir);
    snprintf(cmd, sizeof(cmd), "tests/support/pg-tmp restart '%s' "
             ">/dev/null", dir);
    if (system(cmd) != 0)
        fail_msg("pg-tmp restart failed");
}

/*
 * The test handler: records the message in <schema>.applied through the
 * inbox's transaction, then fails, commits or stops as the test asks.
 */
static int handler(void *opaque, const ob_message_t *msg, ob_txn_t *txn,
                   ob_error_t *err)
{
    struct app *a = opaque;
    const char *key = ob_message_idempotency_key(msg);
    PGconn *conn = ob_txn_pg(txn);
    size_t len;
    const char *value = ob_message_value(msg, &len);
    char *text = strndup(value != NULL ? value : "", len);
    char sql[512];
    const char *values[2] = {key, text};

    memset(err, 0, sizeof(*err));
    a->calls++;
    if (a->calls == a->restart_at)
        restart_postgres();
    if (a->calls == a->slow_at)
        usleep(2500 * 1000); /* the scenario: a handler slower than idle */
    snprintf(sql, sizeof(sql), "INSERT INTO %s.applied (key, value) "
             "VALUES ($1, $2)", a->f->ident);
    exec_or_fail(conn, sql, 2, values, err);
    free(text);
    if (err->code != 0)
        return err->code;

    if (a->fail_key != NULL && strcmp(key, a->fail_key) == 0) {
        a->fail_calls++;
        err->code = OB_EINVAL;
        snprintf(err->message, sizeof(err->message), "test refuses %s", key);
        return OB_EINVAL;
    }
    if (a->commit_key != NULL && strcmp(key, a->commit_key) == 0)
        PQclear(PQexec(conn, "COMMIT"));
    if (a->calls == a->stop_at)
        ob_consumer_stop(a->c);
    return 0;
}

/* The consumer's log, for the test's output when it fails. */
static void test_log(void *opaque, int level, const char *facility,
                     const char *message)
{
    (void)opaque;
    fprintf(stderr, "    log <%d> [%s] %s\n", level, facility, message);
}

/*
 * The batch handler: the same rows as the handler, with one statement
 * for the whole batch.
 */
static int batch_handler(void *opaque, const ob_message_t *const *msgs,
                         size_t n, ob_txn_t *txn, ob_error_t *err)
{
    struct app *a = opaque;
    char *keys = calloc(n, OB_KEY_MAX + 4), *p = keys, sql[512];
    PGresult *res;
    size_t i;
    int rc = 0;

    a->batch_calls++;
    a->batch_messages += (int)n;
    *p++ = '{';
    for (i = 0; i < n; i++) {
        const char *key = ob_message_idempotency_key(msgs[i]);

        if (a->batch_fail_key != NULL && strcmp(key, a->batch_fail_key) == 0)
            rc = OB_EINVAL;
        p += sprintf(p, "%s\"%s\"", i > 0 ? "," : "", key);
    }
    strcpy(p, "}");
    snprintf(sql, sizeof(sql), "INSERT INTO %s.applied (key, value) SELECT "
             "k, 'batch' FROM unnest($1::text[]) AS k", a->f->ident);
    res = PQexecParams(ob_txn_pg(txn), sql, 1, NULL,
                       (const char *const[]){keys}, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = ob_txn_pg_error(txn, res, err);
    PQclear(res);
    free(keys);
    return rc;
}

/* A consumer for the fixture; pairs: NULL-terminated key, value, ... */
static ob_consumer_t *consumer_new(struct fixture *f, const char *first,
                                   ...)
{
    ob_consumer_t *c = NULL;
    ob_conf_t *conf;
    ob_error_t err;
    const char *k, *v;
    va_list ap;

    assert_int_equal(ob_conf_new(&conf, &err), 0);
    assert_int_equal(ob_conf_set(conf, "schema", f->schema, &err), 0);
    assert_int_equal(ob_conf_set(conf, "kafka.bootstrap.servers", brokers(),
                                 &err), 0);
    assert_int_equal(ob_conf_set(conf, "kafka.group.id", f->group, &err), 0);
    assert_int_equal(ob_conf_set(conf, "consumer.topics", f->topic, &err), 0);
    assert_int_equal(ob_conf_set(conf, "consumer.idle.exit.ms", "1500",
                                 &err), 0);
    assert_int_equal(ob_conf_set(conf, "consumer.retry.backoff.ms", "10",
                                 &err), 0);
    /* The mock broker holds a rejoining group for the session timeout
     * less a second: keep it short, so a second run starts soon. */
    assert_int_equal(ob_conf_set(conf, "kafka.session.timeout.ms", "3000",
                                 &err), 0);
    assert_int_equal(ob_conf_set(conf, "kafka.heartbeat.interval.ms", "500",
                                 &err), 0);
    va_start(ap, first);
    for (k = first; k != NULL; k = va_arg(ap, const char *)) {
        v = va_arg(ap, const char *);
        if (ob_conf_set(conf, k, v, &err) != 0)
            fail_msg("%s: %s", k, err.message);
    }
    va_end(ap);
    ob_conf_set_log(conf, test_log, NULL,
                    getenv("OBT_DEBUG") != NULL ? OB_LOG_DEBUG : OB_LOG_INFO);
    if (ob_consumer_new_pg(&c, conf, getenv("ONCEBOX_TEST_DB"), &err) != 0)
        fail_msg("consumer: %s", err.message);
    ob_conf_destroy(conf);
    return c;
}

/* Runs c to its end with the test handler; returns the counters. */
static ob_consumer_stats_t run(ob_consumer_t *c, struct app *a, unsigned flags,
                               int want_rc)
{
    ob_consumer_stats_t st = OB_CONSUMER_STATS_INIT;
    ob_error_t err;
    int rc;

    a->c = c;
    assert_int_equal(ob_consumer_set_handler(c, handler, a, flags, &err), 0);
    if (getenv("OBT_DEBUG") != NULL)
        fprintf(stderr, "    run starts at %lld ms\n", obt_now_ms());
    rc = ob_consumer_run(c, &err);
    if (getenv("OBT_DEBUG") != NULL)
        fprintf(stderr, "    run took until %lld ms\n", obt_now_ms());
    if (rc != want_rc)
        fail_msg("run: %s (%s), expected %s", ob_error_name(rc),
                 rc ? err.message : "", ob_error_name(want_rc));
    assert_int_equal(ob_consumer_stats(c, &st, &err), 0);
    ob_consumer_destroy(c);
    return st;
}

/* How many different keys <schema>.applied holds. */
static long long distinct_keys(struct fixture *f)
{
    char sql[256];

    snprintf(sql, sizeof(sql), "SELECT count(DISTINCT key) FROM %s.applied",
             f->ident);
    return obt_int(f->conn, sql, 0, NULL);
}

/* SELECT count(*) FROM <schema>.<table> WHERE <where>. */
static long long rows(struct fixture *f, const char *table, const char *where)
{
    char sql[1024];

    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.%s WHERE %s",
             f->ident, table, where != NULL ? where : "true");
    return obt_int(f->conn, sql, 0, NULL);
}

static void consumer_applies_each_event_once_when_produced_twice(void **s)
{
    struct fixture *f = *s;
    struct app a = {.f = f};
    ob_consumer_stats_t st;
    char sql[512];

    produce_range(f, 0, 20);
    produce_range(f, 0, 20); /* the same events at 20 new offsets */
    flush_producer(f);

    st = run(consumer_new(f, NULL), &a, 0, 0);
    assert_int_equal(a.calls, 20);
    assert_int_equal(st.applied, 20);
    assert_int_equal(st.duplicates, 20);
    assert_int_equal(st.messages, 40);
    assert_int_equal(rows(f, "applied", NULL), 20);
    assert_int_equal(distinct_keys(f), 20);

    /* The duplicates moved the stored offsets too: past all 40. */
    snprintf(sql, sizeof(sql), "SELECT sum(next_offset) FROM "
             "%s.consumer_offsets WHERE consumer_group = '%s'", f->ident,
             f->group);
    assert_int_equal(obt_int(f->conn, sql, 0, NULL), 40);
    assert_int_equal(rows(f, "inbox", NULL), 20);
}

static void consumer_resumes_at_the_offsets_stored_in_the_database(void **s)
{
    struct fixture *f = *s;
    struct app a = {.f = f};
    ob_consumer_stats_t st;

    produce_range(f, 0, 10);
    flush_producer(f);
    st = run(consumer_new(f, "consumer.kafka.commit", "false", NULL), &a, 0,
             0);
    assert_int_equal(st.applied, 10);

    /* Kafka holds no committed offset for the group: only the database
     * can tell the second run where to start. */
    produce_range(f, 10, 15);
    flush_producer(f);
    a.calls = 0;
    st = run(consumer_new(f, "consumer.kafka.commit", "false", NULL), &a, 0,
             0);
    assert_int_equal(a.calls, 5);
    assert_int_equal(st.messages, 5);
    assert_int_equal(rows(f, "applied", NULL), 15);
}

/* Messages read from the dead-letter topic, and the reader they need:
 * librdkafka destroys a client only after its messages are gone. */
struct dlq {
    rd_kafka_t *rk;
    rd_kafka_message_t *m[8];
    int n;
};

/* Reads up to n (at most 8) messages of the dead-letter topic. */
static void dlq_read(struct fixture *f, struct dlq *d, int n)
{
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    rd_kafka_topic_partition_list_t *parts;
    char topic[128], errstr[256];
    long long deadline = obt_now_ms() + WAIT_MS;
    int p;

    snprintf(topic, sizeof(topic), "%s.dlq", f->topic);
    rd_kafka_conf_set(kc, "bootstrap.servers", brokers(), NULL, 0);
    rd_kafka_conf_set(kc, "group.id", "dlq-reader", NULL, 0);
    d->rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, errstr, sizeof(errstr));
    assert_non_null(d->rk);
    parts = rd_kafka_topic_partition_list_new(4);
    for (p = 0; p < 4; p++)
        rd_kafka_topic_partition_list_add(parts, topic, p)->offset =
            RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(d->rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    d->n = 0;
    while (d->n < n && d->n < 8 && obt_now_ms() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(d->rk, 200);

        if (m != NULL && m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
            d->m[d->n++] = m;
        else if (m != NULL)
            rd_kafka_message_destroy(m);
    }
}

/* Messages in the dead-letter topic: the sum of its high watermarks. */
static long long dlq_count(struct dlq *d, struct fixture *f)
{
    char topic[128];
    int64_t lo, hi;
    long long total = 0;
    int p;

    snprintf(topic, sizeof(topic), "%s.dlq", f->topic);
    for (p = 0; p < 4; p++) {
        if (rd_kafka_query_watermark_offsets(d->rk, topic, p, &lo, &hi,
                                             WAIT_MS) != 0)
            fail_msg("no watermarks for %s [%d]", topic, p);
        total += hi;
    }
    return total;
}

static void dlq_close(struct dlq *d)
{
    int i;

    for (i = 0; i < d->n; i++)
        rd_kafka_message_destroy(d->m[i]);
    rd_kafka_consumer_close(d->rk);
    rd_kafka_destroy(d->rk);
}

static void expect_header(rd_kafka_message_t *m, const char *name,
                          const char *want)
{
    rd_kafka_headers_t *h = NULL;
    const void *v;
    size_t len;

    assert_int_equal(rd_kafka_message_headers(m, &h), 0);
    if (rd_kafka_header_get_last(h, name, &v, &len) != 0)
        fail_msg("dead letter has no %s header", name);
    if (len != strlen(want) || memcmp(v, want, len) != 0)
        fail_msg("header %s is \"%.*s\", expected \"%s\"", name, (int)len,
                 (const char *)v, want);
}

static void failing_handler_sends_its_message_to_dead_letters(void **s)
{
    struct fixture *f = *s;
    struct app a = {.f = f, .fail_key = "k-7"};
    struct dlq d;
    ob_consumer_stats_t st;
    char offset[24], sql[256];

    produce_range(f, 0, 15);
    flush_producer(f);
    st = run(consumer_new(f, "consumer.retry.attempts", "3", NULL), &a, 0, 0);

    /* k-7 ran its three attempts, each rolled back; the rest applied. */
    assert_int_equal(a.fail_calls, 3);
    assert_int_equal(st.retries, 2);
    assert_int_equal(st.applied, 14);
    assert_int_equal(st.dead_letters, 1);
    assert_int_equal(rows(f, "applied", NULL), 14);
    assert_int_equal(rows(f, "applied", "key = 'k-7'"), 0);
    assert_int_equal(rows(f, "inbox", "idempotency_key = 'k-7'"), 0);
    assert_int_equal(rows(f, "dead_letters", "idempotency_key = 'k-7' AND "
                          "attempts = 3 AND reason = "
                          "'handler-failed: test refuses k-7'"), 1);

    dlq_read(f, &d, 1);
    assert_int_equal(d.n, 1);
    assert_int_equal(dlq_count(&d, f), 1);
    expect_header(d.m[0], "idempotency-key", "k-7");
    expect_header(d.m[0], OB_DLQ_HEADER_REASON, OB_DLQ_HANDLER_FAILED);
    expect_header(d.m[0], OB_DLQ_HEADER_TOPIC, f->topic);
    expect_header(d.m[0], OB_DLQ_HEADER_ATTEMPTS, "3");
    expect_header(d.m[0], OB_DLQ_HEADER_GROUP, f->group);
    snprintf(sql, sizeof(sql), "SELECT \"offset\" FROM %s.dead_letters",
             f->ident);
    snprintf(offset, sizeof(offset), "%lld", obt_int(f->conn, sql, 0, NULL));
    expect_header(d.m[0], OB_DLQ_HEADER_OFFSET, offset);
    assert_int_equal(d.m[0]->len, strlen("{\"n\": 7}"));
    assert_memory_equal(d.m[0]->payload, "{\"n\": 7}", d.m[0]->len);
    dlq_close(&d);
}

static void malformed_messages_go_to_dead_letters_at_once(void **s)
{
    struct fixture *f = *s;
    struct app a = {.f = f};
    struct dlq d;
    ob_consumer_stats_t st;
    char long_key[OB_KEY_MAX + 2];

    memset(long_key, 'x', sizeof(long_key) - 1);
    long_key[sizeof(long_key) - 1] = '\0';
    produce(f, "good-1", "{\"ok\": true}");
    produce(f, "bad-json", "{\"not\": json");
    produce(f, NULL, "{\"no\": \"key\"}");
    produce(f, long_key, "{\"long\": \"key\"}");
    produce_raw(f, "\xff\xfe", 2, "{}", 2);
    produce_raw(f, "junk", 4, "\x00\x01\xff\xfe\x80", 5);
    produce(f, "good-2", "[1, 2]");
    flush_producer(f);

    st = run(consumer_new(f, NULL), &a, OB_HANDLER_JSON, 0);
    assert_int_equal(a.calls, 2);
    assert_int_equal(st.applied, 2);
    assert_int_equal(st.dead_letters, 5);
    assert_int_equal(rows(f, "dead_letters", "reason LIKE 'invalid-json:%'"),
                     2);
    assert_int_equal(rows(f, "dead_letters", "reason LIKE 'missing-key:%'"),
                     1);
    assert_int_equal(rows(f, "dead_letters", "reason LIKE 'invalid-key:%' "
                          "AND attempts = 0"), 2);
    /* The junk value is kept byte for byte. */
    assert_int_equal(rows(f, "dead_letters",
                          "value = '\\x0001fffe80'::bytea"), 1);

    dlq_read(f, &d, 5);
    assert_int_equal(d.n, 5);
    assert_int_equal(dlq_count(&d, f), 5);
    dlq_close(&d);
}

static void reused_key_with_another_payload_is_flagged(void **s)
{
    struct fixture *f = *s;
    struct app a = {.f = f};
    ob_consumer_stats_t st;

    produce(f, "same", "{\"v\": 1}");
    produce(f, "same", "{\"v\": 1}");
    produce(f, "same", "{\"v\": 2}");
    flush_producer(f);
    st = run(consumer_new(f, NULL), &a, 0, 0);
    assert_int_equal(st.applied, 1);
    assert_int_equal(st.duplicates, 1);
    assert_int_equal(st.key_reused, 1);
    assert_int_equal(st.dead_letters, 1);
    assert_int_equal(rows(f, "dead_letters", "reason LIKE 'key-reused:%' "
                          "AND value = convert_to('{\"v\": 2}', 'UTF8')"),
                     1);

    /* Under "skip" the next reuse is counted and dropped. */
    produce(f, "same", "{\"v\": 3}");
    flush_producer(f);
    st = run(consumer_new(f, "consumer.key.reuse", "skip", NULL), &a, 0, 0);
    assert_int_equal(st.skipped, 1);
    assert_int_equal(st.key_reused, 1);
    assert_int_equal(st.dead_letters, 0);
    assert_int_equal(rows(f, "applied", NULL), 1);
}

static void missing_key_can_fall_back_to_the_offset(void **s)
{
    struct fixture *f = *s;
    struct app a = {.f = f};
    ob_consumer_stats_t st;
    char like[160];

    produce(f, NULL, "{\"a\": 1}");
    produce(f, NULL, "{\"a\": 1}");
    flush_producer(f);
    st = run(consumer_new(f, "consumer.key.missing", "offset", NULL), &a, 0,
             0);
    /* Two offsets, two keys: without a key, copies are not recognised. */
    assert_int_equal(st.applied, 2);
    snprintf(like, sizeof(like), "key LIKE '%s/%%'", f->topic);
    assert_int_equal(rows(f, "applied", like), 2);
}

static void postgres_restart_mid_batch_applies_each_event_once(void **s)
{
    struct fixture *f = *s;
    struct app a = {.f = f, .restart_at = 30};
    ob_consumer_stats_t st;

    produce_range(f, 0, 200);
    flush_producer(f);
    st = run(consumer_new(f, "consumer.batch.size", "50",
                          "consumer.batch.wait.ms", "1000", NULL),
             &a, 0, 0);
    PQfinish(f->conn); /* it was cut by the restart too */
    f->conn = obt_connect();
    assert_true(st.reconnects >= 1);
    assert_true(a.calls > 200); /* the lost batch ran again */
    assert_int_equal(st.applied, 200);
    assert_int_equal(rows(f, "applied", NULL), 200);
    assert_int_equal(distinct_keys(f), 200);
}

static void batch_handler_applies_whole_batches_once(void **s)
{
    struct fixture *f = *s;
    struct app a = {.f = f};
    ob_consumer_t *c;
    ob_consumer_stats_t st;
    ob_error_t err;

    produce_range(f, 0, 300);
    produce_range(f, 100, 200); /* copies: the batch handler never sees */
    flush_producer(f);
    c = consumer_new(f, "consumer.batch.size", "500",
                     "consumer.batch.wait.ms", "2000", NULL);
    assert_int_equal(ob_consumer_set_batch_handler(c, batch_handler, &a,
                                                   &err), 0);
    st = run(c, &a, 0, 0);
    assert_int_equal(a.calls, 0);
    assert_int_equal(a.batch_messages, 300);
    assert_true(a.batch_calls >= 1 && a.batch_calls <= 4);
    assert_int_equal(st.applied, 300);
    assert_int_equal(st.duplicates, 100);
    assert_int_equal(rows(f, "applied", "value = 'batch'"), 300);
    assert_int_equal(distinct_keys(f), 300);
}

static void batch_handler_failure_falls_back_to_the_handler(void **s)
{
    struct fixture *f = *s;
    struct app a = {.f = f, .batch_fail_key = "k-3", .fail_key = "k-3"};
    ob_consumer_t *c;
    ob_consumer_stats_t st;
    ob_error_t err;

    produce_range(f, 0, 10);
    flush_producer(f);
    c = consumer_new(f, "consumer.batch.size", "100",
                     "consumer.batch.wait.ms", "2000",
                     "consumer.retry.attempts", "2", NULL);
    assert_int_equal(ob_consumer_set_batch_handler(c, batch_handler, &a,
                                                   &err), 0);
    st = run(c, &a, 0, 0);
    /* The batch with k-3 ran again message by message: k-3 failed twice
     * in the handler and went to dead letters, the rest applied. */
    assert_true(a.batch_calls >= 1);
    assert_int_equal(a.fail_calls, 2);
    assert_int_equal(st.applied, 9);
    assert_int_equal(st.dead_letters, 1);
    assert_int_equal(rows(f, "applied", NULL), 9);
    assert_int_equal(rows(f, "applied", "key = 'k-3'"), 0);
    assert_int_equal(rows(f, "dead_letters", "idempotency_key = 'k-3'"), 1);
}

static void slow_batch_does_not_count_as_idle_time(void **s)
{
    struct fixture *f = *s;
    struct app a = {.f = f, .slow_at = 3};
    ob_consumer_stats_t st;

    produce_range(f, 0, 60);
    flush_producer(f);
    /* The first batch takes longer than the idle time; 50 messages wait
     * behind it, and must still be read. */
    st = run(consumer_new(f, "consumer.batch.size", "10",
                          "consumer.idle.exit.ms", "1500", NULL),
             &a, 0, 0);
    assert_int_equal(st.applied, 60);
    assert_int_equal(rows(f, "applied", NULL), 60);
}

static void handler_that_commits_stops_the_consumer(void **s)
{
    struct fixture *f = *s;
    struct app a = {.f = f, .commit_key = "k-2"};

    produce_range(f, 0, 5);
    flush_producer(f);
    run(consumer_new(f, NULL), &a, 0, OB_ESTATE);
}

static void stop_finishes_and_commits_the_batch_in_hand(void **s)
{
    struct fixture *f = *s;
    struct app a = {.f = f, .stop_at = 5};
    ob_consumer_stats_t st;

    produce_range(f, 0, 50);
    flush_producer(f);
    st = run(consumer_new(f, "consumer.batch.size", "1000",
                          "consumer.batch.wait.ms", "2000",
                          "consumer.idle.exit.ms", "0", NULL),
             &a, 0, 0);
    /* The stop came inside the batch: all of it was still committed. */
    assert_true(a.calls >= 5);
    assert_int_equal(st.applied, (uint64_t)a.calls);
    assert_int_equal(st.batches, 1);
    assert_int_equal(rows(f, "applied", NULL),
                     a.calls);
}

static void consumer_purges_keys_past_the_retention(void **s)
{
    struct fixture *f = *s;
    struct app a = {.f = f};
    ob_consumer_stats_t st;

    obt_exec(f->conn, "INSERT INTO %s.inbox (namespace, idempotency_key, "
             "claimed_at) SELECT '%s', 'old-' || i, now() - interval "
             "'30 days' FROM generate_series(1, 25) i", f->ident, f->group);
    obt_exec(f->conn, "INSERT INTO %s.inbox (namespace, idempotency_key, "
             "claimed_at) VALUES ('other-group', 'old-1', now() - interval "
             "'30 days')", f->ident);
    produce_range(f, 0, 3);
    flush_producer(f);
    st = run(consumer_new(f, "inbox.purge.interval.ms", "100",
                          "purge.batch.size", "10",
                          "consumer.idle.exit.ms", "3000", NULL),
             &a, 0, 0);
    assert_int_equal(st.purged, 25);
    assert_int_equal(rows(f, "inbox", "idempotency_key LIKE 'old-%'"), 1);
    assert_int_equal(rows(f, "inbox", "idempotency_key LIKE 'k-%'"), 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            consumer_applies_each_event_once_when_produced_twice, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            consumer_resumes_at_the_offsets_stored_in_the_database, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            failing_handler_sends_its_message_to_dead_letters, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            malformed_messages_go_to_dead_letters_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(
            reused_key_with_another_payload_is_flagged, setup, teardown),
        cmocka_unit_test_setup_teardown(
            missing_key_can_fall_back_to_the_offset, setup, teardown),
        cmocka_unit_test_setup_teardown(
            postgres_restart_mid_batch_applies_each_event_once, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            batch_handler_applies_whole_batches_once, setup, teardown),
        cmocka_unit_test_setup_teardown(
            batch_handler_failure_falls_back_to_the_handler, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            slow_batch_does_not_count_as_idle_time, setup, teardown),
        cmocka_unit_test_setup_teardown(
            handler_that_commits_stops_the_consumer, setup, teardown),
        cmocka_unit_test_setup_teardown(
            stop_finishes_and_commits_the_batch_in_hand, setup, teardown),
        cmocka_unit_test_setup_teardown(
            consumer_purges_keys_past_the_retention, setup, teardown),
    };

    /* OBT_ONLY=pattern runs the matching tests alone. */
    if (getenv("OBT_ONLY") != NULL)
        cmocka_set_test_filter(getenv("OBT_ONLY"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
