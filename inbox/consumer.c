/*
 * The consumer: configuration, the Kafka consumer-group client, the
 * rebalance callback and the loop that collects batches.
 *
 * Rebalance callbacks run inside rd_kafka_consumer_poll(), which is only
 * called while collecting, between batches: no transaction is ever open
 * when partitions come or go. So an assignment can read the stored
 * offsets and seek there, and a revocation only has to drop messages
 * collected but not yet handled (their offsets were never stored, so the
 * next owner reads them again). Everything handled before was committed
 * before the poll that revoked it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inbox/internal.h"
#include "inbox/store_lmdb.h"

/* Longest wait in one poll while idle, so that stops are seen soon. */
#define POLL_IDLE_MS 100

/* The idle exit's least wait for a first assignment. */
#define IDLE_JOIN_MS 30000

static int settings_read(ob__settings_t *set, const ob_conf_t *conf)
{
    const char *reset = ob_conf_get(conf, "kafka.auto.offset.reset");

    set->batch_size = (size_t)ob__conf_int(conf, "consumer.batch.size");
    set->batch_wait_ms = ob__conf_int(conf, "consumer.batch.wait.ms");
    set->attempts = (int)ob__conf_int(conf, "consumer.retry.attempts");
    set->backoff_ms = ob__conf_int(conf, "consumer.retry.backoff.ms");
    set->backoff_max_ms = ob__conf_int(conf, "consumer.retry.backoff.max.ms");
    set->reconnect_max_ms =
        ob__conf_int(conf, "consumer.reconnect.backoff.max.ms");
    set->idle_exit_ms = ob__conf_int(conf, "consumer.idle.exit.ms");
    set->retention_ms = ob__conf_int(conf, "inbox.retention.s") * 1000;
    set->purge_interval_ms = ob__conf_int(conf, "inbox.purge.interval.ms");
    set->purge_batch = (size_t)ob__conf_int(conf, "purge.batch.size");
    set->key_offset_fallback =
        strcmp(ob_conf_get(conf, "consumer.key.missing"), "offset") == 0;
    set->reuse_skip = strcmp(ob_conf_get(conf, "consumer.key.reuse"),
                             "skip") == 0;
    set->kafka_commit =
        strcmp(ob_conf_get(conf, "consumer.kafka.commit"), "true") == 0;
    set->offset_end_when_none =
        reset != NULL && (strcmp(reset, "latest") == 0 ||
                          strcmp(reset, "largest") == 0 ||
                          strcmp(reset, "end") == 0);
    if (set->backoff_max_ms < set->backoff_ms)
        set->backoff_max_ms = set->backoff_ms;
    return 0;
}

/* Splits "a, b,c" into c->topics, checking each name. */
static int topics_read(ob_consumer_t *c, const char *list, ob_error_t *err)
{
    const char *p = list;

    while (*p != '\0') {
        size_t n = strcspn(p, ","), lead = strspn(p, " ");
        char *name, **grown;

        while (n > lead && p[n - 1] == ' ')
            n--;
        grown = ob__realloc(c->topics, (c->topic_count + 1) * sizeof(*grown));
        if (grown == NULL)
            return ob__error_nomem(err, "consumer topics");
        c->topics = grown;
        name = ob__strndup(p + lead, n > lead ? n - lead : 0);
        if (name == NULL)
            return ob__error_nomem(err, "consumer topics");
        c->topics[c->topic_count++] = name;
        if (!ob__topic_valid(name))
            return ob__error_set(err, OB_ECONF, "consumer.topics: \"%s\" is "
                                 "not a Kafka topic name", name);
        p += strcspn(p, ",");
        p += *p == ',';
    }
    if (c->topic_count == 0)
        return ob__error_set(err, OB_ECONF, "consumer.topics: no topic "
                             "given");
    return 0;
}

