//! Reports: a domain's fold over a fixed range of the log, run in the background on any
//! replica, observable while it runs, and the same every time it runs over the same range.
//!
//! - [`catalog`]: the domains' [`Report`](shared_events::report::Report)s, each with the
//!   decoder of its topics, runnable by name.
//! - [`range`]: the range a report reads, fixed when it is submitted: per partition a start
//!   (the beginning, or `offsetsForTimes(from)`) and an end (the last stable offset then), and
//!   the window of record timestamps (`from`, `to`) kept of what lies between.
//! - [`run`]: reading exactly that range, read-committed, with its own assigned consumer, and
//!   folding it; progress, the events-per-second limit, cancellation.
//! - [`ledger`]: the runs' state and results in a compacted topic every replica follows, and
//!   the log-order rule that gives each attempt of a run one owner.
//! - [`scheduler`]: how many run here at once and how many wait; claiming the runs of lost
//!   replicas.
//! - [`routes`]: the admin API.
//!
//! Guarantees, and where they are kept:
//! - The same request over the same range gives byte-identical results: the range is captured
//!   once and recorded ([`range::capture`]); reading stops at each partition's end
//!   ([`run::Reading::fold`]); a report's table depends on its events, not their interleaving
//!   across partitions (the [`Report`](shared_events::report::Report) contract), and is
//!   rendered from ordered maps.
//! - Events committed after the range was captured are not in it; aborted transactions never
//!   count (read-committed, and the end is a last stable offset).
//! - A submission is acknowledged (`202`) only once its run is in the ledger; a run outlives
//!   its replica: it is claimed by another and run again from its recorded range
//!   ([`scheduler`], [`ledger`]).
//! - A run never runs twice at once for the same attempt ([`ledger`]'s acceptance rule).

pub mod catalog;
pub mod ledger;
pub mod range;
pub mod routes;
pub mod run;
pub mod scheduler;
