/*
 * The relay's producer. Why it is configured as it is:
 *
 * - enable.idempotence and acks=all: retries inside librdkafka neither
 *   duplicate nor reorder messages of a partition.
 * - message.timeout.ms = 0 (never): librdkafka documents that messages
 *   timing out in its queue leave gaps in a partition's stream (a later
 *   message delivered, an earlier one failed), and that the gap-less
 *   guarantee does not cover timeouts. A gap would put an aggregate's
 *   later event before an earlier one that is then retried. So single
 *   messages never time out; the relay bounds the whole batch instead
 *   and, when that time is up, purges every message still outstanding
 *   at once and replaces the producer, so nothing of that stream can be
 *   delivered after a failed part of it (what was in flight may still
 *   land, in order, and is published again: a duplicate, not a gap).
 * - enable.gapless.guarantee: any other failure that could leave a gap
 *   (a permanent error on one request while later ones are in flight)
 *   stops the producer with a fatal error instead; the batch's other
 *   messages then fail too, and the producer is replaced.
 * - The gap-less guarantee fails what is still queued, but librdkafka
 *   builds a partition's next request before the previous one is
 *   answered, and sends it even after that one failed: only a broker
 *   that checks the idempotent producer's sequence numbers refuses it.
 *   Apache Kafka does; librdkafka's mock cluster does not, and delivers
 *   it (the relay's fault tests show the later event landing first). So
 *   the relay keeps each partition's part of a batch in one request:
 *   linger.ms is long, and rd_kafka_flush() after the last row of a
 *   batch sends everything at once (flush ends the linger); and
 *   batch.num.messages is at least relay.batch.size. A part larger than
 *   one request may hold (batch.size, message.max.bytes) is split, and
 *   then its order rests on the broker's checks.
 * - max.in.flight.requests.per.connection = 1 by default: the relay
 *   waits for the whole batch anyway, so more requests in flight buy
 *   little, and fewer are of unknown fate when a batch times out.
 *   (With the mock broker, several in flight also cost some 40 ms per
 *   batch in delayed TCP acknowledgements.)
 * - Rows of an aggregate go to one topic per batch (relay_batch.c), and
 *   the key fixes the partition, so "earlier in the same stream" is
 *   "earlier in the same partition".
 * - Delivery reports, logs and errors are queued for rd_kafka_poll() on
 *   the relay's thread (log.queue), so every callback runs there.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "oncebox/wire.h"
#include "outbox/relay_internal.h"

/* The relay's own defaults; a "kafka." key overrides them. */
static const char *const producer_defaults[][2] = {
    {"max.in.flight.requests.per.connection", "1"},
    {"partitioner", "murmur2_random"},
    {"linger.ms", "1000"},
    {"client.id", "oncebox-relay"},
};

/* Set last, whatever the configuration says: the guarantees need them. */
static const char *const producer_forced[][2] = {
    {"enable.idempotence", "true"},
    {"acks", "all"},
    {"enable.gapless.guarantee", "true"},
    {"message.timeout.ms", "0"},
    {"log.queue", "true"},
};

/* Values these properties must have if the user sets them at all. */
static const char *const producer_required[][3] = {
    {"enable.idempotence", "true", ""},
    {"enable.gapless.guarantee", "true", ""},
    {"acks", "all", "-1"},
    {"request.required.acks", "all", "-1"},
    {"queuing.strategy", "fifo", ""},
};

#define DELIVERY_TIMEOUT_DEFAULT_MS 30000

/* librdkafka's default batch.num.messages, raised to relay.batch.size. */
#define BATCH_MESSAGES_MIN 10000

/* After a fatal error, how long in-flight requests get to report. */
#define FATAL_GRACE_MS 2000

/* How long a purge may take to hand back every purged message. */
#define PURGE_WAIT_MS 10000

static int secret_property(const char *name)
{
    return strstr(name, "password") != NULL ||
           strstr(name, "secret") != NULL || strstr(name, ".pem") != NULL ||
           strcmp(name, "sasl.oauthbearer.config") == 0 ||
           strcmp(name, "ssl_key") == 0;
}

static int conf_set(rd_kafka_conf_t *kc, const char *name, const char *value,
                    ob_error_t *err)
{
    char errstr[512];

    if (rd_kafka_conf_set(kc, name, value, errstr, sizeof(errstr)) ==
        RD_KAFKA_CONF_OK)
        return 0;
    return ob__error_set(err, OB_ECONF, "kafka.%s: %s", name, errstr);
}

