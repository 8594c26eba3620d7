/*
 * The polling relay: the object, its configuration, the loop that runs
 * batch after batch, and the stop request a signal handler may send.
 *
 * One thread runs everything: the PostgreSQL session, the producer's
 * delivery reports and logs (librdkafka queues both for rd_kafka_poll()),
 * the callbacks. Only ob_relay_stop() comes from elsewhere; it sets a
 * flag and writes a byte to a pipe that every wait also polls.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "outbox/relay_internal.h"

/* Reconnects start this fast and slow down to this. */
#define RECONNECT_MIN_MS 100
#define RECONNECT_MAX_MS 5000

void ob__relay_log(ob_relay_t *r, int level, const char *facility,
                   const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    if (r->log.fn == NULL || level > r->log.max_level)
        return;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ob__relay_mask(msg, sizeof(msg), r->secrets, r->secret_count);
    ob__log(&r->log, level, facility, "%s", msg);
}

int ob__relay_stopping(const ob_relay_t *r)
{
    return r->stop != 0;
}

/* xorshift64*: jitter only, so any seed will do. */
uint32_t ob__relay_random(ob_relay_t *r)
{
    r->rng ^= r->rng >> 12;
    r->rng ^= r->rng << 25;
    r->rng ^= r->rng >> 27;
    return (uint32_t)((r->rng * 2685821657736338717ULL) >> 32);
}

int ob__relay_wait_fd(ob_relay_t *r, int fd, int events, int timeout_ms)
{
    struct pollfd fds[2];
    char drain[64];
    int n;

    fds[0].fd = r->wake[0];
    fds[0].events = POLLIN;
    fds[1].fd = fd;
    fds[1].events = (short)events;
    if (ob__relay_stopping(r))
        return 0;

    n = poll(fds, fd >= 0 ? 2 : 1, timeout_ms);
    if (n > 0 && fds[0].revents != 0) {
        while (read(r->wake[0], drain, sizeof(drain)) > 0)
            ;
    }
    return n > 0 && fd >= 0 && fds[1].revents != 0;
}

void ob_relay_stop(ob_relay_t *relay)
{
    int saved = errno;
    ssize_t n;

    if (relay == NULL)
        return;
    relay->stop = 1;

    /* A full pipe already wakes the loop; nothing else can go wrong. */
    n = write(relay->wake[1], "s", 1);
    (void)n;
    errno = saved;
}

/* Adds a value that must never appear in a message (NULL/"" ignored). */
static int secret_add(ob_relay_t *r, const char *value)
{
    char **grown;

    if (value == NULL || value[0] == '\0')
        return 0;
    grown = ob__realloc(r->secrets, (r->secret_count + 1) * sizeof(*grown));
    if (grown == NULL)
        return OB_ENOMEM;
    r->secrets = grown;
    r->secrets[r->secret_count] = ob__strdup(value);
    if (r->secrets[r->secret_count] == NULL)
        return OB_ENOMEM;
    r->secret_count++;
    return 0;
}

int ob__relay_secret(ob_relay_t *r, const char *value)
{
    return secret_add(r, value);
}

static int settings_read(ob__relay_settings_t *s, const ob_conf_t *conf,
                         ob_error_t *err)
{
    s->schema = ob__strdup(ob_conf_get(conf, "schema"));
    s->topic_template = ob__strdup(ob_conf_get(conf, "relay.topic.template"));
    if (s->schema == NULL || s->topic_template == NULL)
        return ob__error_nomem(err, "relay settings");

    s->lanes = (int)ob__conf_int(conf, "relay.lanes");
    s->batch_size = (int)ob__conf_int(conf, "relay.batch.size");
    s->batch_bytes = ob__conf_int(conf, "relay.batch.bytes");
    s->poll_ms = (int)ob__conf_int(conf, "relay.poll.interval.ms");
    s->lanes_interval_ms = (int)ob__conf_int(conf, "relay.lanes.interval.ms");
    s->retry_max = (int)ob__conf_int(conf, "relay.retry.max");
    s->backoff_ms = (int)ob__conf_int(conf, "relay.retry.backoff.ms");
    s->backoff_max_ms = (int)ob__conf_int(conf, "relay.retry.backoff.max.ms");
    s->park_blocks =
        strcmp(ob_conf_get(conf, "relay.park.blocks.aggregate"), "true") == 0;
    s->delete_published =
        strcmp(ob_conf_get(conf, "relay.published"), "delete") == 0;
    if (s->backoff_max_ms < s->backoff_ms)
        s->backoff_max_ms = s->backoff_ms;
    return ob__relay_template_check(s->topic_template, err);
}

