//! Checkout's question, "which customer is this email on this organizer's account?",
//! parsed the same way for HTTP, the CLI and library callers.

use crate::domain::{AccountId, EmailKey};

/// The store's question; build it from untrusted input with [`LookupRequest::parse`].
pub use crate::store::LookupRequest;

/// Why a lookup cannot be asked; the message is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidLookup(pub String);

impl LookupRequest {
    pub fn parse(
        account: Option<&str>,
        email: Option<&str>,
        livemode: Option<&str>,
    ) -> Result<Self, InvalidLookup> {
        let invalid = |message: &str| InvalidLookup(message.to_owned());
        let account = account.ok_or_else(|| invalid("account is required"))?;
        let account = AccountId::parse(account).map_err(|e| InvalidLookup(e.to_string()))?;
        let email = email.ok_or_else(|| invalid("email is required"))?;
        // The projection's own parser: an email it refuses can have no customer, and asking
        // the database anyway could fail the query (PostgreSQL text cannot hold NUL).
        let email = EmailKey::parse(email).map_err(|e| InvalidLookup(e.to_string()))?;
        let livemode = match livemode {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(_) => return Err(invalid("livemode must be true or false")),
        };
        Ok(Self {
            account,
            email,
            livemode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalizes() {
        let request = LookupRequest::parse(Some("acct_1"), Some(" A@B.c"), Some("false")).unwrap();
        assert_eq!(request.account.as_str(), "acct_1");
        assert_eq!(request.email.as_str(), "a@b.c");
        assert_eq!(request.livemode, Some(false));
    }

    #[test]
    fn refuses_missing_or_bad_fields() {
        let cases = [
            (None, Some("a@b.c"), None),
            (Some(""), Some("a@b.c"), None),
            (Some("acct_1"), None, None),
            (Some("acct_1"), Some("  "), None),
            (Some("acct_1"), Some("a@b.c\0"), None),
            (Some("acct_1"), Some("a\u{1b}@b.c"), None),
            (
                Some("acct_1"),
                Some(&*format!("{}@b.c", "a".repeat(509))),
                None,
            ),
            (Some("acct_1"), Some("a@b.c"), Some("TRUE")),
            (Some("acct_1"), Some("a@b.c"), Some("1")),
        ];
        for (account, email, livemode) in cases {
            assert!(
                LookupRequest::parse(account, email, livemode).is_err(),
                "{account:?} {email:?} {livemode:?}"
            );
        }
    }
}
