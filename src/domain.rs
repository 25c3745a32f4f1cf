//! Domain values, parsed once at the boundary so every key is built the same way.

use std::fmt;

/// Why a raw value was refused as a domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {problem}")]
pub struct InvalidValue {
    what: &'static str,
    problem: &'static str,
}

/// Identifiers longer than this are refused: Stripe's are far shorter, and a bound keeps
/// hostile payloads from inflating keys and indexes.
const MAX_ID_LEN: usize = 255;

/// Identifiers are stored as text keys in both backends; a NUL cannot be stored in
/// PostgreSQL text and no control character belongs in a Stripe id.
fn parse_id(what: &'static str, raw: &str) -> Result<String, InvalidValue> {
    if raw.is_empty() {
        return Err(InvalidValue {
            what,
            problem: "is empty",
        });
    }
    if raw.len() > MAX_ID_LEN {
        return Err(InvalidValue {
            what,
            problem: "is longer than 255 bytes",
        });
    }
    if raw.chars().any(char::is_control) {
        return Err(InvalidValue {
            what,
            problem: "contains a control character",
        });
    }
    Ok(raw.to_owned())
}

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                parse_id($what, raw).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_newtype!(
    /// The account tag of an event: a connected account (`acct_...`) or the platform's
    /// configured id. Matched exactly, never normalized.
    AccountId,
    "account"
);
id_newtype!(
    /// A Stripe event id (`evt_...`): the idempotency key of the log.
    EventId,
    "event id"
);
id_newtype!(
    /// A Stripe customer id (`cus_...`).
    CustomerId,
    "customer id"
);

/// The lookup key of an email: trimmed and lowercased. The original spelling is kept
/// elsewhere for display; only this form is ever compared.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EmailKey(String);

impl EmailKey {
    /// `None` when nothing is left after trimming: such a customer is not indexed.
    pub fn normalize(raw: &str) -> Option<Self> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            None
        } else {
            Some(Self(trimmed.to_lowercase()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EmailKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_key_trims_and_lowercases() {
        let key = EmailKey::normalize("  Ada.Lovelace@Example.COM \n").unwrap();
        assert_eq!(key.as_str(), "ada.lovelace@example.com");
    }

    #[test]
    fn blank_email_has_no_key() {
        assert_eq!(EmailKey::normalize(""), None);
        assert_eq!(EmailKey::normalize(" \t "), None);
    }

    #[test]
    fn ids_refuse_empty_overlong_and_control_characters() {
        assert!(EventId::parse("evt_1").is_ok());
        assert!(EventId::parse("").is_err());
        assert!(EventId::parse(&"e".repeat(256)).is_err());
        assert!(EventId::parse("evt_\u{0}x").is_err());
        assert!(AccountId::parse("acct\n").is_err());
    }
}
