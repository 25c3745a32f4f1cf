//! `send`: sign an event file as Stripe does and POST it, the local way to try a server.

use crate::secret::Secret;
use crate::stripe::signature;

/// The server's answer to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Signs `body` with `secret` at `now` and posts it to `url`, like a Stripe delivery.
pub async fn deliver(
    client: &reqwest::Client,
    url: &reqwest::Url,
    secret: &Secret,
    body: Vec<u8>,
    now: i64,
) -> Result<Answer, reqwest::Error> {
    let header = signature::sign(secret, now, &body);
    let response = client
        .post(url.clone())
        .header("Stripe-Signature", header)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let body = response.text().await?;
    Ok(Answer { status, body })
}
