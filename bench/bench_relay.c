/*
 * bench_relay: how fast the outbox reaches Kafka, against what the same
 * machine allows.
 *
 * Figures, each the median of RUNS runs with the spread, printed durable
 * (fsync on, synchronous_commit on) and relaxed (synchronous_commit off
 * for every session of this process, the relay's included):
 *
 * - baseline 1, the naive polling publisher of shared/seed/README.md,
 *   run against the seed's own table and index: in one transaction,
 *   claim 100 unpublished rows ORDER BY created_at FOR UPDATE SKIP
 *   LOCKED, publish each to "<aggregate type lower-cased>-events" with
 *   the aggregate id as key and the payload with the event type and the
 *   idempotency key merged in, wait for its delivery, UPDATE its
 *   published_at, and commit after the 100;
 * - baseline 2, the ceiling: librdkafka's idempotent producer (acks=all)
 *   sending the same messages (topic, key, value, headers) from memory;
 * - the oncebox relay (ob_relay_run() in threads of this process, each
 *   relay with its own PostgreSQL session and producer), 1 and 3 of
 *   them, from start to the last row published, its default
 *   configuration; and, at a steady 5,000 events/s appended 10 per
 *   transaction every 2 ms, the latency from the append's COMMIT
 *   returning to a consumer in this process receiving the message (an
 *   upper bound of commit to delivery report), beside the same path for
 *   the raw producer (produce to receipt, the floor).
 *
 * Every message carries a 200-byte JSON payload; the outbox backlog is
 * appended with ob_writer_append_batch(), 1000 events per transaction,
 * over 10,000 aggregates. The broker is ONCEBOX_BENCH_BROKERS (bench/run.sh
 * starts the mock cluster in another process).
 *
 *   bench_relay --db CONNINFO [--runs N] [--rows N] [--naive-rows N]
 *               [--latency-s S]
 */
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <oncebox/oncebox.h>
#include <oncebox/relay.h>

#define SCHEMA "bench_relay"
#define NAIVE_SCHEMA "bench_naive"
#define PAYLOAD_BYTES 200
#define AGGREGATES 10000
#define APPEND_BATCH 1000
#define NAIVE_BATCH 100
#define RUNS_MAX 16
#define TOPIC "order-events"
#define STEADY_PER_TXN 10
#define STEADY_TICK_NS 2000000L /* 10 per 2 ms: 5,000 events/s */

struct bench {
    const char *db;
    const char *brokers;
    PGconn *conn;
    ob_writer_t *writer;
    int runs;
    long rows;
    long naive_rows;
    int latency_s;
};

/* One message as the relay would send it, for the raw producer. */
struct message {
    char *topic;
    char *key;
    char *value;
    char *headers[7][2];
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *why)
{
    fprintf(stderr, "bench_relay: %s: %s\n", what, why);
    exit(1);
}

static void exec(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);

    if (PQresultStatus(res) != PGRES_COMMAND_OK &&
        PQresultStatus(res) != PGRES_TUPLES_OK)
        die(sql, PQerrorMessage(conn));
    PQclear(res);
}

static long long query_ll(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    long long n;

    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        die(sql, PQerrorMessage(conn));
    n = atoll(PQgetvalue(res, 0, 0));
    PQclear(res);
    return n;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

/* Median of v[0..n), with the smallest and largest in *lo and *hi. */
static double median(double *v, int n, double *lo, double *hi)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    *lo = v[0];
    *hi = v[n - 1];
    return v[n / 2];
}

/* ---- the backlog ---------------------------------------------------- */

static void aggregate_id(char *out, size_t size, long i)
{
    snprintf(out, size, "00000000-0000-4000-8000-%012ld", i % AGGREGATES);
}

/* A 200-byte JSON object whose "n" is the event's number; out has room
 * for PAYLOAD_BYTES + 1. */
static void payload(char *out, long n)
{
    int head = snprintf(out, PAYLOAD_BYTES, "{\"n\": %ld, \"customer\": "
                        "\"c-%ld\", \"total_cents\": %ld, \"note\": \"", n,
                        n % 977, (n * 37) % 100000);

    memset(out + head, 'x', (size_t)(PAYLOAD_BYTES - head - 2));
    memcpy(out + PAYLOAD_BYTES - 2, "\"}", 3);
}

struct batch {
    ob_event_t events[APPEND_BATCH];
    char aggs[APPEND_BATCH][40];
    char payloads[APPEND_BATCH][PAYLOAD_BYTES + 1];
};

