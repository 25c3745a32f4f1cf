//! Calls to Stripe's REST API: creating a customer for checkout's get-or-create.
//!
//! The only module that talks to Stripe. It sends one request with bounded retries and
//! classifies the outcome; it knows nothing of our store or of our HTTP API.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::domain::AccountId;
use crate::secret::Secret;

/// A Stripe answer larger than this is not a Customer: refuse it instead of buffering it.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";

/// A setting of the Stripe client we cannot run with. The message never holds the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidStripeSetting(pub String);

/// Whether an API key acts in live or test mode, told by its prefix (`sk_live_`,
/// `rk_live_`, `sk_test_`, `rk_test_`): a key of another shape is refused at start-up, so
/// every request's mode is known before anything is sent.
pub fn key_livemode(key: &Secret) -> Result<bool, InvalidStripeSetting> {
    let value = key.expose();
    let livemode = if value.starts_with("sk_live_") || value.starts_with("rk_live_") {
        true
    } else if value.starts_with("sk_test_") || value.starts_with("rk_test_") {
        false
    } else {
        return Err(InvalidStripeSetting(
            "STRIPE_SECRET_KEY must be a secret or restricted key (sk_live_, sk_test_, rk_live_ or rk_test_)".into(),
        ));
    };
    // Keys are sent in a header; refusing other bytes here keeps a send from failing later.
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InvalidStripeSetting(
            "STRIPE_SECRET_KEY contains characters a Stripe key never has".into(),
        ));
    }
    Ok(livemode)
}

/// Parses `STRIPE_API_BASE`: an `http` or `https` URL; a trailing `/` is dropped.
pub fn parse_api_base(raw: &str) -> Result<reqwest::Url, InvalidStripeSetting> {
    let invalid =
        || InvalidStripeSetting("STRIPE_API_BASE must be an http:// or https:// URL".into());
    let url = reqwest::Url::parse(raw.trim_end_matches('/')).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(invalid());
    }
    Ok(url)
}

/// How we talk to Stripe.
#[derive(Debug, Clone)]
pub struct StripeApiConfig {
    pub secret_key: Secret,
    /// `https://api.stripe.com`, or a local fake in tests.
    pub api_base: reqwest::Url,
    pub retry: RetryPolicy,
}

/// Bounded retries: checkout is waiting, so a Stripe outage must answer within
/// `attempts * timeout + backoffs`, never hang.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Requests sent at most (the first one included).
    pub attempts: u32,
    /// Wait before the second attempt; doubled before each later one.
    pub backoff: Duration,
    /// Bound on one attempt: connecting, sending and reading the whole answer.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    /// 3 attempts, 100 ms then 200 ms apart, 10 s each: at most about 30 s in all.
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Duration::from_millis(100),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why Stripe did not give us a customer. Messages never contain the API key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StripeApiError {
    /// Stripe answered 4xx: the request cannot succeed as sent. Stripe's own `error.type`,
    /// `error.code` and `error.message` are kept to pass on.
    #[error("Stripe refused the request (HTTP {status}): {}", message.as_deref().unwrap_or("no message"))]
    Rejected {
        status: u16,
        kind: Option<String>,
        code: Option<String>,
        message: Option<String>,
    },
    /// 5xx, connection failures and timeouts, after every attempt.
    #[error("Stripe is unavailable after {attempts} attempt(s): {reason}")]
    Unavailable { attempts: u32, reason: String },
    /// A 2xx whose body is not a Customer: a wrong `STRIPE_API_BASE`, or a Stripe change.
    #[error("Stripe answered with something that is not a customer: {0}")]
    InvalidResponse(String),
}

/// What to create: the fields Stripe receives, and on whose account.
#[derive(Debug, Clone)]
pub struct NewCustomer<'a> {
    /// `Stripe-Account` header: `None` acts on the platform's own account.
    pub on_behalf_of: Option<&'a AccountId>,
    pub email: &'a str,
    pub name: Option<&'a str>,
    /// Same key, same customer: Stripe answers a repeat with the first answer (24 h).
    pub idempotency_key: &'a str,
}

/// A customer as Stripe returned it.
#[derive(Debug, Clone)]
pub struct CreatedCustomer {
    /// The Customer object, byte for byte as Stripe sent it.
    pub raw: Box<RawValue>,
    /// The same object, parsed.
    pub object: Map<String, Value>,
    /// Stripe's `Request-Id`, for support tickets and the log.
    pub request_id: Option<String>,
}

