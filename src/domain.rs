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

/// Stripe's own limit on a customer's email; a longer one cannot be a Stripe customer's.
/// It also keeps every key well under PostgreSQL's limit on an index entry.
pub const MAX_EMAIL_BYTES: usize = 512;

/// Stripe's own limit on a customer's name, in characters.
pub const MAX_NAME_CHARS: usize = 256;

/// Why an email cannot be a lookup key. The message never quotes the email.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEmail {
    #[error("email is blank")]
    Blank,
    #[error("email is longer than 512 bytes")]
    TooLong,
    #[error("email contains a control character")]
    ControlCharacter,
}

/// The lookup key of an email: trimmed, ASCII letters lowercased. The original spelling is
/// kept elsewhere for display; only this form is ever compared.
///
/// Only ASCII letters fold. Unicode lowercasing would make distinct addresses share a key
/// (the Kelvin sign U+212A folds to `k`, so `\u{212A}@x.io` would find `k@x.io`'s
/// customer): a lookalike typed at checkout must never get someone else's customer. Two
/// emails share a key exactly when, trimmed, they differ at most in the case of ASCII
/// letters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EmailKey(String);

impl EmailKey {
    /// The one parser of emails, used for deliveries, lookups and ensure alike: blank,
    /// over 512 bytes (trimmed) or holding a control character is refused.
    pub fn parse(raw: &str) -> Result<Self, InvalidEmail> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(InvalidEmail::Blank);
        }
        if trimmed.len() > MAX_EMAIL_BYTES {
            return Err(InvalidEmail::TooLong);
        }
        if trimmed.chars().any(char::is_control) {
            return Err(InvalidEmail::ControlCharacter);
        }
        Ok(Self(trimmed.to_ascii_lowercase()))
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

/// Why a customer's name cannot be stored or sent to Stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    #[error("name is longer than 256 characters")]
    TooLong,
    #[error("name contains a control character")]
    ControlCharacter,
}

/// Checks a customer's name against Stripe's limit and refuses control characters, which
/// no name needs and which would reach checkout's pages and our logs.
pub fn check_name(name: &str) -> Result<(), InvalidName> {
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(InvalidName::TooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidName::ControlCharacter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_key_trims_and_lowercases_ascii_letters() {
        let key = EmailKey::parse("  Ada.Lovelace@Example.COM \n").unwrap();
        assert_eq!(key.as_str(), "ada.lovelace@example.com");
        // Letters outside ASCII keep their case: they are other addresses.
        assert_eq!(EmailKey::parse("ÄDA@x.io").unwrap().as_str(), "Äda@x.io");
        assert_ne!(EmailKey::parse("\u{212A}@x.io"), EmailKey::parse("k@x.io"));
    }

    #[test]
    fn blank_overlong_and_control_character_emails_have_no_key() {
        assert_eq!(EmailKey::parse(""), Err(InvalidEmail::Blank));
        assert_eq!(EmailKey::parse(" \t "), Err(InvalidEmail::Blank));
        let longest = format!("{}@x.io", "a".repeat(MAX_EMAIL_BYTES - 5));
        assert!(EmailKey::parse(&longest).is_ok());
        assert!(EmailKey::parse(&format!("  {longest}  ")).is_ok());
        assert_eq!(
            EmailKey::parse(&format!("a{longest}")),
            Err(InvalidEmail::TooLong)
        );
        // Counted in bytes: 2-byte letters reach the limit at half the characters.
        assert_eq!(
            EmailKey::parse(&format!("{}@x.io", "é".repeat(254))),
            Err(InvalidEmail::TooLong)
        );
        for bad in ["a\u{0}@b.c", "a\n@b.c", "a@b\u{7f}.c", "a@b\u{85}.c"] {
            assert_eq!(
                EmailKey::parse(bad),
                Err(InvalidEmail::ControlCharacter),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn names_are_bounded_and_printable() {
        assert_eq!(check_name(""), Ok(()));
        assert_eq!(check_name(&"é".repeat(MAX_NAME_CHARS)), Ok(()));
        assert_eq!(
            check_name(&"a".repeat(MAX_NAME_CHARS + 1)),
            Err(InvalidName::TooLong)
        );
        for bad in ["Ada\u{0}", "Ada\nLovelace", "Ada\u{1b}[2J"] {
            assert_eq!(
                check_name(bad),
                Err(InvalidName::ControlCharacter),
                "{bad:?}"
            );
        }
    }

    proptest::proptest! {
        /// Two emails share a key exactly when, trimmed, they differ at most in the case of
        /// ASCII letters: no Unicode folding can make two addresses one.
        #[test]
        fn emails_share_a_key_only_when_they_differ_in_ascii_case(
            a in email_like(),
            b in email_like(),
        ) {
            let (ka, kb) = (EmailKey::parse(&a), EmailKey::parse(&b));
            if let (Ok(ka), Ok(kb)) = (&ka, &kb) {
                proptest::prop_assert_eq!(ka == kb, a.trim().eq_ignore_ascii_case(b.trim()));
            }
            // A key is its own key: the stored form parses back to itself.
            if let Ok(ka) = ka {
                proptest::prop_assert_eq!(EmailKey::parse(ka.as_str()), Ok(ka.clone()));
            }
        }

        #[test]
        fn an_email_and_its_case_variants_share_one_key(
            a in email_like(),
            flips in proptest::collection::vec(proptest::bool::ANY, 0..40),
        ) {
            let flipped: String = a
                .chars()
                .zip(flips.iter().chain(std::iter::repeat(&false)))
                .map(|(c, &flip)| match (flip, c.is_ascii_lowercase()) {
                    (true, true) => c.to_ascii_uppercase(),
                    (true, false) => c.to_ascii_lowercase(),
                    (false, _) => c,
                })
                .collect();
            proptest::prop_assert_eq!(EmailKey::parse(&a), EmailKey::parse(&flipped));
        }
    }

    /// Strings that mix ASCII, letters whose Unicode lowercase or uppercase is ASCII or
    /// multi-character (Kelvin sign, Angstrom sign, dotted I, long s, sharp s), other
    /// scripts, and whitespace; so both sides of a comparison are often near-equal.
    fn email_like() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let tricky = prop::sample::select(vec![
            'a', 'A', 'k', 'K', 's', 'S', 'i', 'I', '@', '.', ' ', '\u{212A}', '\u{212B}',
            '\u{130}', '\u{131}', '\u{17F}', '\u{DF}', '\u{1E9E}', '\u{3A3}', '\u{3C3}', '\u{3C2}',
            '\u{C5}', '\u{E5}', '\u{3000}', '\u{A0}',
        ]);
        let any_char = prop_oneof![4 => tricky, 1 => any::<char>()];
        prop::collection::vec(any_char, 0..12).prop_map(|chars| chars.into_iter().collect())
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
