/*
 * The parts of the oncebox command every subcommand shares. Messages go
 * to stderr in the log's format, results to stdout, so scripts can read
 * one and show the other.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "oncebox/schema.h"

#include "tools/oncebox/cli.h"

enum { OPT_DB = 256, OPT_SCHEMA };

static const struct option common_longopts[] = {
    {"db", required_argument, NULL, OPT_DB},
    {"schema", required_argument, NULL, OPT_SCHEMA},
    {"verbose", no_argument, NULL, 'v'},
    {"quiet", no_argument, NULL, 'q'},
    {"help", no_argument, NULL, 'h'},
};

static const char common_help[] =
    "Common options:\n"
    "  --db CONNINFO    PostgreSQL connection string or URI (else\n"
    "                   $ONCEBOX_DB, else libpq's PG* variables)\n"
    "  --schema NAME    schema of the oncebox tables (else $ONCEBOX_SCHEMA,\n"
    "                   else \"" OB_SCHEMA_DEFAULT "\")\n"
    "  -v, --verbose    log more; twice for debug\n"
    "  -q, --quiet      log less; twice for errors only\n"
    "  -h, --help       show this help\n"
    "\n"
    "Exit status: 0 success, 1 failure, 2 bad usage or bad input.\n";

static const char *level_name(int level)
{
    switch (level) {
    case OB_LOG_WARNING:
        return "warning";
    case OB_LOG_NOTICE:
        return "notice";
    case OB_LOG_INFO:
        return "info";
    case OB_LOG_DEBUG:
        return "debug";
    default:
        return level < OB_LOG_WARNING ? "error" : "debug";
    }
}

void cli_log_fn(void *opaque, int level, const char *facility,
                const char *message)
{
    (void)opaque;
    fprintf(stderr, "oncebox: %s: %s: %s\n", level_name(level), facility,
            message);
}

static void vlog_as(cli_t *cli, int level, const char *facility,
                    const char *fmt, va_list ap)
{
    char msg[2048];

    if (level > cli->log_level && level > OB_LOG_ERR)
        return;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    cli_log_fn(NULL, level, facility, msg);
}

void cli_log(cli_t *cli, int level, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog_as(cli, level, cli->cmd->name, fmt, ap);
    va_end(ap);
}

int cli_error(cli_t *cli, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog_as(cli, OB_LOG_ERR, cli->cmd->name, fmt, ap);
    va_end(ap);
    return CLI_EXIT_FAILURE;
}

void cli_help(const cli_cmd_t *cmd)
{
    printf("usage: oncebox %s\n\n%s.\n\n", cmd->synopsis, cmd->summary);
    if (cmd->options[0] != '\0')
        printf("Options:\n%s\n", cmd->options);
    fputs(common_help, stdout);
}

int cli_usage_error(cli_t *cli, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog_as(cli, OB_LOG_ERR, cli->cmd->name, fmt, ap);
    va_end(ap);
    fprintf(stderr, "usage: oncebox %s\nTry 'oncebox help %s'.\n",
            cli->cmd->synopsis, cli->cmd->name);
    return CLI_EXIT_USAGE;
}

int cli_no_operands(cli_t *cli)
{
    if (cli->argc > 0)
        return cli_usage_error(cli, "unexpected argument '%s'", cli->argv[0]);
    return CLI_CONTINUE;
}

int cli_fail(cli_t *cli, const char *what, const ob_error_t *err)
{
    switch (err->code) {
    case OB_EINVAL:
    case OB_ECONF:
    case OB_EEMPTY:
    case OB_ETOOLONG:
    case OB_ETOOBIG:
    case OB_ENUL:
    case OB_EUTF8:
    case OB_EJSON:
    case OB_ENAME:
    case OB_ERESERVED:
        cli_error(cli, "%s%s%s", what ? what : "", what ? ": " : "",
                  err->message);
        return CLI_EXIT_USAGE;
    default:
        return cli_error(cli, "%s%s%s", what ? what : "", what ? ": " : "",
                         err->message);
    }
}

ob_conf_t *cli_conf_new(cli_t *cli)
{
    ob_conf_t *conf = NULL;
    ob_error_t err;

    if (ob_conf_new(&conf, &err) != 0) {
        cli_fail(cli, "configuration", &err);
        return NULL;
    }
    ob_conf_set_log(conf, cli_log_fn, NULL, cli->log_level);
    return conf;
}

void cli_put_ident(FILE *f, const char *name)
{
    putc('"', f);
    for (; *name != '\0'; name++) {
        if (*name == '"')
            putc('"', f);
        putc(*name, f);
    }
    putc('"', f);
}

static void defaults(cli_t *cli)
{
    const char *v;

    v = getenv("ONCEBOX_DB");
    cli->db = v != NULL && v[0] != '\0' ? v : NULL;
    v = getenv("ONCEBOX_SCHEMA");
    cli->schema = v != NULL && v[0] != '\0' ? v : OB_SCHEMA_DEFAULT;
    cli->log_level = OB_LOG_NOTICE;
    cli->argc = 0;
    cli->argv = NULL;
}

static struct option *merge_longopts(const struct option *own)
{
    size_t common = sizeof(common_longopts) / sizeof(common_longopts[0]);
    size_t n = 0;
    struct option *all;

    while (own != NULL && own[n].name != NULL)
        n++;

    /* calloc leaves the zero entry that ends the table. */
    all = calloc(common + n + 1, sizeof(*all));
    if (all == NULL)
        return NULL;
    memcpy(all, common_longopts, sizeof(common_longopts));
    if (n > 0)
        memcpy(all + common, own, n * sizeof(*own));
    return all;
}

