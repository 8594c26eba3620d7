/*
 * Batch claims on PostgreSQL: one INSERT of every distinct key from
 * arrays, and only when some keys were already there one SELECT of
 * their stored hashes, so a batch costs one or two round trips however
 * large it is.
 *
 * Equal keys within a batch are resolved here, before anything is sent:
 * only the first entry of each key goes to the server, and the later
 * ones are duplicates of it, as separate claims in order would report.
 * That keeps the statement free of in-statement conflicts, whose
 * outcome would depend on the order rows are inserted in.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "dedup/pgstore_internal.h"

enum { SLOT_PENDING, SLOT_NEW, SLOT_STORED };

/* Per entry; the first entry of each key also holds what is stored. */
typedef struct slot {
    size_t first; /* the first entry with the same key */
    int state;
    int has_hash;
    unsigned char hash[OB_DEDUP_HASH_LEN];
    int64_t at_ms;
} slot_t;

typedef struct batch {
    const ob__dedup_claim_t *c;
    size_t n;
    size_t *order; /* entries sorted by key, then by position */
    slot_t *slot;
    size_t pending; /* first entries still without an answer */
} batch_t;

/* The same attempts as a single claim, for keys purged meanwhile. */
#define BATCH_ATTEMPTS 3

enum { ARR_KEY, ARR_HASH, ARR_AT, ARR_TOPIC, ARR_PARTITION, ARR_OFFSET,
       ARR_COUNT };

static int key_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    int r = memcmp(a, b, alen < blen ? alen : blen);

    if (r != 0)
        return r;
    return (alen > blen) - (alen < blen);
}

static int order_cmp(const void *x, const void *y, void *arg)
{
    const ob__dedup_claim_t *c = arg;
    size_t i = *(const size_t *)x, j = *(const size_t *)y;
    int r = key_cmp(c[i].name.key, c[i].name.key_len, c[j].name.key,
                    c[j].name.key_len);

    return r != 0 ? r : (i > j) - (i < j);
}

/* Sorts the entries and links each to the first entry of its key. */
static void batch_group(batch_t *b)
{
    const ob__dedup_claim_t *c = b->c;
    size_t k, i, prev;

    for (k = 0; k < b->n; k++)
        b->order[k] = k;
    qsort_r(b->order, b->n, sizeof(*b->order), order_cmp, (void *)c);

    for (k = 0; k < b->n; k++) {
        i = b->order[k];
        prev = k > 0 ? b->order[k - 1] : i;
        if (k > 0 && key_cmp(c[i].name.key, c[i].name.key_len,
                             c[prev].name.key, c[prev].name.key_len) == 0) {
            b->slot[i].first = b->slot[prev].first;
        } else {
            b->slot[i].first = i;
            b->pending++;
        }
    }
}

/* The first entry whose key is key[0..len), or b->n when none is. */
static size_t batch_find(const batch_t *b, const char *key, size_t len)
{
    size_t lo = 0, hi = b->n, mid, i;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;
        i = b->order[mid];
        if (key_cmp(b->c[i].name.key, b->c[i].name.key_len, key, len) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == b->n)
        return b->n;
    i = b->order[lo];
    if (key_cmp(b->c[i].name.key, b->c[i].name.key_len, key, len) != 0)
        return b->n;
    return b->slot[i].first;
}

static int is_pending_first(const batch_t *b, size_t i)
{
    return b->slot[i].first == i && b->slot[i].state == SLOT_PENDING;
}

static void elem_text(ob__buf_t *a, const char *s, size_t len)
{
    if (s == NULL)
        ob__buf_puts(a, "NULL");
    else
        ob__buf_array_elem(a, s, len);
}

static void elem_number(ob__buf_t *a, long long v)
{
    char num[24];

    if (v < 0) {
        ob__buf_puts(a, "NULL");
        return;
    }
    snprintf(num, sizeof(num), "%lld", v);
    ob__buf_puts(a, num);
}

