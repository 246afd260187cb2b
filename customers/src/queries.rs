//! The query the customers read model answers: a customer's profile joined with what their
//! orders add up to over every orders partition.

use serde::Serialize;
use shared_events::query::{Gather, Join, Keyed, NotFound, Partitions, Queries, QueryDoc};
use shared_events::view::{ViewError, Views};

use crate::projection::{CustomersProjection, OrdersSummary};
use crate::views::CustomerView;

/// Registers the customers queries.
pub fn register(queries: &mut impl Queries) {
    queries.join::<CustomerById>();
}

/// `GET /customers/{customer_id}`: the profile, on the replica owning the customer's partition,
/// joined with the summary of their orders over every orders partition.
#[derive(Debug)]
pub struct CustomerById;

/// The customer's profile and what their orders add up to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerAnswer {
    #[serde(flatten)]
    profile: CustomerView,
    orders: OrdersAnswer,
}

/// What a customer's orders add up to, over every partition.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrdersAnswer {
    /// Orders placed.
    count: u64,
    /// Paid and not cancelled, in cents, per currency.
    revenue_cents: std::collections::BTreeMap<String, i64>,
    /// The most recently placed order.
    last_order_id: Option<String>,
}

impl Keyed for CustomerById {
    type Model = CustomersProjection;
    const PATH: &'static str = "/customers/{customer_id}";
    const KEY_TOPIC: &'static str = "customers";
    const NOT_FOUND: NotFound = NotFound {
        code: "customer-not-found",
        title: "Customer not found",
        detail: ("customer ", " is not registered"),
    };
    const DOC: QueryDoc = QueryDoc {
        tag: "customers",
        summary: "A customer's profile joined with their orders, from any replica",
        description: "The replica owning the customer's partition answers (others forward once); the order summary adds up every orders partition's share, or is a retryable 503. A `Consistency-Token` from a customer's or an order's command is honoured.",
        key: "The customer id",
    };
}

impl Join for CustomerById {
    type Found = CustomerView;
    type Gather = CustomerSummary;
    type Answer = CustomerAnswer;

    fn read(views: &dyn Views, key: &str) -> Result<Option<CustomerView>, ViewError> {
        CustomersProjection::profile(views, key)
    }

    fn join(profile: CustomerView, summary: OrdersSummary) -> CustomerAnswer {
        CustomerAnswer {
            profile,
            orders: OrdersAnswer {
                count: summary.count,
                revenue_cents: summary.revenue_cents,
                last_order_id: summary.last_order_id,
            },
        }
    }
}

/// What a customer's orders add up to, over every orders partition: each replica adds up the
/// partitions it serves.
#[derive(Debug)]
pub struct CustomerSummary;

impl Gather for CustomerSummary {
    type Model = CustomersProjection;
    type Params = ();
    type Part = OrdersSummary;
    type Answer = OrdersSummary;
    const PATH: &'static str = "/customers/{customer_id}/summary";
    const TOPIC: &'static str = "orders";
    const DOC: QueryDoc = QueryDoc {
        tag: "customers",
        summary: "What a customer's orders add up to",
        description: "Count, revenue per currency and the last order, over every orders partition.",
        key: "The customer id",
    };
    const PARAMS: &'static [(&'static str, &'static str)] = &[];

    fn params(_pairs: &[(String, String)]) -> Result<(), String> {
        Ok(())
    }

    fn query_string((): &()) -> String {
        String::new()
    }

    fn part(
        views: &dyn Views,
        key: &str,
        (): &(),
        partitions: Partitions<'_>,
    ) -> Result<OrdersSummary, ViewError> {
        let mut summary = OrdersSummary::default();
        for partition in partitions.serving {
            summary.merge(CustomersProjection::summary(views, key, *partition)?);
        }
        Ok(summary)
    }

    fn merge(_key: &str, (): &(), parts: Vec<OrdersSummary>) -> OrdersSummary {
        let mut total = OrdersSummary::default();
        for part in parts {
            total.merge(part);
        }
        total
    }
}
