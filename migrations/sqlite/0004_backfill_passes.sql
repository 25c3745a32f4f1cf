-- Backfill: where each (account, mode) pass stands, so an interrupted pass resumes after
-- its last committed page, and whether one has ever completed (then `ensure` trusts the
-- read model for that account and mode).
CREATE TABLE backfill_passes (
    account           TEXT    NOT NULL,
    livemode          BOOLEAN NOT NULL,
    -- The current pass's number, from 1: part of each snapshot's event id, so a page read
    -- again within one pass records nothing twice.
    pass              INTEGER NOT NULL,
    -- The last customer id of the last committed page; NULL before the first page.
    position          TEXT,
    pages             INTEGER NOT NULL,
    customers         INTEGER NOT NULL,
    started_at        INTEGER NOT NULL,
    -- When the current pass completed; NULL while it runs or after an interruption.
    completed_at      INTEGER,
    -- When a pass last completed, kept when a new pass starts.
    last_completed_at INTEGER,
    PRIMARY KEY (account, livemode)
);

-- The customers the current pass has listed: those held live but not listed are fetched
-- one by one once the listing is complete (deletions).
CREATE TABLE backfill_seen (
    account     TEXT    NOT NULL,
    livemode    BOOLEAN NOT NULL,
    customer_id TEXT    NOT NULL,
    PRIMARY KEY (account, livemode, customer_id)
);
