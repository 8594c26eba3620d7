/*
 * mock-broker: a librdkafka mock Kafka cluster on loopback, steered over
 * stdin, for oncebox's integration tests.
 *
 * Usage:
 *   mock-broker [--brokers N] [--partitions P] [--topic NAME[:PARTS]]...
 *
 *   --brokers N       brokers in the cluster, ids 1..N (default 3, so that
 *                     acks=all with a replication factor of 3 works).
 *   --partitions P    partition count for --topic without :PARTS
 *                     (default 4). Topics that clients auto-create always
 *                     get the mock's own fixed default of 4 partitions:
 *                     librdkafka 2.0.2 has no API to change it.
 *   --topic NAME[:PARTS]
 *                     create NAME before the bootstrap line is printed;
 *                     may be repeated.
 *
 * The first line on stdout is the bootstrap list ("127.0.0.1:port,...").
 * Then one command per line is read from stdin; each is answered with
 * exactly one line on stdout, "ok" or "error: <reason>". Blank lines and
 * lines starting with '#' are ignored and get no answer.
 *
 *   topic create NAME PARTITIONS [REPLICATION]
 *                                   REPLICATION (1..brokers) is checked
 *                                   but librdkafka 2.0.2's mock ignores
 *                                   it: replicas are always min(3, N)
 *   request-error API COUNT ERROR   next COUNT requests of API fail
 *   clear-errors API                drop the errors still queued for API
 *   broker down ID                  disconnect broker ID, refuse new ones
 *   broker up ID                    accept connections again
 *   rtt ID MS                       add MS milliseconds to each response
 *   leader TOPIC PARTITION BROKER   move the partition leader (-1: none)
 *   coordinator group|txn KEY BROKER
 *   topic-error TOPIC ERROR         Metadata error for TOPIC (NO_ERROR
 *                                   clears it)
 *   reset                           clear queued request errors of all
 *                                   named APIs, bring every broker up,
 *                                   zero every rtt
 *   ping                            answers ok
 *   quit                            answers ok, then exits
 *
 * API is a Kafka API name (Produce, Fetch, Metadata, InitProducerId, ...,
 * case-insensitive) or its number. ERROR is a librdkafka error name
 * (NOT_LEADER_FOR_PARTITION, _TRANSPORT, ..., with or without the
 * RD_KAFKA_RESP_ERR_ prefix) or its number. A broker ID of -1 means every
 * broker for down, up and rtt.
 *
 * EOF on stdin, SIGTERM or SIGINT destroy the cluster and exit 0.
 */

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define MB_LINE_MAX 4096
#define MB_ARGS_MAX 8
#define MB_ERR_MAX 256
#define MB_BROKERS_MAX 32
#define MB_PARTITIONS_MAX 1000
#define MB_ERRORS_MAX 100000
#define MB_RTT_MAX 600000
#define MB_TOPIC_MAX 249

typedef struct mb_ctx {
    rd_kafka_t *rk;
    rd_kafka_mock_cluster_t *mcluster;
    int broker_cnt;
    int partitions;
    char **topics;      /* --topic specs, borrowed from argv */
    int topic_cnt;
    int quit;
} mb_ctx_t;

typedef int (*mb_handler_t)(mb_ctx_t *ctx, char **argv, char *err);

typedef struct mb_command {
    const char *verb;
    const char *sub;    /* second word, or NULL */
    int min_args;       /* arguments after the verb (and sub) */
    int max_args;
    mb_handler_t handler;
    const char *usage;
    const char *what;   /* one line for --help */
} mb_command_t;

typedef struct mb_reader {
    char line[MB_LINE_MAX];
    size_t len;
    int overflow;
} mb_reader_t;

