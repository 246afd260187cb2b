//! The query side of the stack, for any projection: events in, views out, exactly once, and
//! every replica able to answer for every key.
//!
//! A domain plugs in its read model (`shared_events::view::ReadModel`: its store namespace, its
//! version, its topics, how an event changes its views) and its queries
//! (`shared_events::query`: `Lookup`, `Gather`, `Join`). A service opens each projection
//! ([`opening::Opening`], with a [`projection::Decoder`] for its topics), registers the domains'
//! queries in a [`catalog::Catalog`], and serves the catalog's routes and the
//! [`operations`] routes over one [`serving::Serving`]. This crate knows no domain by name, and
//! the crate graph enforces it (`cargo xtask layers`).
//!
//! - [`projection`]: the runner (a read-committed consumer-group member over one or more
//!   topics), the partition table of each topic (owned, applied, caught up), rebalance seeding.
//! - [`store`]: RocksDB, a namespace per projection (views, index, offsets) in generations: the
//!   active one serves, a rebuild fills the next beside it.
//! - [`rebuild`]: a projection rebuilt beside the one that serves and swapped in between two
//!   batches, on request or when its version changed.
//! - [`cluster`]: who owns which partition, from the consumer group's description.
//! - [`standby`]: warm copies of other replicas' partitions, which answer when an owner
//!   cannot, and make a takeover resume from a store nearly caught up.
//! - [`routing`]: answer here, forward once to the owner (or to a standby when it cannot
//!   answer), or a retryable `503`.
//! - [`opening`]: a projection opened once its topics exist, its runner on its own thread.
//! - [`report`]: reports, the domains' folds over a fixed range of the log, run in the
//!   background and kept in a compacted topic every replica reads.
//! - [`access`]: the admin API's tokens (admin, read-only).
//! - [`serving`], [`query`], [`catalog`], [`operations`], [`problem`], [`metrics`]: the HTTP
//!   side, from the domains' query descriptions to problem+json answers.
//!
//! Guarantees, and where they are kept:
//! - Each event changes a projection's views exactly once: the change and the offset after it
//!   are one RocksDB batch ([`store::Store::write`]), and a partition resumes from the offset its
//!   store holds, never from the group's ([`projection::RebalanceContext`]).
//! - "Not found" is said only by a replica that owns the key's partition and has caught up with
//!   it since it was assigned ([`projection::PartitionTable::serves`], [`query`]), or by a
//!   standby that has applied everything committed it knows of; a standby's answer says how
//!   far it has applied.
//! - A query over every partition covers each exactly once, or is a retryable `503`
//!   ([`query`]).
//! - A query is forwarded at most once, never to the forwarder ([`routing::route`]).

pub use http_edge::access;
pub mod catalog;
pub mod cluster;
pub mod live;
pub mod metrics;
pub mod opening;
pub mod operations;
pub mod pace;
pub mod priority;
pub mod problem;
pub mod projection;
pub mod query;
pub mod rebuild;
pub mod report;
pub mod routing;
pub mod serving;
pub mod standby;
pub mod store;
