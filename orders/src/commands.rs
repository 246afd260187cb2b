//! The orders domain's commands: validated command values, the rules that decide them into
//! events, and the state the command side folds from those events.
//!
//! Request bodies are parsed here into typed values; the rest of the service never sees an
//! unchecked field. Every offending field is reported, not just the first. [`OrderState`] is
//! the orders aggregate the command engine runs ([`Aggregate`]).

use std::borrow::Cow;

use serde_json::Value;
use shared_events::aggregate::body_schema;
use shared_events::validation::{
    Checker, Text, arrays_hold_objects, fast, in_range, object, parse_fast_or_thorough,
};
use shared_events::{Aggregate, CommandError, CommandSpec, EventMetadata, Identifier, Rejection};

use crate::events::{Envelope, LineItem, OrderEvent, OrderPayload};

const MAX_ITEMS: usize = 100;
const MAX_QUANTITY: i64 = 10_000;
/// Ten million in the currency's major unit, per line: beyond any order this shop takes.
const MAX_UNIT_PRICE_CENTS: i64 = 1_000_000_000;
/// The largest total an order can have under the limits above.
const MAX_ORDER_CENTS: i64 = MAX_ITEMS as i64 * MAX_QUANTITY * MAX_UNIT_PRICE_CENTS;

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

/// `POST /orders` as sent, before validation. Unknown fields are refused.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(
    as = PlaceOrderRequest,
    example = json!({"customer_id": "c-42", "currency": "EUR", "items": [{"sku": "A-1", "quantity": 2, "unit_price_cents": 1250}]})
)]
pub struct PlaceBody<'a> {
    /// The customer: 1 to 64 letters, digits, `.`, `_` or `-`.
    #[serde(borrow)]
    #[schema(value_type = String)]
    customer_id: Cow<'a, str>,
    /// An ISO 4217 code: three capital letters.
    #[serde(borrow)]
    #[schema(value_type = String, pattern = "^[A-Z]{3}$")]
    currency: Cow<'a, str>,
    /// 1 to 100 lines.
    #[serde(borrow)]
    #[schema(min_items = 1, max_items = 100)]
    items: Vec<ItemBody<'a>>,
}

/// One line of an order.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = OrderItem)]
pub struct ItemBody<'a> {
    /// 1 to 64 letters, digits, `.`, `_` or `-`.
    #[serde(borrow)]
    #[schema(value_type = String)]
    sku: Cow<'a, str>,
    #[schema(minimum = 1, maximum = 10000)]
    quantity: i64,
    #[schema(minimum = 0, maximum = 1000000000)]
    unit_price_cents: i64,
}

impl PlaceOrder {
    pub fn parse(body: &[u8]) -> Result<Self, CommandError> {
        parse_fast_or_thorough(body, Self::parse_fast, Self::parse_thorough)
    }

    fn parse_fast(body: &[u8]) -> Option<Self> {
        // A line item is an object; serde's derived struct would also take its fields as an
        // array (`["A-1", 2, 1250]`), which the thorough way refuses.
        if !arrays_hold_objects(body) {
            return None;
        }
        fast(body, Self::valid)
    }

    fn valid(body: PlaceBody<'_>) -> Option<Self> {
        if body.items.is_empty() || body.items.len() > MAX_ITEMS {
            return None;
        }
        let items = body
            .items
            .iter()
            .map(|item| {
                Some(OrderLine {
                    sku: Identifier::parse(&item.sku).ok()?,
                    quantity: i32::try_from(in_range(item.quantity, 1, MAX_QUANTITY)?).ok()?,
                    unit_price_cents: in_range(item.unit_price_cents, 0, MAX_UNIT_PRICE_CENTS)?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            customer_id: Identifier::parse(&body.customer_id).ok()?,
            currency: Currency::parse(&body.currency).ok()?,
            items,
        })
    }

    fn parse_thorough(body: &[u8]) -> Result<Self, CommandError> {
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
}

/// `POST /orders/{id}/payment`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayOrder {
    pub amount_cents: i64,
    pub payment_ref: Text,
}

/// `POST /orders/{id}/payment` as sent.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PayOrderRequest, example = json!({"amount_cents": 2500, "payment_ref": "pay-7781"}))]
pub struct PayBody<'a> {
    /// Must equal the order's total.
    amount_cents: i64,
    /// 1 to 200 characters.
    #[serde(borrow)]
    #[schema(value_type = String)]
    payment_ref: Cow<'a, str>,
}

impl PayOrder {
    pub fn parse(body: &[u8]) -> Result<Self, CommandError> {
        parse_fast_or_thorough(body, Self::parse_fast, Self::parse_thorough)
    }