/* Kafka protocol API keys, as listed in the Kafka protocol guide. */
static const char *const mb_api_names[] = {
    "Produce", "Fetch", "ListOffsets", "Metadata", "LeaderAndIsr",
    "StopReplica", "UpdateMetadata", "ControlledShutdown", "OffsetCommit",
    "OffsetFetch", "FindCoordinator", "JoinGroup", "Heartbeat",
    "LeaveGroup", "SyncGroup", "DescribeGroups", "ListGroups",
    "SaslHandshake", "ApiVersions", "CreateTopics", "DeleteTopics",
    "DeleteRecords", "InitProducerId", "OffsetForLeaderEpoch",
    "AddPartitionsToTxn", "AddOffsetsToTxn", "EndTxn", "WriteTxnMarkers",
    "TxnOffsetCommit", "DescribeAcls", "CreateAcls", "DeleteAcls",
    "DescribeConfigs", "AlterConfigs", "AlterReplicaLogDirs",
    "DescribeLogDirs", "SaslAuthenticate", "CreatePartitions",
    "CreateDelegationToken", "RenewDelegationToken",
    "ExpireDelegationToken", "DescribeDelegationToken", "DeleteGroups",
    "ElectLeaders", "IncrementalAlterConfigs",
    "AlterPartitionReassignments", "ListPartitionReassignments",
    "OffsetDelete",
};

#define MB_API_CNT ((int)(sizeof(mb_api_names) / sizeof(mb_api_names[0])))

static void mb_seterr(char *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void mb_seterr(char *err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, MB_ERR_MAX, fmt, ap);
    va_end(ap);
}

/*
 * Copies at most 48 bytes of untrusted input into out, replacing bytes
 * that are not printable ASCII, so that an error line stays one line.
 */
static const char *mb_quote(const char *s, char *out, size_t outsz)
{
    size_t i;

    for (i = 0; s[i] != '\0' && i < 48 && i + 1 < outsz; i++)
        out[i] = isprint((unsigned char)s[i]) ? s[i] : '?';
    out[i] = '\0';
    return out;
}

static int mb_parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static int mb_parse_int_arg(const char *what, const char *s, long min,
                            long max, long *out, char *err)
{
    char q[64];

    if (mb_parse_long(s, min, max, out) == 0)
        return 0;
    mb_seterr(err, "%s must be an integer in %ld..%ld, not '%s'", what, min,
              max, mb_quote(s, q, sizeof(q)));
    return -1;
}

static int mb_parse_api(const char *s, int16_t *out, char *err)
{
    long v;
    int i;
    char q[64];

    if (mb_parse_long(s, 0, INT16_MAX, &v) == 0) {
        *out = (int16_t)v;
        return 0;
    }
    for (i = 0; i < MB_API_CNT; i++) {
        if (strcasecmp(s, mb_api_names[i]) == 0) {
            *out = (int16_t)i;
            return 0;
        }
    }
    mb_seterr(err, "unknown Kafka API '%s' (a name like Produce or a number)",
              mb_quote(s, q, sizeof(q)));
    return -1;
}

static const char *mb_strip_prefix(const char *s)
{
    static const char *const prefixes[] = {"RD_KAFKA_RESP_ERR_", "ERR_"};
    size_t i, n;

    for (i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++) {
        n = strlen(prefixes[i]);
        if (strncasecmp(s, prefixes[i], n) == 0 && s[n] != '\0')
            return s + n;
    }
    return s;
}

/* Accepts only codes librdkafka knows, so a typo cannot inject nonsense. */
static int mb_parse_error(const char *s, rd_kafka_resp_err_t *out, char *err)
{
    const struct rd_kafka_err_desc *descs;
    const char *name = mb_strip_prefix(s);
    size_t cnt, i;
    long v;
    int numeric;
    char q[64];

    numeric = mb_parse_long(s, INT_MIN, INT_MAX, &v) == 0;
    rd_kafka_get_err_descs(&descs, &cnt);
    for (i = 0; i < cnt; i++) {
        if (descs[i].name == NULL)
            continue;
        if (numeric ? (long)descs[i].code == v
                    : strcasecmp(name, descs[i].name) == 0) {
            *out = descs[i].code;
            return 0;
        }
    }
    mb_seterr(err, "unknown librdkafka error '%s'", mb_quote(s, q, sizeof(q)));
    return -1;
}

/* Kafka's own rule for topic names: [a-zA-Z0-9._-]{1,249}. */
static int mb_parse_topic(const char *s, char *err)
{
    size_t i, n = strlen(s);
    char q[64];

    for (i = 0; i < n; i++) {
        if (!isalnum((unsigned char)s[i]) && strchr("._-", s[i]) == NULL)
            break;
    }
    if (n > 0 && n <= MB_TOPIC_MAX && i == n)
        return 0;
    mb_seterr(err, "invalid topic name '%s' (allowed: [a-zA-Z0-9._-]{1,%d})",
              mb_quote(s, q, sizeof(q)), MB_TOPIC_MAX);
    return -1;
}

