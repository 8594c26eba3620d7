/*
 * The configuration object: a fixed table of the keys oncebox knows, each
 * with a type, limits and a default, plus any number of "kafka." keys that
 * are passed to librdkafka as they are.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "oncebox/wire.h"

enum conf_type { CONF_STRING, CONF_INT, CONF_ENUM, CONF_IDENT };

struct conf_key {
    const char *name;
    enum conf_type type;
    const char *def;
    long long min, max;  /* CONF_INT */
    const char *choices; /* CONF_ENUM: comma-separated */
    const char *doc;
};

static const struct conf_key conf_keys[] = {
    {"schema", CONF_IDENT, "oncebox", 0, 0, NULL,
     "PostgreSQL schema holding the oncebox tables"},
    {"writer.key.mode", CONF_ENUM, "event-id", 0, 0, "event-id,content",
     "idempotency key of events appended without a caller key"},
    {"writer.payload.max.bytes", CONF_INT, "1048576", 1, 1073741824, NULL,
     "largest JSON payload the writer accepts, in bytes"},
    {"relay.lanes", CONF_INT, "16", 1, 1024, NULL,
     "lane groups the relays of a schema split the outbox into (all equal)"},
    {"relay.batch.size", CONF_INT, "500", 1, 100000, NULL,
     "most rows the relay claims and publishes per transaction"},
    {"relay.batch.bytes", CONF_INT, "16777216", 1, 1073741824, NULL,
     "most stored payload bytes per relay batch (at least one row)"},
    {"relay.poll.interval.ms", CONF_INT, "500", 1, 3600000, NULL,
     "longest relay wait for work when no NOTIFY comes"},
    {"relay.lanes.interval.ms", CONF_INT, "1000", 10, 3600000, NULL,
     "how often a relay rebalances lane groups and takes dead relays'"},
    {"relay.retry.max", CONF_INT, "10", 1, 1000000, NULL,
     "failed attempts of a row's own after which the relay parks it"},
    {"relay.retry.backoff.ms", CONF_INT, "100", 1, 3600000, NULL,
     "relay retry delay after a row's first failure; doubles each time"},
    {"relay.retry.backoff.max.ms", CONF_INT, "30000", 1, 86400000, NULL,
     "longest relay retry delay"},
    {"relay.park.blocks.aggregate", CONF_ENUM, "true", 0, 0, "true,false",
     "whether a parked row holds back its aggregate's later rows"},
    {"relay.topic.template", CONF_STRING, OB_TOPIC_TEMPLATE_DEFAULT, 0, 0,
     NULL, "topic of rows without one; {aggregate_type} is lower-cased"},
    {"relay.published", CONF_ENUM, "mark", 0, 0, "mark,delete",
     "what the relay does with a delivered row: mark it published, or "
     "delete it"},
    {"relay.retention.s", CONF_INT, "604800", 0, 315360000, NULL,
     "seconds published outbox rows are kept before the purge deletes "
     "them"},
    {"inbox.retention.s", CONF_INT, "604800", 0, 315360000, NULL,
     "seconds claimed inbox keys are kept; must exceed the redelivery "
     "horizon"},
    {"dead_letters.retention.s", CONF_INT, "2592000", 0, 315360000, NULL,
     "seconds recorded dead letters are kept before the purge"},
    {"purge.batch.size", CONF_INT, "1000", 1, 100000, NULL,
     "rows the purge deletes per statement (each its own transaction)"},
    {"consumer.topics", CONF_STRING, "", 0, 0, NULL,
     "comma-separated topics the consumer subscribes to"},
    {"consumer.batch.size", CONF_INT, "100", 1, 100000, NULL,
     "messages the consumer handles per transaction"},
    {"consumer.batch.wait.ms", CONF_INT, "50", 0, 60000, NULL,
     "longest time a consumer batch waits to fill before it commits"},
    {"consumer.retry.attempts", CONF_INT, "3", 1, 1000, NULL,
     "handler runs before a failing message goes to the dead letters"},
    {"consumer.retry.backoff.ms", CONF_INT, "100", 0, 3600000, NULL,
     "wait before a failed handler runs again; doubles each time"},
    {"consumer.retry.backoff.max.ms", CONF_INT, "10000", 0, 3600000, NULL,
     "longest wait between two runs of a failing handler"},
    {"consumer.reconnect.backoff.max.ms", CONF_INT, "10000", 100, 3600000,
     NULL, "longest wait between two consumer reconnects to PostgreSQL"},
    {"consumer.dlq.topic", CONF_STRING, "{topic}.dlq", 0, 0, NULL,
     "dead-letter topic; {topic} stands for the message's topic"},
    {"consumer.key.missing", CONF_ENUM, "reject", 0, 0, "reject,offset",
     "messages without idempotency-key: dead letters, or key by offset"},
    {"consumer.key.reuse", CONF_ENUM, "dead-letter", 0, 0,
     "dead-letter,skip",
     "a seen key with a different payload: dead letters, or dropped"},
    {"consumer.idle.exit.ms", CONF_INT, "0", 0, 1LL << 40, NULL,
     "the consumer returns after this long without messages (0: never)"},
    {"consumer.kafka.commit", CONF_ENUM, "true", 0, 0, "true,false",
     "also commit consumer offsets to Kafka, for lag tools"},
    {"inbox.purge.interval.ms", CONF_INT, "60000", 0, 86400000, NULL,
     "how often the consumer purges a batch of expired keys (0: never)"},
    {"lmdb.map.size.bytes", CONF_INT, "67108864", 16384, 1LL << 40, NULL,
     "initial LMDB map size of environments opened by oncebox"},
    {"lmdb.map.max.bytes", CONF_INT, "17179869184", 16384, 1LL << 44, NULL,
     "largest LMDB map size that growing on MDB_MAP_FULL may reach"},
    {"lmdb.max.dbs", CONF_INT, "16", 2, 32767, NULL,
     "named LMDB databases an environment allows, oncebox's included"},
    {"lmdb.max.readers", CONF_INT, "126", 1, 65535, NULL,
     "LMDB reader slots: concurrent read transactions of all processes"},
    {"lmdb.durability", CONF_ENUM, "durable", 0, 0, "durable,nometasync,nosync",
     "what an LMDB commit flushes: everything, data only, or nothing"},
};

