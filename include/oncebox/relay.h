/*
 * oncebox producer half: the polling relay, which publishes committed
 * outbox rows to Kafka and marks (or deletes) each one after Kafka has
 * acknowledged it.
 *
 * How one batch goes: in one PostgreSQL transaction the relay claims up
 * to "relay.batch.size" due pending rows of the lanes it holds (FOR
 * UPDATE SKIP LOCKED, in append order), produces them all with
 * librdkafka's idempotent producer (acks=all), waits for every delivery
 * report, then in the same transaction marks the delivered rows
 * published (or deletes them) and records the failures, and commits.
 *
 * Guarantees:
 * - A row is marked only after a successful delivery report for it. A
 *   relay that dies (or loses PostgreSQL) between producing and
 *   committing leaves its rows pending, so they are published again
 *   with the same idempotency key: delivery is at-least-once, and the
 *   duplicates are exactly the rows that were in flight.
 * - No committed row is skipped, however late it commits: rows are
 *   selected by state, never after a "last seq seen".
 * - Per aggregate, rows reach their topic in append order, also across
 *   retries, several relays and a failure in the middle of a batch: a
 *   row is produced only when every earlier row of its aggregate is
 *   published, or earlier in the same batch and the same producer
 *   stream. A row waiting for a retry holds back its aggregate's later
 *   rows, and so does a parked row unless "relay.park.blocks.aggregate"
 *   is false. With duplicates, the first copies are in order.
 * - The producer never gives up on a single message on its own: it runs
 *   with an infinite message timeout and librdkafka's gap-less
 *   guarantee, so a failure inside a partition's stream fails the rest
 *   of that stream rather than leaving a gap. "kafka.message.timeout.ms"
 *   (or its alias "kafka.delivery.timeout.ms", default here 30000)
 *   instead bounds a whole batch: when it expires, the batch's
 *   undelivered messages are purged, recorded as failed attempts, and
 *   the producer is replaced by a new one.
 * - librdkafka may send a partition's next request after the previous
 *   one failed; Apache Kafka brokers refuse it (it breaks the idempotent
 *   producer's sequence), other Kafka-protocol brokers may not (the
 *   mock cluster does not). So the relay sends each partition's part of
 *   a batch as one request: it sets linger.ms long (1000) and flushes
 *   after a batch's last row, and batch.num.messages to at least
 *   "relay.batch.size". Where a part is larger than one request may be
 *   (librdkafka's batch.size, the broker's message.max.bytes, about
 *   1 MB by default), or "kafka.linger.ms" is set short, order after a
 *   failed request relies on the broker refusing what follows it.
 *
 * Lanes: outbox.lane is a hash bucket 0..1023 of the aggregate id, and a
 * row belongs to lane group lane % "relay.lanes". A relay publishes a
 * group only while its PostgreSQL session (application_name "oncebox
 * relay HOST/PID") holds the session advisory lock
 * (hashtext('oncebox.relay:' || schema), group). Each live relay also
 * holds the shared lock (hashtext('oncebox.relay.member:' || schema), 0)
 * so that the others can count it. Every "relay.lanes.interval.ms" a
 * relay takes free groups up to its fair share (groups / live relays)
 * and releases what is above it, between batches; a relay that dies
 * loses its locks when PostgreSQL notices its closed session, and the
 * others take its groups at their next check. Every relay of a schema
 * must use the same "relay.lanes": the first one records it in
 * <schema>.relay_config and the others refuse to start with another
 * value (OB_ECONF). To change it, stop every relay and UPDATE that row.
 *
 * Failures: a failed delivery raises the row's retry_count, records
 * last_error and delays the row by an exponential backoff with jitter
 * ("relay.retry.backoff.ms" doubling up to "relay.retry.backoff.max.ms").
 * Outages of Kafka (brokers unreachable, timeouts, leader elections, not
 * enough replicas, the batch timeout above) only delay a row: it is
 * never parked for them, however long they last. A failure of the row
 * itself parks it (state 'parked') once its retry_count reaches
 * "relay.retry.max"; permanent errors park it at once: a message larger
 * than "kafka.message.max.bytes" (set it to the broker's limit, so that
 * oversized rows are refused one by one before they are sent), a topic
 * that does not exist (when the broker does not create topics) or that
 * the relay may not write, a topic name Kafka does not allow.
 * An operator sends parked rows again with `oncebox dead replay`.
 *
 * Messages follow wire.h: key the aggregate id, value the payload as
 * PostgreSQL prints the stored jsonb, the headers named there plus the
 * row's own, topic the row's topic or "relay.topic.template" with
 * {aggregate_type} replaced by the lower-cased (ASCII) aggregate type.
 * The default partitioner is murmur2_random, the Java client's, so keys
 * land on the partitions other Kafka clients would choose.
 *
 * Notes:
 * - A batch keeps its transaction open while it waits for Kafka, up to
 *   the batch timeout above; an idle_in_transaction_session_timeout
 *   shorter than that ends the session, and the batch is published
 *   again after the reconnect.
 * - Rows held back behind a parked row stay pending, and each claim
 *   walks past them: a large blocked backlog slows every batch until an
 *   operator replays or removes the parked row.
 * - Order holds within a topic. Rows of one aggregate routed to
 *   different topics (a per-event topic) go in separate batches, in
 *   order, but a consumer of two topics sees no order between them.
 *   Adding partitions to a topic moves keys, as with any Kafka producer.
 * - Marking costs an UPDATE per row that touches the outbox's indexes;
 *   "relay.published" = delete is cheaper when no retention is needed.
 */
