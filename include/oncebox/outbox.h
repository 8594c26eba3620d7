/*
 * oncebox producer half: the outbox writer.
 *
 * A service appends events on its own PostgreSQL connection, inside its
 * own open transaction, next to its domain writes. Commit makes the event
 * visible to the relay; rollback leaves no trace of it. Nothing is
 * published before commit.
 *
 * Caveats, true of the whole pipeline:
 * - Delivery to Kafka is at-least-once: a relay that crashes after
 *   publishing and before marking a row publishes it again, with the same
 *   idempotency key. Consumers must dedup by that key (the oncebox inbox
 *   does).
 * - Order holds per aggregate only: events of one aggregate id reach
 *   their partition in commit order; across aggregates there is no order.
 * - The outbox's unique key index only sees rows still in the table: once
 *   published rows are purged, their keys can be appended again.
 * - Every append adds a NOTIFY to the transaction so relays wake at once.
 *   PostgreSQL serialises the commits of notifying transactions, which
 *   bounds commit concurrency on very busy databases.
 *
 * This header includes <libpq-fe.h>; programs using it link libpq too.
 */
#ifndef ONCEBOX_OUTBOX_H
#define ONCEBOX_OUTBOX_H

#include <libpq-fe.h>

#include "oncebox/core.h"
#include "oncebox/dedup.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Limits of the outbox columns; longer values are refused, not cut. */
#define OB_AGGREGATE_TYPE_MAX 100
#define OB_AGGREGATE_ID_MAX 255
#define OB_EVENT_TYPE_MAX 100
#define OB_TOPIC_MAX 249
#define OB_HEADER_NAME_MAX 255
#define OB_HEADER_VALUE_MAX 8192
#define OB_HEADERS_MAX 64

/* How an event without a caller-supplied key gets its idempotency key. */
typedef enum ob_key_mode {
    OB_KEY_MODE_DEFAULT = 0, /* the writer's "writer.key.mode" */
    OB_KEY_MODE_EVENT_ID,    /* the event's UUIDv7: every append is new */
    OB_KEY_MODE_CONTENT      /* ob_key_content(): equal content collapses */
} ob_key_mode_t;

/* One extra Kafka header. Name and value: UTF-8 text without NUL. */
typedef struct ob_header {
    const char *name;
    const char *value;
} ob_header_t;

/*
 * An event to append. Initialise with OB_EVENT_INIT so that size is set
 * and every field is zero; fields added in later versions then default
 * to zero as well. All pointers are borrowed for the duration of the
 * call only.
 */
typedef struct ob_event {
    size_t size;                /* sizeof(ob_event_t) */
    const char *aggregate_type; /* required, 1..OB_AGGREGATE_TYPE_MAX */
    const char *aggregate_id;   /* required, 1..OB_AGGREGATE_ID_MAX */
    const char *event_type;     /* required, 1..OB_EVENT_TYPE_MAX */
    const char *payload;        /* required: JSON text */
    size_t payload_len;         /* 0: strlen(payload) */
    const char *key;            /* NULL: derived, see key_mode */
    ob_key_mode_t key_mode;     /* used when key is NULL */
    const char *topic;          /* NULL: the relay's routing */
    const ob_header_t *headers; /* header_count entries, or NULL */
    size_t header_count;
} ob_event_t;

#define OB_EVENT_INIT {.size = sizeof(ob_event_t)}

/*
 * What one append did. event_id is the UUIDv7 this append gave the event;
 * for a duplicate no row carries it, the row that already held the key
 * stays as it was.
 */
typedef struct ob_append_result {
    char event_id[OB_UUID_LEN + 1];
    char key[OB_KEY_MAX + 1];
    int duplicate; /* 1: the key was already in the outbox, nothing added */
} ob_append_result_t;

typedef struct ob_writer ob_writer_t;

/*
 * A new writer configured from conf (NULL: defaults). Keys it reads:
 * "schema", "writer.key.mode", "writer.payload.max.bytes". The writer
 * keeps no connection and is immutable, so one writer may serve many
 * threads at once, each with its own PGconn. Free with
 * ob_writer_destroy(). Errors: OB_EINVAL, OB_ENOMEM.
 */
OB_API int ob_writer_new(ob_writer_t **writerp, const ob_conf_t *conf,
                         ob_error_t *err);

