/*
 * oncebox: effectively-once event delivery between services.
 *
 * The umbrella header: everything public. Each part has its own header
 * whose top comment is its manual:
 *
 *   core.h    version, errors, logging, configuration, allocation
 *   wire.h    what a published Kafka message looks like
 *   dedup.h   idempotency keys (UUIDv7 event ids, content keys, JSON)
 *             and the key store on PostgreSQL or LMDB
 *   schema.h  the SQL schema and its migrations
 *   outbox.h  the outbox writer, used inside the service's transaction;
 *             status, parked rows and the retention purge
 *   relay.h   the polling relay: outbox rows to Kafka, in order
 *   inbox.h   the consumer: handler, inbox claim and offsets in one
 *             transaction
 *
 * Delivery through Kafka is at-least-once; the consumer's inbox makes
 * its effects happen once. Order holds per aggregate only.
 */
#ifndef ONCEBOX_H
#define ONCEBOX_H

#include "oncebox/core.h"
#include "oncebox/wire.h"
#include "oncebox/dedup.h"
#include "oncebox/schema.h"
#include "oncebox/outbox.h"
#include "oncebox/relay.h"
#include "oncebox/inbox.h"

#endif
