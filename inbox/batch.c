/*
 * One batch, from claim to commit.
 *
 * The optimistic pass claims every key with one statement and runs the
 * handlers back to back, with no savepoint: the cheap path, taken by
 * every batch whose handlers all succeed. The first handler failure
 * rolls the whole transaction back and the batch runs again in the
 * careful pass, where each message has a savepoint around its claim and
 * its handler, is retried after a backoff, and goes to the dead letters
 * when its attempts are used up. Either way the batch ends with its
 * dead letters delivered to Kafka, recorded, the partitions' next
 * offsets stored and one commit.
 *
 * A lost connection is not a message failure: the batch is rolled back
 * (the server does that on its own), the store reconnects, and the same
 * messages, still in memory, run again; keys the lost transaction had
 * claimed were never committed, keys an earlier commit stored are found
 * and skipped.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "inbox/internal.h"

/* Internal outcomes, next to the negative OB_E* codes. */
enum { BATCH_AGAIN = 1, BATCH_STOPPED = 2, HANDLER_FAILED = 3 };

/* xorshift64: jitter needs no quality, and rand() is the caller's. */
static uint64_t batch_random(ob_consumer_t *c)
{
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    return c->rng;
}

int ob__nap(ob_consumer_t *c, int64_t ms)
{
    int64_t until = ob__now_ms() + ms, left;
    struct timespec ts;

    while (!c->stop && (left = until - ob__now_ms()) > 0) {
        if (left > 50)
            left = 50;
        ts.tv_sec = 0;
        ts.tv_nsec = (long)left * 1000000L;
        nanosleep(&ts, NULL);
    }
    return c->stop != 0;
}

int ob__store_reopen(ob_consumer_t *c, int *fresh, ob_error_t *err)
{
    int64_t delay = 100;
    int rc;

    for (;;) {
        rc = c->store->ops->open(c->store, fresh, err);
        if (rc == 0) {
            if (*fresh) {
                atomic_fetch_add(&c->counters.reconnects, 1);
                ob__log(&c->log, OB_LOG_NOTICE, "consumer", "PostgreSQL "
                        "connection is back");
            }
            return 0;
        }
        if (!ob_error_is_retriable(err))
            return rc;
        ob__log(&c->log, OB_LOG_WARNING, "consumer", "%s; retrying in "
                "%lld ms", err->message, (long long)delay);
        if (ob__nap(c, delay))
            return rc;
        delay = delay * 2 > c->set.reconnect_max_ms ? c->set.reconnect_max_ms
                                                    : delay * 2;
    }
}

/* Settles a duplicate: dropped, or a reused key for the dead letters. */
static void settle_duplicate(ob_consumer_t *c, ob_message_t *m, int differs)
{
    m->state = OB__MSG_DUPLICATE;
    if (!differs)
        return;

    ob__log(&c->log, OB_LOG_WARNING, "consumer", "key \"%s\" was claimed "
            "before with a different payload (%s [%d] offset %lld); %s",
            m->key, m->topic, (int)m->rkm->partition,
            (long long)m->rkm->offset,
            c->set.reuse_skip ? "skipped" : "sent to the dead letters");
    if (c->set.reuse_skip)
        m->state = OB__MSG_SKIPPED;
    else
        ob__message_dead(m, OB_DLQ_KEY_REUSED, "the key was claimed before "
                         "for a different payload");
    m->reused = 1;
}

/* Records why a handler run failed; the message stays pending. */
static void note_failure(ob_consumer_t *c, ob_message_t *m, int hrc,
                         const ob_error_t *herr, const ob_error_t *cerr)
{
    const char *why = herr->code != 0 ? herr->message : NULL;
    char text[OB_ERROR_MESSAGE_MAX];

    if (why == NULL && cerr != NULL)
        why = cerr->message;
    if (why == NULL) {
        snprintf(text, sizeof(text), "the handler returned %d", hrc);
        why = text;
    }
    if (hrc == OB_HANDLER_REJECT) {
        ob__message_dead(m, OB_DLQ_HANDLER_REJECTED, "%s", why);
        m->failures = c->set.attempts;
    } else {
        ob__message_dead(m, OB_DLQ_HANDLER_FAILED, "%s", why);
        if (++m->failures < c->set.attempts)
            atomic_fetch_add(&c->counters.retries, 1);
    }
    m->state = OB__MSG_PENDING;
    if (hrc == OB_HANDLER_REJECT)
        ob__log(&c->log, OB_LOG_WARNING, "consumer", "handler rejected %s "
                "[%d] offset %lld: %s", m->topic, (int)m->rkm->partition,
                (long long)m->rkm->offset, why);
    else
        ob__log(&c->log, OB_LOG_WARNING, "consumer", "handler failed for "
                "%s [%d] offset %lld (run %d of %d): %s", m->topic,
                (int)m->rkm->partition, (long long)m->rkm->offset,
                m->attempt, c->set.attempts, why);
}

