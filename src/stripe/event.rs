//! The Stripe event envelope, parsed from verified bytes.
//!
//! Only the fields the log and the projection need are built; the rest of the body is
//! checked to be JSON and skipped, and the payload itself is kept verbatim.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::domain::{AccountId, EventId, InvalidValue};
use crate::projection::EventType;

/// A verified delivery after parsing. Built once per delivery and taken apart at once, so
/// the difference in size between its variants costs nothing worth a box.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Delivery {
    /// A `customer.*` event: logged and projected.
    Customer(CustomerEvent),
    /// Any other event (including thin `v2.core.event` notifications): acknowledged only.
    /// Its id is echoed and logged, so it is validated like a stored one.
    Ignored { event_id: EventId },
}

/// A `customer.*` event, ready to append.
#[derive(Debug, Clone)]
pub struct CustomerEvent {
    pub id: EventId,
    pub event_type: EventType,
    /// The event's `account`, else the platform's id.
    pub account: AccountId,
    pub created: i64,
    pub livemode: bool,
    /// `data.object.id` when it is a string.
    pub object_id: Option<String>,
    /// What the projection reads of `data.object`.
    pub object: ObjectFields,
    /// The delivered bytes, exactly as signed.
    pub payload: String,
}

/// The fields of `data.object` the projection reads, as the JSON values they are (absent
/// and `null` alike are `None`), so that the projection can say precisely what is wrong
/// with one. The rest of the object stays in the payload.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ObjectFields {
    pub object: Option<Value>,
    pub id: Option<Value>,
    pub email: Option<Value>,
    pub name: Option<Value>,
    pub created: Option<Value>,
    /// Present (`true`) on a customer Stripe's API retrieves after its deletion.
    pub deleted: Option<Value>,
}

/// The envelope fields the log needs, each kept as the JSON value it is so that its type
/// is checked below with a precise error; `data` stays raw until the event is known to be
/// a customer event. Any other field is checked to be JSON and skipped unbuilt. A field
/// named twice makes the body invalid rather than leaving the choice to the parser.
#[derive(Deserialize)]
struct Envelope<'a> {
    id: Option<Value>,
    #[serde(rename = "type")]
    event_type: Option<Value>,
    created: Option<Value>,
    livemode: Option<Value>,
    account: Option<Value>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(borrow)]
    object: Option<&'a RawValue>,
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
    // Read as a struct, a JSON array would fill the fields in order: only an object is.
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => PayloadError::NotAnObject,
            Err(e) => PayloadError::NotJson(e.to_string()),
        });
    }
    let envelope: Envelope =
        serde_json::from_str(text).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    let id = string_field(envelope.id.as_ref(), "id")?;
    let event_type = string_field(envelope.event_type.as_ref(), "type")?;
    let id = EventId::parse(id)?;
    if !event_type.starts_with("customer.") {
        return Ok(Delivery::Ignored { event_id: id });
    }
    // Stored in a text column: PostgreSQL refuses NUL, and no Stripe type holds a control
    // character. Refused here, it is a 400 rather than a 503 retried for three days.
    if event_type.chars().any(char::is_control) {
        return Err(PayloadError::ControlCharacter("type"));
    }
    let event_type = EventType::parse(event_type);
    let created = envelope
        .created
        .as_ref()
        .and_then(Value::as_i64)
        .ok_or(PayloadError::MissingInteger("created"))?;
    let livemode = envelope
        .livemode
        .as_ref()
        .and_then(Value::as_bool)
        .ok_or(PayloadError::MissingLivemode)?;
    let account = match &envelope.account {
        None => platform.clone(),
        Some(Value::String(account)) => AccountId::parse(account)?,
        Some(_) => return Err(PayloadError::AccountNotString),
    };
    let object = object_fields(envelope.data)?;
    let object_id = object
        .id
        .as_ref()
        .and_then(Value::as_str)
        .map(str::to_owned);
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

/// What the projection reads of a stored payload's `data.object`, for rebuilding the
/// projection from the log.
pub fn data_object(payload: &[u8]) -> Result<ObjectFields, PayloadError> {
    #[derive(Deserialize)]
    struct Stored<'a> {
        #[serde(borrow)]
        data: Option<&'a RawValue>,
    }
    let text = std::str::from_utf8(payload).map_err(|_| PayloadError::MissingObject)?;
    let stored: Stored = serde_json::from_str(text).map_err(|_| PayloadError::MissingObject)?;
    object_fields(stored.data)
}

