/*
 * oncebox dedup: idempotency keys and the JSON rules they depend on.
 *
 * Every event carries an idempotency key, and every consumer drops an
 * event whose key it has already seen. This header derives keys for the
 * writer: a time-ordered UUIDv7 (the default: every append is a new
 * event), or a content key (equal content is the same event). It also
 * holds the JSON validator the writer runs on payloads and the canonical
 * form that content keys hash.
 *
 * Notes:
 * - Every function here is thread-safe and talks to no server.
 * - A key is text of at most OB_KEY_MAX bytes. The outbox, the wire
 *   header and the inbox all accept keys up to that length and refuse
 *   longer ones.
 * - The JSON rules are PostgreSQL 15 jsonb's (in a UTF-8 database) and a
 *   little stricter, never looser: a payload that passes
 *   ob_json_validate() cannot make the INSERT into the outbox fail, and
 *   so cannot abort the caller's transaction, for a reason of syntax,
 *   encoding, number range or nesting depth. jsonb's own size limits
 *   (about 256 MB per document) are left to the writer's
 *   "writer.payload.max.bytes".
 */
#ifndef ONCEBOX_DEDUP_H
#define ONCEBOX_DEDUP_H

#include <stddef.h>
#include <stdint.h>

#include "oncebox/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Length of a UUID in text form, 8-4-4-4-12, without the NUL. */
#define OB_UUID_LEN 36

/* Length of a content key (32 lowercase hex digits), without the NUL. */
#define OB_CONTENT_KEY_LEN 32

/* The longest idempotency key, in bytes, that any component accepts. */
#define OB_KEY_MAX 255

/*
 * The deepest nesting of arrays and objects a payload may have: "[[1]]"
 * has depth 2, a scalar depth 0. PostgreSQL parses jsonb recursively and
 * fails with "stack depth limit exceeded" at about 620 levels under the
 * smallest max_stack_depth it allows (100kB), about 13,000 under the
 * default 2MB; 512 stays below both with room for the stack the query
 * itself uses.
 */
#define OB_JSON_MAX_DEPTH 512

/*
 * Writes a new RFC 9562 UUIDv7 into out as 36 lowercase characters,
 * 8-4-4-4-12, and a NUL. out must not be NULL.
 *
 * Layout: 48 bits of Unix time in milliseconds, the version 7, 12 bits
 * of counter (rand_a), the variant bits 10, then 62 random bits from
 * getrandom(2).
 *
 * Within one process the keys are strictly increasing, as 128-bit
 * numbers and as strings, in the order the calls return, across all
 * threads: the counter starts at a random value below 2048 each new
 * millisecond and counts up within it; when it would overflow, or when
 * the wall clock goes backwards, the embedded time runs ahead of the
 * clock by as much as needed (it catches up once the clock passes it).
 * Across processes (also a parent and a child after fork()) keys are
 * unique with the probability of 62 random bits, and ordered only as far
 * as their clocks agree.
 *
 * Errors: OB_EINVAL (out is NULL); OB_ESYS when getrandom(2) fails (no
 * kernel support or, early in boot, no entropy yet); nothing is written
 * to out then. Random bytes are fetched in blocks, so most calls make
 * no system call.
 */
OB_API int ob_key_uuidv7(char out[OB_UUID_LEN + 1], ob_error_t *err);