static void batch_fill(struct batch *b, long first, int count)
{
    int i;

    for (i = 0; i < count; i++) {
        ob_event_t *ev = &b->events[i];

        aggregate_id(b->aggs[i], sizeof(b->aggs[i]), first + i);
        payload(b->payloads[i], first + i);
        *ev = (ob_event_t)OB_EVENT_INIT;
        ev->aggregate_type = "Order";
        ev->aggregate_id = b->aggs[i];
        ev->event_type = "OrderPlaced";
        ev->payload = b->payloads[i];
    }
}

/* Appends events [first, first + count) in one transaction on conn. */
static void append_txn(PGconn *conn, ob_writer_t *writer, struct batch *b,
                       long first, int count)
{
    ob_error_t err;

    batch_fill(b, first, count);
    exec(conn, "BEGIN");
    if (ob_writer_append_batch(writer, conn, b->events, (size_t)count, NULL,
                               NULL, &err) != 0)
        die("append", err.message);
    exec(conn, "COMMIT");
}

/* An outbox holding exactly rows pending events, appended as a service
 * would: 1000 per transaction. */
static void backlog_fill(struct bench *bn, long rows)
{
    struct batch *b = malloc(sizeof(*b));
    long done;

    if (b == NULL)
        die("backlog", "out of memory");
    exec(bn->conn, "TRUNCATE " SCHEMA ".outbox");
    for (done = 0; done < rows; done += APPEND_BATCH)
        append_txn(bn->conn, bn->writer, b, done,
                   rows - done < APPEND_BATCH ? (int)(rows - done)
                                              : APPEND_BATCH);
    free(b);
    exec(bn->conn, "VACUUM ANALYZE " SCHEMA ".outbox");
}

/* ---- baseline 1: the naive publisher -------------------------------- */

/* The seed's table and indexes, as its pattern description gives them. */
static const char naive_ddl[] =
    "SET client_min_messages = warning;"
    "CREATE SCHEMA IF NOT EXISTS " NAIVE_SCHEMA ";"
    "DROP TABLE IF EXISTS " NAIVE_SCHEMA ".outbox;"
    "CREATE TABLE " NAIVE_SCHEMA ".outbox ("
    " id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
    " aggregate_type varchar(100) NOT NULL,"
    " aggregate_id uuid NOT NULL,"
    " event_type varchar(100) NOT NULL,"
    " payload jsonb NOT NULL,"
    " idempotency_key varchar(255) UNIQUE,"
    " created_at timestamptz NOT NULL DEFAULT now(),"
    " published_at timestamptz,"
    " retry_count int DEFAULT 0,"
    " last_error text);"
    "CREATE INDEX idx_outbox_unpublished ON " NAIVE_SCHEMA ".outbox"
    " (created_at) WHERE published_at IS NULL;"
    "CREATE INDEX idx_outbox_aggregate ON " NAIVE_SCHEMA ".outbox"
    " (aggregate_id, created_at);"
    "CREATE INDEX idx_outbox_idempotency ON " NAIVE_SCHEMA ".outbox"
    " (idempotency_key) WHERE idempotency_key IS NOT NULL;"
    "RESET client_min_messages";

/* The same events the relay gets, copied from the oncebox outbox. */
static void naive_fill(struct bench *bn)
{
    char sql[512];

    exec(bn->conn, "TRUNCATE " NAIVE_SCHEMA ".outbox");
    snprintf(sql, sizeof(sql),
             "INSERT INTO " NAIVE_SCHEMA ".outbox (id, aggregate_type,"
             " aggregate_id, event_type, payload, idempotency_key,"
             " created_at) SELECT id, aggregate_type, aggregate_id::uuid,"
             " event_type, payload, idempotency_key, created_at FROM "
             SCHEMA ".outbox ORDER BY seq LIMIT %ld", bn->naive_rows);
    exec(bn->conn, sql);
    exec(bn->conn, "VACUUM ANALYZE " NAIVE_SCHEMA ".outbox");
}

struct naive {
    rd_kafka_t *rk;
    PGconn *conn;
    rd_kafka_resp_err_t last; /* of the delivery just waited for */
    int delivered;
};

static void naive_dr(rd_kafka_t *rk, const rd_kafka_message_t *m,
                     void *opaque)
{
    struct naive *nv = opaque;

    (void)rk;
    nv->last = m->err;
    nv->delivered = 1;
}

