/*
 * Messages: what the handler can read, and the checks every message
 * passes before it joins a batch. A message that fails them is marked
 * for the dead letters here, so no malformed input ever reaches a
 * handler or a claim.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/buf.h"
#include "core/pg.h"
#include "inbox/internal.h"
#include "oncebox/wire.h"

void ob__message_dead(ob_message_t *m, const char *reason, const char *fmt,
                      ...)
{
    char text[OB_ERROR_MESSAGE_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);

    ob__free(m->detail);
    m->detail = ob__strdup(text);
    m->reason = reason;
    m->state = OB__MSG_DEAD;
}

void ob__offset_key(const char *topic, int32_t partition, int64_t offset,
                    char out[OB_KEY_MAX + 1])
{
    unsigned char digest[OB_DEDUP_HASH_LEN];
    char hex[2 * OB_DEDUP_HASH_LEN + 1];
    int n, i;

    n = snprintf(out, OB_KEY_MAX + 1, "%s/%d/%lld", topic, (int)partition,
                 (long long)offset);
    if (n >= 0 && n <= OB_KEY_MAX)
        return;

    /* Topics reach 249 bytes: past the key limit, the topic's hash
     * stands for it, which keeps keys distinct. */
    memset(digest, 0, sizeof(digest));
    (void)ob_dedup_hash(topic, strlen(topic), digest, NULL);
    for (i = 0; i < OB_DEDUP_HASH_LEN; i++)
        snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    snprintf(out, OB_KEY_MAX + 1, "%s/%d/%lld", hex, (int)partition,
             (long long)offset);
}

/* Sets m->key from the header, or the fallback; 0 when there is one. */
static int message_key(ob_consumer_t *c, ob_message_t *m)
{
    char fallback[OB_KEY_MAX + 1];
    const void *value = NULL;
    size_t len = 0;
    ob_error_t err;

    if (ob_message_header(m, OB_HEADER_IDEMPOTENCY_KEY, &value, &len) != 0 ||
        value == NULL) {
        if (!c->set.key_offset_fallback) {
            ob__message_dead(m, OB_DLQ_MISSING_KEY, "the message has no %s "
                             "header", OB_HEADER_IDEMPOTENCY_KEY);
            return -1;
        }
        ob__offset_key(m->topic, m->rkm->partition, m->rkm->offset,
                       fallback);
        value = fallback;
        len = strlen(fallback);
    }
    if (ob__check_text("idempotency key", value, len, OB_KEY_MAX, &err)) {
        ob__message_dead(m, OB_DLQ_INVALID_KEY, "%s", err.message);
        return -1;
    }
    m->key = ob__strndup(value, len);
    m->key_len = len;
    if (m->key == NULL) {
        ob__message_dead(m, OB_DLQ_INVALID_KEY, "out of memory");
        return -1;
    }
    return 0;
}

static void message_json(ob_message_t *m)
{
    json_error_t jerr;

    if (m->rkm->payload == NULL || m->rkm->len == 0) {
        ob__message_dead(m, OB_DLQ_INVALID_JSON, "the value is empty");
        return;
    }
    m->json = json_loadb(m->rkm->payload, m->rkm->len, JSON_DECODE_ANY,
                         &jerr);
    if (m->json == NULL)
        ob__message_dead(m, OB_DLQ_INVALID_JSON, "the value is not JSON: "
                         "%s at byte %d", jerr.text, jerr.position);
}

int ob__message_prepare(ob_consumer_t *c, ob_message_t *m,
                        rd_kafka_message_t *rkm, ob_error_t *err)
{
    int rc;

    memset(m, 0, sizeof(*m));
    m->rkm = rkm;
    m->topic = rd_kafka_topic_name(rkm->rkt);
    m->state = OB__MSG_PENDING;

    rc = ob_dedup_hash(rkm->payload, rkm->len, m->hash, err);
    if (rc != 0)
        return rc;
    if (message_key(c, m) == 0 && (c->handler_flags & OB_HANDLER_JSON))
        message_json(m);
    m->malformed = m->state == OB__MSG_DEAD;
    return 0;
}

