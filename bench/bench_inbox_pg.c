/*
 * bench_inbox_pg: messages per second through the PostgreSQL inbox with
 * the billing handler of examples/billing_consumer.c, beside a naive
 * consumer and a ceiling, measured in the same run.
 *
 * - oncebox: ob_consumer_run() with batches of 1, 100 and 1000 messages
 *   per transaction, the handler adding to billing_balances and
 *   inserting into billing_applied (two statements per message);
 * - oncebox with a batch handler (ob_consumer_set_batch_handler()): the
 *   same rows with two multi-row statements per batch;
 * - naive: a librdkafka consumer that opens one transaction per message,
 *   checks the inbox with a SELECT, inserts the key, runs the same two
 *   statements and upserts the partition's offset;
 * - ceiling: the same rows (inbox keys, billing_applied rows, balance
 *   updates, offsets) written with one multi-row statement each, 1000
 *   messages per transaction, no Kafka and no per-message work at all.
 *
 * The messages (about 110-byte JSON values with the wire contract's
 * headers, 4 topics of 4 partitions) are produced into the mock broker
 * once, before
 * any measurement; every run reads them from the start with its own
 * consumer group and schema, and the clock runs from the first message
 * to the last commit, so the group join is not counted. Durable
 * (synchronous_commit on) first, then relaxed (off), each the median of
 * --runs runs with the spread.
 *
 *   bench_inbox_pg --db CONNINFO [--runs N] [--scale F]
 *
 * The brokers come from ONCEBOX_BENCH_BROKERS. --scale multiplies every
 * message count: 200,000 produced; each run reads from the start of that
 * backlog 200,000 with the batch handler and for the ceiling, 20,000
 * with the per-message handler, 5,000 for batch 1 and the naive consumer
 * (bound by one commit per message), so that a whole run takes minutes.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <oncebox/oncebox.h>

#define RUNS_MAX 9

/*
 * The mock broker keeps about 5 MB per partition and drops older
 * messages, and gives auto-created topics 4 partitions: the backlog goes
 * round robin to 4 topics, 16 partitions in all, which hold all of it.
 */
#define TOPICS 4
#define PARTITIONS 4

struct bench {
    const char *db;
    const char *brokers;
    char topic[TOPICS][64];
    char topic_list[TOPICS * 64];
    int runs;
    double scale;
    long produced;
    int seq; /* makes schema and group names unique */
};

/* What one consumer run measures. */
struct run {
    const char *schema;
    int batched; /* the batch handler writes the rows */
    long target;
    long handled;
    double first, last;
    ob_consumer_t *c;
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "bench_inbox_pg: %s: %s\n", what, detail);
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

static PGresult *exec_params(PGconn *conn, const char *sql, int n,
                             const char *const *values)
{
    PGresult *res = PQexecParams(conn, sql, n, NULL, values, NULL, NULL, 0);

    if (PQresultStatus(res) != PGRES_COMMAND_OK &&
        PQresultStatus(res) != PGRES_TUPLES_OK)
        die(sql, PQerrorMessage(conn));
    return res;
}