/* A deadlock or serialization failure: the transaction's, not the
 * message's (see ob_txn_pg_error()). */
static int handler_transient(const ob_error_t *herr)
{
    return herr->code != 0 &&
           ((herr->flags & OB_ERROR_RETRIABLE) ||
            strcmp(herr->sqlstate, "40001") == 0 ||
            strcmp(herr->sqlstate, "40P01") == 0);
}

/* Turns a transient handler failure into a retriable batch error. */
static int batch_transient(ob_consumer_t *c, ob_message_t *m,
                           const ob_error_t *herr, ob_error_t *err)
{
    m->transient++;
    ob__log(&c->log, OB_LOG_NOTICE, "consumer", "handler of %s [%d] offset "
            "%lld met a transient failure; the batch runs again: %s",
            m->topic, (int)m->rkm->partition, (long long)m->rkm->offset,
            herr->message);
    *err = *herr;
    err->code = OB_EPG;
    err->flags |= OB_ERROR_RETRIABLE;
    return OB_EPG;
}

/*
 * Runs the handler once. 0: applied; HANDLER_FAILED: the message failed
 * (noted); otherwise an error of the batch (connection lost, a transient
 * failure, or the handler broke the transaction).
 */
static int run_handler(ob_consumer_t *c, ob_message_t *m, ob_error_t *err)
{
    ob_txn_t txn = {c->store};
    ob_error_t herr, cerr;
    int hrc, crc;

    memset(&herr, 0, sizeof(herr));
    m->attempt = m->failures + 1;
    hrc = c->handler(c->handler_opaque, m, &txn, &herr);
    crc = c->store->ops->check(c->store, &cerr);
    if (crc != 0 && crc != OB_ENOTXN) {
        *err = cerr;
        return crc;
    }
    if (hrc == 0 && crc == 0) {
        m->state = OB__MSG_APPLIED;
        return 0;
    }
    if (hrc < 0 && handler_transient(&herr) &&
        m->transient < OB_CONSUMER_TRANSIENT_MAX)
        return batch_transient(c, m, &herr, err);
    note_failure(c, m, hrc == 0 ? OB_EPG : hrc, &herr,
                 crc != 0 ? &cerr : NULL);
    return HANDLER_FAILED;
}

/*
 * The batch handler, once for every message that claimed its key. Its
 * failure belongs to no message in particular: the careful pass finds
 * out which, one message at a time.
 */
static int run_batch_handler(ob_consumer_t *c, ob_message_t **news,
                             size_t n, ob_error_t *err)
{
    ob_txn_t txn = {c->store};
    ob_error_t herr, cerr;
    size_t i;
    int hrc, crc;

    memset(&herr, 0, sizeof(herr));
    for (i = 0; i < n; i++)
        news[i]->attempt = news[i]->failures + 1;
    hrc = c->batch_handler(c->batch_opaque,
                           (const ob_message_t *const *)news, n, &txn,
                           &herr);
    crc = c->store->ops->check(c->store, &cerr);
    if (crc != 0 && crc != OB_ENOTXN) {
        *err = cerr;
        return crc;
    }
    if (hrc == 0 && crc == 0) {
        for (i = 0; i < n; i++)
            news[i]->state = OB__MSG_APPLIED;
        return 0;
    }
    if (hrc < 0 && handler_transient(&herr) &&
        news[0]->transient < OB_CONSUMER_TRANSIENT_MAX)
        return batch_transient(c, news[0], &herr, err);
    if (herr.code == 0 && crc == 0)
        snprintf(herr.message, sizeof(herr.message), "it returned %d", hrc);
    ob__log(&c->log, OB_LOG_NOTICE, "consumer", "batch handler failed for "
            "%zu messages (%s); running them one by one", n,
            herr.code != 0 || crc == 0 ? herr.message : cerr.message);
    return HANDLER_FAILED;
}

