/*
 * LMDB environments: opening with oncebox's defaults, growing the map,
 * clearing stale readers, and the process-wide record of open
 * environments.
 *
 * LMDB documents two restrictions it does not enforce: an environment
 * must be opened only once per process (its locks are POSIX record
 * locks, which closing any descriptor of the lock file drops for the
 * whole process), and an environment must not be used in a child after
 * fork(). The record enforces both: each environment is known by the
 * device and inode of its path, with the fork generation it was opened
 * in; an atfork handler moves the child to a new generation.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>

#include "dedup/lmdb_internal.h"
#include "oncebox/dedup.h"

typedef struct env_entry {
    struct env_entry *next;
    MDB_env *env;
    dev_t dev;
    ino_t ino;
    unsigned gen;   /* fork generation it was recorded in */
    int owned;      /* opened by ob_lmdb_env_open() */
    int users;      /* stores and inboxes on it */
    size_t map_max; /* "lmdb.map.max.bytes" */
} env_entry_t;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static env_entry_t *registry;
static unsigned fork_generation;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static int atfork_rc;

/* The lock is held across fork() so that the child's copy is sane. */
static void atfork_prepare(void)
{
    pthread_mutex_lock(&registry_lock);
}

static void atfork_parent(void)
{
    pthread_mutex_unlock(&registry_lock);
}

static void atfork_child(void)
{
    __atomic_add_fetch(&fork_generation, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&registry_lock);
}