    fn parse_fast(body: &[u8]) -> Option<Self> {
        fast(body, |b: PayBody<'_>| {
            Some(Self {
                amount_cents: in_range(b.amount_cents, 0, MAX_ORDER_CENTS)?,
                payment_ref: Text::parse(&b.payment_ref).ok()?,
            })
        })
    }

    fn parse_thorough(body: &[u8]) -> Result<Self, CommandError> {
        let body = object(body)?;
        let mut c = Checker { errors: Vec::new() };
        c.unknown_fields(&body, &["amount_cents", "payment_ref"], "");
        let amount = c.integer(&body, "amount_cents", "amount_cents", 0, MAX_ORDER_CENTS);
        let payment_ref = c.text(&body, "payment_ref");
        let command = amount
            .zip(payment_ref)
            .map(|(amount_cents, payment_ref)| Self {
                amount_cents,
                payment_ref,
            });
        c.finish(command)
    }
}

/// `POST /orders/{id}/shipment`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipOrder {
    pub carrier: Text,
    pub tracking_number: Text,
}

/// `POST /orders/{id}/shipment` as sent.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ShipOrderRequest, example = json!({"carrier": "DHL", "tracking_number": "JD0146000043"}))]
pub struct ShipBody<'a> {
    /// 1 to 200 characters.
    #[serde(borrow)]
    #[schema(value_type = String)]
    carrier: Cow<'a, str>,
    /// 1 to 200 characters.
    #[serde(borrow)]
    #[schema(value_type = String)]
    tracking_number: Cow<'a, str>,
}

impl ShipOrder {
    pub fn parse(body: &[u8]) -> Result<Self, CommandError> {
        parse_fast_or_thorough(body, Self::parse_fast, Self::parse_thorough)
    }

    fn parse_fast(body: &[u8]) -> Option<Self> {
        fast(body, |b: ShipBody<'_>| {
            Some(Self {
                carrier: Text::parse(&b.carrier).ok()?,
                tracking_number: Text::parse(&b.tracking_number).ok()?,
            })
        })
    }

    fn parse_thorough(body: &[u8]) -> Result<Self, CommandError> {
        let body = object(body)?;
        let mut c = Checker { errors: Vec::new() };
        c.unknown_fields(&body, &["carrier", "tracking_number"], "");
        let carrier = c.text(&body, "carrier");
        let tracking = c.text(&body, "tracking_number");
        let command = carrier
            .zip(tracking)
            .map(|(carrier, tracking_number)| Self {
                carrier,
                tracking_number,
            });
        c.finish(command)
    }
}

/// `POST /orders/{id}/cancellation`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelOrder {
    pub reason: Text,
}

/// `POST /orders/{id}/cancellation` as sent.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CancelOrderRequest, example = json!({"reason": "changed my mind"}))]
pub struct CancelBody<'a> {
    /// 1 to 200 characters.
    #[serde(borrow)]
    #[schema(value_type = String)]
    reason: Cow<'a, str>,
}

impl CancelOrder {
    pub fn parse(body: &[u8]) -> Result<Self, CommandError> {
        parse_fast_or_thorough(body, Self::parse_fast, Self::parse_thorough)
    }

    fn parse_fast(body: &[u8]) -> Option<Self> {
        fast(body, |b: CancelBody<'_>| {
            Some(Self {
                reason: Text::parse(&b.reason).ok()?,
            })
        })
    }

    fn parse_thorough(body: &[u8]) -> Result<Self, CommandError> {
        let body = object(body)?;
        let mut c = Checker { errors: Vec::new() };
        c.unknown_fields(&body, &["reason"], "");
        let reason = c.text(&body, "reason");
        c.finish(reason.map(|reason| Self { reason }))
    }
}