#ifndef ONCEBOX_RELAY_H
#define ONCEBOX_RELAY_H

#include <stdint.h>

#include "oncebox/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ob_relay ob_relay_t;

/*
 * Counters of one relay since ob_relay_new(). A value type with a size
 * field: fields added later go at the end.
 */
typedef struct ob_relay_stats {
    size_t size;              /* sizeof(ob_relay_stats_t) */
    uint64_t published;       /* rows delivered and marked or deleted */
    uint64_t retried;         /* failed deliveries left pending to retry */
    uint64_t parked;          /* rows parked */
    uint64_t batches;         /* committed batches that held rows */
    uint64_t batch_rows;      /* rows in the latest such batch */
    double batch_ms;          /* claim to commit of the latest batch */
    double batch_ms_max;      /* the longest batch so far */
    double batch_ms_total;    /* sum over all batches, for a mean */
    uint64_t reconnects;      /* PostgreSQL sessions lost and opened again */
    uint64_t producer_resets; /* producers replaced after a failure */
    int lanes;                /* "relay.lanes": the lane groups in all */
    int lanes_held;           /* groups this relay holds now */
    /* Where the latest batch's batch_ms went: */
    double batch_claim_ms;    /* BEGIN and the claim query */
    double batch_kafka_ms;    /* producing until the last delivery report */
    double batch_commit_ms;   /* recording the outcomes and COMMIT */
} ob_relay_stats_t;

/*
 * Called on the thread running ob_relay_run() or ob_relay_drain() after
 * each batch that held rows and after the held groups change. stats is
 * only valid during the call. The callback must not call back into the
 * relay, except ob_relay_stop().
 */
typedef void (*ob_relay_stats_fn)(void *opaque, const ob_relay_stats_t *stats);

