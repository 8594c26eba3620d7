/*
 * libpq failures as ob_error_t, and small command helpers. The messages
 * are built from the server's primary message only: the detail can quote
 * row contents, and PQerrorMessage() is used only for failures the server
 * did not describe, which name the host but never the password.
 */
#include <string.h>

#include "core/pg.h"

/* SQLSTATEs after which running the same work again may succeed. */
static const char *const retriable_states[] = {
    "40001", /* serialization_failure */
    "40P01", /* deadlock_detected */
    "57P01", /* admin_shutdown */
    "57P02", /* crash_shutdown */
    "57P03", /* cannot_connect_now */
    "57P05", /* idle_session_timeout */
};

int ob__pg_sqlstate_retriable(const char *sqlstate)
{
    size_t i;

    if (sqlstate == NULL || strlen(sqlstate) != 5)
        return 0;
    if (strncmp(sqlstate, "08", 2) == 0)
        return 1;
    for (i = 0; i < OB__ARRAY_LEN(retriable_states); i++) {
        if (strcmp(sqlstate, retriable_states[i]) == 0)
            return 1;
    }
    return 0;
}

/* Copies the first line of msg, without trailing blanks, into out. */
static void first_line(const char *msg, char *out, size_t size)
{
    size_t len = strcspn(msg, "\n");

    while (len > 0 && (msg[len - 1] == ' ' || msg[len - 1] == '\t' ||
                       msg[len - 1] == '\r'))
        len--;
    if (len >= size)
        len = size - 1;
    memcpy(out, msg, len);
    out[len] = '\0';
}

/*
 * The server's primary message when it sent one; else what libpq put in
 * the result or on the connection (its own failures have no fields).
 */
static void pg_message(const PGconn *conn, const PGresult *res, char *out,
                       size_t size)
{
    const char *primary = NULL;

    if (res != NULL)
        primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (primary == NULL && res != NULL && PQresultErrorMessage(res)[0])
        primary = PQresultErrorMessage(res);
    if (primary == NULL && conn != NULL)
        primary = PQerrorMessage(conn);

    first_line(primary != NULL ? primary : "", out, size);
    if (out[0] == '\0')
        first_line(conn != NULL ? "unknown libpq failure" : "no connection",
                   out, size);
}

int ob__error_pg(ob_error_t *err, const PGconn *conn, const PGresult *res,
                 const char *what)
{
    int bad = conn == NULL || PQstatus(conn) != CONNECTION_OK;
    char line[OB_ERROR_MESSAGE_MAX];
    const char *state = NULL;
    unsigned flags;

    if (err == NULL)
        return OB_EPG;

    if (res != NULL)
        state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (state == NULL || strlen(state) != 5)
        state = bad ? "08006" : "";
    pg_message(conn, res, line, sizeof(line));

    flags = bad || ob__pg_sqlstate_retriable(state) ? OB_ERROR_RETRIABLE : 0;
    if (state[0] != '\0')
        ob__error_full(err, OB_EPG, OB_DOMAIN_POSTGRES, 0, flags,
                       "%s: %s (SQLSTATE %s)", what, line, state);
    else
        ob__error_full(err, OB_EPG, OB_DOMAIN_POSTGRES, 0, flags, "%s: %s",
                       what, line);
    memcpy(err->sqlstate, state, strlen(state) + 1);
    return OB_EPG;
}

static int result_ok(const PGresult *res)
{
    ExecStatusType st;

    if (res == NULL)
        return 0;
    st = PQresultStatus(res);
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

int ob__pg_exec(PGconn *conn, const char *sql, const char *what,
                ob_error_t *err)
{
    PGresult *res = PQexec(conn, sql);
    int rc = 0;

    /* PQexec returns the last statement's result, or the failing one's. */
    if (!result_ok(res))
        rc = ob__error_pg(err, conn, res, what);
    PQclear(res);
    return rc;
}

int ob__pg_exec_params(PGconn *conn, const char *sql, int nparams,
                       const char *const *values, const char *what,
                       PGresult **resp, ob_error_t *err)
{
    PGresult *res;
    int rc;

    if (resp != NULL)
        *resp = NULL;

    res = PQexecParams(conn, sql, nparams, NULL, values, NULL, NULL, 0);
    if (!result_ok(res)) {
        rc = ob__error_pg(err, conn, res, what);
        PQclear(res);
        return rc;
    }

    if (resp != NULL)
        *resp = res;
    else
        PQclear(res);
    return 0;
}

int ob__pg_conn_check(PGconn *conn, int *insidep, ob_error_t *err)
{
    if (PQstatus(conn) != CONNECTION_OK)
        return ob__error_pg(err, conn, NULL, "connection");
    if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF)
        return ob__error_set(err, OB_ESTATE,
                             "the connection is in pipeline mode");

    switch (PQtransactionStatus(conn)) {
    case PQTRANS_IDLE:
        *insidep = 0;
        return 0;
    case PQTRANS_INTRANS:
        *insidep = 1;
        return 0;
    case PQTRANS_INERROR:
        return ob__error_set(err, OB_ENOTXN,
                             "the connection's transaction is aborted; "
                             "roll it back first");
    case PQTRANS_ACTIVE:
        return ob__error_set(err, OB_ESTATE,
                             "the connection is busy with another command");
    default:
        return ob__error_pg(err, conn, NULL, "connection");
    }
}
