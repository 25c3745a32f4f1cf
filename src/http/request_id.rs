//! A request id on every log line of a request, echoed in `X-Request-Id`.
//!
//! A load balancer or a caller may send its own id so one request can be followed across
//! systems; we keep it when it is short and printable (it ends up in our logs, so nothing
//! that could forge a log line or flood it), and make one up otherwise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

/// Longest incoming id we keep.
const MAX_LEN: usize = 64;

/// Routes polled by orchestrators and scrapers: logged at debug, or they drown the rest.
const QUIET_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Wraps every request in a `request` span carrying its id, and answers with the id.
pub(super) async fn middleware(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(|value| accepted(value.as_bytes()))
        .unwrap_or_else(generate);
    // The route pattern, not the path: a path or query string may carry an email.
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().clone();
    // The event fields stay empty (and unprinted) until a webhook delivery is verified
    // and parsed: `ingest` records them here, so the closing line carries them too.
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        %method,
        %route,
        event_id = tracing::field::Empty,
        event_type = tracing::field::Empty,
        account = tracing::field::Empty,
    );
    let started = Instant::now();
    let quiet = QUIET_ROUTES.contains(&route.as_str());
    let mut response = next.call(request).instrument(span.clone()).await?;
    let status = response.status().as_u16();
    let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    span.in_scope(|| {
        if quiet {
            tracing::debug!(status, elapsed_us, "request finished");
        } else {
            tracing::info!(status, elapsed_us, "request finished");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(HEADER), value);
    }
    Ok(response)
}

/// An incoming id we keep: 1 to 64 visible ASCII characters (no spaces, no controls).
fn accepted(raw: &[u8]) -> Option<String> {
    let printable = raw.iter().all(|b| b.is_ascii_graphic());
    if raw.is_empty() || raw.len() > MAX_LEN || !printable {
        return None;
    }
    // All bytes are ASCII, so this is valid UTF-8.
    std::str::from_utf8(raw).ok().map(str::to_owned)
}

/// 16 hex digits, unique within the process and unlikely to repeat across processes:
/// a bijective mix of a per-process nonce (start time and pid) plus a counter.
fn generate() -> String {
    static NONCE: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nonce = *NONCE.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        nanos ^ (u64::from(std::process::id()) << 40)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}", mix(nonce.wrapping_add(n)))
}

/// splitmix64's finalizer: a bijection on u64, so distinct inputs give distinct ids.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_short_printable_ids_only() {
        assert_eq!(accepted(b"abc-123_XYZ").as_deref(), Some("abc-123_XYZ"));
        assert_eq!(accepted(b""), None);
        assert_eq!(accepted(b"has space"), None);
        assert_eq!(accepted(b"line\nbreak"), None);
        assert_eq!(accepted("caf\u{e9}".as_bytes()), None);
        assert_eq!(accepted(&[b'a'; 65]), None);
        assert!(accepted(&[b'a'; 64]).is_some());
    }

    #[test]
    fn generated_ids_are_distinct_and_acceptable() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| accepted(id.as_bytes()).is_some()));
    }
}