/// The commands on an order, by name: what the service routes, counts and remembers
/// idempotency keys by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    Place,
    Pay,
    Ship,
    Cancel,
}

impl CommandKind {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Place => "place",
            Self::Pay => "pay",
            Self::Ship => "ship",
            Self::Cancel => "cancel",
        }
    }

    /// Whether the command creates its order (the others need one that exists).
    pub const fn creates(self) -> bool {
        matches!(self, Self::Place)
    }

    /// The command of this name.
    pub fn named(name: &str) -> Option<Self> {
        [Self::Place, Self::Pay, Self::Ship, Self::Cancel]
            .into_iter()
            .find(|kind| kind.name() == name)
    }

    /// The command that writes an event with this payload.
    pub fn of_payload(payload: &OrderPayload) -> Self {
        match payload {
            OrderPayload::Placed { .. } => Self::Place,
            OrderPayload::Paid { .. } => Self::Pay,
            OrderPayload::Shipped { .. } => Self::Ship,
            OrderPayload::Cancelled { .. } => Self::Cancel,
        }
    }
}

/// Any command on an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    Place(PlaceOrder),
    Pay(PayOrder),
    Ship(ShipOrder),
    Cancel(CancelOrder),
}

impl OrderCommand {
    /// The event payload this command asks for. [`decide`] yields exactly this when it accepts
    /// the command, so the same value can be recomputed from the log: it is what makes two
    /// requests "the same" for an `Idempotency-Key`, before and after a restart.
    pub fn requested(&self) -> OrderPayload {
        match self {
            Self::Place(place) => place.payload(),
            Self::Pay(pay) => OrderPayload::Paid {
                amount_cents: pay.amount_cents,
                payment_ref: pay.payment_ref.as_str().to_owned(),
            },
            Self::Ship(ship) => OrderPayload::Shipped {
                carrier: ship.carrier.as_str().to_owned(),
                tracking_number: ship.tracking_number.as_str().to_owned(),
            },
            Self::Cancel(cancel) => OrderPayload::Cancelled {
                reason: cancel.reason.as_str().to_owned(),
            },
        }
    }
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OrderStatus {
    Placed,
    Paid,
    Shipped,
    Cancelled,
}

impl OrderStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::Paid => "paid",
            Self::Shipped => "shipped",
            Self::Cancelled => "cancelled",
        }
    }
}

/// What the command side remembers of an order: just enough to check the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderState {
    pub status: OrderStatus,
    pub total_cents: i64,
}

/// The payload of the event `command` yields on an order in `state` (None: a new order).
pub fn decide(
    state: Option<&OrderState>,
    command: &OrderCommand,
) -> Result<OrderPayload, Rejection> {
    use OrderStatus::{Cancelled, Paid, Placed, Shipped};
    let status = state.map(|s| s.status);
    match (command, state) {
        (OrderCommand::Place(_), None) => Ok(command.requested()),
        (OrderCommand::Place(_), Some(_)) => Err(Rejection("the order already exists".into())),
        (_, None) => Err(Rejection("the order does not exist".into())),
        (OrderCommand::Pay(pay), Some(state)) => match status {
            Some(Placed) if pay.amount_cents == state.total_cents => Ok(command.requested()),
            Some(Placed) => Err(Rejection(format!(
                "the payment of {} cents does not match the order total of {} cents",
                pay.amount_cents, state.total_cents
            ))),
            _ => Err(Rejection(format!(
                "only a placed order can be paid; this one is {}",
                state.status.as_str()
            ))),
        },
        (OrderCommand::Ship(_), Some(state)) => match status {
            Some(Paid) => Ok(command.requested()),
            _ => Err(Rejection(format!(
                "only a paid order can be shipped; this one is {}",
                state.status.as_str()
            ))),
        },
        (OrderCommand::Cancel(_), Some(state)) => match status {
            Some(Shipped | Cancelled) => Err(Rejection(format!(
                "a {} order cannot be cancelled",
                state.status.as_str()
            ))),
            _ => Ok(command.requested()),
        },
    }
}

