//! A string that must never be printed: webhook secrets, API keys and tokens.

use std::fmt;

use subtle::ConstantTimeEq;

/// Holds a secret. `Debug` and `Display` print a fixed placeholder, so a secret cannot
/// leak through logs, error chains or `--help`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the few places that key a MAC or send it upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares with a presented value in time independent of where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_never_shows_the_value() {
        let secret = Secret::new("whsec_do_not_print");
        assert!(!format!("{secret:?} {secret}").contains("do_not_print"));
    }

    #[test]
    fn matches_only_the_exact_value() {
        let secret = Secret::new("token");
        assert!(secret.matches(b"token"));
        assert!(!secret.matches(b"token2"));
        assert!(!secret.matches(b"toke"));
        assert!(!secret.matches(b""));
    }
}
