/*
 * orders_service: a producer service in miniature.
 *
 * Each order is one transaction that inserts the order row and appends an
 * OrderPlaced event to the outbox on the same connection, so the event
 * exists exactly when the order does. Every M-th transaction rolls back
 * after the append, to show that a rolled-back order leaves no event.
 *
 *   orders_service --db CONNINFO --orders N [--customers K]
 *                  [--rollback-every M] [--seed S] [--schema NAME]
 *
 * The orders table lives beside the outbox, in the schema --schema names
 * (default "oncebox"), so runs against different schemas are independent.
 * The database comes from --db, else ONCEBOX_DB, else libpq's PG*
 * variables. The last line of output is one JSON object:
 *   {"committed": N, "rolled_back": M, "balances": {"c-1": cents, ...}}
 * with the sum of total_cents of the committed orders per customer, so a
 * test can compare what a consumer applied downstream.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <oncebox/oncebox.h>

struct options {
    const char *db;
    const char *schema;
    long orders;
    long customers;
    long rollback_every;
    uint64_t seed;
};

/* SQL for the orders table, qualified with the quoted schema name. */
struct orders_sql {
    char create[512];
    char insert[256];
};

struct tally {
    long committed;
    long rolled_back;
    long long *balances; /* per customer, index 0 is c-1 */
};

/* splitmix64: a small deterministic generator, so --seed repeats runs. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int exec_ok(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;

    if (!ok)
        fprintf(stderr, "orders_service: %s: %s", sql,
                PQerrorMessage(conn));
    PQclear(res);
    return ok;
}

static int insert_order(PGconn *conn, const struct orders_sql *sql,
                        const char *order_id, const char *customer,
                        long long cents)
{
    char amount[32];
    const char *values[3] = {order_id, customer, amount};
    PGresult *res;
    int ok;

    snprintf(amount, sizeof(amount), "%lld", cents);
    res = PQexecParams(conn, sql->insert, 3, NULL, values, NULL, NULL, 0);
    ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "orders_service: insert order: %s",
                PQerrorMessage(conn));
    PQclear(res);
    return ok;
}

/* One order: the domain row and its event in one transaction. */
static int place_order(PGconn *conn, ob_writer_t *writer,
                       const struct orders_sql *sql, long n,
                       const struct options *opt, uint64_t *rng,
                       struct tally *t)
{
    long customer = (long)(next_random(rng) % (uint64_t)opt->customers);
    long long cents = 100 + (long long)(next_random(rng) % 99900);
    int rollback = opt->rollback_every > 0 &&
                   (n + 1) % opt->rollback_every == 0;
    char order_id[OB_UUID_LEN + 1], customer_id[32], payload[256];
    ob_event_t ev = OB_EVENT_INIT;
    ob_error_t err;

    if (ob_key_uuidv7(order_id, &err) != 0)
        goto fail;
    snprintf(customer_id, sizeof(customer_id), "c-%ld", customer + 1);
    snprintf(payload, sizeof(payload), "{\"order_id\": \"%s\", "
             "\"customer_id\": \"%s\", \"total_cents\": %lld}", order_id,
             customer_id, cents);

    ev.aggregate_type = "Order";
    ev.aggregate_id = order_id;
    ev.event_type = "OrderPlaced";
    ev.topic = "order-events";
    ev.payload = payload;

    if (!exec_ok(conn, "BEGIN") ||
        !insert_order(conn, sql, order_id, customer_id, cents))
        return -1;
    if (ob_writer_append(writer, conn, &ev, NULL, &err) != 0)
        goto fail;
    if (!exec_ok(conn, rollback ? "ROLLBACK" : "COMMIT"))
        return -1;

    if (rollback) {
        t->rolled_back++;
    } else {
        t->committed++;
        t->balances[customer] += cents;
    }
    return 0;

fail:
    fprintf(stderr, "orders_service: %s: %s\n", ob_error_name(err.code),
            err.message);
    return -1;
}

static void print_tally(const struct tally *t, long customers)
{
    json_t *out = json_object(), *balances = json_object();
    char name[32];
    char *text;
    long i;

    for (i = 0; i < customers; i++) {
        if (t->balances[i] == 0)
            continue;
        snprintf(name, sizeof(name), "c-%ld", i + 1);
        json_object_set_new(balances, name, json_integer(t->balances[i]));
    }
    json_object_set_new(out, "committed", json_integer(t->committed));
    json_object_set_new(out, "rolled_back", json_integer(t->rolled_back));
    json_object_set_new(out, "balances", balances);

    text = json_dumps(out, JSON_SORT_KEYS);
    printf("%s\n", text != NULL ? text : "{}");
    free(text);
    json_decref(out);
}