static int wake_pipe(ob_relay_t *r, ob_error_t *err)
{
    int i;

    if (pipe(r->wake) != 0)
        return ob__error_sys(err, errno, "relay: pipe");
    for (i = 0; i < 2; i++) {
        if (fcntl(r->wake[i], F_SETFL, O_NONBLOCK) != 0 ||
            fcntl(r->wake[i], F_SETFD, FD_CLOEXEC) != 0)
            return ob__error_sys(err, errno, "relay: fcntl");
    }
    return 0;
}

static int relay_init(ob_relay_t *r, const char *conninfo,
                      const ob_conf_t *conf, ob_error_t *err)
{
    int rc;

    r->log = *ob__conf_log(conf);
    r->stats.size = sizeof(r->stats);
    r->rng = (uint64_t)ob__wall_ms() * 6364136223846793005ULL ^
             (uint64_t)getpid() << 17 ^ 0x9e3779b97f4a7c15ULL;
    rc = settings_read(&r->set, conf, err);
    if (rc == 0)
        rc = wake_pipe(r, err);
    if (rc == 0)
        rc = ob__relay_pg_init(r, conninfo, err);
    if (rc == 0)
        rc = ob__relay_kafka_init(r, conf, err);
    r->stats.lanes = r->set.lanes;
    return rc;
}

int ob_relay_new(ob_relay_t **relayp, const char *conninfo,
                 const ob_conf_t *conf, ob_error_t *err)
{
    ob_conf_t *defaults = NULL;
    ob_relay_t *r;
    int rc;

    if (relayp == NULL)
        return ob__error_set(err, OB_EINVAL, "relay: relayp is NULL");
    *relayp = NULL;
    if (conf == NULL) {
        rc = ob_conf_new(&defaults, err);
        if (rc != 0)
            return rc;
        conf = defaults;
    }

    r = ob__calloc(1, sizeof(*r));
    if (r == NULL) {
        rc = ob__error_nomem(err, "relay");
        goto free_defaults;
    }
    r->wake[0] = r->wake[1] = -1;
    rc = relay_init(r, conninfo, conf, err);
    if (rc != 0) {
        if (err != NULL)
            ob__relay_mask(err->message, sizeof(err->message), r->secrets,
                           r->secret_count);
        ob_relay_destroy(r);
        goto free_defaults;
    }
    *relayp = r;
free_defaults:
    ob_conf_destroy(defaults);
    return rc;
}

void ob_relay_destroy(ob_relay_t *relay)
{
    size_t i;

    if (relay == NULL)
        return;

    ob__relay_batch_free(&relay->batch);
    ob__relay_kafka_free(relay);
    ob__relay_pg_free(relay);
    for (i = 0; i < 2; i++) {
        if (relay->wake[i] >= 0)
            close(relay->wake[i]);
    }
    for (i = 0; i < relay->secret_count; i++)
        ob__free(relay->secrets[i]);
    ob__free(relay->secrets);
    ob__free(relay->set.schema);
    ob__free(relay->set.topic_template);
    ob__free(relay);
}

void ob_relay_set_stats_cb(ob_relay_t *relay, ob_relay_stats_fn fn,
                           void *opaque)
{
    if (relay == NULL)
        return;
    relay->stats_fn = fn;
    relay->stats_opaque = opaque;
}

void ob_relay_stats(const ob_relay_t *relay, ob_relay_stats_t *stats)
{
    size_t n;

    if (relay == NULL || stats == NULL || stats->size < sizeof(size_t))
        return;
    n = stats->size < sizeof(*stats) ? stats->size : sizeof(*stats);
    memcpy((char *)stats + sizeof(size_t),
           (const char *)&relay->stats + sizeof(size_t), n - sizeof(size_t));
}

void ob__relay_stats_changed(ob_relay_t *r)
{
    r->stats.lanes_held = r->pg.held_count;
    if (r->stats_fn != NULL)
        r->stats_fn(r->stats_opaque, &r->stats);
}

static double now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void batch_clear(ob__relay_batch_t *b)
{
    size_t i;

    for (i = 0; i < b->count; i++)
        ob__free(b->rows[i].error);
    PQclear(b->res);
    b->res = NULL;
    b->count = b->outstanding = b->produced = 0;
    b->gap = 0;
}

void ob__relay_batch_free(ob__relay_batch_t *b)
{
    batch_clear(b);
    ob__free(b->rows);
    b->rows = NULL;
    b->cap = 0;
}

