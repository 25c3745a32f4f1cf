//! Settings the service runs with, validated once at start-up.

use crate::domain::AccountId;
use crate::secret::Secret;

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
    raw.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Secret::new)
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
    fn no_secret_is_an_error_that_does_not_echo_input() {
        assert!(parse_webhook_secrets(None).is_err());
        assert!(parse_webhook_secrets(Some(" , ")).is_err());
    }

    #[test]
    fn empty_read_token_is_unset() {
        assert!(parse_read_token(Some("")).is_none());
        assert!(parse_read_token(None).is_none());
        assert!(parse_read_token(Some("t")).is_some());
    }
}
