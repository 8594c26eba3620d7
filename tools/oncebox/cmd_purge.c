/*
 * oncebox purge: the retention purge, for cron or a systemd timer. Each
 * table's rows past their retention go in small batches, each its own
 * transaction, so it can run beside the relays and the consumers; an
 * interrupted purge keeps what it removed and the next run goes on.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oncebox/outbox.h"

#include "tools/oncebox/cli.h"

enum {
    OPT_OLDER_THAN = CLI_OPT_FIRST,
    OPT_OUTBOX,
    OPT_INBOX,
    OPT_DEAD_LETTERS,
    OPT_BATCH,
    OPT_JSON
};

/* The longest retention the configuration accepts: ten years. */
#define RETENTION_MAX 315360000LL

struct purge_args {
    const char *older_than;
    long long seconds;
    const char *batch;
    unsigned targets;
    int json;
};

/* Adds one "<digits><unit>" from *p to *total, or fails. */
static int duration_part(const char **p, long long *total)
{
    static const char units[] = "smhd";
    static const long long scale[] = {1, 60, 3600, 86400};
    const char *u;
    char *end;
    long long n;

    if (**p < '0' || **p > '9')
        return -1;
    errno = 0;
    n = strtoll(*p, &end, 10);
    if (errno != 0 || *end == '\0' || (u = strchr(units, *end)) == NULL)
        return -1;
    if (n > RETENTION_MAX / scale[u - units])
        return -1;
    *total += n * scale[u - units];
    *p = end + 1;
    return *total <= RETENTION_MAX ? 0 : -1;
}

/* "7d", "12h", "30m", "45s", or a sum of them such as "1d12h". */
static int parse_duration(const char *s, long long *secondsp)
{
    long long total = 0;

    if (*s == '\0')
        return -1;
    while (*s != '\0') {
        if (duration_part(&s, &total) != 0)
            return -1;
    }
    *secondsp = total;
    return 0;
}

static int purge_option(void *opaque, cli_t *cli, int opt, const char *arg)
{
    struct purge_args *a = opaque;

    switch (opt) {
    case OPT_OLDER_THAN:
        if (parse_duration(arg, &a->seconds) != 0)
            return cli_usage_error(cli, "--older-than takes a duration "
                                   "such as 7d, 12h, 30m or 45s (at most "
                                   "10 years), not \"%s\"", arg);
        a->older_than = arg;
        break;
    case OPT_OUTBOX: a->targets |= OB_PURGE_OUTBOX; break;
    case OPT_INBOX: a->targets |= OB_PURGE_INBOX; break;
    case OPT_DEAD_LETTERS: a->targets |= OB_PURGE_DEAD_LETTERS; break;
    case OPT_BATCH: a->batch = arg; break;
    case OPT_JSON: a->json = 1; break;
    default: return cli_usage_error(cli, "unknown option");
    }
    return CLI_CONTINUE;
}

/* The retention and batch options as configuration; bad values exit 2. */
static ob_conf_t *purge_conf(cli_t *cli, const struct purge_args *a)
{
    static const char *const keys[] = {
        "relay.retention.s", "inbox.retention.s", "dead_letters.retention.s"};
    ob_conf_t *conf = cli_conf_new(cli);
    ob_error_t err;
    char secs[32];
    size_t i;

    if (conf == NULL)
        return NULL;
    snprintf(secs, sizeof(secs), "%lld", a->seconds);
    for (i = 0; a->older_than != NULL && i < 3; i++) {
        if (ob_conf_set(conf, keys[i], secs, &err) != 0)
            goto bad;
    }
    if (a->batch != NULL &&
        ob_conf_set(conf, "purge.batch.size", a->batch, &err) != 0) {
        cli_usage_error(cli, "--batch takes a number from 1 to 100000, "
                        "not \"%s\"", a->batch);
        ob_conf_destroy(conf);
        return NULL;
    }
    return conf;

bad:
    cli_usage_error(cli, "--older-than: %s", err.message);
    ob_conf_destroy(conf);
    return NULL;
}