static PGconn *connect_db(const struct bench *b, int relaxed)
{
    char conninfo[2048];
    PGconn *conn;

    snprintf(conninfo, sizeof(conninfo), "%s%s", b->db,
             relaxed ? " options='-c synchronous_commit=off'" : "");
    conn = PQconnectdb(conninfo);
    if (PQstatus(conn) != CONNECTION_OK)
        die("connect", PQerrorMessage(conn));
    return conn;
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

/* Every message must still be there: a broker that dropped the oldest
 * would make every run wait for them. */
static void check_backlog(rd_kafka_t *rk, const struct bench *b)
{
    int64_t lo, hi, total = 0;
    int t, p;

    for (t = 0; t < TOPICS; t++) {
        for (p = 0; p < PARTITIONS; p++) {
            if (rd_kafka_query_watermark_offsets(rk, b->topic[t], p, &lo,
                                                 &hi, 60000) != 0 || lo != 0)
                die("backlog", "the broker dropped messages (or gave no "
                    "watermarks): spread them over more partitions");
            total += hi;
        }
    }
    if (total != b->produced)
        die("backlog", "the topic does not hold every message produced");
}

/* The messages every run reads: order i, key o-i, customer c-(i % 100). */
static void produce_all(struct bench *b)
{
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    char errstr[256], key[32], value[160];
    rd_kafka_t *rk;
    long i;

    rd_kafka_conf_set(kc, "bootstrap.servers", b->brokers, NULL, 0);
    rd_kafka_conf_set(kc, "linger.ms", "20", NULL, 0);
    rd_kafka_conf_set(kc, "queue.buffering.max.messages", "1000000", NULL, 0);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, errstr, sizeof(errstr));
    if (rk == NULL)
        die("producer", errstr);
    for (i = 0; i < b->produced; i++) {
        rd_kafka_headers_t *h = rd_kafka_headers_new(2);
        rd_kafka_resp_err_t e;

        snprintf(key, sizeof(key), "o-%ld", i);
        snprintf(value, sizeof(value), "{\"order_id\": \"%s\", "
                 "\"customer_id\": \"c-%ld\", \"total_cents\": %ld, "
                 "\"currency\": \"EUR\"}", key, i % 100, 100 + i % 9900);
        rd_kafka_header_add(h, "idempotency-key", -1, key, -1);
        rd_kafka_header_add(h, "content-type", -1, "application/json", -1);
        e = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(b->topic[i % TOPICS]),
                              RD_KAFKA_V_KEY(key, strlen(key)),
                              RD_KAFKA_V_VALUE(value, strlen(value)),
                              RD_KAFKA_V_HEADERS(h),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                              RD_KAFKA_V_END);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
            die("produce", rd_kafka_err2str(e));
        rd_kafka_poll(rk, 0);
    }
    if (rd_kafka_flush(rk, 120000) != RD_KAFKA_RESP_ERR_NO_ERROR)
        die("produce", "flush did not finish");
    check_backlog(rk, b);
    rd_kafka_destroy(rk);
}

/* A fresh schema with the oncebox tables and the billing tables. */
static void schema_create(PGconn *conn, const char *schema)
{
    char sql[1024];
    ob_error_t err;

    if (ob_schema_migrate(conn, schema, &err) != 0)
        die("migrate", err.message);
    snprintf(sql, sizeof(sql),
             "CREATE TABLE %s.billing_balances (customer_id text PRIMARY "
             "KEY, total_cents bigint NOT NULL);"
             "CREATE TABLE %s.billing_applied (idempotency_key text NOT "
             "NULL, order_id text NOT NULL)", schema, schema);
    exec(conn, sql);
}

static void schema_drop(PGconn *conn, const char *schema)
{
    char sql[256];

    snprintf(sql, sizeof(sql), "DROP SCHEMA %s CASCADE", schema);
    exec(conn, sql);
}

/* The billing statements of the example, on tables of schema. */
static void billing_sql(const char *schema, char *balance, char *applied,
                        size_t size)
{
    snprintf(balance, size, "INSERT INTO %s.billing_balances (customer_id, "
             "total_cents) VALUES ($1, $2::bigint) ON CONFLICT (customer_id) "
             "DO UPDATE SET total_cents = billing_balances.total_cents + "
             "EXCLUDED.total_cents", schema);
    snprintf(applied, size, "INSERT INTO %s.billing_applied "
             "(idempotency_key, order_id) VALUES ($1, $2)", schema);
}

/* The event's fields, as billing reads them. 0 when they are there. */
static int order_fields(json_t *ev, const char **customer, const char **order,
                        char *amount, size_t size)
{
    json_t *cents = json_object_get(ev, "total_cents");

    *customer = json_string_value(json_object_get(ev, "customer_id"));
    *order = json_string_value(json_object_get(ev, "order_id"));
    if (*customer == NULL || *order == NULL || !json_is_integer(cents))
        return -1;
    snprintf(amount, size, "%" JSON_INTEGER_FORMAT, json_integer_value(cents));
    return 0;
}

