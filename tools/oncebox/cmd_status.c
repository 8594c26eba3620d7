/*
 * oncebox status: what an operator looks at first. The backlog and its
 * age say whether the relays keep up, parked rows say whether someone
 * must act, published rows say whether the purge runs, the lane owners
 * say which relay serves which part of the outbox, and the inbox sizes
 * and slot lag cover the consumer half and the CDC relay.
 */
#include <stdio.h>
#include <string.h>

#include "oncebox/outbox.h"

#include "tools/oncebox/cli.h"

enum { OPT_JSON = CLI_OPT_FIRST };

static int status_option(void *opaque, cli_t *cli, int opt, const char *arg)
{
    (void)arg;
    if (opt != OPT_JSON)
        return cli_usage_error(cli, "unknown option");
    *(int *)opaque = 1;
    return CLI_CONTINUE;
}

/* "12.3 s", "4.2 min", "3.1 h", "6.9 d", or "-" when there is no row. */
static void put_age(double s)
{
    if (s < 0)
        fputs("-", stdout);
    else if (s < 120)
        printf("%.1f s", s);
    else if (s < 7200)
        printf("%.1f min", s / 60);
    else if (s < 172800)
        printf("%.1f h", s / 3600);
    else
        printf("%.1f d", s / 86400);
}