static void print_result(const struct purge_args *a,
                         const ob_purge_result_t *res)
{
    unsigned t = a->targets;

    if (a->json) {
        printf("{\"outbox\": %lld, \"inbox\": %lld, \"dead_letters\": %lld, "
               "\"statements\": %lld}\n", res->outbox, res->inbox,
               res->dead_letters, res->statements);
        return;
    }
    if (t & OB_PURGE_OUTBOX)
        printf("outbox: %lld published rows removed\n", res->outbox);
    if (t & OB_PURGE_INBOX)
        printf("inbox: %lld keys removed\n", res->inbox);
    if (t & OB_PURGE_DEAD_LETTERS)
        printf("dead letters: %lld removed\n", res->dead_letters);
}

static int purge_work(cli_t *cli, const struct purge_args *a,
                      const ob_conf_t *conf)
{
    ob_purge_result_t res = OB_PURGE_RESULT_INIT;
    PGconn *conn = NULL;
    ob_error_t err;
    int rc = cli_connect(cli, &conn);

    if (rc != CLI_EXIT_OK)
        return rc;
    if (ob_purge(conn, cli->schema, conf, a->targets, &res, &err) != 0) {
        rc = cli_fail(cli, NULL, &err);
        if (res.outbox + res.inbox + res.dead_letters > 0)
            cli_log(cli, OB_LOG_NOTICE, "removed before the failure: "
                    "outbox %lld, inbox %lld, dead letters %lld",
                    res.outbox, res.inbox, res.dead_letters);
    } else {
        print_result(a, &res);
    }
    PQfinish(conn);
    return rc;
}

static int purge_run(cli_t *cli, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"older-than", required_argument, NULL, OPT_OLDER_THAN},
        {"outbox", no_argument, NULL, OPT_OUTBOX},
        {"inbox", no_argument, NULL, OPT_INBOX},
        {"dead-letters", no_argument, NULL, OPT_DEAD_LETTERS},
        {"batch", required_argument, NULL, OPT_BATCH},
        {"json", no_argument, NULL, OPT_JSON},
        {NULL, 0, NULL, 0},
    };
    struct purge_args a = {0};
    ob_conf_t *conf;
    int rc = cli_parse(cli, argc, argv, NULL, longopts, purge_option, &a);

    if (rc == CLI_CONTINUE)
        rc = cli_no_operands(cli);
    if (rc != CLI_CONTINUE)
        return rc;

    if (a.targets == 0)
        a.targets = OB_PURGE_ALL;
    conf = purge_conf(cli, &a);
    if (conf == NULL)
        return CLI_EXIT_USAGE;
    rc = purge_work(cli, &a, conf);
    ob_conf_destroy(conf);
    return rc;
}

const cli_cmd_t cli_cmd_purge = {
    .name = "purge",
    .summary = "purge published rows, inbox keys and dead letters by "
               "retention",
    .synopsis = "purge [--db CONNINFO] [--schema NAME] [--older-than "
                "DURATION] [--outbox] [--inbox] [--dead-letters] "
                "[--batch N] [--json]",
    .options =
        "  --older-than D   retention for every table chosen, e.g. 7d, "
        "12h, 30m,\n"
        "                   45s or 1d12h (default: 7 days for the outbox "
        "and the\n"
        "                   inbox, 30 days for dead letters)\n"
        "  --outbox         published outbox rows (never pending or "
        "parked ones)\n"
        "  --inbox          claimed inbox keys: keep them longer than any "
        "event\n"
        "                   can be delivered again, or duplicates get "
        "through\n"
        "  --dead-letters   recorded dead letters\n"
        "                   (none of the three: all of them)\n"
        "  --batch N        rows per DELETE, each its own transaction "
        "(default 1000)\n"
        "  --json           print {outbox, inbox, dead_letters, "
        "statements}\n",
    .run = purge_run,
};
