//! The orders reports: what happened to orders, month by month.
//!
//! Months are UTC, from each event's `occurred_at`. Revenue is money kept: an order's payment
//! counts in the month it was paid, and a paid order cancelled later (before it shipped)
//! takes its payment back in the month it was cancelled. A payment whose order was placed
//! before the report's range starts has no known currency; it counts under `unknown`.

use std::collections::{BTreeMap, HashMap};

use shared_events::report::{Cell, Column, ColumnType, MONTH, Month, Report, Reports};

use crate::events::{OrderEvent, OrderPayload};

/// Registers the orders reports.
pub fn register(reports: &mut impl Reports<OrderEvent>) {
    reports.report::<MonthlyOrders>();
}

/// The currency of a payment whose order the range does not show placed.
pub const UNKNOWN_CURRENCY: &str = "unknown";

/// `monthly-orders`: per month, orders placed, paid, shipped and cancelled, revenue per
/// currency, and new customers (those whose first order in the range falls in that month).
#[derive(Debug)]
pub struct MonthlyOrders;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct MonthRow {
    placed: i64,
    paid: i64,
    shipped: i64,
    cancelled: i64,
    revenue: BTreeMap<String, i64>,
}

/// What the fold keeps: the months' counts, the orders that may still be paid or refunded
/// (forgotten once shipped or cancelled), and each customer's first order.
#[derive(Debug, Default)]
pub struct MonthlyOrdersState {
    months: BTreeMap<Month, MonthRow>,
    open: HashMap<String, OpenOrder>,
    first_order: HashMap<String, i64>,
}

#[derive(Debug)]
struct OpenOrder {
    currency: String,
    paid_cents: i64,
}

