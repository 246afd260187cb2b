//! Where a key's query is answered: here if this replica owns the key's partition, otherwise
//! once at the owner (and, if the owner cannot answer, once at a standby: `query`). A forwarded
//! request carries `Forwarded-By` and is never forwarded again, and a replica never forwards to
//! itself: both guard against the dead loop of stale metadata. The [`Forwarder`] remembers for
//! a few seconds the replicas it could not reach, so that their standbys answer meanwhile.

use crate::cluster::{ClusterView, Member};
use crate::projection::PartitionTable;

pub use partition_routing::forward::{FORWARDED_BY, ForwardError, Forwarder, SUSPECT_FOR};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Local,
    Forward(Member),
    /// Nobody can answer right now (rebalance, stale view); retry shortly.
    Unavailable(String),
}

/// Decides where the query for a key in `partition` is answered. The group's view is only
/// looked at for a key this replica does not own: most queries are answered here, and taking
/// the view is a lock and a reference count shared by every HTTP worker.
pub fn route<V: std::ops::Deref<Target = ClusterView>>(
    partition: i32,
    table: &PartitionTable,
    view: impl FnOnce() -> V,
    self_id: &str,
    forwarded: bool,
) -> Route {
    if table.owns(partition) {
        return Route::Local;
    }
    let view = view();
    if forwarded {
        return Route::Unavailable(format!(
            "partition {partition} is not owned by this replica (forwarded here from a stale view)"
        ));
    }
    match view.owner(partition) {
        Some(owner) if owner.replica_id != self_id => Route::Forward(owner.clone()),
        Some(_) => Route::Unavailable(format!(
            "partition {partition} is being reassigned (the group still lists this replica)"
        )),
        None => Route::Unavailable(format!(
            "partition {partition} has no owner right now (the group is rebalancing)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(owner_of_0: &str) -> ClusterView {
        ClusterView {
            group_state: "Stable".into(),
            members: vec![Member {
                replica_id: owner_of_0.into(),
                url: format!("http://{owner_of_0}"),
                partitions: vec![0],
            }],
            refreshed_at_ms: 0,
        }
    }

    #[test]
    fn never_forwards_twice_nor_to_itself() {
        let table = PartitionTable::new(2);
        assert!(
            matches!(route(0, &table, || Box::new(view("b")), "a", false), Route::Forward(m) if m.replica_id == "b")
        );
        assert!(matches!(
            route(0, &table, || Box::new(view("b")), "a", true),
            Route::Unavailable(_)
        ));
        assert!(matches!(
            route(0, &table, || Box::new(view("a")), "a", false),
            Route::Unavailable(_)
        ));
        assert!(matches!(
            route(1, &table, || Box::new(view("b")), "a", false),
            Route::Unavailable(_)
        ));
    }
}
