-- Whether a logged snapshot is a deletion, written at append time beside `version` (NULL
-- where `version` is): a rebuild reads it instead of decoding the version text. Rows
-- logged before this column existed take it from the version's first byte, once
-- (projection::order::DELETED_FROM_VERSION_SQL).
ALTER TABLE events ADD COLUMN deleted BOOLEAN;

UPDATE events SET deleted = substr(version, 1, 1) = '1' WHERE version IS NOT NULL;

-- Every snapshot says whether it is a deletion: an append that leaves it out (a process of
-- an older release, during a rollout) is refused and retried by Stripe, rather than
-- logged without it.
ALTER TABLE events ADD CONSTRAINT events_deleted_with_version
    CHECK ((deleted IS NULL) = (version IS NULL));
