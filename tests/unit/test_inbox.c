/*
 * Unit tests of the consumer that need no server: configuration checks,
 * the fallback key, dead-letter topics and headers, the retry backoff,
 * and allocation failures while building a consumer.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "inbox/internal.h"
#include "tests/support/failalloc.h"

static ob_conf_t *good_conf(void)
{
    ob_conf_t *conf;

    assert_int_equal(ob_conf_new(&conf, NULL), 0);
    assert_int_equal(ob_conf_set(conf, "kafka.bootstrap.servers",
                                 "127.0.0.1:1", NULL), 0);
    assert_int_equal(ob_conf_set(conf, "kafka.group.id", "g", NULL), 0);
    assert_int_equal(ob_conf_set(conf, "consumer.topics", "a, b.c", NULL),
                     0);
    return conf;
}

/* ob_consumer_new_pg() must fail with code, naming what in the message. */
static void expect_refused(ob_conf_t *conf, int code, const char *what)
{
    ob_consumer_t *c = NULL;
    ob_error_t err;

    assert_int_equal(ob_consumer_new_pg(&c, conf, "", &err), code);
    assert_null(c);
    if (strstr(err.message, what) == NULL)
        fail_msg("message \"%s\" does not name \"%s\"", err.message, what);
    ob_conf_destroy(conf);
}

static void consumer_refuses_incomplete_configuration(void **state)
{
    ob_conf_t *conf = good_conf();

    (void)state;
    ob_conf_set(conf, "kafka.bootstrap.servers", NULL, NULL);
    expect_refused(conf, OB_ECONF, "kafka.bootstrap.servers");

    conf = good_conf();
    ob_conf_set(conf, "kafka.group.id", NULL, NULL);
    expect_refused(conf, OB_ECONF, "kafka.group.id");

    conf = good_conf();
    ob_conf_set(conf, "consumer.topics", NULL, NULL);
    expect_refused(conf, OB_ECONF, "consumer.topics");

    expect_refused(NULL, OB_EINVAL, "NULL");
}

static void consumer_refuses_bad_names(void **state)
{
    char group[300];
    ob_conf_t *conf = good_conf();

    (void)state;
    ob_conf_set(conf, "consumer.topics", "good,bad/topic", NULL);
    expect_refused(conf, OB_ECONF, "bad/topic");

    conf = good_conf();
    ob_conf_set(conf, "consumer.topics", "a,,b", NULL);
    expect_refused(conf, OB_ECONF, "consumer.topics");

    memset(group, 'g', sizeof(group) - 1);
    group[sizeof(group) - 1] = '\0';
    conf = good_conf();
    ob_conf_set(conf, "kafka.group.id", group, NULL);
    expect_refused(conf, OB_ECONF, "kafka.group.id");

    conf = good_conf();
    ob_conf_set(conf, "consumer.dlq.topic", "{topic}", NULL);
    expect_refused(conf, OB_ECONF, "consumer.dlq.topic");

    conf = good_conf();
    ob_conf_set(conf, "consumer.dlq.topic", "dead letters", NULL);
    expect_refused(conf, OB_ECONF, "consumer.dlq.topic");

    conf = good_conf();
    ob_conf_set(conf, "kafka.no.such.property", "1", NULL);
    expect_refused(conf, OB_ECONF, "kafka.no.such.property");
}

static void consumer_keys_are_checked_on_set(void **state)
{
    ob_conf_t *conf = good_conf();
    ob_error_t err;

    (void)state;
    assert_int_equal(ob_conf_set(conf, "consumer.batch.size", "0", &err),
                     OB_ECONF);
    assert_int_equal(ob_conf_set(conf, "consumer.key.missing", "drop",
                                 &err), OB_ECONF);
    assert_int_equal(ob_conf_set(conf, "consumer.key.reuse", "skip", &err),
                     0);
    assert_int_equal(ob_conf_set(conf, "consumer.retry.attempts", "1000",
                                 &err), 0);
    assert_string_equal(ob_conf_get(conf, "consumer.dlq.topic"),
                        "{topic}.dlq");
    assert_string_equal(ob_conf_get(conf, "inbox.retention.s"), "604800");
    ob_conf_destroy(conf);
}

static int dummy_handler(void *opaque, const ob_message_t *msg,
                         ob_txn_t *txn, ob_error_t *err)
{
    (void)opaque;
    (void)msg;
    (void)txn;
    (void)err;
    return 0;
}

static void handler_and_run_check_their_arguments(void **state)
{
    ob_conf_t *conf = good_conf();
    ob_consumer_t *c;
    ob_consumer_stats_t st = OB_CONSUMER_STATS_INIT;
    ob_error_t err;

    (void)state;
    assert_int_equal(ob_consumer_new_pg(&c, conf, NULL, &err), 0);
    ob_conf_destroy(conf);

    assert_int_equal(ob_consumer_run(c, &err), OB_EINVAL);
    assert_int_equal(ob_consumer_set_handler(c, NULL, NULL, 0, &err),
                     OB_EINVAL);
    assert_int_equal(ob_consumer_set_handler(c, dummy_handler, NULL, 0x80,
                                             &err), OB_EINVAL);
    assert_int_equal(ob_consumer_set_handler(c, dummy_handler, NULL,
                                             OB_HANDLER_JSON, &err), 0);
    assert_int_equal(ob_consumer_stats(c, &st, &err), 0);
    assert_int_equal(st.messages, 0);
    st.size = 8;
    assert_int_equal(ob_consumer_stats(c, &st, &err), OB_EINVAL);

    /* Stopping before running, twice, and with NULL is harmless. */
    ob_consumer_stop(c);
    ob_consumer_stop(c);
    ob_consumer_stop(NULL);
    ob_consumer_destroy(c);
    ob_consumer_destroy(NULL);
}