/* Each topic's dead-letter topic must be valid and not the topic. */
static int dlq_template_check(ob_consumer_t *c, ob_error_t *err)
{
    size_t i;

    for (i = 0; i < c->topic_count; i++) {
        char *dlq = ob__dlq_topic(c->dlq_template, c->topics[i]);
        int ok = dlq != NULL && ob__topic_valid(dlq) &&
                 strcmp(dlq, c->topics[i]) != 0;

        ob__free(dlq);
        if (dlq == NULL)
            return ob__error_nomem(err, "dead-letter topic");
        if (!ok)
            return ob__error_set(err, OB_ECONF, "consumer.dlq.topic: "
                                 "\"%s\" gives no valid dead-letter topic "
                                 "for \"%s\"", c->dlq_template,
                                 c->topics[i]);
    }
    return 0;
}

struct kafka_conf {
    rd_kafka_conf_t *kc;
    char errstr[256];
    const char *failed;
};

static int kafka_set(void *opaque, const char *name, const char *value)
{
    struct kafka_conf *k = opaque;

    if (rd_kafka_conf_set(k->kc, name, value, k->errstr,
                          sizeof(k->errstr)) != RD_KAFKA_CONF_OK) {
        k->failed = name;
        return -1;
    }
    return 0;
}

static void kafka_log(const rd_kafka_t *rk, int level, const char *fac,
                      const char *buf)
{
    const ob_consumer_t *c = rd_kafka_opaque(rk);

    ob__log(&c->log, level, "kafka", "%s: %s", fac, buf);
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e,
                         rd_kafka_topic_partition_list_t *parts,
                         void *opaque);

/*
 * Kafka's committed offsets only serve lag tools, and a commit refused
 * in a rebalance is normal: worth a debug line, not a warning. With this
 * callback set librdkafka leaves the reporting to it.
 */
static void on_commit(rd_kafka_t *rk, rd_kafka_resp_err_t e,
                      rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    const ob_consumer_t *c = opaque;

    (void)rk;
    (void)offsets;
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR &&
        e != RD_KAFKA_RESP_ERR__NO_OFFSET)
        ob__log(&c->log, OB_LOG_DEBUG, "consumer", "Kafka offset commit "
                "(for lag tools only): %s", rd_kafka_err2str(e));
}

/* The librdkafka configuration: the user's kafka.* and ours on top. */
static int kafka_conf_build(ob_consumer_t *c, rd_kafka_conf_t **kcp,
                            ob_error_t *err)
{
    struct kafka_conf k = {rd_kafka_conf_new(), "", NULL};
    static const char *const forced[][2] = {
        {"enable.auto.commit", "false"},
        {"enable.auto.offset.store", "false"},
        {"enable.partition.eof", "false"},
    };
    size_t i;

    if (ob_conf_get(c->conf, "kafka.auto.offset.reset") == NULL)
        kafka_set(&k, "auto.offset.reset", "earliest");
    if (ob__conf_each_kafka(c->conf, kafka_set, &k) != 0)
        goto refused;
    for (i = 0; i < OB__ARRAY_LEN(forced); i++) {
        if (kafka_set(&k, forced[i][0], forced[i][1]) != 0)
            goto refused;
    }
    rd_kafka_conf_set_opaque(k.kc, c);
    rd_kafka_conf_set_log_cb(k.kc, kafka_log);
    rd_kafka_conf_set_rebalance_cb(k.kc, on_rebalance);
    rd_kafka_conf_set_offset_commit_cb(k.kc, on_commit);
    *kcp = k.kc;
    return 0;

refused:
    rd_kafka_conf_destroy(k.kc);
    return ob__error_set(err, OB_ECONF, "kafka.%s: %s", k.failed, k.errstr);
}

static int consumer_configure(ob_consumer_t *c, const ob_conf_t *conf,
                              ob_error_t *err)
{
    const char *group = ob_conf_get(conf, "kafka.group.id");
    rd_kafka_conf_t *kc;
    int rc;

    if (ob_conf_get(conf, "kafka.bootstrap.servers") == NULL)
        return ob__error_set(err, OB_ECONF, "kafka.bootstrap.servers is "
                             "not set");
    if (group == NULL || group[0] == '\0')
        return ob__error_set(err, OB_ECONF, "kafka.group.id is not set");
    if (ob__check_text("kafka.group.id", group, strlen(group), 255, err)) {
        if (err != NULL)
            err->code = OB_ECONF;
        return OB_ECONF;
    }

    c->group = ob__strdup(group);
    c->dlq_template = ob__strdup(ob_conf_get(conf, "consumer.dlq.topic"));
    if (c->group == NULL || c->dlq_template == NULL)
        return ob__error_nomem(err, "consumer");
    rc = topics_read(c, ob_conf_get(conf, "consumer.topics"), err);
    if (rc == 0)
        rc = dlq_template_check(c, err);
    if (rc == 0)
        rc = kafka_conf_build(c, &kc, err);
    if (rc == 0)
        rd_kafka_conf_destroy(kc);
    return rc;
}

