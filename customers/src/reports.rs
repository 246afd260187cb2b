//! The customers reports: registrations month by month, and what each month's new customers
//! went on to order (a report over the customers and the orders topics).
//!
//! Months are UTC, from each event's `occurred_at`.

use std::collections::{BTreeMap, HashMap};

use orders::events::OrderPayload;
use shared_events::report::{Cell, Column, ColumnType, MONTH, Month, Report, Reports};

use crate::events::{CustomerEvent, CustomerPayload};
use crate::projection::CustomerFeed;

/// Registers the customers reports.
pub fn register(reports: &mut (impl Reports<CustomerEvent> + Reports<CustomerFeed>)) {
    reports.report::<MonthlyCustomers>();
    reports.report::<CustomerCohorts>();
}

/// `monthly-customers`: per month, customers registered and deactivated.
#[derive(Debug)]
pub struct MonthlyCustomers;

impl Report for MonthlyCustomers {
    type Event = CustomerEvent;
    /// Per month: (registered, deactivated).
    type State = BTreeMap<Month, (i64, i64)>;
    const NAME: &'static str = "monthly-customers";
    const TOPICS: &'static [&'static str] = &["customers"];
    const SUMMARY: &'static str = "Per month: customers registered and deactivated";
    const COLUMNS: &'static [Column] = &[
        MONTH,
        Column {
            name: "registered",
            kind: ColumnType::Integer,
            description: "Customers registered in the month",
        },
        Column {
            name: "deactivated",
            kind: ColumnType::Integer,
            description: "Customers deactivated in the month",
        },
    ];

    fn apply(state: &mut Self::State, event: &CustomerEvent) {
        let counts = || Month::of(event.envelope.occurred_at_ms);
        match event.payload {
            CustomerPayload::Registered { .. } => state.entry(counts()).or_default().0 += 1,
            CustomerPayload::Deactivated { .. } => state.entry(counts()).or_default().1 += 1,
            CustomerPayload::EmailChanged { .. } => {}
        }
    }

    fn finish(state: Self::State) -> Vec<Vec<Cell>> {
        state
            .into_iter()
            .map(|(month, (registered, deactivated))| {
                vec![
                    Cell::Text(month.to_string()),
                    Cell::Integer(registered),
                    Cell::Integer(deactivated),
                ]
            })
            .collect()
    }
}

/// The cohort of customers whose registration the range does not hold.
pub const UNREGISTERED: &str = "unregistered";

/// `customer-cohorts`: customers grouped by the month they registered, and what they ordered
/// in the range: how many ordered at all, their orders, and their payments per currency (less
/// payments of orders cancelled later). Orders of customers the range shows no registration of
/// make the cohort `unregistered`.
///
/// The two topics are read in no particular order relative to each other, so the fold keeps
/// per customer what it needs and groups by cohort only when it finishes.
#[derive(Debug)]
pub struct CustomerCohorts;

/// What [`CustomerCohorts`] keeps.
#[derive(Debug, Default)]
pub struct CohortsState {
    registered: HashMap<String, Month>,
    customers: HashMap<String, Ordered>,
    /// Orders that may still be paid or refunded: their customer, currency and payments.
    open: HashMap<String, (String, String, i64)>,
}

#[derive(Debug, Default)]
struct Ordered {
    orders: i64,
    revenue: BTreeMap<String, i64>,
}

#[derive(Debug, Default)]
struct Cohort {
    customers: i64,
    ordering: i64,
    orders: i64,
    revenue: BTreeMap<String, i64>,
}

