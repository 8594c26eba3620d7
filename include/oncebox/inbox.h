/*
 * oncebox consumer half: a Kafka consumer-group loop that gives each
 * event one effect, with an inbox of idempotency keys in PostgreSQL.
 *
 * The application registers a handler. For every message the consumer
 * opens (or continues) a transaction on its own PostgreSQL connection,
 * claims the message's idempotency key in the inbox table, runs the
 * handler with that transaction, stores the partition's next offset in
 * consumer_offsets, and commits: the claim, the handler's writes and
 * the offset become durable together or not at all. A message whose key
 * is already claimed is a duplicate: the handler is not run, and the
 * stored offset still moves past it.
 *
 * Messages follow the wire contract of wire.h: the idempotency key is
 * the "idempotency-key" header, the value is JSON. Messages from any
 * producer that follows it are accepted (kcat, kafka-python, Java).
 *
 * The guarantee and its limits:
 * - Effects happen once per idempotency key while the key is in the
 *   inbox. Keys are kept for "inbox.retention.s" (default 7 days) and
 *   then purged; a redelivery after that is applied again. The window
 *   must exceed the longest redelivery horizon: Kafka retention, relay
 *   replays, a consumer group reset to old offsets.
 * - Only what the handler writes through the transaction's connection
 *   is covered. A handler must not call other services, send mail,
 *   write files or use another connection for effects that must happen
 *   once: the same message can be handled again after a crash, a lost
 *   connection, a failing neighbour in its batch or a rebalance, and
 *   only the run whose transaction commits counts.
 * - A handler must not COMMIT, ROLLBACK, or release or roll back to
 *   savepoints it did not create; it may use savepoints of its own.
 * - Order holds per partition: within a partition the handler sees
 *   messages in offset order, one at a time.
 * - Offsets live in the database, next to the effects. On assignment
 *   the consumer seeks each partition to its stored offset; Kafka's
 *   committed offsets are written too (for lag tools) but never read.
 *   A partition without a stored offset starts where
 *   "kafka.auto.offset.reset" says (default: the earliest message).
 *   Stored offsets only move forward; after recreating a topic, delete
 *   its rows from consumer_offsets.
 *
 * Batches. Up to "consumer.batch.size" messages share one transaction
 * and one commit. The batch first runs without savepoints (savepoints
 * cost a subtransaction each, and more than 64 of them in one
 * transaction slow down every snapshot on the server). When a handler
 * fails, the whole batch is rolled back and run again with a savepoint
 * around each message, so a failing handler undoes only its own
 * message; the committed result is the same as if every message had had
 * its own savepoint from the start. A handler therefore may run several
 * times for one message: see the guarantee above.
 *
 * Failures:
 * - A handler that returns a negative value fails; it runs again, after
 *   a backoff ("consumer.retry.backoff.ms", doubling up to
 *   "consumer.retry.backoff.max.ms"), until "consumer.retry.attempts"
 *   runs have failed. Then the message goes to the dead-letter topic and
 *   the partition moves on. A handler that returns OB_HANDLER_REJECT
 *   sends its message there at once.
 * - Malformed messages go to dead letters at once: no idempotency key
 *   (under "consumer.key.missing" = "reject", the default), a key that
 *   is longer than OB_KEY_MAX bytes, not UTF-8 or holds a NUL byte, and,
 *   for a handler registered with OB_HANDLER_JSON, a value that is not
 *   JSON (binary junk included).
 * - A reused key: a duplicate whose payload hash (SHA-256 of the value
 *   bytes, stored with every claim) differs from the stored one. It is
 *   logged as a warning and counted (key_reused in the statistics) and,
 *   under "consumer.key.reuse" = "dead-letter" (the default), sent to
 *   the dead letters, so the differing event is kept for a person to
 *   look at; under "skip" it is dropped like any duplicate.
 * - Dead letters are produced to "consumer.dlq.topic" (default
 *   "{topic}.dlq": the original topic followed by ".dlq") with the
 *   original key, value and headers plus the OB_DLQ_HEADER_* headers
 *   below, and recorded in the dead_letters table in the batch's
 *   transaction. The batch commits only after the broker acknowledged
 *   every dead letter, so a crash can send one twice, never lose it. A
 *   dead-lettered message's key is not claimed: replaying it later
 *   applies it.
 * - PostgreSQL lost (restart, network): the open batch is rolled back
 *   by the server; the consumer reconnects with backoff (up to
 *   "consumer.reconnect.backoff.max.ms") and runs the batch again, from
 *   memory. What had committed is found claimed and skipped.
 *
 * This header includes <libpq-fe.h> and <jansson.h>; programs using it
 * link libpq, librdkafka and jansson too.
 */
