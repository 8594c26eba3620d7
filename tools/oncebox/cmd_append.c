/*
 * oncebox append: one event in its own transaction, for scripts and
 * operators. The event is checked completely before the database is
 * contacted, so bad input exits 2 with nothing written.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oncebox/outbox.h"

#include "tools/oncebox/cli.h"

enum {
    OPT_AGGREGATE_TYPE = CLI_OPT_FIRST,
    OPT_AGGREGATE_ID,
    OPT_EVENT_TYPE,
    OPT_PAYLOAD,
    OPT_KEY,
    OPT_KEY_MODE,
    OPT_TOPIC,
    OPT_HEADER,
    OPT_JSON
};

struct append_args {
    ob_event_t ev;
    ob_header_t headers[OB_HEADERS_MAX];
    char *header_text[OB_HEADERS_MAX];
    char *payload_text; /* read from a file, or NULL */
    const char *payload_arg;
    int json;
};

/* Reads a whole file, or standard input for "-". */
static char *read_all(const char *path, size_t *lenp)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    size_t len = 0, cap = 4096, n;
    char *buf = NULL, *grown;

    if (f == NULL)
        return NULL;
    while ((grown = realloc(buf, cap + 1)) != NULL) {
        buf = grown;
        n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (len < cap)
            break;
        cap *= 2;
    }
    if (grown == NULL || ferror(f)) {
        free(buf);
        buf = NULL;
    } else {
        buf[len] = '\0';
        *lenp = len;
    }
    if (f != stdin)
        fclose(f);
    return buf;
}

static int add_header(struct append_args *a, cli_t *cli, const char *arg)
{
    size_t i = a->ev.header_count;
    char *eq, *copy;

    if (i == OB_HEADERS_MAX)
        return cli_usage_error(cli, "more than %d --header options",
                               OB_HEADERS_MAX);
    eq = strchr(arg, '=');
    if (eq == NULL || eq == arg)
        return cli_usage_error(cli, "--header takes NAME=VALUE, not \"%s\"",
                               arg);

    copy = strdup(arg);
    if (copy == NULL)
        return cli_error(cli, "out of memory");
    copy[eq - arg] = '\0';
    a->header_text[i] = copy;
    a->headers[i].name = copy;
    a->headers[i].value = copy + (eq - arg) + 1;
    a->ev.headers = a->headers;
    a->ev.header_count = i + 1;
    return CLI_CONTINUE;
}

static int key_mode(cli_t *cli, const char *arg, ob_key_mode_t *mode)
{
    if (strcmp(arg, "event-id") == 0)
        *mode = OB_KEY_MODE_EVENT_ID;
    else if (strcmp(arg, "content") == 0)
        *mode = OB_KEY_MODE_CONTENT;
    else
        return cli_usage_error(cli, "--key-mode is event-id or content, "
                               "not \"%s\"", arg);
    return CLI_CONTINUE;
}

static int append_option(void *opaque, cli_t *cli, int opt, const char *arg)
{
    struct append_args *a = opaque;

    switch (opt) {
    case OPT_AGGREGATE_TYPE: a->ev.aggregate_type = arg; break;
    case OPT_AGGREGATE_ID: a->ev.aggregate_id = arg; break;
    case OPT_EVENT_TYPE: a->ev.event_type = arg; break;
    case OPT_PAYLOAD: a->payload_arg = arg; break;
    case OPT_KEY: a->ev.key = arg; break;
    case OPT_KEY_MODE: return key_mode(cli, arg, &a->ev.key_mode);
    case OPT_TOPIC: a->ev.topic = arg; break;
    case OPT_HEADER: return add_header(a, cli, arg);
    case OPT_JSON: a->json = 1; break;
    default: return cli_usage_error(cli, "unknown option");
    }
    return CLI_CONTINUE;
}

/* "--payload @FILE" reads FILE ("@-": standard input). */
static int payload_load(struct append_args *a, cli_t *cli)
{
    size_t len = 0;

    if (a->payload_arg == NULL)
        return cli_usage_error(cli, "--payload is required");
    if (a->payload_arg[0] != '@') {
        a->ev.payload = a->payload_arg;
        return CLI_CONTINUE;
    }

    a->payload_text = read_all(a->payload_arg + 1, &len);
    if (a->payload_text == NULL)
        return cli_usage_error(cli, "--payload %s: %s", a->payload_arg,
                               strerror(errno ? errno : EIO));
    a->ev.payload = a->payload_text;
    a->ev.payload_len = len;
    return CLI_CONTINUE;
}

