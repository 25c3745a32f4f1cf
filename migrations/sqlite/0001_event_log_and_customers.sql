-- The event log: append-only, the source of truth. One row per Stripe event id.
CREATE TABLE events (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT    NOT NULL UNIQUE,
    account          TEXT    NOT NULL,
    type             TEXT    NOT NULL,
    created          INTEGER NOT NULL,
    livemode         BOOLEAN NOT NULL,
    object_id        TEXT,
    source           TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    received_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- What the projection took from the payload, so a rebuild need not parse it again.
    customer_id      TEXT,
    email            TEXT,
    email_key        TEXT,
    name             TEXT,
    customer_created INTEGER,
    version          TEXT,
    projection_error TEXT,
    -- Which projection code extracted the columns above (projection::PROJECTION_VERSION);
    -- a rebuild re-reads the payload of rows written by an older one.
    projection_version INTEGER NOT NULL
);


-- The read model: each customer's winning snapshot, deleted ones kept as tombstones so
-- that no late update can bring them back.
CREATE TABLE customers (
    account            TEXT    NOT NULL,
    livemode           BOOLEAN NOT NULL,
    customer_id        TEXT    NOT NULL,
    email              TEXT,
    email_key          TEXT,
    name               TEXT,
    customer_created   INTEGER NOT NULL,
    deleted            BOOLEAN NOT NULL,
    version            TEXT    NOT NULL,
    last_event_id      TEXT    NOT NULL,
    last_event_created INTEGER NOT NULL,
    PRIMARY KEY (account, livemode, customer_id)
);

-- Checkout's key: (account, livemode, email), canonical customer first.
CREATE INDEX customers_by_email
    ON customers (account, livemode, email_key, customer_created, customer_id)
    WHERE deleted = FALSE AND email_key IS NOT NULL;