/*
 * Checks that json[0..len) is one JSON document (RFC 8259) that
 * PostgreSQL 15 jsonb accepts in a UTF-8 database. No allocation; len
 * bytes are read, NUL bytes included, so json need not be terminated;
 * they must not change during the call.
 *
 * Accepted: any JSON value at the top level, surrounded by optional
 * space, tab, LF or CR.
 *
 * Refused, with the code in brackets:
 * - a raw NUL byte anywhere [OB_ENUL];
 * - bytes that are not UTF-8: overlong forms, UTF-16 surrogates, code
 *   points past U+10FFFF, stray or missing continuation bytes [OB_EUTF8];
 * - and [OB_EJSON]: empty or blank input; other whitespace (form feed,
 *   vertical tab, U+00A0, a byte order mark); control characters below
 *   U+0020 unescaped in strings; escapes other than \" \\ \/ \b \f \n
 *   \r \t \uXXXX; \u0000 (jsonb cannot store it); a lone high or low
 *   surrogate escape, or a low one before a high one; numbers with a
 *   leading zero ("01"), a plus sign, no digit before or after the
 *   point (".5", "1."), or an empty exponent; NaN, Infinity and other
 *   bare words; trailing commas; content after the document; nesting
 *   deeper than OB_JSON_MAX_DEPTH; numbers PostgreSQL's numeric cannot
 *   hold: 10^131072 or more in magnitude (more than 131072 digits
 *   before the point), more than 16383 digits after the point, counted
 *   as PostgreSQL does: the digits written after the point minus the
 *   exponent, so "1.50e-16382" is refused where "1.5e-16382" is not,
 *   and an exponent of 1073741823 or more in magnitude even for zero.
 *
 * The message names the first offending byte, counted from 0, e.g.
 * "invalid JSON at byte 17: expected ':' after object key"; callers add
 * the field's name in front. None of these is retriable: fix the input.
 * OB_EINVAL when json is NULL.
 */
OB_API int ob_json_validate(const char *json, size_t len, ob_error_t *err);

/*
 * Validates json[0..len) exactly as ob_json_validate() does and writes
 * its canonical form into a new NUL-terminated buffer: *outp, to be
 * freed with ob_free(), and its length without the NUL in *out_lenp
 * (out_lenp may be NULL). On failure *outp is NULL and *out_lenp 0.
 *
 * The canonical form is a contract: content keys are derived from it,
 * so it never changes. Two documents that jsonb stores as equal values
 * (numbers compared by value) have the same canonical form:
 * - No whitespace at all.
 * - Object members sorted by the bytes of their unescaped UTF-8 keys,
 *   compared as unsigned bytes; when one key is a prefix of another the
 *   shorter comes first. Of members with equal keys only the last one
 *   in the input is kept, as jsonb keeps it.
 * - Array elements in their order.
 * - Strings, keys included, with escapes decoded and then re-escaped
 *   minimally: \" and \\, \b \f \n \r \t for U+0008, U+000C, U+000A,
 *   U+000D, U+0009, other characters below U+0020 as \u00xx with
 *   lowercase hex; everything else, "/" and all non-ASCII included, as
 *   raw UTF-8 (a surrogate pair escape becomes one 4-byte character).
 * - true, false and null as they are.
 * - Numbers normalised exactly in decimal, never through a double: the
 *   value is reduced to its significant digits d1 d2 ... dn (no leading
 *   or trailing zeros) and the decimal exponent p of d1 (the value is
 *   d1.d2...dn times 10^p), with a "-" in front for negative values.
 *   Zero in every spelling (-0, 0.0, 0e5) is "0". Then:
 *     an integer below 10^21 (p <= 20) is written plainly: 100,
 *       123456789012345678901;
 *     any other number with -6 <= p <= 20 is written plainly with a
 *       fraction: 1.5, 0.000001, -0.25;
 *     everything else as d1[.d2...dn]e+p or e-p with p in decimal
 *       without leading zeros: 1e+21, 1.5e-7, 1.2345e+30.
 *   So 1, 1.0, 1e0, 10e-1 and 0.1e1 are all "1", and -1.50e+3 is
 *   "-1500". Numbers keep every digit, however many.
 *
 * The work is done with explicit stacks: nothing recurses on the C
 * stack, whatever the input.
 *
 * Errors: those of ob_json_validate(); OB_EINVAL when json or outp is
 * NULL; OB_ENOMEM (retrying later may succeed).
 */
OB_API int ob_json_canonicalize(const char *json, size_t len, char **outp,
                                size_t *out_lenp, ob_error_t *err);

