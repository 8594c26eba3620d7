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
 * - the oncebox relay, when this build has it (see relay_figures()).
 *
 * Every message carries a 200-byte JSON payload; the outbox backlog is
 * appended with ob_writer_append_batch(), 1000 events per transaction,
 * over 10,000 aggregates. The broker is ONCEBOX_BENCH_BROKERS (bench/run.sh
 * starts the mock cluster in another process).
 *
 *   bench_relay --db CONNINFO [--runs N] [--rows N] [--naive-rows N]
 */
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <oncebox/oncebox.h>

#define SCHEMA "bench_relay"
#define NAIVE_SCHEMA "bench_naive"
#define PAYLOAD_BYTES 200
#define AGGREGATES 10000
#define APPEND_BATCH 1000
#define NAIVE_BATCH 100
#define RUNS_MAX 16

struct bench {
    const char *db;
    const char *brokers;
    PGconn *conn;
    ob_writer_t *writer;
    int runs;
    long rows;
    long naive_rows;
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

/* One figure beside its baseline: "name  M (lo..hi) unit   x ratio". */
static void report(const char *name, double *v, int n, const char *unit,
                   double baseline)
{
    double lo, hi, m = median(v, n, &lo, &hi);

    printf("  %-44s %9.0f %s (%.0f..%.0f)", name, m, unit, lo, hi);
    if (baseline > 0)
        printf("  %6.2fx", m / baseline);
    putchar('\n');
}

/* ---- the backlog ---------------------------------------------------- */

static void aggregate_id(char *out, size_t size, long i)
{
    snprintf(out, size, "00000000-0000-4000-8000-%012ld", i % AGGREGATES);
}

/* A 200-byte JSON object whose "n" is the event's number. */
static void payload(char *out, size_t size, long n)
{
    static const char pad[] = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                              "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                              "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                              "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    int head = snprintf(out, size, "{\"n\": %ld, \"customer\": \"c-%ld\", "
                        "\"total_cents\": %ld, \"note\": \"", n, n % 977,
                        (n * 37) % 100000);

    snprintf(out + head, size - (size_t)head, "%.*s\"}",
             PAYLOAD_BYTES - head - 2, pad);
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
        payload(b->payloads[i], sizeof(b->payloads[i]), first + i);
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

/* ---- the runs ------------------------------------------------------- */

struct figures {
    double naive[RUNS_MAX];
    double raw[RUNS_MAX];
};

static double median_of(const double *v, int n)
{
    double copy[RUNS_MAX], lo, hi;

    memcpy(copy, v, (size_t)n * sizeof(*v));
    return median(copy, n, &lo, &hi);
}

static void run_mode(struct bench *bn, const char *label)
{
    struct figures fg;
    struct message *m;
    long n;
    int r;

    backlog_fill(bn, bn->rows);
    m = messages_load(bn, &n);
    raw_run(bn, m, n < 20000 ? n : 20000); /* warm-up: topic, metadata */
    for (r = 0; r < bn->runs; r++) {
        fg.raw[r] = raw_run(bn, m, n);
        fg.naive[r] = naive_run(bn);
    }
    messages_free(m, n);

    printf("%s\n", label);
    report("baseline 2: raw idempotent producer", fg.raw, bn->runs,
           "msg/s", 0);
    report("baseline 1: naive publisher", fg.naive, bn->runs, "events/s",
           median_of(fg.raw, bn->runs));
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
        {NULL, 0, NULL, 0},
    };
    int c;

    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': bn->db = optarg; break;
        case 'r': bn->runs = atoi(optarg); break;
        case 'n': bn->rows = atol(optarg); break;
        case 'N': bn->naive_rows = atol(optarg); break;
        default: exit(2);
        }
    }
    if (bn->runs < 1 || bn->runs > RUNS_MAX || bn->rows < APPEND_BATCH ||
        bn->naive_rows < NAIVE_BATCH || bn->naive_rows > bn->rows)
        die("usage", "--runs 1..16, --rows >= 1000, --naive-rows from "
                     "100 to --rows");
}

int main(int argc, char **argv)
{
    struct bench bn = {getenv("ONCEBOX_DB"), getenv("ONCEBOX_BENCH_BROKERS"),
                       NULL, NULL, 3, 200000, 5000};

    parse_args(&bn, argc, argv);
    if (bn.brokers == NULL || bn.brokers[0] == '\0')
        die("ONCEBOX_BENCH_BROKERS", "not set (bench/run.sh sets it)");
    bn.conn = PQconnectdb(bn.db != NULL ? bn.db : "");
    if (PQstatus(bn.conn) != CONNECTION_OK)
        die("connect", PQerrorMessage(bn.conn));
    setup(&bn);

    printf("bench_relay: %d-byte payloads, backlog %ld events over %d "
           "aggregates, naive publisher on %ld of them; median of %d runs "
           "(min..max); ratios against the raw producer\n", PAYLOAD_BYTES,
           bn.rows, AGGREGATES, bn.naive_rows, bn.runs);
    exec(bn.conn, "SET synchronous_commit = on");
    run_mode(&bn, "durable (fsync on, synchronous_commit on):");
    exec(bn.conn, "SET synchronous_commit = off");
    run_mode(&bn, "relaxed (synchronous_commit off):");

    ob_writer_destroy(bn.writer);
    PQfinish(bn.conn);
    return 0;
}
