/*
 * billing_consumer: a consumer service in miniature, the other end of
 * orders_service.
 *
 * It reads OrderPlaced events ({"order_id", "customer_id",
 * "total_cents"}) and, in the transaction the inbox opened for each
 * event, adds total_cents to the customer's row of billing_balances and
 * records the event in billing_applied. billing_applied has no unique
 * constraint on purpose: if an event were ever applied twice, it would
 * show there as two rows.
 *
 *   billing_consumer --db CONNINFO --brokers LIST [--group billing]
 *                    [--topic order-events] [--idle-exit-ms T]
 *                    [--schema NAME] [--batch-size N] [-X key=value]...
 *                    [--verbose]
 *
 * The database comes from --db, else ONCEBOX_DB, else libpq's PG*
 * variables. -X sets any oncebox or librdkafka ("kafka.") configuration
 * key. It creates the billing tables and migrates the oncebox schema
 * when they are missing, runs until SIGTERM or SIGINT (or T ms without a
 * message), then prints one JSON line of counters:
 *   {"applied": N, "duplicates": N, "dead_letters": N, ...}
 * Exit status: 0 after a clean stop, 1 on failure, 2 on bad usage.
 */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <oncebox/oncebox.h>

static ob_consumer_t *running;

static const char tables_sql[] =
    "CREATE TABLE IF NOT EXISTS billing_balances ("
    " customer_id text PRIMARY KEY, total_cents bigint NOT NULL);"
    "CREATE TABLE IF NOT EXISTS billing_applied ("
    " idempotency_key text NOT NULL, order_id text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())";

static const char balance_sql[] =
    "INSERT INTO billing_balances (customer_id, total_cents)"
    " VALUES ($1, $2::bigint) ON CONFLICT (customer_id) DO UPDATE"
    " SET total_cents = billing_balances.total_cents + EXCLUDED.total_cents";

static const char applied_sql[] =
    "INSERT INTO billing_applied (idempotency_key, order_id) VALUES ($1, $2)";

static void on_signal(int sig)
{
    (void)sig;
    ob_consumer_stop(running); /* only sets a flag: async-signal-safe */
}

static void on_log(void *opaque, int level, const char *facility,
                   const char *message)
{
    (void)opaque;
    fprintf(stderr, "billing_consumer: <%d> [%s] %s\n", level, facility,
            message);
}

/* Fills the handler's err; the text ends up in the dead letters. */
static void reason(ob_error_t *err, int code, const char *what,
                   const char *detail)
{
    memset(err, 0, sizeof(*err));
    err->code = code;
    snprintf(err->message, sizeof(err->message), "%s%s%.400s", what,
             detail != NULL ? ": " : "", detail != NULL ? detail : "");
}

/*
 * A failed statement is reported with its SQLSTATE: a deadlock between
 * two consumers updating one balance is then retried with the whole
 * batch instead of counting as a failure of this event.
 */
static int run_sql(ob_txn_t *txn, const char *sql, int n,
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

/*
 * The handler: both writes go through the inbox's transaction, so they
 * commit together with the claim of the event's key, or not at all.
 * An event without the fields billing needs can never succeed: it is
 * rejected, and goes straight to the dead letters.
 */
static int apply_order(void *opaque, const ob_message_t *msg, ob_txn_t *txn,
                       ob_error_t *err)
{
    json_t *ev = ob_message_json(msg);
    const char *customer = json_string_value(json_object_get(ev,
                                                             "customer_id"));
    const char *order = json_string_value(json_object_get(ev, "order_id"));
    json_t *cents = json_object_get(ev, "total_cents");
    const char *key = ob_message_idempotency_key(msg);
    char amount[32];
    int rc;

    (void)opaque;
    if (customer == NULL || order == NULL || !json_is_integer(cents)) {
        reason(err, OB_EINVAL, "not an order event: customer_id, order_id "
               "(strings) and total_cents (integer) are required", NULL);
        return OB_HANDLER_REJECT;
    }
    snprintf(amount, sizeof(amount), "%" JSON_INTEGER_FORMAT,
             json_integer_value(cents));

    rc = run_sql(txn, balance_sql, 2, (const char *[]){customer, amount},
                 err);
    if (rc == 0)
        rc = run_sql(txn, applied_sql, 2, (const char *[]){key, order}, err);
    return rc;
}

static int exec_ok(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK ||
             PQresultStatus(res) == PGRES_TUPLES_OK;

    if (!ok)
        fprintf(stderr, "billing_consumer: setup: %s",
                PQerrorMessage(conn));
    PQclear(res);
    return ok;
}

/* "already exists, skipping" is expected on every start after the first. */
static void quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* The billing tables and the oncebox schema, created once, under a lock
 * so that two consumers starting together do not collide. */
static int setup_database(const char *db, const char *schema)
{
    PGconn *conn = PQconnectdb(db != NULL ? db : "");
    ob_error_t err;
    int ok = 0;

    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "billing_consumer: %s", PQerrorMessage(conn));
        goto finish;
    }
    PQsetNoticeProcessor(conn, quiet, NULL);
    if (!exec_ok(conn, "BEGIN") ||
        !exec_ok(conn, "SELECT pg_advisory_xact_lock("
                       "hashtext('billing_consumer setup'))"))
        goto finish;
    if (ob_schema_migrate(conn, schema, &err) != 0) {
        fprintf(stderr, "billing_consumer: migrate: %s\n", err.message);
        goto finish;
    }
    ok = exec_ok(conn, tables_sql) && exec_ok(conn, "COMMIT");
finish:
    PQfinish(conn);
    return ok;
}

struct options {
    const char *db;
    const char *brokers;
    const char *group;
    const char *topic;
    const char *schema;
    const char *idle_exit_ms;
    const char *batch_size;
    int verbose;
};