int ob_consumer_new_pg(ob_consumer_t **cp, const ob_conf_t *conf,
                       const char *conninfo, ob_error_t *err)
{
    return ob__consumer_new(cp, conf, conninfo, NULL, err);
}

int ob__consumer_new(ob_consumer_t **cp, const ob_conf_t *conf,
                     const char *conninfo, MDB_env *env, ob_error_t *err)
{
    ob_consumer_t *c;
    int rc;

    if (cp == NULL || conf == NULL)
        return ob__error_set(err, OB_EINVAL, "consumer: cp or conf is NULL");
    c = ob__calloc(1, sizeof(*c));
    if (c == NULL)
        return ob__error_nomem(err, "consumer");

    rc = ob_conf_dup(conf, &c->conf, err);
    if (rc != 0)
        goto fail;
    c->log = *ob__conf_log(conf);
    settings_read(&c->set, conf);
    c->rng = (uint64_t)ob__wall_ms() ^ (uint64_t)(uintptr_t)c;
    rc = consumer_configure(c, conf, err);
    if (rc == 0)
        rc = env == NULL ? ob__inbox_pg_new(&c->store, conf, conninfo, err)
                         : ob__inbox_lmdb_new(&c->store, conf, env, err);
    if (rc == 0) {
        c->batch = ob__calloc(c->set.batch_size, sizeof(*c->batch));
        if (c->batch == NULL)
            rc = ob__error_nomem(err, "consumer batch");
    }
    if (rc != 0)
        goto fail;
    *cp = c;
    return 0;

fail:
    ob_consumer_destroy(c);
    return rc;
}

void ob_consumer_destroy(ob_consumer_t *c)
{
    size_t i;

    if (c == NULL)
        return;
    ob__batch_free(c);
    if (c->rk != NULL) {
        rd_kafka_consumer_close(c->rk);
        rd_kafka_destroy(c->rk);
    }
    ob__dlq_destroy(c);
    if (c->store != NULL)
        c->store->ops->destroy(c->store);
    for (i = 0; i < c->tp_count; i++)
        ob__free(c->tps[i].topic);
    ob__free(c->tps);
    for (i = 0; i < c->topic_count; i++)
        ob__free(c->topics[i]);
    ob__free(c->topics);
    ob__free(c->batch);
    ob__free(c->group);
    ob__free(c->dlq_template);
    ob_conf_destroy(c->conf);
    ob__free(c);
}

int ob_consumer_set_handler(ob_consumer_t *c, ob_handler_fn fn, void *opaque,
                            unsigned flags, ob_error_t *err)
{
    if (c == NULL || fn == NULL)
        return ob__error_set(err, OB_EINVAL, "consumer: c or fn is NULL");
    if ((flags & ~OB_HANDLER_JSON) != 0)
        return ob__error_set(err, OB_EINVAL, "consumer: unknown handler "
                             "flags 0x%x", flags & ~OB_HANDLER_JSON);
    if (c->ran)
        return ob__error_set(err, OB_ESTATE, "consumer: the handler cannot "
                             "change once the consumer ran");
    c->handler = fn;
    c->handler_opaque = opaque;
    c->handler_flags = flags;
    return 0;
}

int ob_consumer_set_batch_handler(ob_consumer_t *c, ob_batch_handler_fn fn,
                                  void *opaque, ob_error_t *err)
{
    if (c == NULL)
        return ob__error_set(err, OB_EINVAL, "consumer: c is NULL");
    if (c->ran)
        return ob__error_set(err, OB_ESTATE, "consumer: the handler cannot "
                             "change once the consumer ran");
    c->batch_handler = fn;
    c->batch_opaque = opaque;
    return 0;
}