static int handler(void *opaque, const ob_message_t *msg, ob_txn_t *txn,
                   ob_error_t *err)
{
    struct run *r = opaque;
    char balance[512], applied[512], amount[32];
    const char *customer, *order, *key = ob_message_idempotency_key(msg);
    PGconn *conn = ob_txn_pg(txn);
    PGresult *res;
    int rc = 0;

    if (r->handled++ == 0)
        r->first = now_s();
    if (order_fields(ob_message_json(msg), &customer, &order, amount,
                     sizeof(amount)) != 0)
        return OB_HANDLER_REJECT;
    billing_sql(r->schema, balance, applied, sizeof(balance));
    res = PQexecParams(conn, balance, 2, NULL,
                       (const char *[]){customer, amount}, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = ob_txn_pg_error(txn, res, err);
    PQclear(res);
    if (rc == 0) {
        res = PQexecParams(conn, applied, 2, NULL,
                           (const char *[]){key, order}, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            rc = ob_txn_pg_error(txn, res, err);
        PQclear(res);
    }
    if (r->handled == r->target)
        ob_consumer_stop(r->c);
    return rc;
}

/* Appends s as one quoted element of an array literal. */
static char *array_add(char *p, const char *s)
{
    return p + sprintf(p, "%s\"%s\"", p[-1] == '{' ? "" : ",", s);
}

static int batch_exec(ob_txn_t *txn, const char *sql, int n,
                      const char *const *values, ob_error_t *err)
{
    PGresult *res = PQexecParams(ob_txn_pg(txn), sql, n, NULL, values, NULL,
                                 NULL, 0);
    int rc = 0;

    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = ob_txn_pg_error(txn, res, err);
    PQclear(res);
    return rc;
}

/* The billing handler for a whole batch: two multi-row statements. */
static int batch_handler(void *opaque, const ob_message_t *const *msgs,
                         size_t n, ob_txn_t *txn, ob_error_t *err)
{
    struct run *r = opaque;
    char *a[4], *p[4], sql[1024], amount[32];
    const char *customer, *order;
    size_t i;
    int j, rc = 0;

    if (r->handled == 0)
        r->first = now_s();
    for (j = 0; j < 4; j++) {
        p[j] = a[j] = malloc(n * (OB_KEY_MAX + 4) + 4);
        *p[j]++ = '{';
        *p[j] = '\0';
    }
    for (i = 0; i < n && rc == 0; i++) {
        if (order_fields(ob_message_json(msgs[i]), &customer, &order,
                         amount, sizeof(amount)) != 0)
            rc = OB_HANDLER_REJECT;
        p[0] = array_add(p[0], ob_message_idempotency_key(msgs[i]));
        p[1] = array_add(p[1], order);
        p[2] = array_add(p[2], customer);
        p[3] = array_add(p[3], amount);
    }
    for (j = 0; j < 4; j++)
        strcpy(p[j], "}");
    snprintf(sql, sizeof(sql), "INSERT INTO %s.billing_applied SELECT * "
             "FROM unnest($1::text[], $2::text[])", r->schema);
    if (rc == 0)
        rc = batch_exec(txn, sql, 2, (const char *const *)a, err);
    snprintf(sql, sizeof(sql), "INSERT INTO %s.billing_balances SELECT c, "
             "sum(v) FROM unnest($1::text[], $2::bigint[]) AS u(c, v) GROUP "
             "BY c ON CONFLICT (customer_id) DO UPDATE SET total_cents = "
             "billing_balances.total_cents + EXCLUDED.total_cents", r->schema);
    if (rc == 0)
        rc = batch_exec(txn, sql, 2, (const char *const *)a + 2, err);
    for (j = 0; j < 4; j++)
        free(a[j]);
    r->handled += (long)n;
    if (r->handled >= r->target)
        ob_consumer_stop(r->c);
    return rc;
}

static ob_consumer_t *bench_consumer(struct bench *b, const char *schema,
                                     int batch, int relaxed)
{
    char group[64], size[16], conninfo[2048];
    ob_consumer_t *c;
    ob_conf_t *conf;
    ob_error_t err;

    snprintf(group, sizeof(group), "bench-%d-%d", (int)getpid(), ++b->seq);
    snprintf(size, sizeof(size), "%d", batch);
    snprintf(conninfo, sizeof(conninfo), "%s%s", b->db,
             relaxed ? " options='-c synchronous_commit=off'" : "");
    if (ob_conf_new(&conf, &err) != 0 ||
        ob_conf_set(conf, "kafka.bootstrap.servers", b->brokers, &err) ||
        ob_conf_set(conf, "kafka.group.id", group, &err) ||
        ob_conf_set(conf, "consumer.topics", b->topic_list, &err) ||
        ob_conf_set(conf, "schema", schema, &err) ||
        ob_conf_set(conf, "consumer.batch.size", size, &err) ||
        ob_conf_set(conf, "kafka.session.timeout.ms", "6000", &err) ||
        ob_consumer_new_pg(&c, conf, conninfo, &err) != 0)
        die("consumer", err.message);
    ob_conf_destroy(conf);
    return c;
}

/*
 * Messages per second of one oncebox run over count messages; batch
 * negative: -batch messages per transaction, with the batch handler.
 */
static double oncebox_run(struct bench *b, int batch, int relaxed,
                          long count)
{
    PGconn *conn = connect_db(b, 0);
    char schema[64];
    struct run r;
    ob_consumer_stats_t st = OB_CONSUMER_STATS_INIT;
    ob_error_t err;

    snprintf(schema, sizeof(schema), "bench_inbox_%d_%d", (int)getpid(),
             b->seq + 1);
    schema_create(conn, schema);
    memset(&r, 0, sizeof(r));
    r.schema = schema;
    r.target = count;
    r.batched = batch < 0;
    r.c = bench_consumer(b, schema, batch < 0 ? -batch : batch, relaxed);
    if (ob_consumer_set_handler(r.c, handler, &r, OB_HANDLER_JSON, &err) ||
        (r.batched &&
         ob_consumer_set_batch_handler(r.c, batch_handler, &r, &err)) ||
        ob_consumer_run(r.c, &err) != 0)
        die("run", err.message);
    r.last = now_s();
    ob_consumer_stats(r.c, &st, NULL);
    ob_consumer_destroy(r.c);
    schema_drop(conn, schema);
    PQfinish(conn);
    return (double)st.applied / (r.last - r.first);
}

/* The naive consumer's statements, prepared on conn. */
static void naive_prepare(PGconn *conn, const char *schema)
{
    char sql[5][512];
    const char *names[5] = {"check", "claim", "balance", "applied", "off"};
    int i;

    snprintf(sql[0], sizeof(sql[0]), "SELECT 1 FROM %s.inbox WHERE "
             "namespace = 'naive' AND idempotency_key = $1", schema);
    snprintf(sql[1], sizeof(sql[1]), "INSERT INTO %s.inbox (namespace, "
             "idempotency_key, payload_hash) VALUES ('naive', $1, "
             "sha256(convert_to($2, 'UTF8')))", schema);
    billing_sql(schema, sql[2], sql[3], sizeof(sql[2]));
    snprintf(sql[4], sizeof(sql[4]), "INSERT INTO %s.consumer_offsets "
             "(consumer_group, topic, \"partition\", next_offset) VALUES "
             "('naive', $1, $2::integer, $3::bigint) ON CONFLICT "
             "ON CONSTRAINT consumer_offsets_pkey DO UPDATE SET next_offset "
             "= EXCLUDED.next_offset", schema);
    for (i = 0; i < 5; i++) {
        PGresult *res = PQprepare(conn, names[i], sql[i], 0, NULL);

        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            die(names[i], PQerrorMessage(conn));
        PQclear(res);
    }
}

static void naive_exec(PGconn *conn, const char *name, int n,
                       const char *const *values, PGresult **out)
{
    PGresult *res = PQexecPrepared(conn, name, n, values, NULL, NULL, 0);

    if (PQresultStatus(res) != PGRES_COMMAND_OK &&
        PQresultStatus(res) != PGRES_TUPLES_OK)
        die(name, PQerrorMessage(conn));
    if (out != NULL)
        *out = res;
    else
        PQclear(res);
}

/* One message the naive way: its own transaction, SELECT then INSERT. */
static void naive_one(PGconn *conn, const rd_kafka_message_t *m)
{
    char *value = strndup(m->payload, m->len), *k;
    char part[16], next[24], amount[32];
    const char *customer, *order;
    const void *key = NULL;
    rd_kafka_headers_t *h = NULL;
    json_t *ev = json_loads(value, JSON_DECODE_ANY, NULL);
    PGresult *res;
    size_t len = 0;

    rd_kafka_message_headers(m, &h);
    rd_kafka_header_get_last(h, "idempotency-key", &key, &len);
    k = strndup(key != NULL ? key : "", len);
    snprintf(part, sizeof(part), "%d", (int)m->partition);
    snprintf(next, sizeof(next), "%lld", (long long)m->offset + 1);

    exec(conn, "BEGIN");
    naive_exec(conn, "check", 1, (const char *[]){k}, &res);
    if (PQntuples(res) == 0 && ev != NULL &&
        order_fields(ev, &customer, &order, amount, sizeof(amount)) == 0) {
        naive_exec(conn, "claim", 2, (const char *[]){k, value}, NULL);
        naive_exec(conn, "balance", 2, (const char *[]){customer, amount},
                   NULL);
        naive_exec(conn, "applied", 2, (const char *[]){k, order}, NULL);
    }
    PQclear(res);
    naive_exec(conn, "off", 3,
               (const char *[]){rd_kafka_topic_name(m->rkt), part, next},
               NULL);
    exec(conn, "COMMIT");
    json_decref(ev);
    free(k);
    free(value);
}

static rd_kafka_t *naive_consumer(const struct bench *b)
{
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    rd_kafka_topic_partition_list_t *parts;
    char errstr[256];
    rd_kafka_t *rk;
    int t, p;

    rd_kafka_conf_set(kc, "bootstrap.servers", b->brokers, NULL, 0);
    rd_kafka_conf_set(kc, "group.id", "bench-naive", NULL, 0);
    rd_kafka_conf_set(kc, "enable.auto.commit", "false", NULL, 0);
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, errstr, sizeof(errstr));
    if (rk == NULL)
        die("naive consumer", errstr);
    parts = rd_kafka_topic_partition_list_new(TOPICS * PARTITIONS);
    for (t = 0; t < TOPICS; t++) {
        for (p = 0; p < PARTITIONS; p++)
            rd_kafka_topic_partition_list_add(parts, b->topic[t], p)->offset =
                RD_KAFKA_OFFSET_BEGINNING;
    }
    rd_kafka_assign(rk, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    return rk;
}

static double naive_run(struct bench *b, int relaxed, long count)
{
    PGconn *conn = connect_db(b, relaxed);
    rd_kafka_t *rk = naive_consumer(b);
    char schema[64];
    double t0 = 0;
    long n = 0;

    snprintf(schema, sizeof(schema), "bench_naive_%d_%d", (int)getpid(),
             ++b->seq);
    schema_create(conn, schema);
    naive_prepare(conn, schema);
    while (n < count) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 1000);

        if (m == NULL || m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            if (m != NULL)
                rd_kafka_message_destroy(m);
            continue;
        }
        if (n++ == 0)
            t0 = now_s();
        naive_one(conn, m);
        rd_kafka_message_destroy(m);
    }
    t0 = (double)n / (now_s() - t0);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    schema_drop(conn, schema);
    PQfinish(conn);
    return t0;
}

