/*
 * What the LMDB environment helpers (lmdb_env.c) share with the LMDB
 * key store and the LMDB inbox: LMDB failures as ob_error_t, and the
 * process-wide record of open environments that refuses a second
 * handle on one environment and any use after fork(). Private; never
 * installed.
 */
#ifndef ONCEBOX_DEDUP_LMDB_INTERNAL_H
#define ONCEBOX_DEDUP_LMDB_INTERNAL_H

#include <lmdb.h>

#include "core/internal.h"

/*
 * Fills err from an LMDB return code rc (an MDB_* code or an errno
 * value) and returns the oncebox code: OB_ENOMEM for ENOMEM, else
 * OB_ELMDB, in the LMDB domain with native rc. The message is
 * "what: " and LMDB's text. Retriable: MDB_MAP_FULL, MDB_MAP_RESIZED,
 * MDB_READERS_FULL, ENOMEM. Fatal: MDB_PANIC, MDB_CORRUPTED.
 */
int ob__error_lmdb(ob_error_t *err, int rc, const char *what);

/* How many times this process is a fork()ed child of one that used
 * oncebox's LMDB helpers; changes in the child at every fork(). */
unsigned ob__lmdb_fork_generation(void);

/*
 * Records one more user (a store, an inbox) of env, which the caller
 * opened itself or with ob_lmdb_env_open(); *genp is the fork
 * generation env belongs to. Refused with OB_ESTATE when env was opened
 * before a fork() or when another handle of this process has the same
 * environment open. conf (may be NULL) gives the map maximum of an env
 * that ob_lmdb_env_open() did not open. Undo with ob__lmdb_env_release().
 */
int ob__lmdb_env_acquire(MDB_env *env, const ob_conf_t *conf,
                         unsigned *genp, ob_error_t *err);

void ob__lmdb_env_release(MDB_env *env);

/* OB_ESTATE when gen is not this process's fork generation. */
int ob__lmdb_check_fork(unsigned gen, ob_error_t *err);

#endif