static rd_kafka_t *producer_new(const char *brokers, const char *linger,
                                void (*dr)(rd_kafka_t *,
                                           const rd_kafka_message_t *,
                                           void *),
                                void *opaque)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char errstr[512];
    rd_kafka_t *rk;

    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "enable.idempotence", "true", errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "acks", "all", errstr, sizeof(errstr)) !=
            RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "linger.ms", linger, errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "queue.buffering.max.messages", "1000000",
                          errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
        die("producer configuration", errstr);
    rd_kafka_conf_set_dr_msg_cb(conf, dr);
    rd_kafka_conf_set_opaque(conf, opaque);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (rk == NULL)
        die("producer", errstr);
    return rk;
}

/* The seed's value: the payload with event_type and idempotency_key
 * merged in, as its publisher builds it. */
static char *naive_value(const PGresult *res, int i)
{
    json_error_t jerr;
    json_t *v = json_loads(PQgetvalue(res, i, 4), 0, &jerr);
    char *text;

    if (v == NULL)
        die("naive payload", jerr.text);
    json_object_set_new(v, "event_type", json_string(PQgetvalue(res, i, 3)));
    json_object_set_new(v, "idempotency_key",
                        json_string(PQgetvalue(res, i, 5)));
    text = json_dumps(v, JSON_COMPACT);
    json_decref(v);
    return text;
}

/* Publishes one row and waits for its delivery report. */
static rd_kafka_resp_err_t naive_publish(struct naive *nv,
                                         const PGresult *res, int i)
{
    char topic[128], *value = naive_value(res, i), *p;
    const char *key = PQgetvalue(res, i, 2);
    rd_kafka_resp_err_t e;

    snprintf(topic, sizeof(topic), "%s-events", PQgetvalue(res, i, 1));
    for (p = topic; *p != '\0'; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
    nv->delivered = 0;
    e = rd_kafka_producev(nv->rk, RD_KAFKA_V_TOPIC(topic),
                          RD_KAFKA_V_KEY(key, strlen(key)),
                          RD_KAFKA_V_VALUE(value, strlen(value)),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                          RD_KAFKA_V_END);
    free(value);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        return e;
    while (!nv->delivered)
        rd_kafka_poll(nv->rk, 100);
    return nv->last;
}

static void naive_mark(struct naive *nv, const PGresult *res, int i,
                       rd_kafka_resp_err_t e)
{
    const char *values[2] = {PQgetvalue(res, i, 0), rd_kafka_err2str(e)};
    PGresult *r;

    if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
        r = PQexecParams(nv->conn, "UPDATE " NAIVE_SCHEMA ".outbox SET "
                         "published_at = now() WHERE id = $1", 1, NULL,
                         values, NULL, NULL, 0);
    else
        r = PQexecParams(nv->conn, "UPDATE " NAIVE_SCHEMA ".outbox SET "
                         "retry_count = retry_count + 1, last_error = $2 "
                         "WHERE id = $1", 2, NULL, values, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        die("naive update", PQerrorMessage(nv->conn));
    PQclear(r);
}

/* One claim-publish-commit round; returns the rows it claimed. */
static int naive_round(struct naive *nv)
{
    PGresult *res;
    int i, n;

    exec(nv->conn, "BEGIN");
    res = PQexec(nv->conn, "SELECT id, aggregate_type, aggregate_id,"
                 " event_type, payload, idempotency_key FROM " NAIVE_SCHEMA
                 ".outbox WHERE published_at IS NULL ORDER BY created_at"
                 " LIMIT 100 FOR UPDATE SKIP LOCKED");
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        die("naive claim", PQerrorMessage(nv->conn));
    n = PQntuples(res);
    for (i = 0; i < n; i++)
        naive_mark(nv, res, i, naive_publish(nv, res, i));
    PQclear(res);
    exec(nv->conn, "COMMIT");
    return n;
}

static double naive_run(struct bench *bn)
{
    struct naive nv = {NULL, bn->conn, RD_KAFKA_RESP_ERR_NO_ERROR, 0};
    long done = 0;
    double t0;
    int n;

    naive_fill(bn);
    nv.rk = producer_new(bn->brokers, "0", naive_dr, &nv);
    t0 = now_s();
    while ((n = naive_round(&nv)) > 0)
        done += n;
    t0 = now_s() - t0;
    rd_kafka_destroy(nv.rk);
    if (done != bn->naive_rows ||
        query_ll(bn->conn, "SELECT count(*) FROM " NAIVE_SCHEMA ".outbox"
                 " WHERE published_at IS NULL") != 0)
        die("naive", "not every row was published");
    return (double)done / t0;
}

/* ---- baseline 2: the raw producer ----------------------------------- */

static const char *const header_names[7] = {
    OB_HEADER_IDEMPOTENCY_KEY, OB_HEADER_EVENT_ID, OB_HEADER_EVENT_TYPE,
    OB_HEADER_AGGREGATE_TYPE,  OB_HEADER_AGGREGATE_ID,
    OB_HEADER_CONTENT_TYPE,    OB_HEADER_ID,
};

/* The backlog's messages, in append order, built as the relay builds
 * them: key, value and the wire contract's headers. */
static struct message *messages_load(struct bench *bn, long *countp)
{
    PGresult *res = PQexec(bn->conn, "SELECT lower(aggregate_type) ||"
                           " '-events', aggregate_id, payload::text,"
                           " idempotency_key, id::text, event_type,"
                           " aggregate_type FROM " SCHEMA ".outbox"
                           " ORDER BY seq");
    struct message *m;
    long i, n;

    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        die("loading messages", PQerrorMessage(bn->conn));
    n = PQntuples(res);
    m = calloc((size_t)n, sizeof(*m));
    if (m == NULL)
        die("messages", "out of memory");
    for (i = 0; i < n; i++) {
        const char *v[7] = {PQgetvalue(res, (int)i, 3),
                            PQgetvalue(res, (int)i, 4),
                            PQgetvalue(res, (int)i, 5),
                            PQgetvalue(res, (int)i, 6),
                            PQgetvalue(res, (int)i, 1),
                            OB_CONTENT_TYPE_JSON,
                            PQgetvalue(res, (int)i, 4)};
        int h;

        m[i].topic = strdup(PQgetvalue(res, (int)i, 0));
        m[i].key = strdup(PQgetvalue(res, (int)i, 1));
        m[i].value = strdup(PQgetvalue(res, (int)i, 2));
        for (h = 0; h < 7; h++) {
            m[i].headers[h][0] = (char *)header_names[h];
            m[i].headers[h][1] = strdup(v[h]);
        }
    }
    PQclear(res);
    *countp = n;
    return m;
}

static void messages_free(struct message *m, long n)
{
    long i;
    int h;

    for (i = 0; i < n; i++) {
        free(m[i].topic);
        free(m[i].key);
        free(m[i].value);
        for (h = 0; h < 7; h++)
            free(m[i].headers[h][1]);
    }
    free(m);
}

static long raw_failed;

static void raw_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR)
        raw_failed++;
}

