//! Rule 3: which snapshot of a customer wins, and why deletion is final.
//!
//! A customer's state is its newest snapshot, newest meaning the largest `(deleted, event
//! created, type rank, event id)`. The database keeps the same order as bytes: the
//! `version` column holds [`Version::encode`], and every SQL statement that picks a
//! winner does so through one of the fragments below.

use crate::domain::EventId;

use super::Projected;

/// Rule 3 as the customer table's upsert guard: the candidate row (`excluded`) replaces
/// the current one (`c`) only when its version is larger. Mirrors [`supersedes`].
pub const SUPERSEDES_SQL: &str = "excluded.version > c.version";

/// Rule 3 as an `ORDER BY` within one customer: newest first, so the first row of each
/// customer is its winner (PostgreSQL's rebuild, `DISTINCT ON`). Mirrors
/// [`newest_per_customer`].
pub const NEWEST_FIRST_SQL: &str = "version DESC";

/// Rule 3 as an aggregate over one customer's snapshots: the winner (SQLite's rebuild,
/// whose other columns come from the row holding the maximum). Mirrors
/// [`newest_per_customer`].
pub const NEWEST_SQL: &str = "max(version)";

/// Rule 3 for pruning: a log row (`events`) that the customer's row (`c`) outranks no
/// longer decides that row. The negation of [`supersedes`] for distinct versions.
pub const SUPERSEDED_SQL: &str = "events.version < c.version";

/// How `deleted` is read from the encoded version (its first byte): only migration 0002
/// does so, once, for the rows logged before the log had a `deleted` column. Every
/// statement since reads that column, written at append time from [`Version::deleted`].
pub const DELETED_FROM_VERSION_SQL: &str = "substr(version, 1, 1) = '1'";

/// The rank of a snapshot type within one second (rule 3): created < updated < snapshot <
/// deleted. A snapshot read from Stripe's API reflects every update Stripe made before it
/// was read, and a deletion is final. Migration 0003 moved deletions from digit 2 to 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TypeRank {
    Created = 0,
    Updated = 1,
    Snapshot = 2,
    Deleted = 3,
}

/// Orders the snapshots of one customer: the largest version wins.
///
/// Field order is the comparison order. `deleted` comes first so that deletion is final
/// (rule 3): any deletion outranks every non-deleted snapshot, whatever its timestamp.
/// Then `(event created, type rank, event id)`, so the winner is a function of the set of
/// events, never of arrival order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub deleted: bool,
    pub created: i64,
    pub rank: TypeRank,
    pub event_id: EventId,
}

impl Version {
    /// A text form whose byte order equals the order of `Version`, so the database can
    /// keep the newest snapshot with a plain `>` on one column (binary/"C" collation).
    pub fn encode(&self) -> String {
        // Shift i64 onto u64 so that fixed-width decimal digits sort like the numbers.
        let created = (i128::from(self.created) - i128::from(i64::MIN)) as u64;
        format!(
            "{}{created:020}{}{}",
            u8::from(self.deleted),
            self.rank as u8,
            self.event_id
        )
    }

    /// Reads back [`Version::encode`]'s text (for reports); `None` if it is not one.
    pub fn decode(text: &str) -> Option<Self> {
        let deleted = match text.get(0..1)? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let shifted: u64 = text.get(1..21)?.parse().ok()?;
        let created = i64::try_from(i128::from(shifted) + i128::from(i64::MIN)).ok()?;
        let rank = match text.get(21..22)? {
            "0" => TypeRank::Created,
            "1" => TypeRank::Updated,
            "2" => TypeRank::Snapshot,
            "3" => TypeRank::Deleted,
            _ => return None,
        };
        let event_id = EventId::parse(text.get(22..)?).ok()?;
        Some(Self {
            deleted,
            created,
            rank,
            event_id,
        })
    }
}

/// Whether `candidate` replaces `current` as a customer's state.
pub fn supersedes(candidate: &Version, current: &Version) -> bool {
    candidate > current
}