/*
 * Writes the content key of an event into out: 32 lowercase hex
 * characters and a NUL.
 *
 * The key is the first 16 bytes of
 *   SHA-256("oncebox.content.v1" || F(aggregate_type) ||
 *           F(aggregate_id) || F(event_type) || F(canonical payload))
 * where F(x) is the length of x in bytes as 8 bytes big-endian followed
 * by the bytes of x, so that no shift of bytes between fields yields
 * the same input, and the canonical payload is what
 * ob_json_canonicalize() makes of payload[0..payload_len). The tag
 * string is hashed as its 18 bytes, without a NUL or a length.
 *
 * Equal content gives equal keys however the payload is spelled (key
 * order, whitespace, escapes, number formatting), so a retried command
 * that appends the same event again is reported as a duplicate. The
 * trade-off: two events that are legitimately distinct but carry the
 * same content, such as two identical deposits to one account, also
 * collapse into one, and the second is dropped. Put what makes them
 * distinct (a request id, a sequence number) into the payload, or use
 * event-id keys or caller-supplied keys for such events.
 *
 * aggregate_type, aggregate_id and event_type are NUL-terminated UTF-8
 * strings; payload is payload_len bytes and need not be terminated. All
 * are borrowed for the call only. out must not be NULL.
 *
 * Errors, checked in argument order, with a message naming the field:
 *   OB_EEMPTY   a name NULL or empty
 *   OB_ETOOLONG aggregate_type or event_type longer than 100 bytes,
 *               aggregate_id longer than 255
 *   OB_EUTF8    a name that is not valid UTF-8
 *   OB_EINVAL   payload or out NULL
 *   OB_EJSON, OB_EUTF8, OB_ENUL: payload refused as by ob_json_validate()
 *               (the message starts with "payload: ")
 *   OB_ENOMEM   out of memory, retriable
 *   OB_EINTERNAL the SHA-256 implementation failed
 */
OB_API int ob_key_content(const char *aggregate_type, const char *aggregate_id,
                          const char *event_type, const char *payload,
                          size_t payload_len, char out[OB_CONTENT_KEY_LEN + 1],
                          ob_error_t *err);

/*
 * The key store.
 *
 * A store remembers which idempotency keys were claimed, per namespace
 * (one per consumer group, or per API for a service that dedups its own
 * requests), when, and with which payload hash. Two backends keep the
 * same semantics:
 *
 * - PostgreSQL: the "inbox" table of the oncebox schema (see schema.h),
 *   on the caller's PGconn and inside the caller's transaction, so the
 *   claim commits or rolls back with the caller's own writes.
 * - LMDB: two named databases, "oncebox.dedup.keys" and
 *   "oncebox.dedup.time", in an environment the caller opened (for
 *   example with ob_lmdb_env_open()), inside the caller's MDB_txn, so
 *   the caller's own state can live in the same transaction. User
 *   databases must not use the "oncebox." prefix.
 *
 * Every operation takes the backend's transaction handle as void *txn:
 * a PGconn * for a PostgreSQL store, an MDB_txn * for an LMDB store.
 * Passing the other kind is undefined behaviour.
 *
 * Semantics, the same on both backends:
 * - ob_dedup_claim() records a key that is absent and reports it new; a
 *   key already recorded (committed, or claimed earlier in the same
 *   transaction) is reported as a duplicate, together with whether its
 *   stored payload hash differs from the one given. The stored entry is
 *   never changed by a duplicate claim.
 * - A claim that is rolled back leaves nothing behind.
 * - Two transactions that claim one key concurrently: exactly one gets
 *   "new". On PostgreSQL the second waits until the first ends and then
 *   sees "duplicate" (or "new", if the first rolled back); on LMDB write
 *   transactions are serialised anyway.
 * - Times are milliseconds since the Unix epoch, chosen by the caller or
 *   taken from this process's wall clock (CLOCK_REALTIME); both backends
 *   store them exactly (PostgreSQL's timestamptz holds microseconds).
 * - Retention: ob_dedup_purge() removes keys claimed before a time. Its
 *   cost is proportional to what it removes, not to the store's size.
 *   A key must be kept longer than any redelivery can arrive (Kafka
 *   retention, relay replays): a purged key is claimable again.
 *
 * Thread rules: a store is immutable after ob_dedup_*_new(), so one
 * store may serve many threads at once, each with its own transaction
 * handle, used as libpq and LMDB allow (a PGconn by one thread at a
 * time; an MDB_txn by the thread that began it unless the environment
 * has MDB_NOTLS, and write transactions of one environment serialised).
 *
 * Notes:
 * - Namespaces are 1..OB_DEDUP_NAMESPACE_MAX bytes and keys
 *   1..OB_KEY_MAX bytes, both UTF-8 without NUL bytes. Anything else is
 *   refused before the backend is touched (OB_EEMPTY, OB_ETOOLONG,
 *   OB_EUTF8, OB_ENUL), so bad input never aborts a PostgreSQL
 *   transaction nor makes an LMDB one unusable.
 * - On PostgreSQL a claim is one round trip when the key is new and two
 *   when it is a duplicate (the second reads the stored hash). A server
 *   error other than the duplicate (connection lost, statement timeout,
 *   serialization failure under REPEATABLE READ or SERIALIZABLE) aborts
 *   the transaction as any failing statement does: roll back and retry
 *   the whole transaction when the error is retriable.
 * - On LMDB any failing write (MDB_MAP_FULL above all) leaves the
 *   transaction unusable, as LMDB does: abort it. MDB_MAP_FULL is
 *   reported as OB_ELMDB with native MDB_MAP_FULL and the retriable flag
 *   (test with ob_lmdb_error_is_map_full()): abort, grow the map with
 *   ob_lmdb_env_grow(), and run the transaction again.
 * - LMDB forbids opening one environment twice in one process (closing
 *   either handle drops the other's locks) and using an environment in
 *   a child after fork(). Both are refused with OB_ESTATE: the second
 *   open by ob_lmdb_env_open() or ob_dedup_lmdb_new(), every store call
 *   in a forked child. oncebox knows an environment from the moment
 *   ob_lmdb_env_open() or ob_dedup_lmdb_new() sees it: one opened with
 *   mdb_env_open() and handed to neither before a fork() cannot be told
 *   apart in the child.
 */