/* One "kafka." key: secrets noted, timeouts taken, contradictions refused. */
static int user_property(ob_relay_t *r, rd_kafka_conf_t *kc, const char *name,
                         const char *value, ob_error_t *err)
{
    size_t i;

    if (secret_property(name) && ob__relay_secret(r, value) != 0)
        return ob__error_nomem(err, "relay secrets");
    if (strcmp(name, "message.timeout.ms") == 0 ||
        strcmp(name, "delivery.timeout.ms") == 0) {
        char *end;
        long v = strtol(value, &end, 10);

        if (*value == '\0' || *end != '\0' || v < 0 || v > 2147483647L)
            return ob__error_set(err, OB_ECONF, "kafka.%s: \"%s\" is not "
                                 "a number of milliseconds", name, value);
        r->set.delivery_timeout_ms = (int)v;
        return 0;
    }
    for (i = 0; i < OB__ARRAY_LEN(producer_required); i++) {
        if (strcmp(name, producer_required[i][0]) == 0 &&
            strcmp(value, producer_required[i][1]) != 0 &&
            strcmp(value, producer_required[i][2]) != 0)
            return ob__error_set(err, OB_ECONF, "kafka.%s must be %s for "
                                 "the relay's guarantees", name,
                                 producer_required[i][1]);
    }
    return conf_set(kc, name, value, err);
}

struct user_ctx {
    ob_relay_t *r;
    rd_kafka_conf_t *kc;
    ob_error_t *err;
};

static int each_user_property(void *opaque, const char *name,
                              const char *value)
{
    struct user_ctx *c = opaque;

    return user_property(c->r, c->kc, name, value, c->err);
}

static void log_cb(const rd_kafka_t *rk, int level, const char *fac,
                   const char *buf)
{
    ob_relay_t *r = rd_kafka_opaque(rk);

    if (level < OB_LOG_ERR)
        level = OB_LOG_ERR;
    /* The relay sets this experimental property on purpose (see above);
     * librdkafka's warning about it would otherwise come every start. */
    if (strcmp(fac, "CONFWARN") == 0 && strstr(buf, "gapless") != NULL)
        level = OB_LOG_DEBUG;
    ob__relay_log(r, level, "kafka", "%s: %s", fac, buf);
}

static void error_cb(rd_kafka_t *rk, int code, const char *reason,
                     void *opaque)
{
    ob_relay_t *r = opaque;
    char fatal[512];

    if (code != RD_KAFKA_RESP_ERR__FATAL) {
        ob__relay_log(r, OB_LOG_WARNING, "kafka", "%s: %s",
                      rd_kafka_err2name(code), reason);
        return;
    }
    code = rd_kafka_fatal_error(rk, fatal, sizeof(fatal));
    r->kafka.fatal = 1;
    ob__relay_log(r, OB_LOG_ERR, "kafka", "the producer failed (%s: %s); "
                  "the batch's undelivered rows are retried with a new "
                  "producer", rd_kafka_err2name(code), fatal);
}

static void fail_row(ob__relay_row_t *row, int code, int local,
                     const char *why)
{
    char msg[512];

    row->state = OB__ROW_FAILED;
    row->err = code;
    row->local = local;
    row->err_class = ob__relay_err_class(code, local);
    if (row->error != NULL)
        return;
    snprintf(msg, sizeof(msg), "Kafka %s: %s%s", rd_kafka_err2name(code),
             rd_kafka_err2str(code), why != NULL ? why : "");
    row->error = ob__strdup(msg);
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    ob_relay_t *r = opaque;
    ob__relay_row_t *row = m->_private;
    const char *why = NULL;

    (void)rk;
    if (row == NULL)
        return;
    if (r->batch.outstanding > 0)
        r->batch.outstanding--;
    if (row->state != OB__ROW_INFLIGHT)
        return;

    row->partition = m->partition;
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
        row->state = OB__ROW_DELIVERED;
    else if (m->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT)
        why = " (the batch timed out while it was in flight; it may have "
              "been delivered)";
    else if (m->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE)
        why = " (not sent before the batch timed out or the producer "
              "failed)";
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR)
        fail_row(row, m->err, 0, why);
}