static const ob__relay_row_t *first_failure(const ob__relay_batch_t *b)
{
    size_t i;

    for (i = 0; i < b->count; i++) {
        if (b->rows[i].state == OB__ROW_FAILED)
            return &b->rows[i];
    }
    return NULL;
}

static void batch_account(ob_relay_t *r, const ob__relay_outcome_t *out,
                          double ms)
{
    const ob__relay_row_t *f = first_failure(&r->batch);
    ob_relay_stats_t *s = &r->stats;

    s->published += out->delivered;
    s->retried += out->retried;
    s->parked += out->parked;
    s->batches++;
    s->batch_rows = out->delivered + out->retried + out->parked;
    s->batch_ms = ms;
    s->batch_ms_total += ms;
    if (ms > s->batch_ms_max)
        s->batch_ms_max = ms;

    ob__relay_log(r, OB_LOG_DEBUG, "relay",
                  "batch: %zu published, %zu to retry, %zu parked, %zu "
                  "held back, %.1f ms", out->delivered, out->retried,
                  out->parked, out->held, ms);
    if (out->retried > 0 && f != NULL)
        ob__relay_log(r, OB_LOG_WARNING, "relay",
                      "%zu of %zu rows were not delivered and will be "
                      "retried; the first: %s", out->retried,
                      (size_t)s->batch_rows, f->error ? f->error : "?");
    if (r->batch.gap)
        ob__relay_log(r, OB_LOG_ERR, "relay",
                      "the producer delivered a row after an earlier row "
                      "of its aggregate failed: that aggregate's order is "
                      "broken in Kafka");
    ob__relay_stats_changed(r);
}

/*
 * One batch: claim, produce, wait for every report, record and commit.
 * *outp says what it did (all zero: nothing was claimable).
 */
static int batch_run(ob_relay_t *r, ob__relay_outcome_t *outp,
                     ob_error_t *err)
{
    double t0 = now_us(), t1 = t0, t2 = t0;
    int rc, planned;

    memset(outp, 0, sizeof(*outp));
    rc = ob__relay_pg_claim(r, err);
    if (rc != 0 || r->batch.count == 0)
        goto done;

    planned = ob__relay_plan(r->batch.rows, r->batch.count);
    if (planned < 0) {
        rc = ob__error_nomem(err, "relay batch");
        goto done;
    }
    t1 = t2 = now_us();
    if (planned > 0) {
        ob__relay_kafka_produce(r);
        ob__relay_kafka_wait(r);
        r->batch.gap = ob__relay_settle(r->batch.rows, r->batch.count);
        t2 = now_us();
    }
    rc = ob__relay_pg_finish(r, outp, err);
    if (rc == 0 && planned > 0) {
        r->stats.batch_claim_ms = (t1 - t0) / 1000.0;
        r->stats.batch_kafka_ms = (t2 - t1) / 1000.0;
        r->stats.batch_commit_ms = (now_us() - t2) / 1000.0;
        batch_account(r, outp, (now_us() - t0) / 1000.0);
    }
done:
    if (rc != 0 || r->batch.count == 0)
        ob__relay_pg_abort(r);
    batch_clear(&r->batch);
    return rc;
}

/*
 * A batch that delivered nothing because Kafka is out: the rows wait
 * their backoff, and the relay waits too before it claims the next
 * rows into the same outage.
 */
static void outage_pause(ob_relay_t *r, const ob__relay_outcome_t *out)
{
    if (out->delivered > 0 || out->outages == 0) {
        r->outage_ms = 0;
        return;
    }
    r->outage_ms = r->outage_ms == 0 ? r->set.backoff_ms : r->outage_ms * 2;
    if (r->outage_ms > r->set.backoff_max_ms)
        r->outage_ms = r->set.backoff_max_ms;
    ob__relay_log(r, OB_LOG_NOTICE, "relay",
                  "Kafka seems unavailable; next batch in %lld ms",
                  (long long)r->outage_ms);
    ob__relay_wait_fd(r, -1, 0, (int)r->outage_ms);
}

static int until_lanes_check(const ob_relay_t *r)
{
    int64_t ms = r->pg.next_lanes_ms - ob__now_ms();

    return ms < 0 ? 0 : (int)ms;
}

/*
 * Nothing was claimable: wait for a NOTIFY, the poll interval, or the
 * first row waiting for a retry to be due. Returns 1 when drain is done.
 */
