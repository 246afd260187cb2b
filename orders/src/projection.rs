//! The orders read model: one JSON view per order ([`OrderView`], folded by [`evolve`]), keyed
//! by order id, and a customer → orders index, in the projection's own namespace of a replica's
//! store.

use shared_events::view::{Applied, Changes, ReadModel, ViewError, Views};

use crate::events::{OrderEvent, OrderPayload};
use crate::views::{OrderView, VersionGap, evolve};

/// Where a customer's order sits in the customer's list: by placement time, then id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CustomerCursor {
    pub placed_at_ms: i64,
    pub order_id: String,
}

impl CustomerCursor {
    /// `"<placed_at_ms>-<order_id>"`, opaque to clients.
    pub fn encode(&self) -> String {
        format!("{}-{}", self.placed_at_ms, self.order_id)
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (ms, id) = text.split_once('-')?;
        let placed_at_ms = ms.parse().ok()?;
        (!id.is_empty()).then(|| Self {
            placed_at_ms,
            order_id: id.to_owned(),
        })
    }
}

/// The customer index key of an order: customer, NUL, placement time (fixed-width hex, so byte
/// order is time order), NUL, order id.
fn customer_key(customer_id: &str, placed_at_ms: i64, order_id: &str) -> Vec<u8> {
    let ms = u64::try_from(placed_at_ms).unwrap_or(0);
    format!("{customer_id}\0{ms:016x}\0{order_id}").into_bytes()
}

fn cursor_of(key: &[u8]) -> Option<CustomerCursor> {
    let text = std::str::from_utf8(key).ok()?;
    let mut parts = text.split('\0');
    let (_, ms, id) = (parts.next()?, parts.next()?, parts.next()?);
    Some(CustomerCursor {
        placed_at_ms: i64::try_from(u64::from_str_radix(ms, 16).ok()?).ok()?,
        order_id: id.to_owned(),
    })
}

/// Projects order events into [`OrderView`]s and a customer → orders index.
#[derive(Debug, Default, Clone, Copy)]
pub struct OrdersProjection;

impl OrdersProjection {
    /// Up to `limit` of a customer's orders after `after`, oldest first, among the orders whose
    /// partition `serves` says this replica answers for.
    pub fn customer_orders(
        views: &dyn Views,
        customer_id: &str,
        after: Option<&CustomerCursor>,
        limit: usize,
        serves: impl Fn(&str) -> bool,
    ) -> Result<Vec<(CustomerCursor, OrderView)>, ViewError> {
        let prefix = format!("{customer_id}\0").into_bytes();
        let mut start = match after {
            Some(c) => {
                let mut key = customer_key(customer_id, c.placed_at_ms, &c.order_id);
                key.push(0);
                key
            }
            None => prefix.clone(),
        };
        let mut found = Vec::new();
        // The store may hold orders of partitions this replica no longer owns; skip those.
        const CHUNK: usize = 256;
        loop {
            let keys = views.scan(&prefix, &start, CHUNK)?;
            let exhausted = keys.len() < CHUNK;
            for key in &keys {
                let Some(cursor) = cursor_of(key) else {
                    continue;
                };
                if !serves(&cursor.order_id) {
                    continue;
                }
                if let Some(view) = Self::read(views, &cursor.order_id)? {
                    found.push((cursor, view));
                    if found.len() >= limit {
                        return Ok(found);
                    }
                }
            }
            match keys.last() {
                Some(last) if !exhausted => {
                    start = last.clone();
                    start.push(0);
                }
                _ => return Ok(found),
            }
        }
    }

    /// The order's view as the JSON document `GET /orders/{id}` answers with. The projection
    /// stores each view as exactly that document (`serde_json` of [`OrderView`]), so a read
    /// hands the stored bytes out as they are, without parsing and printing them again. A change
    /// to the shape of [`OrderView`] must therefore bump [`ReadModel::VERSION`], which rebuilds
    /// every stored view.
    pub fn read_json(views: &dyn Views, order_id: &str) -> Result<Option<Vec<u8>>, ViewError> {
        views.get(order_id)
    }

