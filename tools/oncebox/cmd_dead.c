/*
 * oncebox dead: the rows the relay parked after its last attempt, and
 * sending them again. "list" only reads; "replay" makes rows pending so
 * the relays publish them, in their place in each aggregate's order.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oncebox/outbox.h"

#include "tools/oncebox/cli.h"

#define LIMIT_DEFAULT 100

enum { OPT_LIMIT = CLI_OPT_FIRST, OPT_JSON, OPT_ID, OPT_ALL };

struct dead_args {
    long long limit;
    int limit_given;
    int json;
    const char *id;
    int all;
};

static int parse_limit(struct dead_args *a, cli_t *cli, const char *arg)
{
    char *end;

    errno = 0;
    a->limit = strtoll(arg, &end, 10);
    if (errno != 0 || end == arg || *end != '\0' || a->limit < 1 ||
        a->limit > 1000000)
        return cli_usage_error(cli, "--limit takes a number from 1 to "
                               "1000000, not \"%s\"", arg);
    a->limit_given = 1;
    return CLI_CONTINUE;
}

static int dead_option(void *opaque, cli_t *cli, int opt, const char *arg)
{
    struct dead_args *a = opaque;

    switch (opt) {
    case OPT_LIMIT: return parse_limit(a, cli, arg);
    case OPT_JSON: a->json = 1; break;
    case OPT_ID: a->id = arg; break;
    case OPT_ALL: a->all = 1; break;
    default: return cli_usage_error(cli, "unknown option");
    }
    return CLI_CONTINUE;
}

static int hex_digit(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
           (c >= 'A' && c <= 'F');
}

/* Checked here too, so that a typo exits 2 before any connection. */
static int id_valid(const char *id)
{
    size_t i;

    if (strlen(id) != 36)
        return 0;
    for (i = 0; i < 36; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;

        if (dash ? id[i] != '-' : !hex_digit(id[i]))
            return 0;
    }
    return 1;
}

/* Text from the database, with control characters shown as '?'. */
static void put_text(const char *s)
{
    for (; s != NULL && *s != '\0'; s++)
        putchar((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s);
}

static void print_row(const ob_parked_t *p, size_t i)
{
    printf("%s  ", ob_parked_id(p, i));
    put_text(ob_parked_aggregate_type(p, i));
    putchar('/');
    put_text(ob_parked_aggregate_id(p, i));
    putchar(' ');
    put_text(ob_parked_event_type(p, i));
    printf("\n    attempts %d, appended %s, topic ",
           ob_parked_retry_count(p, i), ob_parked_created_at(p, i));
    put_text(ob_parked_topic(p, i) != NULL ? ob_parked_topic(p, i)
                                           : "(routed)");
    printf("\n    last error: ");
    put_text(ob_parked_last_error(p, i) != NULL ? ob_parked_last_error(p, i)
                                                : "(none recorded)");
    putchar('\n');
}

static int print_list(cli_t *cli, const ob_parked_t *p, int json)
{
    size_t i, n = ob_parked_count(p);
    ob_error_t err;
    char *text;

    if (json) {
        if (ob_parked_json(p, &text, &err) != 0)
            return cli_fail(cli, "dead list", &err);
        puts(text);
        ob_free(text);
        return CLI_EXIT_OK;
    }
    if (n == 0)
        puts("no parked rows");
    for (i = 0; i < n; i++)
        print_row(p, i);
    if ((long long)n < ob_parked_total(p))
        printf("%zu of %lld parked rows shown (--limit)\n", n,
               ob_parked_total(p));
    return CLI_EXIT_OK;
}

static int dead_list(cli_t *cli, PGconn *conn, const struct dead_args *a)
{
    ob_parked_t *p = NULL;
    ob_error_t err;
    int rc;

    if (ob_parked_new(conn, cli->schema, (size_t)a->limit, &p, &err) != 0)
        return cli_fail(cli, NULL, &err);
    rc = print_list(cli, p, a->json);
    ob_parked_destroy(p);
    return rc;
}

static int dead_replay(cli_t *cli, PGconn *conn, const struct dead_args *a)
{
    long long count = 0;
    ob_error_t err;

    if (ob_parked_replay(conn, cli->schema, a->all ? NULL : a->id, &count,
                         &err) != 0)
        return cli_fail(cli, NULL, &err);
    printf("replayed %lld row%s\n", count, count == 1 ? "" : "s");
    return CLI_EXIT_OK;
}

/* Which action, and whether its options fit it. */
static int args_check(cli_t *cli, const struct dead_args *a, int *replayp)
{
    const char *action = cli->argc > 0 ? cli->argv[0] : NULL;

    if (action == NULL)
        return cli_usage_error(cli, "say 'list' or 'replay'");
    if (cli->argc > 1)
        return cli_usage_error(cli, "unexpected argument '%s'",
                               cli->argv[1]);
    *replayp = strcmp(action, "replay") == 0;
    if (!*replayp && strcmp(action, "list") != 0)
        return cli_usage_error(cli, "unknown action '%s' (list or replay)",
                               action);
    if (!*replayp && (a->id != NULL || a->all))
        return cli_usage_error(cli, "--id and --all belong to 'replay'");
    if (*replayp && (a->limit_given || a->json))
        return cli_usage_error(cli, "--limit and --json belong to 'list'");
    if (*replayp && (a->id != NULL) == a->all)
        return cli_usage_error(cli, "replay takes --id ID or --all");
    if (*replayp && a->id != NULL && !id_valid(a->id))
        return cli_usage_error(cli, "--id: \"%.64s\" is not an event id "
                               "(a UUID as 'dead list' shows it)", a->id);
    return CLI_CONTINUE;
}

static int dead_run(cli_t *cli, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"limit", required_argument, NULL, OPT_LIMIT},
        {"json", no_argument, NULL, OPT_JSON},
        {"id", required_argument, NULL, OPT_ID},
        {"all", no_argument, NULL, OPT_ALL},
        {NULL, 0, NULL, 0},
    };
    struct dead_args a = {.limit = LIMIT_DEFAULT};
    PGconn *conn = NULL;
    int replay = 0;
    int rc = cli_parse(cli, argc, argv, NULL, longopts, dead_option, &a);

    if (rc == CLI_CONTINUE)
        rc = args_check(cli, &a, &replay);
    if (rc != CLI_CONTINUE)
        return rc;

    rc = cli_connect(cli, &conn);
    if (rc != CLI_EXIT_OK)
        return rc;
    rc = replay ? dead_replay(cli, conn, &a) : dead_list(cli, conn, &a);
    PQfinish(conn);
    return rc;
}

const cli_cmd_t cli_cmd_dead = {
    .name = "dead",
    .summary = "list the parked rows, or replay them",
    .synopsis = "dead list [--limit N] [--json] | dead replay (--id ID | "
                "--all) [--db CONNINFO] [--schema NAME]",
    .options =
        "  list           the parked rows, oldest first, with their last "
        "error\n"
        "    --limit N    show at most N rows (default 100)\n"
        "    --json       print one JSON object {total, rows: [...]}\n"
        "  replay         make parked rows pending again: the relays "
        "publish\n"
        "                 them before their aggregates' later rows\n"
        "    --id ID      the row with this event id\n"
        "    --all        every parked row\n"
        "A replayed row gets the relay's full number of attempts again; "
        "its last\nerror stays visible until it is published or fails "
        "anew. Replaying an\nid that is not parked fails (exit 1).\n",
    .run = dead_run,
};
