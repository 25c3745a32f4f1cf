//! The Stripe event envelope, parsed from verified bytes.
//!
//! Only the fields the log needs are read; the payload itself is kept verbatim.

use serde_json::{Map, Value};

use crate::domain::{AccountId, EventId, InvalidValue};

/// A verified delivery after parsing.
#[derive(Debug)]
pub enum Delivery {
    /// A `customer.*` event: logged and projected.
    Customer(CustomerEvent),
    /// Any other event (including thin `v2.core.event` notifications): acknowledged only.
    Ignored { event_id: String },
}

/// A `customer.*` event, ready to append.
#[derive(Debug, Clone)]
pub struct CustomerEvent {
    pub id: EventId,
    pub event_type: String,
    /// The event's `account`, else the platform's id.
    pub account: AccountId,
    pub created: i64,
    pub livemode: bool,
    /// `data.object.id` when it is a string.
    pub object_id: Option<String>,
    /// `data.object`, for the projection.
    pub object: Map<String, Value>,
    /// The delivered bytes, exactly as signed.
    pub payload: String,
}

/// Why a signed body is not an event we can take. Stripe never sends these, so they are
/// answered 400 and never retried into success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("`{0}` is missing or not a string")]
    MissingString(&'static str),
    #[error("`{0}` is missing or not an integer")]
    MissingInteger(&'static str),
    #[error("`livemode` is missing or not a boolean")]
    MissingLivemode,
    #[error("`data.object` is missing or not an object")]
    MissingObject,
    #[error("`account` is present but not a string")]
    AccountNotString,
    #[error("`{0}` contains a control character")]
    ControlCharacter(&'static str),
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
}

/// Parses verified bytes. `platform` tags events that carry no `account`.
pub fn parse(body: &[u8], platform: &AccountId) -> Result<Delivery, PayloadError> {
    // UTF-8 is checked once, here: the parser then reads a `str`, and the payload is a
    // plain copy of it.
    let text = std::str::from_utf8(body).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    let Value::Object(mut envelope) = value else {
        return Err(PayloadError::NotAnObject);
    };
    let id = string_field(&envelope, "id")?;
    let event_type = string_field(&envelope, "type")?;
    if !event_type.starts_with("customer.") {
        return Ok(Delivery::Ignored {
            event_id: id.to_owned(),
        });
    }
    let id = EventId::parse(id)?;
    // Stored in a text column: PostgreSQL refuses NUL, and no Stripe type holds a control
    // character. Refused here, it is a 400 rather than a 503 retried for three days.
    if event_type.chars().any(char::is_control) {
        return Err(PayloadError::ControlCharacter("type"));
    }
    let event_type = event_type.to_owned();
    let created = envelope
        .get("created")
        .and_then(Value::as_i64)
        .ok_or(PayloadError::MissingInteger("created"))?;
    let livemode = envelope
        .get("livemode")
        .and_then(Value::as_bool)
        .ok_or(PayloadError::MissingLivemode)?;
    let account = match envelope.get("account") {
        None | Some(Value::Null) => platform.clone(),
        Some(Value::String(account)) => AccountId::parse(account)?,
        Some(_) => return Err(PayloadError::AccountNotString),
    };
    let object = match envelope.remove("data") {
        Some(Value::Object(mut data)) => match data.remove("object") {
            Some(Value::Object(object)) => object,
            _ => return Err(PayloadError::MissingObject),
        },
        _ => return Err(PayloadError::MissingObject),
    };
    let object_id = object.get("id").and_then(Value::as_str).map(str::to_owned);
    if object_id
        .as_deref()
        .is_some_and(|id| id.chars().any(char::is_control))
    {
        return Err(PayloadError::ControlCharacter("data.object.id"));
    }
    let payload = text.to_owned();
    Ok(Delivery::Customer(CustomerEvent {
        id,
        event_type,
        account,
        created,
        livemode,
        object_id,
        object,
        payload,
    }))
}

/// The `data.object` of a stored payload, for rebuilding the projection from the log.
pub fn data_object(payload: &[u8]) -> Result<Map<String, Value>, PayloadError> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        data: Data,
    }
    #[derive(serde::Deserialize)]
    struct Data {
        object: Map<String, Value>,
    }
    serde_json::from_slice::<Envelope>(payload)
        .map(|envelope| envelope.data.object)
        .map_err(|_| PayloadError::MissingObject)
}

