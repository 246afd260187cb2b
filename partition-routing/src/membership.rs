//! Who owns which partition, learned from the consumer group itself.
//!
//! Every member joins the group with `client.id = "<member-id>@<base-url>"`; the group
//! description (DescribeGroups) lists each member's client id and its assignment, so any member
//! can map every partition to the base URL of the member that owns it. The view is refreshed
//! after each rebalance and periodically in between; it may be briefly stale, which routing
//! tolerates (a request sent to a member that no longer owns the key is answered with a
//! retryable 503, never sent on).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

/// A member of the group: a query replica or a command instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub replica_id: String,
    pub url: String,
    pub partitions: Vec<i32>,
}

/// The group as last described.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub group_state: String,
    pub members: Vec<Member>,
    pub refreshed_at_ms: i64,
}

impl ClusterView {
    pub fn owner(&self, partition: i32) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| m.partitions.contains(&partition))
    }
}

/// The group client id that advertises a member.
pub fn client_id(replica_id: &str, url: &str) -> String {
    format!("{replica_id}@{url}")
}

/// The member id and base URL a member advertises, if it is one of ours.
pub fn parse_client_id(client_id: &str) -> Option<(String, String)> {
    let (id, url) = client_id.split_once('@')?;
    (!id.is_empty() && url.starts_with("http")).then(|| (id.to_owned(), url.to_owned()))
}

/// The partitions of `topic` in a consumer-protocol assignment (`ConsumerProtocolAssignment`:
/// version, then topics with their partitions, then user data).
pub fn parse_assignment(bytes: &[u8], topic: &str) -> Vec<i32> {
    fn take<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
        let (head, rest) = bytes.split_at_checked(N)?;
        *bytes = rest;
        head.try_into().ok()
    }
    let mut cursor = bytes;
    let mut parse = || -> Option<Vec<i32>> {
        let _version = i16::from_be_bytes(take::<2>(&mut cursor)?);
        let topics = i32::from_be_bytes(take::<4>(&mut cursor)?);
        let mut found = Vec::new();
        for _ in 0..topics.max(0) {
            let len = usize::try_from(i16::from_be_bytes(take::<2>(&mut cursor)?)).ok()?;
            let (name, rest) = cursor.split_at_checked(len)?;
            cursor = rest;
            let count = i32::from_be_bytes(take::<4>(&mut cursor)?);
            for _ in 0..count.max(0) {
                let partition = i32::from_be_bytes(take::<4>(&mut cursor)?);
                if name == topic.as_bytes() {
                    found.push(partition);
                }
            }
        }
        found.sort_unstable();
        Some(found)
    };
    parse().unwrap_or_default()
}

/// One partition's position as the group's committed offsets and the log's end show it.
#[derive(Debug, Clone)]
pub struct PartitionLag {
    pub partition: i32,
    pub owner: Option<String>,
    pub committed_offset: Option<i64>,
    pub end_offset: Option<i64>,
    pub lag: Option<i64>,
}

/// The group's view, kept fresh in the background.
pub struct Cluster {
    admin: BaseConsumer,
    group: String,
    topic: String,
    timeout: Duration,
    view: RwLock<Arc<ClusterView>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("group", &self.group)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A client of the group that never joins it: it only describes the group and reads its
    /// committed offsets.
    pub fn new(
        kafka: &service_config::KafkaArgs,
        group: &str,
        topic: &str,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let admin: BaseConsumer = kafka
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("socket.timeout.ms", timeout.as_millis().to_string())
            .create()?;
        Ok(Self {
            admin,
            group: group.to_owned(),
            topic: topic.to_owned(),
            timeout,
            view: RwLock::new(Arc::new(ClusterView::default())),
        })
    }

    pub fn view(&self) -> Arc<ClusterView> {
        match self.view.read() {
            Ok(view) => Arc::clone(&view),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Describes the group and replaces the view. Blocking.
    pub fn refresh(&self) -> Result<(), KafkaError> {
        let list = self
            .admin
            .fetch_group_list(Some(&self.group), self.timeout)?;
        let mut view = ClusterView {
            refreshed_at_ms: now_ms(),
            ..ClusterView::default()
        };
        if let Some(group) = list.groups().iter().find(|g| g.name() == self.group) {
            view.group_state = group.state().to_owned();
            for member in group.members() {
                let Some((replica_id, url)) = parse_client_id(member.client_id()) else {
                    continue;
                };
                let partitions = member
                    .assignment()
                    .map(|bytes| parse_assignment(bytes, &self.topic))
                    .unwrap_or_default();
                view.members.push(Member {
                    replica_id,
                    url,
                    partitions,
                });
            }
        }
        view.members.sort_by(|a, b| a.replica_id.cmp(&b.replica_id));
        match self.view.write() {
            Ok(mut current) => *current = Arc::new(view),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(view),
        }
        Ok(())
    }

    /// The high watermark of a partition. Blocking.
    pub fn high_watermark(&self, partition: i32) -> Result<i64, KafkaError> {
        Ok(self
            .admin
            .fetch_watermarks(&self.topic, partition, self.timeout)?
            .1)
    }

    /// The group's committed offset of each of `partitions` that has one. Blocking. Asked as a
    /// client outside the group, which a rebalance does not hold up.
    pub fn committed(
        &self,
        partitions: &[i32],
    ) -> Result<std::collections::HashMap<i32, i64>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition(&self.topic, p);
        }
        let committed = self.admin.committed_offsets(tpl, self.timeout)?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    }

    /// Committed offset, end offset and lag of every partition. Blocking.
    pub fn lag(&self, partitions: i32) -> Result<Vec<PartitionLag>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&self.topic, p);
        }
        let committed = self.admin.committed_offsets(tpl, self.timeout)?;
        let view = self.view();
        let mut lags = Vec::new();
        for p in 0..partitions {
            let committed_offset =
                committed
                    .find_partition(&self.topic, p)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
            let end_offset = self
                .admin
                .fetch_watermarks(&self.topic, p, self.timeout)
                .ok()
                .map(|(_, high)| high);
            lags.push(PartitionLag {
                partition: p,
                owner: view.owner(p).map(|m| m.replica_id.clone()),
                committed_offset,
                end_offset,
                lag: end_offset.map(|end| end - committed_offset.unwrap_or(0)),
            });
        }
        Ok(lags)
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_advertise_the_replica() {
        let id = client_id("query-1", "http://127.0.0.1:8091");
        assert_eq!(
            parse_client_id(&id),
            Some(("query-1".into(), "http://127.0.0.1:8091".into()))
        );
        assert_eq!(parse_client_id("rdkafka"), None);
        assert_eq!(parse_client_id("@http://x"), None);
    }

    #[test]
    fn assignments_parse() {
        // version 1, two topics: "orders" [2, 0] and "other" [1], empty user data
        let mut bytes = vec![0, 1, 0, 0, 0, 2];
        bytes.extend([0, 6]);
        bytes.extend(b"orders");
        bytes.extend([0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0]);
        bytes.extend([0, 5]);
        bytes.extend(b"other");
        bytes.extend([0, 0, 0, 1, 0, 0, 0, 1]);
        bytes.extend([0xff, 0xff, 0xff, 0xff]);
        assert_eq!(parse_assignment(&bytes, "orders"), [0, 2]);
        assert_eq!(parse_assignment(&bytes, "other"), [1]);
        assert!(parse_assignment(&bytes[..9], "orders").is_empty());
        assert!(parse_assignment(&[], "orders").is_empty());
    }
}