/* Appends one element to an array literal being built in b. */
static void elem(char **p, const char *s)
{
    *p += sprintf(*p, "%s\"%s\"", (*p)[-1] == '{' ? "" : ",", s);
}

/* One ceiling transaction: the rows of messages first .. first+n-1. */
static void ceiling_txn(PGconn *conn, const char *schema, long first, int n,
                        char **arr, char *sql)
{
    char key[32], cust[32], cents[32], *p[4];
    const char *values[4];
    long i;
    int j;

    for (j = 0; j < 4; j++) {
        p[j] = arr[j];
        *p[j]++ = '{';
    }
    for (i = first; i < first + n; i++) {
        snprintf(key, sizeof(key), "o-%ld", i);
        snprintf(cust, sizeof(cust), "c-%ld", i % 100);
        snprintf(cents, sizeof(cents), "%ld", 100 + i % 9900);
        elem(&p[0], key);
        elem(&p[1], cust);
        elem(&p[2], cents);
        elem(&p[3], "0000000000000000000000000000000000000000000000000000"
                    "000000000000");
    }
    for (j = 0; j < 4; j++) {
        strcpy(p[j], "}");
        values[j] = arr[j];
    }
    exec(conn, "BEGIN");
    snprintf(sql, 1024, "INSERT INTO %s.inbox (namespace, idempotency_key, "
             "payload_hash) SELECT 'ceiling', k, decode(h, 'hex') FROM "
             "unnest($1::text[], $4::text[]) AS u(k, h) WHERE $2::text[] "
             "IS NOT NULL AND $3::text[] IS NOT NULL", schema);
    PQclear(exec_params(conn, sql, 4, values));
    snprintf(sql, 1024, "INSERT INTO %s.billing_applied SELECT k, k FROM "
             "unnest($1::text[]) AS k", schema);
    PQclear(exec_params(conn, sql, 1, values));
    snprintf(sql, 1024, "INSERT INTO %s.billing_balances SELECT c, "
             "sum(a::bigint) FROM unnest($1::text[], $2::text[]) AS u(c, a) "
             "GROUP BY c ON CONFLICT (customer_id) DO UPDATE SET total_cents "
             "= billing_balances.total_cents + EXCLUDED.total_cents", schema);
    PQclear(exec_params(conn, sql, 2, values + 1));
    snprintf(sql, 1024, "INSERT INTO %s.consumer_offsets SELECT 'ceiling', "
             "'t', p, 1 FROM generate_series(0, 15) p ON CONFLICT ON "
             "CONSTRAINT consumer_offsets_pkey DO UPDATE SET next_offset = "
             "consumer_offsets.next_offset + 1", schema);
    exec(conn, sql);
    exec(conn, "COMMIT");
}