/* Settles what the claims found; the new ones run or are collected. */
static int optimistic_handle(ob_consumer_t *c, const ob__inbox_claim_t *res,
                             ob_message_t **news, ob_error_t *err)
{
    size_t i, k = 0, n = 0;
    int rc = 0;

    for (i = 0; rc == 0 && i < c->batch_len; i++) {
        ob_message_t *m = &c->batch[i];

        if (m->state != OB__MSG_PENDING)
            continue;
        if (res[k++].duplicate)
            settle_duplicate(c, m, res[k - 1].hash_differs);
        else if (c->batch_handler != NULL)
            news[n++] = m;
        else
            rc = run_handler(c, m, err);
    }
    if (rc == 0 && n > 0)
        rc = run_batch_handler(c, news, n, err);
    return rc;
}

static int pass_optimistic(ob_consumer_t *c, ob_error_t *err)
{
    const ob__inbox_store_ops_t *ops = c->store->ops;
    ob_message_t **news;
    ob__inbox_item_t *items;
    ob__inbox_claim_t *res;
    size_t i, n = 0;
    int rc = 0;

    items = ob__calloc(c->batch_len, sizeof(*items));
    res = ob__calloc(c->batch_len, sizeof(*res));
    news = ob__calloc(c->batch_len, sizeof(*news));
    if (items == NULL || res == NULL || news == NULL) {
        rc = ob__error_nomem(err, "batch");
        goto free_arrays;
    }
    for (i = 0; i < c->batch_len; i++) {
        if (c->batch[i].state == OB__MSG_PENDING)
            ob__message_item(&c->batch[i], &items[n++]);
    }
    rc = ops->claim_batch(c->store, c->group, items, n, res, err);
    if (rc == 0)
        rc = optimistic_handle(c, res, news, err);
    if (rc == HANDLER_FAILED) {
        c->careful = 1;
        rc = BATCH_AGAIN;
    }
free_arrays:
    ob__free(items);
    ob__free(res);
    ob__free(news);
    return rc;
}

/* One message of the careful pass, under its own savepoint. */
static int careful_one(ob_consumer_t *c, ob_message_t *m, ob_error_t *err)
{
    const ob__inbox_store_ops_t *ops = c->store->ops;
    ob__inbox_item_t item;
    ob__inbox_claim_t res;
    int rc;

    ob__message_item(m, &item);
    rc = ops->savepoint(c->store, err);
    while (rc == 0) {
        if (m->failures > 0 &&
            ob__nap(c, ob__backoff_ms(&c->set, m->failures, batch_random(c))))
            return BATCH_STOPPED;
        rc = ops->claim(c->store, c->group, &item, &res, err);
        if (rc != 0)
            break;
        if (res.duplicate) {
            settle_duplicate(c, m, res.hash_differs);
            return ops->release(c->store, err);
        }
        rc = run_handler(c, m, err);
        if (rc != HANDLER_FAILED)
            break;
        rc = ops->rollback_to(c->store, err);
        if (rc == 0 && m->failures >= c->set.attempts) {
            m->state = OB__MSG_DEAD;
            break;
        }
    }
    return rc != 0 ? rc : ops->release(c->store, err);
}

