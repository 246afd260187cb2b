//! The queries the orders read model answers: an order by id, and a customer's orders over
//! every partition, in pages.

use serde::{Deserialize, Serialize};
use shared_events::Identifier;
use shared_events::query::{Gather, Keyed, Lookup, NotFound, Partitions, Queries, QueryDoc};
use shared_events::view::{ViewError, Views};

use crate::projection::{CustomerCursor, OrdersProjection};
use crate::views::OrderView;

/// Registers the orders queries.
pub fn register(queries: &mut impl Queries) {
    queries.lookup::<OrderById>();
    queries.gather::<CustomerOrders>();
}

/// `GET /orders/{id}`.
#[derive(Debug)]
pub struct OrderById;

impl Keyed for OrderById {
    type Model = OrdersProjection;
    const PATH: &'static str = "/orders/{id}";
    const KEY_TOPIC: &'static str = "orders";
    const NOT_FOUND: NotFound = NotFound {
        code: "order-not-found",
        title: "Order not found",
        detail: ("order ", " does not exist"),
    };
    const DOC: QueryDoc = QueryDoc {
        tag: "orders",
        summary: "An order's current view, from any replica",
        description: "A replica that does not own the key's partition forwards once to the owner (`Forwarded-To`); `Served-By` names the replica that answered.",
        key: "The order id",
    };
}

impl Lookup for OrderById {
    type Answer = OrderView;

    fn read(views: &dyn Views, key: &str) -> Result<Option<Vec<u8>>, ViewError> {
        OrdersProjection::read_json(views, key)
    }
}

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

/// `GET /customers/{customer_id}/orders?limit=&after=`: the customer's orders from every
/// partition, oldest first, in pages of `limit` (1 to 200, 50 by default) after the cursor
/// `after` (the previous page's `next_cursor`).
#[derive(Debug)]
pub struct CustomerOrders;

/// Where a page starts and how long it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageParams {
    pub limit: usize,
    pub after: Option<CustomerCursor>,
}

/// One replica's share of a page: up to `limit` orders of the partitions it serves.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PartialPage {
    orders: Vec<PageEntry>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
struct PageEntry {
    cursor: String,
    order: OrderView,
}

/// A page of a customer's orders, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page {
    customer_id: String,
    orders: Vec<OrderView>,
    /// Absent on the last page.
    next_cursor: Option<String>,
}

impl Gather for CustomerOrders {
    type Model = OrdersProjection;
    type Params = PageParams;
    type Part = PartialPage;
    type Answer = Page;
    const PATH: &'static str = "/customers/{customer_id}/orders";
    const TOPIC: &'static str = "orders";
    const DOC: QueryDoc = QueryDoc {
        tag: "orders",
        summary: "A customer's orders from every partition, oldest first, in pages",
        description: "The receiving replica asks each owner for its partitions (its own included) and merges; if some partition has no owner that answered, the answer is a retryable 503, never a silently partial list.",
        key: "The customer id",
    };
    const PARAMS: &'static [(&'static str, &'static str)] = &[
        ("limit", "Orders per page, 1 to 200 (default 50)"),
        ("after", "`next_cursor` of the previous page"),
    ];

    fn params(pairs: &[(String, String)]) -> Result<PageParams, String> {
        let mut params = PageParams {
            limit: DEFAULT_PAGE,
            after: None,
        };
        for (name, value) in pairs {
            match name.as_str() {
                "limit" => {
                    params.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| format!("limit must be 1 to {MAX_PAGE}"))?;
                }
                "after" => {
                    params.after = Some(
                        CustomerCursor::decode(value)
                            .filter(|c| Identifier::parse(&c.order_id).is_ok())
                            .ok_or("after is not a cursor from a previous page")?,
                    );
                }
                _ => {}
            }
        }
        Ok(params)
    }

    fn query_string(params: &PageParams) -> String {
        match &params.after {
            // Cursor parts are digits, '-' and id characters: nothing to escape.
            Some(after) => format!("limit={}&after={}", params.limit, after.encode()),
            None => format!("limit={}", params.limit),
        }
    }

    fn part(
        views: &dyn Views,
        key: &str,
        params: &PageParams,
        partitions: Partitions<'_>,
    ) -> Result<PartialPage, ViewError> {
        let found = OrdersProjection::customer_orders(
            views,
            key,
            params.after.as_ref(),
            params.limit,
            |order_id| partitions.holds(order_id),
        )?;
        Ok(PartialPage {
            orders: found
                .into_iter()
                .map(|(cursor, order)| PageEntry {
                    cursor: cursor.encode(),
                    order,
                })
                .collect(),
        })
    }

    fn merge(key: &str, params: &PageParams, parts: Vec<PartialPage>) -> Page {
        let limit = params.limit;
        // A full part may have left orders out: there is a next page even if the merge is short.
        let some_part_full = parts.iter().any(|p| p.orders.len() >= limit);
        let mut entries: Vec<(CustomerCursor, OrderView)> = parts
            .into_iter()
            .flat_map(|p| p.orders)
            .filter_map(|e| CustomerCursor::decode(&e.cursor).map(|c| (c, e.order)))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|a, b| a.0 == b.0);
        let more = entries.len() > limit || some_part_full;
        entries.truncate(limit);
        let next_cursor = if more {
            entries.last().map(|(c, _)| c.encode())
        } else {
            None
        };
        Page {
            customer_id: key.to_owned(),
            orders: entries.into_iter().map(|(_, v)| v).collect(),
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn page_parameters_are_checked_and_passed_on_as_they_came() {
        assert_eq!(
            CustomerOrders::params(&[]).unwrap(),
            PageParams {
                limit: 50,
                after: None
            }
        );
        for bad in [
            &[("limit", "0")][..],
            &[("limit", "201")],
            &[("limit", "x")],
            &[("after", "nope")],
            &[("after", "12-..")],
        ] {
            assert!(CustomerOrders::params(&pairs(bad)).is_err(), "{bad:?}");
        }
        let params =
            CustomerOrders::params(&pairs(&[("limit", "3"), ("after", "17-o-1")])).unwrap();
        assert_eq!(
            CustomerOrders::query_string(&params),
            "limit=3&after=17-o-1"
        );
        assert_eq!(
            CustomerOrders::params(&pairs(&[("limit", "3"), ("after", "17-o-1")])).unwrap(),
            params
        );
    }
}