fn string_field<'a>(
    envelope: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, PayloadError> {
    envelope
        .get(name)
        .and_then(Value::as_str)
        .ok_or(PayloadError::MissingString(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn platform() -> AccountId {
        AccountId::parse("platform").unwrap()
    }

    fn parse_value(value: Value) -> Result<Delivery, PayloadError> {
        parse(value.to_string().as_bytes(), &platform())
    }

    fn customer_event() -> Value {
        json!({
            "id": "evt_1", "object": "event", "type": "customer.created",
            "account": "acct_1", "created": 1700000000, "livemode": false,
            "data": {"object": {"id": "cus_1", "object": "customer", "email": "a@b.c"}}
        })
    }

    #[test]
    fn customer_event_keeps_account_and_raw_payload() {
        let body = b"{\"id\":\"evt_1\", \"type\":\"customer.created\",\"created\":1,\"livemode\":true,\"account\":\"acct_9\",\"data\":{\"object\":{\"id\":\"cus_1\"}}}";
        let Ok(Delivery::Customer(event)) = parse(body, &platform()) else {
            panic!("expected a customer event");
        };
        assert_eq!(event.account.as_str(), "acct_9");
        assert_eq!(event.payload.as_bytes(), body);
        assert_eq!(event.object_id.as_deref(), Some("cus_1"));
        assert!(event.livemode);
    }

    #[test]
    fn missing_account_means_the_platform() {
        let mut value = customer_event();
        value.as_object_mut().unwrap().remove("account");
        let Ok(Delivery::Customer(event)) = parse_value(value) else {
            panic!()
        };
        assert_eq!(event.account, platform());
    }

    #[test]
    fn other_types_are_ignored_with_their_id() {
        let thin = json!({"id": "evt_thin", "object": "v2.core.event", "type": "v1.customer.updated",
                          "created": "2024-11-01T12:34:56.789Z", "context": "acct_1"});
        assert!(
            matches!(parse_value(thin), Ok(Delivery::Ignored { event_id }) if event_id == "evt_thin")
        );
        let cash = json!({"id": "evt_2", "type": "customer_cash_balance_transaction.created"});
        assert!(matches!(parse_value(cash), Ok(Delivery::Ignored { .. })));
    }

    #[test]
    fn shape_errors_are_typed() {
        let cases: Vec<(Value, PayloadError)> = vec![
            (json!([1]), PayloadError::NotAnObject),
            (
                json!({"type": "customer.created"}),
                PayloadError::MissingString("id"),
            ),
            (
                json!({"id": 5, "type": "customer.created"}),
                PayloadError::MissingString("id"),
            ),
            (json!({"id": "evt"}), PayloadError::MissingString("type")),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_value(value).unwrap_err(), expected);
        }
        let mut no_created = customer_event();
        no_created["created"] = json!("1700000000");
        assert_eq!(
            parse_value(no_created).unwrap_err(),
            PayloadError::MissingInteger("created")
        );
        let mut no_livemode = customer_event();
        no_livemode["livemode"] = json!("false");
        assert_eq!(
            parse_value(no_livemode).unwrap_err(),
            PayloadError::MissingLivemode
        );
        let mut no_object = customer_event();
        no_object["data"]["object"] = json!("cus_1");
        assert_eq!(
            parse_value(no_object).unwrap_err(),
            PayloadError::MissingObject
        );
        let mut bad_account = customer_event();
        bad_account["account"] = json!(7);
        assert_eq!(
            parse_value(bad_account).unwrap_err(),
            PayloadError::AccountNotString
        );
        assert!(matches!(
            parse(b"{not json", &platform()),
            Err(PayloadError::NotJson(_))
        ));
    }

    #[test]
    fn control_characters_in_stored_text_are_invalid_payloads() {
        let mut bad_type = customer_event();
        bad_type["type"] = json!("customer.\u{0}created");
        assert_eq!(
            parse_value(bad_type).unwrap_err(),
            PayloadError::ControlCharacter("type")
        );
        let mut bad_object_id = customer_event();
        bad_object_id["type"] = json!("customer.subscription.created");
        bad_object_id["data"]["object"]["id"] = json!("sub_\u{0}");
        assert_eq!(
            parse_value(bad_object_id).unwrap_err(),
            PayloadError::ControlCharacter("data.object.id")
        );
    }
}