impl Report for MonthlyOrders {
    type Event = OrderEvent;
    type State = MonthlyOrdersState;
    const NAME: &'static str = "monthly-orders";
    const TOPICS: &'static [&'static str] = &["orders"];
    const SUMMARY: &'static str = "Per month: orders placed, paid, shipped and cancelled, revenue per currency, new customers";
    const COLUMNS: &'static [Column] = &[
        MONTH,
        Column {
            name: "orders_placed",
            kind: ColumnType::Integer,
            description: "Orders placed in the month",
        },
        Column {
            name: "orders_paid",
            kind: ColumnType::Integer,
            description: "Orders paid in the month",
        },
        Column {
            name: "orders_shipped",
            kind: ColumnType::Integer,
            description: "Orders shipped in the month",
        },
        Column {
            name: "orders_cancelled",
            kind: ColumnType::Integer,
            description: "Orders cancelled in the month",
        },
        Column {
            name: "revenue_cents",
            kind: ColumnType::Amounts,
            description: "Payments in the month less payments of cancelled orders refunded in it, per currency",
        },
        Column {
            name: "new_customers",
            kind: ColumnType::Integer,
            description: "Customers whose first order in the range was placed in the month",
        },
    ];

    fn apply(state: &mut MonthlyOrdersState, event: &OrderEvent) {
        let at = event.envelope.occurred_at_ms;
        let order = &event.envelope.aggregate_id;
        let row = state.months.entry(Month::of(at)).or_default();
        match &event.payload {
            OrderPayload::Placed {
                customer_id,
                currency,
                ..
            } => {
                row.placed += 1;
                state.open.insert(
                    order.clone(),
                    OpenOrder {
                        currency: currency.clone(),
                        paid_cents: 0,
                    },
                );
                state
                    .first_order
                    .entry(customer_id.clone())
                    .and_modify(|first| *first = (*first).min(at))
                    .or_insert(at);
            }
            OrderPayload::Paid { amount_cents, .. } => {
                row.paid += 1;
                let currency = match state.open.get_mut(order) {
                    Some(open) => {
                        open.paid_cents += amount_cents;
                        open.currency.clone()
                    }
                    None => UNKNOWN_CURRENCY.to_owned(),
                };
                *row.revenue.entry(currency).or_default() += amount_cents;
            }
            OrderPayload::Shipped { .. } => {
                row.shipped += 1;
                state.open.remove(order);
            }
            OrderPayload::Cancelled { .. } => {
                row.cancelled += 1;
                if let Some(open) = state.open.remove(order)
                    && open.paid_cents != 0
                {
                    *row.revenue.entry(open.currency).or_default() -= open.paid_cents;
                }
            }
        }
    }

    fn finish(mut state: MonthlyOrdersState) -> Vec<Vec<Cell>> {
        let mut new_customers: BTreeMap<Month, i64> = BTreeMap::new();
        for first in state.first_order.values() {
            *new_customers.entry(Month::of(*first)).or_default() += 1;
        }
        for month in new_customers.keys() {
            state.months.entry(*month).or_default();
        }
        state
            .months
            .into_iter()
            .map(|(month, row)| {
                vec![
                    Cell::Text(month.to_string()),
                    Cell::Integer(row.placed),
                    Cell::Integer(row.paid),
                    Cell::Integer(row.shipped),
                    Cell::Integer(row.cancelled),
                    Cell::Amounts(row.revenue),
                    Cell::Integer(new_customers.get(&month).copied().unwrap_or(0)),
                ]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use shared_events::Envelope;

    use super::*;

    const JAN: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    const FEB: i64 = 1_769_904_000_000; // 2026-02-01T00:00:00Z

    fn event(order: &str, at: i64, payload: OrderPayload) -> OrderEvent {
        OrderEvent {
            envelope: Envelope {
                event_id: format!("{order}-{at}"),
                aggregate_id: order.into(),
                aggregate_version: 1,
                occurred_at_ms: at,
                command_id: "c".into(),
                idempotency_key: None,
                correlation_id: "r".into(),
            },
            payload,
        }
    }

    fn placed(order: &str, customer: &str, currency: &str, at: i64) -> OrderEvent {
        event(
            order,
            at,
            OrderPayload::Placed {
                customer_id: customer.into(),
                currency: currency.into(),
                items: Vec::new(),
                total_cents: 1_000,
            },
        )
    }

    fn paid(order: &str, cents: i64, at: i64) -> OrderEvent {
        event(
            order,
            at,
            OrderPayload::Paid {
                amount_cents: cents,
                payment_ref: "p".into(),
            },
        )
    }

    fn cancelled(order: &str, at: i64) -> OrderEvent {
        event(order, at, OrderPayload::Cancelled { reason: "r".into() })
    }

    fn run(events: &[OrderEvent]) -> serde_json::Value {
        let mut state = MonthlyOrdersState::default();
        for e in events {
            MonthlyOrders::apply(&mut state, e);
        }
        MonthlyOrders::table(state).to_json()["rows"].clone()
    }

    #[test]
    fn counts_revenue_and_new_customers_by_month() {
        let rows = run(&[
            placed("o-1", "c-1", "EUR", JAN),
            paid("o-1", 1_000, JAN + 5),
            placed("o-2", "c-1", "USD", FEB),
            placed("o-3", "c-2", "EUR", FEB + 1),
            paid("o-3", 700, FEB + 2),
            // Refunded in February: January keeps its payment.
            cancelled("o-1", FEB + 3),
            paid("o-9", 50, FEB + 4),
        ]);
        assert_eq!(
            rows,
            serde_json::json!([
                {"month": "2026-01", "orders_placed": 1, "orders_paid": 1, "orders_shipped": 0,
                 "orders_cancelled": 0, "revenue_cents": {"EUR": 1000}, "new_customers": 1},
                {"month": "2026-02", "orders_placed": 2, "orders_paid": 2, "orders_shipped": 0,
                 "orders_cancelled": 1, "revenue_cents": {"EUR": -300, "unknown": 50},
                 "new_customers": 1},
            ])
        );
    }

    #[test]
    fn the_order_across_orders_does_not_matter() {
        let a = [
            placed("o-1", "c-1", "EUR", FEB),
            paid("o-1", 10, FEB),
            placed("o-2", "c-1", "EUR", JAN),
        ];
        let b = [a[2].clone(), a[0].clone(), a[1].clone()];
        assert_eq!(run(&a), run(&b));
        assert_eq!(
            run(&a)[0]["new_customers"],
            1,
            "c-1's first order is January's"
        );
    }
}
