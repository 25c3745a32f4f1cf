//! Settings the service runs with, validated once at start-up.

use std::net::{IpAddr, SocketAddr};

use crate::domain::AccountId;
use crate::http::ServerOptions;
use crate::secret::Secret;
use crate::stripe::api::StripeApi;

/// A setting we cannot run with. The message names the setting, never its value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// What the webhook endpoint needs to verify and tag deliveries.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Every endpoint secret currently valid; any one may match (secret rolling).
    pub secrets: Vec<Secret>,
    pub tolerance_secs: u64,
    /// The account tag of events that carry no `account`.
    pub platform_account: AccountId,
    pub max_body_bytes: usize,
}

/// Everything the application is built from (see [`crate::http::application`]), already
/// validated: `serve` reads it from its flags and the environment, the tests write it.
#[derive(Debug, Clone)]
pub struct AppSettings {
    pub webhook: WebhookConfig,
    /// `READ_API_TOKEN`: when set, lookups need it as a bearer token.
    pub read_token: Option<Secret>,
    /// `ENSURE_API_TOKEN`: when set, ensure needs it; else ensure answers loopback peers only.
    pub ensure_token: Option<Secret>,
    /// How ensure reaches Stripe; `None` (no `STRIPE_SECRET_KEY`) disables ensure.
    pub stripe: Option<StripeApi>,
    /// Bytes of request bodies read or handled at once, across workers.
    pub max_body_bytes_in_flight: usize,
    pub server: ServerOptions,
}

/// Parses `STRIPE_WEBHOOK_SECRET`: one or more secrets, comma-separated.
pub fn parse_webhook_secrets(raw: Option<&str>) -> Result<Vec<Secret>, ConfigError> {
    let secrets: Vec<Secret> = raw
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Secret::new)
        .collect();
    if secrets.is_empty() {
        return Err(ConfigError(
            "STRIPE_WEBHOOK_SECRET is not set: give the webhook endpoint secret(s) (whsec_...), comma-separated".into(),
        ));
    }
    Ok(secrets)
}

pub fn parse_platform_account(raw: &str) -> Result<AccountId, ConfigError> {
    AccountId::parse(raw).map_err(|e| ConfigError(format!("PLATFORM_ACCOUNT_ID: {e}")))
}

/// `READ_API_TOKEN`: an empty value means unset.
pub fn parse_read_token(raw: Option<&str>) -> Option<Secret> {
    parse_token(raw)
}

/// `ENSURE_API_TOKEN`: an empty value means unset.
pub fn parse_ensure_token(raw: Option<&str>) -> Option<Secret> {
    parse_token(raw)
}

fn parse_token(raw: Option<&str>) -> Option<Secret> {
    raw.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Secret::new)
}

/// `serve` refuses to expose an open ensure: with a Stripe key, anyone who reaches a
/// non-loopback address could create real Stripe customers. Checked on the configured
/// address, before anything is bound or migrated.
pub fn check_ensure_exposure(
    listen_addr: SocketAddr,
    stripe_key_set: bool,
    ensure_token_set: bool,
) -> Result<(), ConfigError> {
    if !stripe_key_set || ensure_token_set || is_loopback(listen_addr.ip()) {
        return Ok(());
    }
    Err(ConfigError(format!(
        "ENSURE_API_TOKEN is not set and LISTEN_ADDR {listen_addr} is not a loopback address: \
         POST /v1/customers/ensure would let anyone who reaches it create Stripe customers; \
         set ENSURE_API_TOKEN (or listen on 127.0.0.1, or unset STRIPE_SECRET_KEY)"
    )))
}

/// Loopback, including IPv4 loopback seen through an IPv4-mapped IPv6 address (what a
/// dual-stack socket reports for a local IPv4 client).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_comma_separated_and_blank_items_dropped() {
        let secrets = parse_webhook_secrets(Some("whsec_a, whsec_b,,")).unwrap();
        let exposed: Vec<&str> = secrets.iter().map(Secret::expose).collect();
        assert_eq!(exposed, ["whsec_a", "whsec_b"]);
    }

    #[test]
    fn no_secret_is_an_error_that_names_the_setting_and_does_not_echo_input() {
        for raw in [None, Some(" , "), Some(" \t,\u{a0}, ")] {
            let error = parse_webhook_secrets(raw).unwrap_err().to_string();
            assert!(
                error.starts_with("STRIPE_WEBHOOK_SECRET is not set"),
                "{error}"
            );
            if let Some(raw) = raw {
                assert!(!error.contains(raw), "{error}");
            }
        }
        // A platform id that cannot be an account is named, its value is not.
        let error = parse_platform_account("acct\nsecret-looking-value")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("PLATFORM_ACCOUNT_ID"), "{error}");
        assert!(!error.contains("secret-looking-value"), "{error}");
    }

    #[test]
    fn empty_read_token_is_unset() {
        assert!(parse_read_token(Some("")).is_none());
        assert!(parse_read_token(None).is_none());
        assert!(parse_read_token(Some("t")).is_some());
        assert!(parse_ensure_token(Some(" ")).is_none());
        assert!(parse_ensure_token(None).is_none());
        assert!(parse_ensure_token(Some("t")).is_some());
    }

    #[test]
    fn an_open_ensure_is_refused_beyond_loopback_when_a_stripe_key_is_set() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let any6: SocketAddr = "[::]:8080".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let local6: SocketAddr = "[::1]:8080".parse().unwrap();
        for addr in [any, any6] {
            let refused = check_ensure_exposure(addr, true, false).unwrap_err();
            assert!(refused.0.contains("ENSURE_API_TOKEN"), "{refused}");
            assert!(!refused.0.contains('\n'), "{refused}");
            assert!(check_ensure_exposure(addr, true, true).is_ok());
            assert!(check_ensure_exposure(addr, false, false).is_ok());
        }
        for addr in [local, local6] {
            assert!(check_ensure_exposure(addr, true, false).is_ok());
        }
    }

    #[test]
    fn mapped_ipv4_loopback_is_loopback() {
        for ip in ["127.0.0.1", "127.5.6.7", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["0.0.0.0", "10.0.0.1", "::", "::ffff:10.0.0.1", "fe80::1"] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }
}
