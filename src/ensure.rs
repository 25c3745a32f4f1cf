//! Checkout's get-or-create: the customer for `(account, livemode, email)`, created on the
//! organizer's account through Stripe when the read model has none, exactly once.
//!
//! Exactly once has three layers: a lookup first (most calls end there); in one process,
//! a single flight per key, so concurrent callers wait for the first and then find its
//! customer in the read model; across processes, an `Idempotency-Key` derived from the
//! key, so Stripe answers every process with the same customer. The customer Stripe
//! returns is recorded in the log and the projection in one transaction, so the read
//! model knows it before the webhook arrives.
//!
//! The key is built from the normalized email, but Stripe receives the caller's spelling
//! and name; Stripe refuses a key reused with other parameters (400 `idempotency_error`),
//! and a key in use by a request not yet answered (409 `idempotency_key_in_use`). A
//! process that meets either refusal knows another process created (or is creating) the
//! customer, so it waits a bounded time for that process's record in the shared read
//! model and answers with it.

use std::time::Duration;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::domain::{self, AccountId, EmailKey};
use crate::projection::{self, Effect};
use crate::store::{AppendOutcome, Customer, Lookup, Source, Store, StoreError};
use crate::stripe::api::{CreatedCustomer, NewCustomer, StripeApi, StripeApiError};
use crate::stripe::event::CustomerEvent;
use crate::stripe::reads::{ListOf, Listed};
use crate::stripe::recorded::{RecordedEvent, Request};
use crate::sync::record::Snapshot;

/// A valid ensure. Build it with [`EnsureRequest::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsureRequest {
    pub account: AccountId,
    /// Sent to Stripe as given, trimmed: the buyer's spelling is what Stripe shows.
    pub email: String,
    pub email_key: EmailKey,
    /// `None`: the mode of the configured key.
    pub livemode: Option<bool>,
    pub name: Option<String>,
}

/// Why an ensure cannot be asked; the message is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidEnsure(pub String);

impl EnsureRequest {
    pub fn parse(
        account: Option<&str>,
        email: Option<&str>,
        livemode: Option<bool>,
        name: Option<&str>,
    ) -> Result<Self, InvalidEnsure> {
        let invalid = |message: &str| InvalidEnsure(message.to_owned());
        let account = account.ok_or_else(|| invalid("account is required"))?;
        let account = AccountId::parse(account).map_err(|e| InvalidEnsure(e.to_string()))?;
        // It travels in the Stripe-Account header, which carries visible ASCII only.
        if !account.as_str().bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("account must be printable ASCII without spaces"));
        }
        let email = email.ok_or_else(|| invalid("email is required"))?.trim();
        // The projection's own checks: a customer it would refuse could never be found
        // again, so it is never created.
        let email_key = EmailKey::parse(email).map_err(|e| InvalidEnsure(e.to_string()))?;
        if let Some(name) = name {
            domain::check_name(name).map_err(|e| InvalidEnsure(e.to_string()))?;
        }
        Ok(Self {
            account,
            email: email.to_owned(),
            email_key,
            livemode,
            name: name.map(str::to_owned),
        })
    }
}

