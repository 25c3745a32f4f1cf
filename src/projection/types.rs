//! Rule 6: which `customer.*` events project. Stripe's three customer events do, and so
//! does our own `customer.snapshot` (a Customer as Stripe's API listed it: `backfill`, and
//! `ensure`'s look-up of an existing customer); every other `customer.*` type
//! (subscriptions, sources, tax ids, discounts) is logged, not projected.

use std::fmt;

use super::order::TypeRank;

/// The names of the snapshot types, as literals so that SQL text can be built from them
/// at compile time ([`PROJECTED_TYPES_SQL`]) as well as matched in Rust.
macro_rules! snapshot_type {
    (Created) => {
        "customer.created"
    };
    (Updated) => {
        "customer.updated"
    };
    (Deleted) => {
        "customer.deleted"
    };
    (Snapshot) => {
        "customer.snapshot"
    };
}

/// Rule 6 in SQL, on the log's `type` column: the rows whose type projects. Mirrors
/// [`EventType::projects`].
pub const PROJECTED_TYPES_SQL: &str = concat!(
    "type IN ('",
    snapshot_type!(Created),
    "', '",
    snapshot_type!(Updated),
    "', '",
    snapshot_type!(Snapshot),
    "', '",
    snapshot_type!(Deleted),
    "')"
);

/// A `customer.*` event's type. The snapshot types are named; any other is kept as
/// delivered, since it is logged (and counted) under its own name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventType {
    Created,
    Updated,
    Deleted,
    /// A Customer object read from Stripe's API, recorded by us (never sent by Stripe):
    /// its `created` is the second before it was read, and it ranks between updated and
    /// deleted (rule 3).
    Snapshot,
    /// Any other `customer.*` type: logged, not projected.
    Other(String),
}

impl EventType {
    pub const CREATED: &'static str = snapshot_type!(Created);
    pub const UPDATED: &'static str = snapshot_type!(Updated);
    pub const DELETED: &'static str = snapshot_type!(Deleted);
    pub const SNAPSHOT: &'static str = snapshot_type!(Snapshot);

    pub fn parse(raw: &str) -> Self {
        match raw {
            snapshot_type!(Created) => Self::Created,
            snapshot_type!(Updated) => Self::Updated,
            snapshot_type!(Deleted) => Self::Deleted,
            snapshot_type!(Snapshot) => Self::Snapshot,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Created => Self::CREATED,
            Self::Updated => Self::UPDATED,
            Self::Deleted => Self::DELETED,
            Self::Snapshot => Self::SNAPSHOT,
            Self::Other(other) => other,
        }
    }

    /// The rank within one second (rule 3) of a snapshot type; `None` for a type that
    /// does not project.
    pub fn snapshot_rank(&self) -> Option<TypeRank> {
        match self {
            Self::Created => Some(TypeRank::Created),
            Self::Updated => Some(TypeRank::Updated),
            Self::Deleted => Some(TypeRank::Deleted),
            Self::Snapshot => Some(TypeRank::Snapshot),
            Self::Other(_) => None,
        }
    }

    /// Whether events of this type change the customer table (rule 6).
    pub fn projects(&self) -> bool {
        self.snapshot_rank().is_some()
    }
}

impl From<&str> for EventType {
    fn from(raw: &str) -> Self {
        Self::parse(raw)
    }
}

impl PartialEq<str> for EventType {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for EventType {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_types_project_and_keep_their_names() {
        for (raw, projects) in [
            ("customer.created", true),
            ("customer.updated", true),
            ("customer.deleted", true),
            ("customer.subscription.created", false),
            ("customer.source.deleted", false),
            ("customer.Created", false),
            ("customer.created ", false),
        ] {
            let parsed = EventType::parse(raw);
            assert_eq!(parsed.projects(), projects, "{raw}");
            assert_eq!(parsed.as_str(), raw);
            assert_eq!(parsed, raw);
        }
    }

    #[test]
    fn the_sql_names_every_projecting_type() {
        for name in [EventType::CREATED, EventType::UPDATED, EventType::DELETED] {
            assert!(PROJECTED_TYPES_SQL.contains(&format!("'{name}'")), "{name}");
        }
    }
}
