//! The orders domain on the command side: validated command values and the events they decide.
//!
//! Request bodies are parsed here into typed values; the rest of the service never sees an
//! unchecked field. Every offending field is reported, not just the first.

use serde_json::{Map, Value};
use shared_events::orders::{Envelope, LineItem, OrderEvent, OrderPayload};

/// One field that failed validation, named by its JSON path (`items[1].quantity`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a body is not a command.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    /// Not JSON at all, or not a JSON object.
    #[error("{0}")]
    Malformed(String),
    /// JSON of the wrong shape or with values out of range.
    #[error("{} field(s) are invalid", .0.len())]
    Invalid(Vec<FieldError>),
}

const MAX_ITEMS: usize = 100;
const MAX_QUANTITY: i64 = 10_000;
/// Ten million in the currency's major unit, per line: beyond any order this shop takes.
const MAX_UNIT_PRICE_CENTS: i64 = 1_000_000_000;
const MAX_ID_LEN: usize = 64;

/// An identifier as clients send it: 1..=64 characters of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identifier(String);

impl Identifier {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > MAX_ID_LEN {
            return Err(format!("must be 1 to {MAX_ID_LEN} characters"));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err("may contain only letters, digits, '.', '_' and '-'".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An ISO 4217-shaped currency code: three upper-case ASCII letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currency(String);

impl Currency {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.len() == 3 && raw.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(raw.to_owned()))
        } else {
            Err("must be a three-letter upper-case currency code such as EUR".into())
        }
    }
}

/// A validated line of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub sku: Identifier,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

/// `POST /orders`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOrder {
    pub customer_id: Identifier,
    pub currency: Currency,
    pub items: Vec<OrderLine>,
}

/// Accumulates field errors while a body is taken apart.
struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn fail<T>(&mut self, field: impl Into<String>, message: impl Into<String>) -> Option<T> {
        self.errors.push(FieldError::new(field, message));
        None
    }

    fn unknown_fields(&mut self, object: &Map<String, Value>, known: &[&str], prefix: &str) {
        for key in object.keys().filter(|k| !known.contains(&k.as_str())) {
            self.errors
                .push(FieldError::new(format!("{prefix}{key}"), "unknown field"));
        }
    }

    fn string<'a>(
        &mut self,
        object: &'a Map<String, Value>,
        name: &str,
        path: &str,
    ) -> Option<&'a str> {
        match object.get(name) {
            None | Some(Value::Null) => self.fail(path, "is required"),
            Some(Value::String(s)) => Some(s),
            Some(_) => self.fail(path, "must be a string"),
        }
    }

    fn integer(
        &mut self,
        object: &Map<String, Value>,
        name: &str,
        path: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        match object.get(name) {
            None | Some(Value::Null) => self.fail(path, "is required"),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) if (min..=max).contains(&v) => Some(v),
                _ => self.fail(path, format!("must be an integer from {min} to {max}")),
            },
            Some(_) => self.fail(path, "must be an integer"),
        }
    }

    fn identifier(
        &mut self,
        object: &Map<String, Value>,
        name: &str,
        path: &str,
    ) -> Option<Identifier> {
        let raw = self.string(object, name, path)?;
        Identifier::parse(raw).map_or_else(|m| self.fail(path, m), Some)
    }
}

