//! The orders domain, the reference aggregate: what an order is, what may happen to it, and how
//! it reads. It knows nothing of Kafka, RocksDB or HTTP (the layering rule keeps it so); the
//! services plug it into their engines.
//!
//! - [`events`]: the Avro events (`schemas/orders-value.avsc`), one per fact about an order.
//! - [`commands`]: request bodies parsed into validated commands, the rules that decide them
//!   into events, and the state the command side folds from the events.
//! - [`views`]: the order as queries show it, folded from the same events.
//! - [`projection`]: the read model a query replica keeps of the orders topic.
//! - [`queries`]: what the read model answers: an order by id, a customer's orders in pages.
//! - [`reports`]: folds over a range of the orders topic for admins: orders month by month.

pub mod commands;
pub mod events;
pub mod live;
pub mod projection;
pub mod queries;
pub mod reports;
pub mod views;
