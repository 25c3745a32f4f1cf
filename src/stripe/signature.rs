//! `Stripe-Signature` verification, on the raw body bytes, before anything is parsed.
//!
//! Header: `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`; other schemes (`v0`) are ignored.
//! Each `v1` is compared in constant time with HMAC-SHA256 over `"{t}.{body}"`, keyed with
//! every configured secret; any match is enough (secret rolling). The timestamp is checked
//! only after a match, so a forged header learns nothing about our clock.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery was refused. Ordered as the checks run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("Stripe-Signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("no v1 signature matches any configured secret")]
    Mismatch,
    #[error("signature timestamp is {age_secs} s away from now; tolerance is {tolerance_secs} s")]
    OutOfTolerance { age_secs: i128, tolerance_secs: u64 },
}

/// A parsed header: the timestamp exactly as sent, and every well-formed `v1`. Parsing
/// needs no body, so a malformed header is refused before the body is read.
#[derive(Debug)]
pub struct SignatureHeader<'a> {
    timestamp_text: &'a str,
    timestamp: i64,
    /// Decoded `v1` values; a `v1` that is not 64 hex digits can never match and is dropped.
    v1: Vec<[u8; 32]>,
}

/// Stripe sends one `v1` per active endpoint secret, a handful at most. Each one costs an
/// HMAC comparison per configured secret, so a header may not carry more than this.
pub const MAX_V1_SIGNATURES: usize = 16;

/// A real header is `t`, a few `v1` and perhaps a `v0`: well under a kilobyte. Anything
/// longer is not Stripe's, and is refused before it is split.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

impl<'a> SignatureHeader<'a> {
    /// Checks the header's syntax only.
    pub fn parse(header: &'a [u8]) -> Result<Self, SignatureError> {
        parse_header(header)
    }

    /// Checks the signature against the body, then the timestamp against `now` (unix
    /// seconds; an age equal to the tolerance passes). Returns the signed timestamp.
    pub fn verify(
        &self,
        body: &[u8],
        secrets: &[Secret],
        now: i64,
        tolerance_secs: u64,
    ) -> Result<i64, SignatureError> {
        let mut matched = subtle::Choice::from(0);
        for secret in secrets {
            let expected = expected_mac(secret, self.timestamp_text, body);
            for candidate in &self.v1 {
                matched |= expected.ct_eq(candidate);
            }
        }
        if !bool::from(matched) {
            return Err(SignatureError::Mismatch);
        }
        let age_secs = i128::from(now) - i128::from(self.timestamp);
        if age_secs.unsigned_abs() > u128::from(tolerance_secs) {
            return Err(SignatureError::OutOfTolerance {
                age_secs,
                tolerance_secs,
            });
        }
        Ok(self.timestamp)
    }
}

fn parse_header(header: &[u8]) -> Result<SignatureHeader<'_>, SignatureError> {
    if header.len() > MAX_HEADER_BYTES {
        return Err(SignatureError::Malformed(
            "header is longer than 8192 bytes",
        ));
    }
    let text = std::str::from_utf8(header)
        .map_err(|_| SignatureError::Malformed("header is not valid UTF-8"))?;
    let mut timestamp: Option<(&str, i64)> = None;
    let mut v1 = Vec::new();
    let mut v1_items = 0usize;
    for item in text.split(',') {
        let item = item.trim_matches(|c: char| c.is_ascii_whitespace());
        let (key, value) = item
            .split_once('=')
            .ok_or(SignatureError::Malformed("every item must be key=value"))?;
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed("more than one t"));
                }
                timestamp = Some((value, parse_timestamp(value)?));
            }
            "v1" => {
                v1_items += 1;
                if v1_items > MAX_V1_SIGNATURES {
                    return Err(SignatureError::Malformed("more than 16 v1 signatures"));
                }
                if let Some(mac) = decode_v1(value) {
                    v1.push(mac);
                }
            }
            _ => {}
        }
    }
    let (timestamp_text, timestamp) = timestamp.ok_or(SignatureError::Malformed("no t"))?;
    if v1_items == 0 {
        return Err(SignatureError::Malformed("no v1"));
    }
    Ok(SignatureHeader {
        timestamp_text,
        timestamp,
        v1,
    })
}

/// ASCII digits only: no sign, no spaces, no `_`, no `0x` (SDK quirks we do not copy).
fn parse_timestamp(value: &str) -> Result<i64, SignatureError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::Malformed("t must be ASCII digits"));
    }
    value
        .parse()
        .map_err(|_| SignatureError::Malformed("t is out of range"))
}

fn decode_v1(value: &str) -> Option<[u8; 32]> {
    let mut mac = [0u8; 32];
    hex::decode_to_slice(value, &mut mac).ok()?;
    Some(mac)
}