/// The state after `payload` happened to an order in `state`; None if it cannot follow.
pub fn evolve(state: Option<&OrderState>, payload: &OrderPayload) -> Option<OrderState> {
    use OrderStatus::{Cancelled, Paid, Placed, Shipped};
    match (state, payload) {
        (None, OrderPayload::Placed { total_cents, .. }) => Some(OrderState {
            status: Placed,
            total_cents: *total_cents,
        }),
        (Some(s), OrderPayload::Paid { .. }) => Some(OrderState { status: Paid, ..*s }),
        (Some(s), OrderPayload::Shipped { .. }) => Some(OrderState {
            status: Shipped,
            ..*s
        }),
        (Some(s), OrderPayload::Cancelled { .. }) => Some(OrderState {
            status: Cancelled,
            ..*s
        }),
        _ => None,
    }
}

impl PlaceOrder {
    fn payload(&self) -> OrderPayload {
        OrderPayload::Placed {
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
        }
    }
}

impl Aggregate for OrderState {
    type Event = OrderEvent;
    type Command = OrderCommand;
    type Payload = OrderPayload;

    const NAME: &'static str = "order";
    const COLLECTION: &'static str = "orders";
    const COMMANDS: &'static [CommandSpec] = &[
        CommandSpec {
            name: CommandKind::Place.name(),
            segment: None,
            summary: "Place an order",
            body_schema: body_schema::<PlaceBody<'static>>,
        },
        CommandSpec {
            name: CommandKind::Pay.name(),
            segment: Some("payment"),
            summary: "Pay a placed order (the amount must equal its total)",
            body_schema: body_schema::<PayBody<'static>>,
        },
        CommandSpec {
            name: CommandKind::Ship.name(),
            segment: Some("shipment"),
            summary: "Ship a paid order",
            body_schema: body_schema::<ShipBody<'static>>,
        },
        CommandSpec {
            name: CommandKind::Cancel.name(),
            segment: Some("cancellation"),
            summary: "Cancel an order that has not shipped",
            body_schema: body_schema::<CancelBody<'static>>,
        },
    ];

    fn parse(command: &'static str, body: &[u8]) -> Result<OrderCommand, CommandError> {
        Ok(match CommandKind::named(command) {
            Some(CommandKind::Place) => OrderCommand::Place(PlaceOrder::parse(body)?),
            Some(CommandKind::Pay) => OrderCommand::Pay(PayOrder::parse(body)?),
            Some(CommandKind::Ship) => OrderCommand::Ship(ShipOrder::parse(body)?),
            Some(CommandKind::Cancel) => OrderCommand::Cancel(CancelOrder::parse(body)?),
            None => {
                return Err(CommandError::Malformed(format!(
                    "orders have no command `{command}`"
                )));
            }
        })
    }

    fn requested(command: &OrderCommand) -> OrderPayload {
        command.requested()
    }

    fn decide(state: Option<&Self>, command: &OrderCommand) -> Result<OrderPayload, Rejection> {
        decide(state, command)
    }

    fn evolve(state: Option<&Self>, event: &OrderEvent) -> Option<Self> {
        evolve(state, &event.payload)
    }

    fn event(metadata: EventMetadata, id: &str, version: i64, payload: OrderPayload) -> OrderEvent {
        OrderEvent {
            envelope: Envelope::new(metadata, id, version),
            payload,
        }
    }

    fn payload(event: &OrderEvent) -> &OrderPayload {
        &event.payload
    }

    fn command_of(event: &OrderEvent) -> &'static str {
        CommandKind::of_payload(&event.payload).name()
    }
}