#ifndef ONCEBOX_INBOX_H
#define ONCEBOX_INBOX_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "oncebox/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Headers added to every dead letter, next to the original ones. Values
 * are UTF-8 text; partition, offset and attempts in decimal.
 */
#define OB_DLQ_HEADER_REASON "dlq-reason"          /* a code, see below */
#define OB_DLQ_HEADER_ERROR "dlq-error"            /* a sentence */
#define OB_DLQ_HEADER_TOPIC "dlq-original-topic"
#define OB_DLQ_HEADER_PARTITION "dlq-original-partition"
#define OB_DLQ_HEADER_OFFSET "dlq-original-offset"
#define OB_DLQ_HEADER_GROUP "dlq-consumer-group"
#define OB_DLQ_HEADER_ATTEMPTS "dlq-attempts"      /* handler runs */

/*
 * The reason codes, in the dlq-reason header and the reason column of
 * dead_letters (there followed by ": " and the error sentence).
 */
#define OB_DLQ_HANDLER_FAILED "handler-failed"     /* attempts used up */
#define OB_DLQ_HANDLER_REJECTED "handler-rejected" /* OB_HANDLER_REJECT */
#define OB_DLQ_MISSING_KEY "missing-key"
#define OB_DLQ_INVALID_KEY "invalid-key"           /* too long, not UTF-8 */
#define OB_DLQ_INVALID_JSON "invalid-json"
#define OB_DLQ_KEY_REUSED "key-reused"

typedef struct ob_consumer ob_consumer_t;

/* One Kafka message, as the handler sees it. */
typedef struct ob_message ob_message_t;

/* The transaction the handler writes in. */
typedef struct ob_txn ob_txn_t;

/* ob_consumer_set_handler() flags. */
#define OB_HANDLER_JSON 0x1u /* parse every value; refuse non-JSON */

/* A handler's return value: this message can never succeed. */
#define OB_HANDLER_REJECT 1

/*
 * The handler. Returns 0 when the message is applied, a negative value
 * (an OB_E* code, for example) when it failed and may succeed when run
 * again, or OB_HANDLER_REJECT when it never will. On failure it may fill
 * err (never NULL) to give the reason that dead letters carry; an
 * untouched err gives "handler returned <code>".
 *
 * msg and txn are borrowed for the call only. Runs on the thread of
 * ob_consumer_run(). It may call ob_consumer_stop() and
 * ob_consumer_stats(), nothing else of the consumer.
 */
typedef int (*ob_handler_fn)(void *opaque, const ob_message_t *msg,
                             ob_txn_t *txn, ob_error_t *err);

