/*
 * What the operations calls of outbox.h (status, parked rows, purge)
 * share: checking the connection and the schema, and reading result
 * fields. Private; never installed.
 */
#ifndef ONCEBOX_OUTBOX_ADMIN_H
#define ONCEBOX_OUTBOX_ADMIN_H

#include <libpq-fe.h>

#include "core/internal.h"

/*
 * An operation's view of its connection and schema, filled by
 * ob__admin_open(): whether the caller's transaction was open, and the
 * schema as given (or the default) and as a quoted identifier.
 */
typedef struct ob__admin {
    PGconn *conn;
    int inside;         /* conn was inside the caller's transaction */
    const char *schema; /* borrowed from the caller, or the default */
    char *ident;        /* quoted; ob__admin_close() frees it */
} ob__admin_t;

/*
 * Checks conn (usable, not busy, not in pipeline mode, its transaction
 * not aborted) and the schema name, without touching the server.
 * schema NULL means OB_SCHEMA_DEFAULT. On failure nothing needs closing.
 */
int ob__admin_open(ob__admin_t *a, PGconn *conn, const char *schema,
                   ob_error_t *err);

void ob__admin_close(ob__admin_t *a);

/*
 * Fails with OB_ESCHEMA when the schema is not migrated. Runs in the
 * transaction conn is in (or in none).
 */
int ob__admin_require_schema(ob__admin_t *a, ob_error_t *err);

/*
 * Starts a read-only REPEATABLE READ transaction when the caller has none,
 * so every figure comes from one snapshot; ob__admin_end() commits it
 * (or, with failed set, rolls it back, keeping err as it is). Both do
 * nothing inside the caller's transaction.
 */
int ob__admin_begin_read(ob__admin_t *a, ob_error_t *err);
int ob__admin_end(ob__admin_t *a, int failed, ob_error_t *err);

/* sql with every "%S" replaced by the schema's quoted identifier. A new
 * string for ob__free(), or NULL when out of memory. */
char *ob__admin_sql(const ob__admin_t *a, const char *sql);

/* Field (row, col) of res as a new string, NULL for SQL NULL. Sets
 * *nomem when a copy of a non-NULL value failed. */
char *ob__admin_text(const PGresult *res, int row, int col, int *nomem);

/*
 * Field (row, col) as an integer; SQL NULL gives dflt. Ages travel as
 * integer milliseconds, which no locale can misread.
 */
long long ob__admin_ll(const PGresult *res, int row, int col,
                       long long dflt);

/* An OB__ADMIN_AGE_MS() field in seconds: -1 for SQL NULL (no row to
 * age), 0 for a time ahead of the server's clock. */
double ob__admin_age(const PGresult *res, int row, int col);

/*
 * Copies a string made by jansson's json_dumps() into memory from the
 * library's allocator (so callers free it with ob_free()) and frees
 * jansson's. NULL text is out of memory.
 */
int ob__admin_json_out(char *text, char **jsonp, ob_error_t *err);

/* Timestamps in results: ISO 8601 in UTC, whatever the session's TimeZone
 * and DateStyle, e.g. 2024-05-01T12:00:00.123Z. */
#define OB__ADMIN_ISO(expr)                                                \
    "pg_catalog.to_char((" expr ") AT TIME ZONE 'UTC', "                   \
    "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

/* Milliseconds from expr (a timestamptz) to now(); read it with
 * ob__admin_age(). */
#define OB__ADMIN_AGE_MS(expr)                                             \
    "(extract(epoch FROM now() - (" expr ")) * 1000)::bigint"

#endif