#define CONF_KEY_COUNT OB__ARRAY_LEN(conf_keys)
#define KAFKA_PREFIX "kafka."

struct kafka_prop {
    char *name; /* without the prefix */
    char *value;
};

struct ob_conf {
    char *values[CONF_KEY_COUNT]; /* NULL: the default */
    struct kafka_prop *kafka;
    size_t kafka_count, kafka_cap;
    ob__log_t log;
};

static int key_index(const char *name)
{
    size_t i;

    for (i = 0; i < CONF_KEY_COUNT; i++) {
        if (strcmp(conf_keys[i].name, name) == 0)
            return (int)i;
    }
    return -1;
}

int ob_conf_new(ob_conf_t **confp, ob_error_t *err)
{
    ob_conf_t *conf;

    if (confp == NULL)
        return ob__error_set(err, OB_EINVAL, "conf: confp is NULL");

    conf = ob__calloc(1, sizeof(*conf));
    if (conf == NULL)
        return ob__error_nomem(err, "configuration");

    conf->log.max_level = OB_LOG_INFO;
    *confp = conf;
    return 0;
}

void ob_conf_destroy(ob_conf_t *conf)
{
    size_t i;

    if (conf == NULL)
        return;

    for (i = 0; i < CONF_KEY_COUNT; i++)
        ob__free(conf->values[i]);
    for (i = 0; i < conf->kafka_count; i++) {
        ob__free(conf->kafka[i].name);
        ob__free(conf->kafka[i].value);
    }
    ob__free(conf->kafka);
    ob__free(conf);
}

