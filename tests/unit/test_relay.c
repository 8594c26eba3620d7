/*
 * The relay's decisions that need no server (outbox/relay_batch.c):
 * topic routing, which claimed rows a batch produces, how a failure
 * counts, backoff, and masking secrets.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "outbox/relay_internal.h"

static void topic_comes_from_the_template_in_lower_case(void **state)
{
    char out[OB__TOPIC_SIZE];
    ob_error_t err;

    (void)state;
    assert_int_equal(ob__relay_topic("{aggregate_type}-events", "Order", NULL,
                                     out, sizeof(out), &err), 0);
    assert_string_equal(out, "order-events");
    assert_int_equal(ob__relay_topic("x.{aggregate_type}.{aggregate_type}",
                                     "AB_c", NULL, out, sizeof(out), &err),
                     0);
    assert_string_equal(out, "x.ab_c.ab_c");
    assert_int_equal(ob__relay_topic("fixed", "Order", NULL, out,
                                     sizeof(out), &err), 0);
    assert_string_equal(out, "fixed");
}

static void topic_of_the_row_wins_over_the_template(void **state)
{
    char out[OB__TOPIC_SIZE];
    ob_error_t err;

    (void)state;
    assert_int_equal(ob__relay_topic("{aggregate_type}-events", "Order",
                                     "Own.Topic", out, sizeof(out), &err),
                     0);
    assert_string_equal(out, "Own.Topic");
}

static void topic_names_kafka_refuses_are_errors(void **state)
{
    char out[OB__TOPIC_SIZE], type[300];
    ob_error_t err;

    (void)state;
    assert_int_equal(ob__relay_topic("{aggregate_type}-events", "Sales Order",
                                     NULL, out, sizeof(out), &err), OB_ENAME);
    assert_non_null(strstr(err.message, "sales order-events"));
    assert_int_equal(ob__relay_topic("{aggregate_type}", "..", NULL, out,
                                     sizeof(out), &err), OB_ENAME);
    assert_int_equal(ob__relay_topic("{aggregate_type}", "", NULL, out,
                                     sizeof(out), &err), OB_EEMPTY);
    assert_int_equal(ob__relay_topic("t", "x", "caf\xc3\xa9", out,
                                     sizeof(out), &err), OB_ENAME);
    memset(type, 'a', sizeof(type) - 1);
    type[sizeof(type) - 1] = '\0';
    assert_int_equal(ob__relay_topic("{aggregate_type}", type, NULL, out,
                                     sizeof(out), &err), OB_ETOOLONG);
    type[249] = '\0';
    assert_int_equal(ob__relay_topic("{aggregate_type}", type, NULL, out,
                                     sizeof(out), &err), 0);
    assert_int_equal(ob__relay_template_check("bad template", &err),
                     OB_ECONF);
    assert_non_null(strstr(err.message, "relay.topic.template"));
    assert_int_equal(ob__relay_template_check("{aggregate_type}-events",
                                              &err), 0);
}

static ob__relay_row_t row(int rn, const char *agg, const char *topic)
{
    ob__relay_row_t r;

    memset(&r, 0, sizeof(r));
    r.rn = rn;
    r.aggregate_id = agg;
    r.aggregate_id_len = strlen(agg);
    snprintf(r.topic, sizeof(r.topic), "%s", topic);
    r.partition = -1;
    return r;
}

static void plan_takes_every_row_of_a_clean_batch(void **state)
{
    ob__relay_row_t rows[4] = {row(1, "a", "t"), row(2, "b", "t"),
                               row(3, "a", "t"), row(4, "c", "u")};
    size_t i;

    (void)state;
    assert_int_equal(ob__relay_plan(rows, 4), 4);
    for (i = 0; i < 4; i++)
        assert_int_equal(rows[i].state, OB__ROW_INFLIGHT);
}

/* A candidate someone else held locked is missing: nothing after it. */
static void plan_holds_everything_after_a_skipped_candidate(void **state)
{
    ob__relay_row_t rows[4] = {row(1, "a", "t"), row(2, "b", "t"),
                               row(4, "c", "t"), row(5, "a", "t")};

    (void)state;
    assert_int_equal(ob__relay_plan(rows, 4), 2);
    assert_int_equal(rows[0].state, OB__ROW_INFLIGHT);
    assert_int_equal(rows[1].state, OB__ROW_INFLIGHT);
    assert_int_equal(rows[2].state, OB__ROW_HELD);
    assert_int_equal(rows[3].state, OB__ROW_HELD);

    rows[0].rn = 2;
    assert_int_equal(ob__relay_plan(rows, 4), 0);
}