void ob_consumer_stop(ob_consumer_t *c)
{
    if (c != NULL)
        c->stop = 1;
}

int ob_consumer_stats(const ob_consumer_t *c, ob_consumer_stats_t *st,
                      ob_error_t *err)
{
    ob__counters_t *k;

    if (c == NULL || st == NULL || st->size < sizeof(*st))
        return ob__error_set(err, OB_EINVAL, "consumer stats: c or st is "
                             "NULL, or st->size too small");
    k = (ob__counters_t *)&c->counters;
    st->messages = atomic_load(&k->messages);
    st->applied = atomic_load(&k->applied);
    st->duplicates = atomic_load(&k->duplicates);
    st->dead_letters = atomic_load(&k->dead_letters);
    st->skipped = atomic_load(&k->skipped);
    st->key_reused = atomic_load(&k->key_reused);
    st->retries = atomic_load(&k->retries);
    st->batches = atomic_load(&k->batches);
    st->reconnects = atomic_load(&k->reconnects);
    st->purged = atomic_load(&k->purged);
    return 0;
}

ob__tp_t *ob__tp_find(ob_consumer_t *c, const char *topic, int32_t part)
{
    size_t i;

    for (i = 0; i < c->tp_count; i++) {
        if (c->tps[i].partition == part && strcmp(c->tps[i].topic, topic) == 0)
            return &c->tps[i];
    }
    return NULL;
}

static int tp_add(ob_consumer_t *c, const char *topic, int32_t part,
                  int64_t next)
{
    ob__tp_t *tp = ob__tp_find(c, topic, part);

    if (tp == NULL) {
        if (c->tp_count == c->tp_cap) {
            size_t cap = c->tp_cap ? c->tp_cap * 2 : 16;
            ob__tp_t *grown = ob__realloc(c->tps, cap * sizeof(*grown));

            if (grown == NULL)
                return OB_ENOMEM;
            c->tps = grown;
            c->tp_cap = cap;
        }
        tp = &c->tps[c->tp_count];
        tp->topic = ob__strdup(topic);
        if (tp->topic == NULL)
            return OB_ENOMEM;
        tp->partition = part;
        c->tp_count++;
    }
    tp->next_offset = next;
    tp->batch_next = -1;
    tp->stored = next;
    return 0;
}

void ob__kafka_commit(ob_consumer_t *c, int force)
{
    rd_kafka_topic_partition_list_t *list;
    rd_kafka_resp_err_t e;
    int64_t now = ob__now_ms();
    size_t i;

    if (!c->set.kafka_commit || !c->kafka_dirty ||
        (!force && now < c->next_kafka_commit_ms))
        return;
    c->kafka_dirty = 0;
    c->next_kafka_commit_ms = now + 1000;
    list = rd_kafka_topic_partition_list_new((int)c->tp_count + 1);
    for (i = 0; i < c->tp_count; i++) {
        if (c->tps[i].stored >= 0)
            rd_kafka_topic_partition_list_add(list, c->tps[i].topic,
                                              c->tps[i].partition)
                ->offset = c->tps[i].stored;
    }
    e = list->cnt > 0 ? rd_kafka_commit(c->rk, list, 1)
                      : RD_KAFKA_RESP_ERR_NO_ERROR;
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        ob__log(&c->log, OB_LOG_DEBUG, "consumer", "Kafka offset commit "
                "(for lag tools only): %s", rd_kafka_err2str(e));
    rd_kafka_topic_partition_list_destroy(list);
}

/* Forgets a partition, and the messages of it collected so far. */
static void tp_remove(ob_consumer_t *c, const char *topic, int32_t part)
{
    ob__tp_t *tp = ob__tp_find(c, topic, part);
    size_t i, kept = 0;

    for (i = 0; i < c->batch_len; i++) {
        ob_message_t *m = &c->batch[i];

        if (m->rkm->partition == part && strcmp(m->topic, topic) == 0)
            ob__message_clear(m);
        else
            c->batch[kept++] = *m;
    }
    c->batch_len = kept;
    if (tp == NULL)
        return;
    ob__free(tp->topic);
    *tp = c->tps[--c->tp_count];
}

