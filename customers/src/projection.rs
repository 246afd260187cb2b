//! The customers read model: each customer's profile joined with what their orders add up to.
//! One projection fed by two topics, each applied exactly once (each topic's offsets are stored
//! beside the changes they caused, as for any projection).
//!
//! - From the customers topic (partitions this replica owns in the projection's group): the
//!   customer's profile, [`CustomerView`], under `p/<customer>`.
//! - From the orders topic (likewise): per order the few facts the join needs (`o/<order>`:
//!   customer, currency, total, whether paid or cancelled), and per customer and orders
//!   partition a summary (`s/<customer>/<partition>`: count, revenue per currency, last order).
//!   Payments and cancellations name only their order, hence the facts.
//!
//! A customer's orders are spread over every orders partition, so a replica holds the summaries
//! of the orders partitions it owns; a query adds up the summaries of every partition. Orders placed before their customer registered count like any other:
//! an order's customer id is free text, never checked against the customers topic.
//!
//! Revenue is the total of the orders paid and not cancelled since.

use std::collections::BTreeMap;

use orders::events::{OrderEvent, OrderPayload};
use serde::{Deserialize, Serialize};
use shared_events::view::{Applied, Changes, ReadModel, ViewError, Views, put_json, read_json};

use crate::events::CustomerEvent;
use crate::views::CustomerView;

/// An event of either topic.
#[derive(Debug, Clone)]
pub enum CustomerFeed {
    Customer(CustomerEvent),
    Order(OrderEvent),
}

impl From<CustomerEvent> for CustomerFeed {
    fn from(event: CustomerEvent) -> Self {
        Self::Customer(event)
    }
}

impl From<OrderEvent> for CustomerFeed {
    fn from(event: OrderEvent) -> Self {
        Self::Order(event)
    }
}

/// What the join keeps of one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OrderFacts {
    customer_id: String,
    currency: String,
    total_cents: i64,
    version: i64,
    placed_at_ms: i64,
    paid: bool,
    cancelled: bool,
}

/// What a customer's orders in one orders partition add up to; summaries of several partitions
/// add up with [`OrdersSummary::merge`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrdersSummary {
    /// Orders placed.
    pub count: u64,
    /// Paid and not cancelled, in cents, per currency.
    pub revenue_cents: BTreeMap<String, i64>,
    /// The most recently placed order.
    pub last_order_id: Option<String>,
    /// When it was placed (ms since the epoch), to merge summaries by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_order_at_ms: Option<i64>,
}

impl OrdersSummary {
    pub fn merge(&mut self, other: Self) {
        self.count += other.count;
        for (currency, cents) in other.revenue_cents {
            *self.revenue_cents.entry(currency).or_default() += cents;
        }
        let later = match (&other.last_order_id, other.last_order_at_ms) {
            (Some(id), Some(at)) => match (&self.last_order_id, self.last_order_at_ms) {
                (Some(mine), Some(mine_at)) => (at, id) > (mine_at, mine),
                _ => true,
            },
            _ => false,
        };
        if later {
            self.last_order_id = other.last_order_id;
            self.last_order_at_ms = other.last_order_at_ms;
        }
        self.revenue_cents.retain(|_, cents| *cents != 0);
    }
}

/// Projects both topics into profiles and per-partition order summaries.
#[derive(Debug, Default, Clone, Copy)]
pub struct CustomersProjection;

fn profile_key(customer_id: &str) -> String {
    format!("p/{customer_id}")
}

fn order_key(order_id: &str) -> String {
    format!("o/{order_id}")
}

fn summary_key(customer_id: &str, partition: i32) -> String {
    format!("s/{customer_id}/{partition}")
}

impl CustomersProjection {
    /// The customer's profile, if this replica's store has it.
    pub fn profile(
        views: &dyn Views,
        customer_id: &str,
    ) -> Result<Option<CustomerView>, ViewError> {
        read_json(views, &profile_key(customer_id))
    }

    /// The customer's summary in orders partition `partition`, empty when they have no order
    /// there.
    pub fn summary(
        views: &dyn Views,
        customer_id: &str,
        partition: i32,
    ) -> Result<OrdersSummary, ViewError> {
        Ok(read_json(views, &summary_key(customer_id, partition))?.unwrap_or_default())
    }

