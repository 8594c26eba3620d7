/*
 * oncebox migrate: creates the oncebox schema or upgrades it to the
 * version this build knows. Safe to run at every deployment, also by
 * several instances at once: what is applied is applied once.
 */
#include <stdio.h>

#include "oncebox/schema.h"

#include "tools/oncebox/cli.h"

static void report(const char *schema, int before, int after)
{
    fputs("schema ", stdout);
    cli_put_ident(stdout, schema);
    if (after == before)
        printf(" already at version %d\n", after);
    else
        printf(" at version %d (applied %d)\n", after, after - before);
}

static int migrate_run(cli_t *cli, int argc, char **argv)
{
    PGconn *conn = NULL;
    int before, after, rc;
    ob_error_t err;

    rc = cli_parse(cli, argc, argv, NULL, NULL, NULL, NULL);
    if (rc == CLI_CONTINUE)
        rc = cli_no_operands(cli);
    if (rc != CLI_CONTINUE)
        return rc;

    rc = cli_connect(cli, &conn);
    if (rc != CLI_EXIT_OK)
        return rc;

    /*
     * "applied" is the difference of the two readings: when another
     * migrate runs at the same moment, it may count that one's work.
     */
    if (ob_schema_version(conn, cli->schema, &before, &err) != 0 ||
        ob_schema_migrate(conn, cli->schema, &err) != 0 ||
        ob_schema_version(conn, cli->schema, &after, &err) != 0) {
        rc = cli_fail(cli, NULL, &err);
        goto finish;
    }

    cli_log(cli, OB_LOG_INFO, "schema version %d before, %d after", before,
            after);
    report(cli->schema, before, after);
finish:
    PQfinish(conn);
    return rc;
}

const cli_cmd_t cli_cmd_migrate = {
    .name = "migrate",
    .summary = "create the oncebox schema or upgrade it to this version",
    .synopsis = "migrate [--db CONNINFO] [--schema NAME] [-v|-q]",
    .options = "",
    .run = migrate_run,
};
