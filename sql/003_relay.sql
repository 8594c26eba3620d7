-- The polling relay: the lane count its instances share, and the indexes
-- its claim needs to keep each aggregate's events in order cheaply.

-- One row: how many lane groups the relays of this schema split the
-- outbox into (outbox.lane % lanes). Every relay checks it at start and
-- refuses to run with another count, because two relays that split the
-- lanes differently could both publish one aggregate. The first relay to
-- start records its count; change it only while no relay runs.
CREATE TABLE @SCHEMA@.relay_config (
    singleton boolean NOT NULL DEFAULT true,
    lanes integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT relay_config_pkey PRIMARY KEY (singleton),
    CONSTRAINT relay_config_singleton_check CHECK (singleton),
    CONSTRAINT relay_config_lanes_check CHECK (lanes BETWEEN 1 AND 1024)
);

COMMENT ON TABLE @SCHEMA@.relay_config IS
    'oncebox: lane groups shared by every relay of this schema';

-- The claim walks pending rows in append order and stops after a batch,
-- however large the table of published rows is.
CREATE INDEX outbox_pending_seq_idx ON @SCHEMA@.outbox (seq)
    WHERE state = 'pending';

-- A row may be claimed only when no earlier row of its aggregate is
-- waiting for a retry. A pending row that has never been held back has
-- next_attempt_at = created_at (both default to the inserting
-- transaction's now()) and is due once committed; only rows the relay
-- delayed, or an operator replayed, have a later next_attempt_at. So
-- this index holds just the rows that can be waiting, and the claim's
-- check per row is a probe of a nearly empty index.
CREATE INDEX outbox_waiting_idx ON @SCHEMA@.outbox (aggregate_id, seq)
    WHERE state = 'pending' AND next_attempt_at > created_at;

-- With relay.park.blocks.aggregate, a parked row holds back the later
-- rows of its aggregate: the claim probes this index for each row.
CREATE INDEX outbox_parked_aggregate_idx ON @SCHEMA@.outbox
    (aggregate_id, seq) WHERE state = 'parked';