/// A Stripe API client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StripeApi {
    client: reqwest::Client,
    config: StripeApiConfig,
    livemode: bool,
}

/// One attempt's failure: either final, or worth another try.
enum Attempt {
    Final(StripeApiError),
    /// `rejected` is what to report if this was a retryable 4xx (409, 429) and no attempt
    /// is left.
    Retry {
        reason: String,
        rejected: Option<StripeApiError>,
    },
}

impl StripeApi {
    pub fn new(config: StripeApiConfig) -> Result<Self, InvalidStripeSetting> {
        let livemode = key_livemode(&config.secret_key)?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("stripe-projector/", env!("CARGO_PKG_VERSION")))
            // actix runs one runtime per worker thread; a pooled connection belongs to the
            // runtime that opened it. Creating a customer is rare (new buyers only), so a
            // fresh connection per request costs little and never crosses runtimes.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| InvalidStripeSetting(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            client,
            config,
            livemode,
        })
    }

    /// The mode every request with this key acts in.
    pub fn livemode(&self) -> bool {
        self.livemode
    }

    /// `POST /v1/customers`, retried on 5xx, 409 (a concurrent request with the same
    /// idempotency key), 429, connection errors and timeouts, as Stripe's SDKs do; a
    /// `Stripe-Should-Retry` header overrides. Safe to retry: the idempotency key makes
    /// every attempt create at most the one customer.
    pub async fn create_customer(
        &self,
        customer: &NewCustomer<'_>,
    ) -> Result<CreatedCustomer, StripeApiError> {
        let policy = self.config.retry;
        let attempts = policy.attempts.max(1);
        let mut backoff = policy.backoff;
        let mut last_reason = String::new();
        let mut last_rejected = None;
        for attempt in 1..=attempts {
            let outcome = tokio::time::timeout(policy.timeout, self.attempt(customer)).await;
            match outcome {
                Ok(Ok(created)) => return Ok(created),
                Ok(Err(Attempt::Final(error))) => return Err(error),
                Ok(Err(Attempt::Retry { reason, rejected })) => {
                    last_reason = reason;
                    last_rejected = rejected;
                }
                Err(_) => {
                    last_reason = format!("no complete answer within {:?}", policy.timeout);
                    last_rejected = None;
                }
            }
            tracing::warn!(attempt, attempts, reason = %last_reason, "Stripe request failed");
            if attempt < attempts {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
        Err(last_rejected.unwrap_or(StripeApiError::Unavailable {
            attempts,
            reason: last_reason,
        }))
    }

    async fn attempt(&self, customer: &NewCustomer<'_>) -> Result<CreatedCustomer, Attempt> {
        let mut form = vec![("email", customer.email)];
        if let Some(name) = customer.name {
            form.push(("name", name));
        }
        let mut url = self.config.api_base.clone();
        url.set_path(&format!(
            "{}/v1/customers",
            self.config.api_base.path().trim_end_matches('/')
        ));
        let mut request = self
            .client
            .post(url)
            .bearer_auth(self.config.secret_key.expose())
            .header("Idempotency-Key", customer.idempotency_key)
            .form(&form);
        if let Some(account) = customer.on_behalf_of {
            request = request.header("Stripe-Account", account.as_str());
        }
        let response = request.send().await.map_err(|e| Attempt::Retry {
            reason: format!("cannot reach Stripe: {}", without_url(&e)),
            rejected: None,
        })?;
        let status = response.status();
        let request_id = header_text(&response, "request-id");
        let should_retry = header_text(&response, "stripe-should-retry");
        let body = read_limited(response).await?;
        if status.is_success() {
            return parse_customer(&body, request_id).map_err(Attempt::Final);
        }
        let retry = match should_retry.as_deref() {
            Some("true") => true,
            Some("false") => false,
            _ => status.is_server_error() || status.as_u16() == 409 || status.as_u16() == 429,
        };
        let reason = format!("HTTP {status}");
        let error = if status.is_client_error() {
            Some(self.rejected(status.as_u16(), &body))
        } else {
            None
        };
        match (retry, error) {
            (true, rejected) => Err(Attempt::Retry { reason, rejected }),
            (false, Some(error)) => Err(Attempt::Final(error)),
            (false, None) => Err(Attempt::Final(StripeApiError::Unavailable {
                attempts: 1,
                reason,
            })),
        }
    }

    /// Stripe's error object, with the key masked should a message ever quote it.
    fn rejected(&self, status: u16, body: &[u8]) -> StripeApiError {
        #[derive(Deserialize)]
        struct Envelope {
            error: Option<Details>,
        }
        #[derive(Deserialize)]
        struct Details {
            #[serde(rename = "type")]
            kind: Option<String>,
            code: Option<String>,
            message: Option<String>,
        }
        let details = serde_json::from_slice::<Envelope>(body)
            .ok()
            .and_then(|envelope| envelope.error);
        let key = self.config.secret_key.expose();
        let mask = |text: String| text.replace(key, "<redacted>");
        match details {
            Some(details) => StripeApiError::Rejected {
                status,
                kind: details.kind.map(mask),
                code: details.code.map(mask),
                message: details.message.map(mask),
            },
            None => StripeApiError::Rejected {
                status,
                kind: None,
                code: None,
                message: None,
            },
        }
    }
}

fn header_text(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// A reqwest error without its URL: the base is not secret, but the reason reads better.
fn without_url(error: &reqwest::Error) -> String {
    let mut text = if error.is_connect() {
        "connection failed".to_owned()
    } else if error.is_timeout() {
        "timed out".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, Attempt> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(Attempt::Final(StripeApiError::InvalidResponse(format!(
                        "answer larger than {MAX_RESPONSE_BYTES} bytes"
                    ))));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(Attempt::Retry {
                    reason: format!("answer cut short: {}", without_url(&e)),
                    rejected: None,
                })
            }
        }
    }
}