static int mb_parse_broker(const mb_ctx_t *ctx, const char *s, int allow_all,
                           int32_t *out, char *err)
{
    long v;

    if (mb_parse_int_arg("broker id", s, allow_all ? -1 : 1, ctx->broker_cnt,
                         &v, err) != 0)
        return -1;
    if (v == 0) {
        mb_seterr(err, "broker ids are 1..%d (or -1 for all)",
                  ctx->broker_cnt);
        return -1;
    }
    *out = (int32_t)v;
    return 0;
}

static int mb_check(rd_kafka_resp_err_t rc, char *err)
{
    if (rc == RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    mb_seterr(err, "%s: %s", rd_kafka_err2name(rc), rd_kafka_err2str(rc));
    return -1;
}

static int mb_replication_default(const mb_ctx_t *ctx)
{
    return ctx->broker_cnt < 3 ? ctx->broker_cnt : 3;
}

static int mb_topic_create(mb_ctx_t *ctx, const char *topic, int partitions,
                           int replication, char *err)
{
    rd_kafka_resp_err_t rc;

    rc = rd_kafka_mock_topic_create(ctx->mcluster, topic, partitions,
                                    replication);
    return mb_check(rc, err);
}

static int cmd_topic_create(mb_ctx_t *ctx, char **argv, char *err)
{
    long parts, repl = mb_replication_default(ctx);

    if (mb_parse_topic(argv[0], err) != 0)
        return -1;
    if (mb_parse_int_arg("partitions", argv[1], 1, MB_PARTITIONS_MAX, &parts,
                         err) != 0)
        return -1;
    if (argv[2] != NULL &&
        mb_parse_int_arg("replication", argv[2], 1, ctx->broker_cnt, &repl,
                         err) != 0)
        return -1;
    return mb_topic_create(ctx, argv[0], (int)parts, (int)repl, err);
}

static int cmd_request_error(mb_ctx_t *ctx, char **argv, char *err)
{
    rd_kafka_resp_err_t code, *codes;
    int16_t api;
    long cnt, i;

    if (mb_parse_api(argv[0], &api, err) != 0 ||
        mb_parse_int_arg("count", argv[1], 1, MB_ERRORS_MAX, &cnt, err) != 0 ||
        mb_parse_error(argv[2], &code, err) != 0)
        return -1;

    codes = malloc((size_t)cnt * sizeof(*codes));
    if (codes == NULL) {
        mb_seterr(err, "out of memory");
        return -1;
    }
    for (i = 0; i < cnt; i++)
        codes[i] = code;
    rd_kafka_mock_push_request_errors_array(ctx->mcluster, api, (size_t)cnt,
                                            codes);
    free(codes);
    return 0;
}

static int cmd_clear_errors(mb_ctx_t *ctx, char **argv, char *err)
{
    int16_t api;

    if (mb_parse_api(argv[0], &api, err) != 0)
        return -1;
    rd_kafka_mock_clear_request_errors(ctx->mcluster, api);
    return 0;
}

static int cmd_broker_down(mb_ctx_t *ctx, char **argv, char *err)
{
    int32_t id;

    if (mb_parse_broker(ctx, argv[0], 1, &id, err) != 0)
        return -1;
    return mb_check(rd_kafka_mock_broker_set_down(ctx->mcluster, id), err);
}

static int cmd_broker_up(mb_ctx_t *ctx, char **argv, char *err)
{
    int32_t id;

    if (mb_parse_broker(ctx, argv[0], 1, &id, err) != 0)
        return -1;
    return mb_check(rd_kafka_mock_broker_set_up(ctx->mcluster, id), err);
}

static int cmd_rtt(mb_ctx_t *ctx, char **argv, char *err)
{
    int32_t id;
    long ms;

    if (mb_parse_broker(ctx, argv[0], 1, &id, err) != 0 ||
        mb_parse_int_arg("rtt", argv[1], 0, MB_RTT_MAX, &ms, err) != 0)
        return -1;
    return mb_check(rd_kafka_mock_broker_set_rtt(ctx->mcluster, id, (int)ms),
                    err);
}

static int cmd_leader(mb_ctx_t *ctx, char **argv, char *err)
{
    rd_kafka_resp_err_t rc;
    int32_t id;
    long part;

    if (mb_parse_topic(argv[0], err) != 0 ||
        mb_parse_int_arg("partition", argv[1], 0, MB_PARTITIONS_MAX - 1,
                         &part, err) != 0 ||
        mb_parse_broker(ctx, argv[2], 1, &id, err) != 0)
        return -1;
    rc = rd_kafka_mock_partition_set_leader(ctx->mcluster, argv[0],
                                            (int32_t)part, id);
    return mb_check(rc, err);
}

static int cmd_coordinator(mb_ctx_t *ctx, char **argv, char *err)
{
    rd_kafka_resp_err_t rc;
    const char *type;
    int32_t id;
    char q[64];

    if (strcmp(argv[0], "group") == 0) {
        type = "group";
    } else if (strcmp(argv[0], "txn") == 0 ||
               strcmp(argv[0], "transaction") == 0) {
        type = "transaction";
    } else {
        mb_seterr(err, "coordinator type must be group or txn, not '%s'",
                  mb_quote(argv[0], q, sizeof(q)));
        return -1;
    }
    if (mb_parse_broker(ctx, argv[2], 0, &id, err) != 0)
        return -1;
    rc = rd_kafka_mock_coordinator_set(ctx->mcluster, type, argv[1], id);
    return mb_check(rc, err);
}

static int cmd_topic_error(mb_ctx_t *ctx, char **argv, char *err)
{
    rd_kafka_resp_err_t code;

    if (mb_parse_topic(argv[0], err) != 0 ||
        mb_parse_error(argv[1], &code, err) != 0)
        return -1;
    rd_kafka_mock_topic_set_error(ctx->mcluster, argv[0], code);
    return 0;
}

/*
 * Undoes what one test may have left behind for the next: queued request
 * errors, brokers down, added latency. Leaders, coordinators and topic
 * errors cannot be enumerated through the mock API and stay as they are.
 */
static int cmd_reset(mb_ctx_t *ctx, char **argv, char *err)
{
    int16_t api;

    (void)argv;
    for (api = 0; api < MB_API_CNT; api++)
        rd_kafka_mock_clear_request_errors(ctx->mcluster, api);
    if (mb_check(rd_kafka_mock_broker_set_up(ctx->mcluster, -1), err) != 0)
        return -1;
    return mb_check(rd_kafka_mock_broker_set_rtt(ctx->mcluster, -1, 0), err);
}

static int cmd_ping(mb_ctx_t *ctx, char **argv, char *err)
{
    (void)ctx;
    (void)argv;
    (void)err;
    return 0;
}

static int cmd_quit(mb_ctx_t *ctx, char **argv, char *err)
{
    (void)argv;
    (void)err;
    ctx->quit = 1;
    return 0;
}

static const mb_command_t mb_commands[] = {
    {"topic", "create", 2, 3, cmd_topic_create,
     "topic create NAME PARTITIONS [REPLICATION]",
     "create a topic (the 2.0.2 mock ignores REPLICATION)"},
    {"request-error", NULL, 3, 3, cmd_request_error,
     "request-error API COUNT ERROR", "fail the next COUNT API requests"},
    {"clear-errors", NULL, 1, 1, cmd_clear_errors, "clear-errors API",
     "drop the errors still queued for API"},
    {"broker", "down", 1, 1, cmd_broker_down, "broker down ID",
     "disconnect a broker and refuse connections"},
    {"broker", "up", 1, 1, cmd_broker_up, "broker up ID",
     "accept connections again"},
    {"rtt", NULL, 2, 2, cmd_rtt, "rtt ID MS",
     "delay each response by MS milliseconds"},
    {"leader", NULL, 3, 3, cmd_leader, "leader TOPIC PARTITION BROKER",
     "move a partition leader (-1: none)"},
    {"coordinator", NULL, 3, 3, cmd_coordinator,
     "coordinator group|txn KEY BROKER",
     "set the group or transaction coordinator"},
    {"topic-error", NULL, 2, 2, cmd_topic_error, "topic-error TOPIC ERROR",
     "Metadata error for TOPIC (NO_ERROR clears)"},
    {"reset", NULL, 0, 0, cmd_reset, "reset",
     "clear queued errors, all brokers up, rtt 0"},
    {"ping", NULL, 0, 0, cmd_ping, "ping", "answer ok"},
    {"quit", NULL, 0, 0, cmd_quit, "quit", "answer ok and exit"},
};

#define MB_COMMAND_CNT ((int)(sizeof(mb_commands) / sizeof(mb_commands[0])))

static const mb_command_t *mb_find_command(char **argv, int argc)
{
    const mb_command_t *c;
    int i;

    for (i = 0; i < MB_COMMAND_CNT; i++) {
        c = &mb_commands[i];
        if (strcmp(argv[0], c->verb) != 0)
            continue;
        if (c->sub == NULL || (argc > 1 && strcmp(argv[1], c->sub) == 0))
            return c;
    }
    return NULL;
}

/* Lists the usages of verb's sub-commands; returns -1 if there are none. */
static int mb_verb_usage(const char *verb, char *err)
{
    size_t used = 0;
    int i, found = 0;

    for (i = 0; i < MB_COMMAND_CNT; i++) {
        if (strcmp(verb, mb_commands[i].verb) != 0 || used >= MB_ERR_MAX)
            continue;
        used += (size_t)snprintf(err + used, MB_ERR_MAX - used, "%s%s",
                                 found ? " | " : "usage: ",
                                 mb_commands[i].usage);
        found = 1;
    }
    return found ? 0 : -1;
}

/* Splits line in place on blanks; returns the word count or -1. */
static int mb_split(char *line, char **argv)
{
    char *save = NULL, *tok;
    int argc = 0;

    for (tok = strtok_r(line, " \t", &save); tok != NULL;
         tok = strtok_r(NULL, " \t", &save)) {
        if (argc == MB_ARGS_MAX)
            return -1;
        argv[argc++] = tok;
    }
    argv[argc] = NULL;
    return argc;
}

static int mb_run_command(mb_ctx_t *ctx, char *line, char *err)
{
    char *argv[MB_ARGS_MAX + 1];
    const mb_command_t *c;
    int argc, skip;
    char q[64];

    argc = mb_split(line, argv);
    if (argc < 0) {
        mb_seterr(err, "too many words (at most %d)", MB_ARGS_MAX);
        return -1;
    }

    c = mb_find_command(argv, argc);
    if (c == NULL && mb_verb_usage(argv[0], err) == 0)
        return -1;
    if (c == NULL) {
        mb_seterr(err, "unknown command '%s' (see --help)",
                  mb_quote(argv[0], q, sizeof(q)));
        return -1;
    }

    skip = c->sub != NULL ? 2 : 1;
    if (argc - skip < c->min_args || argc - skip > c->max_args) {
        mb_seterr(err, "usage: %s", c->usage);
        return -1;
    }
    return c->handler(ctx, argv + skip, err);
}

/* Answers one input line; comments and blank lines get no answer. */
static void mb_handle_line(mb_ctx_t *ctx, char *line, size_t len, int overflow)
{
    char err[MB_ERR_MAX];
    size_t start;

    if (len > 0 && line[len - 1] == '\r')
        line[--len] = '\0';
    start = strspn(line, " \t");

    if (overflow) {
        printf("error: line longer than %d bytes\n", MB_LINE_MAX - 1);
    } else if (strlen(line) != len) {
        printf("error: line contains a NUL byte\n");
    } else if (line[start] == '\0' || line[start] == '#') {
        return;
    } else if (mb_run_command(ctx, line + start, err) == 0) {
        printf("ok\n");
    } else {
        printf("error: %s\n", err);
    }
    fflush(stdout);
}

/* Feeds bytes read from stdin to the line assembler. */
static void mb_feed(mb_ctx_t *ctx, mb_reader_t *r, const char *buf, size_t n)
{
    size_t i;

    for (i = 0; i < n && !ctx->quit; i++) {
        if (buf[i] == '\n') {
            r->line[r->len] = '\0';
            mb_handle_line(ctx, r->line, r->len, r->overflow);
            r->len = 0;
            r->overflow = 0;
        } else if (r->len + 1 < sizeof(r->line)) {
            r->line[r->len++] = buf[i];
        } else {
            r->overflow = 1;
        }
    }
}

/* A last line without its newline is still a command. */
static void mb_feed_eof(mb_ctx_t *ctx, mb_reader_t *r)
{
    if (r->len == 0 && !r->overflow)
        return;
    r->line[r->len] = '\0';
    mb_handle_line(ctx, r->line, r->len, r->overflow);
}

/*
 * Reads commands until quit, EOF or a signal. The signals arrive through
 * a signalfd so that none can slip in between a check and a blocking read.
 */
static int mb_serve(mb_ctx_t *ctx, int sigfd)
{
    mb_reader_t reader;
    struct pollfd fds[2];
    char buf[4096];
    ssize_t n;

    memset(&reader, 0, sizeof(reader));

    fds[0].fd = STDIN_FILENO;
    fds[0].events = POLLIN;
    fds[1].fd = sigfd;
    fds[1].events = POLLIN;

    while (!ctx->quit) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("mock-broker: poll");
            return -1;
        }
        if (fds[1].revents != 0)
            return 0;
        if (fds[0].revents == 0)
            continue;

        n = read(STDIN_FILENO, buf, sizeof(buf));
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0) {
            mb_feed_eof(ctx, &reader);
            return n < 0 ? -1 : 0;
        }
        mb_feed(ctx, &reader, buf, (size_t)n);
    }
    return 0;
}