/* Appends entry c as one more element of every array. */
static void arrays_add(ob__buf_t a[ARR_COUNT], const ob__dedup_claim_t *c,
                       int comma)
{
    char hex[2 * OB_DEDUP_HASH_LEN + 1];
    int k;

    for (k = 0; comma && k < ARR_COUNT; k++)
        ob__buf_putc(&a[k], ',');
    elem_text(&a[ARR_KEY], c->name.key, c->name.key_len);
    if (c->hash != NULL)
        ob__pgstore_hex(c->hash, OB_DEDUP_HASH_LEN, hex);
    elem_text(&a[ARR_HASH], c->hash != NULL ? hex : NULL,
              2 * OB_DEDUP_HASH_LEN);
    elem_number(&a[ARR_AT], c->at_ms);
    elem_text(&a[ARR_TOPIC], c->topic, c->topic_len);
    elem_number(&a[ARR_PARTITION], c->partition);
    elem_number(&a[ARR_OFFSET], c->offset);
}

/* The arrays of the pending first entries, as array literals. */
static int arrays_build(const batch_t *b, ob__buf_t a[ARR_COUNT],
                        ob_error_t *err)
{
    size_t i, count = 0;
    int k, failed = 0;

    for (k = 0; k < ARR_COUNT; k++) {
        ob__buf_reset(&a[k]);
        ob__buf_putc(&a[k], '{');
    }
    for (i = 0; i < b->n; i++) {
        if (is_pending_first(b, i))
            arrays_add(a, &b->c[i], count++ > 0);
    }
    for (k = 0; k < ARR_COUNT; k++) {
        ob__buf_putc(&a[k], '}');
        failed |= a[k].failed;
    }
    return failed ? ob__error_nomem(err, "dedup claim batch") : 0;
}

/* The INSERT of every pending first entry; marks the new ones. */
static int batch_insert(ob__pgstore_t *s, PGconn *conn, batch_t *b,
                        ob__buf_t a[ARR_COUNT], ob_error_t *err)
{
    const char *params[1 + ARR_COUNT];
    PGresult *res;
    size_t f;
    int rc, k, row;

    rc = arrays_build(b, a, err);
    if (rc != 0)
        return rc;
    params[0] = b->c[0].name.ns;
    for (k = 0; k < ARR_COUNT; k++)
        params[1 + k] = a[k].data;
    rc = ob__pg_exec_params(conn, s->sql[SQL_CLAIM_MANY], 1 + ARR_COUNT,
                            params, "dedup: claiming keys", &res, err);
    if (rc != 0)
        return rc;

    for (row = 0; row < PQntuples(res); row++) {
        f = batch_find(b, PQgetvalue(res, row, 0),
                       (size_t)PQgetlength(res, row, 0));
        if (f == b->n || !is_pending_first(b, f))
            continue;
        b->slot[f].state = SLOT_NEW;
        b->pending--;
    }
    PQclear(res);
    return 0;
}

/* Stores one SELECT row into the slot of its first entry. */
static int read_row(batch_t *b, const PGresult *res, int row,
                    ob_error_t *err)
{
    size_t f = batch_find(b, PQgetvalue(res, row, 0),
                          (size_t)PQgetlength(res, row, 0));
    slot_t *sl;

    if (f == b->n || !is_pending_first(b, f))
        return 0;
    sl = &b->slot[f];
    if (!PQgetisnull(res, row, 1)) {
        if (!ob__pgstore_hash_decode(PQgetvalue(res, row, 1), sl->hash))
            return ob__error_set(err, OB_ESCHEMA, "dedup: a stored payload "
                                 "hash is not %d bytes", OB_DEDUP_HASH_LEN);
        sl->has_hash = 1;
    }
    sl->at_ms = strtoll(PQgetvalue(res, row, 2), NULL, 10);
    sl->state = SLOT_STORED;
    b->pending--;
    return 0;
}