/* The longest namespace, in bytes. */
#define OB_DEDUP_NAMESPACE_MAX 255

/* Bytes of a payload hash: a SHA-256 digest. */
#define OB_DEDUP_HASH_LEN 32

/* The longest topic name stored with a claim: Kafka's own limit. */
#define OB_DEDUP_TOPIC_MAX 249

typedef struct ob_dedup ob_dedup_t;

/* Forward declarations, so that this header needs neither lmdb.h nor
 * libpq-fe.h; they are the same types as MDB_env and MDB_txn. */
struct MDB_env;
struct MDB_txn;

/*
 * What to claim. Initialise with OB_DEDUP_ENTRY_INIT so that size is set
 * and every field has its default; fields added in later versions then
 * default as well. Pointers are borrowed for the call only.
 */
typedef struct ob_dedup_entry {
    size_t size;               /* sizeof(ob_dedup_entry_t) */
    const char *key;           /* required, 1..OB_KEY_MAX bytes */
    size_t key_len;            /* 0: strlen(key) */
    const unsigned char *hash; /* OB_DEDUP_HASH_LEN bytes, or NULL */
    int64_t at_ms;             /* claim time; 0: the wall clock now */
    const char *topic;         /* where it came from, or NULL */
    int32_t partition;         /* -1: none */
    int64_t offset;            /* -1: none */
} ob_dedup_entry_t;

#define OB_DEDUP_ENTRY_INIT                                                \
    {.size = sizeof(ob_dedup_entry_t), .partition = -1, .offset = -1}

/* What one claim found. */
typedef struct ob_dedup_result {
    int duplicate;         /* 0: new, recorded now; 1: already there */
    int hash_differs;      /* duplicate whose stored hash is not the one
                              given (0 when either side has no hash) */
    int64_t claimed_at_ms; /* when the stored entry was claimed */
} ob_dedup_result_t;

