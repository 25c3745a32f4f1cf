//! Reading Stripe's API: list pages (`starting_after`/`has_more`), one customer, and the
//! customer search. What the sync commands and `ensure`'s pre-check need.
//!
//! Objects are kept byte for byte as Stripe sent them (the log stores them verbatim); only
//! their `id` is read here. Every request goes through [`StripeApi::send`], so it shares the
//! process's limiter, retries and metrics with every other call.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::api::{ApiRequest, StripeApi, StripeApiError};
use crate::domain::AccountId;

/// Objects per list page: Stripe's maximum.
pub const PAGE_SIZE: &str = "100";

/// One object of a page: its id, and the object as Stripe sent it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: String,
    pub raw: Box<RawValue>,
}

/// One page of a list, newest first as Stripe orders lists.
#[derive(Debug, Clone)]
pub struct Page {
    pub objects: Vec<Listed>,
    /// More objects follow: ask again with `starting_after` = the last object's id (lists)
    /// or `page` = [`Page::next_page`] (search).
    pub has_more: bool,
    /// The search's cursor for the next page; `None` for lists.
    pub next_page: Option<String>,
}

impl Page {
    /// The cursor for the next list page: the last object's id, when there are more.
    pub fn starting_after(&self) -> Option<&str> {
        self.has_more
            .then(|| self.objects.last().map(|object| object.id.as_str()))
            .flatten()
    }
}

/// One customer fetched by id.
#[derive(Debug, Clone)]
pub enum Retrieved {
    /// A live customer, as Stripe sent it.
    Live(Box<RawValue>),
    /// Stripe says it is deleted (`{"id":..,"object":"customer","deleted":true}`), as sent.
    Deleted(Box<RawValue>),
    /// 404 `resource_missing`: no such customer on that account. Never a deletion.
    Missing,
}

/// What to list.
#[derive(Debug, Clone, Copy)]
pub enum ListOf<'a> {
    /// `GET /v1/customers`, optionally with the exact (case-sensitive) `email` filter.
    Customers { email: Option<&'a str> },
    /// `GET /v1/events?type=customer.*&created[gte]=since`.
    CustomerEvents { since: i64 },
    /// `GET /v1/accounts`: the platform's connected accounts (never with `Stripe-Account`).
    Accounts,
}

impl StripeApi {
    /// One page of a list on `account` (`None`: the platform's own), after
    /// `starting_after` when given.
    pub async fn list_page(
        &self,
        list: ListOf<'_>,
        account: Option<&AccountId>,
        starting_after: Option<&str>,
    ) -> Result<Page, StripeApiError> {
        let since;
        let (path, mut query): (&str, Vec<(&str, &str)>) = match list {
            ListOf::Customers { email } => (
                "/v1/customers",
                email.map(|email| ("email", email)).into_iter().collect(),
            ),
            ListOf::CustomerEvents { since: from } => {
                since = from.to_string();
                (
                    "/v1/events",
                    vec![("type", "customer.*"), ("created[gte]", since.as_str())],
                )
            }
            ListOf::Accounts => ("/v1/accounts", Vec::new()),
        };
        query.push(("limit", PAGE_SIZE));
        if let Some(after) = starting_after {
            query.push(("starting_after", after));
        }
        let request = ApiRequest {
            method: reqwest::Method::GET,
            path,
            query: &query,
            form: &[],
            on_behalf_of: account,
            idempotency_key: None,
        };
        self.send(&request, |body, _| parse_page(body, "list"))
            .await
    }

    /// `GET /v1/customers/search?query=email:"<email>"`, every page. Stripe's search
    /// ignores case but lags writes by up to a minute.
    pub async fn search_customers_by_email(
        &self,
        account: Option<&AccountId>,
        email: &str,
    ) -> Result<Vec<Listed>, StripeApiError> {
        let query_text = format!("email:\"{}\"", search_escaped(email));
        let mut found = Vec::new();
        let mut page_cursor: Option<String> = None;
        loop {
            let mut query = vec![("query", query_text.as_str()), ("limit", PAGE_SIZE)];
            if let Some(cursor) = page_cursor.as_deref() {
                query.push(("page", cursor));
            }
            let request = ApiRequest {
                method: reqwest::Method::GET,
                path: "/v1/customers/search",
                query: &query,
                form: &[],
                on_behalf_of: account,
                idempotency_key: None,
            };
            let page = self
                .send(&request, |body, _| parse_page(body, "search_result"))
                .await?;
            found.extend(page.objects);
            match page.next_page {
                Some(next) if page.has_more => page_cursor = Some(next),
                _ => return Ok(found),
            }
        }
    }

