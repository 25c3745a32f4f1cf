//! Calls to Stripe's REST API: creating a customer for checkout's get-or-create.
//!
//! The only module that talks to Stripe. It sends one request with bounded retries, within
//! the process's limits on Stripe requests (`limiter`), and classifies the outcome; it
//! knows nothing of our store or of our HTTP API.
//!
//! What Stripe says stays here: its error `message` can quote the buyer's email and the
//! tail of our key, so it is never kept. Its `type`, `code` and `param`, the status and
//! the `Request-Id` are what callers and the log get.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::limiter::{Limiter, Limits};
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
    /// Shared by every clone of the client built from this configuration.
    pub limits: Limits,
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
    /// Stop at a 429 that comes while our own rate is used up: right for a caller who is
    /// waiting (a retry would only queue for a turn and meet the limit again), wrong for a
    /// batch job that runs at the rate on purpose and can wait.
    pub give_up_on_429_at_our_rate: bool,
}

impl Default for RetryPolicy {
    /// 3 attempts, 100 ms then 200 ms apart, 10 s each: at most about 30 s in all.
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Duration::from_millis(100),
            timeout: Duration::from_secs(10),
            give_up_on_429_at_our_rate: true,
        }
    }
}

/// Why Stripe did not give us a customer. Messages are our own words: they never hold the
/// API key, Stripe's error message or a network error (those details go to the log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StripeApiError {
    /// Stripe answered 4xx: the request cannot succeed as sent. Stripe's own `error.type`,
    /// `error.code` and `error.param` are kept to pass on; its `error.message` is not.
    #[error(
        "Stripe refused the request (HTTP {status}, type {}, code {})",
        shown(kind),
        shown(code)
    )]
    Rejected {
        status: u16,
        kind: Option<String>,
        code: Option<String>,
        param: Option<String>,
    },
    /// 5xx, connection failures and timeouts, after every attempt.
    #[error("Stripe is unavailable after {attempts} attempt(s); retry later")]
    Unavailable { attempts: u32 },
    /// Our own limit on requests to Stripe left no turn within the wait allowed.
    #[error(
        "our own limit on requests to Stripe is reached; nothing was sent to Stripe, retry shortly"
    )]
    LimitedLocally,
    /// Stripe answered 429 while our own rate was used up: a retry would only wait for a
    /// turn and meet the same limit.
    #[error("Stripe is limiting our request rate and our own limit is reached; retry shortly")]
    RateLimited,
    /// A 2xx whose body is not a Customer: a wrong `STRIPE_API_BASE`, or a Stripe change.
    /// The detail is for the log only: it can quote the answer.
    #[error("Stripe answered with something that is not a customer")]
    InvalidResponse(String),
}

impl StripeApiError {
    /// Stripe refused our idempotency key because another request used it: with other
    /// parameters (400, type `idempotency_error`), or at this very moment (409, code
    /// `idempotency_key_in_use`, still so after every retry). Either way another caller
    /// made the request this key stands for.
    pub fn is_key_used_elsewhere(&self) -> bool {
        match self {
            Self::Rejected {
                status: 400,
                kind: Some(kind),
                ..
            } => kind == "idempotency_error",
            Self::Rejected {
                status: 409,
                code: Some(code),
                ..
            } => code == "idempotency_key_in_use",
            _ => false,
        }
    }
}