void ob__message_clear(ob_message_t *m)
{
    if (m->rkm != NULL)
        rd_kafka_message_destroy(m->rkm);
    json_decref(m->json);
    ob__free(m->key);
    ob__free(m->detail);
    ob__free(m->headers_json);
    memset(m, 0, sizeof(*m));
}

void ob__message_item(const ob_message_t *m, ob__inbox_item_t *it)
{
    memset(it, 0, sizeof(*it));
    it->key = m->key;
    it->key_len = m->key_len;
    it->hash = m->hash;
    it->topic = m->topic;
    it->partition = m->rkm->partition;
    it->offset = m->rkm->offset;
    it->at_ms = ob__wall_ms();
    it->kafka_key = m->rkm->key;
    it->kafka_key_len = m->rkm->key_len;
    it->value = m->rkm->payload;
    it->value_len = m->rkm->len;
    it->headers_json = m->headers_json;
}

static void base64(ob__buf_t *b, const unsigned char *s, size_t n)
{
    static const char digits[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char out[4];
    size_t i;

    for (i = 0; i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16;

        if (i + 1 < n)
            v |= (unsigned)s[i + 1] << 8;
        if (i + 2 < n)
            v |= s[i + 2];
        out[0] = digits[(v >> 18) & 63];
        out[1] = digits[(v >> 12) & 63];
        out[2] = i + 1 < n ? digits[(v >> 6) & 63] : '=';
        out[3] = i + 2 < n ? digits[v & 63] : '=';
        ob__buf_append(b, out, 4);
    }
}

/* "field": text, or "field_base64": the bytes, whichever jsonb holds. */
static void json_member(ob__buf_t *b, const char *field, const void *v,
                        size_t n)
{
    int text = memchr(v, '\0', n) == NULL && ob__utf8_valid(v, n);

    ob__buf_putc(b, '"');
    ob__buf_puts(b, field);
    ob__buf_puts(b, text ? "\":" : "_base64\":\"");
    if (text) {
        ob__buf_json_string(b, v, n);
        return;
    }
    base64(b, v, n);
    ob__buf_putc(b, '"');
}

char *ob__headers_json(rd_kafka_headers_t *hdrs)
{
    ob__buf_t b = OB__BUF_INIT;
    const char *name;
    const void *value;
    size_t i, len;

    ob__buf_putc(&b, '[');
    for (i = 0; hdrs != NULL &&
                rd_kafka_header_get_all(hdrs, i, &name, &value, &len) ==
                    RD_KAFKA_RESP_ERR_NO_ERROR;
         i++) {
        ob__buf_puts(&b, i > 0 ? ",{" : "{");
        json_member(&b, "name", name, strlen(name));
        ob__buf_putc(&b, ',');
        if (value == NULL)
            ob__buf_puts(&b, "\"value\":null");
        else
            json_member(&b, "value", value, len);
        ob__buf_putc(&b, '}');
    }
    ob__buf_putc(&b, ']');
    if (b.failed) {
        ob__buf_free(&b);
        return NULL;
    }
    return b.data;
}

int ob__topic_valid(const char *topic)
{
    size_t len = strlen(topic), i;

    if (len == 0 || len > 249 || strcmp(topic, ".") == 0 ||
        strcmp(topic, "..") == 0)
        return 0;
    for (i = 0; i < len; i++) {
        char ch = topic[i];

        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' ||
              ch == '-'))
            return 0;
    }
    return 1;
}

char *ob__dlq_topic(const char *tmpl, const char *topic)
{
    const char *mark = strstr(tmpl, "{topic}");
    ob__buf_t b = OB__BUF_INIT;

    if (mark == NULL)
        return ob__strdup(tmpl);
    ob__buf_append(&b, tmpl, (size_t)(mark - tmpl));
    ob__buf_puts(&b, topic);
    ob__buf_puts(&b, mark + strlen("{topic}"));
    if (b.failed) {
        ob__buf_free(&b);
        return NULL;
    }
    return b.data;
}

