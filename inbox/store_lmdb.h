/*
 * The LMDB inbox store, for the consumer's constructor. Private; never
 * installed.
 */
#ifndef ONCEBOX_INBOX_STORE_LMDB_H
#define ONCEBOX_INBOX_STORE_LMDB_H

#include <lmdb.h>

#include "inbox/store.h"

/*
 * The store on env, which stays the caller's and must outlive the
 * store. Creates the dedup store's and the inbox's databases, in a
 * write transaction of its own: no transaction may be open on env in
 * this thread. Refuses an env opened before fork() or open twice in
 * this process (OB_ESTATE).
 */
int ob__inbox_lmdb_new(ob__inbox_store_t **sp, const ob_conf_t *conf,
                       MDB_env *env, ob_error_t *err);

/*
 * consumer.c: a consumer on PostgreSQL (env NULL, conninfo as for
 * ob_consumer_new_pg()) or on the LMDB environment env.
 */
int ob__consumer_new(ob_consumer_t **cp, const ob_conf_t *conf,
                     const char *conninfo, MDB_env *env, ob_error_t *err);

#endif