OB_API void ob_writer_destroy(ob_writer_t *writer);

/*
 * Checks ev as ob_writer_append() would, without touching a database.
 * Errors, each with a message naming the field:
 *   OB_EINVAL   NULL ev, or ev->size too small
 *   OB_EEMPTY   aggregate type, aggregate id, event type or payload empty
 *   OB_ETOOLONG a name longer than its limit above, or a key longer than
 *               OB_KEY_MAX
 *   OB_ETOOBIG  payload larger than "writer.payload.max.bytes"
 *   OB_ENUL     a NUL byte inside a field
 *   OB_EUTF8    a field that is not valid UTF-8
 *   OB_EJSON    a payload that is not JSON PostgreSQL's jsonb accepts
 *   OB_ENAME    a topic with characters Kafka does not allow, or a
 *               malformed traceparent
 *   OB_ERESERVED a header named like one of oncebox's own (wire.h)
 * None of these is retriable: fix the input.
 */
OB_API int ob_writer_check(const ob_writer_t *writer, const ob_event_t *ev,
                           ob_error_t *err);

/*
 * Appends ev to the outbox on conn, which must be inside an open
 * transaction (after BEGIN); the caller commits or rolls back. res (may
 * be NULL) receives the event id and key, and whether the key was a
 * duplicate; a duplicate is not an error and leaves the transaction
 * usable. One round trip.
 *
 * Errors: those of ob_writer_check(), found before anything is sent, so
 * the caller's transaction is untouched; OB_ENOTXN when conn is idle
 * (no BEGIN) or its transaction is already aborted; OB_ESTATE when conn
 * is busy with another command or in pipeline mode; OB_EPG when
 * PostgreSQL refuses the insert (sqlstate says why; the transaction is
 * then aborted and must be rolled back; ob_error_is_retriable() tells
 * whether retrying the whole transaction may succeed).
 */
OB_API int ob_writer_append(ob_writer_t *writer, PGconn *conn,
                            const ob_event_t *ev, ob_append_result_t *res,
                            ob_error_t *err);

/*
 * Appends count events in one round trip, in order, with the same rules
 * as ob_writer_append(). results (may be NULL) has count entries. If
 * duplicatesp is not NULL it receives how many were duplicates (also of
 * each other within the batch: the first occurrence wins). Every event
 * is checked before anything is sent: one bad event fails the whole call
 * with nothing written, and the message names its index.
 */
OB_API int ob_writer_append_batch(ob_writer_t *writer, PGconn *conn,
                                  const ob_event_t *events, size_t count,
                                  ob_append_result_t *results,
                                  size_t *duplicatesp, ob_error_t *err);

/*
 * Appends count events (count may be 0) and commits the caller's
 * transaction, both in one round trip (libpq pipeline mode), so a
 * one-row business transaction pays no extra round trip for its event.
 * Same checks and results as ob_writer_append_batch(). On success the
 * transaction is committed. On OB_EPG, err says which step failed:
 * after a failed insert ("append: ...") the transaction is aborted and
 * the caller must roll it back; after a failed commit ("commit: ...")
 * PostgreSQL has already rolled it back. A commit whose outcome is
 * unknown because the connection broke is reported as retriable; check
 * for the events' keys before appending them again.
 */
OB_API int ob_writer_append_commit(ob_writer_t *writer, PGconn *conn,
                                   const ob_event_t *events, size_t count,
                                   ob_append_result_t *results,
                                   size_t *duplicatesp, ob_error_t *err);

/*
 * ---------------------------------------------------------------------
 * Operations: status, parked rows, purge
 * ---------------------------------------------------------------------
 *
 * What an operator (or `oncebox status`, `oncebox dead`, `oncebox purge`)
 * needs beside the relay: a snapshot of the pipeline's health, the rows
 * the relay gave up on and a way to send them again, and the retention
 * purge that keeps the tables small.
 *
 * Every call here works on the caller's PGconn, borrowed for the call,
 * and names the schema like ob_schema_migrate() does (NULL:
 * OB_SCHEMA_DEFAULT). Common errors, besides those listed per call:
 *   OB_EINVAL   conn or a required pointer is NULL
 *   OB_EEMPTY, OB_ETOOLONG, OB_EUTF8
 *               the schema name is empty, too long or not UTF-8
 *   OB_ESCHEMA  the schema is not migrated (run ob_schema_migrate())
 *   OB_ENOTXN   conn's transaction is aborted: roll it back first
 *   OB_ESTATE   conn is busy with another command or in pipeline mode
 *   OB_EPG      PostgreSQL refused or the connection failed
 *               (ob_error_is_retriable() says whether to try again)
 *   OB_ENOMEM
 */

