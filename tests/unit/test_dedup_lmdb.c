/*
 * The LMDB side of the key store, which needs no server: map growth on
 * MDB_MAP_FULL, stale readers of killed processes, LMDB's rules against
 * a second handle and against use after fork(), durability modes,
 * transactions of the wrong kind, and every allocation failure. Also the
 * store's front end: the payload hash and the checks of names.
 */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <lmdb.h>

#include "oncebox/oncebox.h"
#include "tests/support/failalloc.h"

struct fixture {
    char dir[64];
    MDB_env *env;
    ob_dedup_t *d;
};

static void remove_env_dir(const char *dir)
{
    char path[128];

    snprintf(path, sizeof(path), "%s/data.mdb", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/lock.mdb", dir);
    unlink(path);
    rmdir(dir);
}

static void make_dir(char dir[64])
{
    snprintf(dir, 64, "/tmp/ob-dedup-lmdb.XXXXXX");
    assert_non_null(mkdtemp(dir));
}

static ob_conf_t *conf_with(const char *name, const char *value,
                            const char *name2, const char *value2)
{
    ob_conf_t *conf;
    ob_error_t err;

    assert_int_equal(ob_conf_new(&conf, &err), 0);
    if (name != NULL && ob_conf_set(conf, name, value, &err) != 0)
        fail_msg("%s", err.message);
    if (name2 != NULL && ob_conf_set(conf, name2, value2, &err) != 0)
        fail_msg("%s", err.message);
    return conf;
}

static void open_store(struct fixture *f, const ob_conf_t *conf)
{
    ob_error_t err;

    if (ob_lmdb_env_open(&f->env, f->dir, conf, &err) != 0)
        fail_msg("ob_lmdb_env_open: %s", err.message);
    if (ob_dedup_lmdb_new(&f->d, f->env, NULL, &err) != 0)
        fail_msg("ob_dedup_lmdb_new: %s", err.message);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    make_dir(f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    ob_dedup_destroy(f->d);
    ob_lmdb_env_close(f->env);
    remove_env_dir(f->dir);
    free(f);
    return 0;
}

static MDB_txn *begin(MDB_env *env, unsigned flags)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(env, NULL, flags, &txn);

    if (rc != 0)
        fail_msg("mdb_txn_begin: %s", mdb_strerror(rc));
    return txn;
}

static void commit(MDB_txn *txn)
{
    int rc = mdb_txn_commit(txn);

    if (rc != 0)
        fail_msg("mdb_txn_commit: %s", mdb_strerror(rc));
}

static int claim(ob_dedup_t *d, MDB_txn *txn, const char *key, int64_t at,
                 ob_dedup_result_t *res, ob_error_t *err)
{
    ob_dedup_entry_t e = OB_DEDUP_ENTRY_INIT;

    e.key = key;
    e.at_ms = at;
    return ob_dedup_claim(d, txn, "g", &e, res, err);
}

static uint64_t count(struct fixture *f, const char *ns)
{
    MDB_txn *txn = begin(f->env, MDB_RDONLY);
    ob_error_t err;
    uint64_t n;

    if (ob_dedup_count(f->d, txn, ns, &n, &err) != 0)
        fail_msg("count: %s", err.message);
    mdb_txn_abort(txn);
    return n;
}

/*
 * Claims keys [first, first + n) in one transaction; on MDB_MAP_FULL
 * aborts, grows the map and runs the whole batch again, as the inbox
 * does. Returns how many times it grew, or -1 once growing failed
 * (*err tells why; nothing of the batch is committed then).
 */
static int claim_batch_growing(struct fixture *f, int first, int n,
                               ob_error_t *err)
{
    char key[32];
    int grown = 0, i, rc;
    MDB_txn *txn;

    for (;;) {
        txn = begin(f->env, 0);
        for (i = 0, rc = 0; rc == 0 && i < n; i++) {
            snprintf(key, sizeof(key), "key-%06d", first + i);
            rc = claim(f->d, txn, key, 1000 + first + i, NULL, err);
        }
        if (rc == 0) {
            rc = mdb_txn_commit(txn);
            if (rc == 0)
                return grown;
            assert_int_equal(rc, MDB_MAP_FULL);
        } else {
            if (!ob_lmdb_error_is_map_full(err))
                fail_msg("claim: %s", err->message);
            assert_true(ob_error_is_retriable(err));
            mdb_txn_abort(txn);
        }
        if (ob_lmdb_env_grow(f->env, 0, NULL, err) != 0)
            return -1;
        grown++;
    }
}

static void a_full_map_grows_and_the_retried_batch_loses_nothing(
    void **state)
{
    struct fixture *f = *state;
    ob_conf_t *conf = conf_with("lmdb.map.size.bytes", "32768",
                                "lmdb.map.max.bytes", "67108864");
    MDB_envinfo info;
    ob_error_t err;
    char key[32];
    int grown = 0, b, i, g;

    open_store(f, conf);
    for (b = 0; b < 20; b++) {
        g = claim_batch_growing(f, b * 250, 250, &err);
        if (g < 0)
            fail_msg("grow: %s", err.message);
        grown += g;
    }
    assert_true(grown >= 3);
    assert_int_equal(mdb_env_info(f->env, &info), 0);
    assert_true(info.me_mapsize > 32768);

    assert_int_equal(count(f, "g"), 5000);
    MDB_txn *txn = begin(f->env, 0);
    for (i = 0; i < 5000; i++) {
        ob_dedup_result_t res;

        snprintf(key, sizeof(key), "key-%06d", i);
        assert_int_equal(claim(f->d, txn, key, 99, &res, &err), 0);
        assert_int_equal(res.duplicate, 1);
        assert_int_equal(res.claimed_at_ms, 1000 + i);
    }
    mdb_txn_abort(txn);
    ob_conf_destroy(conf);
}

static void growing_stops_at_the_maximum_and_keeps_what_was_committed(
    void **state)
{
    struct fixture *f = *state;
    ob_conf_t *conf = conf_with("lmdb.map.size.bytes", "32768",
                                "lmdb.map.max.bytes", "65536");
    ob_error_t err;
    int b, committed = 0, g = 0;

    open_store(f, conf);
    for (b = 0; b < 100 && g >= 0; b++) {
        g = claim_batch_growing(f, b * 50, 50, &err);
        if (g >= 0)
            committed += 50;
    }
    assert_true(g < 0);
    assert_int_equal(err.code, OB_ELMDB);
    assert_int_equal(err.native, MDB_MAP_FULL);
    assert_true(ob_lmdb_error_is_map_full(&err));
    assert_false(ob_error_is_retriable(&err));
    assert_non_null(strstr(err.message, "lmdb.map.max.bytes"));

    assert_true(committed > 0);
    assert_int_equal(count(f, "g"), (uint64_t)committed);
    ob_conf_destroy(conf);
}

static off_t file_size(const char *dir)
{
    char path[128];
    struct stat st;

    snprintf(path, sizeof(path), "%s/data.mdb", dir);
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

/* Rounds of 100 new keys and a purge of the 100 oldest. */
static void churn(struct fixture *f, int *next, int rounds)
{
    ob_error_t err;
    char key[32];
    int r, i;

    for (r = 0; r < rounds; r++) {
        MDB_txn *txn = begin(f->env, 0);

        for (i = 0; i < 100; i++, (*next)++) {
            snprintf(key, sizeof(key), "churn-%08d", *next);
            if (claim(f->d, txn, key, 1000 + *next, NULL, &err) != 0)
                fail_msg("claim: %s", err.message);
        }
        if (ob_dedup_purge(f->d, txn, "g", 1000 + *next - 100, 0, NULL,
                           &err) != 0)
            fail_msg("purge: %s", err.message);
        commit(txn);
    }
}

/* In a child: opens the environment and holds a read transaction. */
static void reader_child(const char *dir, int ready_fd)
{
    MDB_env *env;
    MDB_txn *txn;

    if (ob_lmdb_env_open(&env, dir, NULL, NULL) != 0 ||
        mdb_txn_begin(env, NULL, MDB_RDONLY, &txn) != 0)
        _exit(3);
    if (write(ready_fd, "r", 1) != 1)
        _exit(4);
    for (;;)
        pause();
}

static pid_t start_reader(const char *dir)
{
    struct pollfd pfd;
    int fds[2];
    char c;
    pid_t pid;

    assert_int_equal(pipe(fds), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        reader_child(dir, fds[1]);
    }
    close(fds[1]);
    pfd.fd = fds[0];
    pfd.events = POLLIN;
    assert_int_equal(poll(&pfd, 1, 60000), 1);
    assert_int_equal(read(fds[0], &c, 1), 1);
    close(fds[0]);
    return pid;
}

static void a_killed_reader_is_cleared_and_the_file_stops_growing(
    void **state)
{
    struct fixture *f = *state;
    ob_dedup_t *second;
    off_t start, pinned, cleared_size;
    int next = 0, cleared = -1, status;
    ob_error_t err;
    pid_t pid;

    open_store(f, NULL);
    churn(f, &next, 5);
    pid = start_reader(f->dir);

    /* The reader's snapshot keeps every page freed after it. */
    start = file_size(f->dir);
    churn(f, &next, 60);
    pinned = file_size(f->dir);
    assert_true(pinned > start + 20 * 4096);

    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));

    /* A new store clears the dead reader's slot when it opens. */
    assert_int_equal(ob_dedup_lmdb_new(&second, f->env, NULL, &err), 0);
    assert_int_equal(ob_lmdb_env_reader_check(f->env, &cleared, &err), 0);
    assert_int_equal(cleared, 0);
    ob_dedup_destroy(second);

    /* The freed pages are reused: as much churn again adds nothing. */
    churn(f, &next, 2);
    cleared_size = file_size(f->dir);
    churn(f, &next, 60);
    assert_true(file_size(f->dir) <= cleared_size);
    assert_int_equal(count(f, "g"), 100);
}