/*
 * A new consumer with a PostgreSQL inbox, configured from conf (NULL is
 * not allowed: the brokers, group and topics have no defaults). conf is
 * copied; it may be changed or destroyed afterwards. conninfo is a libpq
 * connection string (copied, never logged); NULL or "" uses libpq's PG*
 * environment variables. Nothing connects yet. Free with
 * ob_consumer_destroy().
 *
 * Keys read from conf (see ob_conf_each() for every default):
 *   kafka.bootstrap.servers  required
 *   kafka.group.id           required: the consumer group, also the
 *                            inbox namespace and the consumer_offsets
 *                            group (at most 255 bytes)
 *   kafka.*                  any other librdkafka consumer property, and
 *                            for the dead-letter producer any producer
 *                            one (the other kind is ignored with a
 *                            logged warning). partition.assignment.
 *                            strategy may be eager (range, roundrobin)
 *                            or cooperative-sticky. enable.auto.commit
 *                            and enable.auto.offset.store are always
 *                            false.
 *   consumer.topics          required: comma-separated topic names
 *   schema                   where the inbox tables are (migrated with
 *                            ob_schema_migrate() beforehand)
 *   consumer.batch.size, consumer.batch.wait.ms
 *                            messages per transaction, and how long a
 *                            batch waits to fill before it commits
 *   consumer.retry.attempts, consumer.retry.backoff.ms,
 *   consumer.retry.backoff.max.ms
 *   consumer.dlq.topic       "{topic}" stands for the original topic
 *   consumer.key.missing     "reject" or "offset": use
 *                            "<topic>/<partition>/<offset>" as the key
 *                            (a republished copy then has another key
 *                            and is applied again)
 *   consumer.key.reuse       "dead-letter" or "skip"
 *   consumer.idle.exit.ms    ob_consumer_run() returns 0 after this long
 *                            without a message, counted from the last
 *                            message or assignment; while it holds no
 *                            partition (joining, or in a rebalance) at
 *                            least 30 s, since a (re)join takes seconds
 *                            (0: never)
 *   consumer.kafka.commit    "true": also commit the stored offsets to
 *                            Kafka, at most once a second and at each
 *                            revocation, for lag tools
 *   consumer.reconnect.backoff.max.ms
 *   inbox.retention.s        keys older than this are purged ...
 *   inbox.purge.interval.ms  ... this often, purge.batch.size at a time,
 *                            in their own short transactions
 *
 * Errors: OB_EINVAL (cp or conf NULL); OB_ECONF (a required key missing,
 * a topic name or the dead-letter template not a valid Kafka topic, a
 * group too long, or a kafka.* property librdkafka refuses; the message
 * names it); OB_ENOMEM.
 */
OB_API int ob_consumer_new_pg(ob_consumer_t **cp, const ob_conf_t *conf,
                              const char *conninfo, ob_error_t *err);

/*
 * Stops the consumer if it runs (see ob_consumer_stop(); this call waits
 * for nothing, so stop and let ob_consumer_run() return first), then
 * frees it. NULL is ok.
 */
OB_API void ob_consumer_destroy(ob_consumer_t *c);

/*
 * Registers the handler, before ob_consumer_run(). flags: 0 or
 * OB_HANDLER_JSON, which parses each value with jansson before the
 * handler runs (ob_message_json()) and sends values that are not one
 * JSON document (any type at the top level; NUL bytes refused) to the
 * dead letters. Errors: OB_EINVAL (c or fn NULL, unknown flags),
 * OB_ESTATE (the consumer already runs or ran).
 */
OB_API int ob_consumer_set_handler(ob_consumer_t *c, ob_handler_fn fn,
                                   void *opaque, unsigned flags,
                                   ob_error_t *err);

/*
 * The batch handler: the same work as the handler, for count messages
 * at once (msgs[0..count), each as the handler would see it), so that
 * their writes can be a few multi-row statements instead of a few
 * statements per message. Returns 0 when all are applied; a negative
 * value when something failed (err as for the handler, transient
 * failures included, see ob_txn_pg_error()). Borrowed for the call.
 */
typedef int (*ob_batch_handler_fn)(void *opaque,
                                   const ob_message_t *const *msgs,
                                   size_t count, ob_txn_t *txn,
                                   ob_error_t *err);

/*
 * Registers an optional batch handler, beside the handler, before
 * ob_consumer_run(); fn NULL removes it. The optimistic pass of each
 * batch then calls it once with every message that claimed its key, in
 * the batch's order (duplicates, reused keys and malformed messages are
 * not in it), instead of calling the handler for each. Its effects must
 * be exactly those of the handler run on each message in that order:
 * when it fails, the batch is rolled back and runs in the careful pass,
 * where every message goes through the handler alone, with its
 * savepoint, retries and dead letter. The handler therefore stays
 * required. Errors: OB_EINVAL (c NULL), OB_ESTATE (the consumer ran).
 */