static void mb_usage(FILE *out)
{
    int i;

    fprintf(out,
            "usage: mock-broker [--brokers N] [--partitions P] "
            "[--topic NAME[:PARTS]]...\n"
            "\n"
            "Runs a librdkafka mock Kafka cluster on 127.0.0.1. Prints the "
            "bootstrap list as\nthe first stdout line, then answers each "
            "stdin command with one line,\n'ok' or 'error: <reason>'.\n"
            "\n"
            "  --brokers N     brokers, ids 1..N (default 3, max %d)\n"
            "  --partitions P  partitions for --topic without :PARTS "
            "(default 4);\n"
            "                  auto-created topics always get the mock's "
            "fixed 4\n"
            "  --topic NAME[:PARTS]  create a topic at start (repeatable)\n"
            "\n"
            "Commands:\n",
            MB_BROKERS_MAX);
    for (i = 0; i < MB_COMMAND_CNT; i++)
        fprintf(out, "  %s\n      %s\n", mb_commands[i].usage,
                mb_commands[i].what);
    fprintf(out,
            "\nAPI: a Kafka API name (Produce, Fetch, Metadata, "
            "InitProducerId, ...) or number.\nERROR: a librdkafka error name "
            "(NOT_LEADER_FOR_PARTITION, REQUEST_TIMED_OUT,\n_TRANSPORT, ...) "
            "or number. Broker ID -1 means all brokers for down/up/rtt.\n"
            "Blank lines and lines starting with '#' are ignored. EOF, "
            "SIGTERM or SIGINT\nstop the cluster and exit 0.\n");
}