static void the_reader_check_on_demand_reports_what_it_cleared(void **state)
{
    struct fixture *f = *state;
    int cleared = -1, status;
    ob_error_t err;
    pid_t pid;

    open_store(f, NULL);
    pid = start_reader(f->dir);
    assert_int_equal(ob_lmdb_env_reader_check(f->env, &cleared, &err), 0);
    assert_int_equal(cleared, 0);

    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_int_equal(ob_lmdb_env_reader_check(f->env, &cleared, &err), 0);
    assert_int_equal(cleared, 1);
}

static void an_environment_opened_twice_in_one_process_is_refused(
    void **state)
{
    struct fixture *f = *state;
    MDB_env *again = (MDB_env *)&again, *raw;
    ob_dedup_t *d2 = NULL;
    ob_error_t err;

    open_store(f, NULL);
    assert_int_equal(ob_lmdb_env_open(&again, f->dir, NULL, &err),
                     OB_ESTATE);
    assert_null(again);
    assert_non_null(strstr(err.message, "already open in this process"));

    /* A handle opened with LMDB's own call is caught by the store. */
    assert_int_equal(mdb_env_create(&raw), 0);
    assert_int_equal(mdb_env_set_maxdbs(raw, 4), 0);
    assert_int_equal(mdb_env_open(raw, f->dir, 0, 0664), 0);
    assert_int_equal(ob_dedup_lmdb_new(&d2, raw, NULL, &err), OB_ESTATE);
    assert_null(d2);
    mdb_env_close(raw);

    /* Once closed it may be opened again. */
    ob_dedup_destroy(f->d);
    f->d = NULL;
    ob_lmdb_env_close(f->env);
    f->env = NULL;
    open_store(f, NULL);
}