static void offset_key_falls_back_to_topic_hash_when_long(void **state)
{
    char key[OB_KEY_MAX + 1], topic[250];

    (void)state;
    ob__offset_key("orders", 3, 1234, key);
    assert_string_equal(key, "orders/3/1234");

    memset(topic, 't', 249);
    topic[249] = '\0';
    ob__offset_key(topic, 2147483647, INT64_MAX, key);
    assert_true(strlen(key) <= OB_KEY_MAX);
    assert_int_equal(strlen(key), 64 + strlen("/2147483647/") + 19);
    assert_non_null(strstr(key, "/2147483647/9223372036854775807"));

    /* Two long topics that differ only at the end stay apart. */
    {
        char other[OB_KEY_MAX + 1];

        topic[248] = 'u';
        ob__offset_key(topic, 2147483647, INT64_MAX, other);
        assert_string_not_equal(key, other);
    }
}

static void dlq_topic_replaces_the_placeholder(void **state)
{
    char *t;

    (void)state;
    t = ob__dlq_topic("{topic}.dlq", "orders");
    assert_string_equal(t, "orders.dlq");
    ob__free(t);
    t = ob__dlq_topic("dead-{topic}-x", "a");
    assert_string_equal(t, "dead-a-x");
    ob__free(t);
    t = ob__dlq_topic("all-dead", "a");
    assert_string_equal(t, "all-dead");
    ob__free(t);

    assert_true(ob__topic_valid("a.b_c-D9"));
    assert_false(ob__topic_valid(""));
    assert_false(ob__topic_valid(".."));
    assert_false(ob__topic_valid("a b"));
}

static void backoff_doubles_up_to_the_cap(void **state)
{
    ob__settings_t set;
    int f;

    (void)state;
    memset(&set, 0, sizeof(set));
    set.backoff_ms = 100;
    set.backoff_max_ms = 1000;
    for (f = 1; f <= 12; f++) {
        int64_t full = f == 1 ? 100 : f == 2 ? 200 : f == 3 ? 400
                                    : f == 4 ? 800 : 1000;
        int64_t lo = ob__backoff_ms(&set, f, 0);
        int64_t hi = ob__backoff_ms(&set, f, (uint64_t)full / 2);

        assert_int_equal(lo, full / 2);
        assert_int_equal(hi, full);
        assert_true(ob__backoff_ms(&set, f, 987654321) <= full);
    }
    set.backoff_ms = 0;
    assert_int_equal(ob__backoff_ms(&set, 5, 77), 0);
}

static void headers_json_keeps_text_and_encodes_bytes(void **state)
{
    rd_kafka_headers_t *h = rd_kafka_headers_new(4);
    char *json;

    (void)state;
    rd_kafka_header_add(h, "idempotency-key", -1, "k\"1", -1);
    rd_kafka_header_add(h, "bin", -1, "\x00\xff\x01", 3);
    rd_kafka_header_add(h, "none", -1, NULL, 0);
    rd_kafka_header_add(h, "\xc3\x28", -1, "v", 1);
    json = ob__headers_json(h);
    assert_string_equal(json,
                        "[{\"name\":\"idempotency-key\",\"value\":\"k\\\"1\"},"
                        "{\"name\":\"bin\",\"value_base64\":\"AP8B\"},"
                        "{\"name\":\"none\",\"value\":null},"
                        "{\"name_base64\":\"wyg=\",\"value\":\"v\"}]");
    ob__free(json);
    rd_kafka_headers_destroy(h);

    json = ob__headers_json(NULL);
    assert_string_equal(json, "[]");
    ob__free(json);
}

static void consumer_new_survives_every_allocation_failure(void **state)
{
    ob_conf_t *conf = good_conf();
    ob_consumer_t *c;
    long n, live;
    int rc;

    (void)state;
    for (n = 0; n < 1000; n++) {
        c = NULL;
        obt_failalloc_install(n);
        rc = ob_consumer_new_pg(&c, conf, "host=nowhere", NULL);
        ob_consumer_destroy(c);
        live = obt_failalloc_remove();
        assert_int_equal(live, 0);
        if (rc == 0)
            break;
        assert_int_equal(rc, OB_ENOMEM);
    }
    assert_true(n > 3 && n < 1000);
    ob_conf_destroy(conf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(consumer_refuses_incomplete_configuration),
        cmocka_unit_test(consumer_refuses_bad_names),
        cmocka_unit_test(consumer_keys_are_checked_on_set),
        cmocka_unit_test(handler_and_run_check_their_arguments),
        cmocka_unit_test(offset_key_falls_back_to_topic_hash_when_long),
        cmocka_unit_test(dlq_topic_replaces_the_placeholder),
        cmocka_unit_test(backoff_doubles_up_to_the_cap),
        cmocka_unit_test(headers_json_keeps_text_and_encodes_bytes),
        cmocka_unit_test(consumer_new_survives_every_allocation_failure),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