/// The answer: the lookup body plus whether this call created the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ensured {
    #[serde(flatten)]
    pub customer: Customer,
    /// True for exactly one caller per customer: the one whose record of Stripe's answer
    /// entered the log first.
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EnsureError {
    #[error(transparent)]
    Invalid(#[from] InvalidEnsure),
    #[error("ensure is disabled: STRIPE_SECRET_KEY is not set")]
    Disabled,
    #[error("livemode is {requested} but the configured Stripe key is a {} key", if *.key { "live" } else { "test" })]
    LivemodeMismatch { requested: bool, key: bool },
    #[error(transparent)]
    Stripe(#[from] StripeApiError),
    #[error("the event store is unavailable; retry later")]
    Store(#[from] StoreError),
    /// Stripe answered the idempotency key with a customer the read model no longer has
    /// under this email: deleted or moved to another email since it was created.
    #[error("Stripe returned {customer_id} for this key, but it has since been deleted or changed its email; Stripe forgets the idempotency key 24 hours after the first call")]
    Superseded { customer_id: String },
    /// Asking Stripe for an existing customer before creating one failed (before a backfill
    /// of the account completed): nothing was created.
    #[error("cannot ask Stripe whether this customer exists; nothing was created, retry later")]
    PreCheckFailed,
    /// Stripe refused our key as used by another caller, and that caller's customer did
    /// not reach the read model in time.
    #[error("another request is creating this customer and it is not recorded yet; retry shortly")]
    CreatedElsewhere,
}

/// How long a caller whose key another caller used waits for that caller's record: the
/// other caller has Stripe's answer and only has to commit it.
const CREATED_ELSEWHERE_WAIT: Duration = Duration::from_secs(5);

/// The first pause between two reads of the read model while waiting; doubled each time up
/// to [`CREATED_ELSEWHERE_POLL_MAX`].
const CREATED_ELSEWHERE_POLL: Duration = Duration::from_millis(20);
const CREATED_ELSEWHERE_POLL_MAX: Duration = Duration::from_millis(500);

/// The key of one flight: the read model's key for checkout.
type FlightKey = (AccountId, bool, EmailKey);

/// The keys in flight, each with the lock its callers queue on.
type Flights = Arc<Mutex<HashMap<FlightKey, Arc<tokio::sync::Mutex<()>>>>>;

/// Checkout's get-or-create, shared by every worker of a process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ensurer {
    /// `None`: `STRIPE_SECRET_KEY` is unset and every ensure is refused.
    stripe: Option<StripeApi>,
    platform: AccountId,
    flights: Flights,
    /// Callers past the first lookup: in a flight or queued for one.
    callers: Arc<AtomicUsize>,
}

impl Ensurer {
    pub fn new(stripe: Option<StripeApi>, platform: AccountId) -> Self {
        Self {
            stripe,
            platform,
            flights: Arc::default(),
            callers: Arc::default(),
        }
    }

    /// Callers past the first lookup, in a flight: creating a customer or queued behind the
    /// caller who is.
    pub fn callers_in_flight(&self) -> usize {
        self.callers.load(Ordering::SeqCst)
    }

    /// Looks the customer up and, when absent, creates it through Stripe and records it.
    pub async fn ensure(
        &self,
        store: &Store,
        request: &EnsureRequest,
    ) -> Result<Ensured, EnsureError> {
        // Refused before the lookup, so a misconfiguration shows on the first call rather
        // than on the first new buyer.
        let stripe = self.stripe.as_ref().ok_or(EnsureError::Disabled)?;
        let livemode = match request.livemode {
            None => stripe.livemode(),
            Some(requested) if requested != stripe.livemode() => {
                return Err(EnsureError::LivemodeMismatch {
                    requested,
                    key: stripe.livemode(),
                })
            }
            Some(requested) => requested,
        };
        if let Some(customer) = self.existing(store, request, livemode).await? {
            return Ok(Ensured {
                customer,
                created: false,
            });
        }
        let key = (request.account.clone(), livemode, request.email_key.clone());
        let _counted = Counted::enter(&self.callers);
        let _flight = Flight::join(&self.flights, key).await;
        // A caller that waited finds the first caller's customer here.
        if let Some(customer) = self.existing(store, request, livemode).await? {
            return Ok(Ensured {
                customer,
                created: false,
            });
        }
        self.create(stripe, store, request, livemode).await
    }

    async fn existing(
        &self,
        store: &Store,
        request: &EnsureRequest,
        livemode: bool,
    ) -> Result<Option<Customer>, StoreError> {
        Ok(
            match store
                .lookup(&request.account, &request.email_key, Some(livemode))
                .await?
            {
                Lookup::Found(customer) => Some(customer),
                Lookup::NotFound | Lookup::AmbiguousLivemode => None,
            },
        )
    }

    async fn create(
        &self,
        stripe: &StripeApi,
        store: &Store,
        request: &EnsureRequest,
        livemode: bool,
    ) -> Result<Ensured, EnsureError> {
        if !store.backfill_completed(&request.account, livemode).await? {
            if let Some(found) = self
                .found_on_stripe(stripe, store, request, livemode)
                .await?
            {
                return Ok(found);
            }
        }
        let idempotency_key = idempotency_key(&request.account, livemode, &request.email_key);
        let on_platform = request.account == self.platform;
        let created = match stripe
            .create_customer(&NewCustomer {
                on_behalf_of: (!on_platform).then_some(&request.account),
                email: &request.email,
                name: request.name.as_deref(),
                idempotency_key: &idempotency_key,
            })
            .await
        {
            Ok(created) => created,
            Err(error) if error.is_key_used_elsewhere() => {
                return self.created_elsewhere(store, request, livemode).await;
            }
            Err(error) => return Err(error.into()),
        };
        let event = self.record_event(&created, &request.account, livemode, &idempotency_key)?;
        let customer_id = event.object_id.clone().unwrap_or_default();
        tracing::info!(
            account = %request.account, livemode, customer_id,
            request_id = created.request_id.as_deref().unwrap_or(""),
            "customer created through Stripe"
        );
        let effect = projection::effect_of(&event);
        if let Effect::Error(reason) = &effect {
            return Err(StripeApiError::InvalidResponse(reason.clone()).into());
        }
        let mut outcomes = store.append(vec![(event, effect)], Source::Api).await?;
        let outcome = outcomes.pop().ok_or(StoreError::BatchFailed)?;
        match self.existing(store, request, livemode).await? {
            Some(customer) => Ok(Ensured {
                created: matches!(outcome, AppendOutcome::Stored { .. })
                    && customer.customer_id == customer_id,
                customer,
            }),
            None => Err(EnsureError::Superseded { customer_id }),
        }
    }

    /// Before a backfill of `(account, livemode)` has completed, the read model may lack a
    /// customer Stripe has: ask Stripe (the search, which ignores case but lags writes, and
    /// the list's exact filter on the email as given), record every live customer found
    /// with this email key as a snapshot, and answer with checkout's choice among them
    /// (rule 5). `None`: Stripe has none, create one. A failure of these calls is never a
    /// creation.
    async fn found_on_stripe(
        &self,
        stripe: &StripeApi,
        store: &Store,
        request: &EnsureRequest,
        livemode: bool,
    ) -> Result<Option<Ensured>, EnsureError> {
        let on = (request.account != self.platform).then_some(&request.account);
        let read_at = chrono::Utc::now().timestamp();
        let unavailable = |error: StripeApiError| {
            tracing::warn!(account = %request.account, livemode, error = %error, "cannot ask Stripe for an existing customer");
            EnsureError::PreCheckFailed
        };
        let searched = match stripe
            .search_customers_by_email(on, request.email_key.as_str())
            .await
        {
            Ok(found) => found,
            // The Search API is not offered in every country: a refusal of the search
            // itself leaves the exact list filter to answer, rather than refusing checkout.
            Err(StripeApiError::Rejected { status, .. })
                if status != 429 && (400..500).contains(&status) =>
            {
                tracing::warn!(account = %request.account, status, "Stripe refused the customer search; asking the list filter only");
                Vec::new()
            }
            Err(error) => return Err(unavailable(error)),
        };
        let listed = stripe
            .list_page(
                ListOf::Customers {
                    email: Some(&request.email),
                },
                on,
                None,
            )
            .await
            .map_err(unavailable)?;
        let mut found: Vec<Listed> = Vec::new();
        for customer in searched.into_iter().chain(listed.objects) {
            if !found.iter().any(|seen| seen.id == customer.id) {
                found.push(customer);
            }
        }
        let mut events = Vec::new();
        for customer in &found {
            let event = Snapshot {
                account: &request.account,
                platform: &self.platform,
                livemode,
                created: read_at - 1,
                customer_id: &customer.id,
                object: &customer.raw,
                reading: "ensure",
                source: Source::Api.as_str(),
            }
            .event()
            .map_err(|e| StripeApiError::InvalidResponse(e.to_string()))?;
            // Only customers with this email key: the search's notion of a match is
            // Stripe's, ours is rule 4's.
            let effect = projection::effect_of(&event);
            if let Effect::Snapshot(snapshot) = &effect {
                if snapshot.email_key.as_ref() == Some(&request.email_key) {
                    events.push((event, effect));
                }
            }
        }
        if events.is_empty() {
            return Ok(None);
        }
        store.append(events, Source::Api).await?;
        let customer = self.existing(store, request, livemode).await?;
        if let Some(customer) = &customer {
            tracing::info!(
                account = %request.account, livemode, customer_id = customer.customer_id,
                "existing Stripe customer recorded instead of creating one"
            );
        }
        Ok(customer.map(|customer| Ensured {
            customer,
            created: false,
        }))
    }

    /// Stripe refused our key as used by another request: another caller (another process:
    /// this one runs one flight per key) created or is creating the customer, with another
    /// spelling or name. Its record reaches the shared read model once it commits; wait for
    /// it, a bounded time.
    async fn created_elsewhere(
        &self,
        store: &Store,
        request: &EnsureRequest,
        livemode: bool,
    ) -> Result<Ensured, EnsureError> {
        let deadline = tokio::time::Instant::now() + CREATED_ELSEWHERE_WAIT;
        let mut pause = CREATED_ELSEWHERE_POLL;
        loop {
            if let Some(customer) = self.existing(store, request, livemode).await? {
                tracing::info!(
                    account = %request.account, livemode, customer_id = customer.customer_id,
                    "customer created by another caller with the same idempotency key"
                );
                return Ok(Ensured {
                    customer,
                    created: false,
                });
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                tracing::warn!(
                    account = %request.account, livemode,
                    "Stripe refused the idempotency key as used by another request, and no customer was recorded in time"
                );
                return Err(EnsureError::CreatedElsewhere);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(CREATED_ELSEWHERE_POLL_MAX);
        }
    }

    /// The event that records Stripe's answer; see [`created_record`].
    fn record_event(
        &self,
        created: &CreatedCustomer,
        account: &AccountId,
        livemode: bool,
        idempotency_key: &str,
    ) -> Result<CustomerEvent, StripeApiError> {
        let invalid = |what: &str| StripeApiError::InvalidResponse(what.to_owned());
        let customer_id = created
            .object
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("no string `id`"))?;
        let customer_created = created
            .object
            .get("created")
            .and_then(Value::as_i64)
            .ok_or_else(|| invalid("no integer `created`"))?;
        match created.object.get("livemode").and_then(Value::as_bool) {
            Some(mode) if mode != livemode => return Err(invalid("`livemode` is not the key's")),
            _ => {}
        }
        let id = api_event_id(account, livemode, customer_id);
        created_record(&CreatedRecord {
            id: &id,
            account,
            platform: &self.platform,
            created: customer_created,
            livemode,
            object: &created.raw,
            request_id: created.request_id.as_deref(),
            idempotency_key,
        })
        .event()
        .map_err(|e| StripeApiError::InvalidResponse(e.to_string()))
    }
}

/// Counts a caller until it is done, also when its request is cancelled.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One caller's place in a flight. Holding it means holding the key's lock; dropping it
/// (also when the request is cancelled) releases the lock and removes the map entry once
/// nobody else holds or waits for it, so the map only holds keys in flight.
struct Flight {
    flights: Flights,
    key: FlightKey,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Flight {
    async fn join(flights: &Flights, key: FlightKey) -> Self {
        let lock = {
            // A poisoned map is still a consistent map: entries are inserted or removed
            // whole, under the lock.
            let mut map = flights.lock().unwrap_or_else(PoisonError::into_inner);
            map.entry(key.clone()).or_default().clone()
        };
        let mut flight = Self {
            flights: flights.clone(),
            key,
            lock: lock.clone(),
            guard: None,
        };
        flight.guard = Some(lock.lock_owned().await);
        flight
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.guard = None;
        let mut map = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        // Others clone the entry under this same map lock, so the count cannot grow
        // between the check and the removal. 2 = the map's and ours.
        if map
            .get(&self.key)
            .is_some_and(|entry| Arc::ptr_eq(entry, &self.lock) && Arc::strong_count(entry) == 2)
        {
            map.remove(&self.key);
        }
    }
}

/// The `Idempotency-Key` of a creation: a function of `(account, livemode, email key)`
/// only, so every attempt and every process asks Stripe for the same customer. Versioned
/// and length-prefixed, so no two keys encode alike and a future change of scheme cannot
/// collide with this one.
pub fn idempotency_key(account: &AccountId, livemode: bool, email: &EmailKey) -> String {
    let encoded = format!(
        "stripe-projector/ensure/v1\n{}:{}\n{}\n{}:{}",
        account.as_str().len(),
        account,
        livemode,
        email.as_str().len(),
        email
    );
    format!(
        "ensure-v1-{}",
        hex::encode(Sha256::digest(encoded.as_bytes()))
    )
}

/// The event id of a recorded API answer: a function of the customer (and of its account
/// and mode, which Stripe ids already imply), so recording the same answer twice meets the
/// log's unique event id and is a duplicate, never a second row. The `evt_api_` prefix
/// tells an operator it was not delivered by Stripe.
pub fn api_event_id(account: &AccountId, livemode: bool, customer_id: &str) -> String {
    let encoded = format!(
        "stripe-projector/api-event/v1\n{}:{}\n{}\n{}:{}",
        account.as_str().len(),
        account,
        livemode,
        customer_id.len(),
        customer_id
    );
    let digest = hex::encode(Sha256::digest(encoded.as_bytes()));
    format!("evt_api_{}", &digest[..32])
}

/// What is recorded for a customer created through the API.
pub struct CreatedRecord<'a> {
    pub id: &'a str,
    pub account: &'a AccountId,
    pub platform: &'a AccountId,
    pub created: i64,
    pub livemode: bool,
    pub object: &'a RawValue,
    pub request_id: Option<&'a str>,
    pub idempotency_key: &'a str,
}

/// The record of a customer created through the API (see `stripe::recorded`): a
/// `customer.created` event with id `evt_api_<32 hex>`, `created` the Customer's own,
/// `request` `{"id":"req_...","idempotency_key":"ensure-v1-<64 hex>"}`, source `api`.
///
/// Which snapshot wins (rule 3) between this event and Stripe's own `customer.created`
/// for the same customer: we do not force either. Both carry the same Customer object, so
/// checkout sees the same customer id, email, name and livemode whichever wins, and the
/// winner is a function of the set of events (created, then type rank, then event id), so
/// arrival order and replays agree. What we do choose is `created` = the Customer's own
/// `created` and type `customer.created`: the earliest version a snapshot of this customer
/// can have, so every real change (a `customer.updated` or `customer.deleted`, even in the
/// same second) outranks it, and an old answer replayed by the idempotency key can never
/// undo a newer state. Only `last_event_id`/`last_event_created` may move to Stripe's
/// event when the webhook comes.
pub fn created_record<'a>(record: &CreatedRecord<'a>) -> RecordedEvent<'a> {
    RecordedEvent {
        id: record.id,
        account: record.account,
        platform: record.platform,
        created: record.created,
        livemode: record.livemode,
        object: record.object,
        request: Some(Request {
            id: record.request_id,
            idempotency_key: record.idempotency_key,
        }),
        event_type: "customer.created",
        source: Source::Api.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::event::{self, Delivery};

    fn account(id: &str) -> AccountId {
        AccountId::parse(id).unwrap()
    }

    fn email(raw: &str) -> EmailKey {
        EmailKey::parse(raw).unwrap()
    }

    #[test]
    fn idempotency_key_depends_on_the_normalized_key_only() {
        let a = account("acct_a");
        let key = idempotency_key(&a, false, &email(" Ada@Example.com"));
        assert_eq!(key, idempotency_key(&a, false, &email("ada@example.com ")));
        assert_eq!(key.len(), "ensure-v1-".len() + 64);
        assert_ne!(key, idempotency_key(&a, true, &email("ada@example.com")));
        assert_ne!(
            key,
            idempotency_key(&account("acct_b"), false, &email("ada@example.com"))
        );
        // Moving the boundary between account and email never gives the same key.
        assert_ne!(
            idempotency_key(&account("acct_ab"), false, &email("c@d")),
            idempotency_key(&account("acct_a"), false, &email("bc@d"))
        );
    }

    #[test]
    fn api_event_id_is_deterministic_and_valid() {
        let a = account("acct_a");
        let id = api_event_id(&a, false, "cus_1");
        assert_eq!(id, api_event_id(&a, false, "cus_1"));
        assert_ne!(id, api_event_id(&a, false, "cus_2"));
        assert_ne!(id, api_event_id(&a, true, "cus_1"));
        assert!(id.starts_with("evt_api_") && crate::domain::EventId::parse(&id).is_ok());
    }

    #[test]
    fn payload_parses_as_the_customer_created_event_it_records() {
        let object = RawValue::from_string(
            r#"{"id":"cus_1","object":"customer","email":"A@b.c","created":7}"#.to_owned(),
        )
        .unwrap();
        let platform = account("platform");
        for (tag, expected) in [(Some("acct_a"), "acct_a"), (None, "platform")] {
            let tagged = tag.map(account);
            let payload = created_record(&CreatedRecord {
                id: "evt_api_1",
                account: tagged.as_ref().unwrap_or(&platform),
                platform: &platform,
                created: 7,
                livemode: false,
                object: &object,
                request_id: Some("req_1"),
                idempotency_key: "ensure-v1-x",
            })
            .payload()
            .unwrap();
            assert!(payload.contains(r#""data":{"object":{"id":"cus_1","object":"customer","email":"A@b.c","created":7}}"#));
            assert!(payload.ends_with(r#""source":"api"}"#));
            let Ok(Delivery::Customer(event)) = event::parse(payload.as_bytes(), &platform) else {
                panic!("{payload}");
            };
            assert_eq!(event.account.as_str(), expected);
            assert_eq!(event.event_type, "customer.created");
            assert_eq!((event.created, event.livemode), (7, false));
            assert_eq!(event.object_id.as_deref(), Some("cus_1"));
        }
    }

    #[tokio::test]
    async fn flights_queue_callers_of_one_key_and_leave_no_entry_behind() {
        let flights = Arc::default();
        let key = (account("acct_a"), false, email("a@b.c"));
        let first = Flight::join(&flights, key.clone()).await;
        let waiter = {
            let (flights, key) = (flights.clone(), key.clone());
            tokio::spawn(async move { drop(Flight::join(&flights, key).await) })
        };
        // The waiter cannot get in while the first holds the key; another key can.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(Flight::join(&flights, (account("acct_b"), false, email("a@b.c"))).await);
        drop(first);
        waiter.await.unwrap();
        assert!(flights.lock().unwrap().is_empty());
    }

    #[test]
    fn requests_refuse_missing_blank_and_unstorable_values() {
        let ok =
            EnsureRequest::parse(Some("acct_1"), Some(" Ada@X.io "), None, Some("Ada")).unwrap();
        assert_eq!(ok.email, "Ada@X.io");
        assert_eq!(ok.email_key.as_str(), "ada@x.io");
        let cases = [
            (None, Some("a@b.c"), None),
            (Some(""), Some("a@b.c"), None),
            (Some("acct 1"), Some("a@b.c"), None),
            (Some("acct_é"), Some("a@b.c"), None),
            (Some("acct_1"), None, None),
            (Some("acct_1"), Some("  "), None),
            (Some("acct_1"), Some("a\u{0}@b.c"), None),
            (Some("acct_1"), Some("a@b.c"), Some("A\u{0}")),
            (Some("acct_1"), Some("a@b.c"), Some("Ada\nLovelace")),
            (Some("acct_1"), Some("a@b.c"), Some(&*"a".repeat(257))),
            (
                Some("acct_1"),
                Some(&*format!("{}@b.c", "a".repeat(509))),
                None,
            ),
        ];
        for (account, email, name) in cases {
            assert!(
                EnsureRequest::parse(account, email, None, name).is_err(),
                "{account:?} {email:?} {name:?}"
            );
        }
    }
}