/* Parses NAME[:PARTS] from --topic and creates the topic. */
static int mb_create_start_topic(mb_ctx_t *ctx, char *spec)
{
    char err[MB_ERR_MAX];
    char *colon = strchr(spec, ':');
    long parts = ctx->partitions;

    if (colon != NULL) {
        *colon = '\0';
        if (mb_parse_int_arg("partitions", colon + 1, 1, MB_PARTITIONS_MAX,
                             &parts, err) != 0)
            goto fail;
    }
    if (mb_parse_topic(spec, err) != 0 ||
        mb_topic_create(ctx, spec, (int)parts, mb_replication_default(ctx),
                        err) != 0)
        goto fail;
    return 0;

fail:
    fprintf(stderr, "mock-broker: --topic %s: %s\n", spec, err);
    return -1;
}

static int mb_parse_opts(int argc, char **argv, mb_ctx_t *ctx)
{
    static const struct option opts[] = {
        {"brokers", required_argument, NULL, 'b'},
        {"partitions", required_argument, NULL, 'p'},
        {"topic", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char err[MB_ERR_MAX];
    long v;
    int c;

    while ((c = getopt_long(argc, argv, "b:p:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'b':
        case 'p':
            if (mb_parse_int_arg(c == 'b' ? "--brokers" : "--partitions",
                                 optarg, 1,
                                 c == 'b' ? MB_BROKERS_MAX
                                          : MB_PARTITIONS_MAX,
                                 &v, err) != 0) {
                fprintf(stderr, "mock-broker: %s\n", err);
                return 2;
            }
            if (c == 'b')
                ctx->broker_cnt = (int)v;
            else
                ctx->partitions = (int)v;
            break;
        case 't':
            ctx->topics[ctx->topic_cnt++] = optarg; /* argc bounds this */
            break;
        case 'h':
            mb_usage(stdout);
            return 1;
        default:
            mb_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mock-broker: unexpected argument '%s'\n",
                argv[optind]);
        return 2;
    }
    return 0;
}

static int mb_create_start_topics(mb_ctx_t *ctx)
{
    int i;

    for (i = 0; i < ctx->topic_cnt; i++) {
        if (mb_create_start_topic(ctx, ctx->topics[i]) != 0)
            return -1;
    }
    return 0;
}

static int mb_cluster_new(mb_ctx_t *ctx)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char errstr[512];

    /*
     * The handle only hosts the mock cluster and never connects, so its
     * notice about a missing bootstrap.servers is noise: log warnings up.
     */
    if (rd_kafka_conf_set(conf, "client.id", "oncebox-mock-broker", errstr,
                          sizeof(errstr)) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "log_level", "4", errstr, sizeof(errstr)) !=
            RD_KAFKA_CONF_OK)
        goto fail_conf;

    ctx->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (ctx->rk == NULL)
        goto fail_conf; /* conf is still ours when rd_kafka_new fails */

    ctx->mcluster = rd_kafka_mock_cluster_new(ctx->rk, ctx->broker_cnt);
    if (ctx->mcluster == NULL) {
        fprintf(stderr, "mock-broker: cannot create mock cluster\n");
        rd_kafka_destroy(ctx->rk);
        return -1;
    }
    return 0;

fail_conf:
    fprintf(stderr, "mock-broker: %s\n", errstr);
    rd_kafka_conf_destroy(conf);
    return -1;
}

/*
 * Blocks SIGINT and SIGTERM before librdkafka starts its threads, which
 * inherit the mask, so that the signals only ever reach the signalfd.
 * A shell starts background jobs with SIGINT ignored; the default is
 * restored so that Ctrl-C stops a mock-broker started from a script.
 */
static int mb_signals_block(void)
{
    sigset_t set;
    int fd;

    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        return -1;
    fd = signalfd(-1, &set, SFD_CLOEXEC);
    if (fd < 0)
        perror("mock-broker: signalfd");
    return fd;
}

int main(int argc, char **argv)
{
    mb_ctx_t ctx = {NULL, NULL, 3, 4, NULL, 0, 0};
    int rc, sigfd;

    ctx.topics = calloc((size_t)argc, sizeof(*ctx.topics));
    if (ctx.topics == NULL)
        return 1;
    rc = mb_parse_opts(argc, argv, &ctx);
    if (rc != 0) {
        rc = rc == 1 ? 0 : rc;
        goto free_topics;
    }

    rc = 1;
    sigfd = mb_signals_block();
    if (sigfd < 0)
        goto free_topics;

    if (mb_cluster_new(&ctx) != 0)
        goto close_sigfd;
    if (mb_create_start_topics(&ctx) != 0)
        goto destroy_cluster;

    printf("%s\n", rd_kafka_mock_cluster_bootstraps(ctx.mcluster));
    fflush(stdout);

    rc = mb_serve(&ctx, sigfd) == 0 ? 0 : 1;

destroy_cluster:
    rd_kafka_mock_cluster_destroy(ctx.mcluster);
    rd_kafka_destroy(ctx.rk);
close_sigfd:
    close(sigfd);
free_topics:
    free(ctx.topics);
    return rc;
}
