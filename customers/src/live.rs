//! The live timeline of both domains: each order's events in its order's stream
//! (`/orders/{id}/events`), and each customer's events with their orders' in the customer's
//! stream (`/customers/{id}/events`). Payments, shipments and cancellations name only their
//! order, so the timeline keeps which customer each order belongs to (`c/<order>`).

use orders::events::{OrderEvent, OrderPayload};
use serde_json::json;
use shared_events::live::{LiveEvent, StreamKey, StreamSpec, Timeline, envelope_json};
use shared_events::view::{Changes, ViewError, Views};

use crate::events::{CustomerEvent, CustomerPayload};
use crate::projection::CustomerFeed;

/// The streams of `/customers/{id}/events`: the customer's own events, in the customer's
/// partition, and their orders', in any orders partition.
pub const CUSTOMER_STREAM: StreamSpec = StreamSpec {
    collection: "customers",
    path: "/customers/{id}/events",
    keyed_on: "customers",
    spans: &["orders"],
    event_types: &[
        "CustomerRegistered",
        "CustomerEmailChanged",
        "CustomerDeactivated",
        "OrderPlaced",
        "OrderPaid",
        "OrderShipped",
        "OrderCancelled",
    ],
    page: Some("/live/customers/{id}"),
    summary: "A customer's events and their orders' as they are committed (Server-Sent Events)",
};

/// Orders and customers, live.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommerceTimeline;

fn customer_of(order_id: &str) -> String {
    format!("c/{order_id}")
}

fn customer_stream(customer_id: &str) -> StreamKey {
    StreamKey {
        collection: CUSTOMER_STREAM.collection,
        id: customer_id.to_owned(),
    }
}

/// The event's type and its JSON: the envelope's fields and the payload's.
pub fn render(event: &CustomerEvent) -> (&'static str, serde_json::Map<String, serde_json::Value>) {
    let mut data = envelope_json(&event.envelope);
    let payload = match &event.payload {
        CustomerPayload::Registered { name, email } => json!({ "name": name, "email": email }),
        CustomerPayload::EmailChanged { email } => json!({ "email": email }),
        CustomerPayload::Deactivated { reason } => json!({ "reason": reason }),
    };
    if let serde_json::Value::Object(fields) = payload {
        data.extend(fields);
    }
    (event.payload.name(), data)
}

impl CommerceTimeline {
    fn place_order(
        views: &dyn Views,
        changes: &mut dyn Changes,
        event: &OrderEvent,
    ) -> Result<LiveEvent, ViewError> {
        let (event_type, data) = orders::live::render(event);
        let order_id = &event.envelope.aggregate_id;
        let customer = match &event.payload {
            OrderPayload::Placed { customer_id, .. } => {
                changes.put(&customer_of(order_id), customer_id.clone().into_bytes());
                Some(customer_id.clone())
            }
            _ => views
                .get(&customer_of(order_id))?
                .and_then(|bytes| String::from_utf8(bytes).ok()),
        };
        let mut streams = vec![orders::live::stream_of(event)];
        streams.extend(customer.as_deref().map(customer_stream));
        Ok(LiveEvent {
            event_type,
            data,
            streams,
        })
    }
}

impl Timeline for CommerceTimeline {
    type Event = CustomerFeed;
    const NAMESPACE: &'static str = "timeline";
    const VERSION: u32 = 1;
    const TOPICS: &'static [&'static str] = &["customers", "orders"];
    const STREAMS: &'static [StreamSpec] = &[orders::live::ORDER_STREAM, CUSTOMER_STREAM];

    fn place(
        &self,
        views: &dyn Views,
        changes: &mut dyn Changes,
        event: &CustomerFeed,
    ) -> Result<Option<LiveEvent>, ViewError> {
        match event {
            CustomerFeed::Customer(event) => {
                let (event_type, data) = render(event);
                Ok(Some(LiveEvent {
                    event_type,
                    data,
                    streams: vec![customer_stream(&event.envelope.aggregate_id)],
                }))
            }
            CustomerFeed::Order(event) => Self::place_order(views, changes, event).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use orders::events::LineItem;
    use shared_events::Envelope;
    use shared_events::view::MemoryViews;

    use super::*;

    fn envelope(id: &str, version: i64) -> Envelope {
        Envelope {
            event_id: format!("e-{id}-{version}"),
            aggregate_id: id.into(),
            aggregate_version: version,
            occurred_at_ms: 0,
            command_id: "c".into(),
            idempotency_key: None,
            correlation_id: "r".into(),
        }
    }

    /// Places `event`, keeping what it staged.
    fn place(views: &mut MemoryViews, event: &CustomerFeed) -> LiveEvent {
        let mut staged = MemoryViews::default();
        let placed = CommerceTimeline
            .place(views, &mut staged, event)
            .unwrap()
            .unwrap();
        for key in ["c/o-1", "c/o-2"] {
            if let Some(value) = staged.get(key).unwrap() {
                views.put(key, value);
            }
        }
        placed
    }

    #[test]
    fn an_orders_events_reach_its_stream_and_its_customers() {
        let mut views = MemoryViews::default();
        let registered = place(
            &mut views,
            &CustomerFeed::Customer(CustomerEvent {
                envelope: envelope("c-1", 1),
                payload: CustomerPayload::Registered {
                    name: "Ada".into(),
                    email: "ada@example.com".into(),
                },
            }),
        );
        assert_eq!(registered.event_type, "CustomerRegistered");
        assert_eq!(registered.streams, vec![customer_stream("c-1")]);
        assert_eq!(registered.data["email"], "ada@example.com");

        let placed = place(
            &mut views,
            &CustomerFeed::Order(OrderEvent {
                envelope: envelope("o-1", 1),
                payload: OrderPayload::Placed {
                    customer_id: "c-1".into(),
                    currency: "EUR".into(),
                    items: vec![LineItem {
                        sku: "s".into(),
                        quantity: 1,
                        unit_price_cents: 5,
                    }],
                    total_cents: 5,
                },
            }),
        );
        let order_stream = StreamKey {
            collection: "orders",
            id: "o-1".into(),
        };
        assert_eq!(
            placed.streams,
            vec![order_stream.clone(), customer_stream("c-1")]
        );
        let paid = place(
            &mut views,
            &CustomerFeed::Order(OrderEvent {
                envelope: envelope("o-1", 2),
                payload: OrderPayload::Paid {
                    amount_cents: 5,
                    payment_ref: "p".into(),
                },
            }),
        );
        assert_eq!(paid.event_type, "OrderPaid");
        assert_eq!(
            paid.streams,
            vec![order_stream, customer_stream("c-1")],
            "a payment names only its order; the timeline knows its customer"
        );
        // An order whose placement the timeline never saw shows in its own stream only.
        let orphan = place(
            &mut views,
            &CustomerFeed::Order(OrderEvent {
                envelope: envelope("o-2", 2),
                payload: OrderPayload::Cancelled { reason: "x".into() },
            }),
        );
        assert_eq!(orphan.streams.len(), 1);
    }
}