/* What the store holds for one key. */
typedef struct ob_dedup_info {
    int found;             /* 0: absent; every other field is zero */
    int64_t claimed_at_ms;
    int has_hash;
    unsigned char hash[OB_DEDUP_HASH_LEN];
    int32_t partition;     /* -1: none */
    int64_t offset;        /* -1: none */
    char topic[OB_DEDUP_TOPIC_MAX + 1]; /* "" when none */
} ob_dedup_info_t;

/*
 * Writes SHA-256(payload[0..len)) into out, the hash that claims store.
 * payload may be NULL when len is 0. Hash the bytes exactly as received:
 * two spellings of one JSON document hash differently (use
 * ob_json_canonicalize() first when they must not).
 * Errors: OB_EINVAL (out NULL, or payload NULL with len > 0),
 * OB_ENOMEM (retriable), OB_EINTERNAL (the SHA-256 implementation).
 */
OB_API int ob_dedup_hash(const void *payload, size_t len,
                         unsigned char out[OB_DEDUP_HASH_LEN],
                         ob_error_t *err);

/*
 * Checks a namespace (NUL-terminated) and a key (key_len bytes, 0:
 * strlen) as every store call does, without touching a store: OB_EEMPTY,
 * OB_ETOOLONG, OB_EUTF8 or OB_ENUL with a message naming the field.
 */
OB_API int ob_dedup_check(const char *ns, const char *key, size_t key_len,
                          ob_error_t *err);

/*
 * A new PostgreSQL store. Reads "schema" from conf (NULL: defaults); the
 * schema must have been migrated (ob_schema_migrate()). Keeps no
 * connection. Free with ob_dedup_destroy().
 * Errors: OB_EINVAL (dp NULL), OB_ENOMEM.
 */
OB_API int ob_dedup_pg_new(ob_dedup_t **dp, const ob_conf_t *conf,
                           ob_error_t *err);

/*
 * A new LMDB store in env, which the caller opened (ob_lmdb_env_open()
 * or mdb_env_open() with room for two more named databases, see
 * mdb_env_set_maxdbs()) and which must stay open until
 * ob_dedup_destroy(); env stays the caller's. conf may be NULL; it is
 * only read for "lmdb.map.max.bytes" when env was not opened by
 * ob_lmdb_env_open().
 *
 * Creates the store's two databases when missing, in a write
 * transaction of its own: call it from a thread that has no
 * transaction open on env. Clears stale reader slots left by dead
 * processes (mdb_reader_check()).
 *
 * Errors: OB_EINVAL (dp or env NULL); OB_ESTATE (the same environment
 * is open under another MDB_env handle in this process, or env was
 * opened before fork() in a parent); OB_ELMDB (MDB_DBS_FULL: too few
 * named databases allowed; MDB_READERS_FULL; I/O); OB_ENOMEM.
 */
OB_API int ob_dedup_lmdb_new(ob_dedup_t **dp, struct MDB_env *env,
                             const ob_conf_t *conf, ob_error_t *err);

/* Frees the store (not its environment or connection). NULL is ok. */
OB_API void ob_dedup_destroy(ob_dedup_t *d);

/* "postgresql" or "lmdb". Static storage; NULL for d NULL. */
OB_API const char *ob_dedup_backend(const ob_dedup_t *d);

/*
 * Claims e->key in namespace ns inside txn, see the semantics above;
 * *res (res may be NULL) says what was found. The entry's hash, time
 * and source are stored only when the key is new.
 *
 * txn: for PostgreSQL a connection inside a transaction (BEGIN first:
 * otherwise OB_ENOTXN); for LMDB a write transaction of the store's
 * environment, possibly a nested one.
 *
 * Errors, checked in this order; for the first group nothing was sent
 * and the transaction is as it was:
 *   OB_EINVAL   d, txn, e NULL, e->size too small, e->at_ms negative,
 *               partition below -1, offset below -1, or (LMDB) txn of
 *               another environment
 *   OB_EEMPTY, OB_ETOOLONG, OB_EUTF8, OB_ENUL
 *               namespace, key or topic refused (the message names it)
 *   OB_ENOTXN   (PostgreSQL) no transaction, or an aborted one
 *   OB_ESTATE   (PostgreSQL) a command is in progress on txn;
 *               (LMDB) used in a child after fork()
 * and from the backend:
 *   OB_EPG      with the SQLSTATE; retriable when the connection broke
 *               or for a serialization failure or deadlock
 *   OB_ELMDB    with the MDB code: MDB_MAP_FULL (retriable, see the
 *               notes), MDB_TXN_FULL (too many changes in one
 *               transaction: commit smaller batches), EACCES (a read-only
 *               transaction) ...
 *   OB_ENOMEM
 */
