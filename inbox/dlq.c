/*
 * The dead-letter producer. It is made on the first dead letter, so a
 * consumer that never needs one never connects a producer. Every dead
 * letter of a batch is produced, then the batch waits for all delivery
 * reports: it commits only when the broker has every one of them, so a
 * message leaves the partition only once it is safe elsewhere.
 */
#include <stdio.h>
#include <string.h>

#include "inbox/internal.h"

/* Wait for delivery reports at most this long past message.timeout.ms. */
#define DLQ_FLUSH_SLACK_MS 5000
#define DLQ_TIMEOUT_DEFAULT "30000"

/* Consumer properties a producer would only warn about. */
static const char *const consumer_only[] = {
    "group.id", "group.instance.id", "partition.assignment.strategy",
    "session.timeout.ms", "heartbeat.interval.ms", "max.poll.interval.ms",
    "auto.offset.reset", "enable.auto.commit", "enable.auto.offset.store",
    "auto.commit.interval.ms", "isolation.level", "enable.partition.eof",
    "check.crcs", "allow.auto.create.topics",
};

static int consumer_property(const char *name)
{
    size_t i;

    if (strncmp(name, "fetch.", 6) == 0 || strncmp(name, "queued.", 7) == 0)
        return 1;
    for (i = 0; i < OB__ARRAY_LEN(consumer_only); i++) {
        if (strcmp(name, consumer_only[i]) == 0)
            return 1;
    }
    return 0;
}

struct dlq_conf {
    rd_kafka_conf_t *kc;
    char errstr[256];
    const char *failed;
};

static int dlq_set(void *opaque, const char *name, const char *value)
{
    struct dlq_conf *d = opaque;

    if (consumer_property(name))
        return 0;
    if (rd_kafka_conf_set(d->kc, name, value, d->errstr,
                          sizeof(d->errstr)) != RD_KAFKA_CONF_OK) {
        d->failed = name;
        return -1;
    }
    return 0;
}

static void dlq_delivered(rd_kafka_t *rk, const rd_kafka_message_t *rkm,
                          void *opaque)
{
    int *status = rkm->_private;

    (void)rk;
    (void)opaque;
    if (status != NULL)
        *status = (int)rkm->err;
}

static void dlq_log(const rd_kafka_t *rk, int level, const char *fac,
                    const char *buf)
{
    const ob_consumer_t *c = rd_kafka_opaque(rk);

    ob__log(&c->log, level, "kafka", "dead-letter producer: %s: %s", fac,
            buf);
}

static int dlq_create(ob_consumer_t *c, ob_error_t *err)
{
    struct dlq_conf d = {rd_kafka_conf_new(), "", NULL};
    char errstr[256];

    if (ob__conf_each_kafka(c->conf, dlq_set, &d) != 0 ||
        rd_kafka_conf_set(d.kc, "enable.idempotence", "true", d.errstr,
                          sizeof(d.errstr)) != RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(d.kc);
        return ob__error_set(err, OB_ECONF, "dead-letter producer: kafka."
                             "%s: %s", d.failed ? d.failed : "?", d.errstr);
    }
    if (ob_conf_get(c->conf, "kafka.message.timeout.ms") == NULL)
        rd_kafka_conf_set(d.kc, "message.timeout.ms", DLQ_TIMEOUT_DEFAULT,
                          NULL, 0);
    rd_kafka_conf_set_dr_msg_cb(d.kc, dlq_delivered);
    rd_kafka_conf_set_log_cb(d.kc, dlq_log);
    rd_kafka_conf_set_opaque(d.kc, c);

    c->dlq = rd_kafka_new(RD_KAFKA_PRODUCER, d.kc, errstr, sizeof(errstr));
    if (c->dlq == NULL) {
        rd_kafka_conf_destroy(d.kc);
        return ob__error_full(err, OB_EKAFKA, OB_DOMAIN_KAFKA, 0, 0,
                              "dead-letter producer: %s", errstr);
    }
    return 0;
}

static void header_num(rd_kafka_headers_t *h, const char *name, long long v)
{
    char num[24];

    snprintf(num, sizeof(num), "%lld", v);
    rd_kafka_header_add(h, name, -1, num, -1);
}