int64_t ob__backoff_ms(const ob__settings_t *set, int failures,
                       uint64_t random)
{
    int64_t delay = set->backoff_ms;
    int i;

    for (i = 1; i < failures && delay < set->backoff_max_ms; i++)
        delay *= 2;
    if (delay > set->backoff_max_ms)
        delay = set->backoff_max_ms;

    /* Half fixed, half random: spread, yet never much shorter. */
    if (delay > 1)
        delay = delay / 2 + (int64_t)(random % (uint64_t)(delay / 2 + 1));
    return delay;
}

const char *ob_message_topic(const ob_message_t *m)
{
    return m != NULL ? m->topic : NULL;
}

int32_t ob_message_partition(const ob_message_t *m)
{
    return m != NULL ? m->rkm->partition : -1;
}

int64_t ob_message_offset(const ob_message_t *m)
{
    return m != NULL ? m->rkm->offset : -1;
}

int64_t ob_message_timestamp(const ob_message_t *m)
{
    rd_kafka_timestamp_type_t type;

    return m != NULL ? rd_kafka_message_timestamp(m->rkm, &type) : -1;
}

const void *ob_message_key(const ob_message_t *m, size_t *lenp)
{
    if (lenp != NULL)
        *lenp = m != NULL ? m->rkm->key_len : 0;
    return m != NULL ? m->rkm->key : NULL;
}

const void *ob_message_value(const ob_message_t *m, size_t *lenp)
{
    if (lenp != NULL)
        *lenp = m != NULL ? m->rkm->len : 0;
    return m != NULL ? m->rkm->payload : NULL;
}

const char *ob_message_idempotency_key(const ob_message_t *m)
{
    return m != NULL ? m->key : NULL;
}

json_t *ob_message_json(const ob_message_t *m)
{
    return m != NULL ? m->json : NULL;
}

int ob_message_attempt(const ob_message_t *m)
{
    return m != NULL ? m->attempt : 0;
}

static rd_kafka_headers_t *message_headers(const ob_message_t *m)
{
    rd_kafka_headers_t *hdrs = NULL;

    if (m == NULL ||
        rd_kafka_message_headers(m->rkm, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return NULL;
    return hdrs;
}

int ob_message_header(const ob_message_t *m, const char *name,
                      const void **valuep, size_t *lenp)
{
    rd_kafka_headers_t *hdrs = message_headers(m);
    const void *value = NULL;
    size_t len = 0;

    if (hdrs == NULL || name == NULL ||
        rd_kafka_header_get_last(hdrs, name, &value, &len) !=
            RD_KAFKA_RESP_ERR_NO_ERROR)
        return OB_ENOTFOUND;
    if (valuep != NULL)
        *valuep = value;
    if (lenp != NULL)
        *lenp = len;
    return 0;
}

size_t ob_message_header_count(const ob_message_t *m)
{
    rd_kafka_headers_t *hdrs = message_headers(m);

    return hdrs != NULL ? rd_kafka_header_cnt(hdrs) : 0;
}

int ob_message_header_at(const ob_message_t *m, size_t i,
                         const char **namep, const void **valuep,
                         size_t *lenp)
{
    rd_kafka_headers_t *hdrs = message_headers(m);
    const char *name;
    const void *value;
    size_t len;

    if (hdrs == NULL || rd_kafka_header_get_all(hdrs, i, &name, &value,
                                                &len) !=
                            RD_KAFKA_RESP_ERR_NO_ERROR)
        return OB_ENOTFOUND;
    if (namep != NULL)
        *namep = name;
    if (valuep != NULL)
        *valuep = value;
    if (lenp != NULL)
        *lenp = len;
    return 0;
}

int ob_txn_pg_error(ob_txn_t *txn, const PGresult *res, ob_error_t *err)
{
    return ob__error_pg(err, ob_txn_pg(txn), res, "handler");
}

PGconn *ob_txn_pg(ob_txn_t *txn)
{
    if (txn == NULL || strcmp(txn->store->ops->name, "postgresql") != 0)
        return NULL;
    return txn->store->ops->handle(txn->store);
}
