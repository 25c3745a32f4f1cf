-- Rule 3 gains a rank for snapshots read from Stripe's API (`customer.snapshot`), between
-- updated and deleted: the version's rank digit (byte 22) moves from 2 to 3 for
-- deletions, in the log and in the customer table, so that stored versions keep sorting
-- as the projection orders them (projection::order::TypeRank).
UPDATE events SET version = substr(version, 1, 21) || '3' || substr(version, 23)
WHERE version IS NOT NULL AND substr(version, 22, 1) = '2';

UPDATE customers SET version = substr(version, 1, 21) || '3' || substr(version, 23)
WHERE substr(version, 22, 1) = '2';
