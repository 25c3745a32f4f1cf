//! A deadline on reading a request body.
//!
//! actix times out a client that does not finish sending its request head
//! (`client_request_timeout`), but nothing bounds the body: a client that sends its head
//! and half a body, then stalls (or trickles a byte at a time), would hold a connection and
//! a handler forever. Every request body must arrive within the client timeout, counted
//! from the moment the head was read; otherwise the handler sees a read error and the
//! client gets `408 request_timeout` and a closed connection.
//!
//! A handler may answer without reading the body to its end (a declared length over the
//! limit, a missing or malformed signature header, no budget for the body). actix then
//! closes the connection after a short linger, except for a chunked body whose stream was
//! dropped: that one it drains with no deadline at all, so a client that never sends its
//! chunks would hold the connection forever. Such an answer keeps the unread body alive
//! until it is sent, which makes actix close the connection (lingering at most the client
//! timeout) for chunked bodies too.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, MessageBody};
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
    let body = match request.take_payload() {
        Payload::None => None,
        payload => {
            let body = Rc::new(BodyState {
                payload: RefCell::new(payload),
                expired: Cell::new(false),
                finished: Cell::new(false),
            });
            let deadline = Deadline {
                body: Rc::clone(&body),
                sleep: Box::pin(tokio::time::sleep(timeout)),
            };
            let stream: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> =
                Box::pin(deadline);
            request.set_payload(Payload::from(stream));
            Some(body)
        }
    };
    let response = next.call(request).await?.map_into_boxed_body();
    let Some(body) = body else {
        return Ok(response);
    };
    if body.expired.get() {
        tracing::warn!("request body did not arrive in time; closing the connection");
        let (request, _) = response.into_parts();
        let mut timed_out = HttpResponse::RequestTimeout().json(json!({
            "error": "request_timeout",
            "message": "the request body did not arrive in time",
        }));
        timed_out
            .head_mut()
            .set_connection_type(ConnectionType::Close);
        return Ok(ServiceResponse::new(request, timed_out));
    }
    if body.finished.get() {
        return Ok(response);
    }
    Ok(response.map_body(|_, answer| {
        BoxBody::new(HoldingUnreadBody {
            answer,
            _unread: body,
        })
    }))
}

/// The request body, shared by the stream the handler reads and the middleware.
struct BodyState {
    payload: RefCell<Payload>,
    expired: Cell<bool>,
    /// The body ended, failed or timed out: nothing is left for actix to drain.
    finished: Cell<bool>,
}

/// The body stream, failing once the deadline passes before it ends.
struct Deadline {
    body: Rc<BodyState>,
    sleep: Pin<Box<Sleep>>,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let body = &*this.body;
        if body.finished.get() {
            return Poll::Ready(None);
        }
        // Only this stream borrows the payload, and never across a poll.
        if let Poll::Ready(item) = Pin::new(&mut *body.payload.borrow_mut()).poll_next(cx) {
            body.finished.set(matches!(item, None | Some(Err(_))));
            return Poll::Ready(item);
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            body.finished.set(true);
            body.expired.set(true);
            let timed_out = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request body did not arrive in time",
            );
            return Poll::Ready(Some(Err(PayloadError::Io(timed_out))));
        }
        Poll::Pending
    }
}

/// An answer given before the request body was read to its end; it keeps that body alive
/// until the answer is sent, so actix closes the connection instead of draining the body
/// without a deadline (see the module documentation).
struct HoldingUnreadBody {
    answer: BoxBody,
    _unread: Rc<BodyState>,
}

impl MessageBody for HoldingUnreadBody {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.answer.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().answer).poll_next(cx)
    }
}