impl Report for CustomerCohorts {
    type Event = CustomerFeed;
    type State = CohortsState;
    const NAME: &'static str = "customer-cohorts";
    const TOPICS: &'static [&'static str] = &["customers", "orders"];
    const SUMMARY: &'static str = "Customers by the month they registered, and what they ordered (reads the customers and the orders topics)";
    const COLUMNS: &'static [Column] = &[
        Column {
            name: "cohort",
            kind: ColumnType::Text,
            description: "The UTC month the customers registered, YYYY-MM, or `unregistered`",
        },
        Column {
            name: "customers",
            kind: ColumnType::Integer,
            description: "Customers who registered in the month",
        },
        Column {
            name: "ordering_customers",
            kind: ColumnType::Integer,
            description: "Of those, customers with at least one order in the range",
        },
        Column {
            name: "orders_placed",
            kind: ColumnType::Integer,
            description: "Orders the cohort placed in the range",
        },
        Column {
            name: "revenue_cents",
            kind: ColumnType::Amounts,
            description: "The cohort's payments in the range, less refunds of cancelled orders, per currency",
        },
    ];

    fn apply(state: &mut CohortsState, event: &CustomerFeed) {
        match event {
            CustomerFeed::Customer(event) => {
                if let CustomerPayload::Registered { .. } = event.payload {
                    state.registered.insert(
                        event.envelope.aggregate_id.clone(),
                        Month::of(event.envelope.occurred_at_ms),
                    );
                }
            }
            CustomerFeed::Order(event) => {
                let order = &event.envelope.aggregate_id;
                match &event.payload {
                    OrderPayload::Placed {
                        customer_id,
                        currency,
                        ..
                    } => {
                        state
                            .customers
                            .entry(customer_id.clone())
                            .or_default()
                            .orders += 1;
                        state
                            .open
                            .insert(order.clone(), (customer_id.clone(), currency.clone(), 0));
                    }
                    OrderPayload::Paid { amount_cents, .. } => {
                        if let Some((customer, currency, paid)) = state.open.get_mut(order) {
                            *paid += amount_cents;
                            let ordered = state.customers.entry(customer.clone()).or_default();
                            *ordered.revenue.entry(currency.clone()).or_default() += amount_cents;
                        }
                    }
                    OrderPayload::Shipped { .. } => {
                        state.open.remove(order);
                    }
                    OrderPayload::Cancelled { .. } => {
                        if let Some((customer, currency, paid)) = state.open.remove(order)
                            && paid != 0
                        {
                            let ordered = state.customers.entry(customer).or_default();
                            *ordered.revenue.entry(currency).or_default() -= paid;
                        }
                    }
                }
            }
        }
    }

    fn finish(state: CohortsState) -> Vec<Vec<Cell>> {
        let mut cohorts: BTreeMap<Option<Month>, Cohort> = BTreeMap::new();
        for month in state.registered.values() {
            cohorts.entry(Some(*month)).or_default().customers += 1;
        }
        for (customer, ordered) in state.customers {
            let cohort = cohorts
                .entry(state.registered.get(&customer).copied())
                .or_default();
            cohort.ordering += i64::from(ordered.orders > 0);
            cohort.orders += ordered.orders;
            for (currency, cents) in ordered.revenue {
                *cohort.revenue.entry(currency).or_default() += cents;
            }
        }
        // Registered months first, in order; the unregistered last.
        let (registered, unregistered): (Vec<_>, Vec<_>) =
            cohorts.into_iter().partition(|(month, _)| month.is_some());
        registered
            .into_iter()
            .chain(unregistered)
            .map(|(month, cohort)| {
                vec![
                    Cell::Text(month.map_or_else(|| UNREGISTERED.to_owned(), |m| m.to_string())),
                    Cell::Integer(cohort.customers),
                    Cell::Integer(cohort.ordering),
                    Cell::Integer(cohort.orders),
                    Cell::Amounts(cohort.revenue),
                ]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use orders::events::OrderEvent;
    use shared_events::Envelope;

    use super::*;

    const JAN: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    const FEB: i64 = 1_769_904_000_000; // 2026-02-01T00:00:00Z

    fn envelope(id: &str, at: i64) -> Envelope {
        Envelope {
            event_id: format!("{id}-{at}"),
            aggregate_id: id.into(),
            aggregate_version: 1,
            occurred_at_ms: at,
            command_id: "c".into(),
            idempotency_key: None,
            correlation_id: "r".into(),
        }
    }

    fn customer(id: &str, at: i64, payload: CustomerPayload) -> CustomerFeed {
        CustomerFeed::Customer(CustomerEvent {
            envelope: envelope(id, at),
            payload,
        })
    }

    fn registered(id: &str, at: i64) -> CustomerFeed {
        customer(
            id,
            at,
            CustomerPayload::Registered {
                name: "n".into(),
                email: "e@example.com".into(),
            },
        )
    }

    fn order(id: &str, at: i64, payload: OrderPayload) -> CustomerFeed {
        CustomerFeed::Order(OrderEvent {
            envelope: envelope(id, at),
            payload,
        })
    }

    fn placed(id: &str, customer: &str) -> CustomerFeed {
        order(
            id,
            FEB,
            OrderPayload::Placed {
                customer_id: customer.into(),
                currency: "EUR".into(),
                items: Vec::new(),
                total_cents: 500,
            },
        )
    }

    fn paid(id: &str, cents: i64) -> CustomerFeed {
        order(
            id,
            FEB,
            OrderPayload::Paid {
                amount_cents: cents,
                payment_ref: "p".into(),
            },
        )
    }

    fn rows<R: Report<Event = E>, E>(events: &[E]) -> serde_json::Value {
        let mut state = R::State::default();
        for e in events {
            R::apply(&mut state, e);
        }
        R::table(state).to_json()["rows"].clone()
    }

    #[test]
    fn monthly_customers_counts_registrations_and_deactivations() {
        let events: Vec<CustomerEvent> = [
            registered("c-1", JAN),
            registered("c-2", FEB),
            customer(
                "c-1",
                FEB,
                CustomerPayload::Deactivated { reason: "r".into() },
            ),
        ]
        .into_iter()
        .filter_map(|e| match e {
            CustomerFeed::Customer(e) => Some(e),
            CustomerFeed::Order(_) => None,
        })
        .collect();
        assert_eq!(
            rows::<MonthlyCustomers, _>(&events),
            serde_json::json!([
                {"month": "2026-01", "registered": 1, "deactivated": 0},
                {"month": "2026-02", "registered": 1, "deactivated": 1},
            ])
        );
    }

    #[test]
    fn cohorts_join_orders_to_registrations_in_any_order() {
        let events = [
            placed("o-1", "c-1"),
            paid("o-1", 500),
            placed("o-2", "c-1"),
            placed("o-3", "ghost"),
            registered("c-1", JAN),
            registered("c-2", JAN),
            registered("c-3", FEB),
        ];
        let expected = serde_json::json!([
            {"cohort": "2026-01", "customers": 2, "ordering_customers": 1, "orders_placed": 2,
             "revenue_cents": {"EUR": 500}},
            {"cohort": "2026-02", "customers": 1, "ordering_customers": 0, "orders_placed": 0,
             "revenue_cents": {}},
            {"cohort": "unregistered", "customers": 0, "ordering_customers": 1, "orders_placed": 1,
             "revenue_cents": {}},
        ]);
        assert_eq!(rows::<CustomerCohorts, _>(&events), expected);
        // Customers' events first: the same table.
        let mut reordered: Vec<CustomerFeed> = events
            .iter()
            .filter(|e| matches!(e, CustomerFeed::Customer(_)))
            .cloned()
            .collect();
        reordered.extend(
            events
                .iter()
                .filter(|e| matches!(e, CustomerFeed::Order(_)))
                .cloned(),
        );
        assert_eq!(rows::<CustomerCohorts, _>(&reordered), expected);
    }
}