static int producer_conf(ob_relay_t *r, const ob_conf_t *conf,
                         rd_kafka_conf_t *kc, ob_error_t *err)
{
    struct user_ctx ctx = {r, kc, err};
    size_t i, n = 0;
    char batch[16];
    int rc = 0;

    for (i = 0; i < OB__ARRAY_LEN(producer_defaults) && rc == 0; i++)
        rc = conf_set(kc, producer_defaults[i][0], producer_defaults[i][1],
                      err);
    snprintf(batch, sizeof(batch), "%d",
             r->set.batch_size > BATCH_MESSAGES_MIN ? r->set.batch_size
                                                    : BATCH_MESSAGES_MIN);
    if (rc == 0)
        rc = conf_set(kc, "batch.num.messages", batch, err);
    if (rc == 0)
        rc = ob__conf_each_kafka(conf, each_user_property, &ctx);
    for (i = 0; i < OB__ARRAY_LEN(producer_forced) && rc == 0; i++)
        rc = conf_set(kc, producer_forced[i][0], producer_forced[i][1], err);
    if (rc != 0)
        return rc;

    /* With no destination, n becomes the value's size, NUL included. */
    if (rd_kafka_conf_get(kc, "bootstrap.servers", NULL, &n) !=
            RD_KAFKA_CONF_OK || n <= 1)
        return ob__error_set(err, OB_ECONF, "kafka.bootstrap.servers is "
                             "not set: the relay needs the brokers' "
                             "addresses");

    rd_kafka_conf_set_opaque(kc, r);
    rd_kafka_conf_set_dr_msg_cb(kc, dr_cb);
    rd_kafka_conf_set_log_cb(kc, log_cb);
    rd_kafka_conf_set_error_cb(kc, error_cb);
    return 0;
}

static void topics_free(ob__relay_kafka_t *k)
{
    size_t i;

    for (i = 0; i < k->topic_count; i++) {
        rd_kafka_topic_destroy(k->topics[i].rkt);
        ob__free(k->topics[i].name);
    }
    k->topic_count = 0;
}

static int producer_start(ob_relay_t *r, ob_error_t *err)
{
    rd_kafka_conf_t *copy = rd_kafka_conf_dup(r->kafka.conf);
    char errstr[512];

    r->kafka.rk = rd_kafka_new(RD_KAFKA_PRODUCER, copy, errstr,
                               sizeof(errstr));
    if (r->kafka.rk == NULL) {
        rd_kafka_conf_destroy(copy);
        return ob__error_full(err, OB_EKAFKA, OB_DOMAIN_KAFKA, 0, 0,
                              "starting the Kafka producer: %s", errstr);
    }
    rd_kafka_set_log_queue(r->kafka.rk, NULL);
    r->kafka.fatal = 0;
    return 0;
}

int ob__relay_kafka_init(ob_relay_t *r, const ob_conf_t *conf,
                         ob_error_t *err)
{
    int rc;

    r->set.delivery_timeout_ms = DELIVERY_TIMEOUT_DEFAULT_MS;
    r->kafka.conf = rd_kafka_conf_new();
    if (r->kafka.conf == NULL)
        return ob__error_nomem(err, "Kafka configuration");
    rc = producer_conf(r, conf, r->kafka.conf, err);
    if (rc == 0)
        rc = producer_start(r, err);
    return rc;
}

static void producer_stop(ob_relay_t *r)
{
    topics_free(&r->kafka);
    if (r->kafka.rk != NULL)
        rd_kafka_destroy(r->kafka.rk);
    r->kafka.rk = NULL;
}

void ob__relay_kafka_free(ob_relay_t *r)
{
    producer_stop(r);
    ob__free(r->kafka.topics);
    r->kafka.topics = NULL;
    r->kafka.topic_cap = 0;
    if (r->kafka.conf != NULL)
        rd_kafka_conf_destroy(r->kafka.conf);
    r->kafka.conf = NULL;
}

int ob__relay_kafka_ready(ob_relay_t *r, ob_error_t *err)
{
    if (r->kafka.rk != NULL && !r->kafka.fatal)
        return 0;

    producer_stop(r);
    r->stats.producer_resets++;
    return producer_start(r, err);
}

void ob__relay_kafka_poll(ob_relay_t *r)
{
    if (r->kafka.rk != NULL)
        rd_kafka_poll(r->kafka.rk, 0);
}

