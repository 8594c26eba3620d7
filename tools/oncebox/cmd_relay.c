/*
 * oncebox relay: publishes the outbox to Kafka until SIGTERM or SIGINT
 * (or, with --once, until the backlog is published), through the
 * library's polling relay.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "oncebox/relay.h"

#include "tools/oncebox/cli.h"

enum { OPT_BROKERS = CLI_OPT_FIRST, OPT_MODE, OPT_ONCE, OPT_LANES };

/* How often a running relay logs its counters at info level. */
#define REPORT_INTERVAL_S 10

struct relay_args {
    ob_conf_t *conf;
    int once;
    int have_brokers;
};

struct report {
    cli_t *cli;
    time_t last;
    uint64_t published_then;
};

/* The signal handler's only way to the relay. */
static ob_relay_t *volatile running_relay;

static void on_signal(int sig)
{
    (void)sig;
    ob_relay_stop(running_relay);
}

static int signals_catch(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0 ||
        sigaction(SIGINT, &sa, NULL) != 0)
        return -1;
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

static int conf_set(cli_t *cli, ob_conf_t *conf, const char *name,
                    const char *value)
{
    ob_error_t err;

    if (ob_conf_set(conf, name, value, &err) == 0)
        return CLI_CONTINUE;
    if (strncmp(name, "kafka.", 6) != 0 && ob_conf_get(conf, name) == NULL)
        return cli_usage_error(cli, "%s (a librdkafka property takes the "
                               "prefix: -X kafka.%s=...)", err.message,
                               name);
    return cli_usage_error(cli, "%s", err.message);
}

/* -X NAME=VALUE: any configuration key, "kafka." ones for librdkafka. */
static int set_property(struct relay_args *a, cli_t *cli, const char *arg)
{
    const char *eq = strchr(arg, '=');
    char name[256];

    if (eq == NULL || eq == arg || (size_t)(eq - arg) >= sizeof(name))
        return cli_usage_error(cli, "-X takes NAME=VALUE");
    memcpy(name, arg, (size_t)(eq - arg));
    name[eq - arg] = '\0';
    if (strcmp(name, "kafka.bootstrap.servers") == 0)
        a->have_brokers = 1;
    return conf_set(cli, a->conf, name, eq + 1);
}

static int relay_option(void *opaque, cli_t *cli, int opt, const char *arg)
{
    struct relay_args *a = opaque;

    switch (opt) {
    case 'X':
        return set_property(a, cli, arg);
    case OPT_BROKERS:
        a->have_brokers = 1;
        return conf_set(cli, a->conf, "kafka.bootstrap.servers", arg);
    case OPT_LANES:
        return conf_set(cli, a->conf, "relay.lanes", arg);
    case OPT_ONCE:
        a->once = 1;
        return CLI_CONTINUE;
    case OPT_MODE:
        if (strcmp(arg, "poll") == 0)
            return CLI_CONTINUE;
        if (strcmp(arg, "cdc") == 0)
            return cli_usage_error(cli, "--mode cdc is not available yet: "
                                   "this build has the polling relay only");
        return cli_usage_error(cli, "--mode is poll or cdc, not \"%s\"",
                               arg);
    default:
        return cli_usage_error(cli, "unknown option");
    }
}

static int parse_args(struct relay_args *a, cli_t *cli, int argc,
                      char **argv)
{
    static const struct option longopts[] = {
        {"brokers", required_argument, NULL, OPT_BROKERS},
        {"mode", required_argument, NULL, OPT_MODE},
        {"once", no_argument, NULL, OPT_ONCE},
        {"lanes", required_argument, NULL, OPT_LANES},
        {NULL, 0, NULL, 0},
    };
    int rc = cli_parse(cli, argc, argv, "X:", longopts, relay_option, a);

    if (rc == CLI_CONTINUE)
        rc = cli_no_operands(cli);
    if (rc == CLI_CONTINUE && !a->have_brokers)
        rc = cli_usage_error(cli, "--brokers is required");
    return rc;
}