OB_API int ob_dedup_claim(ob_dedup_t *d, void *txn, const char *ns,
                          const ob_dedup_entry_t *e, ob_dedup_result_t *res,
                          ob_error_t *err);

/*
 * Claims n entries in namespace ns as n calls of ob_dedup_claim() in
 * order would: results[i] (room for n) is what the i-th claim reports,
 * and an entry whose key came earlier in the batch is a duplicate of
 * that earlier entry. Every entry is checked before anything is sent: a
 * bad one fails the call with its index in the message ("entry 3: key
 * is empty"), nothing claimed and the transaction as it was.
 *
 * PostgreSQL: one round trip when every key is new, two when some are
 * duplicates (the second reads their stored hashes), whatever n. LMDB:
 * n claims, no allocation.
 *
 * A failure after the checks can leave some of the claims made in txn:
 * roll it back (a failing PostgreSQL statement has aborted it anyway).
 * Errors: those of ob_dedup_claim(); OB_EINVAL also for entries or
 * results NULL with n > 0; OB_ENOMEM (PostgreSQL builds its arrays).
 */
OB_API int ob_dedup_claim_batch(ob_dedup_t *d, void *txn, const char *ns,
                                const ob_dedup_entry_t *entries, size_t n,
                                ob_dedup_result_t *results, ob_error_t *err);

/*
 * Fills *info with what the store holds for key in ns (info->found 0 when
 * absent: not an error). txn: for PostgreSQL an idle connection or one
 * inside a transaction; for LMDB any transaction of the environment,
 * read-only ones included. Errors: those of ob_dedup_claim() (info NULL
 * is OB_EINVAL; an idle PostgreSQL connection is allowed).
 */
OB_API int ob_dedup_lookup(ob_dedup_t *d, void *txn, const char *ns,
                           const char *key, size_t key_len,
                           ob_dedup_info_t *info, ob_error_t *err);

/*
 * Removes the keys of namespace ns claimed before before_ms (strictly
 * earlier), oldest first, at most limit of them (0: all), and sets
 * *removed (removed may be NULL) to how many went. Call it again while
 * it removes limit keys to purge in bounded transactions.
 *
 * Cost: PostgreSQL walks the (namespace, claimed_at) index over the rows
 * it removes. LMDB walks its time index, which is shared by every
 * namespace of the environment, over the expired entries: those of
 * other namespaces are stepped over and kept, so one namespace with a
 * much longer retention than another's purge cutoff costs a walk over
 * its old entries on every purge of the other.
 *
 * txn: for PostgreSQL an idle connection (the purge commits on its own)
 * or one inside a transaction; for LMDB a write transaction. Removing
 * keys needs free pages too, so LMDB can report MDB_MAP_FULL here as
 * well: use a limit. Errors: those of ob_dedup_claim().
 */
OB_API int ob_dedup_purge(ob_dedup_t *d, void *txn, const char *ns,
                          int64_t before_ms, size_t limit, size_t *removed,
                          ob_error_t *err);

/*
 * Sets *count to the number of keys of namespace ns, or of all
 * namespaces for ns NULL. Cost: proportional to the keys counted (LMDB
 * answers ns NULL at once from its statistics). txn as for
 * ob_dedup_lookup(). Errors: those of ob_dedup_lookup().
 */
OB_API int ob_dedup_count(ob_dedup_t *d, void *txn, const char *ns,
                          uint64_t *count, ob_error_t *err);

