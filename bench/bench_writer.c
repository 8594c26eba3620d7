/*
 * bench_writer: what the outbox writer costs a service.
 *
 * Each figure is printed beside the same transaction without the outbox,
 * measured in the same run, and the ratio between them:
 *
 * - batched: transactions that insert B order rows with one statement and
 *   append their B events with one ob_writer_append_batch(), B = 100 and
 *   1000, against the same transactions without the append;
 * - one-row: BEGIN, one order INSERT, one ob_writer_append(), COMMIT,
 *   against BEGIN, INSERT, COMMIT: the time the append adds; and the same
 *   with ob_writer_append_commit(), which sends the append with the
 *   COMMIT in one round trip.
 *
 * Durable (synchronous_commit on, fsync on) first, then relaxed
 * (synchronous_commit off), each the median of RUNS runs with the spread.
 *
 *   bench_writer --db CONNINFO [--runs N] [--scale F]
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>
#include <oncebox/oncebox.h>

#define PAYLOAD_FMT                                                        \
    "{\"order_id\": \"%s\", \"customer_id\": \"c-%d\", "                  \
    "\"total_cents\": %d, \"note\": \"%.*s\"}"
#define PAYLOAD_BYTES 200

struct bench {
    PGconn *conn;
    ob_writer_t *writer;
    int runs;
    double scale;
};

/* One batch of events and the order rows that go with them. */
struct batch {
    int size;
    ob_event_t *events;
    char (*ids)[OB_UUID_LEN + 1];
    char (*payloads)[PAYLOAD_BYTES + 64];
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die_pg(PGconn *conn, const char *what)
{
    fprintf(stderr, "bench_writer: %s: %s", what, PQerrorMessage(conn));
    exit(1);
}

static void exec(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);

    if (PQresultStatus(res) != PGRES_COMMAND_OK &&
        PQresultStatus(res) != PGRES_TUPLES_OK)
        die_pg(conn, sql);
    PQclear(res);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

static double median(double *v, int n, double *lo, double *hi)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    *lo = v[0];
    *hi = v[n - 1];
    return v[n / 2];
}

/* Fresh ids and ~200-byte payloads for the next transaction. */
static void batch_fill(struct batch *b, int seq)
{
    static const char pad[] = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                              "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                              "xxxxxxxxxxxxxxxxxxxxxxxxxx";
    int i;

    for (i = 0; i < b->size; i++) {
        ob_event_t *ev = &b->events[i];

        if (ob_key_uuidv7(b->ids[i], NULL) != 0)
            exit(1);
        snprintf(b->payloads[i], sizeof(b->payloads[i]), PAYLOAD_FMT,
                 b->ids[i], (seq + i) % 100, (seq * 7 + i) % 99999, 80,
                 pad);
        *ev = (ob_event_t)OB_EVENT_INIT;
        ev->aggregate_type = "Order";
        ev->aggregate_id = b->ids[i];
        ev->event_type = "OrderPlaced";
        ev->payload = b->payloads[i];
        ev->topic = "order-events";
    }
}

static void batch_init(struct batch *b, int size)
{
    b->size = size;
    b->events = calloc((size_t)size, sizeof(*b->events));
    b->ids = calloc((size_t)size, sizeof(*b->ids));
    b->payloads = calloc((size_t)size, sizeof(*b->payloads));
    if (b->events == NULL || b->ids == NULL || b->payloads == NULL)
        exit(1);
}

static void batch_free(struct batch *b)
{
    free(b->events);
    free(b->ids);
    free(b->payloads);
}