static void raw_produce(rd_kafka_t *rk, const struct message *m)
{
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(7);
    rd_kafka_resp_err_t e;
    int h;

    for (h = 0; h < 7; h++)
        rd_kafka_header_add(hdrs, m->headers[h][0], -1, m->headers[h][1],
                            -1);
    for (;;) {
        e = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(m->topic),
                              RD_KAFKA_V_KEY(m->key, strlen(m->key)),
                              RD_KAFKA_V_VALUE(m->value, strlen(m->value)),
                              RD_KAFKA_V_HEADERS(hdrs),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                              RD_KAFKA_V_END);
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            break;
        rd_kafka_poll(rk, 10);
    }
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_headers_destroy(hdrs);
        die("raw produce", rd_kafka_err2str(e));
    }
    rd_kafka_poll(rk, 0);
}

/* Messages per second from the first produce to the last delivery. */
static double raw_run(struct bench *bn, const struct message *m, long n)
{
    rd_kafka_t *rk = producer_new(bn->brokers, "5", raw_dr, NULL);
    double t0;
    long i;

    raw_failed = 0;
    t0 = now_s();
    for (i = 0; i < n; i++)
        raw_produce(rk, &m[i]);
    if (rd_kafka_flush(rk, 120000) != RD_KAFKA_RESP_ERR_NO_ERROR)
        die("raw", "the flush timed out");
    t0 = now_s() - t0;
    rd_kafka_destroy(rk);
    if (raw_failed != 0)
        die("raw", "deliveries failed");
    (void)bn;
    return (double)n / t0;
}

/* ---- the oncebox relay ---------------------------------------------- */

/* One relay on its own thread; the stats callback sums what all publish. */
struct relay_thread {
    ob_relay_t *relay;
    pthread_t thread;
    uint64_t seen; /* this relay's "published" at its last callback */
    int rc;
    ob_error_t err;
};

static atomic_llong relays_published;
static atomic_int relays_held;

static void relay_stats(void *opaque, const ob_relay_stats_t *st)
{
    struct relay_thread *rt = opaque;

    atomic_fetch_add(&relays_published, (long long)(st->published - rt->seen));
    rt->seen = st->published;
    atomic_store(&relays_held, st->lanes_held);
}

