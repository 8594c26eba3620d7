/*
 * What every oncebox subcommand shares: the command table entry, option
 * parsing with the common options, messages on stderr, exit codes, and
 * connecting to PostgreSQL.
 *
 * Adding a subcommand takes one file and one line:
 *
 * 1. cmd_NAME.c defines "const cli_cmd_t cli_cmd_NAME = {...}" with the
 *    name, a one-line summary, a synopsis, the help text of its own
 *    options, and its run function;
 * 2. main.c gets "X(NAME)" in CLI_COMMANDS, which declares it and puts
 *    it in the table, in the order --help lists them.
 *
 * A run function starts with cli_parse(), which handles the common
 * options and hands the command's own to its callback:
 *
 *     static int cmd_run(cli_t *cli, int argc, char **argv)
 *     {
 *         int rc = cli_parse(cli, argc, argv, NULL, NULL, NULL, NULL);
 *
 *         if (rc != CLI_CONTINUE)
 *             return rc;
 *         ...
 *     }
 *
 * The tool uses the public headers only, like any other program.
 */
#ifndef ONCEBOX_TOOL_CLI_H
#define ONCEBOX_TOOL_CLI_H

#include <getopt.h>
#include <stdio.h>
#include <libpq-fe.h>

#include "oncebox/core.h"

/* Exit codes of every subcommand. */
enum {
    CLI_EXIT_OK = 0,
    CLI_EXIT_FAILURE = 1, /* the work failed: database, broker, system */
    CLI_EXIT_USAGE = 2    /* bad usage or bad input: fix the command */
};

/* cli_parse(): carry on with the command (any other value: exit with it). */
#define CLI_CONTINUE (-1)

typedef struct cli cli_t;

typedef struct cli_cmd {
    const char *name;     /* "migrate" */
    const char *summary;  /* one line for "oncebox --help" */
    const char *synopsis; /* after "usage: oncebox ": "migrate [OPTIONS]" */
    const char *options;  /* help lines of the command's own options, or "" */
    int (*run)(cli_t *cli, int argc, char **argv); /* argv[0] is the name */
} cli_cmd_t;

/* The state of one run, filled by cli_parse() from options and env. */
struct cli {
    const cli_cmd_t *cmd;
    const char *db;     /* --db, else $ONCEBOX_DB, else NULL: libpq's PG* */
    const char *schema; /* --schema, else $ONCEBOX_SCHEMA, else default */
    int log_level;      /* OB_LOG_*: what reaches stderr; -v / -q move it */
    int argc;           /* the operands left after the options */
    char **argv;
};

/*
 * A command's own option: opt is getopt_long()'s return (the short option
 * character or a long option's val), arg its argument or NULL. Returns
 * CLI_CONTINUE when it took the option, else an exit code (report bad
 * values with cli_usage_error()).
 */
typedef int (*cli_option_fn)(void *opaque, cli_t *cli, int opt,
                             const char *arg);

/* Long options' vals from here up are free for commands to use. */
#define CLI_OPT_FIRST 1000

/*
 * Parses argv (argv[0] the command name) with getopt_long(), accepting
 * the common options --db, --schema, -v/--verbose, -q/--quiet and
 * -h/--help together with the command's own shortopts and longopts
 * (each may be NULL; longopts ends with a zero entry, vals below
 * CLI_OPT_FIRST other than short option letters are reserved). Options
 * and operands may be mixed; operands end up in cli->argc/argv.
 *
 * Returns CLI_CONTINUE, or the exit code to return at once: CLI_EXIT_OK
 * after printing help for -h, CLI_EXIT_USAGE after a usage error (the
 * message and the synopsis are on stderr), or what fn returned.
 */
int cli_parse(cli_t *cli, int argc, char **argv, const char *shortopts,
              const struct option *longopts, cli_option_fn fn, void *opaque);

/* Prints "oncebox: error: NAME: message" and the synopsis on stderr;
 * returns CLI_EXIT_USAGE. */
int cli_usage_error(cli_t *cli, const char *fmt, ...) OB_PRINTF(2, 3);

/* Refuses operands for commands that take none. */
int cli_no_operands(cli_t *cli);

/* Prints the command's full help on stdout (for -h and "oncebox help"). */
void cli_help(const cli_cmd_t *cmd);

/*
 * The log callback for ob_conf_set_log(), and what the commands use for
 * their own messages: "oncebox: LEVEL: FACILITY: message" on stderr.
 * opaque is unused. cli_log() drops what is less severe than
 * cli->log_level; errors always pass.
 */
void cli_log_fn(void *opaque, int level, const char *facility,
                const char *message);
void cli_log(cli_t *cli, int level, const char *fmt, ...) OB_PRINTF(3, 4);

/* cli_log() at OB_LOG_ERR; returns CLI_EXIT_FAILURE. */
int cli_error(cli_t *cli, const char *fmt, ...) OB_PRINTF(2, 3);

/*
 * Reports a failed library call: "what: err's message" at OB_LOG_ERR
 * (what may be NULL).
 * Returns CLI_EXIT_USAGE for errors in the user's input (invalid
 * arguments, configuration, names, JSON, limits) and CLI_EXIT_FAILURE
 * for the rest.
 */
int cli_fail(cli_t *cli, const char *what, const ob_error_t *err);

/*
 * A new configuration with the log routed to stderr at cli->log_level.
 * Free with ob_conf_destroy(). NULL (after reporting) when out of memory.
 */
ob_conf_t *cli_conf_new(cli_t *cli);

/*
 * Connects to cli->db, else $ONCEBOX_DB, else libpq's defaults and PG*
 * variables, and routes the server's notices into the log. A value
 * without "=" that is not a URI is a database name, as with psql.
 * Without a connect_timeout and $PGCONNECT_TIMEOUT, 10 seconds apply.
 * On failure the message names the server but never shows the
 * connection string or a password. Returns CLI_EXIT_OK with *connp set
 * (close with PQfinish()), or the exit code: CLI_EXIT_USAGE for a
 * malformed connection string, else CLI_EXIT_FAILURE.
 */
int cli_connect(cli_t *cli, PGconn **connp);

/* Writes name to f as a double-quoted identifier ("a""b"). */
void cli_put_ident(FILE *f, const char *name);

#endif
