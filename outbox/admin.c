/*
 * Shared parts of the operations calls: connection and schema checks,
 * the read transaction, SQL text with the schema in it, result fields.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/buf.h"
#include "core/pg.h"
#include "oncebox/schema.h"
#include "outbox/admin.h"

int ob__admin_open(ob__admin_t *a, PGconn *conn, const char *schema,
                   ob_error_t *err)
{
    int rc;

    memset(a, 0, sizeof(*a));
    if (conn == NULL)
        return ob__error_set(err, OB_EINVAL, "conn is NULL");

    a->conn = conn;
    a->schema = schema != NULL ? schema : OB_SCHEMA_DEFAULT;
    rc = ob__check_text("schema", a->schema, strlen(a->schema),
                        OB_SCHEMA_NAME_MAX, err);
    if (rc == 0)
        rc = ob__pg_conn_check(conn, &a->inside, err);
    if (rc != 0)
        return rc;

    a->ident = ob__sql_ident(a->schema);
    return a->ident != NULL ? 0 : ob__error_nomem(err, "schema name");
}

void ob__admin_close(ob__admin_t *a)
{
    ob__free(a->ident);
    a->ident = NULL;
}

int ob__admin_require_schema(ob__admin_t *a, ob_error_t *err)
{
    int version = 0;
    int rc = ob_schema_version(a->conn, a->schema, &version, err);

    if (rc != 0)
        return rc;
    if (version == 0)
        return ob__error_set(err, OB_ESCHEMA, "schema \"%s\" has no "
                             "oncebox tables: migrate it first", a->schema);
    return 0;
}

int ob__admin_begin_read(ob__admin_t *a, ob_error_t *err)
{
    if (a->inside)
        return 0;
    return ob__pg_exec(a->conn, "BEGIN ISOLATION LEVEL REPEATABLE READ "
                       "READ ONLY", "starting a read transaction", err);
}

int ob__admin_end(ob__admin_t *a, int failed, ob_error_t *err)
{
    if (a->inside)
        return 0;
    if (failed) {
        /* The first failure is the one to report; a failing rollback
         * only means the connection is gone, which that one says. */
        PQclear(PQexec(a->conn, "ROLLBACK"));
        return 0;
    }
    return ob__pg_exec(a->conn, "COMMIT", "ending the read transaction",
                       err);
}

char *ob__admin_sql(const ob__admin_t *a, const char *sql)
{
    ob__buf_t b = OB__BUF_INIT;
    const char *p = sql, *mark;

    while ((mark = strstr(p, "%S")) != NULL) {
        ob__buf_append(&b, p, (size_t)(mark - p));
        ob__buf_puts(&b, a->ident);
        p = mark + 2;
    }
    ob__buf_puts(&b, p);
    if (b.failed) {
        ob__buf_free(&b);
        return NULL;
    }
    return b.data;
}

char *ob__admin_text(const PGresult *res, int row, int col, int *nomem)
{
    char *s;

    if (PQgetisnull(res, row, col))
        return NULL;
    s = ob__strdup(PQgetvalue(res, row, col));
    if (s == NULL)
        *nomem = 1;
    return s;
}

long long ob__admin_ll(const PGresult *res, int row, int col,
                       long long dflt)
{
    if (PQgetisnull(res, row, col))
        return dflt;
    return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

double ob__admin_age(const PGresult *res, int row, int col)
{
    long long ms = ob__admin_ll(res, row, col, -1);

    if (PQgetisnull(res, row, col))
        return -1.0;
    return ms > 0 ? (double)ms / 1000.0 : 0.0;
}

int ob__admin_json_out(char *text, char **jsonp, ob_error_t *err)
{
    json_malloc_t jmalloc;
    json_free_t jfree;

    if (text == NULL)
        return ob__error_nomem(err, "JSON text");

    /* The program may have given jansson allocators of its own. */
    json_get_alloc_funcs(&jmalloc, &jfree);
    *jsonp = ob__strdup(text);
    (jfree != NULL ? jfree : free)(text);
    return *jsonp != NULL ? 0 : ob__error_nomem(err, "JSON text");
}
