//! The orders read model: one JSON view per order, keyed by order id.

use std::time::{Duration, UNIX_EPOCH};

use shared_events::orders::{OrderEvent, OrderPayload};

use crate::projection::{Applied, Projection};
use crate::store::{Store, StoreBatch, StoreError};

/// An order as `GET /orders/{id}` shows it. This is the public response contract and the stored
/// form of the view.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderView {
    pub order_id: String,
    pub customer_id: String,
    pub status: OrderStatus,
    pub items: Vec<ItemView>,
    pub total_cents: i64,
    pub currency: String,
    pub version: i64,
    pub placed_at: String,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Placed,
    Paid,
    Shipped,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ItemView {
    pub sku: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

/// RFC 3339 UTC with milliseconds.
fn timestamp(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The next view of an order after `event`, or why the event does not follow.
pub fn evolve(current: Option<OrderView>, event: &OrderEvent) -> Result<OrderView, Applied> {
    let envelope = &event.envelope;
    let expected = current.as_ref().map_or(1, |v| v.version + 1);
    if envelope.aggregate_version != expected {
        return Err(Applied::VersionGap {
            expected,
            got: envelope.aggregate_version,
        });
    }
    let at = timestamp(envelope.occurred_at_ms);
    let mut view = match (current, &event.payload) {
        (
            None,
            OrderPayload::Placed {
                customer_id,
                currency,
                items,
                total_cents,
            },
        ) => OrderView {
            order_id: envelope.aggregate_id.clone(),
            customer_id: customer_id.clone(),
            status: OrderStatus::Placed,
            items: items
                .iter()
                .map(|i| ItemView {
                    sku: i.sku.clone(),
                    quantity: i.quantity,
                    unit_price_cents: i.unit_price_cents,
                })
                .collect(),
            total_cents: *total_cents,
            currency: currency.clone(),
            version: 0,
            placed_at: at.clone(),
            updated_at: at.clone(),
            payment_ref: None,
            carrier: None,
            tracking_number: None,
            cancellation_reason: None,
        },
        // A first event that is not a placement, or a second placement: not a valid history.
        (None, _) | (Some(_), OrderPayload::Placed { .. }) => {
            return Err(Applied::VersionGap {
                expected,
                got: envelope.aggregate_version,
            });
        }
        (Some(mut view), OrderPayload::Paid { payment_ref, .. }) => {
            view.status = OrderStatus::Paid;
            view.payment_ref = Some(payment_ref.clone());
            view
        }
        (
            Some(mut view),
            OrderPayload::Shipped {
                carrier,
                tracking_number,
            },
        ) => {
            view.status = OrderStatus::Shipped;
            view.carrier = Some(carrier.clone());
            view.tracking_number = Some(tracking_number.clone());
            view
        }
        (Some(mut view), OrderPayload::Cancelled { reason }) => {
            view.status = OrderStatus::Cancelled;
            view.cancellation_reason = Some(reason.clone());
            view
        }
    };
    view.version = envelope.aggregate_version;
    view.updated_at = at;
    Ok(view)
}

/// Projects order events into [`OrderView`]s.
#[derive(Debug, Default)]
pub struct OrdersProjection;

impl OrdersProjection {
    pub fn read(store: &Store, order_id: &str) -> Result<Option<OrderView>, StoreError> {
        Ok(store
            .view(order_id)?
            .and_then(|bytes| match serde_json::from_slice(&bytes) {
                Ok(view) => Some(view),
                Err(error) => {
                    tracing::error!(%error, order_id, "stored view does not parse");
                    None
                }
            }))
    }
}

impl Projection for OrdersProjection {
    type Event = OrderEvent;

    fn apply(
        &self,
        store: &Store,
        batch: &mut StoreBatch,
        event: &OrderEvent,
    ) -> Result<Applied, StoreError> {
        let current = Self::read(store, &event.envelope.aggregate_id)?;
        match evolve(current, event) {
            Ok(view) => {
                // Serialising a struct of strings and integers cannot fail.
                let bytes = serde_json::to_vec(&view).unwrap_or_default();
                batch.put_view(&view.order_id, bytes);
                Ok(Applied::Changed)
            }
            Err(outcome) => Ok(outcome),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use shared_events::orders::{Envelope, LineItem};

    fn event(version: i64, payload: OrderPayload) -> OrderEvent {
        OrderEvent {
            envelope: Envelope {
                event_id: format!("e{version}"),
                aggregate_id: "o-1".into(),
                aggregate_version: version,
                occurred_at_ms: 1_795_000_000_000 + version * 1000,
                command_id: "k".into(),
                idempotency_key: None,
                correlation_id: "c".into(),
            },
            payload,
        }
    }

    fn placed() -> OrderEvent {
        event(
            1,
            OrderPayload::Placed {
                customer_id: "c-42".into(),
                currency: "EUR".into(),
                items: vec![LineItem {
                    sku: "A-1".into(),
                    quantity: 2,
                    unit_price_cents: 1250,
                }],
                total_cents: 2500,
            },
        )
    }

    #[test]
    fn a_history_folds_into_a_view() {
        let view = evolve(None, &placed()).unwrap();
        assert_eq!(view.status, OrderStatus::Placed);
        assert_eq!(view.version, 1);
        assert_eq!(view.placed_at, "2026-11-18T11:06:41.000Z");
        let paid = event(
            2,
            OrderPayload::Paid {
                amount_cents: 2500,
                payment_ref: "p".into(),
            },
        );
        let view = evolve(Some(view), &paid).unwrap();
        assert_eq!((view.status, view.version), (OrderStatus::Paid, 2));
        assert_eq!(view.payment_ref.as_deref(), Some("p"));
        assert_ne!(view.updated_at, view.placed_at);
    }

    #[test]
    fn out_of_order_versions_are_refused() {
        let view = evolve(None, &placed()).unwrap();
        let cancelled = |v| event(v, OrderPayload::Cancelled { reason: "r".into() });
        assert_eq!(
            evolve(Some(view.clone()), &cancelled(3)),
            Err(Applied::VersionGap {
                expected: 2,
                got: 3
            })
        );
        assert_eq!(
            evolve(Some(view), &placed()),
            Err(Applied::VersionGap {
                expected: 2,
                got: 1
            })
        );
        assert!(evolve(None, &cancelled(1)).is_err());
    }
}