static int parse_args(struct append_args *a, cli_t *cli, int argc,
                      char **argv)
{
    static const struct option longopts[] = {
        {"aggregate-type", required_argument, NULL, OPT_AGGREGATE_TYPE},
        {"aggregate-id", required_argument, NULL, OPT_AGGREGATE_ID},
        {"event-type", required_argument, NULL, OPT_EVENT_TYPE},
        {"payload", required_argument, NULL, OPT_PAYLOAD},
        {"key", required_argument, NULL, OPT_KEY},
        {"key-mode", required_argument, NULL, OPT_KEY_MODE},
        {"topic", required_argument, NULL, OPT_TOPIC},
        {"header", required_argument, NULL, OPT_HEADER},
        {"json", no_argument, NULL, OPT_JSON},
        {NULL, 0, NULL, 0},
    };
    int rc = cli_parse(cli, argc, argv, NULL, longopts, append_option, a);

    if (rc == CLI_CONTINUE)
        rc = cli_no_operands(cli);
    if (rc != CLI_CONTINUE)
        return rc;
    if (a->ev.aggregate_type == NULL || a->ev.aggregate_id == NULL ||
        a->ev.event_type == NULL)
        return cli_usage_error(cli, "--aggregate-type, --aggregate-id and "
                               "--event-type are required");
    return payload_load(a, cli);
}

static ob_writer_t *writer_make(cli_t *cli)
{
    ob_conf_t *conf = cli_conf_new(cli);
    ob_writer_t *writer = NULL;
    ob_error_t err;

    if (conf == NULL)
        return NULL;
    if (ob_conf_set(conf, "schema", cli->schema, &err) != 0 ||
        ob_writer_new(&writer, conf, &err) != 0)
        cli_fail(cli, "writer", &err);
    ob_conf_destroy(conf);
    return writer;
}

static void print_result(const struct append_args *a,
                         const ob_append_result_t *res)
{
    if (a->json)
        printf("{\"event_id\": \"%s\", \"idempotency_key\": \"%s\", "
               "\"duplicate\": %s}\n", res->event_id, res->key,
               res->duplicate ? "true" : "false");
    else
        printf("%s %s%s\n", res->event_id, res->key,
               res->duplicate ? " duplicate" : "");
}

static int exec_simple(cli_t *cli, PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;

    PQclear(res);
    if (!ok)
        return cli_error(cli, "%s: %s", sql, PQerrorMessage(conn));
    return CLI_EXIT_OK;
}

/* BEGIN, append, COMMIT: the event is in the outbox when this returns 0. */
static int append_commit(cli_t *cli, ob_writer_t *writer,
                         const struct append_args *a)
{
    ob_append_result_t res;
    PGconn *conn = NULL;
    ob_error_t err;
    int rc;

    rc = cli_connect(cli, &conn);
    if (rc == CLI_EXIT_OK)
        rc = exec_simple(cli, conn, "BEGIN");
    if (rc != CLI_EXIT_OK)
        goto finish;

    if (ob_writer_append(writer, conn, &a->ev, &res, &err) != 0) {
        rc = cli_fail(cli, "append", &err);
        goto finish;
    }
    rc = exec_simple(cli, conn, "COMMIT");
    if (rc == CLI_EXIT_OK) {
        if (res.duplicate)
            cli_log(cli, OB_LOG_NOTICE, "idempotency key %s is already in "
                    "the outbox; nothing added", res.key);
        print_result(a, &res);
    }
finish:
    PQfinish(conn);
    return rc;
}

static int append_run(cli_t *cli, int argc, char **argv)
{
    struct append_args a = {.ev = OB_EVENT_INIT};
    ob_writer_t *writer = NULL;
    ob_error_t err;
    size_t i;
    int rc;

    rc = parse_args(&a, cli, argc, argv);
    if (rc != CLI_CONTINUE)
        goto finish;

    writer = writer_make(cli);
    if (writer == NULL) {
        rc = CLI_EXIT_FAILURE;
        goto finish;
    }
    if (ob_writer_check(writer, &a.ev, &err) != 0)
        rc = cli_fail(cli, "event", &err);
    else
        rc = append_commit(cli, writer, &a);

finish:
    ob_writer_destroy(writer);
    for (i = 0; i < a.ev.header_count; i++)
        free(a.header_text[i]);
    free(a.payload_text);
    return rc;
}

const cli_cmd_t cli_cmd_append = {
    .name = "append",
    .summary = "append one event to the outbox in its own transaction",
    .synopsis = "append [--db CONNINFO] [--schema NAME] --aggregate-type T "
                "--aggregate-id ID --event-type E --payload JSON [--key K] "
                "[--key-mode event-id|content] [--topic TOPIC] "
                "[--header NAME=VALUE]... [--json]",
    .options =
        "  --aggregate-type T   the aggregate's type, e.g. Order\n"
        "  --aggregate-id ID    the aggregate's id: the Kafka message key\n"
        "  --event-type E       the event's type, e.g. OrderPlaced\n"
        "  --payload JSON       the payload; @FILE reads it from FILE, @- "
        "from stdin\n"
        "  --key K              the idempotency key (default: derived)\n"
        "  --key-mode MODE      event-id (default: a new UUIDv7) or "
        "content\n"
        "                       (a hash of the event: equal events "
        "collapse)\n"
        "  --topic TOPIC        publish to TOPIC instead of the routed "
        "topic\n"
        "  --header NAME=VALUE  an extra Kafka header, e.g. traceparent; "
        "repeatable\n"
        "  --json               print the result as one JSON object\n"
        "Prints \"EVENT_ID KEY\", followed by \" duplicate\" when the key "
        "was\nalready in the outbox (nothing added; still exit 0).\n",
    .run = append_run,
};
