//! The customers domain, the second aggregate: who a customer is, what may happen to them, and
//! how they read. It knows nothing of Kafka, RocksDB or HTTP (the layering rule keeps it so); the
//! services plug it into their engines exactly as they plug in orders.
//!
//! - [`events`]: the Avro events (`schemas/customers-value.avsc`), one per fact about a customer.
//! - [`commands`]: request bodies parsed into validated commands, the rules that decide them
//!   into events, and the state the command side folds from the events.
//! - [`views`]: the customer as queries show them, folded from the same events.
//! - [`queries`]: what the read model answers: a customer joined with their orders.
//! - [`reports`]: folds over a range of the log for admins: registrations by month, and
//!   customer cohorts over the customers and the orders topics.
//!
//! Guarantees: no command reaches [`commands::decide`] with an unchecked field (every offending
//! field is named, not just the first); a customer is registered once, and only an active one
//! changes email or is deactivated; the view and the command-side state are folded from the same
//! events, version after version with no gap.

pub mod commands;
pub mod events;
pub mod live;
pub mod projection;
pub mod queries;
pub mod reports;
pub mod views;
