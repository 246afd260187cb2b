//! The query replicas' view of their group: [`partition_routing::membership`], kept fresh by
//! [`keep_fresh`], which also gives newly assigned partitions their catch-up target.

use std::sync::Arc;
use std::time::Duration;

pub use partition_routing::membership::{
    Cluster, ClusterView, Member, PartitionLag, client_id, now_ms, parse_assignment,
    parse_client_id,
};
use tokio_util::sync::CancellationToken;

use crate::projection::PartitionTable;

/// Refreshes the view after every rebalance (again until the group is stable) and every
/// `every` in between, and gives newly assigned partitions their catch-up target, until shutdown.
pub async fn keep_fresh(
    cluster: Arc<Cluster>,
    table: Arc<PartitionTable>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let (refresh, partitions) = (Arc::clone(&cluster), Arc::clone(&table));
        let stable = tokio::task::spawn_blocking(move || {
            for partition in partitions.needing_target() {
                match refresh.high_watermark(partition) {
                    Ok(high) => partitions.set_catch_up_target(partition, high),
                    Err(error) => {
                        tracing::warn!(%error, partition, "could not read the end of a partition")
                    }
                }
            }
            match refresh.refresh() {
                Ok(()) => refresh.view().group_state == "Stable",
                Err(error) => {
                    tracing::warn!(%error, "could not describe the consumer group");
                    false
                }
            }
        })
        .await
        .unwrap_or(false);
        let pause = if stable && table.needing_target().is_empty() {
            every
        } else {
            Duration::from_millis(300)
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = table.rebalanced.notified() => {
                // Let the other members finish the same rebalance before describing the group.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            () = tokio::time::sleep(pause) => {}
        }
    }
}