/* The business write: B order rows in one statement. */
static void insert_orders(PGconn *conn, const struct batch *b, char *ids,
                          size_t cap)
{
    const char *values[1] = {ids};
    size_t len = 0;
    PGresult *res;
    int i;

    len += (size_t)snprintf(ids + len, cap - len, "{");
    for (i = 0; i < b->size; i++)
        len += (size_t)snprintf(ids + len, cap - len, "%s%s",
                                i ? "," : "", b->ids[i]);
    snprintf(ids + len, cap - len, "}");

    res = PQexecParams(conn, "INSERT INTO bench_orders (order_id, "
                       "customer_id, total_cents) SELECT o, 'c-1', 100 "
                       "FROM unnest($1::text[]) AS o", 1, NULL, values,
                       NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        die_pg(conn, "insert orders");
    PQclear(res);
}

/* Events per second of transactions of size B, with or without outbox. */
static double run_batches(struct bench *bn, int size, int txns, int outbox)
{
    size_t cap = (size_t)size * (OB_UUID_LEN + 1) + 8;
    char *ids = malloc(cap);
    struct batch b;
    ob_error_t err;
    double t0, dt;
    int i;

    batch_init(&b, size);
    exec(bn->conn, "TRUNCATE bench_orders, bench_writer.outbox");
    t0 = now_s();
    for (i = 0; i < txns; i++) {
        batch_fill(&b, i * size);
        exec(bn->conn, "BEGIN");
        insert_orders(bn->conn, &b, ids, cap);
        if (outbox && ob_writer_append_batch(bn->writer, bn->conn,
                                             b.events, (size_t)size, NULL,
                                             NULL, &err) != 0) {
            fprintf(stderr, "bench_writer: append: %s\n", err.message);
            exit(1);
        }
        exec(bn->conn, "COMMIT");
    }
    dt = now_s() - t0;
    batch_free(&b);
    free(ids);
    return (double)size * txns / dt;
}

static void report_batches(struct bench *bn, int size, int events)
{
    double with[16], without[16], lo1, hi1, lo2, hi2, m1, m2;
    int txns = events / size, r;

    for (r = 0; r < bn->runs; r++) {
        without[r] = run_batches(bn, size, txns, 0);
        with[r] = run_batches(bn, size, txns, 1);
    }
    m1 = median(with, bn->runs, &lo1, &hi1);
    m2 = median(without, bn->runs, &lo2, &hi2);
    printf("  batch %4d: with outbox %8.0f events/s (%.0f..%.0f)   "
           "orders only %8.0f rows/s (%.0f..%.0f)   ratio %.2f\n",
           size, m1, lo1, hi1, m2, lo2, hi2, m1 / m2);
}

enum { SINGLE_PLAIN, SINGLE_APPEND, SINGLE_APPEND_COMMIT };

static void single_append(struct bench *bn, struct batch *b, int mode)
{
    ob_error_t err;
    int rc = 0;

    if (mode == SINGLE_APPEND)
        rc = ob_writer_append(bn->writer, bn->conn, &b->events[0], NULL,
                              &err);
    else if (mode == SINGLE_APPEND_COMMIT)
        rc = ob_writer_append_commit(bn->writer, bn->conn, b->events, 1,
                                     NULL, NULL, &err);
    if (rc != 0) {
        fprintf(stderr, "bench_writer: append: %s\n", err.message);
        exit(1);
    }
    if (mode != SINGLE_APPEND_COMMIT)
        exec(bn->conn, "COMMIT");
}

/* Microseconds per one-row transaction. */
static double run_single(struct bench *bn, int txns, int mode)
{
    struct batch b;
    double t0;
    char ids[64];
    int i;

    batch_init(&b, 1);
    exec(bn->conn, "TRUNCATE bench_orders, bench_writer.outbox");
    t0 = now_s();
    for (i = 0; i < txns; i++) {
        batch_fill(&b, i);
        exec(bn->conn, "BEGIN");
        insert_orders(bn->conn, &b, ids, sizeof(ids));
        single_append(bn, &b, mode);
    }
    batch_free(&b);
    return (now_s() - t0) * 1e6 / txns;
}

static void report_single(struct bench *bn, int txns)
{
    double plain[16], with[16], piped[16], lo[3], hi[3], m[3];
    int r;

    for (r = 0; r < bn->runs; r++) {
        plain[r] = run_single(bn, txns, SINGLE_PLAIN);
        with[r] = run_single(bn, txns, SINGLE_APPEND);
        piped[r] = run_single(bn, txns, SINGLE_APPEND_COMMIT);
    }
    m[0] = median(plain, bn->runs, &lo[0], &hi[0]);
    m[1] = median(with, bn->runs, &lo[1], &hi[1]);
    m[2] = median(piped, bn->runs, &lo[2], &hi[2]);
    printf("  one-row txn without outbox  %7.1f us (%.1f..%.1f)\n", m[0],
           lo[0], hi[0]);
    printf("  with ob_writer_append       %7.1f us (%.1f..%.1f)   added "
           "%.1f us = %+.1f%%\n", m[1], lo[1], hi[1], m[1] - m[0],
           (m[1] - m[0]) * 100.0 / m[0]);
    printf("  with ob_writer_append_commit%7.1f us (%.1f..%.1f)   added "
           "%.1f us = %+.1f%%\n", m[2], lo[2], hi[2], m[2] - m[0],
           (m[2] - m[0]) * 100.0 / m[0]);
}

static void setup(struct bench *bn)
{
    ob_conf_t *conf;
    ob_error_t err;

    if (ob_schema_migrate(bn->conn, "bench_writer", &err) != 0) {
        fprintf(stderr, "bench_writer: migrate: %s\n", err.message);
        exit(1);
    }
    exec(bn->conn, "CREATE TABLE IF NOT EXISTS bench_orders (order_id text "
                   "PRIMARY KEY, customer_id text NOT NULL, total_cents "
                   "bigint NOT NULL, created_at timestamptz NOT NULL "
                   "DEFAULT now())");
    if (ob_conf_new(&conf, &err) != 0 ||
        ob_conf_set(conf, "schema", "bench_writer", &err) != 0 ||
        ob_writer_new(&bn->writer, conf, &err) != 0) {
        fprintf(stderr, "bench_writer: %s\n", err.message);
        exit(1);
    }
    ob_conf_destroy(conf);
}

static void run_all(struct bench *bn, const char *label)
{
    int big = (int)(100000 * bn->scale), small = (int)(20000 * bn->scale);
    int single = (int)(2000 * bn->scale);

    printf("%s\n", label);
    run_batches(bn, 100, 20, 1); /* warm-up: caches, plans, WAL files */
    report_batches(bn, 100, small < 100 ? 100 : small);
    report_batches(bn, 1000, big < 1000 ? 1000 : big);
    report_single(bn, single < 10 ? 10 : single);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"db", required_argument, NULL, 'd'},
        {"runs", required_argument, NULL, 'r'},
        {"scale", required_argument, NULL, 's'},
        {NULL, 0, NULL, 0},
    };
    struct bench bn = {NULL, NULL, 3, 1.0};
    const char *db = getenv("ONCEBOX_DB");
    int c;

    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': db = optarg; break;
        case 'r': bn.runs = atoi(optarg); break;
        case 's': bn.scale = atof(optarg); break;
        default: return 2;
        }
    }
    if (bn.runs < 1 || bn.runs > 16 || bn.scale <= 0)
        return 2;

    bn.conn = PQconnectdb(db != NULL ? db : "");
    if (PQstatus(bn.conn) != CONNECTION_OK)
        die_pg(bn.conn, "connect");
    setup(&bn);

    printf("bench_writer: %d-byte payloads, 1 client, median of %d runs "
           "(min..max)\n", PAYLOAD_BYTES, bn.runs);
    exec(bn.conn, "SET synchronous_commit = on");
    run_all(&bn, "durable (fsync on, synchronous_commit on):");
    exec(bn.conn, "SET synchronous_commit = off");
    run_all(&bn, "relaxed (synchronous_commit off):");

    ob_writer_destroy(bn.writer);
    PQfinish(bn.conn);
    return 0;
}