/// One of Stripe's identifiers in a message: escaped, so a control character cannot start
/// a line of its own.
fn shown(value: &Option<String>) -> String {
    value
        .as_deref()
        .map_or_else(|| "none".to_owned(), |text| text.escape_debug().to_string())
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

/// One request to Stripe's API, as [`StripeApi::send`] sends (and retries) it.
#[derive(Debug, Clone)]
pub struct ApiRequest<'a> {
    pub method: reqwest::Method,
    /// From the API base, e.g. `/v1/customers`.
    pub path: &'a str,
    pub query: &'a [(&'a str, &'a str)],
    /// Form-encoded body; none when empty.
    pub form: &'a [(&'a str, &'a str)],
    /// `Stripe-Account` header: `None` acts on the platform's own account.
    pub on_behalf_of: Option<&'a AccountId>,
    pub idempotency_key: Option<&'a str>,
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

/// A Stripe API client. Cheap to clone; clones share one [`Limiter`].
#[derive(Debug, Clone)]
pub struct StripeApi {
    client: reqwest::Client,
    config: StripeApiConfig,
    livemode: bool,
    limiter: Limiter,
    counts: Arc<RequestCounts>,
}

/// Requests sent by a client and its clones: what a command reports.
#[derive(Debug, Default)]
struct RequestCounts {
    sent: AtomicU64,
    retried: AtomicU64,
}

/// One attempt's failure: either final, or worth another try.
enum Attempt {
    Final(StripeApiError),
    /// `rejected` is what to report if this was a retryable 4xx (409, 429) and no attempt
    /// is left; `rate_limited`: Stripe answered 429.
    Retry {
        rejected: Option<StripeApiError>,
        rate_limited: bool,
    },
}

impl Attempt {
    fn retry() -> Self {
        Self::Retry {
            rejected: None,
            rate_limited: false,
        }
    }
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
            counts: Arc::default(),
            limiter: Limiter::new(config.limits),
            config,
            livemode,
        })
    }

    /// The process's bounds on Stripe requests: other calls to Stripe's API take their
    /// turns here too, so the process as a whole stays within them.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// Requests sent so far by this client and its clones, retries included.
    pub fn requests_sent(&self) -> u64 {
        self.counts.sent.load(Ordering::Relaxed)
    }

    /// Of those, the ones that repeated a request that had failed.
    pub fn requests_retried(&self) -> u64 {
        self.counts.retried.load(Ordering::Relaxed)
    }

    /// The mode every request with this key acts in.
    pub fn livemode(&self) -> bool {
        self.livemode
    }

    /// `POST /v1/customers`. Safe to retry: the idempotency key makes every attempt create
    /// at most the one customer.
    pub async fn create_customer(
        &self,
        customer: &NewCustomer<'_>,
    ) -> Result<CreatedCustomer, StripeApiError> {
        let mut form = vec![("email", customer.email)];
        if let Some(name) = customer.name {
            form.push(("name", name));
        }
        let request = ApiRequest {
            method: reqwest::Method::POST,
            path: "/v1/customers",
            query: &[],
            form: &form,
            on_behalf_of: customer.on_behalf_of,
            idempotency_key: Some(customer.idempotency_key),
        };
        self.send(&request, parse_customer).await
    }

    /// Sends one request, retried on 5xx, 409 (a concurrent request with the same
    /// idempotency key, or a lock timeout), 429, connection errors and timeouts, as
    /// Stripe's SDKs do; a `Stripe-Should-Retry` header overrides. Retries wait an
    /// exponential backoff with jitter. A 2xx is handed to `parse`; a 2xx it refuses is
    /// final (a wrong `STRIPE_API_BASE` will not mend by retrying).
    ///
    /// Every attempt, retries included, takes its turn from the limiter first; no turn
    /// within the wait allowed ends the call with `LimitedLocally`, and, when the policy
    /// says so, a 429 while our own rate is used up ends it with `RateLimited`.
    pub async fn send<T>(
        &self,
        request: &ApiRequest<'_>,
        parse: impl Fn(&[u8], Option<String>) -> Result<T, StripeApiError>,
    ) -> Result<T, StripeApiError> {
        let policy = self.config.retry;
        let attempts = policy.attempts.max(1);
        let mut backoff = policy.backoff;
        let mut last_rejected = None;
        for attempt in 1..=attempts {
            let Ok(permit) = self.limiter.acquire().await else {
                crate::metrics::stripe_request("limited_locally");
                tracing::warn!(
                    attempt,
                    attempts,
                    "Stripe request not sent: our own limit on requests to Stripe is reached"
                );
                return Err(StripeApiError::LimitedLocally);
            };
            self.counts.sent.fetch_add(1, Ordering::Relaxed);
            if attempt > 1 {
                self.counts.retried.fetch_add(1, Ordering::Relaxed);
            }
            let outcome = tokio::time::timeout(
                policy.timeout,
                self.attempt(request, &parse, attempt, attempts),
            )
            .await;
            drop(permit);
            match outcome {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(Attempt::Final(error))) => return Err(error),
                Ok(Err(Attempt::Retry {
                    rejected,
                    rate_limited,
                })) => {
                    if rate_limited && policy.give_up_on_429_at_our_rate && self.limiter.saturated()
                    {
                        tracing::warn!(
                            attempt,
                            attempts,
                            "not retrying: Stripe answered 429 and our own rate limit is used up"
                        );
                        return Err(StripeApiError::RateLimited);
                    }
                    last_rejected = rejected;
                }
                Err(_) => {
                    crate::metrics::stripe_request("timeout");
                    tracing::warn!(
                        attempt,
                        attempts,
                        timeout = ?policy.timeout,
                        "Stripe request failed: no complete answer in time"
                    );
                    last_rejected = None;
                }
            }
            if attempt < attempts {
                tokio::time::sleep(jittered(backoff)).await;
                backoff = backoff.saturating_mul(2);
            }
        }
        Err(last_rejected.unwrap_or(StripeApiError::Unavailable { attempts }))
    }

    /// One request. Counts its outcome and logs a failure: the network error chain
    /// escaped, or Stripe's status, `type`, `code` and `Request-Id` (never its message).
    async fn attempt<T>(
        &self,
        request: &ApiRequest<'_>,
        parse: &impl Fn(&[u8], Option<String>) -> Result<T, StripeApiError>,
        attempt: u32,
        attempts: u32,
    ) -> Result<T, Attempt> {
        let mut url = self.config.api_base.clone();
        url.set_path(&format!(
            "{}{}",
            self.config.api_base.path().trim_end_matches('/'),
            request.path
        ));
        if !request.query.is_empty() {
            url.query_pairs_mut().extend_pairs(request.query);
        }
        let mut builder = self
            .client
            .request(request.method.clone(), url)
            .bearer_auth(self.config.secret_key.expose());
        if !request.form.is_empty() {
            builder = builder.form(request.form);
        }
        if let Some(key) = request.idempotency_key {
            builder = builder.header("Idempotency-Key", key);
        }
        if let Some(account) = request.on_behalf_of {
            builder = builder.header("Stripe-Account", account.as_str());
        }
        let response = match builder.send().await {
            Ok(response) => response,
            Err(e) => {
                crate::metrics::stripe_request(if e.is_timeout() {
                    "timeout"
                } else {
                    "network_error"
                });
                // Debug formatting escapes the chain: its text is not ours.
                tracing::warn!(attempt, attempts, error = ?error_chain(&e), "Stripe request failed");
                return Err(Attempt::retry());
            }
        };
        let status = response.status();
        let request_id = header_text(&response, "request-id");
        let should_retry = header_text(&response, "stripe-should-retry");
        let body = match read_limited(response).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                crate::metrics::stripe_request("invalid_response");
                return Err(Attempt::Final(StripeApiError::InvalidResponse(format!(
                    "answer larger than {MAX_RESPONSE_BYTES} bytes"
                ))));
            }
            Err(BodyError::Cut(e)) => {
                crate::metrics::stripe_request("network_error");
                tracing::warn!(
                    attempt, attempts, status = status.as_u16(), request_id = ?request_id,
                    error = ?error_chain(&e), "Stripe's answer was cut short"
                );
                return Err(Attempt::retry());
            }
        };
        if status.is_success() {
            let parsed = parse(&body, request_id);
            crate::metrics::stripe_request(if parsed.is_ok() {
                "ok"
            } else {
                "invalid_response"
            });
            return parsed.map_err(Attempt::Final);
        }
        let details = self.error_details(&body);
        crate::metrics::stripe_request(match status.as_u16() {
            429 => "rate_limited",
            400..=499 => "rejected",
            500..=599 => "server_error",
            _ => "invalid_response",
        });
        tracing::warn!(
            attempt,
            attempts,
            status = status.as_u16(),
            stripe_type = ?details.kind.as_deref().unwrap_or_default(),
            stripe_code = ?details.code.as_deref().unwrap_or_default(),
            request_id = ?request_id.as_deref().unwrap_or_default(),
            "Stripe answered with an error"
        );
        let retry = match should_retry.as_deref() {
            Some("true") => true,
            Some("false") => false,
            _ => status.is_server_error() || status.as_u16() == 409 || status.as_u16() == 429,
        };
        let error = status.is_client_error().then(|| StripeApiError::Rejected {
            status: status.as_u16(),
            kind: details.kind,
            code: details.code,
            param: details.param,
        });
        match (retry, error) {
            (true, rejected) => Err(Attempt::Retry {
                rejected,
                rate_limited: status.as_u16() == 429,
            }),
            (false, Some(error)) => Err(Attempt::Final(error)),
            (false, None) => Err(Attempt::Final(StripeApiError::Unavailable { attempts: 1 })),
        }
    }

    /// Stripe's error object without its `message`, with the key masked should any field
    /// ever quote it.
    fn error_details(&self, body: &[u8]) -> ErrorDetails {
        #[derive(Deserialize)]
        struct Envelope {
            error: Option<ErrorDetails>,
        }
        let details = serde_json::from_slice::<Envelope>(body)
            .ok()
            .and_then(|envelope| envelope.error)
            .unwrap_or_default();
        let key = self.config.secret_key.expose();
        let mask = |text: Option<String>| text.map(|text| text.replace(key, "<redacted>"));
        ErrorDetails {
            kind: mask(details.kind),
            code: mask(details.code),
            param: mask(details.param),
        }
    }
}

/// The fields of Stripe's error object we keep. `message` is not read at all.
#[derive(Debug, Default, Deserialize)]
struct ErrorDetails {
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<String>,
    param: Option<String>,
}

/// A wait between `backoff / 2` and `backoff`, so that callers who failed together do not
/// retry together.
fn jittered(backoff: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // A fresh RandomState is seeded from the OS once per thread and then varied per
    // instance: random enough to spread retries, with no dependency.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = backoff / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(if nanos == 0 { 0 } else { random % nanos })
}

fn header_text(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// A reqwest error and its causes, without the URL: the base is not secret, but the
/// reason reads better.
fn error_chain(error: &reqwest::Error) -> String {
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

enum BodyError {
    TooLarge,
    Cut(reqwest::Error),
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(BodyError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(BodyError::Cut(e)),
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