/* The original headers, then oncebox's own. */
static rd_kafka_headers_t *dlq_headers(const ob_consumer_t *c,
                                       const ob_message_t *m)
{
    rd_kafka_headers_t *orig = NULL, *h;
    const char *detail = m->detail != NULL ? m->detail : "";

    if (rd_kafka_message_headers(m->rkm, &orig) == RD_KAFKA_RESP_ERR_NO_ERROR)
        h = rd_kafka_headers_copy(orig);
    else
        h = rd_kafka_headers_new(8);
    rd_kafka_header_add(h, OB_DLQ_HEADER_REASON, -1, m->reason, -1);
    rd_kafka_header_add(h, OB_DLQ_HEADER_ERROR, -1, detail, -1);
    rd_kafka_header_add(h, OB_DLQ_HEADER_TOPIC, -1, m->topic, -1);
    header_num(h, OB_DLQ_HEADER_PARTITION, m->rkm->partition);
    header_num(h, OB_DLQ_HEADER_OFFSET, m->rkm->offset);
    rd_kafka_header_add(h, OB_DLQ_HEADER_GROUP, -1, c->group, -1);
    header_num(h, OB_DLQ_HEADER_ATTEMPTS,
               strncmp(m->reason, "handler-", 8) == 0 ? m->attempt : 0);
    return h;
}

static int dlq_produce(ob_consumer_t *c, ob_message_t *m, ob_error_t *err)
{
    char *topic = ob__dlq_topic(c->dlq_template, m->topic);
    rd_kafka_headers_t *h;
    rd_kafka_resp_err_t e;

    if (topic == NULL)
        return ob__error_nomem(err, "dead-letter topic");
    h = dlq_headers(c, m);
    m->dlq_err = -1;
    e = rd_kafka_producev(c->dlq, RD_KAFKA_V_TOPIC(topic),
                          RD_KAFKA_V_KEY(m->rkm->key, m->rkm->key_len),
                          RD_KAFKA_V_VALUE(m->rkm->payload, m->rkm->len),
                          RD_KAFKA_V_HEADERS(h),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                          RD_KAFKA_V_OPAQUE(&m->dlq_err), RD_KAFKA_V_END);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_headers_destroy(h);
        m->dlq_err = (int)e;
        ob__free(topic);
        return ob__error_full(err, OB_EKAFKA, OB_DOMAIN_KAFKA, (int)e,
                              OB_ERROR_RETRIABLE, "dead letter to %s: %s",
                              topic, rd_kafka_err2str(e));
    }
    ob__free(topic);
    return 0;
}

/* Every report in, and each a success; else a retriable failure. */
static int dlq_check(ob_consumer_t *c, ob_error_t *err)
{
    size_t i;

    for (i = 0; i < c->batch_len; i++) {
        ob_message_t *m = &c->batch[i];

        if (m->state != OB__MSG_DEAD || m->dlq_sent)
            continue;
        if (m->dlq_err != 0)
            return ob__error_full(err, OB_EKAFKA, OB_DOMAIN_KAFKA,
                                  m->dlq_err > 0 ? m->dlq_err : 0,
                                  OB_ERROR_RETRIABLE, "dead letter of %s "
                                  "[%d] offset %lld not delivered: %s",
                                  m->topic, (int)m->rkm->partition,
                                  (long long)m->rkm->offset,
                                  m->dlq_err < 0
                                      ? "no delivery report in time"
                                      : rd_kafka_err2str(m->dlq_err));
    }
    for (i = 0; i < c->batch_len; i++) {
        if (c->batch[i].state == OB__MSG_DEAD)
            c->batch[i].dlq_sent = 1;
    }
    return 0;
}

int ob__dlq_send(ob_consumer_t *c, ob_error_t *err)
{
    long long timeout;
    size_t i;
    int rc = 0;

    if (c->dlq == NULL && (rc = dlq_create(c, err)) != 0)
        return rc;

    for (i = 0; i < c->batch_len && rc == 0; i++) {
        ob_message_t *m = &c->batch[i];

        if (m->state == OB__MSG_DEAD && !m->dlq_sent)
            rc = dlq_produce(c, m, err);
    }

    /* Even after a failed produce, the reports of what went out must be
     * in before the statuses they write to go away. */
    timeout = ob__conf_int(c->conf, "kafka.message.timeout.ms");
    if (timeout <= 0)
        timeout = 30000;
    rd_kafka_flush(c->dlq, (int)(timeout + DLQ_FLUSH_SLACK_MS));
    if (rd_kafka_outq_len(c->dlq) > 0)
        rd_kafka_purge(c->dlq, RD_KAFKA_PURGE_F_QUEUE |
                                   RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(c->dlq, 0);
    return rc != 0 ? rc : dlq_check(c, err);
}

void ob__dlq_destroy(ob_consumer_t *c)
{
    if (c->dlq == NULL)
        return;
    rd_kafka_flush(c->dlq, 10000);
    rd_kafka_destroy(c->dlq);
    c->dlq = NULL;
}