/// For the `parse_agreement` fuzz target: on any body, the fast way alone accepts exactly what
/// the thorough way accepts, and as the same command, for every command of the domain.
#[cfg(feature = "fuzzing")]
pub fn fast_and_thorough_agree(body: &[u8]) -> Result<(), String> {
    shared_events::validation::parses_agree(
        body,
        PlaceOrder::parse_fast,
        PlaceOrder::parse_thorough,
    )?;
    shared_events::validation::parses_agree(body, PayOrder::parse_fast, PayOrder::parse_thorough)?;
    shared_events::validation::parses_agree(
        body,
        ShipOrder::parse_fast,
        ShipOrder::parse_thorough,
    )?;
    shared_events::validation::parses_agree(
        body,
        CancelOrder::parse_fast,
        CancelOrder::parse_thorough,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

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

    /// Variants of a valid body: each field missing, null, of every other JSON type, out of
    /// range, escaped, duplicated; unknown fields; and the body itself broken.
    fn variants(valid: &str) -> Vec<String> {
        let replacements = [
            "null",
            "true",
            "0",
            "-1",
            "1",
            "2.0",
            "1e2",
            "10000",
            "10001",
            "1000000000",
            "1000000001",
            "9223372036854775807",
            "18446744073709551616",
            "\"\"",
            "\" \"",
            "\"A-1\"",
            "\"A\\u002d1\"",
            "\"EUR\"",
            "\"eur\"",
            "\"é\"",
            "\"bad id\"",
            "[]",
            "{}",
            "[{}]",
        ];
        let mut out = vec![
            valid.to_owned(),
            format!(" {valid} "),
            format!("{valid}x"),
            valid.replacen('{', r#"{"extra":1,"#, 1),
            // Not an object (the fields in order, as an array, are added per command).
            format!("[{valid}]"),
        ];
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(valid) else {
            panic!("not an object: {valid}");
        };
        for (key, value) in &map {
            let mut without = map.clone();
            without.remove(key);
            out.push(Value::Object(without).to_string());
            // A duplicate key: the later one counts.
            out.push(valid.replacen('{', &format!(r#"{{"{key}":{value},"#), 1));
            for replacement in replacements {
                let mut changed = map.clone();
                changed.insert(key.clone(), serde_json::from_str(replacement).unwrap());
                out.push(Value::Object(changed).to_string());
            }
        }
        out
    }

    #[test]
    fn the_fast_and_the_thorough_parse_agree_on_every_body() {
        let place = r#"{"customer_id":"c-42","currency":"EUR","items":[{"sku":"A-1","quantity":2,"unit_price_cents":1250}]}"#;
        let mut bodies = variants(place);
        // The same variants inside a line item, and in the number of items.
        let item = r#"{"sku":"A-1","quantity":2,"unit_price_cents":1250}"#;
        for variant in variants(item) {
            bodies.push(place.replace(item, &variant));
            bodies.push(place.replace(item, &format!("{item},{variant}")));
        }
        bodies.push(place.replace(item, ""));
        bodies.push(place.replace(item, &[item; 100].join(",")));
        bodies.push(place.replace(item, &[item; 101].join(",")));
        // serde's derived structs also take their fields in order as an array; the API does not.
        bodies
            .push(r#"["c-42","EUR",[{"sku":"A-1","quantity":2,"unit_price_cents":1250}]]"#.into());
        bodies.push(r#"{"customer_id":"c-42","currency":"EUR","items":[["A-1",2,1250]]}"#.into());
        let accepted = agree(&bodies, PlaceOrder::parse_fast, PlaceOrder::parse_thorough);
        assert!(accepted > 5, "{accepted} of {} accepted", bodies.len());

        let mut pay = variants(r#"{"amount_cents":2599,"payment_ref":"pay-1"}"#);
        pay.push(r#"[2599,"pay-1"]"#.into());
        let accepted = agree(&pay, PayOrder::parse_fast, PayOrder::parse_thorough);
        assert!(accepted > 2, "{accepted} of {} accepted", pay.len());
        let mut ship = variants(r#"{"carrier":"DHL","tracking_number":"J-1"}"#);
        ship.push(r#"["DHL","J-1"]"#.into());
        let accepted = agree(&ship, ShipOrder::parse_fast, ShipOrder::parse_thorough);
        assert!(accepted > 2, "{accepted} of {} accepted", ship.len());
        let mut cancel = variants(r#"{"reason":"changed my mind"}"#);
        cancel.push(r#"["changed my mind"]"#.into());
        let accepted = agree(
            &cancel,
            CancelOrder::parse_fast,
            CancelOrder::parse_thorough,
        );
        assert!(accepted > 1, "{accepted} of {} accepted", cancel.len());
    }

    /// Checks that the fast way alone (no fallback) accepts a body exactly when the thorough way
    /// does, with the same command; returns how many were accepted. Both answers must occur, or
    /// the bodies prove nothing.
    fn agree<C: PartialEq + std::fmt::Debug>(
        bodies: &[String],
        fast: impl Fn(&[u8]) -> Option<C>,
        thorough: impl Fn(&[u8]) -> Result<C, CommandError>,
    ) -> usize {
        let mut accepted = 0;
        for body in bodies {
            let quick = fast(body.as_bytes());
            assert_eq!(quick, thorough(body.as_bytes()).ok(), "{body}");
            accepted += usize::from(quick.is_some());
        }
        assert!(accepted < bodies.len(), "every body was accepted");
        accepted
    }

    #[test]
    fn valid_bodies_take_the_fast_way() {
        let body = br#"{"customer_id":"c-42","currency":"EUR","items":[{"sku":"A\u002d1","quantity":2,"unit_price_cents":1250}]}"#;
        let wire: PlaceBody<'_> = serde_json::from_slice(body).unwrap();
        assert!(PlaceOrder::valid(wire).is_some());
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
    fn a_repeated_key_is_malformed_at_any_depth() {
        let top = br#"{"customer_id":"a","customer_id":"b","currency":"EUR","items":[{"sku":"A","quantity":1,"unit_price_cents":5}]}"#;
        let nested = br#"{"customer_id":"a","currency":"EUR","items":[{"sku":"A","quantity":1,"quantity":2,"unit_price_cents":5}]}"#;
        let unknown = br#"{"customer_id":"a","currency":"EUR","items":[{"sku":"A","quantity":1,"unit_price_cents":5}],"x":1,"x":2}"#;
        for body in [&top[..], nested, unknown] {
            assert!(
                matches!(PlaceOrder::parse(body), Err(CommandError::Malformed(m)) if m.contains("duplicate key")),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(matches!(
            PayOrder::parse(br#"{"amount_cents":1,"amount_cents":1,"payment_ref":"p"}"#),
            Err(CommandError::Malformed(_))
        ));
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

    fn placed(total_cents: i64) -> OrderState {
        OrderState {
            status: OrderStatus::Placed,
            total_cents,
        }
    }

    fn pay(amount_cents: i64) -> OrderCommand {
        OrderCommand::Pay(PayOrder {
            amount_cents,
            payment_ref: Text::parse("p").unwrap(),
        })
    }

    fn ship() -> OrderCommand {
        OrderCommand::Ship(ShipOrder {
            carrier: Text::parse("DHL").unwrap(),
            tracking_number: Text::parse("1").unwrap(),
        })
    }

    fn cancel() -> OrderCommand {
        OrderCommand::Cancel(CancelOrder {
            reason: Text::parse("r").unwrap(),
        })
    }

    /// Decides and evolves in one step, as the command flow does after a commit.
    fn step(state: &OrderState, command: &OrderCommand) -> Result<OrderState, Rejection> {
        let payload = decide(Some(state), command)?;
        evolve(Some(state), &payload).ok_or_else(|| Rejection("did not evolve".into()))
    }

    #[test]
    fn the_life_cycle_follows_the_rules() {
        let order = placed(2500);
        assert!(step(&order, &pay(2400)).is_err(), "amounts must match");
        assert!(step(&order, &ship()).is_err(), "ship only a paid order");
        let paid = step(&order, &pay(2500)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(paid.status, OrderStatus::Paid);
        assert!(step(&paid, &pay(2500)).is_err(), "pay only a placed order");
        let shipped = step(&paid, &ship()).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            step(&shipped, &cancel()).is_err(),
            "a shipped order stays shipped"
        );
        let cancelled = step(&paid, &cancel()).unwrap_or_else(|e| panic!("{e}"));
        assert!(step(&cancelled, &cancel()).is_err());
        assert!(step(&cancelled, &ship()).is_err());
        assert!(step(&cancelled, &pay(2500)).is_err());
        assert!(
            step(&order, &cancel()).is_ok(),
            "a placed order can be cancelled"
        );
        assert!(
            decide(None, &pay(1)).is_err(),
            "no command but place on a missing order"
        );
    }

    #[test]
    fn follow_up_commands_parse_and_name_bad_fields() {
        assert!(PayOrder::parse(br#"{"amount_cents":2500,"payment_ref":"pay-1"}"#).is_ok());
        assert!(ShipOrder::parse(br#"{"carrier":"DHL","tracking_number":"JJD1"}"#).is_ok());
        assert!(CancelOrder::parse(br#"{"reason":"changed my mind"}"#).is_ok());
        let got = fields(
            PayOrder::parse(br#"{"amount_cents":-1,"payment_ref":"","x":1}"#)
                .err()
                .unwrap_or(CommandError::Invalid(vec![])),
        );
        assert_eq!(got, ["x", "amount_cents", "payment_ref"]);
        let got = fields(
            ShipOrder::parse(br#"{"carrier":"a\u0000b"}"#)
                .err()
                .unwrap_or(CommandError::Invalid(vec![])),
        );
        assert_eq!(got, ["carrier", "tracking_number"]);
        assert!(matches!(
            CancelOrder::parse(b"nope"),
            Err(CommandError::Malformed(_))
        ));
    }

    /// Generated bodies, beyond the hand-made variants: the fast way alone and the thorough
    /// way agree on every one. Each field is missing, right, or any JSON value; a line item is
    /// an object or any JSON value (an array of its fields included); an unknown field or a
    /// body that is not an object turns up too.
    mod generated {
        use proptest::prelude::*;
        use serde_json::Value;
        use shared_events::strategies::{any_json, body, field, text, whole};

        use super::super::{CancelOrder, PayOrder, PlaceOrder, ShipOrder};

        fn item() -> BoxedStrategy<Value> {
            prop_oneof![
                8 => body(vec![
                    ("sku", field(Just(Value::from("A-1")), Just(Value::from("a b")))),
                    ("quantity", whole(1..10_001, vec![0, -1, 10_001])),
                    ("unit_price_cents", whole(0..1_000_000_001, vec![-1, 1_000_000_001])),
                ]),
                1 => any_json().boxed(),
            ]
            .boxed()
        }

        fn place() -> BoxedStrategy<Value> {
            body(vec![
                (
                    "customer_id",
                    field(Just(Value::from("c-42")), Just(Value::from("c 42"))),
                ),
                (
                    "currency",
                    field(Just(Value::from("EUR")), Just(Value::from("eur"))),
                ),
                (
                    "items",
                    field(
                        prop::collection::vec(item(), 1..4).prop_map(Value::Array),
                        Just(Value::Array(Vec::new())),
                    ),
                ),
            ])
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            #[test]
            fn placing(body in place()) {
                let body = body.to_string().into_bytes();
                prop_assert_eq!(PlaceOrder::parse_fast(&body), PlaceOrder::parse_thorough(&body).ok());
            }

            #[test]
            fn paying(body in body(vec![
                ("amount_cents", whole(0..3_000, vec![-1])),
                ("payment_ref", text()),
            ])) {
                let body = body.to_string().into_bytes();
                prop_assert_eq!(PayOrder::parse_fast(&body), PayOrder::parse_thorough(&body).ok());
            }

            #[test]
            fn shipping(body in body(vec![("carrier", text()), ("tracking_number", text())])) {
                let body = body.to_string().into_bytes();
                prop_assert_eq!(ShipOrder::parse_fast(&body), ShipOrder::parse_thorough(&body).ok());
            }

            #[test]
            fn cancelling(body in body(vec![("reason", text())])) {
                let body = body.to_string().into_bytes();
                prop_assert_eq!(CancelOrder::parse_fast(&body), CancelOrder::parse_thorough(&body).ok());
            }
        }
    }
}