/* Rows per second of plain batched inserts of what the consumer writes. */
static double ceiling_run(struct bench *b, int relaxed, long count)
{
    PGconn *conn = connect_db(b, relaxed);
    char schema[64], sql[1024], *arr[4];
    double t0;
    long i;
    int j;

    snprintf(schema, sizeof(schema), "bench_ceiling_%d_%d", (int)getpid(),
             ++b->seq);
    schema_create(conn, schema);
    for (j = 0; j < 4; j++) {
        arr[j] = malloc(1000 * 80 + 16);
        if (arr[j] == NULL)
            die("ceiling", "out of memory");
    }
    t0 = now_s();
    for (i = 0; i < count; i += 1000)
        ceiling_txn(conn, schema, i, count - i < 1000 ? (int)(count - i)
                                                      : 1000, arr, sql);
    t0 = (double)count / (now_s() - t0);
    for (j = 0; j < 4; j++)
        free(arr[j]);
    schema_drop(conn, schema);
    PQfinish(conn);
    return t0;
}

/* Microseconds of one round trip (SELECT 1), the unit that bounds the
 * per-message work: the median of 2000. */
static double round_trip_us(struct bench *b)
{
    PGconn *conn = connect_db(b, 0);
    static double t[2000];
    double lo, hi, t0;
    int i;

    for (i = 0; i < 2000; i++) {
        t0 = now_s();
        PQclear(exec_params(conn, "SELECT 1", 0, NULL));
        t[i] = (now_s() - t0) * 1e6;
    }
    PQfinish(conn);
    return median(t, 2000, &lo, &hi);
}

