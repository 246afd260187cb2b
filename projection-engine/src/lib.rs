//! The query side of the stack, for any projection: events in, views out, exactly once, and
//! every replica able to answer for every key.
//!
//! A domain's read model plugs in by implementing [`projection::Projection`] (its store
//! namespace, its version, how an event changes its views) with a [`projection::Decoder`] for
//! the topics it reads. A service runs a [`projection::Runner`] per projection. This crate knows
//! no domain by name, and the crate graph enforces it (`cargo xtask layers`).
//!
//! - [`projection`]: the runner (a read-committed consumer-group member over one or more
//!   topics), the partition table of each topic (owned, applied, caught up), rebalance seeding.
//! - [`store`]: RocksDB, a namespace per projection (views, index, offsets), rebuilt alone when
//!   its projection's version changes.
//! - [`cluster`]: who owns which partition, from the consumer group's description.
//! - [`routing`]: answer here, forward once to the owner, or a retryable `503`.
//!
//! Guarantees, and where they are kept:
//! - Each event changes a projection's views exactly once: the change and the offset after it
//!   are one RocksDB batch ([`store::Store::write`]), and a partition resumes from the offset its
//!   store holds, never from the group's ([`projection::RebalanceContext`]).
//! - "Not found" is said only by a replica that owns the key's partition and has caught up with
//!   it since it was assigned ([`projection::PartitionTable::serves`]).
//! - A query is forwarded at most once, never to the forwarder ([`routing::route`]).

pub mod cluster;
pub mod projection;
pub mod routing;
pub mod store;
