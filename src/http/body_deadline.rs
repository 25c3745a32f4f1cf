//! A deadline on reading a request body.
//!
//! actix times out a client that does not finish sending its request head
//! (`client_request_timeout`), but nothing bounds the body: a client that sends its head
//! and half a body, then stalls (or trickles a byte at a time), would hold a connection and
//! a handler forever. Every request body must arrive within the client timeout, counted
//! from the moment the head was read; otherwise the handler sees a read error and the
//! client gets `408 request_timeout` and a closed connection.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{HttpMessage, HttpResponse};
use futures_util::Stream;
use serde_json::json;
use tokio::time::Sleep;

/// Wraps the request's body (when it has one) in the deadline, and turns a request whose
/// body missed it into a 408 that closes the connection.
pub(super) async fn middleware(
    timeout: Duration,
    mut request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let expired = Rc::new(Cell::new(false));
    match request.take_payload() {
        Payload::None => {}
        payload => {
            let deadline = Deadline {
                inner: payload,
                sleep: Box::pin(tokio::time::sleep(timeout)),
                expired: Rc::clone(&expired),
                finished: false,
            };
            let stream: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> =
                Box::pin(deadline);
            request.set_payload(Payload::from(stream));
        }
    }
    let response = next.call(request).await?;
    if !expired.get() {
        return Ok(response.map_into_boxed_body());
    }
    tracing::warn!("request body did not arrive in time; closing the connection");
    let (request, _) = response.into_parts();
    let mut timed_out = HttpResponse::RequestTimeout().json(json!({
        "error": "request_timeout",
        "message": "the request body did not arrive in time",
    }));
    timed_out
        .head_mut()
        .set_connection_type(ConnectionType::Close);
    Ok(ServiceResponse::new(request, timed_out))
}

/// The body stream, failing once the deadline passes before it ends.
struct Deadline {
    inner: Payload,
    sleep: Pin<Box<Sleep>>,
    expired: Rc<Cell<bool>>,
    finished: bool,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = Pin::new(&mut this.inner).poll_next(cx) {
            this.finished = item.is_none();
            return Poll::Ready(item);
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.finished = true;
            this.expired.set(true);
            let timed_out = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request body did not arrive in time",
            );
            return Poll::Ready(Some(Err(PayloadError::Io(timed_out))));
        }
        Poll::Pending
    }
}
