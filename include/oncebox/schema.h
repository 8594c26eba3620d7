/*
 * oncebox schema: the tables, indexes and trigger the outbox, the relay
 * and the inbox use, created and upgraded by versioned migrations.
 *
 * One schema (default "oncebox") holds everything. Its name may be any
 * UTF-8 text of 1 to 63 bytes not starting with "pg_"; it is always
 * quoted, so case, spaces and quotes are kept exactly ("Weird \"Schema\""
 * is a fine name). What a migrated schema holds:
 *
 *   outbox             events appended by services, read by the relay
 *   inbox              idempotency keys claimed by consumers
 *   consumer_offsets   next Kafka offset per group and partition
 *   dead_letters       messages consumers sent to the dead-letter topic
 *   oncebox_migrations one row per applied migration (version, name,
 *                      applied_at); the schema's version is the highest
 *
 * The outbox has a statement-level AFTER INSERT trigger that calls
 * pg_notify() on the channel ob_schema_channel() names, so a relay that
 * LISTENs there wakes as soon as an insert commits. Notifications are
 * only wake-ups: they carry no payload, equal ones of one transaction
 * fold into one, and a listener must still poll as a safety net.
 *
 * Notes:
 * - A notifying transaction takes a database-wide lock at commit, so on
 *   very busy databases the trigger bounds commit concurrency. A relay
 *   that polls often enough can do without it:
 *   ALTER TABLE <schema>.outbox DISABLE TRIGGER outbox_notify.
 * - outbox.lane is a stored hash of aggregate_id (0..1023) computed by
 *   PostgreSQL's hashtextextended(); it is stable on one server and its
 *   physical replicas, and recomputed by a dump and restore.
 * - A migrate that finds everything applied changes nothing and needs
 *   only USAGE on the schema and SELECT on oncebox_migrations, so
 *   services may call it at start-up with a role that cannot create.
 *
 * This header includes <libpq-fe.h>; programs using it link libpq too.
 */
#ifndef ONCEBOX_SCHEMA_H
#define ONCEBOX_SCHEMA_H

#include <libpq-fe.h>

#include "oncebox/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The schema used when a call is given NULL. */
#define OB_SCHEMA_DEFAULT "oncebox"

/* The longest schema name, in bytes (PostgreSQL's identifier limit). */
#define OB_SCHEMA_NAME_MAX 63

/* Room ob_schema_channel() needs, terminating NUL included. */
#define OB_SCHEMA_CHANNEL_SIZE 64

/*
 * Creates or upgrades schema (NULL: OB_SCHEMA_DEFAULT) on conn to the
 * newest version this library knows. conn is borrowed for the call.
 *
 * - conn idle: the work runs in its own transaction, committed before
 *   the call returns (or rolled back when it fails).
 * - conn inside the caller's transaction: the work runs there, under a
 *   savepoint; the caller commits or rolls back. On failure the savepoint
 *   is rolled back, so the caller's transaction stays usable.
 *
 * Concurrent migrates of one schema, from any number of processes,
 * serialise on a transaction-level advisory lock with the keys
 * (hashtext('oncebox migrate'), hashtext(schema)); each applies what the
 * one before it left to do, so all of them succeed. Inside a caller's
 * REPEATABLE READ or SERIALIZABLE transaction whose snapshot predates a
 * concurrent migrate's commit, the call fails with OB_EPG; retry it in a
 * new transaction.
 *
 * Errors:
 *   OB_EINVAL   conn is NULL
 *   OB_EEMPTY, OB_ETOOLONG, OB_EUTF8
 *               schema is "", longer than OB_SCHEMA_NAME_MAX bytes or not
 *               UTF-8
 *   OB_ENAME    schema starts with "pg_", which PostgreSQL reserves
 *   OB_ENOTXN   the caller's transaction is aborted: roll it back first
 *   OB_ESTATE   conn is busy with another command, COPY or a pipeline
 *   OB_ESCHEMA  the schema is at a version newer than this library knows
 *               (a newer oncebox migrated it): upgrade this program
 *   OB_EPG      PostgreSQL refused (sqlstate says why, e.g. 42501 for a
 *               missing privilege) or the connection failed
 *               (ob_error_is_retriable() is then true)
 *   OB_ENOMEM
 */
OB_API int ob_schema_migrate(PGconn *conn, const char *schema, ob_error_t *err);

/*
 * Stores in *versionp the version schema (NULL: OB_SCHEMA_DEFAULT) is at
 * on conn: 0 when the schema or its oncebox_migrations table does not
 * exist. Reads only; runs in the caller's transaction when there is one
 * (no savepoint: an OB_EPG there, such as a missing SELECT privilege,
 * leaves that transaction aborted).
 * Errors: OB_EINVAL (conn or versionp NULL), those of the name as for
 * ob_schema_migrate(), OB_ENOTXN, OB_ESTATE, OB_EPG, OB_ENOMEM.
 */
OB_API int ob_schema_version(PGconn *conn, const char *schema, int *versionp,
                             ob_error_t *err);

/* The newest schema version this library knows, and migrates to. */
OB_API int ob_schema_latest(void);

/*
 * Writes into buf (size bytes, at least OB_SCHEMA_CHANNEL_SIZE) the
 * NOTIFY channel of schema's outbox (NULL: OB_SCHEMA_DEFAULT): the schema
 * name followed by ".outbox", where a name longer than 56 bytes is first
 * cut to at most 56 bytes at a character boundary so that the channel
 * fits PostgreSQL's 63-byte limit. Schemas that share such a prefix share
 * a channel, which only costs spurious wake-ups. The channel is case
 * sensitive: LISTEN it as a quoted identifier (PQescapeIdentifier()).
 * Errors: OB_EINVAL (buf NULL or too small), those of the name.
 */
OB_API int ob_schema_channel(const char *schema, char *buf, size_t size,
                             ob_error_t *err);

#ifdef __cplusplus
}
#endif

#endif
