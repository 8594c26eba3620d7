/*
 * What the files of the consumer share: the consumer object, the
 * message as the loop keeps it, and the steps of the loop. Private;
 * never installed.
 */
#ifndef ONCEBOX_INBOX_INTERNAL_H
#define ONCEBOX_INBOX_INTERNAL_H

#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "core/internal.h"
#include "inbox/store.h"
#include "oncebox/dedup.h"
#include "oncebox/inbox.h"

#define OB__HASH_LEN OB_DEDUP_HASH_LEN

/* Where a message stands in its batch. */
enum ob__msg_state {
    OB__MSG_PENDING = 0, /* to be claimed and handled */
    OB__MSG_APPLIED,     /* handler succeeded */
    OB__MSG_DUPLICATE,   /* key already claimed */
    OB__MSG_SKIPPED,     /* reused key, dropped under "skip" */
    OB__MSG_DEAD         /* goes to the dead letters */
};

struct ob_message {
    rd_kafka_message_t *rkm;
    const char *topic;
    char *key; /* the idempotency key, NULL when there is no valid one */
    size_t key_len;
    unsigned char hash[OB__HASH_LEN];
    json_t *json;
    int attempt;  /* the handler run in progress, from 1 */
    int failures; /* failed handler runs in this batch */
    int transient; /* retriable handler failures, each a batch rerun */
    int malformed; /* dead before any handler run: reason is final */
    int reused;    /* a duplicate whose payload hash differs */
    int dlq_sent;  /* delivered to the dead-letter topic already */
    int dlq_err;   /* its delivery report: -1 while waiting */
    enum ob__msg_state state;
    const char *reason; /* OB_DLQ_* code for dead letters */
    char *detail;       /* its sentence */
    char *headers_json; /* built for dead letters only */
};

struct ob_txn {
    ob__inbox_store_t *store;
};

/* A partition this member owns. */
typedef struct ob__tp {
    char *topic;
    int32_t partition;
    int64_t next_offset; /* the next offset to handle; -1: not known */
    int64_t batch_next;  /* in the open batch: next offset, -1 none */
    int64_t stored;      /* next offset committed to the inbox, or -1 */
} ob__tp_t;

typedef struct ob__counters {
    _Atomic uint64_t messages, applied, duplicates, dead_letters, skipped,
        key_reused, retries, batches, reconnects, purged;
} ob__counters_t;

/* The consumer's settings, read once from the configuration. */
typedef struct ob__settings {
    size_t batch_size;
    int64_t batch_wait_ms;
    int attempts;
    int64_t backoff_ms, backoff_max_ms;
    int64_t reconnect_max_ms;
    int64_t idle_exit_ms;
    int64_t retention_ms;
    int64_t purge_interval_ms;
    size_t purge_batch;
    int key_offset_fallback; /* consumer.key.missing = offset */
    int reuse_skip;          /* consumer.key.reuse = skip */
    int kafka_commit;
    int offset_end_when_none; /* auto.offset.reset asks for the end */
} ob__settings_t;

struct ob_consumer {
    ob__settings_t set;
    ob__log_t log;
    ob_conf_t *conf; /* the copy, for the producer of dead letters */
    char *group;
    char **topics;
    size_t topic_count;
    char *dlq_template;

    ob_handler_fn handler;
    void *handler_opaque;
    unsigned handler_flags;
    ob_batch_handler_fn batch_handler; /* optional, optimistic pass only */
    void *batch_opaque;

    ob__inbox_store_t *store;
    rd_kafka_t *rk;
    rd_kafka_t *dlq; /* created on the first dead letter */
    int cooperative;
    int ran;

    ob__tp_t *tps;
    size_t tp_count, tp_cap;

    ob_message_t *batch;
    size_t batch_len;
    int careful; /* the batch runs with a savepoint per message */

    volatile sig_atomic_t stop;
    int fatal; /* a rebalance failed for a reason retrying cannot fix */
    ob_error_t fatal_err;
    int64_t last_message_ms;
    int64_t next_purge_ms;
    int64_t next_kafka_commit_ms;
    int kafka_dirty; /* stored offsets not yet committed to Kafka */
    uint64_t rng; /* backoff jitter */
    ob__counters_t counters;
};

/*
 * message.c: from a Kafka message to what a batch needs. m takes rkm
 * (also on failure: clear it). Fails only when the value cannot be
 * hashed (OB_ENOMEM); malformed input is marked for the dead letters.
 */
int ob__message_prepare(ob_consumer_t *c, ob_message_t *m,
                        rd_kafka_message_t *rkm, ob_error_t *err);
void ob__message_clear(ob_message_t *m);
void ob__message_dead(ob_message_t *m, const char *reason,
                      const char *fmt, ...) OB_PRINTF(3, 4);
void ob__message_item(const ob_message_t *m, ob__inbox_item_t *it);

/* The headers as a JSON array for dead_letters.headers: one object per
 * header, "name" and "value" as text when they are UTF-8 without NUL,
 * else "name_base64" / "value_base64"; "value": null for no value. */
char *ob__headers_json(rd_kafka_headers_t *hdrs);

/* "<topic>/<partition>/<offset>", or with the topic's SHA-256 in hex
 * when that would be longer than OB_KEY_MAX. */
void ob__offset_key(const char *topic, int32_t partition, int64_t offset,
                    char out[OB_KEY_MAX + 1]);

/* The dead-letter topic for topic: template with {topic} replaced. */
char *ob__dlq_topic(const char *tmpl, const char *topic);

/* Kafka's rule: 1..249 of [a-zA-Z0-9._-], not "." or "..". */
int ob__topic_valid(const char *topic);

/* The handler backoff before run number failures + 1, in ms. */
int64_t ob__backoff_ms(const ob__settings_t *set, int failures,
                       uint64_t random);

/* batch.c: one batch from claim to commit, with its retries. */
int ob__batch_process(ob_consumer_t *c, ob_error_t *err);
void ob__batch_free(ob_consumer_t *c);

/* Waits ms, in short naps, returning early (non-zero) on a stop. */
int ob__nap(ob_consumer_t *c, int64_t ms);

/* Reconnects with backoff until it works, a fatal error or a stop. */
int ob__store_reopen(ob_consumer_t *c, int *fresh, ob_error_t *err);

/* dlq.c: produces the batch's dead letters and waits for every
 * delivery report. */
int ob__dlq_send(ob_consumer_t *c, ob_error_t *err);
void ob__dlq_destroy(ob_consumer_t *c);

/* consumer.c: the partition table. */
ob__tp_t *ob__tp_find(ob_consumer_t *c, const char *topic, int32_t part);

/*
 * Commits the inbox's stored offsets to Kafka too, for lag tools only,
 * at most once a second unless force: never read back, so how often is
 * only a matter of how fresh the lag figures are.
 */
void ob__kafka_commit(ob_consumer_t *c, int force);

#endif