/*
 * LMDB environments.
 *
 * ob_lmdb_env_open() opens (creating when missing) the environment in
 * directory path with the settings of conf (NULL: defaults):
 *
 *   lmdb.map.size.bytes      initial map size (default 64 MiB)
 *   lmdb.map.max.bytes       ob_lmdb_env_grow() never goes past it
 *                            (default 16 GiB)
 *   lmdb.max.dbs             named databases allowed, the store's two
 *                            and the inbox's included (default 16)
 *   lmdb.max.readers         reader slots (default 126)
 *   lmdb.durability          what a commit guarantees:
 *     "durable"     (default) data and meta page flushed at each commit:
 *                   a committed transaction survives a crash of the
 *                   process, of the machine and a power loss.
 *     "nometasync"  MDB_NOMETASYNC: data flushed at commit, the meta page
 *                   only at the next commit or mdb_env_sync(): a machine
 *                   crash or power loss can undo the last committed
 *                   transaction; the database stays consistent.
 *     "nosync"      MDB_NOSYNC: nothing flushed at commit: a machine
 *                   crash or power loss can undo every transaction since
 *                   the operating system last wrote its buffers (call
 *                   mdb_env_sync() to bound it); on a file system that
 *                   does not keep write order it can corrupt the
 *                   database.
 *   In every mode a crash of the process alone (kill -9) loses nothing
 *   that was committed: the data is already in the operating system.
 *
 * The environment is opened without MDB_NOTLS (a transaction belongs to
 * the thread that began it) and without MDB_WRITEMAP. Stale reader slots
 * left by dead processes are cleared at once.
 *
 * *envp is the caller's; close it with ob_lmdb_env_close(), not
 * mdb_env_close(), so the process-wide record of open environments is
 * kept right. Errors: OB_EINVAL (envp or path NULL), OB_ESTATE (already
 * open in this process), OB_ESYS (the directory cannot be made or
 * read), OB_ELMDB (mdb_env_open() failed: permissions, a file that is
 * not an LMDB environment, a map size too small for the data),
 * OB_ENOMEM.
 */
OB_API int ob_lmdb_env_open(struct MDB_env **envp, const char *path,
                            const ob_conf_t *conf, ob_error_t *err);

/*
 * Closes an environment from ob_lmdb_env_open(). Every transaction must
 * have ended and every store on it been destroyed. In a child after
 * fork(), a handle inherited from the parent is only forgotten, not
 * closed: closing its descriptors would drop the locks the child holds
 * through a handle of its own on the same files. NULL is ok.
 */
OB_API void ob_lmdb_env_close(struct MDB_env *env);

/*
 * Grows env's map: doubles it, at most to max_bytes (0: the
 * "lmdb.map.max.bytes" env was opened with, or that of the conf given to
 * ob_dedup_lmdb_new(), else the default), and sets *new_size (new_size
 * may be NULL) to the size now in effect. Also adopts a larger size set
 * by another process. No transaction of this process may be active on
 * env during the call (LMDB's rule for mdb_env_set_mapsize()); LMDB
 * refuses while a write transaction is (OB_ELMDB, EINVAL).
 *
 * Errors: OB_EINVAL (env NULL); OB_ELMDB with native MDB_MAP_FULL and
 * not retriable when the map is already at the maximum: the data needs
 * a larger "lmdb.map.max.bytes" or a purge; OB_ELMDB otherwise.
 */
OB_API int ob_lmdb_env_grow(struct MDB_env *env, size_t max_bytes,
                            size_t *new_size, ob_error_t *err);

/*
 * Clears the reader slots of dead processes (mdb_reader_check()), which
 * otherwise pin old pages and make the file grow; *cleared (may be NULL)
 * is how many. Call it now and then in long-running processes (the
 * inbox does). Errors: OB_EINVAL, OB_ELMDB.
 */
OB_API int ob_lmdb_env_reader_check(struct MDB_env *env, int *cleared,
                                    ob_error_t *err);

/* Non-zero when err is an LMDB MDB_MAP_FULL: grow the map and retry. */
OB_API int ob_lmdb_error_is_map_full(const ob_error_t *err);

#ifdef __cplusplus
}
#endif

#endif