static int idle(ob_relay_t *r, int drain, ob_error_t *err)
{
    int64_t wait = r->set.poll_ms, due = -1;
    int rc;

    rc = ob__relay_pg_waiting(r, &due, err);
    if (rc != 0)
        return rc;
    if (drain && due < 0)
        return 1;
    if (due >= 0 && due < wait)
        wait = due;
    if (until_lanes_check(r) < wait)
        wait = until_lanes_check(r);
    rc = ob__relay_pg_wait(r, (int)wait, err);
    return rc < 0 ? rc : 0;
}

static int session_open(ob_relay_t *r, ob_error_t *err)
{
    int rc = ob__relay_pg_open(r, err);

    if (rc != 0)
        return rc;
    r->connected_once = 1;
    r->pg.backoff_ms = 0;
    return ob__relay_pg_lanes(r, 1, err);
}

/* One turn of the loop. Returns 0, 1 when drain is done, or an error. */
static int loop_step(ob_relay_t *r, int drain, ob_error_t *err)
{
    ob__relay_outcome_t out;
    int rc;

    if (!ob__relay_pg_connected(r))
        return session_open(r, err);

    rc = ob__relay_kafka_ready(r, err);
    if (rc == 0)
        rc = ob__relay_pg_lanes(r, 0, err);
    if (rc == 0)
        rc = batch_run(r, &out, err);
    if (rc != 0)
        return rc;
    if (out.delivered + out.retried + out.parked == 0)
        return idle(r, drain, err);
    outage_pause(r, &out);
    return 0;
}

/*
 * Whether the loop goes on after err: a lost session is opened again
 * after a backoff, once the relay has connected in this run; a failure
 * to connect at all, and every error retrying cannot mend, end it.
 */
/*
 * Besides what every oncebox call treats as retriable, a relay rides
 * out what a running server may say for a while: too many connections
 * or other resources short (class 53), a cancelled statement (57014),
 * a lock not available (55P03), an operating system error (class 58).
 */
static int relay_retriable(const ob_error_t *err)
{
    const char *st = err->sqlstate;

    if (ob_error_is_retriable(err))
        return 1;
    if (err->domain != OB_DOMAIN_POSTGRES || strlen(st) != 5)
        return 0;
    return strncmp(st, "53", 2) == 0 || strncmp(st, "58", 2) == 0 ||
           strcmp(st, "57014") == 0 || strcmp(st, "55P03") == 0;
}

static int recover(ob_relay_t *r, const ob_error_t *err)
{
    int64_t wait;

    if (!relay_retriable(err) || !r->connected_once)
        return 0;

    if (ob__relay_pg_connected(r)) {
        ob__relay_pg_close(r);
        r->stats.reconnects++;
        ob__relay_stats_changed(r);
    }
    r->pg.backoff_ms = r->pg.backoff_ms == 0 ? RECONNECT_MIN_MS
                                             : r->pg.backoff_ms * 2;
    if (r->pg.backoff_ms > RECONNECT_MAX_MS)
        r->pg.backoff_ms = RECONNECT_MAX_MS;
    wait = ob__relay_backoff_ms(1, (int)r->pg.backoff_ms,
                                (int)r->pg.backoff_ms, ob__relay_random(r));
    ob__relay_log(r, OB_LOG_WARNING, "relay", "%s; connecting again in "
                  "%lld ms", err->message, (long long)wait);
    ob__relay_wait_fd(r, -1, 0, (int)wait);
    return 1;
}

static int relay_loop(ob_relay_t *r, int drain, ob_error_t *err)
{
    ob_error_t e;
    int rc = 0;

    if (r == NULL)
        return ob__error_set(err, OB_EINVAL, "relay: relay is NULL");
    if (r->running)
        return ob__error_set(err, OB_ESTATE, "relay: already running");

    r->running = 1;
    r->connected_once = 0;
    while (!ob__relay_stopping(r)) {
        rc = loop_step(r, drain, &e);
        if (rc == 1 || (rc < 0 && !recover(r, &e)))
            break;
    }
    ob__relay_pg_close(r);
    ob__relay_kafka_poll(r);
    r->running = 0;

    /* A stop that cut a connect or a backoff short is no failure. */
    if (rc < 0 && ob__relay_stopping(r) && relay_retriable(&e))
        rc = 0;
    r->stop = 0;
    if (rc < 0) {
        ob__relay_mask(e.message, sizeof(e.message), r->secrets,
                       r->secret_count);
        if (err != NULL)
            *err = e;
        return rc;
    }
    ob__relay_stats_changed(r);
    return 0;
}

int ob_relay_run(ob_relay_t *relay, ob_error_t *err)
{
    return relay_loop(relay, 0, err);
}

int ob_relay_drain(ob_relay_t *relay, ob_error_t *err)
{
    return relay_loop(relay, 1, err);
}
