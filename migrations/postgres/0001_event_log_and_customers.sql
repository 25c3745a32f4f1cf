-- Every id column uses the "C" collation: ordering (version, event id, customer id) must
-- be byte order, the same as in SQLite and in the Rust projection rules.

-- The event log: append-only, the source of truth. One row per Stripe event id.
CREATE TABLE events (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         TEXT COLLATE "C" NOT NULL UNIQUE,
    account          TEXT COLLATE "C" NOT NULL,
    type             TEXT NOT NULL,
    created          BIGINT NOT NULL,
    livemode         BOOLEAN NOT NULL,
    object_id        TEXT COLLATE "C",
    source           TEXT NOT NULL,
    payload          TEXT NOT NULL,
    received_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- What the projection took from the payload, so a rebuild need not parse it again.
    customer_id      TEXT COLLATE "C",
    email            TEXT,
    email_key        TEXT COLLATE "C",
    name             TEXT,
    customer_created BIGINT,
    version          TEXT COLLATE "C",
    projection_error TEXT,
    -- Which projection code extracted the columns above (projection::PROJECTION_VERSION);
    -- a rebuild re-reads the payload of rows written by an older one.
    projection_version BIGINT NOT NULL
);


-- The read model: each customer's winning snapshot, deleted ones kept as tombstones so
-- that no late update can bring them back.
CREATE TABLE customers (
    account            TEXT COLLATE "C" NOT NULL,
    livemode           BOOLEAN NOT NULL,
    customer_id        TEXT COLLATE "C" NOT NULL,
    email              TEXT,
    email_key          TEXT COLLATE "C",
    name               TEXT,
    customer_created   BIGINT NOT NULL,
    deleted            BOOLEAN NOT NULL,
    version            TEXT COLLATE "C" NOT NULL,
    last_event_id      TEXT COLLATE "C" NOT NULL,
    last_event_created BIGINT NOT NULL,
    PRIMARY KEY (account, livemode, customer_id)
);

-- Checkout's key: (account, livemode, email), canonical customer first.
CREATE INDEX customers_by_email
    ON customers (account, livemode, email_key, customer_created, customer_id)
    WHERE deleted = FALSE AND email_key IS NOT NULL;