static int pass_careful(ob_consumer_t *c, ob_error_t *err)
{
    size_t i;
    int rc;

    for (i = 0; i < c->batch_len; i++) {
        ob_message_t *m = &c->batch[i];

        if (m->state != OB__MSG_PENDING)
            continue;
        if (m->failures >= c->set.attempts) {
            m->state = OB__MSG_DEAD;
            continue;
        }
        rc = careful_one(c, m, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* "<code>: <sentence>" for the reason column. */
static char *dead_reason(const ob_message_t *m)
{
    const char *detail = m->detail != NULL ? m->detail : "";
    size_t len = strlen(m->reason) + strlen(detail) + 3;
    char *s = ob__malloc(len);

    if (s != NULL)
        snprintf(s, len, "%s: %s", m->reason, detail);
    return s;
}

/* Handler runs behind a dead letter: 0 for malformed or reused ones. */
static int dead_attempts(const ob_message_t *m)
{
    if (strcmp(m->reason, OB_DLQ_HANDLER_FAILED) == 0 ||
        strcmp(m->reason, OB_DLQ_HANDLER_REJECTED) == 0)
        return m->attempt;
    return 0;
}

static int record_dead(ob_consumer_t *c, size_t n, ob_error_t *err)
{
    ob__inbox_dead_t *dead = ob__calloc(n, sizeof(*dead));
    ob__inbox_item_t *items = ob__calloc(n, sizeof(*items));
    size_t i, k = 0;
    int rc = 0;

    if (dead == NULL || items == NULL) {
        rc = ob__error_nomem(err, "dead letters");
        goto free_arrays;
    }
    for (i = 0; i < c->batch_len && rc == 0; i++) {
        ob_message_t *m = &c->batch[i];

        if (m->state != OB__MSG_DEAD)
            continue;
        ob__message_item(m, &items[k]);
        dead[k].item = &items[k];
        dead[k].attempts = dead_attempts(m);
        dead[k].reason = dead_reason(m);
        if (dead[k++].reason == NULL)
            rc = ob__error_nomem(err, "dead letters");
    }
    if (rc == 0)
        rc = c->store->ops->dead_letters(c->store, c->group, dead, k, err);
    for (i = 0; i < k; i++)
        ob__free((char *)dead[i].reason);
free_arrays:
    ob__free(dead);
    ob__free(items);
    return rc;
}

/* The dead letters of the batch: delivered to Kafka, then recorded. */
static int finish_dead(ob_consumer_t *c, ob_error_t *err)
{
    size_t i, n = 0;
    int rc;

    for (i = 0; i < c->batch_len; i++) {
        ob_message_t *m = &c->batch[i];
        rd_kafka_headers_t *hdrs = NULL;

        if (m->state != OB__MSG_DEAD)
            continue;
        n++;
        if (m->headers_json != NULL)
            continue;
        (void)rd_kafka_message_headers(m->rkm, &hdrs);
        m->headers_json = ob__headers_json(hdrs);
        if (m->headers_json == NULL)
            return ob__error_nomem(err, "dead letter headers");
    }
    if (n == 0)
        return 0;

    rc = ob__dlq_send(c, err);
    return rc != 0 ? rc : record_dead(c, n, err);
}

/* The next offset of every partition in the batch, into c->tps. */
static size_t batch_offsets(ob_consumer_t *c, ob__inbox_offset_t **offsp,
                            ob_error_t *err)
{
    ob__inbox_offset_t *offs;
    size_t i, n = 0;

    for (i = 0; i < c->tp_count; i++)
        c->tps[i].batch_next = -1;
    for (i = 0; i < c->batch_len; i++) {
        ob__tp_t *tp = ob__tp_find(c, c->batch[i].topic,
                                   c->batch[i].rkm->partition);

        if (tp != NULL && c->batch[i].rkm->offset + 1 > tp->batch_next)
            tp->batch_next = c->batch[i].rkm->offset + 1;
    }

    offs = ob__calloc(c->tp_count + 1, sizeof(*offs));
    if (offs == NULL) {
        *offsp = NULL;
        return (size_t)ob__error_nomem(err, "offsets");
    }
    for (i = 0; i < c->tp_count; i++) {
        if (c->tps[i].batch_next < 0)
            continue;
        offs[n].topic = c->tps[i].topic;
        offs[n].partition = c->tps[i].partition;
        offs[n++].next_offset = c->tps[i].batch_next;
    }
    *offsp = offs;
    return n;
}

static void count_batch(ob_consumer_t *c)
{
    ob__counters_t *k = &c->counters;
    size_t i;

    for (i = 0; i < c->batch_len; i++) {
        const ob_message_t *m = &c->batch[i];

        if (m->reused)
            atomic_fetch_add(&k->key_reused, 1);
        if (m->state == OB__MSG_APPLIED)
            atomic_fetch_add(&k->applied, 1);
        else if (m->state == OB__MSG_DUPLICATE)
            atomic_fetch_add(&k->duplicates, 1);
        else if (m->state == OB__MSG_SKIPPED)
            atomic_fetch_add(&k->skipped, 1);
        else if (m->state == OB__MSG_DEAD)
            atomic_fetch_add(&k->dead_letters, 1);
    }
    atomic_fetch_add(&k->messages, c->batch_len);
    atomic_fetch_add(&k->batches, 1);
}

static int batch_commit(ob_consumer_t *c, ob_error_t *err)
{
    ob__inbox_offset_t *offs = NULL;
    size_t i, n;
    int rc;

    rc = finish_dead(c, err);
    if (rc != 0)
        return rc;
    n = batch_offsets(c, &offs, err);
    if (offs == NULL)
        return OB_ENOMEM;

    rc = c->store->ops->commit(c->store, c->group, offs, n, err);
    if (rc == 0) {
        for (i = 0; i < c->tp_count; i++) {
            if (c->tps[i].batch_next > c->tps[i].stored)
                c->tps[i].stored = c->tps[i].batch_next;
        }
        count_batch(c);
        c->kafka_dirty = 1;
        ob__kafka_commit(c, 0);
    }
    ob__free(offs);
    return rc;
}

static int batch_once(ob_consumer_t *c, ob_error_t *err)
{
    int rc = c->store->ops->begin(c->store, err);

    if (rc == 0)
        rc = c->careful ? pass_careful(c, err) : pass_optimistic(c, err);
    if (rc == 0)
        rc = batch_commit(c, err);
    return rc;
}

/* Back to the state after collection, for another run of the batch. */
static void batch_reset(ob_consumer_t *c)
{
    size_t i;

    for (i = 0; i < c->batch_len; i++) {
        ob_message_t *m = &c->batch[i];

        if (m->malformed)
            continue;
        m->state = OB__MSG_PENDING;
        m->reused = 0;
    }
}

/*
 * Before a batch runs again after a retriable failure: a new connection
 * when the old one is gone (with its own backoff), else a pause that
 * doubles each time (a dead letter the broker did not take, a deadlock).
 */
static int batch_retry_wait(ob_consumer_t *c, int64_t *delay,
                            ob_error_t *err)
{
    ob_error_t saved = *err;
    int fresh = 0, rc;

    rc = ob__store_reopen(c, &fresh, err);
    if (rc != 0 || fresh)
        return rc;
    *err = saved;
    if (ob__nap(c, *delay))
        return saved.code;
    *delay = *delay * 2 > c->set.reconnect_max_ms ? c->set.reconnect_max_ms
                                                  : *delay * 2;
    return 0;
}

/*
 * A stop that comes while the batch waits to run again ends it: it was
 * rolled back, so its messages are handled again by whoever reads the
 * partitions next, and the stop is as clean as any other.
 */
static int batch_abandon(ob_consumer_t *c)
{
    ob__log(&c->log, OB_LOG_NOTICE, "consumer", "stopping: the batch of "
            "%zu, rolled back, is handled again on the next run",
            c->batch_len);
    return 0;
}

int ob__batch_process(ob_consumer_t *c, ob_error_t *err)
{
    int64_t delay = 100;
    int rc;

    c->careful = 0;
    for (;;) {
        rc = batch_once(c, err);
        if (rc == 0)
            return 0;
        c->store->ops->abort(c->store);
        batch_reset(c);
        if (rc == BATCH_AGAIN)
            continue;
        if (rc == BATCH_STOPPED)
            return batch_abandon(c);
        if (rc > 0 || !ob_error_is_retriable(err))
            return rc > 0 ? ob__error_set(err, OB_EINTERNAL, "batch: "
                                          "outcome %d", rc)
                          : rc;
        ob__log(&c->log, OB_LOG_WARNING, "consumer", "batch of %zu "
                "rolled back, to be run again: %s", c->batch_len,
                err->message);
        rc = batch_retry_wait(c, &delay, err);
        if (rc != 0 && c->stop)
            return batch_abandon(c);
        if (rc != 0)
            return rc;
    }
}

void ob__batch_free(ob_consumer_t *c)
{
    size_t i;

    for (i = 0; i < c->batch_len; i++)
        ob__message_clear(&c->batch[i]);
    c->batch_len = 0;
    c->careful = 0;
}