/*
 * A status snapshot. The counts come from one REPEATABLE READ snapshot
 * when conn is idle (from the caller's transaction otherwise); the lane
 * owners and replication slots are read from PostgreSQL's live views
 * in the same transaction, which are not part of any snapshot.
 */
typedef struct ob_status ob_status_t;

/* Lane groups assumed when no relay has recorded its "relay.lanes". */
#define OB_STATUS_LANES_DEFAULT 16

/*
 * Reads a new status of schema on conn into *statusp; free it with
 * ob_status_destroy(). Read-only. When conn is idle the queries run in
 * a transaction of their own; inside the caller's transaction they run
 * there, and an OB_EPG leaves that transaction aborted.
 *
 * Cost: the outbox figures use its partial indexes (pending, parked,
 * published), so they grow with those rows, not with the table; the
 * inbox sizes are exact counts, a scan of each namespace's keys.
 *
 * Lane owners are found in pg_locks joined with pg_stat_activity; a role
 * without pg_read_all_stats sees NULL application names and addresses
 * of other roles' sessions (the pid and group are always shown).
 */
OB_API int ob_status_new(PGconn *conn, const char *schema,
                         ob_status_t **statusp, ob_error_t *err);

OB_API void ob_status_destroy(ob_status_t *status);

/*
 * The figures. Strings are borrowed from status and valid until
 * ob_status_destroy(); times are ISO 8601 in UTC ("...Z").
 *
 * pending    rows waiting to be published (the backlog)
 * due        pending rows whose next attempt time has come: what a relay
 *            may publish now (a row may still wait behind an earlier row
 *            of its aggregate)
 * retrying   pending rows that failed at least once (retry_count > 0)
 * parked     rows the relay gave up on; see ob_parked_new()
 * published  published rows still in the table, waiting for the purge
 * ages       seconds since the oldest pending row was appended and since
 *            the oldest published row was published; negative when
 *            there is no such row
 */
OB_API const char *ob_status_schema(const ob_status_t *status);
OB_API const char *ob_status_taken_at(const ob_status_t *status);
OB_API long long ob_status_pending(const ob_status_t *status);
OB_API long long ob_status_due(const ob_status_t *status);
OB_API long long ob_status_retrying(const ob_status_t *status);
OB_API long long ob_status_parked(const ob_status_t *status);
OB_API long long ob_status_published(const ob_status_t *status);
OB_API double ob_status_oldest_pending_age(const ob_status_t *status);
OB_API double ob_status_oldest_published_age(const ob_status_t *status);

/*
 * Lane groups: rows belong to group lane % N, N being the "relay.lanes"
 * the relays recorded in the schema, else OB_STATUS_LANES_DEFAULT
 * (ob_status_lanes_recorded() is then 0). A group is owned by the relay
 * session holding its advisory lock. For group g in 0..N-1:
 * ob_status_lane_pending() is its backlog, ob_status_lane_pid() the
 * owning backend's pid or 0 when no relay owns it; the owner's
 * application_name (a relay's reads "oncebox relay HOST/PID"), client
 * address (NULL over a Unix socket or when not visible) and session
 * start are NULL when there is no owner. An out-of-range g gives 0 or
 * NULL.
 */
OB_API int ob_status_lanes(const ob_status_t *status);
OB_API int ob_status_lanes_recorded(const ob_status_t *status);
OB_API int ob_status_lanes_owned(const ob_status_t *status);

/*
 * Live relays of the schema: the sessions holding the relays' shared
 * membership lock (see relay.h), whether or not they hold a group now.
 */
OB_API int ob_status_relays(const ob_status_t *status);
OB_API long long ob_status_lane_pending(const ob_status_t *status, int g);
OB_API int ob_status_lane_pid(const ob_status_t *status, int g);
OB_API const char *ob_status_lane_application(const ob_status_t *status,
                                              int g);
OB_API const char *ob_status_lane_client_addr(const ob_status_t *status,
                                              int g);
