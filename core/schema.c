/*
 * Migrations: creating and upgrading the oncebox schema, and reading its
 * version. The migration texts come from sql/ through tools/embed-sql.sh.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oncebox/schema.h"

#include "core/buf.h"
#include "core/pg.h"
#include "core/schema_internal.h"

#define SAVEPOINT "oncebox_migrate"

/*
 * The statements built here hold the quoted schema name once: at most
 * 2 * OB_SCHEMA_NAME_MAX + 2 bytes, when every byte is a quote.
 */
#define SQL_MAX 256

/*
 * The version table is created here rather than by a migration because
 * reading it is how migrate learns which migrations to run.
 */
static const char migrations_table_sql[] =
    "CREATE TABLE @SCHEMA@.oncebox_migrations (\n"
    "    version integer NOT NULL,\n"
    "    name text NOT NULL,\n"
    "    applied_at timestamptz NOT NULL DEFAULT now(),\n"
    "    CONSTRAINT oncebox_migrations_pkey PRIMARY KEY (version)\n"
    ");\n"
    "COMMENT ON TABLE @SCHEMA@.oncebox_migrations IS\n"
    "    'oncebox: applied schema migrations; the highest is the version'";

/* Whether the schema and its version table exist, in one round trip. */
static const char probe_sql[] =
    "SELECT n.oid IS NOT NULL, c.oid IS NOT NULL"
    " FROM (SELECT 1) AS one"
    " LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = $1"
    " LEFT JOIN pg_catalog.pg_class c"
    " ON c.relnamespace = n.oid AND c.relname = 'oncebox_migrations'";

/*
 * Serialises migrates of one schema. A hash collision between two schema
 * names only makes their migrates wait for each other.
 */
static const char lock_sql[] =
    "SELECT pg_catalog.pg_advisory_xact_lock("
    "pg_catalog.hashtext('oncebox migrate'), pg_catalog.hashtext($1))";

int ob_schema_latest(void)
{
    if (ob__migration_count == 0)
        return 0;
    return ob__migrations[ob__migration_count - 1].version;
}

static void put_literal(ob__buf_t *b, const char *s)
{
    ob__buf_puts(b, "E'");
    for (; *s != '\0'; s++) {
        if (*s == '\'' || *s == '\\')
            ob__buf_putc(b, *s);
        ob__buf_putc(b, *s);
    }
    ob__buf_putc(b, '\'');
}

char *ob__schema_render(const char *sql, const char *schema)
{
    static const char ident_mark[] = "@SCHEMA@";
    static const char literal_mark[] = "@SCHEMA_LITERAL@";
    ob__buf_t b = OB__BUF_INIT;
    char *ident = ob__sql_ident(schema);
    size_t run;

    if (ident == NULL)
        return NULL;

    /* Appending nothing still makes the buffer a string. */
    ob__buf_append(&b, "", 0);
    while (*sql != '\0') {
        run = strcspn(sql + 1, "@") + 1;
        if (strncmp(sql, ident_mark, sizeof(ident_mark) - 1) == 0) {
            ob__buf_puts(&b, ident);
            run = sizeof(ident_mark) - 1;
        } else if (strncmp(sql, literal_mark, sizeof(literal_mark) - 1) == 0) {
            put_literal(&b, schema);
            run = sizeof(literal_mark) - 1;
        } else {
            ob__buf_append(&b, sql, run);
        }
        sql += run;
    }
    ob__free(ident);

    if (b.failed) {
        ob__buf_free(&b);
        return NULL;
    }
    return b.data;
}

static int name_check(const char *schema, int creating, ob_error_t *err)
{
    int rc = ob__check_text("schema", schema, strlen(schema),
                            OB_SCHEMA_NAME_MAX, err);

    if (rc != 0)
        return rc;
    if (creating && strncmp(schema, "pg_", 3) == 0)
        return ob__error_set(err, OB_ENAME,
                             "schema names starting with \"pg_\" are "
                             "reserved by PostgreSQL");
    return 0;
}

