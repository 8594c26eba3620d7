/*
 * Unit tests of the writer's input checks: every bad input gets its own
 * code and a message naming the field, without any server.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "oncebox/outbox.h"
#include "tests/support/failalloc.h"

static ob_writer_t *writer;

static int writer_up(void **state)
{
    ob_conf_t *conf;

    (void)state;
    if (ob_conf_new(&conf, NULL) != 0)
        return -1;
    if (ob_conf_set(conf, "writer.payload.max.bytes", "64", NULL) != 0 ||
        ob_writer_new(&writer, conf, NULL) != 0) {
        ob_conf_destroy(conf);
        return -1;
    }
    ob_conf_destroy(conf);
    return 0;
}

static int writer_down(void **state)
{
    (void)state;
    ob_writer_destroy(writer);
    return 0;
}

static ob_event_t good_event(void)
{
    ob_event_t ev = OB_EVENT_INIT;

    ev.aggregate_type = "Order";
    ev.aggregate_id = "o-1";
    ev.event_type = "OrderPlaced";
    ev.payload = "{\"total\": 1}";
    return ev;
}

/* Checks ev and expects code with a message containing needle. */
static void expect_refusal(const ob_event_t *ev, int code,
                           const char *needle)
{
    ob_error_t err;
    int rc = ob_writer_check(writer, ev, &err);

    if (rc != code || strstr(err.message, needle) == NULL)
        fail_msg("expected %s mentioning \"%s\", got %s: %s",
                 ob_error_name(code), needle, ob_error_name(rc),
                 rc ? err.message : "(success)");
}

static void a_good_event_passes(void **state)
{
    ob_event_t ev = good_event();

    (void)state;
    assert_int_equal(ob_writer_check(writer, &ev, NULL), 0);
}

static void an_uninitialised_event_is_refused(void **state)
{
    ob_event_t ev = good_event();

    (void)state;
    ev.size = 0;
    expect_refusal(&ev, OB_EINVAL, "OB_EVENT_INIT");
    expect_refusal(NULL, OB_EINVAL, "NULL");
}

static void empty_required_fields_are_named(void **state)
{
    ob_event_t ev;

    (void)state;
    ev = good_event();
    ev.aggregate_type = "";
    expect_refusal(&ev, OB_EEMPTY, "aggregate type");
    ev = good_event();
    ev.aggregate_id = NULL;
    expect_refusal(&ev, OB_EEMPTY, "aggregate id");
    ev = good_event();
    ev.event_type = "";
    expect_refusal(&ev, OB_EEMPTY, "event type");
    ev = good_event();
    ev.payload = NULL;
    expect_refusal(&ev, OB_EEMPTY, "payload");
}