    pub fn read(views: &dyn Views, order_id: &str) -> Result<Option<OrderView>, ViewError> {
        shared_events::view::read_json(views, order_id)
    }
}

impl ReadModel for OrdersProjection {
    type Event = OrderEvent;
    const NAMESPACE: &'static str = "orders";
    /// 2: the customer index.
    const VERSION: u32 = 2;
    const TOPICS: &'static [&'static str] = &["orders"];

    fn apply(
        &self,
        views: &dyn Views,
        changes: &mut dyn Changes,
        event: &OrderEvent,
        _partition: i32,
    ) -> Result<Applied, ViewError> {
        let current = Self::read(views, &event.envelope.aggregate_id)?;
        match evolve(current, event) {
            Ok(view) => {
                if let OrderPayload::Placed { customer_id, .. } = &event.payload {
                    changes.index(customer_key(
                        customer_id,
                        event.envelope.occurred_at_ms,
                        &view.order_id,
                    ));
                }
                shared_events::view::put_json(changes, &view.order_id, &view);
                Ok(Applied::Changed)
            }
            Err(VersionGap { expected, got }) => Ok(Applied::VersionGap { expected, got }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::events::{Envelope, LineItem};
    use crate::views::OrderStatus;
    use shared_events::view::MemoryViews;

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
    fn cursors_round_trip_and_index_keys_sort_by_time() {
        let cursor = CustomerCursor {
            placed_at_ms: 1_795_000_000_123,
            order_id: "0193-ab.c_d".into(),
        };
        assert_eq!(
            CustomerCursor::decode(&cursor.encode()),
            Some(cursor.clone())
        );
        assert_eq!(CustomerCursor::decode("x-1"), None);
        assert_eq!(CustomerCursor::decode("12-"), None);
        let key = customer_key("c-1", cursor.placed_at_ms, &cursor.order_id);
        assert_eq!(cursor_of(&key), Some(cursor));
        assert!(customer_key("c-1", 9, "z") < customer_key("c-1", 10, "a"));
    }

    #[test]
    fn customer_orders_page_through_owned_orders_only() {
        let mut store = MemoryViews::default();
        for (i, id) in ["o-a", "o-b", "o-c", "o-d"].into_iter().enumerate() {
            let mut event = placed();
            event.envelope.aggregate_id = id.into();
            event.envelope.occurred_at_ms += i64::try_from(i).unwrap();
            assert_eq!(
                store.apply(&OrdersProjection, &event, 0).unwrap(),
                Applied::Changed
            );
        }
        let serves = |id: &str| id != "o-b";
        let page = OrdersProjection::customer_orders(&store, "c-42", None, 2, serves).unwrap();
        let ids: Vec<&str> = page.iter().map(|(_, v)| v.order_id.as_str()).collect();
        assert_eq!(ids, ["o-a", "o-c"]);
        let rest =
            OrdersProjection::customer_orders(&store, "c-42", Some(&page[1].0), 2, serves).unwrap();
        let ids: Vec<&str> = rest.iter().map(|(_, v)| v.order_id.as_str()).collect();
        assert_eq!(ids, ["o-d"]);
        assert!(
            OrdersProjection::customer_orders(&store, "c-4", None, 2, serves)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn out_of_order_versions_are_refused() {
        let view = evolve(None, &placed()).unwrap();
        let cancelled = |v| event(v, OrderPayload::Cancelled { reason: "r".into() });
        assert_eq!(
            evolve(Some(view.clone()), &cancelled(3)),
            Err(VersionGap {
                expected: 2,
                got: 3
            })
        );
        assert_eq!(
            evolve(Some(view), &placed()),
            Err(VersionGap {
                expected: 2,
                got: 1
            })
        );
        assert!(evolve(None, &cancelled(1)).is_err());
    }
}