static void on_stats(void *opaque, const ob_relay_stats_t *s)
{
    struct report *rep = opaque;
    time_t now = time(NULL);

    if (now - rep->last < REPORT_INTERVAL_S)
        return;
    cli_log(rep->cli, OB_LOG_INFO, "published %llu (%.0f/s), retried %llu, "
            "parked %llu; holding %d of %d lane groups",
            (unsigned long long)s->published,
            (double)(s->published - rep->published_then) /
                (double)(now - rep->last),
            (unsigned long long)s->retried, (unsigned long long)s->parked,
            s->lanes_held, s->lanes);
    rep->last = now;
    rep->published_then = s->published;
}

static void summary(cli_t *cli, const ob_relay_t *relay)
{
    ob_relay_stats_t s = {.size = sizeof(s)};

    ob_relay_stats(relay, &s);
    cli_log(cli, OB_LOG_NOTICE, "stopped: published %llu, retried %llu, "
            "parked %llu in %llu batches (%.1f ms each on average)",
            (unsigned long long)s.published, (unsigned long long)s.retried,
            (unsigned long long)s.parked, (unsigned long long)s.batches,
            s.batches ? s.batch_ms_total / (double)s.batches : 0.0);
}

static int relay_go(cli_t *cli, struct relay_args *a)
{
    struct report rep = {cli, time(NULL), 0};
    ob_relay_t *relay = NULL;
    ob_error_t err;
    int rc;

    if (ob_relay_new(&relay, cli->db, a->conf, &err) != 0)
        return cli_fail(cli, "relay", &err);
    ob_relay_set_stats_cb(relay, on_stats, &rep);

    running_relay = relay;
    if (signals_catch() != 0) {
        rc = cli_error(cli, "cannot catch SIGTERM and SIGINT");
        goto destroy;
    }
    rc = a->once ? ob_relay_drain(relay, &err) : ob_relay_run(relay, &err);
    if (rc != 0)
        rc = cli_fail(cli, "relay", &err);
    else
        summary(cli, relay);
destroy:
    running_relay = NULL;
    ob_relay_destroy(relay);
    return rc;
}

static int relay_run(cli_t *cli, int argc, char **argv)
{
    struct relay_args a = {0};
    ob_error_t err;
    int rc;

    a.conf = cli_conf_new(cli);
    if (a.conf == NULL)
        return CLI_EXIT_FAILURE;
    rc = parse_args(&a, cli, argc, argv);
    if (rc == CLI_CONTINUE) {
        ob_conf_set_log(a.conf, cli_log_fn, NULL, cli->log_level);
        if (ob_conf_set(a.conf, "schema", cli->schema, &err) != 0)
            rc = cli_fail(cli, "--schema", &err);
        else
            rc = relay_go(cli, &a);
    }
    ob_conf_destroy(a.conf);
    return rc;
}

const cli_cmd_t cli_cmd_relay = {
    .name = "relay",
    .summary = "publish the outbox to Kafka, in order per aggregate",
    .synopsis = "relay [--db CONNINFO] [--schema NAME] --brokers LIST "
                "[--mode poll] [--once] [--lanes N] [-X NAME=VALUE]...",
    .options =
        "  --brokers LIST    Kafka bootstrap servers, host:port,...\n"
        "  --mode poll       the polling relay (the default; cdc is not\n"
        "                    available yet)\n"
        "  --once            publish what is due, wait for the rows in\n"
        "                    retry, and exit 0 when none is left\n"
        "  --lanes N         lane groups (relay.lanes, default 16); every\n"
        "                    relay of a schema must use the same N\n"
        "  -X NAME=VALUE     a configuration key, e.g. relay.batch.size=1000\n"
        "                    or relay.published=delete; kafka.NAME=VALUE\n"
        "                    passes a property to librdkafka, e.g.\n"
        "                    -X kafka.security.protocol=sasl_ssl\n"
        "Runs until SIGTERM or SIGINT, then finishes the batch in flight and\n"
        "exits 0. Several relays may run against one schema: they share the\n"
        "lane groups and take over those of a relay that dies.\n",
    .run = relay_run,
};