/* The cached handle of a topic; NULL when out of memory. */
static rd_kafka_topic_t *topic_get(ob__relay_kafka_t *k, const char *name)
{
    ob__relay_topic_t *grown;
    rd_kafka_topic_t *rkt;
    size_t i;

    for (i = 0; i < k->topic_count; i++) {
        if (strcmp(k->topics[i].name, name) == 0)
            return k->topics[i].rkt;
    }
    if (k->topic_count == k->topic_cap) {
        size_t cap = k->topic_cap ? k->topic_cap * 2 : 8;

        grown = ob__realloc(k->topics, cap * sizeof(*grown));
        if (grown == NULL)
            return NULL;
        k->topics = grown;
        k->topic_cap = cap;
    }
    rkt = rd_kafka_topic_new(k->rk, name, NULL);
    k->topics[k->topic_count].name = ob__strdup(name);
    if (rkt == NULL || k->topics[k->topic_count].name == NULL) {
        if (rkt != NULL)
            rd_kafka_topic_destroy(rkt);
        ob__free(k->topics[k->topic_count].name);
        return NULL;
    }
    k->topics[k->topic_count++].rkt = rkt;
    return rkt;
}

static void header_add(rd_kafka_headers_t *h, const char *name,
                       const char *value, size_t len)
{
    rd_kafka_header_add(h, name, -1, value, (ssize_t)len);
}

/* The row's own headers, a JSON object of strings (a CHECK ensures it). */
static int row_headers(rd_kafka_headers_t *h, const char *text)
{
    json_t *obj, *v;
    const char *name;

    obj = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
    if (obj == NULL || !json_is_object(obj)) {
        json_decref(obj);
        return -1;
    }
    json_object_foreach(obj, name, v) {
        if (!json_is_string(v)) {
            json_decref(obj);
            return -1;
        }
        header_add(h, name, json_string_value(v), json_string_length(v));
    }
    json_decref(obj);
    return 0;
}

static rd_kafka_headers_t *headers_new(const ob__relay_row_t *row)
{
    rd_kafka_headers_t *h = rd_kafka_headers_new(16);

    header_add(h, OB_HEADER_IDEMPOTENCY_KEY, row->key, strlen(row->key));
    header_add(h, OB_HEADER_EVENT_ID, row->id, strlen(row->id));
    header_add(h, OB_HEADER_ID, row->id, strlen(row->id));
    header_add(h, OB_HEADER_EVENT_TYPE, row->event_type,
               strlen(row->event_type));
    header_add(h, OB_HEADER_AGGREGATE_TYPE, row->aggregate_type,
               strlen(row->aggregate_type));
    header_add(h, OB_HEADER_AGGREGATE_ID, row->aggregate_id,
               row->aggregate_id_len);
    header_add(h, OB_HEADER_CONTENT_TYPE, OB_CONTENT_TYPE_JSON,
               strlen(OB_CONTENT_TYPE_JSON));
    if (row->headers != NULL && row_headers(h, row->headers) != 0) {
        rd_kafka_headers_destroy(h);
        return NULL;
    }
    return h;
}

/*
 * Hands one row to librdkafka, which keeps pointers to the key and the
 * payload (they live in the claim's result until the batch ends) and
 * takes the headers. Returns its error code.
 */
static int produce_row(ob_relay_t *r, ob__relay_row_t *row)
{
    rd_kafka_topic_t *rkt = topic_get(&r->kafka, row->topic);
    rd_kafka_headers_t *h;
    rd_kafka_resp_err_t rc;

    if (rkt == NULL)
        return RD_KAFKA_RESP_ERR__CRIT_SYS_RESOURCE;
    h = headers_new(row);
    if (h == NULL)
        return RD_KAFKA_RESP_ERR__INVALID_ARG;

    rc = rd_kafka_producev(r->kafka.rk, RD_KAFKA_V_RKT(rkt),
                           RD_KAFKA_V_KEY((void *)row->aggregate_id,
                                          row->aggregate_id_len),
                           RD_KAFKA_V_VALUE((void *)row->payload,
                                            row->payload_len),
                           RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(row),
                           RD_KAFKA_V_END);
    if (rc != RD_KAFKA_RESP_ERR_NO_ERROR)
        rd_kafka_headers_destroy(h);
    return rc;
}

/* After a row failed before it was sent, its aggregate's later rows of
 * this batch wait for the next one. */