/* What the child of a_forked_child_is_refused checks; its exit code. */
static int forked_child(struct fixture *f, MDB_txn *inherited)
{
    ob_dedup_info_t info;
    ob_dedup_t *d2;
    MDB_env *own;
    MDB_txn *txn;
    ob_error_t err;

    if (ob_dedup_lookup(f->d, inherited, "g", "k", 0, &info, &err) !=
            OB_ESTATE ||
        strstr(err.message, "fork") == NULL)
        return 10;
    if (ob_dedup_lmdb_new(&d2, f->env, NULL, &err) != OB_ESTATE)
        return 11;

    /* Its own handle is allowed, and works. */
    ob_lmdb_env_close(f->env);
    if (ob_lmdb_env_open(&own, f->dir, NULL, &err) != 0 ||
        ob_dedup_lmdb_new(&d2, own, NULL, &err) != 0 ||
        mdb_txn_begin(own, NULL, 0, &txn) != 0 ||
        claim(d2, txn, "from-child", 5, NULL, &err) != 0 ||
        mdb_txn_commit(txn) != 0)
        return 12;
    ob_dedup_destroy(d2);
    ob_lmdb_env_close(own);
    return 0;
}

/*
 * The read transaction the child inherits. The child must not end it
 * (its reader slot is the parent's), so it stays reachable from here
 * for valgrind's leak check at the child's exit.
 */