/* Reads what is stored for the keys the INSERT found taken. */
static int batch_read(ob__pgstore_t *s, PGconn *conn, batch_t *b,
                      ob__buf_t a[ARR_COUNT], ob_error_t *err)
{
    const char *params[2];
    PGresult *res;
    int rc, row;

    rc = arrays_build(b, a, err);
    if (rc != 0)
        return rc;
    params[0] = b->c[0].name.ns;
    params[1] = a[ARR_KEY].data;
    rc = ob__pg_exec_params(conn, s->sql[SQL_READ_MANY], 2, params,
                            "dedup: reading claimed keys", &res, err);
    for (row = 0; rc == 0 && row < PQntuples(res); row++)
        rc = read_row(b, res, row, err);
    PQclear(res);
    return rc;
}

/* Every entry's result from the slots of the first entries. */
static void batch_results(const batch_t *b, ob_dedup_result_t *res)
{
    const slot_t *first;
    size_t i;

    for (i = 0; i < b->n; i++) {
        first = &b->slot[b->slot[i].first];
        if (b->slot[i].first == i && first->state == SLOT_NEW) {
            res[i].claimed_at_ms = b->c[i].at_ms;
            continue;
        }
        res[i].duplicate = 1;
        res[i].claimed_at_ms = first->at_ms;
        res[i].hash_differs = ob__dedup_hash_differs(
            b->c[i].hash, first->has_hash, first->hash);
    }
}

/*
 * A key new in this batch is, for the later entries with that key, a
 * key stored with the first entry's hash and time.
 */
static void batch_new_as_stored(batch_t *b)
{
    slot_t *sl;
    size_t i;

    for (i = 0; i < b->n; i++) {
        sl = &b->slot[i];
        if (sl->first != i || sl->state != SLOT_NEW)
            continue;
        sl->has_hash = b->c[i].hash != NULL;
        if (sl->has_hash)
            memcpy(sl->hash, b->c[i].hash, OB_DEDUP_HASH_LEN);
        sl->at_ms = b->c[i].at_ms;
    }
}

static int batch_run(ob__pgstore_t *s, PGconn *conn, batch_t *b,
                     ob_error_t *err)
{
    ob__buf_t a[ARR_COUNT] = {OB__BUF_INIT, OB__BUF_INIT, OB__BUF_INIT,
                              OB__BUF_INIT, OB__BUF_INIT, OB__BUF_INIT};
    int attempt, rc = 0, k;

    batch_group(b);
    for (attempt = 0; rc == 0 && b->pending > 0; attempt++) {
        if (attempt == BATCH_ATTEMPTS) {
            rc = ob__error_full(err, OB_EPG, OB_DOMAIN_POSTGRES, 0,
                                OB_ERROR_RETRIABLE, "dedup: keys were "
                                "removed while they were being claimed, "
                                "%d times", BATCH_ATTEMPTS);
            break;
        }
        rc = batch_insert(s, conn, b, a, err);
        if (rc == 0 && b->pending > 0)
            rc = batch_read(s, conn, b, a, err);
    }
    for (k = 0; k < ARR_COUNT; k++)
        ob__buf_free(&a[k]);
    return rc;
}

int ob__pgstore_claim_batch(ob_dedup_t *d, void *txn,
                            const ob__dedup_claim_t *c, size_t n,
                            ob_dedup_result_t *res, ob_error_t *err)
{
    batch_t b = {c, n, NULL, NULL, 0};
    int rc = ob__pgstore_check_conn(txn, 1, err);

    if (rc != 0)
        return rc;

    b.order = ob__calloc(n, sizeof(*b.order));
    b.slot = ob__calloc(n, sizeof(*b.slot));
    if (b.order == NULL || b.slot == NULL) {
        rc = ob__error_nomem(err, "dedup claim batch");
        goto free_batch;
    }
    rc = batch_run((ob__pgstore_t *)d, txn, &b, err);
    if (rc == 0) {
        batch_new_as_stored(&b);
        batch_results(&b, res);
    }

free_batch:
    ob__free(b.slot);
    ob__free(b.order);
    return rc;
}
