/*
 * PostgreSQL helpers every module that talks to PostgreSQL shares: turning
 * a libpq failure into an ob_error_t, and running a command whose result
 * only needs checking. Private; never installed.
 */
#ifndef ONCEBOX_CORE_PG_H
#define ONCEBOX_CORE_PG_H

#include <libpq-fe.h>

#include "core/internal.h"

/*
 * Fills err with OB_EPG in the PostgreSQL domain and returns OB_EPG.
 *
 * res may be NULL (PQexec returned none, or the failure is the
 * connection's). The message is "what: " followed by the server's primary
 * message and its SQLSTATE, or by the first line of PQerrorMessage(conn)
 * when the server sent no error; never the detail (it can quote row
 * data) and never a conninfo. sqlstate is the server's; a failure libpq
 * found itself on a connection that is now bad gets "08006"
 * (connection_failure), so callers can branch on class 08 alone.
 *
 * OB_ERROR_RETRIABLE is set when the connection is bad and for the
 * SQLSTATEs after which the same work may succeed: class 08 (connection),
 * 40001 (serialization failure), 40P01 (deadlock), 57P01..57P03 and 57P05
 * (server shut down, crashed, starting up, idle session timeout). 57P04
 * (database dropped) is not.
 */
int ob__error_pg(ob_error_t *err, const PGconn *conn, const PGresult *res,
                 const char *what);

/* Non-zero when sqlstate (five characters, or "") is one of the above. */
int ob__pg_sqlstate_retriable(const char *sqlstate);

/*
 * Runs sql, which takes no parameters and may hold several statements,
 * and checks that every statement succeeded. On failure err describes it
 * (what names the step) and the result is gone.
 */
int ob__pg_exec(PGconn *conn, const char *sql, const char *what,
                ob_error_t *err);

/*
 * Runs one statement with nparams text parameters (values[i] NULL is SQL
 * NULL). On success *resp (resp may be NULL to discard it) is the result,
 * PGRES_TUPLES_OK or PGRES_COMMAND_OK, owned by the caller: PQclear() it.
 * On failure *resp is NULL.
 */
int ob__pg_exec_params(PGconn *conn, const char *sql, int nparams,
                       const char *const *values, const char *what,
                       PGresult **resp, ob_error_t *err);

/*
 * Checks that conn can take a statement: open, not in pipeline mode, not
 * busy, and not inside an aborted transaction (OB_ENOTXN). *insidep says
 * whether it is inside the caller's open transaction.
 */
int ob__pg_conn_check(PGconn *conn, int *insidep, ob_error_t *err);

#endif