struct figure {
    double median, lo, hi;
};

typedef double (*run_fn)(struct bench *b, int arg, int relaxed, long count);

static double run_oncebox(struct bench *b, int batch, int relaxed, long n)
{
    return oncebox_run(b, batch, relaxed, n);
}

static double run_naive(struct bench *b, int arg, int relaxed, long n)
{
    (void)arg;
    return naive_run(b, relaxed, n);
}

static double run_ceiling(struct bench *b, int arg, int relaxed, long n)
{
    (void)arg;
    return ceiling_run(b, relaxed, n);
}

static struct figure measure(struct bench *b, run_fn fn, int arg,
                             int relaxed, long count)
{
    double v[RUNS_MAX];
    struct figure f;
    int r;

    for (r = 0; r < b->runs; r++)
        v[r] = fn(b, arg, relaxed, count);
    f.median = median(v, b->runs, &f.lo, &f.hi);
    return f;
}

static void print_figure(const char *what, const struct figure *f,
                         const char *unit, const struct figure *naive)
{
    printf("  %-34s %8.0f %s (%.0f..%.0f)", what, f->median, unit, f->lo,
           f->hi);
    if (naive != NULL)
        printf("  %5.1fx naive", f->median / naive->median);
    printf("\n");
}

static void report(struct bench *b, int relaxed)
{
    long small = (long)(5000 * b->scale), mid = (long)(20000 * b->scale);
    long big = (long)(200000 * b->scale), n;
    static const int batches[] = {1, 100, 1000, -100, -1000};
    struct figure naive, ceiling, f;
    char what[64];
    size_t i;

    printf("%s:\n", relaxed ? "relaxed (synchronous_commit off)"
                            : "durable (synchronous_commit on, fsync on)");
    naive = measure(b, run_naive, 0, relaxed, small);
    print_figure("naive: 1 txn/message, SELECT first", &naive, "msg/s",
                 NULL);
    ceiling = measure(b, run_ceiling, 0, relaxed, big);
    print_figure("ceiling: batched inserts, no Kafka", &ceiling, "rows/s",
                 &naive);
    for (i = 0; i < sizeof(batches) / sizeof(batches[0]); i++) {
        n = batches[i] == 1 ? small : batches[i] > 0 ? mid : big;
        snprintf(what, sizeof(what), "oncebox, batch %d%s", abs(batches[i]),
                 batches[i] < 0 ? ", batch handler" : "");
        f = measure(b, run_oncebox, batches[i], relaxed, n);
        print_figure(what, &f, "msg/s", &naive);
        printf("  %-34s %.2f of the ceiling\n", "", f.median /
               ceiling.median);
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_inbox_pg --db CONNINFO [--runs N] "
            "[--scale F]  (brokers from ONCEBOX_BENCH_BROKERS)\n");
    exit(2);
}