static void atfork_register(void)
{
    atfork_rc = pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static int atfork_ensure(ob_error_t *err)
{
    pthread_once(&atfork_once, atfork_register);
    return atfork_rc != 0 ? ob__error_sys(err, atfork_rc, "pthread_atfork")
                          : 0;
}

unsigned ob__lmdb_fork_generation(void)
{
    return __atomic_load_n(&fork_generation, __ATOMIC_ACQUIRE);
}

int ob__lmdb_check_fork(unsigned gen, ob_error_t *err)
{
    if (gen == ob__lmdb_fork_generation())
        return 0;
    return ob__error_set(err, OB_ESTATE, "the LMDB environment was opened "
                         "before fork(); LMDB forbids using it in the "
                         "child: open it anew there");
}

int ob__error_lmdb(ob_error_t *err, int rc, const char *what)
{
    unsigned flags = 0;

    if (rc == MDB_MAP_FULL || rc == MDB_MAP_RESIZED ||
        rc == MDB_READERS_FULL || rc == ENOMEM)
        flags = OB_ERROR_RETRIABLE;
    if (rc == MDB_PANIC || rc == MDB_CORRUPTED)
        flags = OB_ERROR_FATAL;

    if (rc == MDB_MAP_FULL)
        return ob__error_full(err, OB_ELMDB, OB_DOMAIN_LMDB, rc, flags,
                              "%s: %s; abort the transaction, grow the "
                              "map and run it again", what,
                              mdb_strerror(rc));
    return ob__error_full(err, rc == ENOMEM ? OB_ENOMEM : OB_ELMDB,
                          OB_DOMAIN_LMDB, rc, flags, "%s: %s", what,
                          mdb_strerror(rc));
}

int ob_lmdb_error_is_map_full(const ob_error_t *err)
{
    return err != NULL && err->domain == OB_DOMAIN_LMDB &&
           err->native == MDB_MAP_FULL;
}

/* The entry of env, or NULL. Call with the lock held. */
static env_entry_t *registry_find(MDB_env *env)
{
    env_entry_t *e;

    for (e = registry; e != NULL; e = e->next) {
        if (e->env == env)
            return e;
    }
    return NULL;
}

/* Refuses a second handle on the file at (dev, ino). Lock held. */
static int registry_check_twice(dev_t dev, ino_t ino, const char *path,
                                ob_error_t *err)
{
    unsigned gen = ob__lmdb_fork_generation();
    env_entry_t *e;

    for (e = registry; e != NULL; e = e->next) {
        if (e->dev == dev && e->ino == ino && e->gen == gen)
            return ob__error_set(err, OB_ESTATE, "LMDB environment %s is "
                                 "already open in this process; LMDB "
                                 "forbids a second handle: share the "
                                 "first", path);
    }
    return 0;
}

static void registry_unlink(env_entry_t *entry)
{
    env_entry_t **p;

    for (p = &registry; *p != NULL; p = &(*p)->next) {
        if (*p == entry) {
            *p = entry->next;
            return;
        }
    }
}

/* Adds env to the record. Lock held. */
static int registry_add(MDB_env *env, const struct stat *st, int owned,
                        size_t map_max, ob_error_t *err)
{
    env_entry_t *e = ob__calloc(1, sizeof(*e));

    if (e == NULL)
        return ob__error_nomem(err, "LMDB environment record");

    e->env = env;
    e->dev = st->st_dev;
    e->ino = st->st_ino;
    e->gen = ob__lmdb_fork_generation();
    e->owned = owned;
    e->users = owned ? 0 : 1;
    e->map_max = map_max;
    e->next = registry;
    registry = e;
    return 0;
}

/* The value of "lmdb.map.max.bytes" in conf, or its default. */
static int conf_map_max(const ob_conf_t *conf, size_t *maxp,
                        ob_error_t *err)
{
    ob_conf_t *defaults = NULL;
    int rc;

    if (conf == NULL) {
        rc = ob_conf_new(&defaults, err);
        if (rc != 0)
            return rc;
        conf = defaults;
    }
    *maxp = (size_t)ob__conf_int(conf, "lmdb.map.max.bytes");
    ob_conf_destroy(defaults);
    return 0;
}

static int env_stat(MDB_env *env, struct stat *st, const char **pathp,
                    ob_error_t *err)
{
    const char *path = NULL;
    int rc = mdb_env_get_path(env, &path);

    if (rc != 0 || path == NULL)
        return ob__error_set(err, OB_EINVAL, "the LMDB environment is not "
                             "open (mdb_env_open() first)");
    *pathp = path;
    if (stat(path, st) != 0)
        return ob__error_sys(err, errno, path);
    return 0;
}

int ob__lmdb_env_acquire(MDB_env *env, const ob_conf_t *conf,
                         unsigned *genp, ob_error_t *err)
{
    const char *path = NULL;
    env_entry_t *e;
    struct stat st;
    size_t map_max;
    int rc;

    rc = atfork_ensure(err);
    if (rc == 0)
        rc = conf_map_max(conf, &map_max, err);
    if (rc == 0)
        rc = env_stat(env, &st, &path, err);
    if (rc != 0)
        return rc;

    pthread_mutex_lock(&registry_lock);
    e = registry_find(env);
    if (e != NULL) {
        rc = ob__lmdb_check_fork(e->gen, err);
        if (rc == 0)
            e->users++;
    } else {
        rc = registry_check_twice(st.st_dev, st.st_ino, path, err);
        if (rc == 0)
            rc = registry_add(env, &st, 0, map_max, err);
    }
    pthread_mutex_unlock(&registry_lock);
    if (rc == 0)
        *genp = ob__lmdb_fork_generation();
    return rc;
}

void ob__lmdb_env_release(MDB_env *env)
{
    env_entry_t *e;

    pthread_mutex_lock(&registry_lock);
    e = registry_find(env);
    if (e != NULL && e->users > 0)
        e->users--;
    if (e != NULL && !e->owned && e->users == 0) {
        registry_unlink(e);
        ob__free(e);
    }
    pthread_mutex_unlock(&registry_lock);
}

/* The flags of "lmdb.durability". */
static unsigned durability_flags(const ob_conf_t *conf)
{
    const char *mode = ob_conf_get(conf, "lmdb.durability");

    if (strcmp(mode, "nosync") == 0)
        return MDB_NOSYNC;
    if (strcmp(mode, "nometasync") == 0)
        return MDB_NOMETASYNC;
    return 0;
}

/* A new environment handle set up from conf and opened at path. */
static int env_create(const char *path, const ob_conf_t *conf,
                      MDB_env **envp, ob_error_t *err)
{
    const char *step = "mdb_env_create";
    MDB_env *env;
    int rc;

    rc = mdb_env_create(&env);
    if (rc != 0)
        return ob__error_lmdb(err, rc, step);

    step = "mdb_env_set_mapsize";
    rc = mdb_env_set_mapsize(env,
                             (size_t)ob__conf_int(conf, "lmdb.map.size.bytes"));
    if (rc == 0) {
        step = "mdb_env_set_maxdbs";
        rc = mdb_env_set_maxdbs(env,
                                (MDB_dbi)ob__conf_int(conf, "lmdb.max.dbs"));
    }
    if (rc == 0) {
        step = "mdb_env_set_maxreaders";
        rc = mdb_env_set_maxreaders(
            env, (unsigned)ob__conf_int(conf, "lmdb.max.readers"));
    }
    if (rc == 0) {
        step = path;
        rc = mdb_env_open(env, path, durability_flags(conf), 0664);
    }
    if (rc != 0) {
        mdb_env_close(env);
        return ob__error_lmdb(err, rc, step);
    }
    *envp = env;
    return 0;
}

/* Makes directory path when it is missing and stats it. */
static int env_directory(const char *path, struct stat *st, ob_error_t *err)
{
    if (mkdir(path, 0775) != 0 && errno != EEXIST)
        return ob__error_sys(err, errno, path);
    if (stat(path, st) != 0)
        return ob__error_sys(err, errno, path);
    if (!S_ISDIR(st->st_mode))
        return ob__error_sys(err, ENOTDIR, path);
    return 0;
}

/* Opens and records the environment; the registry lock is held. */
static int env_open_locked(const char *path, const ob_conf_t *conf,
                           const struct stat *st, MDB_env **envp,
                           ob_error_t *err)
{
    int rc, dead;

    rc = registry_check_twice(st->st_dev, st->st_ino, path, err);
    if (rc == 0)
        rc = env_create(path, conf, envp, err);
    if (rc != 0)
        return rc;

    rc = mdb_reader_check(*envp, &dead);
    if (rc != 0)
        rc = ob__error_lmdb(err, rc, "mdb_reader_check");
    if (rc == 0)
        rc = registry_add(*envp, st, 1,
                          (size_t)ob__conf_int(conf, "lmdb.map.max.bytes"),
                          err);
    if (rc != 0) {
        mdb_env_close(*envp);
        *envp = NULL;
    }
    return rc;
}

int ob_lmdb_env_open(MDB_env **envp, const char *path, const ob_conf_t *conf,
                     ob_error_t *err)
{
    ob_conf_t *defaults = NULL;
    struct stat st;
    int rc;

    if (envp == NULL || path == NULL)
        return ob__error_set(err, OB_EINVAL, "LMDB open: %s is NULL",
                             envp == NULL ? "envp" : "path");
    *envp = NULL;
    if (conf == NULL) {
        rc = ob_conf_new(&defaults, err);
        if (rc != 0)
            return rc;
        conf = defaults;
    }

    rc = atfork_ensure(err);
    if (rc == 0)
        rc = env_directory(path, &st, err);
    if (rc == 0) {
        pthread_mutex_lock(&registry_lock);
        rc = env_open_locked(path, conf, &st, envp, err);
        pthread_mutex_unlock(&registry_lock);
    }
    ob_conf_destroy(defaults);
    return rc;
}

void ob_lmdb_env_close(MDB_env *env)
{
    int inherited = 0;
    env_entry_t *e;

    if (env == NULL)
        return;

    pthread_mutex_lock(&registry_lock);
    e = registry_find(env);
    if (e != NULL) {
        inherited = e->gen != ob__lmdb_fork_generation();
        registry_unlink(e);
        ob__free(e);
    }
    pthread_mutex_unlock(&registry_lock);

    /*
     * A handle inherited through fork() is only forgotten: closing it
     * would close descriptors of the lock file, which drops the record
     * locks this process may hold through a handle of its own.
     */
    if (!inherited)
        mdb_env_close(env);
}

/* The map maximum recorded for env, else the default. */
static int env_map_max(MDB_env *env, size_t *maxp, ob_error_t *err)
{
    env_entry_t *e;
    int found = 0;

    pthread_mutex_lock(&registry_lock);
    e = registry_find(env);
    if (e != NULL) {
        *maxp = e->map_max;
        found = 1;
    }
    pthread_mutex_unlock(&registry_lock);
    return found ? 0 : conf_map_max(NULL, maxp, err);
}

/* The size after cur: doubled, at most max, in whole pages. */
static size_t next_map_size(size_t cur, size_t max, size_t page)
{
    size_t next = cur > max / 2 ? max : cur * 2;

    return next / page * page;
}

int ob_lmdb_env_grow(MDB_env *env, size_t max_bytes, size_t *new_size,
                     ob_error_t *err)
{
    MDB_envinfo info;
    MDB_stat st;
    size_t cur, next;
    int rc;

    if (env == NULL)
        return ob__error_set(err, OB_EINVAL, "LMDB grow: env is NULL");
    if (max_bytes == 0 && (rc = env_map_max(env, &max_bytes, err)) != 0)
        return rc;

    /*
     * Size 0 adopts what another process may have set already. It reads
     * the size from the last committed meta page, so a growth of this
     * process that no commit has recorded yet (the batch that needed it
     * failed again) would be undone: start from the larger of the two.
     */
    rc = mdb_env_info(env, &info);
    cur = info.me_mapsize;
    if (rc == 0)
        rc = mdb_env_set_mapsize(env, 0);
    if (rc == 0)
        rc = mdb_env_info(env, &info);
    if (rc == 0)
        rc = mdb_env_stat(env, &st);
    if (rc != 0)
        return ob__error_lmdb(err, rc, "LMDB grow");
    if (info.me_mapsize > cur)
        cur = info.me_mapsize;

    next = next_map_size(cur, max_bytes, st.ms_psize);
    if (next <= cur)
        return ob__error_full(err, OB_ELMDB, OB_DOMAIN_LMDB, MDB_MAP_FULL,
                              0, "LMDB map is %zu bytes, at its maximum "
                              "of %zu (lmdb.map.max.bytes): raise it or "
                              "purge", cur, max_bytes);

    rc = mdb_env_set_mapsize(env, next);
    if (rc != 0)
        return ob__error_lmdb(err, rc, "LMDB grow: mdb_env_set_mapsize");
    if (new_size != NULL)
        *new_size = next;
    return 0;
}

int ob_lmdb_env_reader_check(MDB_env *env, int *cleared, ob_error_t *err)
{
    int dead = 0, rc;

    if (cleared != NULL)
        *cleared = 0;
    if (env == NULL)
        return ob__error_set(err, OB_EINVAL, "LMDB reader check: env is "
                             "NULL");

    rc = mdb_reader_check(env, &dead);
    if (rc != 0)
        return ob__error_lmdb(err, rc, "mdb_reader_check");
    if (cleared != NULL)
        *cleared = dead;
    return 0;
}
