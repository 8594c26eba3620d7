/*
 * The polling relay's parts, shared by outbox/relay*.c and their unit
 * tests. Private; never installed.
 *
 * relay.c        the object, its loops, stop and stats
 * relay_pg.c     the PostgreSQL session: connect, lanes, claim, finish
 * relay_kafka.c  the producer: configuration, produce, delivery reports
 * relay_batch.c  what needs no server: topics, which claimed rows to
 *                produce, how each failure counts, backoff, masking
 */
#ifndef ONCEBOX_OUTBOX_RELAY_INTERNAL_H
#define ONCEBOX_OUTBOX_RELAY_INTERNAL_H

#include <signal.h>
#include <stdint.h>

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#include "core/internal.h"
#include "oncebox/relay.h"

/* Room for a Kafka topic name (249 bytes) and its NUL. */
#define OB__TOPIC_SIZE 250

/* The most lane groups: outbox.lane has 1024 values. */
#define OB__LANES_MAX 1024

/*
 * The first keys of the lane locks (second key: the group) and of the
 * shared lock every live relay holds (second key: 0), in SQL, with the
 * schema name as parameter $1. The lane key is the contract with
 * `oncebox status`.
 */
#define OB__RELAY_LANE_KEY "pg_catalog.hashtext('oncebox.relay:' || $1)"
#define OB__RELAY_MEMBER_KEY                                               \
    "pg_catalog.hashtext('oncebox.relay.member:' || $1)"

/* Settings read once from the configuration. */
typedef struct ob__relay_settings {
    char *schema;
    char *topic_template;
    int lanes;
    int batch_size;
    long long batch_bytes;
    int poll_ms;
    int lanes_interval_ms;
    int retry_max;
    int backoff_ms;
    int backoff_max_ms;
    int park_blocks;
    int delete_published;
    int delivery_timeout_ms; /* 0: a batch waits for Kafka without end */
} ob__relay_settings_t;

/* Where a claimed row is in this batch. */
enum ob__row_state {
    OB__ROW_HELD = 0, /* claimed but not produced: left exactly as it was */
    OB__ROW_INFLIGHT, /* produced, no delivery report yet */
    OB__ROW_DELIVERED,
    OB__ROW_FAILED
};

/* How a failed delivery counts. */
enum ob__err_class {
    OB__ERR_OUTAGE = 0, /* Kafka's trouble: delayed, never parked for it */
    OB__ERR_ROW,        /* the row's own: counts toward relay.retry.max */
    OB__ERR_PERMANENT   /* cannot succeed: parked at once */
};

/*
 * One claimed row. The text fields point into the claim's PGresult,
 * which lives as long as the batch, so librdkafka can send the payload
 * and key without a copy.
 */
typedef struct ob__relay_row {
    int rn; /* place among the claim's candidates, from 1, in seq order */
    const char *tid, *id, *aggregate_type, *aggregate_id, *event_type;
    const char *payload, *key, *topic_column, *headers;
    size_t aggregate_id_len, payload_len;
    int retry_count;
    enum ob__row_state state;
    int err;    /* rd_kafka_resp_err_t of a failure */
    int local;  /* the failure came from produce() itself */
    enum ob__err_class err_class;
    int32_t partition;
    char *error; /* last_error of a failure (ob__free) */
    char topic[OB__TOPIC_SIZE];
} ob__relay_row_t;

typedef struct ob__relay_batch {
    PGresult *res;
    ob__relay_row_t *rows;
    size_t count, cap;
    size_t outstanding; /* produced rows still without a report */
    size_t produced;
    int gap;            /* a later row of an aggregate delivered after an
                           earlier one failed: must never happen */
} ob__relay_batch_t;

/* What one batch did, for the log and the counters. */
typedef struct ob__relay_outcome {
    size_t delivered, retried, parked, held;
    size_t outages; /* failures that were Kafka's, not the rows' */
} ob__relay_outcome_t;

typedef struct ob__relay_topic {
    char *name;
    rd_kafka_topic_t *rkt;
} ob__relay_topic_t;

typedef struct ob__relay_kafka {
    rd_kafka_conf_t *conf; /* kept to make a new producer after a failure */
    rd_kafka_t *rk;
    ob__relay_topic_t *topics;
    size_t topic_count, topic_cap;
    int fatal; /* the producer raised a fatal error: replace it */
} ob__relay_kafka_t;

typedef struct ob__relay_pg {
    PGconn *conn;
    char *conninfo;
    char *claim_sql;
    char *finish_sql;
    char *waiting_sql;
    char *config_sql;
    char channel[128]; /* the NOTIFY channel, quoted */
    char appname[128];
    unsigned char held[OB__LANES_MAX];
    int held_count;
    int prepared;
    int64_t next_lanes_ms;
    int64_t backoff_ms;
} ob__relay_pg_t;

struct ob_relay {
    ob__relay_settings_t set;
    ob__log_t log;
    char **secrets; /* values never to show in logs or errors */
    size_t secret_count;
    ob__relay_pg_t pg;
    ob__relay_kafka_t kafka;
    ob__relay_batch_t batch;
    ob_relay_stats_t stats;
    ob_relay_stats_fn stats_fn;
    void *stats_opaque;
    volatile sig_atomic_t stop;
    int wake[2]; /* self-pipe: ob_relay_stop() writes, waits poll it */
    int running;
    int connected_once; /* in this run: a first failure to connect stops */
    int64_t outage_ms;  /* pause after a batch that only met an outage */
    uint64_t rng;
};

/* relay.c */
void ob__relay_log(ob_relay_t *r, int level, const char *facility,
                   const char *fmt, ...) OB_PRINTF(4, 5);
int ob__relay_stopping(const ob_relay_t *r);
uint32_t ob__relay_random(ob_relay_t *r);