/* The leading ':' makes getopt report a missing value as ':'. */
static char *merge_shortopts(const char *own)
{
    size_t len = own != NULL ? strlen(own) : 0;
    char *all = malloc(len + 5);

    if (all != NULL)
        snprintf(all, len + 5, ":hvq%s", own != NULL ? own : "");
    return all;
}

/*
 * Names the option the user typed, without any "=value": the value of
 * a mistyped option could be a password.
 */
static int bad_option(cli_t *cli, int opt, const char *typed)
{
    int len = (int)strcspn(typed, "=");

    if (opt == ':')
        return cli_usage_error(cli, "option '%.*s' needs a value", len, typed);
    if (optopt != 0 && strncmp(typed, "--", 2) != 0)
        return cli_usage_error(cli, "unknown option '-%c'", optopt);
    return cli_usage_error(cli, "unknown option '%.*s'", len, typed);
}

static int one_option(cli_t *cli, int opt, char **argv, cli_option_fn fn,
                      void *opaque)
{
    switch (opt) {
    case OPT_DB:
        cli->db = optarg;
        return CLI_CONTINUE;
    case OPT_SCHEMA:
        cli->schema = optarg;
        return CLI_CONTINUE;
    case 'v':
        cli->log_level += cli->log_level < OB_LOG_DEBUG;
        return CLI_CONTINUE;
    case 'q':
        cli->log_level -= cli->log_level > OB_LOG_ERR;
        return CLI_CONTINUE;
    case 'h':
        cli_help(cli->cmd);
        return CLI_EXIT_OK;
    case ':':
    case '?':
        return bad_option(cli, opt, argv[optind - 1]);
    default:
        if (fn == NULL)
            return cli_usage_error(cli, "unhandled option %d", opt);
        return fn(opaque, cli, opt, optarg);
    }
}

int cli_parse(cli_t *cli, int argc, char **argv, const char *shortopts,
              const struct option *longopts, cli_option_fn fn, void *opaque)
{
    struct option *all = merge_longopts(longopts);
    char *shorts = merge_shortopts(shortopts);
    int opt, rc = CLI_CONTINUE;

    defaults(cli);
    if (all == NULL || shorts == NULL) {
        rc = cli_error(cli, "out of memory");
        goto free_opts;
    }

    /* 0, not 1: glibc then also resets its state from earlier parses. */
    optind = 0;
    opterr = 0;
    while (rc == CLI_CONTINUE &&
           (opt = getopt_long(argc, argv, shorts, all, NULL)) != -1)
        rc = one_option(cli, opt, argv, fn, opaque);

    cli->argc = argc - optind;
    cli->argv = argv + optind;
free_opts:
    free(shorts);
    free(all);
    return rc;
}

/* What libpq would read as a connection string rather than a db name. */
static int is_conninfo(const char *db)
{
    return strchr(db, '=') != NULL || strncmp(db, "postgresql://", 13) == 0 ||
           strncmp(db, "postgres://", 11) == 0;
}

/*
 * Stores in *secretp the password of the connection string db, if it has
 * one (free() it). A malformed string fails without a word about why:
 * libpq's reason quotes the part it could not parse, which may be the
 * password.
 */