static void usage(void)
{
    fprintf(stderr, "usage: billing_consumer --db CONNINFO --brokers LIST "
            "[--group billing] [--topic order-events] [--idle-exit-ms T] "
            "[--schema NAME] [--batch-size N] [-X key=value]... "
            "[--verbose]\n");
}

/* A -X key=value, applied at once so that a bad one is reported. */
static int set_pair(ob_conf_t *conf, char *pair)
{
    char *eq = strchr(pair, '=');
    ob_error_t err;

    if (eq == NULL) {
        fprintf(stderr, "billing_consumer: -X %s: expected key=value\n",
                pair);
        return -1;
    }
    *eq = '\0';
    if (ob_conf_set(conf, pair, eq + 1, &err) != 0) {
        fprintf(stderr, "billing_consumer: -X %s: %s\n", pair, err.message);
        return -1;
    }
    return 0;
}

static int parse_options(int argc, char **argv, struct options *o,
                         ob_conf_t *conf)
{
    static const struct option longs[] = {
        {"db", required_argument, NULL, 'd'},
        {"brokers", required_argument, NULL, 'b'},
        {"group", required_argument, NULL, 'g'},
        {"topic", required_argument, NULL, 't'},
        {"schema", required_argument, NULL, 's'},
        {"idle-exit-ms", required_argument, NULL, 'i'},
        {"batch-size", required_argument, NULL, 'n'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;

    while ((ch = getopt_long(argc, argv, "X:vh", longs, NULL)) != -1) {
        switch (ch) {
        case 'd': o->db = optarg; break;
        case 'b': o->brokers = optarg; break;
        case 'g': o->group = optarg; break;
        case 't': o->topic = optarg; break;
        case 's': o->schema = optarg; break;
        case 'i': o->idle_exit_ms = optarg; break;
        case 'n': o->batch_size = optarg; break;
        case 'v': o->verbose = 1; break;
        case 'X':
            if (set_pair(conf, optarg) != 0)
                return -1;
            break;
        default: return -1;
        }
    }
    if (optind != argc || o->brokers == NULL)
        return -1;
    if (o->db == NULL)
        o->db = getenv("ONCEBOX_DB");
    return 0;
}

static int configure(ob_conf_t *conf, const struct options *o)
{
    const char *pairs[][2] = {
        {"kafka.bootstrap.servers", o->brokers},
        {"kafka.group.id", o->group},
        {"consumer.topics", o->topic},
        {"schema", o->schema},
        {"consumer.idle.exit.ms", o->idle_exit_ms},
        {"consumer.batch.size", o->batch_size},
    };
    ob_error_t err;
    size_t i;

    for (i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        if (pairs[i][1] == NULL)
            continue;
        if (ob_conf_set(conf, pairs[i][0], pairs[i][1], &err) != 0) {
            fprintf(stderr, "billing_consumer: %s\n", err.message);
            return -1;
        }
    }
    ob_conf_set_log(conf, on_log, NULL,
                    o->verbose ? OB_LOG_INFO : OB_LOG_WARNING);
    return 0;
}

static void print_stats(const ob_consumer_t *c)
{
    ob_consumer_stats_t st = OB_CONSUMER_STATS_INIT;

    ob_consumer_stats(c, &st, NULL);
    printf("{\"applied\": %" PRIu64 ", \"duplicates\": %" PRIu64
           ", \"dead_letters\": %" PRIu64 ", \"key_reused\": %" PRIu64
           ", \"retries\": %" PRIu64 ", \"batches\": %" PRIu64
           ", \"reconnects\": %" PRIu64 "}\n",
           st.applied, st.duplicates, st.dead_letters, st.key_reused,
           st.retries, st.batches, st.reconnects);
    fflush(stdout);
}

static int consume(const struct options *o, ob_conf_t *conf)
{
    struct sigaction sa;
    ob_consumer_t *c = NULL;
    ob_error_t err;
    int rc;

    rc = ob_consumer_new_pg(&c, conf, o->db, &err);
    if (rc == 0)
        rc = ob_consumer_set_handler(c, apply_order, NULL, OB_HANDLER_JSON,
                                     &err);
    if (rc != 0) {
        fprintf(stderr, "billing_consumer: %s\n", err.message);
        ob_consumer_destroy(c);
        return rc == OB_ECONF ? 2 : 1;
    }

    running = c;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    rc = ob_consumer_run(c, &err);
    if (rc != 0)
        fprintf(stderr, "billing_consumer: %s: %s\n", ob_error_name(rc),
                err.message);
    print_stats(c);
    running = NULL;
    ob_consumer_destroy(c);
    return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    struct options o = {NULL, NULL, "billing", "order-events", "oncebox",
                        NULL, NULL, 0};
    ob_conf_t *conf;
    ob_error_t err;
    int rc;

    /* A member that died without leaving holds its partitions until its
     * session times out (45 s by default): 6 s, the least Kafka brokers
     * allow by default, moves them sooner. -X overrides both. */
    if (ob_conf_new(&conf, &err) != 0 ||
        ob_conf_set(conf, "kafka.session.timeout.ms", "6000", &err) != 0 ||
        ob_conf_set(conf, "kafka.heartbeat.interval.ms", "1000", &err) != 0) {
        fprintf(stderr, "billing_consumer: %s\n", err.message);
        ob_conf_destroy(conf);
        return 1;
    }
    if (parse_options(argc, argv, &o, conf) != 0 || configure(conf, &o)) {
        usage();
        ob_conf_destroy(conf);
        return 2;
    }
    rc = setup_database(o.db, o.schema) ? consume(&o, conf) : 1;
    ob_conf_destroy(conf);
    return rc;
}