OB_API const char *ob_status_lane_since(const ob_status_t *status, int g);

/*
 * Inbox sizes, one entry per namespace (consumer group) holding keys, in
 * name order: the namespace, its key count and the age in seconds of its
 * oldest key. An out-of-range i gives NULL, 0 or a negative age.
 */
OB_API size_t ob_status_inbox_count(const ob_status_t *status);
OB_API const char *ob_status_inbox_namespace(const ob_status_t *status,
                                             size_t i);
OB_API long long ob_status_inbox_keys(const ob_status_t *status, size_t i);
OB_API double ob_status_inbox_oldest_age(const ob_status_t *status,
                                         size_t i);

/*
 * Replication slots whose name starts with "oncebox" (those of the CDC
 * relay), in name order; none is an empty list. For each: its name,
 * plugin (NULL for a physical slot), whether a client is streaming from
 * it, its lag (bytes of WAL between the server's current position and
 * what the slot's consumer confirmed) and the bytes of WAL it makes the
 * server keep; -1 when PostgreSQL does not know (a slot never used).
 */
OB_API size_t ob_status_slot_count(const ob_status_t *status);
OB_API const char *ob_status_slot_name(const ob_status_t *status, size_t i);
OB_API const char *ob_status_slot_plugin(const ob_status_t *status,
                                         size_t i);
OB_API int ob_status_slot_active(const ob_status_t *status, size_t i);
OB_API long long ob_status_slot_lag_bytes(const ob_status_t *status,
                                          size_t i);
OB_API long long ob_status_slot_retained_bytes(const ob_status_t *status,
                                               size_t i);

/*
 * Renders status as one JSON object into a new NUL-terminated string in
 * *jsonp (free it with ob_free()): the keys are "schema", "taken_at",
 * "outbox" {pending, due, retrying, parked, published,
 * oldest_pending_age_s, oldest_published_age_s (null when none)},
 * "lanes" {groups, recorded, relays, owned, by_group [{group, pending,
 * owner (null or {pid, application_name, client_addr, since})}]},
 * "inbox" [{namespace, keys, oldest_age_s}] and "replication_slots"
 * [{slot_name, plugin, active, lag_bytes, retained_bytes (null when
 * unknown)}]. Errors: OB_EINVAL, OB_ENOMEM.
 */
OB_API int ob_status_json(const ob_status_t *status, char **jsonp,
                          ob_error_t *err);

/*
 * Parked rows: the rows the relay stopped retrying, each with the error
 * of its last attempt, waiting for an operator.
 */
typedef struct ob_parked ob_parked_t;

/*
 * Reads up to limit parked rows of schema (0: all of them), oldest
 * append first, into a new list in *parkedp; free it with
 * ob_parked_destroy(). Read-only; runs in the caller's transaction when
 * there is one (an OB_EPG then leaves it aborted).
 */
OB_API int ob_parked_new(PGconn *conn, const char *schema, size_t limit,
                         ob_parked_t **parkedp, ob_error_t *err);

OB_API void ob_parked_destroy(ob_parked_t *parked);

/*
 * ob_parked_count(): rows in the list; ob_parked_total(): parked rows in
 * the table when it was read (more than the count when limit cut it).
 * For row i: the event id, aggregate type and id, event type, attempts
 * (retry_count), last error (NULL when none was recorded), append time
 * (ISO 8601, UTC) and the row's own topic (NULL: the relay routes it by
 * aggregate type). Strings are borrowed until ob_parked_destroy(); an
 * out-of-range i gives NULL or -1.
 */
OB_API size_t ob_parked_count(const ob_parked_t *parked);
OB_API long long ob_parked_total(const ob_parked_t *parked);
OB_API const char *ob_parked_id(const ob_parked_t *parked, size_t i);
OB_API const char *ob_parked_aggregate_type(const ob_parked_t *parked,
                                            size_t i);
OB_API const char *ob_parked_aggregate_id(const ob_parked_t *parked,
                                          size_t i);
OB_API const char *ob_parked_event_type(const ob_parked_t *parked,
                                        size_t i);
OB_API int ob_parked_retry_count(const ob_parked_t *parked, size_t i);
OB_API const char *ob_parked_last_error(const ob_parked_t *parked,
                                        size_t i);
OB_API const char *ob_parked_created_at(const ob_parked_t *parked,
                                        size_t i);
