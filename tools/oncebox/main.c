/*
 * The oncebox command: "oncebox COMMAND [OPTIONS]". This file only finds
 * the command; each one lives in its own cmd_NAME.c (see cli.h).
 */
#include <stdio.h>
#include <string.h>

#include "oncebox/schema.h"

#include "tools/oncebox/cli.h"

/* The commands, in the order --help lists them. Add one line per command. */
#define CLI_COMMANDS(X)                                                    \
    X(migrate) X(append) X(relay) X(status) X(dead) X(purge) X(check)

#define CLI_DECLARE(name) extern const cli_cmd_t cli_cmd_##name;
CLI_COMMANDS(CLI_DECLARE)
#undef CLI_DECLARE

static const cli_cmd_t *const commands[] = {
#define CLI_ENTRY(name) &cli_cmd_##name,
    CLI_COMMANDS(CLI_ENTRY)
#undef CLI_ENTRY
};

#define COMMAND_COUNT (sizeof(commands) / sizeof(commands[0]))

static const cli_cmd_t *command_find(const char *name)
{
    size_t i;

    for (i = 0; i < COMMAND_COUNT; i++) {
        if (strcmp(commands[i]->name, name) == 0)
            return commands[i];
    }
    return NULL;
}

static void usage(FILE *f)
{
    size_t i;

    fputs("usage: oncebox COMMAND [OPTIONS]\n"
          "       oncebox help COMMAND\n"
          "       oncebox --help | --version\n"
          "\n"
          "Effectively-once event delivery: PostgreSQL outbox, relay to "
          "Kafka,\nconsumer inbox.\n"
          "\n"
          "Commands:\n",
          f);
    for (i = 0; i < COMMAND_COUNT; i++)
        fprintf(f, "  %-10s %s\n", commands[i]->name, commands[i]->summary);
    fputs("\n"
          "Every command takes --db CONNINFO, --schema NAME, -v, -q and -h;\n"
          "'oncebox help COMMAND' shows its options.\n"
          "Exit status: 0 success, 1 failure, 2 bad usage or bad input.\n",
          f);
}

/* The message names what the user typed; the usage says what would do. */
static int usage_error(const char *what, const char *arg)
{
    fprintf(stderr, "oncebox: error: %s%s%s%s\n", what, arg ? " '" : "",
            arg ? arg : "", arg ? "'" : "");
    usage(stderr);
    return CLI_EXIT_USAGE;
}

/* "oncebox help [COMMAND]" */
static int help(int argc, char **argv)
{
    const cli_cmd_t *cmd;

    if (argc < 3) {
        usage(stdout);
        return CLI_EXIT_OK;
    }
    cmd = command_find(argv[2]);
    if (cmd == NULL)
        return usage_error("unknown command", argv[2]);
    cli_help(cmd);
    return CLI_EXIT_OK;
}

int main(int argc, char **argv)
{
    const cli_cmd_t *cmd;
    cli_t cli = {0};
    const char *name = argc > 1 ? argv[1] : NULL;

    if (name == NULL)
        return usage_error("no command given", NULL);
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
        usage(stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(name, "--version") == 0) {
        printf("oncebox %s (schema version %d)\n", ob_version_string(),
               ob_schema_latest());
        return CLI_EXIT_OK;
    }
    if (strcmp(name, "help") == 0)
        return help(argc, argv);

    cmd = command_find(name);
    if (cmd == NULL)
        return usage_error(
            name[0] == '-' ? "unknown option" : "unknown command", name);
    cli.cmd = cmd;
    return cmd->run(&cli, argc - 1, argv + 1);
}
