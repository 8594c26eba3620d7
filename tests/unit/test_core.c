/*
 * Unit tests of the core: error codes, configuration, text checks and the
 * allocation hooks.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"
#include "core/internal.h"
#include "tests/support/failalloc.h"

static void error_names_and_messages_come_from_one_list(void **state)
{
    (void)state;
    assert_string_equal(ob_error_name(OB_EJSON), "OB_EJSON");
    assert_string_equal(ob_error_name(0), "OB_OK");
    assert_string_equal(ob_error_name(-9999), "OB_E?");
    assert_string_equal(ob_strerror(OB_ENOTXN),
                        "connection is not inside a usable transaction");
    assert_string_equal(ob_strerror(-9999), "unknown error code");
}

static void error_set_fills_every_field_and_trims_newlines(void **state)
{
    ob_error_t err;
    int rc;

    (void)state;
    memset(&err, 0x5a, sizeof(err));
    rc = ob__error_set(&err, OB_EINVAL, "bad %s\n\n", "thing");
    assert_int_equal(rc, OB_EINVAL);
    assert_int_equal(err.code, OB_EINVAL);
    assert_int_equal(err.domain, OB_DOMAIN_ONCEBOX);
    assert_int_equal(err.native, 0);
    assert_int_equal(err.flags, 0);
    assert_string_equal(err.sqlstate, "");
    assert_string_equal(err.message, "bad thing");
    assert_false(ob_error_is_retriable(&err));
    assert_false(ob_error_is_retriable(NULL));

    ob__error_prefix(&err, "event %d", 3);
    assert_string_equal(err.message, "event 3: bad thing");
    assert_int_equal(ob__error_set(NULL, OB_ENOMEM, "x"), OB_ENOMEM);
}

static void system_errors_name_the_call_and_say_retriable(void **state)
{
    ob_error_t err;

    (void)state;
    ob__error_sys(&err, 4 /* EINTR */, "read");
    assert_int_equal(err.code, OB_ESYS);
    assert_int_equal(err.domain, OB_DOMAIN_SYSTEM);
    assert_int_equal(err.native, 4);
    assert_true(ob_error_is_retriable(&err));
    assert_non_null(strstr(err.message, "read: "));
}

static void conf_gives_defaults_and_refuses_unknown_keys(void **state)
{
    ob_conf_t *conf;
    ob_error_t err;

    (void)state;
    assert_int_equal(ob_conf_new(&conf, &err), 0);
    assert_string_equal(ob_conf_get(conf, "schema"), "oncebox");
    assert_string_equal(ob_conf_get(conf, "writer.key.mode"), "event-id");
    assert_null(ob_conf_get(conf, "no.such.key"));

    assert_int_equal(ob_conf_set(conf, "no.such.key", "1", &err), OB_ECONF);
    assert_non_null(strstr(err.message, "no.such.key"));
    ob_conf_destroy(conf);
}

static void conf_validates_values_and_keeps_the_old_one(void **state)
{
    ob_conf_t *conf;
    ob_error_t err;

    (void)state;
    assert_int_equal(ob_conf_new(&conf, NULL), 0);
    assert_int_equal(ob_conf_set(conf, "writer.payload.max.bytes", "4096",
                                 &err), 0);
    assert_int_equal(ob__conf_int(conf, "writer.payload.max.bytes"), 4096);

    assert_int_equal(ob_conf_set(conf, "writer.payload.max.bytes", "12x",
                                 &err), OB_ECONF);
    assert_int_equal(ob_conf_set(conf, "writer.payload.max.bytes", "0",
                                 &err), OB_ECONF);
    assert_non_null(strstr(err.message, "writer.payload.max.bytes"));
    assert_int_equal(ob_conf_set(conf, "writer.key.mode", "random", &err),
                     OB_ECONF);
    assert_int_equal(ob_conf_set(conf, "schema", "", &err), OB_ECONF);
    assert_int_equal(ob__conf_int(conf, "writer.payload.max.bytes"), 4096);

    assert_int_equal(ob_conf_set(conf, "writer.payload.max.bytes", NULL,
                                 &err), 0);
    assert_string_equal(ob_conf_get(conf, "writer.payload.max.bytes"),
                        "1048576");
    ob_conf_destroy(conf);
}

static int collect_kafka(void *opaque, const char *name, const char *value)
{
    ob__buf_t *b = opaque;

    ob__buf_puts(b, name);
    ob__buf_putc(b, '=');
    ob__buf_puts(b, value);
    ob__buf_putc(b, ';');
    return 0;
}

static void conf_passes_kafka_properties_through(void **state)
{
    ob__buf_t b = OB__BUF_INIT;
    ob_conf_t *conf, *copy;

    (void)state;
    assert_int_equal(ob_conf_new(&conf, NULL), 0);
    assert_int_equal(ob_conf_set(conf, "kafka.linger.ms", "5", NULL), 0);
    assert_int_equal(ob_conf_set(conf, "kafka.acks", "all", NULL), 0);
    assert_int_equal(ob_conf_set(conf, "kafka.linger.ms", "7", NULL), 0);
    assert_string_equal(ob_conf_get(conf, "kafka.linger.ms"), "7");
    assert_int_equal(ob_conf_set(conf, "kafka.", "x", NULL), OB_ECONF);

    assert_int_equal(ob_conf_dup(conf, &copy, NULL), 0);
    assert_int_equal(ob_conf_set(conf, "kafka.acks", NULL, NULL), 0);
    assert_null(ob_conf_get(conf, "kafka.acks"));

    ob__conf_each_kafka(copy, collect_kafka, &b);
    assert_string_equal(b.data, "linger.ms=7;acks=all;");
    ob__buf_free(&b);
    ob_conf_destroy(copy);
    ob_conf_destroy(conf);
}

