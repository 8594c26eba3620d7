-- The outbox: one row per appended event, written by the service inside
-- its own transaction and read by the relay after commit.
--
-- @SCHEMA@ is the quoted schema identifier; the migrate call substitutes
-- it. Every object is qualified with it, and the function body, which is
-- resolved each time it runs, qualifies what it calls with pg_catalog, so
-- nothing depends on the search_path of whoever inserts.

CREATE TABLE @SCHEMA@.outbox (
    -- The writer supplies a UUIDv7, so ids are time-ordered and the
    -- primary key index grows at its right edge.
    id uuid NOT NULL,
    aggregate_type text NOT NULL,
    aggregate_id text NOT NULL,
    event_type text NOT NULL,
    payload jsonb NOT NULL,
    idempotency_key text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    retry_count integer NOT NULL DEFAULT 0,
    last_error text,
    -- Append order. Identity values are unique by construction, so seq
    -- has no unique index of its own: every append would pay for it.
    -- Only its order within one aggregate means anything:
    -- values are taken at insert time, not at commit, so a relay must
    -- never treat a gap as "nothing more to come".
    seq bigint GENERATED ALWAYS AS IDENTITY,
    topic text,
    headers jsonb,
    -- The relay's unit of ownership. Hashing under the "C" collation
    -- hashes the bytes, so the lane does not depend on the database's
    -- collation or on a collation library's version.
    lane integer GENERATED ALWAYS AS
        ((pg_catalog.hashtextextended(aggregate_id COLLATE "C", 0)
          & 1023)::integer) STORED,
    state text NOT NULL DEFAULT 'pending',
    next_attempt_at timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT outbox_pkey PRIMARY KEY (id),
    CONSTRAINT outbox_idempotency_key_key UNIQUE (idempotency_key),
    CONSTRAINT outbox_aggregate_type_check
        CHECK (octet_length(aggregate_type) BETWEEN 1 AND 100),
    CONSTRAINT outbox_aggregate_id_check
        CHECK (octet_length(aggregate_id) BETWEEN 1 AND 255),
    CONSTRAINT outbox_event_type_check
        CHECK (octet_length(event_type) BETWEEN 1 AND 100),
    CONSTRAINT outbox_idempotency_key_check
        CHECK (octet_length(idempotency_key) BETWEEN 1 AND 255),
    CONSTRAINT outbox_retry_count_check CHECK (retry_count >= 0),
    -- Kafka's own rule for topic names. The length is checked apart:
    -- PostgreSQL's regex engine expands a bounded repeat such as
    -- {1,249} into that many states, which made this check cost about
    -- 50 us per inserted row; with '+' it costs half a microsecond.
    CONSTRAINT outbox_topic_check
        CHECK (topic IS NULL
               OR (octet_length(topic) BETWEEN 1 AND 249
                   AND topic ~ '^[A-Za-z0-9._-]+$'
                   AND topic NOT IN ('.', '..'))),
    -- Header values travel as Kafka header bytes: text only.
    CONSTRAINT outbox_headers_check
        CHECK (headers IS NULL
               OR (jsonb_typeof(headers) = 'object'
                   AND NOT jsonb_path_exists(
                       headers, '$.* ? (@.type() != "string")'))),
    CONSTRAINT outbox_state_check
        CHECK (state IN ('pending', 'published', 'parked')),
    -- The retention purge finds published rows by published_at alone.
    CONSTRAINT outbox_published_at_check
        CHECK ((state = 'published') = (published_at IS NOT NULL))
);

COMMENT ON TABLE @SCHEMA@.outbox IS
    'oncebox: events appended by services, published by the relay';
COMMENT ON COLUMN @SCHEMA@.outbox.seq IS
    'append order; meaningful within one aggregate only';
COMMENT ON COLUMN @SCHEMA@.outbox.topic IS
    'NULL: the relay routes by aggregate type';
COMMENT ON COLUMN @SCHEMA@.outbox.lane IS
    'hash bucket of aggregate_id, 0..1023; a lane has one relay at a time';
COMMENT ON COLUMN @SCHEMA@.outbox.state IS
    'pending, published, or parked (gave up; waits for an operator)';

-- The claim walks one lane's pending rows in append order, so it meets
-- an aggregate's waiting row before that aggregate's later rows, and
-- stops after a batch however large the backlog; next_attempt_at is a
-- filter on that walk, not an order.
CREATE INDEX outbox_claim_idx ON @SCHEMA@.outbox (lane, seq)
    WHERE state = 'pending';

CREATE INDEX outbox_published_at_idx ON @SCHEMA@.outbox (published_at)
    WHERE published_at IS NOT NULL;

CREATE INDEX outbox_parked_idx ON @SCHEMA@.outbox (seq)
    WHERE state = 'parked';

CREATE INDEX outbox_aggregate_idx ON @SCHEMA@.outbox (aggregate_id, seq);

-- Wakes relays when rows commit. Statement level, so a batch insert costs
-- one pg_notify; PostgreSQL also folds equal notifications of one
-- transaction into one. The channel is the table's schema name followed by
-- ".outbox". Channel names are limited to 63 bytes, so a schema name longer
-- than 56 bytes is cut at a character boundary; two schemas that share
-- such a prefix share a channel, which costs a spurious wake-up only.
CREATE FUNCTION @SCHEMA@.outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    channel text := TG_TABLE_SCHEMA;
BEGIN
    WHILE pg_catalog.octet_length(channel) > 56 LOOP
        channel := pg_catalog.left(channel, -1);
    END LOOP;
    PERFORM pg_catalog.pg_notify(channel || '.outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify
    AFTER INSERT ON @SCHEMA@.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION @SCHEMA@.outbox_notify();