static void *relay_main(void *arg)
{
    struct relay_thread *rt = arg;

    rt->rc = ob_relay_run(rt->relay, &rt->err);
    return NULL;
}

static void relay_start(struct bench *bn, struct relay_thread *rt)
{
    ob_conf_t *conf;
    ob_error_t err;

    memset(rt, 0, sizeof(*rt));
    if (ob_conf_new(&conf, &err) != 0 ||
        ob_conf_set(conf, "schema", SCHEMA, &err) != 0 ||
        ob_conf_set(conf, "kafka.bootstrap.servers", bn->brokers, &err) != 0 ||
        ob_relay_new(&rt->relay, bn->db, conf, &err) != 0)
        die("relay", err.message);
    ob_conf_destroy(conf);
    ob_relay_set_stats_cb(rt->relay, relay_stats, rt);
    if (pthread_create(&rt->thread, NULL, relay_main, rt) != 0)
        die("relay", "cannot start a thread");
}

static void relay_finish(struct relay_thread *rt)
{
    ob_relay_stop(rt->relay);
    pthread_join(rt->thread, NULL);
    if (rt->rc != 0)
        die("relay", rt->err.message);
    ob_relay_destroy(rt->relay);
}

/* Waits until cond() holds, at most limit_s seconds. */
static void wait_for(int (*cond)(const void *), const void *arg,
                     double limit_s, const char *what)
{
    struct timespec pause = {0, 1000000};
    double deadline = now_s() + limit_s;

    while (!cond(arg)) {
        if (now_s() > deadline)
            die(what, "timed out");
        nanosleep(&pause, NULL);
    }
}

static int published_reached(const void *rows)
{
    return atomic_load(&relays_published) >= *(const long *)rows;
}

/* Events per second of n relays draining a backlog of bn->rows, from
 * their start (connections and lane groups included) to the last row. */
static double relay_run(struct bench *bn, int n)
{
    struct relay_thread rt[3];
    double t0;
    int i;

    backlog_fill(bn, bn->rows);
    atomic_store(&relays_published, 0);
    t0 = now_s();
    for (i = 0; i < n; i++)
        relay_start(bn, &rt[i]);
    wait_for(published_reached, &bn->rows, 600, "relay drain");
    t0 = now_s() - t0;
    for (i = 0; i < n; i++)
        relay_finish(&rt[i]);
    if (query_ll(bn->conn, "SELECT count(*) FROM " SCHEMA ".outbox WHERE "
                 "state <> 'published'") != 0)
        die("relay", "rows left unpublished");
    return (double)bn->rows / t0;
}

/* ---- latency at a steady rate --------------------------------------- */

/* Per event: when it was committed (or produced), when it arrived. */
struct latency {
    long total;
    double *sent;
    double *received;
    atomic_long arrived;
    atomic_int stop;
    rd_kafka_t *consumer;
};

/* Assigns every partition of TOPIC at its current end, so exactly the
 * messages sent from now on arrive. */
static rd_kafka_t *consumer_new(struct bench *bn)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const rd_kafka_metadata_t *md;
    rd_kafka_topic_partition_list_t *parts;
    rd_kafka_topic_t *topic;
    char errstr[512];
    rd_kafka_t *rk;
    int i;

    if (rd_kafka_conf_set(conf, "bootstrap.servers", bn->brokers, errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "group.id", "bench-relay-latency", errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "fetch.wait.max.ms", "5", errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK)
        die("consumer configuration", errstr);
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    if (rk == NULL)
        die("consumer", errstr);

    topic = rd_kafka_topic_new(rk, TOPIC, NULL);
    if (rd_kafka_metadata(rk, 0, topic, &md, 10000) != 0 ||
        md->topic_cnt != 1 || md->topics[0].partition_cnt < 1)
        die("consumer", "no metadata for " TOPIC);
    parts = rd_kafka_topic_partition_list_new(md->topics[0].partition_cnt);
    for (i = 0; i < md->topics[0].partition_cnt; i++) {
        int64_t lo, hi;

        if (rd_kafka_query_watermark_offsets(rk, TOPIC, i, &lo, &hi,
                                             10000) != 0)
            die("consumer", "no watermark offsets");
        rd_kafka_topic_partition_list_add(parts, TOPIC, i)->offset = hi;
    }
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(topic);
    rd_kafka_poll_set_consumer(rk);
    if (rd_kafka_assign(rk, parts) != 0)
        die("consumer", "assign failed");
    rd_kafka_topic_partition_list_destroy(parts);
    return rk;
}

