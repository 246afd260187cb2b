//! The order as queries show it, folded from its events. The view is the public response of
//! `GET /orders/{id}` and what a replica stores for it.

use std::time::{Duration, UNIX_EPOCH};

use crate::events::{OrderEvent, OrderPayload};

/// An event that does not follow the view: not the next version, or not a valid next fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expected version {expected}, got {got}")]
pub struct VersionGap {
    pub expected: i64,
    pub got: i64,
}

/// An order as `GET /orders/{id}` shows it. This is the public response contract and the stored
/// form of the view.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
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

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Placed,
    Paid,
    Shipped,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
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
pub fn evolve(current: Option<OrderView>, event: &OrderEvent) -> Result<OrderView, VersionGap> {
    let envelope = &event.envelope;
    let expected = current.as_ref().map_or(1, |v| v.version + 1);
    if envelope.aggregate_version != expected {
        return Err(VersionGap {
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
            return Err(VersionGap {
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