static MDB_txn *inherited_txn;

static void a_forked_child_is_refused(void **state)
{
    struct fixture *f = *state;
    ob_dedup_info_t info;
    ob_error_t err;
    MDB_txn *txn;
    int status;
    pid_t pid;

    open_store(f, NULL);
    inherited_txn = begin(f->env, MDB_RDONLY);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(forked_child(f, inherited_txn));
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    /* The parent's handle is untouched by all of it. */
    mdb_txn_abort(inherited_txn);
    inherited_txn = NULL;
    txn = begin(f->env, MDB_RDONLY);
    assert_int_equal(
        ob_dedup_lookup(f->d, txn, "g", "from-child", 0, &info, &err), 0);
    assert_int_equal(info.found, 1);
    assert_int_equal(info.claimed_at_ms, 5);
    mdb_txn_abort(txn);
}

static void durability_modes_set_lmdb_flags(void **state)
{
    static const struct {
        const char *mode;
        unsigned flags;
    } modes[] = {
        {"durable", 0},
        {"nometasync", MDB_NOMETASYNC},
        {"nosync", MDB_NOSYNC},
    };
    struct fixture *f = *state;
    unsigned flags;
    ob_error_t err;
    size_t i;

    for (i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        ob_conf_t *conf = conf_with("lmdb.durability", modes[i].mode, NULL,
                                    NULL);

        assert_int_equal(ob_lmdb_env_open(&f->env, f->dir, conf, &err), 0);
        assert_int_equal(mdb_env_get_flags(f->env, &flags), 0);
        assert_int_equal(flags & (MDB_NOSYNC | MDB_NOMETASYNC),
                         modes[i].flags);
        ob_lmdb_env_close(f->env);
        f->env = NULL;
        ob_conf_destroy(conf);
    }
    ob_conf_t *conf = conf_with(NULL, NULL, NULL, NULL);
    assert_int_equal(ob_conf_set(conf, "lmdb.durability", "sometimes", &err),
                     OB_ECONF);
    assert_non_null(strstr(err.message, "durable,nometasync,nosync"));
    ob_conf_destroy(conf);
}

static void a_read_only_transaction_looks_up_but_cannot_claim(void **state)
{
    struct fixture *f = *state;
    ob_dedup_info_t info;
    ob_error_t err;
    MDB_txn *txn;

    open_store(f, NULL);
    txn = begin(f->env, 0);
    assert_int_equal(claim(f->d, txn, "k", 7, NULL, &err), 0);
    commit(txn);

    txn = begin(f->env, MDB_RDONLY);
    assert_int_equal(ob_dedup_lookup(f->d, txn, "g", "k", 0, &info, &err),
                     0);
    assert_int_equal(info.claimed_at_ms, 7);
    assert_int_equal(claim(f->d, txn, "k2", 8, NULL, &err), OB_ELMDB);
    assert_int_equal(err.native, EACCES);
    assert_non_null(strstr(err.message, "read-only"));
    mdb_txn_abort(txn);
}

