//! The command side of the stack, for any aggregate: a REST command becomes an Avro event in a
//! committed Kafka transaction, and only then an answer.
//!
//! A domain plugs in by implementing [`shared_events::Aggregate`]; a service registers a
//! [`lane::Lane`] per aggregate and the routes of [`pipeline::routes`]. This crate knows no
//! domain by name, and the crate graph enforces it (`cargo xtask layers`).
//!
//! - [`pipeline`]: the one command flow (parse → idempotency claim → lock → `If-Match` → decide
//!   → encode → queue → wait for the commit) and the routes that lead to it.
//! - [`lane`]: one aggregate's topic, codec, and per partition its write model and receipts.
//! - [`write_model`]: each aggregate's state and version under its own async lock.
//! - [`idempotency`]: `Idempotency-Key` claims and the receipts of committed commands.
//! - [`ownership`]: which partitions this instance may write, from the command group's
//!   assignment; handing a partition over; fencing an instance the group has moved on from.
//! - [`restore`]: reading the log into the partitions that take no command here: a partition
//!   assigned here, to its end before it takes one; another's, kept warm for a takeover.
//! - [`batcher`]: the bounded queue in front of the transactional producers (group commit).
//! - [`circuit`]: whether Kafka is reachable at all, so commands fail fast when it is not.
//! - [`topics`]: creating an aggregate's topic.
//! - [`problem`]: every error a command can answer with, as `application/problem+json`.
//! - [`metrics`], [`openapi`]: what `/metrics` and the API document show of the command side.
//!
//! Guarantees, and where they are kept:
//! - A `2xx` means the event is in a committed Kafka transaction ([`batcher`]).
//! - Every answer is the truth; an outcome that cannot be learned is reported as such, never
//!   guessed ([`batcher`]'s commit / abort / in-doubt verdicts).
//! - Versions of an aggregate go 1, 2, 3 … with no gap or duplicate, and of two racing commands
//!   on one aggregate the second decides against the first's outcome ([`write_model`]'s lock,
//!   held by the [`pipeline`]'s settlement until the commit's fate is known).
//! - A retry with the same `Idempotency-Key` writes nothing and gets the first answer, also
//!   after a restart or a takeover ([`idempotency`], rebuilt by [`restore`]).
//! - At most one instance commits for a partition at a time ([`ownership`], and the group
//!   metadata every transaction carries in [`batcher`]).
//! - Every queue is bounded and every wait has a deadline.

pub mod batcher;
pub mod checkpoint;
pub mod circuit;
pub mod idempotency;
pub mod lane;
pub mod metrics;
pub mod openapi;
pub mod ownership;
pub mod pipeline;
pub mod problem;
pub mod restore;
pub mod sharded;
pub mod snapshot;
pub mod topics;
pub mod write_model;

#[cfg(test)]
mod toy;