/* Kafka orders within a topic only: a switch waits for the next batch. */
static void plan_stops_an_aggregate_at_a_change_of_topic(void **state)
{
    ob__relay_row_t rows[5] = {row(1, "a", "t"), row(2, "a", "own"),
                               row(3, "b", "t"), row(4, "a", "t"),
                               row(5, "b", "t")};

    (void)state;
    assert_int_equal(ob__relay_plan(rows, 5), 3);
    assert_int_equal(rows[0].state, OB__ROW_INFLIGHT);
    assert_int_equal(rows[1].state, OB__ROW_HELD);
    assert_int_equal(rows[2].state, OB__ROW_INFLIGHT);
    assert_int_equal(rows[3].state, OB__ROW_HELD);
    assert_int_equal(rows[4].state, OB__ROW_INFLIGHT);
}

/* Aggregate ids are compared as bytes, not as C strings. */
static void plan_tells_aggregates_apart_by_every_byte(void **state)
{
    ob__relay_row_t rows[3] = {row(1, "ab", "t"), row(2, "ab", "u"),
                               row(3, "abc", "u")};

    (void)state;
    rows[2].aggregate_id_len = 3;
    assert_int_equal(ob__relay_plan(rows, 3), 2);
    assert_int_equal(rows[1].state, OB__ROW_HELD);
    assert_int_equal(rows[2].state, OB__ROW_INFLIGHT);
}

static void errors_are_outages_row_faults_or_permanent(void **state)
{
    (void)state;
    assert_int_equal(ob__relay_err_class(RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
                                         1), OB__ERR_PERMANENT);
    assert_int_equal(ob__relay_err_class(RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
                                         0), OB__ERR_ROW);
    assert_int_equal(ob__relay_err_class(RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC, 0),
                     OB__ERR_PERMANENT);
    assert_int_equal(
        ob__relay_err_class(RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED, 0),
        OB__ERR_PERMANENT);
    assert_int_equal(ob__relay_err_class(RD_KAFKA_RESP_ERR__MSG_TIMED_OUT, 0),
                     OB__ERR_OUTAGE);
    assert_int_equal(ob__relay_err_class(RD_KAFKA_RESP_ERR__PURGE_INFLIGHT, 0),
                     OB__ERR_OUTAGE);
    assert_int_equal(
        ob__relay_err_class(RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS, 0),
        OB__ERR_OUTAGE);
    assert_int_equal(ob__relay_err_class(RD_KAFKA_RESP_ERR_INVALID_RECORD, 0),
                     OB__ERR_ROW);
}

static ob__relay_row_t failed(const char *agg, int32_t partition, int err,
                              size_t len)
{
    ob__relay_row_t r = row(1, agg, "t");

    r.state = OB__ROW_FAILED;
    r.err = err;
    r.err_class = ob__relay_err_class(err, 0);
    r.partition = partition;
    r.payload_len = len;
    return r;
}

/* A broker's "too large" fails a whole request; the largest is blamed. */
static void settle_parks_only_the_largest_refused_row(void **state)
{
    ob__relay_row_t rows[4] = {
        failed("a", 0, RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, 10),
        failed("b", 0, RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, 900),
        failed("c", 1, RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, 20),
        failed("d", 0, RD_KAFKA_RESP_ERR__MSG_TIMED_OUT, 5000)};

    (void)state;
    assert_int_equal(ob__relay_settle(rows, 4), 0);
    assert_int_equal(rows[0].err_class, OB__ERR_ROW);
    assert_int_equal(rows[1].err_class, OB__ERR_PERMANENT);
    assert_int_equal(rows[2].err_class, OB__ERR_PERMANENT);
    assert_int_equal(rows[3].err_class, OB__ERR_OUTAGE);
}

