//! Partition routing shared by both services: who owns which partition of a topic, learned
//! from the consumer group the owners belong to ([`membership`]); sending a request on to that
//! owner at most once ([`forward`]); and which members keep warm copies of the partitions others
//! own ([`standby`]).
//!
//! Guarantees: a forwarded request is marked and never forwarded again, and a member never
//! forwards to itself (the caller checks its own id against [`membership::ClusterView::owner`]).
//! Every forward has a timeout.

pub mod forward;
pub mod membership;
pub mod standby;