/* The stored offsets of parts, retried while PostgreSQL is away. */
static int assign_load(ob_consumer_t *c, ob__inbox_offset_t *offs, size_t n,
                       ob_error_t *err)
{
    int fresh, rc;

    for (;;) {
        rc = c->store->ops->load_offsets(c->store, c->group, offs, n, err);
        if (rc == 0 || !ob_error_is_retriable(err))
            return rc;
        ob__log(&c->log, OB_LOG_WARNING, "consumer", "cannot read the "
                "stored offsets: %s", err->message);
        rc = ob__store_reopen(c, &fresh, err);
        if (rc != 0)
            return rc;
    }
}

static void consumer_fail(ob_consumer_t *c, const ob_error_t *err)
{
    if (!c->fatal)
        c->fatal_err = *err;
    c->fatal = 1;
}

/*
 * Sets each partition's offset to the stored one. A partition whose
 * offset could not be read is kept with next_offset -2: its messages
 * are dropped while the consumer winds down.
 */
static void assign_offsets(ob_consumer_t *c,
                           rd_kafka_topic_partition_list_t *parts)
{
    ob__inbox_offset_t *offs = ob__calloc((size_t)parts->cnt + 1,
                                          sizeof(*offs));
    int64_t none = c->set.offset_end_when_none ? RD_KAFKA_OFFSET_END
                                               : RD_KAFKA_OFFSET_BEGINNING;
    ob_error_t err;
    int i, rc;

    if (offs == NULL) {
        ob__error_nomem(&err, "assignment");
        consumer_fail(c, &err);
    }
    for (i = 0; offs != NULL && i < parts->cnt; i++) {
        offs[i].topic = parts->elems[i].topic;
        offs[i].partition = parts->elems[i].partition;
    }
    rc = offs != NULL ? assign_load(c, offs, (size_t)parts->cnt, &err) : -1;
    if (rc != 0 && offs != NULL && !c->stop)
        consumer_fail(c, &err);

    for (i = 0; i < parts->cnt; i++) {
        int64_t next = rc == 0 ? offs[i].next_offset : -2;

        parts->elems[i].offset = next >= 0 ? next : none;
        if (tp_add(c, parts->elems[i].topic, parts->elems[i].partition,
                   next) != 0) {
            ob__error_nomem(&err, "assignment");
            consumer_fail(c, &err);
        }
    }
    ob__free(offs);
}

static void rebalance_log(ob_consumer_t *c, const char *what,
                          const rd_kafka_topic_partition_list_t *parts)
{
    ob__log(&c->log, OB_LOG_INFO, "consumer", "%s %d partition(s) (%s)",
            what, parts->cnt, c->cooperative ? "cooperative" : "eager");
}

static void on_assign(ob_consumer_t *c, rd_kafka_topic_partition_list_t *p)
{
    rd_kafka_error_t *error = NULL;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;

    if (!c->cooperative) {
        while (c->tp_count > 0)
            tp_remove(c, c->tps[0].topic, c->tps[0].partition);
    }
    assign_offsets(c, p);
    rebalance_log(c, "assigned", p);
    /* Joining a group can take seconds: idle time counts from here. */
    c->last_message_ms = ob__now_ms();
    if (c->cooperative)
        error = rd_kafka_incremental_assign(c->rk, p);
    else
        e = rd_kafka_assign(c->rk, p);
    if (error != NULL) {
        ob__log(&c->log, OB_LOG_ERR, "consumer", "incremental assign: %s",
                rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    } else if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        ob__log(&c->log, OB_LOG_ERR, "consumer", "assign: %s",
                rd_kafka_err2str(e));
    }
}