/// `data.object`'s fields, when `data` is an object holding an object `object`.
fn object_fields(data: Option<&RawValue>) -> Result<ObjectFields, PayloadError> {
    let is_object = |raw: &RawValue| raw.get().starts_with('{');
    let data = data
        .filter(|raw| is_object(raw))
        .ok_or(PayloadError::MissingObject)?;
    let data: Data = serde_json::from_str(data.get()).map_err(|_| PayloadError::MissingObject)?;
    let object = data
        .object
        .filter(|raw| is_object(raw))
        .ok_or(PayloadError::MissingObject)?;
    serde_json::from_str(object.get()).map_err(|_| PayloadError::MissingObject)
}

fn string_field<'a>(value: Option<&'a Value>, name: &'static str) -> Result<&'a str, PayloadError> {
    value
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
            matches!(parse_value(thin), Ok(Delivery::Ignored { event_id }) if event_id.as_str() == "evt_thin")
        );
        let cash = json!({"id": "evt_2", "type": "customer_cash_balance_transaction.created"});
        assert!(matches!(parse_value(cash), Ok(Delivery::Ignored { .. })));
    }

    #[test]
    fn ignored_events_need_a_valid_id_too() {
        for id in [
            String::new(),
            "e".repeat(256),
            "evt_\u{0}x".into(),
            "evt_\nx".into(),
        ] {
            let other = json!({"id": id, "type": "invoice.paid"});
            assert!(
                matches!(parse_value(other), Err(PayloadError::Invalid(_))),
                "{id:?}"
            );
        }
        let longest = json!({"id": "e".repeat(255), "type": "invoice.paid"});
        assert!(matches!(parse_value(longest), Ok(Delivery::Ignored { .. })));
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
    fn only_an_object_is_read_as_an_envelope_and_only_objects_as_data() {
        // Read as a struct, this array would fill the envelope's fields in order.
        let array = json!(["evt_1", "customer.created", 1, false, null, {"object": {}}]);
        assert_eq!(parse_value(array).unwrap_err(), PayloadError::NotAnObject);
        let mut data_array = customer_event();
        data_array["data"] = json!([{"id": "cus_1", "object": "customer"}]);
        assert_eq!(
            parse_value(data_array).unwrap_err(),
            PayloadError::MissingObject
        );
        let mut object_array = customer_event();
        object_array["data"]["object"] = json!(["customer", "cus_1"]);
        assert_eq!(
            parse_value(object_array).unwrap_err(),
            PayloadError::MissingObject
        );
        let mut null_account = customer_event();
        null_account["account"] = Value::Null;
        let Ok(Delivery::Customer(event)) = parse_value(null_account) else {
            panic!()
        };
        assert_eq!(event.account, platform());
    }

    #[test]
    fn a_field_named_twice_is_not_a_guess() {
        let body = br#"{"id":"evt_1","id":"evt_2","type":"customer.created","created":1,"livemode":false,"data":{"object":{"id":"cus_1"}}}"#;
        assert!(matches!(
            parse(body, &platform()),
            Err(PayloadError::NotJson(message)) if message.contains("duplicate field `id`")
        ));
    }

    #[test]
    fn the_projection_reads_the_same_fields_from_a_delivery_and_from_the_log() {
        let mut value = customer_event();
        value["data"]["object"]["name"] = Value::Null;
        value["data"]["object"]["created"] = json!(1699999999);
        value["data"]["object"]["metadata"] = json!({"ignored": ["deep", {"x": 1}]});
        let body = value.to_string();
        let Ok(Delivery::Customer(event)) = parse(body.as_bytes(), &platform()) else {
            panic!()
        };
        let expected = ObjectFields {
            object: Some(json!("customer")),
            id: Some(json!("cus_1")),
            email: Some(json!("a@b.c")),
            name: None,
            created: Some(json!(1699999999)),
            deleted: None,
        };
        assert_eq!(event.object, expected);
        assert_eq!(data_object(body.as_bytes()).unwrap(), expected);
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
