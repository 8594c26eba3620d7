/*
 * The wire contract: what a Kafka message published by oncebox looks like,
 * shared by the producer half, the consumer half and any other client.
 *
 * - key: the aggregate id, so one aggregate stays on one partition and in
 *   order;
 * - value: the event payload, JSON, exactly as appended;
 * - headers: the names below, each value UTF-8 text; "traceparent" (W3C
 *   trace context) when the writer was given one, and any other header
 *   the writer was given;
 * - topic: the event's own topic when it has one, else the relay's topic
 *   template, by default the aggregate type lower-cased followed by
 *   "-events" ("Order" -> "order-events").
 */
#ifndef ONCEBOX_WIRE_H
#define ONCEBOX_WIRE_H

#define OB_HEADER_IDEMPOTENCY_KEY "idempotency-key"
#define OB_HEADER_EVENT_ID "event-id"
#define OB_HEADER_EVENT_TYPE "event-type"
#define OB_HEADER_AGGREGATE_TYPE "aggregate-type"
#define OB_HEADER_AGGREGATE_ID "aggregate-id"
#define OB_HEADER_CONTENT_TYPE "content-type"
#define OB_HEADER_TRACEPARENT "traceparent"

/* The event id again, under the name Debezium's outbox router uses, so
 * consumers written for Debezium read oncebox's messages unchanged. */
#define OB_HEADER_ID "id"

#define OB_CONTENT_TYPE_JSON "application/json"

/* Default topic template: {aggregate_type} is the lower-cased type. */
#define OB_TOPIC_TEMPLATE_DEFAULT "{aggregate_type}-events"

#endif