static void hold_later(ob__relay_batch_t *b, size_t i)
{
    const ob__relay_row_t *failed = &b->rows[i];
    size_t j;

    for (j = i + 1; j < b->count; j++) {
        ob__relay_row_t *row = &b->rows[j];

        if (row->state == OB__ROW_INFLIGHT &&
            row->aggregate_id_len == failed->aggregate_id_len &&
            memcmp(row->aggregate_id, failed->aggregate_id,
                   failed->aggregate_id_len) == 0)
            row->state = OB__ROW_HELD;
    }
}

/*
 * produce() with a full queue serves reports until there is room, for
 * as long as a batch may take.
 */
static int produce_waiting(ob_relay_t *r, ob__relay_row_t *row)
{
    int64_t until = ob__now_ms() + r->set.delivery_timeout_ms;
    int rc;

    while ((rc = produce_row(r, row)) == RD_KAFKA_RESP_ERR__QUEUE_FULL &&
           !r->kafka.fatal &&
           (r->set.delivery_timeout_ms == 0 || ob__now_ms() < until))
        rd_kafka_poll(r->kafka.rk, 50);
    return rc;
}

void ob__relay_kafka_produce(ob_relay_t *r)
{
    ob__relay_batch_t *b = &r->batch;
    size_t i;
    int rc;

    for (i = 0; i < b->count; i++) {
        ob__relay_row_t *row = &b->rows[i];

        if (row->state != OB__ROW_INFLIGHT)
            continue;
        if (r->kafka.fatal) {
            row->state = OB__ROW_HELD;
            continue;
        }
        rc = row->error != NULL ? row->err : produce_waiting(r, row);
        if (rc == RD_KAFKA_RESP_ERR_NO_ERROR) {
            b->outstanding++;
            b->produced++;
        } else if (rc == RD_KAFKA_RESP_ERR__FATAL) {
            r->kafka.fatal = 1;
            row->state = OB__ROW_HELD;
        } else {
            fail_row(row, rc, 1, rc == RD_KAFKA_RESP_ERR__INVALID_ARG
                                     ? " (the row's headers are not a "
                                       "JSON object of strings)"
                                     : NULL);
            hold_later(b, i);
        }
    }
}

/* Purges what is left and waits until librdkafka hands it all back. */
static void purge(ob_relay_t *r, const char *why)
{
    int64_t until = ob__now_ms() + PURGE_WAIT_MS;
    size_t i;

    ob__relay_log(r, OB_LOG_WARNING, "relay", "%zu rows still undelivered "
                  "%s: purging them, they will be retried",
                  r->batch.outstanding, why);
    rd_kafka_purge(r->kafka.rk,
                   RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    r->kafka.fatal = 1;
    while (r->batch.outstanding > 0 && ob__now_ms() < until)
        rd_kafka_poll(r->kafka.rk, 100);
    if (r->batch.outstanding == 0)
        return;

    /* Destroying the producer ends every callback; what is still
     * outstanding then has an unknown fate and is retried. */
    producer_stop(r);
    for (i = 0; i < r->batch.count; i++) {
        if (r->batch.rows[i].state == OB__ROW_INFLIGHT)
            fail_row(&r->batch.rows[i], RD_KAFKA_RESP_ERR__PURGE_INFLIGHT,
                     0, " (no report after the purge)");
    }
    r->batch.outstanding = 0;
}

/*
 * Flush sends the whole batch at once, then serves the reports. A batch
 * ends when every row has its report; after the batch timeout, or soon
 * after the producer failed, what is left is purged.
 */
void ob__relay_kafka_wait(ob_relay_t *r)
{
    int64_t timeout = r->set.delivery_timeout_ms, start = ob__now_ms();
    int64_t fatal_at = 0, now, left;
    char why[64];

    while (r->batch.outstanding > 0) {
        now = ob__now_ms();
        left = timeout > 0 ? start + timeout - now : 100;
        if (r->kafka.fatal && fatal_at == 0)
            fatal_at = now;
        if (left <= 0 || (fatal_at > 0 && now - fatal_at >= FATAL_GRACE_MS)) {
            snprintf(why, sizeof(why), left <= 0 ? "after %lld ms"
                     : "after the producer failed", (long long)timeout);
            purge(r, why);
            return;
        }
        rd_kafka_flush(r->kafka.rk, left > 100 ? 100 : (int)left);
    }
    rd_kafka_poll(r->kafka.rk, 0);
}