/* The event number is the payload's "n", first in the value whether it
 * comes from memory or from PostgreSQL's jsonb. */
static void latency_receive(struct latency *lt, const rd_kafka_message_t *m)
{
    const char *p;
    long n;

    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR || m->len < 8)
        return;
    p = memchr(m->payload, ':', m->len < 16 ? m->len : 16);
    if (p == NULL)
        return;
    n = strtol(p + 1, NULL, 10);
    if (n >= 0 && n < lt->total && lt->received[n] == 0) {
        lt->received[n] = now_s();
        atomic_fetch_add(&lt->arrived, 1);
    }
}

static void *consumer_main(void *arg)
{
    struct latency *lt = arg;

    while (!atomic_load(&lt->stop)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(lt->consumer, 50);

        if (m != NULL) {
            latency_receive(lt, m);
            rd_kafka_message_destroy(m);
        }
    }
    return NULL;
}

/* Sleeps until start + tick * k on the monotonic clock. */
static void tick_wait(const struct timespec *start, long k)
{
    struct timespec t = *start;
    long long ns = (long long)t.tv_nsec + (long long)k * STEADY_TICK_NS;

    t.tv_sec += (time_t)(ns / 1000000000LL);
    t.tv_nsec = (long)(ns % 1000000000LL);
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
}

/* Appends lt->total events, 10 per transaction every 2 ms. */
static void steady_append(struct bench *bn, struct latency *lt)
{
    struct batch *b = malloc(sizeof(*b));
    struct timespec start;
    long k, i;

    if (b == NULL)
        die("latency", "out of memory");
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (k = 0; k * STEADY_PER_TXN < lt->total; k++) {
        double t;

        tick_wait(&start, k);
        append_txn(bn->conn, bn->writer, b, k * STEADY_PER_TXN,
                   STEADY_PER_TXN);
        t = now_s();
        for (i = 0; i < STEADY_PER_TXN; i++)
            lt->sent[k * STEADY_PER_TXN + i] = t;
    }
    free(b);
}

static void steady_produce(struct bench *bn, struct latency *lt)
{
    rd_kafka_t *rk = producer_new(bn->brokers, "5", raw_dr, NULL);
    struct message m = {TOPIC, NULL, NULL, {{NULL, NULL}}};
    char agg[40], value[PAYLOAD_BYTES + 1];
    struct timespec start;
    long k, i;
    int h;

    for (h = 0; h < 7; h++) {
        m.headers[h][0] = (char *)header_names[h];
        m.headers[h][1] = "bench";
    }
    m.key = agg;
    m.value = value;

    /* A first message, not counted ("n" -1), gets the producer its id
     * and the partition leaders before the clock starts. */
    aggregate_id(agg, sizeof(agg), 0);
    payload(value, -1);
    raw_produce(rk, &m);
    rd_kafka_flush(rk, 60000);
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (k = 0; k * STEADY_PER_TXN < lt->total; k++) {
        tick_wait(&start, k);
        for (i = k * STEADY_PER_TXN; i < (k + 1) * STEADY_PER_TXN; i++) {
            aggregate_id(agg, sizeof(agg), i);
            payload(value, i);
            lt->sent[i] = now_s();
            raw_produce(rk, &m);
        }
    }
    rd_kafka_flush(rk, 60000);
    rd_kafka_destroy(rk);
}

static int arrived_all(const void *arg)
{
    const struct latency *lt = arg;

    return atomic_load(&lt->arrived) >= lt->total;
}

/* Events per second the steady sender reached. */
static double latency_rate(const struct latency *lt)
{
    double span = lt->sent[lt->total - 1] - lt->sent[0];

    return span > 0 ? (double)(lt->total - STEADY_PER_TXN) / span : 0;
}

/* p50 and p99 in milliseconds of received - sent. */
static void latency_percentiles(const struct latency *lt, double *p50,
                                double *p99)
{
    double *d = malloc((size_t)lt->total * sizeof(*d));
    long i;

    if (d == NULL)
        die("latency", "out of memory");
    for (i = 0; i < lt->total; i++) {
        double ms = (lt->received[i] - lt->sent[i]) * 1000.0;

        d[i] = ms > 0 ? ms : 0;
    }
    qsort(d, (size_t)lt->total, sizeof(*d), cmp_double);
    *p50 = d[lt->total / 2];
    *p99 = d[lt->total * 99 / 100];
    free(d);
}

