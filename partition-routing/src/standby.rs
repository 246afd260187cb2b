//! Standbys: which members keep warm copies of a partition another member owns, so that a
//! takeover resumes from a copy that is nearly caught up instead of from the beginning.
//!
//! It is a function of the group's description alone: the members in id order form a ring,
//! and a partition's standbys are the `replicas` members after its owner ([`holders`]). Every
//! member computes it from the same view, so no assignment of standbys has to be agreed on,
//! and any member knows where a partition's warm copies are.

use crate::membership::{ClusterView, Member};

/// The members that keep `partition` warm: the `replicas` members after its owner in the ring
/// of members in replica-id order. None while the partition has no owner.
pub fn holders(view: &ClusterView, partition: i32, replicas: usize) -> Vec<&Member> {
    let members = &view.members;
    let Some(owner) = members
        .iter()
        .position(|m| m.partitions.contains(&partition))
    else {
        return Vec::new();
    };
    (1..members.len())
        .map(|step| &members[(owner + step) % members.len()])
        .take(replicas)
        .collect()
}

/// The partitions of a view's topic that `replica` keeps warm.
pub fn held_by(view: &ClusterView, count: i32, replicas: usize, replica: &str) -> Vec<i32> {
    (0..count)
        .filter(|p| {
            holders(view, *p, replicas)
                .iter()
                .any(|m| m.replica_id == replica)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, partitions: &[i32]) -> Member {
        Member {
            replica_id: id.into(),
            url: format!("http://{id}"),
            partitions: partitions.to_vec(),
        }
    }

    fn view(members: Vec<Member>) -> ClusterView {
        ClusterView {
            group_state: "Stable".into(),
            members,
            refreshed_at_ms: 0,
        }
    }

    fn ids(members: &[&Member]) -> Vec<String> {
        members.iter().map(|m| m.replica_id.clone()).collect()
    }

    #[test]
    fn standbys_follow_the_owner_around_the_ring() {
        let three = view(vec![
            member("a", &[0, 3]),
            member("b", &[1]),
            member("c", &[2]),
        ]);
        assert_eq!(ids(&holders(&three, 0, 1)), ["b"]);
        assert_eq!(ids(&holders(&three, 1, 1)), ["c"]);
        assert_eq!(ids(&holders(&three, 2, 1)), ["a"], "the ring wraps");
        assert_eq!(ids(&holders(&three, 2, 2)), ["a", "b"]);
        assert_eq!(
            ids(&holders(&three, 2, 5)),
            ["a", "b"],
            "never more than the other members, never the owner"
        );
        assert!(holders(&three, 4, 1).is_empty(), "no owner, no standby");
        assert_eq!(held_by(&three, 4, 1, "b"), [0, 3]);
        assert_eq!(held_by(&three, 4, 1, "a"), [2]);
        let alone = view(vec![member("a", &[0, 1])]);
        assert!(
            held_by(&alone, 2, 1, "a").is_empty(),
            "one replica: no standby"
        );
        assert!(holders(&three, 0, 0).is_empty(), "standbys off");
    }
}