static void on_revoke(ob_consumer_t *c, rd_kafka_topic_partition_list_t *p)
{
    rd_kafka_error_t *error = NULL;
    int i;

    ob__kafka_commit(c, 1);
    for (i = 0; i < p->cnt; i++)
        tp_remove(c, p->elems[i].topic, p->elems[i].partition);
    rebalance_log(c, rd_kafka_assignment_lost(c->rk) ? "lost" : "revoked",
                  p);
    if (c->cooperative)
        error = rd_kafka_incremental_unassign(c->rk, p);
    else
        rd_kafka_assign(c->rk, NULL);
    if (error != NULL) {
        ob__log(&c->log, OB_LOG_ERR, "consumer", "incremental unassign: %s",
                rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    }
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    ob_consumer_t *c = opaque;

    (void)rk;
    c->cooperative =
        strcmp(rd_kafka_rebalance_protocol(c->rk), "COOPERATIVE") == 0;
    if (e == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        on_assign(c, parts);
    } else if (e == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        on_revoke(c, parts);
    } else {
        ob__log(&c->log, OB_LOG_ERR, "consumer", "rebalance: %s",
                rd_kafka_err2str(e));
        while (c->tp_count > 0)
            tp_remove(c, c->tps[0].topic, c->tps[0].partition);
        rd_kafka_assign(c->rk, NULL);
    }
}

static int kafka_start(ob_consumer_t *c, ob_error_t *err)
{
    rd_kafka_topic_partition_list_t *subs;
    rd_kafka_conf_t *kc;
    rd_kafka_resp_err_t e;
    char errstr[256];
    size_t i;
    int rc;

    rc = kafka_conf_build(c, &kc, err);
    if (rc != 0)
        return rc;
    c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, errstr, sizeof(errstr));
    if (c->rk == NULL) {
        rd_kafka_conf_destroy(kc);
        return ob__error_full(err, OB_EKAFKA, OB_DOMAIN_KAFKA, 0, 0,
                              "consumer: %s", errstr);
    }
    rd_kafka_poll_set_consumer(c->rk);

    subs = rd_kafka_topic_partition_list_new((int)c->topic_count);
    for (i = 0; i < c->topic_count; i++)
        rd_kafka_topic_partition_list_add(subs, c->topics[i],
                                          RD_KAFKA_PARTITION_UA);
    e = rd_kafka_subscribe(c->rk, subs);
    rd_kafka_topic_partition_list_destroy(subs);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        return ob__error_full(err, OB_EKAFKA, OB_DOMAIN_KAFKA, (int)e, 0,
                              "consumer: subscribe: %s", rd_kafka_err2str(e));
    return 0;
}

static void kafka_error(ob_consumer_t *c, const rd_kafka_message_t *rkm)
{
    char reason[256];
    ob_error_t err;

    if (rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
        return;
    if (rkm->err != RD_KAFKA_RESP_ERR__FATAL) {
        ob__log(&c->log, OB_LOG_WARNING, "kafka", "consumer: %s",
                rd_kafka_message_errstr(rkm));
        return;
    }
    rd_kafka_fatal_error(c->rk, reason, sizeof(reason));
    ob__error_full(&err, OB_EKAFKA, OB_DOMAIN_KAFKA, (int)rkm->err,
                   OB_ERROR_FATAL, "consumer: fatal Kafka error: %s", reason);
    consumer_fail(c, &err);
}

/* Takes a message into the batch, or drops one already handled. */
static void collect_take(ob_consumer_t *c, rd_kafka_message_t *rkm)
{
    ob__tp_t *tp = ob__tp_find(c, rd_kafka_topic_name(rkm->rkt),
                               rkm->partition);
    ob_error_t err;

    if (tp == NULL || tp->next_offset == -2 ||
        (tp->next_offset >= 0 && rkm->offset < tp->next_offset)) {
        rd_kafka_message_destroy(rkm);
        return;
    }
    tp->next_offset = rkm->offset + 1;
    if (ob__message_prepare(c, &c->batch[c->batch_len], rkm, &err) != 0) {
        ob__message_clear(&c->batch[c->batch_len]);
        consumer_fail(c, &err);
        return;
    }
    c->batch_len++;
}

/* Polls until the batch is full, its wait is over, or nothing comes. */
static void collect(ob_consumer_t *c)
{
    int64_t first = 0, left;
    rd_kafka_message_t *rkm;

    while (c->batch_len < c->set.batch_size && !c->stop && !c->fatal) {
        left = POLL_IDLE_MS;
        if (c->batch_len > 0) {
            left = first + c->set.batch_wait_ms - ob__now_ms();
            if (left <= 0)
                break;
        }
        rkm = rd_kafka_consumer_poll(c->rk, (int)left);
        if (rkm == NULL) {
            if (c->batch_len == 0)
                return;
            continue;
        }
        if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            kafka_error(c, rkm);
            rd_kafka_message_destroy(rkm);
            continue;
        }
        c->last_message_ms = ob__now_ms();
        if (c->batch_len == 0)
            first = c->last_message_ms;
        collect_take(c, rkm);
    }
}

