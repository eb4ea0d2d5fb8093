//! The uploader of a flight: follows the leader's [`Progress`] and ships
//! the spool file to the store — full parts of a multipart upload as they
//! are spooled (S3), or nothing until the end (the embedded store publishes
//! the spool file itself). It commits only once the blob is verified and
//! aborts the upload if the flight fails.

use std::path::PathBuf;

use tokio::sync::watch;

use super::{Phase, Progress};
use crate::store::{self, MultipartUpload, Store};

/// The uploader task of one hydration (see [`upload`]).
pub(super) type Uploader = tokio::task::JoinHandle<Result<(), store::Error>>;
const OCTET_STREAM: &str = "application/octet-stream";

/// Follows the leader's progress and uploads full parts; completes the
/// upload once the blob is verified, aborts it if the flight fails.
pub(super) async fn upload(
    store: Store,
    key: String,
    spool: PathBuf,
    mut rx: watch::Receiver<Progress>,
) -> Result<(), store::Error> {
    if store.local().is_some() {
        return commit_local(store, key, spool, rx).await;
    }
    let part_size = store.part_size();
    let mut multipart: Option<MultipartUpload> = None;
    let mut uploaded = 0u64;
    // `Ok(false)`: the flight failed or stopped, which is not a store error;
    // the multipart upload is aborted all the same.
    let finished: Result<bool, store::Error> = async {
        loop {
            let progress = rx.borrow_and_update().clone();
            match progress.phase {
                Phase::Failed(_) => return Ok(false),
                Phase::Verified => {
                    let written = progress.written;
                    match multipart.take() {
                        None => {
                            store
                                .put_file(&key, &spool, 0, written, OCTET_STREAM)
                                .await?
                        }
                        Some(mut upload) => {
                            if written > uploaded {
                                upload
                                    .upload_part_from_file(&spool, uploaded, written - uploaded)
                                    .await?;
                            }
                            upload.complete().await?;
                        }
                    }
                    return Ok(true);
                }
                _ => {}
            }
            // A part is shipped only when a full part is spooled and more
            // bytes follow (or may follow): the last part may be short.
            if progress.written - uploaded > part_size {
                if multipart.is_none() {
                    multipart = Some(store.multipart(&key, OCTET_STREAM).await?);
                }
                if let Some(upload) = multipart.as_mut() {
                    upload
                        .upload_part_from_file(&spool, uploaded, part_size)
                        .await?;
                }
                uploaded += part_size;
                continue;
            }
            if rx.changed().await.is_err() {
                return Ok(false);
            }
        }
    }
    .await;
    if !matches!(finished, Ok(true))
        && let Some(upload) = multipart.take()
    {
        upload.abort().await?;
    }
    finished.map(|_| ())
}

/// The uploader of an embedded store: nothing to ship while the blob
/// arrives; once it is verified, the spool file itself becomes the object
/// (see [`Store::publish_local`]: no copy of the bytes).
async fn commit_local(
    store: Store,
    key: String,
    spool: PathBuf,
    mut rx: watch::Receiver<Progress>,
) -> Result<(), store::Error> {
    let written = loop {
        let progress = rx.borrow_and_update().clone();
        match progress.phase {
            // A failed flight is not a store error: nothing was written.
            Phase::Failed(_) => return Ok(()),
            Phase::Verified => break progress.written,
            _ => {}
        }
        if rx.changed().await.is_err() {
            return Ok(());
        }
    };
    store
        .publish_local(&key, &spool, written, OCTET_STREAM)
        .await
}