static int parse_ll(const char *s, long long *out)
{
    char *end;

    errno = 0;
    *out = strtoll(s, &end, 10);
    return errno == 0 && end != s && *end == '\0' ? 0 : -1;
}

static int enum_has(const char *choices, const char *value)
{
    size_t len = strlen(value);
    const char *p = choices;

    while (*p != '\0') {
        const char *comma = strchr(p, ',');
        size_t n = comma != NULL ? (size_t)(comma - p) : strlen(p);

        if (n == len && memcmp(p, value, n) == 0)
            return 1;
        p += n + (comma != NULL);
    }
    return 0;
}

static int value_check(const struct conf_key *k, const char *value,
                       ob_error_t *err)
{
    long long n;

    switch (k->type) {
    case CONF_INT:
        if (parse_ll(value, &n) != 0 || n < k->min || n > k->max)
            return ob__error_set(err, OB_ECONF,
                                 "%s: \"%s\" is not an integer from %lld "
                                 "to %lld", k->name, value, k->min, k->max);
        return 0;
    case CONF_ENUM:
        if (!enum_has(k->choices, value))
            return ob__error_set(err, OB_ECONF, "%s: \"%s\" is not one of %s",
                                 k->name, value, k->choices);
        return 0;
    case CONF_IDENT:
        if (ob__check_text(k->name, value, strlen(value), 63, err) == 0)
            return 0;
        if (err != NULL)
            err->code = OB_ECONF;
        return OB_ECONF;
    case CONF_STRING:
        return 0;
    }
    return ob__error_set(err, OB_EINTERNAL, "%s: unknown key type", k->name);
}

static int kafka_find(const ob_conf_t *conf, const char *name)
{
    size_t i;

    for (i = 0; i < conf->kafka_count; i++) {
        if (strcmp(conf->kafka[i].name, name) == 0)
            return (int)i;
    }
    return -1;
}

static void kafka_remove(ob_conf_t *conf, int i)
{
    ob__free(conf->kafka[i].name);
    ob__free(conf->kafka[i].value);
    conf->kafka[i] = conf->kafka[--conf->kafka_count];
}

static int kafka_add(ob_conf_t *conf, const char *name, char *value,
                     ob_error_t *err)
{
    struct kafka_prop *grown;
    char *copy;

    if (conf->kafka_count == conf->kafka_cap) {
        size_t cap = conf->kafka_cap ? conf->kafka_cap * 2 : 8;

        grown = ob__realloc(conf->kafka, cap * sizeof(*grown));
        if (grown == NULL)
            goto nomem;
        conf->kafka = grown;
        conf->kafka_cap = cap;
    }
    copy = ob__strdup(name);
    if (copy == NULL)
        goto nomem;

    conf->kafka[conf->kafka_count].name = copy;
    conf->kafka[conf->kafka_count].value = value;
    conf->kafka_count++;
    return 0;

nomem:
    ob__free(value);
    return ob__error_nomem(err, "configuration value");
}

static int kafka_set(ob_conf_t *conf, const char *name, const char *value,
                     ob_error_t *err)
{
    int i = kafka_find(conf, name);
    char *copy;

    if (*name == '\0')
        return ob__error_set(err, OB_ECONF, "kafka.: property name missing");
    if (value == NULL) {
        if (i >= 0)
            kafka_remove(conf, i);
        return 0;
    }

    copy = ob__strdup(value);
    if (copy == NULL)
        return ob__error_nomem(err, "configuration value");
    if (i < 0)
        return kafka_add(conf, name, copy, err);

    ob__free(conf->kafka[i].value);
    conf->kafka[i].value = copy;
    return 0;
}