fn expected_mac(secret: &Secret, timestamp_text: &str, body: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC-SHA256 takes keys of any length");
    mac.update(timestamp_text.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Verifies a delivery: the header's syntax, then the signature, then the timestamp.
/// `now` is unix seconds; an age equal to the tolerance passes. Returns the signed
/// timestamp.
pub fn verify(
    header: &[u8],
    body: &[u8],
    secrets: &[Secret],
    now: i64,
    tolerance_secs: u64,
) -> Result<i64, SignatureError> {
    SignatureHeader::parse(header)?.verify(body, secrets, now, tolerance_secs)
}

/// Signs a body as Stripe does: the value of a `Stripe-Signature` header. Used by `send`
/// and by tests.
pub fn sign(secret: &Secret, timestamp: i64, body: &[u8]) -> String {
    let timestamp_text = timestamp.to_string();
    let mac = expected_mac(secret, &timestamp_text, body);
    format!("t={timestamp_text},v1={}", hex::encode(mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KAT_BODY: &[u8] = b"{\n  \"id\": \"evt_test_webhook\",\n  \"object\": \"event\"\n}";
    const KAT_T: i64 = 1492774577;
    const KAT_V1: &str = "c2f890decbc5ede7c5060bb9a6d31e0626a4342bacb9aeae2adb1bcea72f9812";

    fn kat_secret() -> Vec<Secret> {
        vec![Secret::new("whsec_test_secret")]
    }

    fn verify_kat(header: &str) -> Result<i64, SignatureError> {
        verify(header.as_bytes(), KAT_BODY, &kat_secret(), KAT_T, 300)
    }

    #[test]
    fn known_answer_vector_from_the_stripe_sdks() {
        assert_eq!(
            sign(&kat_secret()[0], KAT_T, KAT_BODY),
            format!("t={KAT_T},v1={KAT_V1}")
        );
        assert_eq!(verify_kat(&format!("t={KAT_T},v1={KAT_V1}")), Ok(KAT_T));
    }

    #[test]
    fn any_v1_may_match_not_only_the_last() {
        let header = format!("t={KAT_T},v1={KAT_V1},v1={}", "0".repeat(64));
        assert_eq!(verify_kat(&header), Ok(KAT_T));
    }

    #[test]
    fn any_configured_secret_may_match() {
        let secrets = vec![Secret::new("whsec_new"), Secret::new("whsec_test_secret")];
        let header = format!("t={KAT_T},v1={KAT_V1}");
        assert_eq!(
            verify(header.as_bytes(), KAT_BODY, &secrets, KAT_T, 300),
            Ok(KAT_T)
        );
    }

    #[test]
    fn other_schemes_are_ignored() {
        let header = format!("t={KAT_T},v0={},v1={KAT_V1},v2=zz", "1".repeat(64));
        assert_eq!(verify_kat(&header), Ok(KAT_T));
        let only_v0 = format!("t={KAT_T},v0={KAT_V1}");
        assert_eq!(
            verify_kat(&only_v0),
            Err(SignatureError::Malformed("no v1"))
        );
    }

    #[test]
    fn surrounding_ascii_whitespace_is_trimmed_and_item_order_is_free() {
        let header = format!(" v1={KAT_V1} ,\tt={KAT_T} ");
        assert_eq!(verify_kat(&header), Ok(KAT_T));
    }

    #[test]
    fn timestamp_must_be_plain_ascii_digits() {
        for t in ["", "abc", "-1", "+1", "1_000", "0x10", "1 0", "１２"] {
            let header = format!("t={t},v1={KAT_V1}");
            assert!(
                matches!(verify_kat(&header), Err(SignatureError::Malformed(_))),
                "t={t:?} must be malformed"
            );
        }
        let too_big = format!("t=99999999999999999999,v1={KAT_V1}");
        assert_eq!(
            verify_kat(&too_big),
            Err(SignatureError::Malformed("t is out of range"))
        );
    }

    #[test]
    fn exactly_one_timestamp() {
        let none = format!("v1={KAT_V1}");
        assert_eq!(verify_kat(&none), Err(SignatureError::Malformed("no t")));
        let two = format!("t={KAT_T},t={KAT_T},v1={KAT_V1}");
        assert_eq!(
            verify_kat(&two),
            Err(SignatureError::Malformed("more than one t"))
        );
    }

    #[test]
    fn items_without_equals_or_non_utf8_headers_are_malformed() {
        assert!(matches!(
            verify_kat("garbage"),
            Err(SignatureError::Malformed(_))
        ));
        assert!(matches!(
            verify_kat(&format!("t={KAT_T},,v1={KAT_V1}")),
            Err(SignatureError::Malformed(_))
        ));
        let bytes = [b't', b'=', 0xff, b','];
        assert!(matches!(
            verify(&bytes, KAT_BODY, &kat_secret(), KAT_T, 300),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn a_v1_that_is_not_64_hex_digits_never_matches_but_is_not_malformed() {
        for v1 in [
            "",
            "abc",
            &KAT_V1[..63],
            &format!("{KAT_V1}0"),
            &"g".repeat(64),
        ] {
            let header = format!("t={KAT_T},v1={v1}");
            assert_eq!(
                verify_kat(&header),
                Err(SignatureError::Mismatch),
                "v1={v1:?}"
            );
        }
    }

    #[test]
    fn at_most_16_v1_signatures_whether_or_not_they_decode() {
        let others = |n: usize, value: &str| format!(",v1={value}").repeat(n);
        let sixteen = format!("t={KAT_T},v1={KAT_V1}{}", others(15, &"0".repeat(64)));
        assert_eq!(verify_kat(&sixteen), Ok(KAT_T));
        for filler in ["0".repeat(64), "x".to_owned(), String::new()] {
            let seventeen = format!("t={KAT_T},v1={KAT_V1}{}", others(16, &filler));
            assert_eq!(
                verify_kat(&seventeen),
                Err(SignatureError::Malformed("more than 16 v1 signatures")),
                "filler {filler:?}"
            );
        }
        // Other schemes do not count: Stripe may add them.
        let with_v0 = format!("t={KAT_T},v1={KAT_V1}{}", others(15, KAT_V1)) + &",v0=1".repeat(20);
        assert_eq!(verify_kat(&with_v0), Ok(KAT_T));
    }

    #[test]
    fn a_header_longer_than_8_kib_is_malformed() {
        let header = format!("t={KAT_T},v1={KAT_V1},");
        let fits = format!(
            "{header}x={}",
            "a".repeat(MAX_HEADER_BYTES - header.len() - 2)
        );
        assert_eq!(fits.len(), MAX_HEADER_BYTES);
        assert_eq!(verify_kat(&fits), Ok(KAT_T));
        let over = format!("{fits}a");
        assert_eq!(
            verify_kat(&over),
            Err(SignatureError::Malformed(
                "header is longer than 8192 bytes"
            ))
        );
    }

    #[test]
    fn uppercase_hex_is_accepted() {
        let header = format!("t={KAT_T},v1={}", KAT_V1.to_uppercase());
        assert_eq!(verify_kat(&header), Ok(KAT_T));
    }

    #[test]
    fn the_secret_is_used_whole_not_base64_decoded() {
        let secrets = vec![Secret::new("test_secret")];
        let header = format!("t={KAT_T},v1={KAT_V1}");
        assert_eq!(
            verify(header.as_bytes(), KAT_BODY, &secrets, KAT_T, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_changed_body_or_timestamp_does_not_match() {
        let header = format!("t={},v1={KAT_V1}", KAT_T + 1);
        assert_eq!(verify_kat(&header), Err(SignatureError::Mismatch));
        let header = format!("t={KAT_T},v1={KAT_V1}");
        let body = [KAT_BODY, b" "].concat();
        assert_eq!(
            verify(header.as_bytes(), &body, &kat_secret(), KAT_T, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn tolerance_applies_in_both_directions_and_its_edge_passes() {
        let header = format!("t={KAT_T},v1={KAT_V1}");
        let check = |now: i64| verify(header.as_bytes(), KAT_BODY, &kat_secret(), now, 300);
        assert_eq!(check(KAT_T + 300), Ok(KAT_T));
        assert_eq!(check(KAT_T - 300), Ok(KAT_T));
        assert_eq!(
            check(KAT_T + 301),
            Err(SignatureError::OutOfTolerance {
                age_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(
            check(KAT_T - 301),
            Err(SignatureError::OutOfTolerance {
                age_secs: -301,
                tolerance_secs: 300
            })
        );
    }

    #[test]
    fn a_wrong_signature_is_a_mismatch_whatever_its_timestamp() {
        let header = format!("t=1,v1={}", "0".repeat(64));
        assert_eq!(verify_kat(&header), Err(SignatureError::Mismatch));
    }

    #[test]
    fn the_header_is_parsed_without_the_body_then_verified_like_verify() {
        assert_eq!(
            SignatureHeader::parse(b"garbage").unwrap_err(),
            SignatureError::Malformed("every item must be key=value")
        );
        let header = format!("t={KAT_T},v1={KAT_V1}");
        let parsed = SignatureHeader::parse(header.as_bytes()).unwrap();
        for (body, now) in [(KAT_BODY, KAT_T), (&b"other"[..], KAT_T), (KAT_BODY, 0)] {
            assert_eq!(
                parsed.verify(body, &kat_secret(), now, 300),
                verify(header.as_bytes(), body, &kat_secret(), now, 300)
            );
        }
    }

    #[test]
    fn no_secrets_means_nothing_matches() {
        let header = format!("t={KAT_T},v1={KAT_V1}");
        assert_eq!(
            verify(header.as_bytes(), KAT_BODY, &[], KAT_T, 300),
            Err(SignatureError::Mismatch)
        );
    }
}