static void a_transaction_of_another_environment_is_refused(void **state)
{
    struct fixture *f = *state;
    char other_dir[64];
    MDB_env *other;
    ob_error_t err;
    MDB_txn *txn;

    open_store(f, NULL);
    make_dir(other_dir);
    assert_int_equal(ob_lmdb_env_open(&other, other_dir, NULL, &err), 0);
    txn = begin(other, 0);
    assert_int_equal(claim(f->d, txn, "k", 1, NULL, &err), OB_EINVAL);
    assert_non_null(strstr(err.message, "another LMDB environment"));
    mdb_txn_abort(txn);
    ob_lmdb_env_close(other);
    remove_env_dir(other_dir);
}

static void a_nested_transaction_rolls_back_only_its_own_claims(
    void **state)
{
    struct fixture *f = *state;
    MDB_txn *parent, *child;
    ob_dedup_result_t res;
    ob_error_t err;

    open_store(f, NULL);
    parent = begin(f->env, 0);
    assert_int_equal(claim(f->d, parent, "kept", 1, NULL, &err), 0);
    assert_int_equal(mdb_txn_begin(f->env, parent, 0, &child), 0);
    assert_int_equal(claim(f->d, child, "dropped", 2, NULL, &err), 0);
    mdb_txn_abort(child);
    assert_int_equal(mdb_txn_begin(f->env, parent, 0, &child), 0);
    assert_int_equal(claim(f->d, child, "kept", 3, &res, &err), 0);
    assert_int_equal(res.duplicate, 1);
    assert_int_equal(claim(f->d, child, "nested", 4, &res, &err), 0);
    commit(child);
    commit(parent);

    assert_int_equal(count(f, "g"), 2);
    assert_int_equal(count(f, NULL), 2);
}

static void too_few_named_databases_is_a_clear_error(void **state)
{
    struct fixture *f = *state;
    ob_dedup_t *d = NULL;
    ob_error_t err;
    MDB_env *raw;

    assert_int_equal(mdb_env_create(&raw), 0);
    assert_int_equal(mdb_env_set_maxdbs(raw, 1), 0);
    assert_int_equal(mdb_env_open(raw, f->dir, 0, 0664), 0);
    assert_int_equal(ob_dedup_lmdb_new(&d, raw, NULL, &err), OB_ELMDB);
    assert_int_equal(err.native, MDB_DBS_FULL);
    assert_non_null(strstr(err.message, "oncebox.dedup."));
    assert_null(d);
    mdb_env_close(raw);
}

/* The sequence of store calls the failing-allocation loop runs. */
static int store_paths(const char *dir)
{
    ob_dedup_entry_t e = OB_DEDUP_ENTRY_INIT;
    ob_dedup_t *d = NULL, *pg = NULL;
    ob_dedup_result_t res;
    ob_dedup_info_t info;
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    uint64_t n;
    int rc;

    e.key = "k";
    e.at_ms = 10;
    rc = ob_lmdb_env_open(&env, dir, NULL, NULL);
    if (rc == 0)
        rc = ob_dedup_lmdb_new(&d, env, NULL, NULL);
    if (rc == 0)
        rc = mdb_txn_begin(env, NULL, 0, &txn) == 0 ? 0 : OB_ELMDB;
    if (rc == 0)
        rc = ob_dedup_claim(d, txn, "g", &e, NULL, NULL);
    if (rc == 0)
        rc = ob_dedup_claim_batch(d, txn, "g", &e, 1, &res, NULL);
    if (rc == 0)
        rc = ob_dedup_lookup(d, txn, "g", "k", 0, &info, NULL);
    if (rc == 0)
        rc = ob_dedup_count(d, txn, "g", &n, NULL);
    if (rc == 0)
        rc = ob_dedup_purge(d, txn, "g", 11, 0, NULL, NULL);
    if (txn != NULL)
        mdb_txn_abort(txn);
    if (rc == 0)
        rc = ob_lmdb_env_grow(env, 0, NULL, NULL);
    if (rc == 0)
        rc = ob_dedup_pg_new(&pg, NULL, NULL);
    ob_dedup_destroy(pg);
    ob_dedup_destroy(d);
    ob_lmdb_env_close(env);
    return rc;
}