OB_API int ob_consumer_set_batch_handler(ob_consumer_t *c,
                                         ob_batch_handler_fn fn,
                                         void *opaque, ob_error_t *err);

/*
 * Connects to PostgreSQL, joins the group and handles messages until
 * ob_consumer_stop() or the idle time ("consumer.idle.exit.ms"). Then it
 * finishes and commits the batch in hand, leaves the group (so its
 * partitions move to other members at once) and returns 0. Runs on the
 * calling thread; callable once per consumer.
 *
 * Errors:
 *   OB_EINVAL   c NULL, or no handler registered
 *   OB_ESTATE   called a second time
 *   OB_EPG      the first connection failed (bad conninfo, server down:
 *               retriable), or the inbox statements failed for a reason
 *               that retrying cannot fix (a missing privilege, say)
 *   OB_ESCHEMA  the schema is not migrated, or newer than this library
 *   OB_ESTATE   the handler ended the transaction (COMMIT or ROLLBACK):
 *               fix the handler
 *   OB_EKAFKA   the consumer hit a fatal Kafka error
 *   OB_ENOMEM
 * On an error the consumer has left the group; destroy it.
 */
OB_API int ob_consumer_run(ob_consumer_t *c, ob_error_t *err);

/*
 * Asks ob_consumer_run() to finish: the batch in hand is completed and
 * committed, then it returns 0 (within about 100 ms when idle, else after
 * the batch). Async-signal-safe and thread-safe: it only sets a flag, so
 * it may be called from a SIGTERM handler. A batch that waits to run
 * again (a handler's backoff, a reconnect to PostgreSQL, a deadlock, a
 * dead letter the broker has not taken) is cut short instead: it was
 * rolled back, so its messages are handled again by whoever reads the
 * partitions next, and ob_consumer_run() still returns 0. NULL is ok.
 */
OB_API void ob_consumer_stop(ob_consumer_t *c);

/*
 * What the consumer did. The message counts (messages to key_reused)
 * and batches grow when a batch commits, so work rolled back is never
 * counted; retries, reconnects and purged grow as they happen.
 * Initialise size (OB_CONSUMER_STATS_INIT) so later fields can be added.
 */
typedef struct ob_consumer_stats {
    size_t size;           /* sizeof(ob_consumer_stats_t) */
    uint64_t messages;     /* messages settled: the sum of the next four */
    uint64_t applied;      /* handler ran, its effects committed */
    uint64_t duplicates;   /* key already claimed: handler skipped */
    uint64_t dead_letters; /* sent to the dead-letter topic */
    uint64_t skipped;      /* reused keys under "skip" */
    uint64_t key_reused;   /* duplicates with a different payload hash */
    uint64_t retries;      /* failed handler runs that were retried */
    uint64_t batches;      /* transactions committed */
    uint64_t reconnects;   /* new PostgreSQL connections after a loss */
    uint64_t purged;       /* expired keys removed */
} ob_consumer_stats_t;

#define OB_CONSUMER_STATS_INIT {.size = sizeof(ob_consumer_stats_t)}

/*
 * Copies the counters into *st. Thread-safe: callable while the
 * consumer runs. Errors: OB_EINVAL (c or st NULL, st->size too small).
 */
OB_API int ob_consumer_stats(const ob_consumer_t *c, ob_consumer_stats_t *st,
                             ob_error_t *err);

/*
 * The message. Every pointer is borrowed until the handler returns;
 * copy what must outlive it.
 */
OB_API const char *ob_message_topic(const ob_message_t *m);
OB_API int32_t ob_message_partition(const ob_message_t *m);
OB_API int64_t ob_message_offset(const ob_message_t *m);

/* The Kafka timestamp in ms since the epoch, or -1 when there is none. */
OB_API int64_t ob_message_timestamp(const ob_message_t *m);

/* Key and value bytes, *lenp their length (lenp may be NULL); NULL (and
 * 0) when the message has none. Not NUL-terminated. */