static void usage(FILE *to)
{
    fprintf(to, "usage: orders_service --db CONNINFO --orders N "
                "[--customers K] [--rollback-every M] [--seed S] "
                "[--schema NAME]\n");
}

static int parse_long(const char *s, long min, long *out)
{
    char *end;
    long v = strtol(s, &end, 10);

    if (end == s || *end != '\0' || v < min)
        return -1;
    *out = v;
    return 0;
}

static int parse_options(int argc, char **argv, struct options *opt)
{
    static const struct option longopts[] = {
        {"db", required_argument, NULL, 'd'},
        {"orders", required_argument, NULL, 'n'},
        {"customers", required_argument, NULL, 'k'},
        {"rollback-every", required_argument, NULL, 'm'},
        {"seed", required_argument, NULL, 's'},
        {"schema", required_argument, NULL, 'S'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    long seed = 1;
    int c, bad = 0;

    opt->db = getenv("ONCEBOX_DB");
    opt->schema = OB_SCHEMA_DEFAULT;
    opt->orders = -1;
    opt->customers = 10;
    opt->rollback_every = 0;

    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': opt->db = optarg; break;
        case 'S': opt->schema = optarg; break;
        case 'n': bad |= parse_long(optarg, 0, &opt->orders); break;
        case 'k': bad |= parse_long(optarg, 1, &opt->customers); break;
        case 'm': bad |= parse_long(optarg, 0, &opt->rollback_every); break;
        case 's': bad |= parse_long(optarg, 0, &seed); break;
        case 'h': usage(stdout); exit(0);
        default: bad = 1;
        }
    }
    opt->seed = (uint64_t)seed;
    if (bad || optind != argc || opt->orders < 0) {
        usage(stderr);
        return -1;
    }
    return 0;
}

static int prepare(PGconn *conn, const char *schema, struct orders_sql *sql)
{
    char *ident;
    ob_error_t err;

    if (ob_schema_migrate(conn, schema, &err) != 0) {
        fprintf(stderr, "orders_service: migrate: %s\n", err.message);
        return -1;
    }
    ident = PQescapeIdentifier(conn, schema, strlen(schema));
    if (ident == NULL) {
        fprintf(stderr, "orders_service: %s", PQerrorMessage(conn));
        return -1;
    }
    snprintf(sql->create, sizeof(sql->create),
             "CREATE TABLE IF NOT EXISTS %s.orders ("
             "order_id text PRIMARY KEY, customer_id text NOT NULL, "
             "total_cents bigint NOT NULL, "
             "created_at timestamptz NOT NULL DEFAULT now())", ident);
    snprintf(sql->insert, sizeof(sql->insert),
             "INSERT INTO %s.orders (order_id, customer_id, total_cents) "
             "VALUES ($1, $2, $3::bigint)", ident);
    PQfreemem(ident);
    return exec_ok(conn, sql->create) ? 0 : -1;
}

int main(int argc, char **argv)
{
    struct tally t = {0, 0, NULL};
    struct orders_sql sql;
    ob_writer_t *writer = NULL;
    ob_conf_t *conf = NULL;
    struct options opt;
    PGconn *conn = NULL;
    uint64_t rng;
    int status = 1;
    long n;

    if (parse_options(argc, argv, &opt) != 0)
        return 2;

    conn = PQconnectdb(opt.db != NULL ? opt.db : "");
    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "orders_service: connect: %s", PQerrorMessage(conn));
        goto finish;
    }
    if (prepare(conn, opt.schema, &sql) != 0)
        goto finish;
    if (ob_conf_new(&conf, NULL) != 0 ||
        ob_conf_set(conf, "schema", opt.schema, NULL) != 0 ||
        ob_writer_new(&writer, conf, NULL) != 0)
        goto finish;

    t.balances = calloc((size_t)opt.customers, sizeof(*t.balances));
    if (t.balances == NULL)
        goto finish;
    rng = opt.seed;
    for (n = 0; n < opt.orders; n++) {
        if (place_order(conn, writer, &sql, n, &opt, &rng, &t) != 0)
            goto finish;
    }
    print_tally(&t, opt.customers);
    status = 0;

finish:
    free(t.balances);
    ob_writer_destroy(writer);
    ob_conf_destroy(conf);
    PQfinish(conn);
    return status;
}