/* Adds a value that must never appear in a log line or an error. */
int ob__relay_secret(ob_relay_t *r, const char *value);

/* Refreshes lanes_held and calls the stats callback. */
void ob__relay_stats_changed(ob_relay_t *r);

/* Frees the rows and the result a batch holds. */
void ob__relay_batch_free(ob__relay_batch_t *b);

/*
 * Waits up to timeout_ms (-1: no limit) until fd (may be -1) is
 * readable or ob_relay_stop() is called. Returns 1 when fd is readable,
 * 0 otherwise.
 */
int ob__relay_wait_fd(ob_relay_t *r, int fd, int events, int timeout_ms);

/* relay_pg.c */
int ob__relay_pg_init(ob_relay_t *r, const char *conninfo, ob_error_t *err);
void ob__relay_pg_free(ob_relay_t *r);
void ob__relay_pg_close(ob_relay_t *r);
int ob__relay_pg_connected(const ob_relay_t *r);

/*
 * Runs sql with n (0..2) text parameters p1, p2 on the session; *resp
 * (resp may be NULL) as for ob__pg_exec_params().
 */
int ob__relay_pg_query(ob_relay_t *r, const char *sql, int n,
                       const char *p1, const char *p2, const char *what,
                       PGresult **resp, ob_error_t *err);

/* Opens the session and sets it up; a stop request ends it early. */
int ob__relay_pg_open(ob_relay_t *r, ob_error_t *err);

/* relay_lanes.c: takes and releases lane groups toward the fair share,
 * when force is set or "relay.lanes.interval.ms" has passed. */
int ob__relay_pg_lanes(ob_relay_t *r, int force, ob_error_t *err);

/* BEGIN and the claim; fills r->batch with the candidates. */
int ob__relay_pg_claim(ob_relay_t *r, ob_error_t *err);

/* Records every row's outcome and commits. */
int ob__relay_pg_finish(ob_relay_t *r, ob__relay_outcome_t *out,
                        ob_error_t *err);

/* ROLLBACK, when a batch cannot be finished; errors are ignored. */
void ob__relay_pg_abort(ob_relay_t *r);

/*
 * Milliseconds until the earliest row waiting for a retry is due (0 if
 * one is due now), or -1 when no row waits.
 */
int ob__relay_pg_waiting(ob_relay_t *r, int64_t *msp, ob_error_t *err);

/* Waits for a NOTIFY, the poll interval or a stop; 1 on a NOTIFY. */
int ob__relay_pg_wait(ob_relay_t *r, int timeout_ms, ob_error_t *err);

/* relay_kafka.c */
int ob__relay_kafka_init(ob_relay_t *r, const ob_conf_t *conf,
                         ob_error_t *err);
void ob__relay_kafka_free(ob_relay_t *r);

/* Produces the planned rows; a row produce() refuses fails at once. */
void ob__relay_kafka_produce(ob_relay_t *r);

/*
 * Waits for every delivery report of the batch, purging what is left
 * when the batch timeout expires; every produced row ends up delivered
 * or failed.
 */
void ob__relay_kafka_wait(ob_relay_t *r);

/* Replaces a producer that failed or was purged by a new one. */
int ob__relay_kafka_ready(ob_relay_t *r, ob_error_t *err);

/* Serves librdkafka's queued logs and errors without waiting. */
void ob__relay_kafka_poll(ob_relay_t *r);

/* relay_batch.c: pure functions, tested by tests/unit/test_relay.c. */

/*
 * The topic of a row: override when not NULL, else template with each
 * "{aggregate_type}" replaced by aggregate_type in ASCII lower case.
 * Returns 0, or OB_ENAME / OB_ETOOLONG / OB_EEMPTY when the result is
 * not a topic name Kafka allows (err says which, naming the topic).
 */
int ob__relay_topic(const char *template_, const char *aggregate_type,
                    const char *override, char *out, size_t size,
                    ob_error_t *err);

/* Whether template_ gives valid topic names for plain aggregate types. */
int ob__relay_template_check(const char *template_, ob_error_t *err);

/*
 * Decides which claimed rows to produce, in rn order: per aggregate,
 * the rows up to (not including) the first one the claim could not
 * lock, or a gap in rn (a candidate locked by someone else), or one
 * routed to another topic than the aggregate's earlier rows in this
 * batch. Every row after a gap in rn is held back as well. Rows to
 * produce are left OB__ROW_INFLIGHT, the others OB__ROW_HELD. Returns
 * the number to produce, or OB_ENOMEM.
 */
int ob__relay_plan(ob__relay_row_t *rows, size_t count);

/* The class of a delivery error; local: produce() returned it. */
enum ob__err_class ob__relay_err_class(int err, int local);

/*
 * Settles the failures of a finished batch: picks, per partition, the
 * largest row the broker refused as too large as the one to park, and
 * reports whether a delivered row followed a failed one of its
 * aggregate. Returns that gap flag.
 */
int ob__relay_settle(ob__relay_row_t *rows, size_t count);

/*
 * The delay before attempt number attempt + 1 (attempt >= 1 failed
 * attempts so far): base * 2^(attempt - 1), at most max, then spread
 * with "equal jitter" over [d/2, d] by rnd.
 */
int64_t ob__relay_backoff_ms(int attempt, int base, int max, uint32_t rnd);

/* Whether a row with this failure and retry_count is parked now. */
int ob__relay_parks(const ob__relay_row_t *row, int retry_max);

/*
 * Replaces each occurrence of each secret (count strings, NULL or empty
 * ones ignored) in s, a NUL-terminated string in a buffer of size
 * bytes, by "***".
 */
void ob__relay_mask(char *s, size_t size, char *const *secrets,
                    size_t count);

#endif