OB_API const void *ob_message_key(const ob_message_t *m, size_t *lenp);
OB_API const void *ob_message_value(const ob_message_t *m, size_t *lenp);

/* The idempotency key claimed for the message: NUL-terminated UTF-8,
 * 1..OB_KEY_MAX bytes (the header's, or the offset fallback). */
OB_API const char *ob_message_idempotency_key(const ob_message_t *m);

/*
 * The value parsed as JSON, for a handler registered with
 * OB_HANDLER_JSON, else NULL. Borrowed: json_incref() what must stay.
 */
OB_API json_t *ob_message_json(const ob_message_t *m);

/* Which run of the handler this is for the message: 1, then 2 ... */
OB_API int ob_message_attempt(const ob_message_t *m);

/*
 * The last header named name (exact, case-sensitive): *valuep and *lenp
 * (either may be NULL) get its value, which may hold any bytes and is
 * not NUL-terminated (NULL for a header without value). Returns 0, or
 * OB_ENOTFOUND when there is no such header.
 */
OB_API int ob_message_header(const ob_message_t *m, const char *name,
                             const void **valuep, size_t *lenp);

/* The number of headers, and header i of them in their order: 0, or
 * OB_ENOTFOUND when i is past the end. */
OB_API size_t ob_message_header_count(const ob_message_t *m);
OB_API int ob_message_header_at(const ob_message_t *m, size_t i,
                                const char **namep, const void **valuep,
                                size_t *lenp);

/*
 * The connection of the transaction, inside it and ready for commands
 * (PQexec, PQexecParams ...). Borrowed for the handler's call. NULL when
 * the consumer's inbox is not on PostgreSQL.
 */
OB_API PGconn *ob_txn_pg(ob_txn_t *txn);

/*
 * For a handler whose own statement failed: fills err from res (the
 * failed result, or NULL for the connection's message) with the
 * server's message, its SQLSTATE and the retriable flag, and returns
 * OB_EPG, so the handler can end with "return ob_txn_pg_error(txn, res,
 * err);". res stays the caller's (PQclear() it afterwards).
 *
 * Retriable failures are a deadlock (40P01), a serialization failure
 * (40001) and a lost connection: they are the transaction's, not the
 * message's, and are what concurrent consumers meet when their handlers
 * update the same rows. The whole batch is then rolled back and run
 * again after a pause, without counting against the message's attempts
 * (at most OB_CONSUMER_TRANSIENT_MAX times for one message in one
 * batch; after that such failures count as ordinary ones). A handler
 * that fills err by hand gets the same by setting OB_ERROR_RETRIABLE in
 * err->flags or a 40001 or 40P01 err->sqlstate.
 */
OB_API int ob_txn_pg_error(ob_txn_t *txn, const PGresult *res,
                           ob_error_t *err);

#define OB_CONSUMER_TRANSIENT_MAX 20