static int relay_holds_all(const void *lanes)
{
    return atomic_load(&relays_held) >= *(const int *)lanes;
}

/* One steady run through the relay (relay 1) or the raw producer (0). */
static void latency_run(struct bench *bn, int relay, double *p50,
                        double *p99, double *rate)
{
    static const int lanes = OB_STATUS_LANES_DEFAULT;
    struct latency lt = {0};
    struct relay_thread rt;
    pthread_t consumer;

    lt.total = (long)bn->latency_s * 5000;
    lt.sent = calloc((size_t)lt.total, sizeof(double));
    lt.received = calloc((size_t)lt.total, sizeof(double));
    if (lt.sent == NULL || lt.received == NULL)
        die("latency", "out of memory");
    lt.consumer = consumer_new(bn);
    if (pthread_create(&consumer, NULL, consumer_main, &lt) != 0)
        die("latency", "cannot start a thread");

    if (relay) {
        exec(bn->conn, "TRUNCATE " SCHEMA ".outbox");
        atomic_store(&relays_held, 0);
        relay_start(bn, &rt);
        wait_for(relay_holds_all, &lanes, 120, "lanes");
        steady_append(bn, &lt);
    } else {
        steady_produce(bn, &lt);
    }
    wait_for(arrived_all, &lt, 120, "latency: messages to arrive");
    if (relay)
        relay_finish(&rt);
    atomic_store(&lt.stop, 1);
    pthread_join(consumer, NULL);
    rd_kafka_consumer_close(lt.consumer);
    rd_kafka_destroy(lt.consumer);
    latency_percentiles(&lt, p50, p99);
    *rate = latency_rate(&lt);
    free(lt.sent);
    free(lt.received);
}

/* ---- the runs ------------------------------------------------------- */

struct figures {
    double raw[RUNS_MAX], naive[RUNS_MAX];
    double relay1[RUNS_MAX], relay3[RUNS_MAX];
    double p50[RUNS_MAX], p99[RUNS_MAX];
    double raw_p50[RUNS_MAX], raw_p99[RUNS_MAX];
    double rate[RUNS_MAX], raw_rate[RUNS_MAX];
};

static double median_of(const double *v, int n)
{
    double copy[RUNS_MAX], lo, hi;

    memcpy(copy, v, (size_t)n * sizeof(*v));
    return median(copy, n, &lo, &hi);
}

/* "name  M (lo..hi) unit", then "  R x what" for each baseline given. */
static void report(const char *name, const double *v, int n,
                   const char *unit, double base1, const char *what1,
                   double base2, const char *what2)
{
    double copy[RUNS_MAX], lo, hi, m;

    memcpy(copy, v, (size_t)n * sizeof(*v));
    m = median(copy, n, &lo, &hi);
    printf("  %-40s %9.*f %s (%.*f..%.*f)", name, m < 100 ? 1 : 0, m, unit,
           m < 100 ? 1 : 0, lo, m < 100 ? 1 : 0, hi);
    if (base1 > 0)
        printf("  %.*fx %s", m / base1 < 0.1 ? 3 : 2, m / base1, what1);
    if (base2 > 0)
        printf("  %.*fx %s", m / base2 < 0.1 ? 3 : 2, m / base2, what2);
    putchar('\n');
}

static void throughput_runs(struct bench *bn, struct figures *fg, int r)
{
    struct message *m;
    long n;

    backlog_fill(bn, bn->rows);
    m = messages_load(bn, &n);
    if (r == 0)
        raw_run(bn, m, n < 20000 ? n : 20000); /* warm-up: topic, metadata */
    fg->raw[r] = raw_run(bn, m, n);
    messages_free(m, n);
    fg->naive[r] = naive_run(bn);
    fg->relay1[r] = relay_run(bn, 1);
    fg->relay3[r] = relay_run(bn, 3);
    latency_run(bn, 1, &fg->p50[r], &fg->p99[r], &fg->rate[r]);
    latency_run(bn, 0, &fg->raw_p50[r], &fg->raw_p99[r], &fg->raw_rate[r]);
}