/*
 * A new relay for the database conninfo (a libpq connection string or
 * URI; NULL or "": libpq's defaults and PG* variables), configured from
 * conf (NULL: defaults). conninfo and conf are copied. Free with
 * ob_relay_destroy(). No connection is opened yet; the Kafka producer is
 * created, so Kafka settings are checked here.
 *
 * Keys it reads: "schema", "relay.lanes", "relay.batch.size",
 * "relay.batch.bytes" (stored payload bytes per batch; at least one row),
 * "relay.poll.interval.ms" (the longest wait for work without a NOTIFY),
 * "relay.lanes.interval.ms", "relay.retry.max",
 * "relay.retry.backoff.ms", "relay.retry.backoff.max.ms",
 * "relay.park.blocks.aggregate", "relay.topic.template",
 * "relay.published" (mark or delete), and every "kafka." key, passed to
 * librdkafka ("kafka.bootstrap.servers" is required). The relay sets
 * enable.idempotence, acks=all and enable.gapless.guarantee itself and
 * refuses values that contradict them.
 *
 * Errors: OB_EINVAL (relayp NULL), OB_ECONF (a malformed conninfo, a
 * template that cannot give a topic name, no bootstrap servers, a Kafka
 * property librdkafka refuses: the message names it and never shows a
 * secret value), OB_EKAFKA (librdkafka could not start), OB_ESYS,
 * OB_ENOMEM.
 */
OB_API int ob_relay_new(ob_relay_t **relayp, const char *conninfo,
                        const ob_conf_t *conf, ob_error_t *err);

/* Stops nothing: call it after ob_relay_run() or _drain() returned. */
OB_API void ob_relay_destroy(ob_relay_t *relay);

/*
 * Sets the stats callback (fn NULL: none). Call before ob_relay_run()
 * or ob_relay_drain(), not while they run.
 */
OB_API void ob_relay_set_stats_cb(ob_relay_t *relay, ob_relay_stats_fn fn,
                                  void *opaque);

/*
 * Copies the counters into *stats (stats->size must be set; fields past
 * it are left alone). Call from the thread that runs the relay, or
 * when it does not run.
 */
OB_API void ob_relay_stats(const ob_relay_t *relay, ob_relay_stats_t *stats);

/*
 * Publishes until ob_relay_stop(): connects, takes its share of the
 * lane groups, and relays batch after batch, waking on NOTIFY and at
 * least every "relay.poll.interval.ms". Once connected, a lost
 * PostgreSQL session is opened again with a backoff (up to 5 s between
 * attempts) and its groups taken again; a Kafka outage is retried
 * without end. Returns 0 after ob_relay_stop(), once the batch in
 * flight is delivered (or timed out) and committed; the session, and
 * with it every lane group, is closed then.
 *
 * Errors, after which the relay stops (destroy it or run it again):
 *   OB_EPG      the first connection failed (a wrong conninfo fails
 *               fast; ob_error_is_retriable() tells a server that may
 *               come up from a refusal), or PostgreSQL refused a request
 *               for a reason retrying will not change (sqlstate says
 *               why, e.g. 42501 for a missing privilege)
 *   OB_ESCHEMA  the schema is missing or older than this relay needs
 *               (run ob_schema_migrate()), or newer than it knows
 *   OB_ECONF    "relay.lanes" differs from the schema's relay_config
 *   OB_EKAFKA   a new producer could not be started
 *   OB_ESTATE   the relay is already running
 *   OB_ENOMEM
 */
OB_API int ob_relay_run(ob_relay_t *relay, ob_error_t *err);

/*
 * Like ob_relay_run(), but returns 0 as soon as no pending row of the
 * held groups is due or waiting for a retry (rows held back behind a
 * parked row do not count): the backlog that was committed when it ran
 * is published. Failed rows are retried while it runs, so a Kafka
 * outage keeps it running; ob_relay_stop() ends it early, also with 0
 * (ob_relay_stats() tells what was done). Same errors as ob_relay_run().
 */
OB_API int ob_relay_drain(ob_relay_t *relay, ob_error_t *err);

/*
 * Asks ob_relay_run() or ob_relay_drain() to return: the batch in
 * flight is finished and committed first. Async-signal-safe, callable
 * from any thread and from a signal handler; repeating it is harmless.
 * A stop that comes before run or drain starts makes the next of them
 * return at once; each return uses the request up, so the relay may be
 * run again.
 */
OB_API void ob_relay_stop(ob_relay_t *relay);

#ifdef __cplusplus
}
#endif

#endif
