//! Partition routing shared by both services: who owns which partition of a topic, learned
//! from the consumer group the owners belong to ([`membership`]), and sending a request on to
//! that owner at most once ([`forward`]).
//!
//! Guarantees: a forwarded request is marked and never forwarded again, and a member never
//! forwards to itself (the caller checks its own id against [`membership::ClusterView::owner`]).
//! Every forward has a timeout.

pub mod forward;
pub mod membership;