    fn apply_customer(
        views: &dyn Views,
        changes: &mut dyn Changes,
        event: &CustomerEvent,
    ) -> Result<Applied, ViewError> {
        let key = profile_key(&event.envelope.aggregate_id);
        let current = read_json::<CustomerView>(views, &key)?;
        match crate::views::evolve(current, event) {
            Ok(view) => {
                put_json(changes, &key, &view);
                Ok(Applied::Changed)
            }
            Err(gap) => Ok(Applied::VersionGap {
                expected: gap.expected,
                got: gap.got,
            }),
        }
    }

    /// An order event read from `partition` of the orders topic: the summary it changes is that
    /// partition's, the share the replica owning the partition answers for.
    fn apply_order(
        views: &dyn Views,
        changes: &mut dyn Changes,
        event: &OrderEvent,
        partition: i32,
    ) -> Result<Applied, ViewError> {
        let envelope = &event.envelope;
        let key = order_key(&envelope.aggregate_id);
        let current = read_json::<OrderFacts>(views, &key)?;
        let expected = current.as_ref().map_or(1, |facts| facts.version + 1);
        if envelope.aggregate_version != expected {
            return Ok(Applied::VersionGap {
                expected,
                got: envelope.aggregate_version,
            });
        }
        let (facts, change) = match (current, &event.payload) {
            (
                None,
                OrderPayload::Placed {
                    customer_id,
                    currency,
                    total_cents,
                    ..
                },
            ) => {
                let facts = OrderFacts {
                    customer_id: customer_id.clone(),
                    currency: currency.clone(),
                    total_cents: *total_cents,
                    version: 1,
                    placed_at_ms: envelope.occurred_at_ms,
                    paid: false,
                    cancelled: false,
                };
                let change = OrdersSummary {
                    count: 1,
                    revenue_cents: BTreeMap::new(),
                    last_order_id: Some(envelope.aggregate_id.clone()),
                    last_order_at_ms: Some(envelope.occurred_at_ms),
                };
                (facts, Some(change))
            }
            (Some(mut facts), payload) => {
                let revenue_before = facts.revenue();
                match payload {
                    OrderPayload::Placed { .. } => {
                        return Ok(Applied::VersionGap {
                            expected,
                            got: envelope.aggregate_version,
                        });
                    }
                    OrderPayload::Paid { .. } => facts.paid = true,
                    OrderPayload::Cancelled { .. } => facts.cancelled = true,
                    OrderPayload::Shipped { .. } => {}
                }
                facts.version = envelope.aggregate_version;
                let delta = facts.revenue() - revenue_before;
                let change = (delta != 0).then(|| OrdersSummary {
                    revenue_cents: BTreeMap::from([(facts.currency.clone(), delta)]),
                    ..OrdersSummary::default()
                });
                (facts, change)
            }
            (None, _) => {
                return Ok(Applied::VersionGap {
                    expected,
                    got: envelope.aggregate_version,
                });
            }
        };
        if let Some(change) = change {
            let summary_key = summary_key(&facts.customer_id, partition);
            let mut summary = read_json::<OrdersSummary>(views, &summary_key)?.unwrap_or_default();
            summary.merge(change);
            put_json(changes, &summary_key, &summary);
        }
        put_json(changes, &key, &facts);
        Ok(Applied::Changed)
    }
}

impl OrderFacts {
    fn revenue(&self) -> i64 {
        if self.paid && !self.cancelled {
            self.total_cents
        } else {
            0
        }
    }
}