static int probe(PGconn *conn, const char *schema, int *has_schemap,
                 int *has_tablep, ob_error_t *err)
{
    const char *values[1] = {schema};
    PGresult *res;
    int rc;

    rc = ob__pg_exec_params(conn, probe_sql, 1, values, "looking up the schema",
                            &res, err);
    if (rc != 0)
        return rc;

    *has_schemap = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    *has_tablep = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
    PQclear(res);
    return 0;
}

static int read_version(PGconn *conn, const char *ident, int *versionp,
                        ob_error_t *err)
{
    char sql[SQL_MAX];
    PGresult *res;
    int rc;

    snprintf(sql, sizeof(sql),
             "SELECT coalesce(max(version), 0) FROM %s.oncebox_migrations",
             ident);
    rc = ob__pg_exec_params(conn, sql, 0, NULL, "reading the version", &res,
                            err);
    if (rc != 0)
        return rc;

    *versionp = (int)strtol(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return 0;
}

/* Runs sql after substituting the schema's name into it. */
static int exec_rendered(PGconn *conn, const char *sql, const char *schema,
                         const char *what, ob_error_t *err)
{
    char *text = ob__schema_render(sql, schema);
    int rc;

    if (text == NULL)
        return ob__error_nomem(err, "migration text");
    rc = ob__pg_exec(conn, text, what, err);
    ob__free(text);
    return rc;
}

static int create_missing(PGconn *conn, const char *schema, const char *ident,
                          ob_error_t *err)
{
    int has_schema, has_table, rc;
    char sql[SQL_MAX];

    /*
     * Looked up first rather than with IF NOT EXISTS: CREATE SCHEMA checks
     * the CREATE privilege even when the schema exists, and both forms
     * send notices, which libpq prints on stderr by default.
     */
    rc = probe(conn, schema, &has_schema, &has_table, err);
    if (rc != 0 || has_table)
        return rc;

    if (!has_schema) {
        snprintf(sql, sizeof(sql), "CREATE SCHEMA %s", ident);
        rc = ob__pg_exec(conn, sql, "creating the schema", err);
        if (rc != 0)
            return rc;
    }
    return exec_rendered(conn, migrations_table_sql, schema,
                         "creating the migrations table", err);
}

static int apply(PGconn *conn, const char *schema, const char *ident,
                 const ob__migration_t *m, ob_error_t *err)
{
    char what[128], sql[SQL_MAX], version[16];
    const char *values[2] = {version, m->name};
    int rc;

    snprintf(what, sizeof(what), "applying migration %d (%s)", m->version,
             m->name);
    rc = exec_rendered(conn, m->sql, schema, what, err);
    if (rc != 0)
        return rc;

    snprintf(version, sizeof(version), "%d", m->version);
    snprintf(sql, sizeof(sql),
             "INSERT INTO %s.oncebox_migrations (version, name)"
             " VALUES ($1, $2)",
             ident);
    return ob__pg_exec_params(conn, sql, 2, values, what, NULL, err);
}

static int migrate_locked(PGconn *conn, const char *schema, const char *ident,
                          ob_error_t *err)
{
    const char *values[1] = {schema};
    int current, rc;
    size_t i;

    rc = ob__pg_exec_params(conn, lock_sql, 1, values,
                            "taking the migration lock", NULL, err);
    if (rc == 0)
        rc = create_missing(conn, schema, ident, err);
    if (rc == 0)
        rc = read_version(conn, ident, &current, err);
    if (rc != 0)
        return rc;

    if (current > ob_schema_latest())
        return ob__error_set(err, OB_ESCHEMA,
                             "the schema is at version %d, newer than "
                             "version %d, the newest this oncebox knows; "
                             "upgrade oncebox",
                             current, ob_schema_latest());

    for (i = 0; i < ob__migration_count && rc == 0; i++) {
        if (ob__migrations[i].version > current)
            rc = apply(conn, schema, ident, &ob__migrations[i], err);
    }
    return rc;
}

/*
 * In the caller's transaction the work runs under a savepoint, so that a
 * failure can be undone without aborting what the caller did before.
 * Our own transaction is READ COMMITTED whatever the session's default,
 * so that each statement after the lock sees what the previous holder of
 * the lock committed.
 */
static int txn_begin(PGconn *conn, int inside, ob_error_t *err)
{
    if (inside)
        return ob__pg_exec(conn, "SAVEPOINT " SAVEPOINT, "setting a savepoint",
                           err);
    return ob__pg_exec(conn, "BEGIN ISOLATION LEVEL READ COMMITTED",
                       "starting a transaction", err);
}

/* Ends what txn_begin() started: kept when rc is 0, else undone. */
static int txn_end(PGconn *conn, int inside, int rc, ob_error_t *err)
{
    if (rc == 0 && inside)
        return ob__pg_exec(conn, "RELEASE SAVEPOINT " SAVEPOINT,
                           "releasing the savepoint", err);
    if (rc == 0)
        return ob__pg_exec(conn, "COMMIT", "committing", err);

    /* err already says what failed; a failing undo must not replace it. */
    if (inside)
        ob__pg_exec(conn,
                    "ROLLBACK TO SAVEPOINT " SAVEPOINT
                    "; RELEASE SAVEPOINT " SAVEPOINT,
                    "rolling back to the savepoint", NULL);
    else
        ob__pg_exec(conn, "ROLLBACK", "rolling back", NULL);
    return rc;
}

int ob_schema_migrate(PGconn *conn, const char *schema, ob_error_t *err)
{
    char *ident = NULL;
    int inside, rc;

    if (conn == NULL)
        return ob__error_set(err, OB_EINVAL, "migrate: conn is NULL");
    if (schema == NULL)
        schema = OB_SCHEMA_DEFAULT;
    rc = name_check(schema, 1, err);
    if (rc == 0)
        rc = ob__pg_conn_check(conn, &inside, err);
    if (rc != 0)
        return rc;

    ident = ob__sql_ident(schema);
    if (ident == NULL)
        return ob__error_nomem(err, "schema identifier");

    rc = txn_begin(conn, inside, err);
    if (rc == 0) {
        rc = migrate_locked(conn, schema, ident, err);
        rc = txn_end(conn, inside, rc, err);
    }
    if (rc != 0)
        ob__error_prefix(err, "migrating schema %s", ident);

    ob__free(ident);
    return rc;
}

int ob_schema_version(PGconn *conn, const char *schema, int *versionp,
                      ob_error_t *err)
{
    int inside, has_schema, has_table, rc;
    char *ident;

    if (conn == NULL || versionp == NULL)
        return ob__error_set(err, OB_EINVAL,
                             "schema version: conn or versionp is NULL");
    if (schema == NULL)
        schema = OB_SCHEMA_DEFAULT;
    rc = name_check(schema, 0, err);
    if (rc == 0)
        rc = ob__pg_conn_check(conn, &inside, err);
    if (rc == 0)
        rc = probe(conn, schema, &has_schema, &has_table, err);
    if (rc != 0)
        return rc;

    *versionp = 0;
    if (!has_table)
        return 0;

    ident = ob__sql_ident(schema);
    if (ident == NULL)
        return ob__error_nomem(err, "schema identifier");
    rc = read_version(conn, ident, versionp, err);
    ob__free(ident);
    return rc;
}

int ob_schema_channel(const char *schema, char *buf, size_t size,
                      ob_error_t *err)
{
    static const char suffix[] = ".outbox";
    size_t len;
    int rc;

    if (buf == NULL || size < OB_SCHEMA_CHANNEL_SIZE)
        return ob__error_set(err, OB_EINVAL,
                             "schema channel: buf is NULL or smaller than "
                             "OB_SCHEMA_CHANNEL_SIZE");
    if (schema == NULL)
        schema = OB_SCHEMA_DEFAULT;
    rc = name_check(schema, 0, err);
    if (rc != 0)
        return rc;

    /*
     * The trigger cuts the same way: whole characters while the name
     * is longer than 56 bytes. schema is valid UTF-8, so stepping back
     * over continuation bytes lands on a character's first byte.
     */
    len = strlen(schema);
    if (len > OB_SCHEMA_CHANNEL_SIZE - sizeof(suffix)) {
        len = OB_SCHEMA_CHANNEL_SIZE - sizeof(suffix);
        while (len > 0 && ((unsigned char)schema[len] & 0xc0) == 0x80)
            len--;
    }
    memcpy(buf, schema, len);
    memcpy(buf + len, suffix, sizeof(suffix));
    return 0;
}
