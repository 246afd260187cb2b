//! Holding background readers (reports, rebuilds) to an events/s limit.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Waits until `done` events since `started` are within `limit` per second (none or 0: no
/// limit). False if `cancel` came first.
pub async fn pace(
    started: Instant,
    done: u64,
    limit: Option<u64>,
    cancel: &CancellationToken,
) -> bool {
    let Some(limit) = limit.filter(|l| *l > 0) else {
        return true;
    };
    #[allow(clippy::cast_precision_loss)]
    let due = started + Duration::from_secs_f64(done as f64 / limit as f64);
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep_until(due.into()) => true,
    }
}