static void conf_survives_every_failed_allocation(void **state)
{
    ob_conf_t *conf, *copy;
    long n;
    int rc;

    (void)state;
    for (n = 0;; n++) {
        conf = copy = NULL;
        obt_failalloc_install(n);
        rc = ob_conf_new(&conf, NULL);
        if (rc == 0)
            rc = ob_conf_set(conf, "kafka.acks", "all", NULL);
        if (rc == 0)
            rc = ob_conf_set(conf, "schema", "s", NULL);
        if (rc == 0)
            rc = ob_conf_dup(conf, &copy, NULL);
        ob_conf_destroy(copy);
        ob_conf_destroy(conf);
        assert_int_equal(obt_live_blocks, 0);
        obt_failalloc_remove();
        if (rc == 0)
            break;
        assert_int_equal(rc, OB_ENOMEM);
    }
    assert_true(n > 3);
}

static void utf8_check_refuses_malformed_sequences(void **state)
{
    (void)state;
    assert_true(ob__utf8_valid("plain", 5));
    assert_true(ob__utf8_valid("\xc3\xa9", 2));         /* é */
    assert_true(ob__utf8_valid("\xf0\x9f\x98\x80", 4)); /* emoji */
    assert_false(ob__utf8_valid("\xc3", 1));            /* cut short */
    assert_false(ob__utf8_valid("\xc0\xaf", 2));        /* overlong */
    assert_false(ob__utf8_valid("\xe0\x80\xaf", 3));    /* overlong */
    assert_false(ob__utf8_valid("\xed\xa0\x80", 3));    /* surrogate */
    assert_false(ob__utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
    assert_false(ob__utf8_valid("\xff", 1));
    assert_false(ob__utf8_valid("a\x80", 2));
}

static void text_check_names_the_field(void **state)
{
    ob_error_t err;

    (void)state;
    assert_int_equal(ob__check_text("aggregate id", "", 0, 10, &err),
                     OB_EEMPTY);
    assert_string_equal(err.message, "aggregate id is empty");
    assert_int_equal(ob__check_text("aggregate id", NULL, 0, 10, &err),
                     OB_EEMPTY);
    assert_int_equal(ob__check_text("event type", "a\0b", 3, 10, &err),
                     OB_ENUL);
    assert_non_null(strstr(err.message, "event type"));
    assert_int_equal(ob__check_text("key", "abcdef", 6, 5, &err),
                     OB_ETOOLONG);
    assert_string_equal(err.message,
                        "key is 6 bytes long, the limit is 5");
    assert_int_equal(ob__check_text("key", "\xff", 1, 5, &err), OB_EUTF8);
    assert_int_equal(ob__check_text("key", "ok", 2, 5, &err), 0);
}

static void sql_identifiers_are_quoted_and_quotes_doubled(void **state)
{
    char *s;

    (void)state;
    s = ob__sql_ident("oncebox");
    assert_string_equal(s, "\"oncebox\"");
    ob__free(s);
    s = ob__sql_ident("Odd \"Schema\"");
    assert_string_equal(s, "\"Odd \"\"Schema\"\"\"");
    ob__free(s);
}

static void buffer_escapes_json_and_array_elements(void **state)
{
    ob__buf_t b = OB__BUF_INIT;

    (void)state;
    ob__buf_json_string(&b, "a\"b\\c\n\x01", 7);
    assert_string_equal(b.data, "\"a\\\"b\\\\c\\u000a\\u0001\"");
    ob__buf_reset(&b);
    ob__buf_array_elem(&b, "{\"k\": \"v\\\\\"}", 12);
    assert_string_equal(b.data, "\"{\\\"k\\\": \\\"v\\\\\\\\\\\"}\"");
    ob__buf_free(&b);
}

static void version_matches_the_header(void **state)
{
    (void)state;
    assert_int_equal(ob_version(), OB_VERSION_NUMBER);
    assert_string_equal(ob_version_string(), OB_VERSION_STRING);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(error_names_and_messages_come_from_one_list),
        cmocka_unit_test(error_set_fills_every_field_and_trims_newlines),
        cmocka_unit_test(system_errors_name_the_call_and_say_retriable),
        cmocka_unit_test(conf_gives_defaults_and_refuses_unknown_keys),
        cmocka_unit_test(conf_validates_values_and_keeps_the_old_one),
        cmocka_unit_test(conf_passes_kafka_properties_through),
        cmocka_unit_test(conf_survives_every_failed_allocation),
        cmocka_unit_test(utf8_check_refuses_malformed_sequences),
        cmocka_unit_test(text_check_names_the_field),
        cmocka_unit_test(sql_identifiers_are_quoted_and_quotes_doubled),
        cmocka_unit_test(buffer_escapes_json_and_array_elements),
        cmocka_unit_test(version_matches_the_header),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