static void run_mode(struct bench *bn, const char *label)
{
    struct figures fg;
    double raw, naive;
    int r, n = bn->runs;

    for (r = 0; r < n; r++)
        throughput_runs(bn, &fg, r);
    raw = median_of(fg.raw, n);
    naive = median_of(fg.naive, n);

    printf("%s\n", label);
    report("ceiling: raw idempotent producer", fg.raw, n, "msg/s   ", 0,
           NULL, 0, NULL);
    report("baseline: naive publisher", fg.naive, n, "events/s", 0, NULL,
           raw, "of the ceiling");
    report("oncebox relay, 1 relay", fg.relay1, n, "events/s", naive,
           "the naive", raw, "of the ceiling");
    report("oncebox relay, 3 relays", fg.relay3, n, "events/s", naive,
           "the naive", raw, "of the ceiling");
    report("latency p50, relay: commit to receipt", fg.p50, n, "ms", 0,
           NULL, median_of(fg.raw_p50, n), "the raw producer's");
    report("latency p99, relay: commit to receipt", fg.p99, n, "ms", 0,
           NULL, median_of(fg.raw_p99, n), "the raw producer's");
    report("latency p50, raw producer", fg.raw_p50, n, "ms", 0, NULL, 0,
           NULL);
    report("latency p99, raw producer", fg.raw_p99, n, "ms", 0, NULL, 0,
           NULL);
    report("steady rate reached, appends", fg.rate, n, "events/s", 0, NULL,
           0, NULL);
    report("steady rate reached, raw producer", fg.raw_rate, n, "msg/s", 0,
           NULL, 0, NULL);
}

static void setup(struct bench *bn)
{
    ob_conf_t *conf;
    ob_error_t err;

    if (ob_schema_migrate(bn->conn, SCHEMA, &err) != 0)
        die("migrate", err.message);
    exec(bn->conn, naive_ddl);
    if (ob_conf_new(&conf, &err) != 0 ||
        ob_conf_set(conf, "schema", SCHEMA, &err) != 0 ||
        ob_writer_new(&bn->writer, conf, &err) != 0)
        die("writer", err.message);
    ob_conf_destroy(conf);
}

static void parse_args(struct bench *bn, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"db", required_argument, NULL, 'd'},
        {"runs", required_argument, NULL, 'r'},
        {"rows", required_argument, NULL, 'n'},
        {"naive-rows", required_argument, NULL, 'N'},
        {"latency-s", required_argument, NULL, 'l'},
        {NULL, 0, NULL, 0},
    };
    int c;

    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': bn->db = optarg; break;
        case 'r': bn->runs = atoi(optarg); break;
        case 'n': bn->rows = atol(optarg); break;
        case 'N': bn->naive_rows = atol(optarg); break;
        case 'l': bn->latency_s = atoi(optarg); break;
        default: exit(2);
        }
    }
    if (bn->runs < 1 || bn->runs > RUNS_MAX || bn->rows < APPEND_BATCH ||
        bn->naive_rows < NAIVE_BATCH || bn->naive_rows > bn->rows ||
        bn->latency_s < 1 || bn->latency_s > 600)
        die("usage", "--runs 1..16, --rows >= 1000, --naive-rows from "
                     "100 to --rows, --latency-s 1..600");
}

int main(int argc, char **argv)
{
    struct bench bn = {getenv("ONCEBOX_DB"), getenv("ONCEBOX_BENCH_BROKERS"),
                       NULL, NULL, 3, 200000, 5000, 10};

    parse_args(&bn, argc, argv);
    if (bn.brokers == NULL || bn.brokers[0] == '\0')
        die("ONCEBOX_BENCH_BROKERS", "not set (bench/run.sh sets it)");
    bn.conn = PQconnectdb(bn.db != NULL ? bn.db : "");
    if (PQstatus(bn.conn) != CONNECTION_OK)
        die("connect", PQerrorMessage(bn.conn));
    setup(&bn);

    printf("bench_relay: %d-byte payloads, backlog %ld events over %d "
           "aggregates (the naive publisher: %ld of them, it is slow), "
           "relays with their default configuration as threads of this "
           "process, latency over %d s at 5,000 events/s (10 per "
           "transaction every 2 ms); median of %d runs (min..max)\n",
           PAYLOAD_BYTES, bn.rows, AGGREGATES, bn.naive_rows, bn.latency_s,
           bn.runs);
    /* The relays open their own sessions; libpq gives them PGOPTIONS. */
    unsetenv("PGOPTIONS");
    exec(bn.conn, "SET synchronous_commit = on");
    run_mode(&bn, "durable (fsync on, synchronous_commit on):");
    setenv("PGOPTIONS", "-c synchronous_commit=off", 1);
    exec(bn.conn, "SET synchronous_commit = off");
    run_mode(&bn, "relaxed (synchronous_commit off, every session):");

    ob_writer_destroy(bn.writer);
    PQfinish(bn.conn);
    return 0;
}