static void parse(int argc, char **argv, struct bench *b)
{
    static const struct option longs[] = {
        {"db", required_argument, NULL, 'd'},
        {"runs", required_argument, NULL, 'r'},
        {"scale", required_argument, NULL, 's'},
        {NULL, 0, NULL, 0},
    };
    int ch;

    while ((ch = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        if (ch == 'd')
            b->db = optarg;
        else if (ch == 'r')
            b->runs = atoi(optarg);
        else if (ch == 's')
            b->scale = atof(optarg);
        else
            usage();
    }
    b->brokers = getenv("ONCEBOX_BENCH_BROKERS");
    if (b->db == NULL || b->brokers == NULL || b->runs < 1 ||
        b->runs > RUNS_MAX || b->scale <= 0 || b->scale > 10)
        usage();
}

int main(int argc, char **argv)
{
    struct bench b = {NULL, NULL, {""}, "", 3, 1.0, 0, 0};
    int i;

    parse(argc, argv, &b);
    b.produced = (long)(200000 * b.scale);
    for (i = 0; i < TOPICS; i++) {
        snprintf(b.topic[i], sizeof(b.topic[i]), "bench-inbox-%d-%d",
                 (int)getpid(), i);
        snprintf(b.topic_list + strlen(b.topic_list),
                 sizeof(b.topic_list) - strlen(b.topic_list), "%s%s",
                 i > 0 ? "," : "", b.topic[i]);
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    produce_all(&b);
    printf("bench_inbox_pg: %ld messages of ~110 bytes in %d partitions "
           "(%d topics) of the mock broker, the billing handler (2 "
           "statements per message; the batch handler: 2 per batch), 1 "
           "consumer process; "
           "runs read %ld (batch handler, ceiling), %ld (handler), %ld "
           "(batch 1, naive); median of %d runs (min..max); round trip to "
           "PostgreSQL %.0f us\n", b.produced, TOPICS * PARTITIONS, TOPICS,
           (long)(200000 * b.scale), (long)(20000 * b.scale),
           (long)(5000 * b.scale), b.runs, round_trip_us(&b));

    /* A short run first, so that caches and the broker are warm. */
    oncebox_run(&b, 100, 0, (long)(2000 * b.scale) + 1);
    report(&b, 0);
    report(&b, 1);
    return 0;
}
