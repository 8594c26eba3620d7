/*
 * The relay's decisions that need no server: which topic a row goes to,
 * which claimed rows a batch may produce without breaking an aggregate's
 * order, how each delivery failure counts, how long a failed row waits,
 * and keeping secrets out of messages.
 */
#include <string.h>

#include "outbox/relay_internal.h"

#define PLACEHOLDER "{aggregate_type}"

static int topic_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

/* Kafka's rule: 1..249 of [a-zA-Z0-9._-], and neither "." nor "..". */
static int topic_valid(const char *topic, ob_error_t *err)
{
    size_t len = strlen(topic), i;

    if (len == 0)
        return ob__error_set(err, OB_EEMPTY, "the topic name is empty");
    for (i = 0; i < len; i++) {
        if (!topic_char(topic[i]))
            return ob__error_set(err, OB_ENAME,
                                 "topic \"%.100s\" is not a Kafka topic "
                                 "name: only letters, digits, '.', '_' "
                                 "and '-' are allowed", topic);
    }
    if (strcmp(topic, ".") == 0 || strcmp(topic, "..") == 0)
        return ob__error_set(err, OB_ENAME, "topic \"%s\" is not allowed",
                             topic);
    return 0;
}

static int too_long(const char *what, ob_error_t *err)
{
    return ob__error_set(err, OB_ETOOLONG, "the topic for %s is longer than "
                         "%d bytes", what, OB__TOPIC_SIZE - 1);
}

int ob__relay_topic(const char *template_, const char *aggregate_type,
                    const char *override, char *out, size_t size,
                    ob_error_t *err)
{
    size_t n = 0, plen = strlen(PLACEHOLDER);
    const char *p, *t;

    if (override != NULL) {
        if (strlen(override) >= size)
            return too_long("the row", err);
        memcpy(out, override, strlen(override) + 1);
        return topic_valid(out, err);
    }

    for (p = template_; *p != '\0';) {
        if (strncmp(p, PLACEHOLDER, plen) != 0) {
            if (n + 1 >= size)
                return too_long("aggregate type", err);
            out[n++] = *p++;
            continue;
        }
        for (t = aggregate_type; *t != '\0'; t++) {
            if (n + 1 >= size)
                return too_long("aggregate type", err);
            out[n++] = *t >= 'A' && *t <= 'Z' ? (char)(*t - 'A' + 'a') : *t;
        }
        p += plen;
    }
    out[n] = '\0';
    return topic_valid(out, err);
}

int ob__relay_template_check(const char *template_, ob_error_t *err)
{
    char topic[OB__TOPIC_SIZE];
    int rc;

    rc = ob__relay_topic(template_, "Order", NULL, topic, sizeof(topic), err);
    if (rc != 0) {
        ob__error_prefix(err, "relay.topic.template \"%.100s\"", template_);
        if (err != NULL)
            err->code = OB_ECONF;
        return OB_ECONF;
    }
    return 0;
}

/*
 * A small open-addressing map from aggregate id to the first row of that
 * aggregate in the batch, sized for the batch, for plan and settle.
 */
typedef struct agg_map {
    const ob__relay_row_t **first;
    unsigned char *stopped;
    size_t mask;
} agg_map_t;

static size_t agg_hash(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    size_t i;

    for (i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return (size_t)(h ^ (h >> 29));
}

static int agg_map_init(agg_map_t *m, size_t count)
{
    size_t cap = 16;

    while (cap < count * 2)
        cap *= 2;
    m->first = ob__calloc(cap, sizeof(*m->first));
    m->stopped = ob__calloc(cap, 1);
    m->mask = cap - 1;
    if (m->first == NULL || m->stopped == NULL) {
        ob__free(m->first);
        ob__free(m->stopped);
        return OB_ENOMEM;
    }
    return 0;
}

static void agg_map_free(agg_map_t *m)
{
    ob__free(m->first);
    ob__free(m->stopped);
}

/* The slot of row's aggregate: the first row seen there, or row itself. */
static size_t agg_slot(agg_map_t *m, const ob__relay_row_t *row)
{
    size_t i = agg_hash(row->aggregate_id, row->aggregate_id_len) & m->mask;
    const ob__relay_row_t *f;

    while ((f = m->first[i]) != NULL) {
        if (f->aggregate_id_len == row->aggregate_id_len &&
            memcmp(f->aggregate_id, row->aggregate_id,
                   row->aggregate_id_len) == 0)
            return i;
        i = (i + 1) & m->mask;
    }
    m->first[i] = row;
    return i;
}

/*
 * Whether row may join the batch behind the aggregate's earlier rows:
 * not after one that stops the aggregate, and only to the same topic,
 * since Kafka orders messages within one partition of one topic only.
 */
static int plan_row(agg_map_t *m, ob__relay_row_t *row)
{
    size_t slot = agg_slot(m, row);

    if (m->stopped[slot])
        return 0;
    if (m->first[slot] != row && strcmp(m->first[slot]->topic, row->topic)) {
        m->stopped[slot] = 1;
        return 0;
    }
    return 1;
}

int ob__relay_plan(ob__relay_row_t *rows, size_t count)
{
    size_t i, planned = 0;
    int cut = 0;
    agg_map_t m;

    if (agg_map_init(&m, count) != 0)
        return OB_ENOMEM;

    /*
     * A gap in rn is a candidate that someone else held locked, so the
     * claim skipped it. Which aggregate it belongs to is unknown here,
     * so every later row waits for the next batch: rare and safe.
     */
    for (i = 0; i < count; i++) {
        ob__relay_row_t *row = &rows[i];

        cut = cut || row->rn != (int)i + 1;
        if (!cut && plan_row(&m, row)) {
            row->state = OB__ROW_INFLIGHT;
            planned++;
        } else {
            row->state = OB__ROW_HELD;
        }
    }
    agg_map_free(&m);
    return (int)planned;
}

enum ob__err_class ob__relay_err_class(int err, int local)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
        /* From the broker it fails every row of one request; settle()
         * decides which one to blame. */
        return local ? OB__ERR_PERMANENT : OB__ERR_ROW;
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return OB__ERR_PERMANENT;
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE:
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
    case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
    case RD_KAFKA_RESP_ERR__FATAL:
    case RD_KAFKA_RESP_ERR__GAPLESS_GUARANTEE:
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
    case RD_KAFKA_RESP_ERR__DESTROY:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR__RESOLVE:
    case RD_KAFKA_RESP_ERR__STATE:
    case RD_KAFKA_RESP_ERR__RETRY:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
    case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
    case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_REPLICA_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND:
    case RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR:
    case RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER:
    case RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH:
    case RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID:
    case RD_KAFKA_RESP_ERR_PRODUCER_FENCED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_FENCED_LEADER_EPOCH:
    case RD_KAFKA_RESP_ERR_UNKNOWN_LEADER_EPOCH:
    case RD_KAFKA_RESP_ERR_THROTTLING_QUOTA_EXCEEDED:
        return OB__ERR_OUTAGE;
    default:
        return OB__ERR_ROW;
    }
}