impl ReadModel for CustomersProjection {
    type Event = CustomerFeed;
    const NAMESPACE: &'static str = "customers";
    const VERSION: u32 = 1;
    const TOPICS: &'static [&'static str] = &["customers", "orders"];

    fn apply(
        &self,
        views: &dyn Views,
        changes: &mut dyn Changes,
        event: &CustomerFeed,
        partition: i32,
    ) -> Result<Applied, ViewError> {
        match event {
            CustomerFeed::Customer(event) => Self::apply_customer(views, changes, event),
            CustomerFeed::Order(event) => Self::apply_order(views, changes, event, partition),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn summary(count: u64, revenue: &[(&str, i64)], last: Option<(&str, i64)>) -> OrdersSummary {
        OrdersSummary {
            count,
            revenue_cents: revenue.iter().map(|(c, v)| ((*c).to_owned(), *v)).collect(),
            last_order_id: last.map(|(id, _)| id.to_owned()),
            last_order_at_ms: last.map(|(_, at)| at),
        }
    }

    #[test]
    fn summaries_add_up_and_keep_the_latest_order() {
        let mut total = OrdersSummary::default();
        total.merge(summary(2, &[("EUR", 100)], Some(("o-2", 20))));
        total.merge(summary(1, &[("EUR", 50), ("USD", 7)], Some(("o-9", 30))));
        total.merge(summary(3, &[], Some(("o-1", 10))));
        total.merge(OrdersSummary::default());
        assert_eq!(
            total,
            summary(6, &[("EUR", 150), ("USD", 7)], Some(("o-9", 30)))
        );
        // A refund that brings a currency to zero leaves no zero entry behind.
        total.merge(summary(0, &[("USD", -7)], None));
        assert_eq!(total.revenue_cents.len(), 1);
    }

    #[test]
    fn revenue_counts_paid_orders_that_were_not_cancelled() {
        let mut facts = OrderFacts {
            customer_id: "c".into(),
            currency: "EUR".into(),
            total_cents: 500,
            version: 1,
            placed_at_ms: 0,
            paid: false,
            cancelled: false,
        };
        assert_eq!(facts.revenue(), 0);
        facts.paid = true;
        assert_eq!(facts.revenue(), 500);
        facts.cancelled = true;
        assert_eq!(facts.revenue(), 0);
    }

    fn envelope(id: &str, version: i64, at_ms: i64) -> shared_events::Envelope {
        shared_events::Envelope {
            event_id: format!("e-{id}-{version}"),
            aggregate_id: id.into(),
            aggregate_version: version,
            occurred_at_ms: at_ms,
            command_id: "k".into(),
            idempotency_key: None,
            correlation_id: "c".into(),
        }
    }

    fn order(id: &str, version: i64, at_ms: i64, payload: OrderPayload) -> CustomerFeed {
        CustomerFeed::Order(OrderEvent {
            envelope: envelope(id, version, at_ms),
            payload,
        })
    }

    fn placed(id: &str, at_ms: i64, total_cents: i64) -> CustomerFeed {
        order(
            id,
            1,
            at_ms,
            OrderPayload::Placed {
                customer_id: "c-1".into(),
                currency: "EUR".into(),
                items: Vec::new(),
                total_cents,
            },
        )
    }

    fn paid(id: &str, total_cents: i64) -> CustomerFeed {
        order(
            id,
            2,
            0,
            OrderPayload::Paid {
                amount_cents: total_cents,
                payment_ref: "p".into(),
            },
        )
    }

    /// The join in one partition: orders placed before and after the registration count, paid
    /// ones are revenue until cancelled, and nothing applies out of order.
    #[test]
    fn orders_join_their_customer_whenever_they_come() {
        let model = CustomersProjection;
        let mut views = shared_events::view::MemoryViews::default();
        let apply = |views: &mut shared_events::view::MemoryViews, event: CustomerFeed| {
            views.apply(&model, &event, 0).unwrap()
        };
        assert_eq!(apply(&mut views, placed("o-1", 10, 500)), Applied::Changed);
        assert_eq!(apply(&mut views, paid("o-1", 500)), Applied::Changed);
        let registered = CustomerFeed::Customer(CustomerEvent {
            envelope: envelope("c-1", 1, 20),
            payload: crate::events::CustomerPayload::Registered {
                name: "Ada".into(),
                email: "ada@example.com".into(),
            },
        });
        assert_eq!(apply(&mut views, registered), Applied::Changed);
        assert_eq!(apply(&mut views, placed("o-2", 30, 700)), Applied::Changed);
        assert_eq!(apply(&mut views, paid("o-2", 700)), Applied::Changed);
        let cancelled = order("o-1", 3, 40, OrderPayload::Cancelled { reason: "r".into() });
        assert_eq!(apply(&mut views, cancelled), Applied::Changed);
        // The same payment again, or a payment of an order never placed: gaps, not changes.
        assert!(matches!(
            apply(&mut views, paid("o-2", 700)),
            Applied::VersionGap {
                expected: 3,
                got: 2
            }
        ));
        assert!(matches!(
            apply(&mut views, paid("o-9", 1)),
            Applied::VersionGap {
                expected: 1,
                got: 2
            }
        ));

        let profile = CustomersProjection::profile(&views, "c-1")
            .unwrap()
            .unwrap();
        assert_eq!((profile.name.as_str(), profile.version), ("Ada", 1));
        assert_eq!(
            CustomersProjection::summary(&views, "c-1", 0).unwrap(),
            summary(2, &[("EUR", 700)], Some(("o-2", 30)))
        );
        assert_eq!(
            CustomersProjection::summary(&views, "c-2", 0).unwrap(),
            OrdersSummary::default()
        );
    }
}