/*
 * The LMDB inbox.
 *
 * The same consumer loop with its inbox in an LMDB environment the
 * application opened: the handler gets a write transaction of that
 * environment (ob_txn_lmdb()) and writes its own state into its own
 * named databases in it. The key claim, the handler's writes and the
 * partitions' next offsets commit together in one mdb_txn_commit() per
 * batch; in the careful pass every message runs in a nested
 * transaction, so a failing handler undoes only its own writes.
 * Retries, dead letters, the key policies, purging and shutdown are
 * those described above; what differs:
 *
 * - Only state kept in the same environment and written through the
 *   transaction's handle is covered: effects once per key hold for
 *   nothing else (another environment, a file, PostgreSQL).
 * - The inbox keeps its records in named databases of the environment:
 *   the dedup store's two ("oncebox.dedup.keys", "oncebox.dedup.time"),
 *   "oncebox.inbox.offsets" (key "group\0topic\0partition", the
 *   partition in decimal; value the next offset as 8 bytes big-endian,
 *   never moved back) and "oncebox.inbox.dead" (key
 *   "group\0topic\0partition\0" and the offset as 8 bytes big-endian;
 *   value a JSON object: reason, attempts, at_ms, idempotency_key,
 *   key_base64, value_base64, headers). Open the environment with
 *   room for these four besides the application's ("lmdb.max.dbs").
 *   To start a topic again from scratch, delete its offset records.
 * - A handler must never end, commit, abort or reset the transaction it
 *   was given, nor begin one of its own on the same thread; nested
 *   transactions of its own (mdb_txn_begin() with the given one as the
 *   parent) are fine when it ends them before it returns. LMDB cannot
 *   tell a handle that was ended apart from a live one, so this is not
 *   checked: breaking the rule is undefined behaviour.
 * - MDB_MAP_FULL, from a claim, a write of the handler or the commit,
 *   is not a handler failure: the batch is aborted, the map is grown
 *   (ob_lmdb_env_grow(): doubled, at most to "lmdb.map.max.bytes"),
 *   and the batch runs again from memory; no retry is counted and
 *   nothing goes to the dead letters. A handler write that leaves the
 *   transaction unusable for another reason (MDB_TXN_FULL, I/O) is
 *   handled the same way, since LMDB does not say which failure it
 *   was. At the maximum, ob_consumer_run() returns OB_ELMDB with native
 *   MDB_MAP_FULL and a message naming the limit: nothing of the batch
 *   was committed, and the next run handles it again.
 * - Growing the map needs every other thread of the process out of its
 *   transactions on the environment (LMDB's rule for
 *   mdb_env_set_mapsize()): while the consumer runs, other threads must
 *   not hold transactions on it for long, or not use it at all. Other
 *   processes may; a map another process grew is adopted at the next
 *   begin.
 * - Reader slots left by dead processes (a reader killed in its read
 *   transaction) pin old pages and make the file grow: they are cleared
 *   when the consumer is made, then before a batch or a purge, at most
 *   every 5 s.
 * - A batch run again after a growth waits as after any retriable
 *   failure: 100 ms, doubling for each further rerun of that batch.
 * - Durability is the environment's: open it with ob_lmdb_env_open()
 *   and "lmdb.durability" (see dedup.h for what each mode can lose).
 *   A crash of the process alone loses no committed batch in any mode,
 *   and the environment opens again with no recovery step.
 */

/* Forward declarations, so that this header needs no lmdb.h; they are
 * the same types as MDB_env and MDB_txn. */
struct MDB_env;
struct MDB_txn;

/*
 * A new consumer with its inbox in env, configured from conf as
 * ob_consumer_new_pg() is ("schema" is not read; "lmdb.map.max.bytes"
 * is, when env was not opened by ob_lmdb_env_open()). env stays the
 * caller's: open it before (ob_lmdb_env_open(), or mdb_env_open()
 * without MDB_NOTLS and MDB_WRITEMAP), keep it open until
 * ob_consumer_destroy(), and close it after. The application's own
 * named databases may be opened before or after, in transactions of
 * its own, but not while the consumer runs a batch in the same thread.
 *
 * This call creates the inbox's databases in a write transaction of its
 * own (no transaction may be open on env in this thread) and clears
 * stale reader slots. Free with ob_consumer_destroy().
 *
 * Errors: those of ob_consumer_new_pg(), and OB_EINVAL (env NULL),
 * OB_ESTATE (the environment is open twice in this process, or env was
 * opened before fork() in a parent), OB_ELMDB (MDB_DBS_FULL: too few
 * named databases allowed; MDB_READERS_FULL; I/O).
 */
OB_API int ob_consumer_new_lmdb(ob_consumer_t **cp, const ob_conf_t *conf,
                                struct MDB_env *env, ob_error_t *err);

/*
 * The write transaction the handler writes in: the batch's, or in the
 * careful pass the message's nested one. Borrowed for the handler's
 * call; never end it (see above). NULL when the consumer's inbox is not
 * on LMDB.
 */
OB_API struct MDB_txn *ob_txn_lmdb(ob_txn_t *txn);

#ifdef __cplusplus
}
#endif

#endif