/// Keeps each customer's newest snapshot, sorted by key: what a batch writes, since a
/// multi-row statement may touch a row only once, and taking the newest first gives the
/// same row as applying them one by one.
pub fn newest_per_customer(mut rows: Vec<Projected>) -> Vec<Projected> {
    rows.sort_by(|a, b| {
        a.key()
            .cmp(&b.key())
            .then_with(|| b.snapshot.version.cmp(&a.snapshot.version))
    });
    rows.dedup_by(|later, earlier| later.key() == earlier.key());
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(deleted: bool, created: i64, rank: TypeRank, id: &str) -> Version {
        Version {
            deleted,
            created,
            rank,
            event_id: EventId::parse(id).unwrap(),
        }
    }

    #[test]
    fn newest_snapshot_wins_by_created_then_rank_then_id() {
        use TypeRank::*;
        let table = [
            // (candidate, current, candidate wins)
            (
                version(false, 2, Created, "evt_a"),
                version(false, 1, Updated, "evt_z"),
                true,
            ),
            (
                version(false, 1, Updated, "evt_a"),
                version(false, 1, Created, "evt_z"),
                true,
            ),
            (
                version(false, 1, Updated, "evt_b"),
                version(false, 1, Updated, "evt_a"),
                true,
            ),
            (
                version(false, 1, Updated, "evt_a"),
                version(false, 1, Updated, "evt_a"),
                false,
            ),
            (
                version(false, 1, Created, "evt_z"),
                version(false, 1, Updated, "evt_a"),
                false,
            ),
            // A snapshot read from Stripe's API outranks what it reflects (the same
            // second and before) and loses to every later change and to a deletion.
            (
                version(false, 1, Snapshot, "evt_a"),
                version(false, 1, Updated, "evt_z"),
                true,
            ),
            (
                version(false, 2, Updated, "evt_a"),
                version(false, 1, Snapshot, "evt_z"),
                true,
            ),
            (
                version(false, 1, Snapshot, "evt_z"),
                version(true, 1, Deleted, "evt_a"),
                false,
            ),
            (
                version(true, 1, Snapshot, "evt_a"),
                version(false, 9, Updated, "evt_z"),
                true,
            ),
            // Deletion is final: a later update never brings a customer back.
            (
                version(false, 9, Updated, "evt_z"),
                version(true, 1, Deleted, "evt_a"),
                false,
            ),
            (
                version(true, 1, Deleted, "evt_a"),
                version(false, 9, Updated, "evt_z"),
                true,
            ),
            (
                version(true, 2, Deleted, "evt_a"),
                version(true, 1, Deleted, "evt_z"),
                true,
            ),
        ];
        for (candidate, current, wins) in table {
            assert_eq!(
                supersedes(&candidate, &current),
                wins,
                "{candidate:?} vs {current:?}"
            );
            assert_eq!(
                candidate.encode() > current.encode(),
                wins,
                "encoded {candidate:?}"
            );
        }
    }

    #[test]
    fn encoded_versions_sort_like_versions_across_the_whole_i64_range() {
        use TypeRank::*;
        let mut versions = vec![
            version(false, i64::MIN, Created, "evt_a"),
            version(false, -1, Deleted, "evt_a"),
            version(false, 0, Created, "evt_"),
            version(false, 0, Created, "evt_a"),
            version(false, 9, Updated, "evt_a"),
            version(false, 9, Snapshot, "evt_a"),
            version(false, 10, Created, "evt_a"),
            version(false, i64::MAX, Updated, "evt_a"),
            version(true, i64::MIN, Snapshot, "evt_a"),
            version(true, i64::MIN, Deleted, "evt_a"),
        ];
        let sorted = versions.clone();
        versions.reverse();
        versions.sort_by_key(Version::encode);
        assert_eq!(versions, sorted);
        for version in &sorted {
            assert_eq!(Version::decode(&version.encode()).as_ref(), Some(version));
        }
        assert_eq!(Version::decode("garbage"), None);
    }
}

#[cfg(test)]
mod migration_tests {
    use super::*;

    /// Migration 0002 fills `deleted` for the rows logged before it, with this fragment.
    #[test]
    fn migration_0002_reads_deleted_from_the_version_like_decode() {
        for migration in [
            include_str!("../../migrations/sqlite/0002_events_deleted.sql"),
            include_str!("../../migrations/postgres/0002_events_deleted.sql"),
        ] {
            assert!(migration.contains(&format!("deleted = {DELETED_FROM_VERSION_SQL}")));
        }
        assert_eq!(DELETED_FROM_VERSION_SQL, "substr(version, 1, 1) = '1'");
        let deleted = Version {
            deleted: true,
            created: 0,
            rank: TypeRank::Created,
            event_id: EventId::parse("evt_1").unwrap(),
        };
        assert!(deleted.encode().starts_with('1'));
        assert!(Version {
            deleted: false,
            ..deleted
        }
        .encode()
        .starts_with('0'));
    }

    /// Migration 0003 moves deletions' rank digit from 2 to 3, where `encode` puts it now.
    #[test]
    fn migration_0003_moves_deletions_to_their_new_rank_digit() {
        let at = |rank| {
            let encoded = Version {
                deleted: false,
                created: 0,
                rank,
                event_id: EventId::parse("evt_1").unwrap(),
            }
            .encode();
            encoded[21..22].to_owned()
        };
        assert_eq!(at(TypeRank::Snapshot), "2");
        assert_eq!(at(TypeRank::Deleted), "3");
        for migration in [
            include_str!("../../migrations/sqlite/0003_snapshot_rank.sql"),
            include_str!("../../migrations/postgres/0003_snapshot_rank.sql"),
        ] {
            assert_eq!(
                migration
                    .matches("substr(version, 1, 21) || '3' || substr(version, 23)")
                    .count(),
                2
            );
            assert_eq!(migration.matches("substr(version, 22, 1) = '2'").count(), 2);
        }
    }
}