/// Parses a JSON body into an object, or says why it is malformed.
fn object(body: &[u8]) -> Result<Map<String, Value>, CommandError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(CommandError::Malformed(
            "the body must be a JSON object".into(),
        )),
        Err(e) => Err(CommandError::Malformed(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

impl PlaceOrder {
    pub fn parse(body: &[u8]) -> Result<Self, CommandError> {
        let body = object(body)?;
        let mut c = Checker { errors: Vec::new() };
        c.unknown_fields(&body, &["customer_id", "currency", "items"], "");
        let customer_id = c.identifier(&body, "customer_id", "customer_id");
        let currency = c
            .string(&body, "currency", "currency")
            .and_then(|raw| Currency::parse(raw).map_or_else(|m| c.fail("currency", m), Some));
        let items = match body.get("items") {
            None | Some(Value::Null) => c.fail("items", "is required"),
            Some(Value::Array(items)) if items.is_empty() || items.len() > MAX_ITEMS => {
                c.fail("items", format!("must hold 1 to {MAX_ITEMS} items"))
            }
            Some(Value::Array(items)) => {
                let mut lines = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let path = |f: &str| format!("items[{i}].{f}");
                    let Value::Object(item) = item else {
                        c.fail::<()>(format!("items[{i}]"), "must be an object");
                        continue;
                    };
                    c.unknown_fields(
                        item,
                        &["sku", "quantity", "unit_price_cents"],
                        &format!("items[{i}]."),
                    );
                    let sku = c.identifier(item, "sku", &path("sku"));
                    let quantity = c.integer(item, "quantity", &path("quantity"), 1, MAX_QUANTITY);
                    let price = c.integer(
                        item,
                        "unit_price_cents",
                        &path("unit_price_cents"),
                        0,
                        MAX_UNIT_PRICE_CENTS,
                    );
                    if let (Some(sku), Some(quantity), Some(unit_price_cents)) =
                        (sku, quantity, price)
                    {
                        lines.push(OrderLine {
                            sku,
                            // In range by the check above.
                            quantity: i32::try_from(quantity).unwrap_or(i32::MAX),
                            unit_price_cents,
                        });
                    }
                }
                Some(lines)
            }
            Some(_) => c.fail("items", "must be an array"),
        };
        match (customer_id, currency, items) {
            (Some(customer_id), Some(currency), Some(items)) if c.errors.is_empty() => Ok(Self {
                customer_id,
                currency,
                items,
            }),
            _ => Err(CommandError::Invalid(c.errors)),
        }
    }

    /// The order's total. Bounded by the limits above (100 × 10⁴ × 10⁹ < 2⁶³), so no overflow.
    pub fn total_cents(&self) -> i64 {
        self.items
            .iter()
            .map(|l| i64::from(l.quantity) * l.unit_price_cents)
            .sum()
    }

    /// The first event of a new order.
    pub fn decide(&self, metadata: EventMetadata) -> OrderEvent {
        OrderEvent {
            envelope: metadata.envelope(1),
            payload: OrderPayload::Placed {
                customer_id: self.customer_id.as_str().to_owned(),
                currency: self.currency.0.clone(),
                items: self
                    .items
                    .iter()
                    .map(|l| LineItem {
                        sku: l.sku.as_str().to_owned(),
                        quantity: l.quantity,
                        unit_price_cents: l.unit_price_cents,
                    })
                    .collect(),
                total_cents: self.total_cents(),
            },
        }
    }
}

/// Who and when, for the envelope of an event being decided.
#[derive(Debug, Clone)]
pub struct EventMetadata {
    pub order_id: String,
    pub event_id: String,
    pub occurred_at_ms: i64,
    pub command_id: String,
    pub correlation_id: String,
}

impl EventMetadata {
    fn envelope(self, version: i64) -> Envelope {
        Envelope {
            event_id: self.event_id,
            aggregate_id: self.order_id,
            aggregate_version: version,
            occurred_at_ms: self.occurred_at_ms,
            command_id: self.command_id,
            correlation_id: self.correlation_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(err: CommandError) -> Vec<String> {
        match err {
            CommandError::Invalid(errors) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected invalid fields, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_order_parses_and_totals() {
        let body = br#"{"customer_id":"c-42","currency":"EUR","items":[{"sku":"A-1","quantity":2,"unit_price_cents":1250},{"sku":"B","quantity":1,"unit_price_cents":99}]}"#;
        let order = PlaceOrder::parse(body).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(order.customer_id.as_str(), "c-42");
        assert_eq!(order.items.len(), 2);
        assert_eq!(order.total_cents(), 2599);
    }

    #[test]
    fn malformed_bodies_are_malformed() {
        for body in [&b"{"[..], b"[]", b"42", b"", b"\"x\""] {
            assert!(matches!(
                PlaceOrder::parse(body),
                Err(CommandError::Malformed(_))
            ));
        }
    }

    #[test]
    fn every_offending_field_is_named() {
        let body = br#"{"customer_id":"","currency":"eur","items":[{"sku":"A 1","quantity":0,"unit_price_cents":-1,"colour":"red"},"x"],"coupon":"FREE"}"#;
        let mut got = fields(
            PlaceOrder::parse(body)
                .err()
                .unwrap_or(CommandError::Invalid(vec![])),
        );
        got.sort();
        assert_eq!(
            got,
            [
                "coupon",
                "currency",
                "customer_id",
                "items[0].colour",
                "items[0].quantity",
                "items[0].sku",
                "items[0].unit_price_cents",
                "items[1]"
            ]
        );
    }

    #[test]
    fn wrong_types_and_missing_fields_are_invalid() {
        let body = br#"{"customer_id":7,"items":{"sku":"A"}}"#;
        let mut got = fields(
            PlaceOrder::parse(body)
                .err()
                .unwrap_or(CommandError::Invalid(vec![])),
        );
        got.sort();
        assert_eq!(got, ["currency", "customer_id", "items"]);
        let body = br#"{"customer_id":"c","currency":"EUR","items":[{"sku":"A","quantity":1.5,"unit_price_cents":"1"}]}"#;
        let mut got = fields(
            PlaceOrder::parse(body)
                .err()
                .unwrap_or(CommandError::Invalid(vec![])),
        );
        got.sort();
        assert_eq!(got, ["items[0].quantity", "items[0].unit_price_cents"]);
    }

    #[test]
    fn item_count_is_bounded() {
        let item = r#"{"sku":"A","quantity":1,"unit_price_cents":1}"#;
        let many = vec![item; MAX_ITEMS + 1].join(",");
        let body = format!(r#"{{"customer_id":"c","currency":"EUR","items":[{many}]}}"#);
        assert_eq!(
            fields(
                PlaceOrder::parse(body.as_bytes())
                    .err()
                    .unwrap_or(CommandError::Invalid(vec![]))
            ),
            ["items"]
        );
        let body = r#"{"customer_id":"c","currency":"EUR","items":[]}"#;
        assert_eq!(
            fields(
                PlaceOrder::parse(body.as_bytes())
                    .err()
                    .unwrap_or(CommandError::Invalid(vec![]))
            ),
            ["items"]
        );
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(Identifier::parse("o-1.a_B").is_ok());
        for bad in ["", "a b", "ä", "a/b", &"x".repeat(65)] {
            assert!(Identifier::parse(bad).is_err(), "{bad}");
        }
    }
}