/// A 2xx body must be a Customer object with an id.
fn parse_customer(
    body: &[u8],
    request_id: Option<String>,
) -> Result<CreatedCustomer, StripeApiError> {
    let invalid = |what: &str| StripeApiError::InvalidResponse(what.to_owned());
    let text = std::str::from_utf8(body).map_err(|_| invalid("not UTF-8"))?;
    let raw = RawValue::from_string(text.trim().to_owned()).map_err(|_| invalid("not JSON"))?;
    let object: Map<String, Value> =
        serde_json::from_str(raw.get()).map_err(|_| invalid("not a JSON object"))?;
    if object.get("object").and_then(Value::as_str) != Some("customer") {
        return Err(invalid("`object` is not \"customer\""));
    }
    if !object.get("id").is_some_and(Value::is_string) {
        return Err(invalid("no string `id`"));
    }
    Ok(CreatedCustomer {
        raw,
        object,
        request_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_mode_comes_from_the_prefix() {
        assert_eq!(key_livemode(&Secret::new("sk_test_abc")), Ok(false));
        assert_eq!(key_livemode(&Secret::new("rk_test_abc")), Ok(false));
        assert_eq!(key_livemode(&Secret::new("sk_live_abc")), Ok(true));
        assert_eq!(key_livemode(&Secret::new("rk_live_abc")), Ok(true));
        for bad in ["pk_test_abc", "whsec_abc", "", "sk_test_a b"] {
            let error = key_livemode(&Secret::new(bad)).unwrap_err();
            assert!(bad.is_empty() || !error.0.contains(bad), "{error}");
        }
    }

    #[test]
    fn api_base_must_be_http_and_loses_its_trailing_slash() {
        assert_eq!(
            parse_api_base("https://api.stripe.com/").unwrap().as_str(),
            "https://api.stripe.com/"
        );
        assert_eq!(
            parse_api_base("http://127.0.0.1:9/prefix/").unwrap().path(),
            "/prefix"
        );
        for bad in ["", "api.stripe.com", "ftp://x", "mailto:a@b.c"] {
            assert!(parse_api_base(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_a_customer_object_is_a_success() {
        let ok = parse_customer(br#" {"id":"cus_1","object":"customer"} "#, None).unwrap();
        assert_eq!(ok.raw.get(), r#"{"id":"cus_1","object":"customer"}"#);
        for bad in [
            &b"not json"[..],
            br#"[1]"#,
            br#"{"id":"card_1","object":"card"}"#,
            br#"{"object":"customer"}"#,
        ] {
            assert!(parse_customer(bad, None).is_err());
        }
    }
}