static int conninfo_secret(cli_t *cli, const char *db, char **secretp)
{
    PQconninfoOption *opts, *o;
    char *errmsg = NULL;
    int rc = CLI_EXIT_OK;

    *secretp = NULL;
    if (!is_conninfo(db))
        return CLI_EXIT_OK;

    opts = PQconninfoParse(db, &errmsg);
    PQfreemem(errmsg);
    if (opts == NULL) {
        cli_error(cli, "the connection string is malformed (see "
                       "\"Connection Strings\" in the libpq manual)");
        return CLI_EXIT_USAGE;
    }
    for (o = opts; o->keyword != NULL; o++) {
        if (strcmp(o->keyword, "password") == 0 && o->val != NULL)
            *secretp = strdup(o->val);
        if (strcmp(o->keyword, "password") == 0 && o->val != NULL &&
            *secretp == NULL)
            rc = cli_error(cli, "out of memory");
    }
    PQconninfoFree(opts);
    return rc;
}

/*
 * Replaces every occurrence of secret in msg (a string in size bytes) by
 * "***". libpq's messages are not known to quote passwords; this makes
 * sure ours never do.
 */
static void mask(char *msg, size_t size, const char *secret)
{
    const char *p = msg, *hit;
    size_t slen, used = 0;
    char *out;

    if (secret == NULL || (slen = strlen(secret)) == 0 ||
        strstr(msg, secret) == NULL)
        return;
    out = malloc(size);
    if (out == NULL) {
        snprintf(msg, size, "(message withheld: it quoted a password)");
        return;
    }

    out[0] = '\0';
    while ((hit = strstr(p, secret)) != NULL && used < size) {
        used += (size_t)snprintf(out + used, size - used, "%.*s***",
                                 (int)(hit - p), p);
        p = hit + slen;
    }
    if (used < size)
        snprintf(out + used, size - used, "%s", p);
    snprintf(msg, size, "%s", out);
    free(out);
}

/* One log line per line of libpq's message, the first one introduced. */
static void connect_failed(cli_t *cli, const PGconn *conn, const char *secret)
{
    char msg[2048], *line, *save = NULL;
    int first = 1;

    snprintf(msg, sizeof(msg), "%s",
             conn != NULL ? PQerrorMessage(conn) : "out of memory");
    mask(msg, sizeof(msg), secret);
    mask(msg, sizeof(msg), getenv("PGPASSWORD"));

    for (line = strtok_r(msg, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        line += strspn(line, " \t");
        if (line[0] == '\0')
            continue;
        cli_error(cli, "%s%s", first ? "cannot connect to the database: " : "",
                  line);
        first = 0;
    }
    if (first)
        cli_error(cli, "cannot connect to the database");
}

static void log_as(cli_t *cli, int level, const char *facility, const char *fmt,
                   ...) OB_PRINTF(4, 5);

static void log_as(cli_t *cli, int level, const char *facility, const char *fmt,
                   ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog_as(cli, level, facility, fmt, ap);
    va_end(ap);
}

/* The server's NOTICEs and WARNINGs, into the log instead of raw stderr. */
static void notice_fn(void *arg, const PGresult *res)
{
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    int level = OB_LOG_NOTICE;

    if (sev == NULL)
        sev = "";
    if (strcmp(sev, "WARNING") == 0)
        level = OB_LOG_WARNING;
    else if (strcmp(sev, "INFO") == 0)
        level = OB_LOG_INFO;
    else if (strncmp(sev, "DEBUG", 5) == 0 || strcmp(sev, "LOG") == 0)
        level = OB_LOG_DEBUG;
    log_as(arg, level, "pg", "%s",
           msg != NULL ? msg : PQresultErrorMessage(res));
}

int cli_connect(cli_t *cli, PGconn **connp)
{
    const char *keys[4], *values[4];
    const char *db = cli->db != NULL ? cli->db : "";
    char *secret = NULL;
    PGconn *conn;
    int n = 0, rc;

    *connp = NULL;
    rc = conninfo_secret(cli, db, &secret);
    if (rc != CLI_EXIT_OK)
        return rc;

    /*
     * Keywords before "dbname" are defaults the connection string may
     * override (expand_dbname = 1 reads it in their place).
     */
    if (getenv("PGCONNECT_TIMEOUT") == NULL) {
        keys[n] = "connect_timeout";
        values[n++] = "10";
    }
    keys[n] = "fallback_application_name";
    values[n++] = "oncebox";
    keys[n] = "dbname";
    values[n++] = db;
    keys[n] = NULL;
    values[n] = NULL;

    conn = PQconnectdbParams(keys, values, 1);
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
        connect_failed(cli, conn, secret);
        PQfinish(conn);
        rc = CLI_EXIT_FAILURE;
        goto free_secret;
    }

    /* The notices then name cli, which outlives every command's conn. */
    PQsetNoticeReceiver(conn, notice_fn, cli);
    *connp = conn;
free_secret:
    free(secret);
    return rc;
}