/* Text from the database, with control characters shown as '?'. */
static void put_text(const char *s)
{
    for (; s != NULL && *s != '\0'; s++)
        putchar((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s);
}

static void print_outbox(const ob_status_t *s)
{
    printf("outbox\n  pending    %lld (due %lld, retrying %lld), oldest ",
           ob_status_pending(s), ob_status_due(s), ob_status_retrying(s));
    put_age(ob_status_oldest_pending_age(s));
    printf("\n  parked     %lld%s\n", ob_status_parked(s),
           ob_status_parked(s) > 0 ? " (see 'oncebox dead list')" : "");
    printf("  published  %lld waiting for the purge, oldest ",
           ob_status_published(s));
    put_age(ob_status_oldest_published_age(s));
    putchar('\n');
}

/*
 * Prints the groups g for which owned_by(g) == pid as "0-5,8,9", and
 * adds their backlog to *pending.
 */
static void put_groups(const ob_status_t *s, int pid, long long *pending)
{
    int g = 0, n = ob_status_lanes(s), first = 1;

    while (g < n) {
        int end = g;

        if (ob_status_lane_pid(s, g) != pid) {
            g++;
            continue;
        }
        while (end + 1 < n && ob_status_lane_pid(s, end + 1) == pid)
            end++;
        printf(end > g ? "%s%d-%d" : "%s%d", first ? "" : ",", g, end);
        first = 0;
        for (; g <= end; g++)
            *pending += ob_status_lane_pending(s, g);
    }
}

/* Whether group g is the first one owned by its owner. */
static int first_of_owner(const ob_status_t *s, int g)
{
    int pid = ob_status_lane_pid(s, g), i;

    for (i = 0; i < g; i++) {
        if (ob_status_lane_pid(s, i) == pid)
            return 0;
    }
    return 1;
}

static void print_owner(const ob_status_t *s, int g)
{
    const char *addr = ob_status_lane_client_addr(s, g);
    long long pending = 0;

    printf("  pid %d  ", ob_status_lane_pid(s, g));
    put_text(ob_status_lane_application(s, g) != NULL
                 ? ob_status_lane_application(s, g)
                 : "(application name not visible)");
    printf("  %s  since %s\n    groups ", addr != NULL ? addr : "local",
           ob_status_lane_since(s, g) != NULL ? ob_status_lane_since(s, g)
                                              : "?");
    put_groups(s, ob_status_lane_pid(s, g), &pending);
    printf(" (pending %lld)\n", pending);
}

static void print_lanes(const ob_status_t *s)
{
    int n = ob_status_lanes(s), owned = ob_status_lanes_owned(s), g;
    long long pending = 0;

    printf("lanes: %d groups (%s), %d owned; %d relay%s running\n", n,
           ob_status_lanes_recorded(s) ? "recorded by the relays"
                                       : "default: no relay has run",
           owned, ob_status_relays(s), ob_status_relays(s) == 1 ? "" : "s");
    for (g = 0; g < n; g++) {
        if (ob_status_lane_pid(s, g) != 0 && first_of_owner(s, g))
            print_owner(s, g);
    }
    if (owned < n) {
        printf("  without a relay: groups ");
        put_groups(s, 0, &pending);
        printf(" (pending %lld)\n", pending);
    }
}

static void print_inbox(const ob_status_t *s)
{
    size_t i, n = ob_status_inbox_count(s);

    printf("inbox:%s\n", n == 0 ? " no keys" : "");
    for (i = 0; i < n; i++) {
        printf("  ");
        put_text(ob_status_inbox_namespace(s, i));
        printf("  %lld keys, oldest ", ob_status_inbox_keys(s, i));
        put_age(ob_status_inbox_oldest_age(s, i));
        putchar('\n');
    }
}

static void put_bytes(long long n)
{
    if (n < 0)
        fputs("unknown", stdout);
    else
        printf("%lld bytes", n);
}

static void print_slots(const ob_status_t *s)
{
    size_t i, n = ob_status_slot_count(s);

    printf("replication slots:%s\n", n == 0 ? " none" : "");
    for (i = 0; i < n; i++) {
        printf("  ");
        put_text(ob_status_slot_name(s, i));
        printf(" (%s, %s)  lag ", ob_status_slot_plugin(s, i) != NULL
                                      ? ob_status_slot_plugin(s, i)
                                      : "physical",
               ob_status_slot_active(s, i) ? "active" : "inactive");
        put_bytes(ob_status_slot_lag_bytes(s, i));
        printf(", retains ");
        put_bytes(ob_status_slot_retained_bytes(s, i));
        putchar('\n');
    }
}

static void print_human(const ob_status_t *s)
{
    fputs("schema ", stdout);
    cli_put_ident(stdout, ob_status_schema(s));
    printf(" at %s\n", ob_status_taken_at(s));
    print_outbox(s);
    print_lanes(s);
    print_inbox(s);
    print_slots(s);
}

static int print_json(cli_t *cli, const ob_status_t *s)
{
    ob_error_t err;
    char *json;

    if (ob_status_json(s, &json, &err) != 0)
        return cli_fail(cli, "status", &err);
    puts(json);
    ob_free(json);
    return CLI_EXIT_OK;
}

static int status_run(cli_t *cli, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, OPT_JSON},
        {NULL, 0, NULL, 0},
    };
    ob_status_t *status = NULL;
    PGconn *conn = NULL;
    ob_error_t err;
    int json = 0;
    int rc = cli_parse(cli, argc, argv, NULL, longopts, status_option, &json);

    if (rc == CLI_CONTINUE)
        rc = cli_no_operands(cli);
    if (rc != CLI_CONTINUE)
        return rc;

    rc = cli_connect(cli, &conn);
    if (rc != CLI_EXIT_OK)
        return rc;
    if (ob_status_new(conn, cli->schema, &status, &err) != 0) {
        rc = cli_fail(cli, NULL, &err);
    } else if (json) {
        rc = print_json(cli, status);
    } else {
        print_human(status);
        rc = CLI_EXIT_OK;
    }
    ob_status_destroy(status);
    PQfinish(conn);
    return rc;
}

const cli_cmd_t cli_cmd_status = {
    .name = "status",
    .summary = "show the backlog, parked rows, lane owners, inbox and slots",
    .synopsis = "status [--db CONNINFO] [--schema NAME] [--json]",
    .options =
        "  --json   print one JSON object (see ob_status_json() in "
        "outbox.h)\n"
        "Read-only. Ages are since the oldest row was appended (pending) "
        "or\npublished; \"due\" rows may be published now, \"retrying\" "
        "ones failed\nbefore; a lane group \"without a relay\" is served "
        "by nobody.\n",
    .run = status_run,
};
