//! How order events show in live streams: an order's stream (`/orders/{id}/events`) holds its
//! events; the customers domain places them in their customer's stream too.

use serde_json::{Map, Value, json};
use shared_events::live::{StreamKey, StreamSpec, envelope_json};

use crate::events::{OrderEvent, OrderPayload};

/// The streams of `/orders/{id}/events`: one order's events, all in its partition.
pub const ORDER_STREAM: StreamSpec = StreamSpec {
    collection: "orders",
    path: "/orders/{id}/events",
    keyed_on: "orders",
    spans: &[],
    event_types: &["OrderPlaced", "OrderPaid", "OrderShipped", "OrderCancelled"],
    page: Some("/live/orders/{id}"),
    summary: "An order's events as they are committed (Server-Sent Events)",
};

/// The order's stream.
pub fn stream_of(event: &OrderEvent) -> StreamKey {
    StreamKey {
        collection: ORDER_STREAM.collection,
        id: event.envelope.aggregate_id.clone(),
    }
}

/// The event's type and its JSON: the envelope's fields and the payload's.
pub fn render(event: &OrderEvent) -> (&'static str, Map<String, Value>) {
    let mut data = envelope_json(&event.envelope);
    let payload = match &event.payload {
        OrderPayload::Placed {
            customer_id,
            currency,
            items,
            total_cents,
        } => json!({
            "customer_id": customer_id,
            "currency": currency,
            "items": items.iter().map(|item| json!({
                "sku": item.sku,
                "quantity": item.quantity,
                "unit_price_cents": item.unit_price_cents,
            })).collect::<Vec<_>>(),
            "total_cents": total_cents,
        }),
        OrderPayload::Paid {
            amount_cents,
            payment_ref,
        } => json!({ "amount_cents": amount_cents, "payment_ref": payment_ref }),
        OrderPayload::Shipped {
            carrier,
            tracking_number,
        } => json!({ "carrier": carrier, "tracking_number": tracking_number }),
        OrderPayload::Cancelled { reason } => json!({ "reason": reason }),
    };
    if let Value::Object(fields) = payload {
        data.extend(fields);
    }
    (event.payload.name(), data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_events::Envelope;

    #[test]
    fn an_event_shows_its_envelope_and_its_payload() {
        let event = OrderEvent {
            envelope: Envelope {
                event_id: "e-2".into(),
                aggregate_id: "o-1".into(),
                aggregate_version: 2,
                occurred_at_ms: 0,
                command_id: "c".into(),
                idempotency_key: None,
                correlation_id: "r".into(),
            },
            payload: OrderPayload::Paid {
                amount_cents: 700,
                payment_ref: "pay-1".into(),
            },
        };
        let (event_type, data) = render(&event);
        assert_eq!(event_type, "OrderPaid");
        assert_eq!(data["aggregate_id"], "o-1");
        assert_eq!(data["version"], 2);
        assert_eq!(data["occurred_at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(data["amount_cents"], 700);
        assert_eq!(data["payment_ref"], "pay-1");
        assert_eq!(stream_of(&event).id, "o-1");
    }
}