static void settle_reports_a_row_delivered_after_a_failed_one(void **state)
{
    ob__relay_row_t rows[3] = {failed("a", 0, RD_KAFKA_RESP_ERR__FATAL, 1),
                               row(2, "b", "t"), row(3, "a", "t")};

    (void)state;
    rows[1].state = OB__ROW_DELIVERED;
    rows[2].state = OB__ROW_FAILED;
    assert_int_equal(ob__relay_settle(rows, 3), 0);
    rows[2].state = OB__ROW_DELIVERED;
    assert_int_equal(ob__relay_settle(rows, 3), 1);
}

static void backoff_doubles_up_to_the_limit_with_jitter(void **state)
{
    uint32_t r;

    (void)state;
    for (r = 0; r < 1000; r += 7) {
        int64_t d1 = ob__relay_backoff_ms(1, 100, 10000, r);
        int64_t d3 = ob__relay_backoff_ms(3, 100, 10000, r);
        int64_t dmax = ob__relay_backoff_ms(40, 100, 10000, r);

        assert_true(d1 >= 50 && d1 <= 100);
        assert_true(d3 >= 200 && d3 <= 400);
        assert_true(dmax >= 5000 && dmax <= 10000);
    }
    assert_int_equal(ob__relay_backoff_ms(1, 100, 10000, 0), 50);
    assert_int_equal(ob__relay_backoff_ms(1, 100, 10000, 50), 100);
    assert_int_equal(ob__relay_backoff_ms(1, 1, 1, 12345), 1);
}

static void rows_park_for_permanent_errors_or_their_own_retries(void **state)
{
    ob__relay_row_t r = failed("a", 0, RD_KAFKA_RESP_ERR_INVALID_RECORD, 1);

    (void)state;
    r.retry_count = 8;
    assert_false(ob__relay_parks(&r, 10));
    r.retry_count = 9;
    assert_true(ob__relay_parks(&r, 10));

    r = failed("a", 0, RD_KAFKA_RESP_ERR__TRANSPORT, 1);
    r.retry_count = 1000;
    assert_false(ob__relay_parks(&r, 10));

    r = failed("a", 0, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED, 1);
    assert_true(ob__relay_parks(&r, 10));
    r.state = OB__ROW_DELIVERED;
    assert_false(ob__relay_parks(&r, 10));
}

static void mask_hides_every_secret(void **state)
{
    char *secrets[4] = {"s3cret", NULL, "", "pw"};
    char *stars[1] = {"*"};
    char s[64];

    (void)state;
    snprintf(s, sizeof(s), "a s3cret and s3crets3cret, pw!");
    ob__relay_mask(s, sizeof(s), secrets, 4);
    assert_string_equal(s, "a *** and ******, ***!");

    /* A secret inside the stars cannot make it loop. */
    snprintf(s, sizeof(s), "x*y");
    ob__relay_mask(s, sizeof(s), stars, 1);
    assert_string_equal(s, "x***y");

    /* No room to grow: the secret's own bytes become stars. */
    snprintf(s, 6, "pwpwp");
    ob__relay_mask(s, 6, secrets, 4);
    assert_null(strstr(s, "pw"));
    assert_int_equal(strlen(s), 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(topic_comes_from_the_template_in_lower_case),
        cmocka_unit_test(topic_of_the_row_wins_over_the_template),
        cmocka_unit_test(topic_names_kafka_refuses_are_errors),
        cmocka_unit_test(plan_takes_every_row_of_a_clean_batch),
        cmocka_unit_test(plan_holds_everything_after_a_skipped_candidate),
        cmocka_unit_test(plan_stops_an_aggregate_at_a_change_of_topic),
        cmocka_unit_test(plan_tells_aggregates_apart_by_every_byte),
        cmocka_unit_test(errors_are_outages_row_faults_or_permanent),
        cmocka_unit_test(settle_parks_only_the_largest_refused_row),
        cmocka_unit_test(settle_reports_a_row_delivered_after_a_failed_one),
        cmocka_unit_test(backoff_doubles_up_to_the_limit_with_jitter),
        cmocka_unit_test(
            rows_park_for_permanent_errors_or_their_own_retries),
        cmocka_unit_test(mask_hides_every_secret),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
