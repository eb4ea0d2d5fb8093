//! The uploader of a flight: follows the leader's [`Progress`] and feeds the
//! store's [`FileSink`](crate::store::FileSink) — full parts of a multipart
//! upload as they are spooled (S3), or nothing until the end (the embedded
//! store publishes the spool file itself). It commits only once the blob is
//! verified and aborts the sink if the flight fails.

use std::path::PathBuf;

use tokio::sync::watch;

use super::{Phase, Progress};
use crate::store::{self, Store};

/// The uploader task of one hydration (see [`upload`]).
pub(super) type Uploader = tokio::task::JoinHandle<Result<(), store::Error>>;
const OCTET_STREAM: &str = "application/octet-stream";

/// Follows the leader's progress into the store's sink for `key`; commits
/// once the blob is verified, aborts if the flight fails or stops (which is
/// not a store error: only the abort itself can fail then).
pub(super) async fn upload(
    store: Store,
    key: String,
    spool: PathBuf,
    mut rx: watch::Receiver<Progress>,
) -> Result<(), store::Error> {
    let mut sink = store.file_sink(&key, &spool, OCTET_STREAM);
    loop {
        let progress = rx.borrow_and_update().clone();
        match progress.phase {
            Phase::Failed(_) => return sink.abort().await,
            Phase::Verified => return sink.commit(progress.written).await,
            _ => {}
        }
        if let Err(e) = sink.grown(progress.written).await {
            sink.abort().await?;
            return Err(e);
        }
        if rx.changed().await.is_err() {
            return sink.abort().await;
        }
    }
}