/*
 * A broker that refuses a request as too large fails every row in it.
 * The largest row of each partition's refused ones is taken as the
 * cause and parked; the others count one failed attempt and go again,
 * most likely in another request.
 */
static void blame_largest(ob__relay_row_t *rows, size_t count)
{
    size_t i, j;

    for (i = 0; i < count; i++) {
        ob__relay_row_t *big = &rows[i];

        if (big->state != OB__ROW_FAILED || big->local ||
            big->err != RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE)
            continue;
        for (j = 0; j < count; j++) {
            const ob__relay_row_t *o = &rows[j];

            if (j != i && o->state == OB__ROW_FAILED && !o->local &&
                o->err == big->err && o->partition == big->partition &&
                strcmp(o->topic, big->topic) == 0 &&
                (o->payload_len > big->payload_len ||
                 (o->payload_len == big->payload_len && j < i)))
                break;
        }
        if (j == count)
            big->err_class = OB__ERR_PERMANENT;
    }
}

int ob__relay_settle(ob__relay_row_t *rows, size_t count)
{
    size_t i, slot;
    int gap = 0;
    agg_map_t m;

    blame_largest(rows, count);
    if (agg_map_init(&m, count) != 0)
        return 0;

    /* stopped[] here means: an earlier row of the aggregate failed. */
    for (i = 0; i < count; i++) {
        slot = agg_slot(&m, &rows[i]);
        if (rows[i].state == OB__ROW_FAILED)
            m.stopped[slot] = 1;
        else if (rows[i].state == OB__ROW_DELIVERED && m.stopped[slot])
            gap = 1;
    }
    agg_map_free(&m);
    return gap;
}

int64_t ob__relay_backoff_ms(int attempt, int base, int max, uint32_t rnd)
{
    int64_t d = base;
    int i;

    for (i = 1; i < attempt && d < max; i++)
        d *= 2;
    if (d > max)
        d = max;
    if (d < 2)
        return d;
    return d - d / 2 + (int64_t)(rnd % (uint32_t)(d / 2 + 1));
}

int ob__relay_parks(const ob__relay_row_t *row, int retry_max)
{
    if (row->state != OB__ROW_FAILED)
        return 0;
    if (row->err_class == OB__ERR_PERMANENT)
        return 1;
    return row->err_class == OB__ERR_ROW && row->retry_count + 1 >= retry_max;
}

void ob__relay_mask(char *s, size_t size, char *const *secrets,
                    size_t count)
{
    static const char stars[] = "***";
    const size_t nstars = sizeof(stars) - 1;
    size_t i, slen, rest;
    char *p, *hit;

    for (i = 0; i < count; i++) {
        if (secrets[i] == NULL || (slen = strlen(secrets[i])) == 0)
            continue;

        /* The search goes on after each replacement, never into it. */
        for (p = s; (hit = strstr(p, secrets[i])) != NULL;) {
            rest = strlen(hit + slen) + 1;
            if (slen >= nstars || strlen(s) + nstars - slen < size) {
                memmove(hit + nstars, hit + slen, rest);
                memcpy(hit, stars, nstars);
                p = hit + nstars;
            } else {
                memset(hit, '*', slen);
                p = hit + slen;
            }
        }
    }
}