static void names_over_their_column_limits_are_refused(void **state)
{
    char longer[OB_AGGREGATE_ID_MAX + 2];
    ob_event_t ev;

    (void)state;
    memset(longer, 'a', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';

    ev = good_event();
    ev.aggregate_id = longer;
    expect_refusal(&ev, OB_ETOOLONG, "aggregate id is 256 bytes");
    longer[OB_AGGREGATE_ID_MAX] = '\0';
    assert_int_equal(ob_writer_check(writer, &ev, NULL), 0);

    longer[OB_AGGREGATE_TYPE_MAX + 1] = '\0';
    ev = good_event();
    ev.aggregate_type = longer;
    expect_refusal(&ev, OB_ETOOLONG, "aggregate type");
    ev = good_event();
    ev.event_type = longer;
    expect_refusal(&ev, OB_ETOOLONG, "event type");
}

static void a_key_over_the_limit_is_refused(void **state)
{
    char key[OB_KEY_MAX + 2];
    ob_event_t ev = good_event();

    (void)state;
    memset(key, 'k', sizeof(key) - 1);
    key[sizeof(key) - 1] = '\0';
    ev.key = key;
    expect_refusal(&ev, OB_ETOOLONG, "key");
    ev.key = "";
    expect_refusal(&ev, OB_EEMPTY, "key");
}

static void a_payload_over_the_maximum_is_refused(void **state)
{
    char big[80];
    ob_event_t ev = good_event();

    (void)state;
    memset(big, ' ', sizeof(big));
    memcpy(big, "{}", 2);
    big[sizeof(big) - 1] = '\0';
    ev.payload = big;
    expect_refusal(&ev, OB_ETOOBIG, "writer.payload.max.bytes");
}

static void invalid_json_is_refused_with_its_position(void **state)
{
    ob_event_t ev = good_event();

    (void)state;
    ev.payload = "{\"a\": 1,}";
    expect_refusal(&ev, OB_EJSON, "payload: invalid JSON at byte 8");
    ev.payload = "{\"a\": \"\\u0000\"}";
    expect_refusal(&ev, OB_EJSON, "payload");
    ev.payload = "not json";
    expect_refusal(&ev, OB_EJSON, "payload");
}

static void nul_bytes_are_refused_in_every_field(void **state)
{
    ob_event_t ev = good_event();

    (void)state;
    ev.payload = "{\"a\": 1}\0 ";
    ev.payload_len = 10;
    expect_refusal(&ev, OB_ENUL, "payload");
}

static void invalid_utf8_is_refused_in_every_field(void **state)
{
    ob_header_t h = {"x-note", "\xc3("};
    ob_event_t ev;

    (void)state;
    ev = good_event();
    ev.aggregate_id = "o-\xff";
    expect_refusal(&ev, OB_EUTF8, "aggregate id");
    ev = good_event();
    ev.event_type = "Placed\xc0\xaf";
    expect_refusal(&ev, OB_EUTF8, "event type");
    ev = good_event();
    ev.payload = "{\"a\": \"\xed\xa0\x80\"}";
    expect_refusal(&ev, OB_EUTF8, "payload");
    ev = good_event();
    ev.headers = &h;
    ev.header_count = 1;
    expect_refusal(&ev, OB_EUTF8, "x-note");
}

static void topics_follow_kafka_naming_rules(void **state)
{
    char longer[OB_TOPIC_MAX + 2];
    ob_event_t ev = good_event();

    (void)state;
    ev.topic = "orders.v1_x-y";
    assert_int_equal(ob_writer_check(writer, &ev, NULL), 0);
    ev.topic = "orders/v1";
    expect_refusal(&ev, OB_ENAME, "orders/v1");
    ev.topic = "..";
    expect_refusal(&ev, OB_ENAME, "not allowed");
    memset(longer, 't', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    ev.topic = longer;
    expect_refusal(&ev, OB_ETOOLONG, "topic");
}

static void headers_are_checked_and_reserved_names_refused(void **state)
{
    ob_header_t hs[2] = {{"Idempotency-Key", "k"}, {"x", "y"}};
    ob_event_t ev = good_event();

    (void)state;
    ev.headers = hs;
    ev.header_count = 1;
    expect_refusal(&ev, OB_ERESERVED, "Idempotency-Key");

    hs[0].name = "x";
    ev.header_count = 2;
    expect_refusal(&ev, OB_EINVAL, "given twice");

    hs[0].name = "";
    expect_refusal(&ev, OB_EEMPTY, "header name");

    ev.headers = NULL;
    expect_refusal(&ev, OB_EINVAL, "headers is NULL");
}

static void traceparent_must_be_w3c(void **state)
{
    ob_header_t h = {"traceparent",
                     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"};
    ob_event_t ev = good_event();

    (void)state;
    ev.headers = &h;
    ev.header_count = 1;
    assert_int_equal(ob_writer_check(writer, &ev, NULL), 0);
    h.value = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
    expect_refusal(&ev, OB_ENAME, "traceparent");
    h.value = "not-a-trace";
    expect_refusal(&ev, OB_ENAME, "traceparent");
}

static void an_unknown_key_mode_is_refused(void **state)
{
    ob_event_t ev = good_event();

    (void)state;
    ev.key_mode = (ob_key_mode_t)7;
    expect_refusal(&ev, OB_EINVAL, "key mode");
}

static void append_refuses_before_touching_a_connection(void **state)
{
    ob_event_t ev = good_event();
    ob_error_t err;

    (void)state;
    assert_int_equal(ob_writer_append(writer, NULL, &ev, NULL, &err),
                     OB_EINVAL);
    assert_int_equal(ob_writer_append(NULL, NULL, &ev, NULL, &err),
                     OB_EINVAL);
    assert_int_equal(ob_writer_append_batch(writer, NULL, NULL, 0, NULL,
                                            NULL, &err), OB_EINVAL);
}

static void writer_new_survives_every_failed_allocation(void **state)
{
    ob_writer_t *w;
    ob_conf_t *conf;
    long n;
    int rc;

    (void)state;
    for (n = 0;; n++) {
        w = NULL;
        conf = NULL;
        obt_failalloc_install(n);
        rc = ob_conf_new(&conf, NULL);
        if (rc == 0)
            rc = ob_conf_set(conf, "schema", "Odd \"name\"", NULL);
        if (rc == 0)
            rc = ob_writer_new(&w, conf, NULL);
        ob_writer_destroy(w);
        ob_conf_destroy(conf);
        obt_failalloc_remove();
        assert_int_equal(obt_live_blocks, 0);
        if (rc == 0)
            break;
        assert_int_equal(rc, OB_ENOMEM);
    }
    assert_true(n >= 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_good_event_passes),
        cmocka_unit_test(an_uninitialised_event_is_refused),
        cmocka_unit_test(empty_required_fields_are_named),
        cmocka_unit_test(names_over_their_column_limits_are_refused),
        cmocka_unit_test(a_key_over_the_limit_is_refused),
        cmocka_unit_test(a_payload_over_the_maximum_is_refused),
        cmocka_unit_test(invalid_json_is_refused_with_its_position),
        cmocka_unit_test(nul_bytes_are_refused_in_every_field),
        cmocka_unit_test(invalid_utf8_is_refused_in_every_field),
        cmocka_unit_test(topics_follow_kafka_naming_rules),
        cmocka_unit_test(headers_are_checked_and_reserved_names_refused),
        cmocka_unit_test(traceparent_must_be_w3c),
        cmocka_unit_test(an_unknown_key_mode_is_refused),
        cmocka_unit_test(append_refuses_before_touching_a_connection),
        cmocka_unit_test(writer_new_survives_every_failed_allocation),
    };

    return cmocka_run_group_tests(tests, writer_up, writer_down);
}
