//! The retention job: verifications (with their checks and messages) older than the retention
//! period are deleted, in small batches so the writer is never held for long.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use otpd_core::ports::Store;
use otpd_core::{Clock, SystemClock};

const BATCH: usize = 500;
const PAUSE_BETWEEN_BATCHES: Duration = Duration::from_millis(50);
const INTERVAL: Duration = Duration::from_secs(3600);

/// Purges at start and then every hour until `shutdown` resolves.
pub async fn run(store: Arc<dyn Store>, keep: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        purge(store.as_ref(), keep).await;
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

/// Deletes everything older than `keep`, a batch at a time; returns how many went.
pub async fn purge(store: &dyn Store, keep: Duration) -> u64 {
    let cutoff = SystemClock.now().minus(keep);
    let mut total = 0;
    loop {
        match store.purge_verifications(cutoff, BATCH).await {
            Ok(deleted) => {
                total += deleted;
                if deleted < BATCH as u64 {
                    break;
                }
                tokio::time::sleep(PAUSE_BETWEEN_BATCHES).await;
            }
            Err(error) => {
                tracing::warn!(%error, "the retention job could not purge; it tries again later");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(purged = total, "old verifications purged");
    }
    total
}
