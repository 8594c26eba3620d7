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

#ifdef __cplusplus
}
#endif

#endif