    /// `GET /v1/customers/{id}` on `account`.
    pub async fn retrieve_customer(
        &self,
        account: Option<&AccountId>,
        customer_id: &str,
    ) -> Result<Retrieved, StripeApiError> {
        let path = format!("/v1/customers/{customer_id}");
        let request = ApiRequest {
            method: reqwest::Method::GET,
            path: &path,
            query: &[],
            form: &[],
            on_behalf_of: account,
            idempotency_key: None,
        };
        match self.send(&request, |body, _| parse_retrieved(body)).await {
            Err(StripeApiError::Rejected {
                status: 404,
                code: Some(code),
                ..
            }) if code == "resource_missing" => Ok(Retrieved::Missing),
            other => other,
        }
    }
}

/// A string inside double quotes of Stripe's search query language: `\` and `"` are
/// escaped with a backslash.
fn search_escaped(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

fn parse_page(body: &[u8], kind: &str) -> Result<Page, StripeApiError> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        object: &'a str,
        #[serde(borrow)]
        data: Vec<&'a RawValue>,
        has_more: bool,
        #[serde(default)]
        next_page: Option<String>,
    }
    let invalid = |what: String| StripeApiError::InvalidResponse(what);
    let envelope: Envelope<'_> =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not a {kind} object: {e}")))?;
    if envelope.object != kind {
        return Err(invalid(format!("`object` is not \"{kind}\"")));
    }
    let objects = envelope
        .data
        .into_iter()
        .map(|raw| {
            let id =
                object_id(raw).ok_or_else(|| invalid("an object without a string `id`".into()))?;
            Ok(Listed {
                id,
                raw: raw.to_owned(),
            })
        })
        .collect::<Result<Vec<_>, StripeApiError>>()?;
    Ok(Page {
        objects,
        has_more: envelope.has_more,
        next_page: envelope.next_page,
    })
}

fn object_id(raw: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_str::<Id>(raw.get()).ok().map(|id| id.id)
}

fn parse_retrieved(body: &[u8]) -> Result<Retrieved, StripeApiError> {
    #[derive(Deserialize)]
    struct Customer<'a> {
        object: &'a str,
        #[serde(default)]
        deleted: bool,
    }
    let invalid = |what: &str| StripeApiError::InvalidResponse(what.to_owned());
    let text = std::str::from_utf8(body).map_err(|_| invalid("not UTF-8"))?;
    let raw = RawValue::from_string(text.trim().to_owned()).map_err(|_| invalid("not JSON"))?;
    let customer: Customer<'_> =
        serde_json::from_str(raw.get()).map_err(|_| invalid("not a customer"))?;
    if customer.object != "customer" || object_id(&raw).is_none() {
        return Err(invalid("not a customer with an id"));
    }
    Ok(if customer.deleted {
        Retrieved::Deleted(raw)
    } else {
        Retrieved::Live(raw)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_keep_each_object_byte_for_byte() {
        let body = br#"{"object":"list","data":[{"id":"cus_2", "email":"A@b.c"},{"id":"cus_1"}],"has_more":true,"url":"/v1/customers"}"#;
        let page = parse_page(body, "list").unwrap();
        assert_eq!(
            page.objects[0].raw.get(),
            r#"{"id":"cus_2", "email":"A@b.c"}"#
        );
        assert_eq!(page.starting_after(), Some("cus_1"));
        let last = parse_page(
            br#"{"object":"list","data":[{"id":"cus_1"}],"has_more":false}"#,
            "list",
        )
        .unwrap();
        assert_eq!(last.starting_after(), None);
        for bad in [
            &br#"{"object":"search_result","data":[],"has_more":false}"#[..],
            br#"{"object":"list","data":[{"email":"x"}],"has_more":false}"#,
            br#"{"object":"list","data":[]}"#,
            b"[]",
        ] {
            assert!(
                parse_page(bad, "list").is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_retrieved_customer_is_live_or_deleted() {
        assert!(matches!(
            parse_retrieved(br#"{"id":"cus_1","object":"customer","email":null}"#),
            Ok(Retrieved::Live(_))
        ));
        assert!(matches!(
            parse_retrieved(br#"{"id":"cus_1","object":"customer","deleted":true}"#),
            Ok(Retrieved::Deleted(_))
        ));
        assert!(parse_retrieved(br#"{"id":"ch_1","object":"charge"}"#).is_err());
    }

    #[test]
    fn search_strings_escape_quotes_and_backslashes() {
        assert_eq!(search_escaped(r#"a"b\c@d.e"#), r#"a\"b\\c@d.e"#);
    }
}