/* A small batch of expired keys, now and then, between batches. */
static void purge_tick(ob_consumer_t *c)
{
    int64_t now = ob__now_ms();
    size_t removed = 0;
    ob_error_t err;

    if (c->set.purge_interval_ms == 0 || c->set.retention_ms == 0 ||
        now < c->next_purge_ms)
        return;
    c->next_purge_ms = now + c->set.purge_interval_ms;
    if (c->store->ops->purge(c->store, c->group,
                             ob__wall_ms() - c->set.retention_ms,
                             c->set.purge_batch, &removed, &err) != 0) {
        ob__log(&c->log, OB_LOG_WARNING, "consumer", "purge: %s",
                err.message);
        return;
    }
    atomic_fetch_add(&c->counters.purged, removed);
    /* A full batch means more are due: catch up, one batch a second. */
    if (removed == c->set.purge_batch && c->set.purge_interval_ms > 1000)
        c->next_purge_ms = now + 1000;
}

/*
 * The idle exit counts from the last message or assignment. While the
 * consumer holds no partition (before the first assignment, or between
 * a revocation and the next assignment) it waits at least IDLE_JOIN_MS,
 * as long as a group (re)join can take, so that a short idle time does
 * not end it in the middle of a rebalance.
 */
static int idle_over(const ob_consumer_t *c)
{
    int64_t limit = c->set.idle_exit_ms;

    if (limit == 0)
        return 0;
    if (c->tp_count == 0 && limit < IDLE_JOIN_MS)
        limit = IDLE_JOIN_MS;
    return ob__now_ms() - c->last_message_ms >= limit;
}

static int run_loop(ob_consumer_t *c, ob_error_t *err)
{
    int rc = 0;

    while (!c->fatal) {
        collect(c);
        if (c->batch_len > 0 && !c->fatal) {
            rc = ob__batch_process(c, err);
            ob__batch_free(c);
            if (rc != 0)
                return rc;
            /* Idle means nothing to read: a long batch is not idle. */
            c->last_message_ms = ob__now_ms();
        }
        if (c->stop)
            break;
        if (idle_over(c))
            break;
        ob__kafka_commit(c, 0);
        purge_tick(c);
    }
    if (c->fatal) {
        if (err != NULL)
            *err = c->fatal_err;
        return c->fatal_err.code;
    }
    return 0;
}

int ob_consumer_run(ob_consumer_t *c, ob_error_t *err)
{
    rd_kafka_resp_err_t e;
    int fresh, rc;

    if (c == NULL || c->handler == NULL)
        return ob__error_set(err, OB_EINVAL, "consumer: c is NULL or no "
                             "handler is registered");
    if (c->ran)
        return ob__error_set(err, OB_ESTATE, "consumer: ob_consumer_run() "
                             "was called before");
    c->ran = 1;

    rc = c->store->ops->open(c->store, &fresh, err);
    if (rc == 0)
        rc = kafka_start(c, err);
    if (rc != 0)
        return rc;

    c->last_message_ms = ob__now_ms();
    c->next_purge_ms = c->last_message_ms +
                       (c->set.purge_interval_ms < 1000
                            ? c->set.purge_interval_ms
                            : 1000);
    rc = run_loop(c, err);

    e = rd_kafka_consumer_close(c->rk);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        ob__log(&c->log, OB_LOG_WARNING, "consumer", "close: %s",
                rd_kafka_err2str(e));
    rd_kafka_destroy(c->rk);
    c->rk = NULL;
    ob__dlq_destroy(c);
    return rc;
}