static void every_failed_allocation_is_reported_and_nothing_leaks(
    void **state)
{
    struct fixture *f = *state;
    long n, live;
    int rc;

    for (n = 0;; n++) {
        obt_failalloc_install(n);
        rc = store_paths(f->dir);
        live = obt_failalloc_remove();
        if (live != 0)
            fail_msg("allocation %ld failed: %ld blocks leaked", n, live);
        if (rc == 0)
            break;
        if (rc != OB_ENOMEM)
            fail_msg("allocation %ld failed: %s instead of OB_ENOMEM", n,
                     ob_error_name(rc));
    }
    assert_true(n >= 5);
}

static void the_payload_hash_is_sha256(void **state)
{
    static const unsigned char abc[32] = {
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
        0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
        0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad,
    };
    static const unsigned char empty[4] = {0xe3, 0xb0, 0xc4, 0x42};
    unsigned char out[32];
    ob_error_t err;

    (void)state;
    assert_int_equal(ob_dedup_hash("abc", 3, out, &err), 0);
    assert_memory_equal(out, abc, 32);
    assert_int_equal(ob_dedup_hash(NULL, 0, out, &err), 0);
    assert_memory_equal(out, empty, 4);
    assert_int_equal(ob_dedup_hash(NULL, 1, out, &err), OB_EINVAL);
    assert_int_equal(ob_dedup_hash("abc", 3, NULL, &err), OB_EINVAL);
}

static void names_are_checked_before_any_store(void **state)
{
    char big[300];
    ob_error_t err;

    (void)state;
    memset(big, 'n', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(ob_dedup_check("g", "k", 0, &err), 0);
    assert_int_equal(ob_dedup_check(big, "k", 0, &err), OB_ETOOLONG);
    assert_string_equal(err.message,
                        "namespace is 299 bytes long, the limit is 255");
    assert_int_equal(ob_dedup_check("g", big, 256, &err), OB_ETOOLONG);
    assert_string_equal(err.message,
                        "key is 256 bytes long, the limit is 255");
    assert_int_equal(ob_dedup_check("g", big, 255, &err), 0);
    assert_int_equal(ob_dedup_check("g", "a\0b", 3, &err), OB_ENUL);
    assert_int_equal(ob_dedup_check("\xc0\xaf", "k", 0, &err), OB_EUTF8);
    assert_int_equal(ob_dedup_check("g", NULL, 0, &err), OB_EEMPTY);
    assert_string_equal(err.message, "key is empty");
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(a_full_map_grows_and_the_retried_batch_loses_nothing),
        T(growing_stops_at_the_maximum_and_keeps_what_was_committed),
        T(a_killed_reader_is_cleared_and_the_file_stops_growing),
        T(the_reader_check_on_demand_reports_what_it_cleared),
        T(an_environment_opened_twice_in_one_process_is_refused),
        T(a_forked_child_is_refused),
        T(durability_modes_set_lmdb_flags),
        T(a_read_only_transaction_looks_up_but_cannot_claim),
        T(a_transaction_of_another_environment_is_refused),
        T(a_nested_transaction_rolls_back_only_its_own_claims),
        T(too_few_named_databases_is_a_clear_error),
        T(every_failed_allocation_is_reported_and_nothing_leaks),
        cmocka_unit_test(the_payload_hash_is_sha256),
        cmocka_unit_test(names_are_checked_before_any_store),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