int ob_conf_set(ob_conf_t *conf, const char *name, const char *value,
                ob_error_t *err)
{
    const struct conf_key *k;
    char *copy = NULL;
    int i, rc;

    if (conf == NULL || name == NULL)
        return ob__error_set(err, OB_EINVAL, "conf: conf or name is NULL");
    if (strncmp(name, KAFKA_PREFIX, strlen(KAFKA_PREFIX)) == 0)
        return kafka_set(conf, name + strlen(KAFKA_PREFIX), value, err);

    i = key_index(name);
    if (i < 0)
        return ob__error_set(err, OB_ECONF, "unknown configuration key "
                             "\"%s\"", name);

    k = &conf_keys[i];
    if (value != NULL) {
        rc = value_check(k, value, err);
        if (rc != 0)
            return rc;
        copy = ob__strdup(value);
        if (copy == NULL)
            return ob__error_nomem(err, "configuration value");
    }
    ob__free(conf->values[i]);
    conf->values[i] = copy;
    return 0;
}

const char *ob_conf_get(const ob_conf_t *conf, const char *name)
{
    int i;

    if (conf == NULL || name == NULL)
        return NULL;
    if (strncmp(name, KAFKA_PREFIX, strlen(KAFKA_PREFIX)) == 0) {
        i = kafka_find(conf, name + strlen(KAFKA_PREFIX));
        return i >= 0 ? conf->kafka[i].value : NULL;
    }

    i = key_index(name);
    if (i < 0)
        return NULL;
    return conf->values[i] != NULL ? conf->values[i] : conf_keys[i].def;
}

int ob_conf_dup(const ob_conf_t *conf, ob_conf_t **copyp, ob_error_t *err)
{
    ob_conf_t *copy;
    size_t i;
    int rc;

    if (conf == NULL || copyp == NULL)
        return ob__error_set(err, OB_EINVAL, "conf: conf or copyp is NULL");

    rc = ob_conf_new(&copy, err);
    if (rc != 0)
        return rc;

    copy->log = conf->log;
    for (i = 0; i < CONF_KEY_COUNT; i++) {
        if (conf->values[i] == NULL)
            continue;
        copy->values[i] = ob__strdup(conf->values[i]);
        if (copy->values[i] == NULL)
            goto nomem;
    }
    for (i = 0; i < conf->kafka_count; i++) {
        rc = kafka_set(copy, conf->kafka[i].name, conf->kafka[i].value, err);
        if (rc != 0)
            goto fail;
    }
    *copyp = copy;
    return 0;

nomem:
    rc = ob__error_nomem(err, "configuration copy");
fail:
    ob_conf_destroy(copy);
    return rc;
}

void ob_conf_set_log(ob_conf_t *conf, ob_log_fn fn, void *opaque,
                     int max_level)
{
    if (conf == NULL)
        return;

    conf->log.fn = fn;
    conf->log.opaque = opaque;
    conf->log.max_level = max_level;
}

void ob_conf_each(const ob_conf_t *conf, ob_conf_each_fn fn, void *opaque)
{
    size_t i;

    if (fn == NULL)
        return;

    for (i = 0; i < CONF_KEY_COUNT; i++)
        fn(opaque, conf_keys[i].name, ob_conf_get(conf, conf_keys[i].name),
           conf_keys[i].doc);
}

const ob__log_t *ob__conf_log(const ob_conf_t *conf)
{
    static const ob__log_t silent = {NULL, NULL, 0};

    return conf != NULL ? &conf->log : &silent;
}

long long ob__conf_int(const ob_conf_t *conf, const char *name)
{
    const char *value = ob_conf_get(conf, name);
    long long n = 0;

    if (value != NULL && parse_ll(value, &n) != 0)
        n = 0;
    return n;
}

int ob__conf_each_kafka(const ob_conf_t *conf, ob__conf_kafka_fn fn,
                        void *opaque)
{
    size_t i;
    int rc;

    for (i = 0; i < conf->kafka_count; i++) {
        rc = fn(opaque, conf->kafka[i].name, conf->kafka[i].value);
        if (rc != 0)
            return rc;
    }
    return 0;
}