OB_API const char *ob_parked_topic(const ob_parked_t *parked, size_t i);

/*
 * Renders the list as one JSON object {"total": N, "rows": [{id,
 * aggregate_type, aggregate_id, event_type, retry_count, last_error,
 * created_at, topic}]} into *jsonp (free with ob_free()).
 * Errors: OB_EINVAL, OB_ENOMEM.
 */
OB_API int ob_parked_json(const ob_parked_t *parked, char **jsonp,
                          ob_error_t *err);

/*
 * Sends parked rows again: the row with event id id (a UUID in text
 * form), or every parked row when id is NULL. Each becomes pending with
 * retry_count 0 and its next attempt now, and relays listening on the
 * schema's channel are woken. *countp (countp may be NULL) receives how
 * many rows were replayed.
 *
 * A replayed row keeps its place in its aggregate's order (its append
 * sequence), so a relay publishes it before that aggregate's later rows
 * that are still pending. Rows of the aggregate that were already
 * published while it was parked (a relay configured to let them pass)
 * stay published: for those the order is lost, which is what that
 * configuration chose.
 *
 * last_error is kept, so the reason stays visible until the relay
 * publishes the row or records a new failure; retry_count restarts, so
 * the row gets the relay's full number of attempts again.
 *
 * One statement: in the caller's transaction when there is one (the
 * rows are replayed when it commits), else committed on return.
 * Errors: OB_EINVAL (id is not a UUID; nothing sent to the server),
 * OB_ENOTFOUND (no parked row has this id: it does not exist, is
 * pending or already published), and the common ones.
 */
OB_API int ob_parked_replay(PGconn *conn, const char *schema,
                            const char *id, long long *countp,
                            ob_error_t *err);

/* What ob_purge() removes; OB_PURGE_ALL is all three. */
#define OB_PURGE_OUTBOX 0x1u       /* published outbox rows */
#define OB_PURGE_INBOX 0x2u        /* claimed inbox keys */
#define OB_PURGE_DEAD_LETTERS 0x4u /* recorded dead letters */
#define OB_PURGE_ALL 0x7u

/*
 * How many rows one ob_purge() removed, per table, and how many DELETE
 * statements (each its own transaction) it ran. Initialise with
 * OB_PURGE_RESULT_INIT: the call writes only the fields that fit in
 * size, so a program built against an older, smaller struct still works.
 */
typedef struct ob_purge_result {
    size_t size;            /* sizeof(ob_purge_result_t) */
    long long outbox;       /* published rows deleted */
    long long inbox;        /* inbox keys deleted */
    long long dead_letters; /* dead letters deleted */
    long long statements;   /* DELETE statements run */
} ob_purge_result_t;

#define OB_PURGE_RESULT_INIT {.size = sizeof(ob_purge_result_t)}

/*
 * Deletes what is older than its retention from the tables targets
 * names (OB_PURGE_* bits; 0 means OB_PURGE_ALL):
 *
 * - outbox: rows published more than "relay.retention.s" seconds ago
 *   (default 7 days). Pending and parked rows are never touched, however
 *   old.
 * - inbox: keys claimed more than "inbox.retention.s" ago (default 7
 *   days), one namespace after the other. The retention must exceed the
 *   longest time after which an event can be delivered again (Kafka's
 *   retention, a relay replay): a key purged too early lets a late
 *   duplicate through.
 * - dead letters: recorded more than "dead_letters.retention.s" ago
 *   (default 30 days, time for someone to look at them), one consumer
 *   group after the other.
 *
 * The cutoff of each table is fixed when its purge starts. Rows go in
 * batches of "purge.batch.size" (default 1000), oldest first, each
 * DELETE its own short transaction that skips rows other sessions hold
 * locked, so the purge never waits for or blocks the relay and the
 * consumers for long. schema NULL means conf's "schema"; conf NULL
 * means the defaults; progress goes to conf's log (facility "purge").
 *
 * conn must be idle (OB_ESTATE inside a transaction: the purge commits
 * each batch itself). On failure the batches already committed stay
 * deleted and result (may be NULL) holds what they removed.
 */
OB_API int ob_purge(PGconn *conn, const char *schema, const ob_conf_t *conf,
                    unsigned targets, ob_purge_result_t *result,
                    ob_error_t *err);

#ifdef __cplusplus
}
#endif

#endif
