//! Rule 4: the email key. A customer is found by the trimmed email with its ASCII letters
//! lowercased; a customer without one is not indexed.
//!
//! [`EmailKey::parse`] is the one parser and its checks the one set, for deliveries (here),
//! lookups and `ensure` alike: an email a delivery could not index can never be asked for
//! or created. No SQL derives a key: the `email_key` columns hold this parser's answer and
//! statements only compare them byte for byte ("C" collation on PostgreSQL).

use crate::domain::{EmailKey, InvalidEmail};

/// The key of a snapshot's email: `None` when the customer has no usable email (absent or
/// blank, rule 4); an error for one Stripe itself would refuse (rule 8).
pub fn snapshot_key(email: Option<&str>) -> Result<Option<EmailKey>, InvalidEmail> {
    match email.map(EmailKey::parse) {
        None | Some(Err(InvalidEmail::Blank)) => Ok(None),
        Some(Ok(key)) => Ok(Some(key)),
        Some(Err(invalid)) => Err(invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_or_absent_is_no_key_and_other_refusals_are_errors() {
        assert_eq!(snapshot_key(None), Ok(None));
        assert_eq!(snapshot_key(Some(" \t")), Ok(None));
        assert_eq!(
            snapshot_key(Some(" A@b.C ")).map(|k| k.map(|k| k.as_str().to_owned())),
            Ok(Some("a@b.c".to_owned()))
        );
        assert_eq!(
            snapshot_key(Some("a\n@b.c")),
            Err(InvalidEmail::ControlCharacter)
        );
    }
}
