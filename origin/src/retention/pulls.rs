//! Last-pull records, batched: a pulled image's manifest link is rewritten
//! at most once per flush, so its `LastModified` is the image's last pull
//! (to within one flush interval) at the cost of one store write per
//! distinct image per interval, not one per request.

use std::collections::HashSet;
use std::sync::Mutex;

use bytes::Bytes;
use futures::StreamExt;
use wharf_core::{Digest, RepositoryName};

use crate::metrics;
use crate::store::{self, Store};

/// Bytes of keys remembered between two flushes (a key is ~150 bytes: some
/// 100,000 distinct images); past this, a pull is not recorded (counted as
/// `dropped`): its image may then be evicted as if it had not been pulled
/// since the previous record, and is fetched again.
const MAX_PENDING_BYTES: usize = 16 << 20;

/// Writes in flight during a flush.
const FLUSH_CONCURRENCY: usize = 8;

/// The images pulled since the last flush.
pub struct Pulls {
    store: Store,
    pending: Mutex<Pending>,
}

/// The keys to write at the next flush, and their bytes.
#[derive(Default)]
struct Pending {
    keys: HashSet<String>,
    bytes: usize,
}

impl Pulls {
    /// Records kept in `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            pending: Mutex::default(),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `repo` was served manifest `digest` (it is entitled to it: the
    /// handler served it only after the access checks).
    pub fn record(&self, repo: &RepositoryName, digest: &Digest) {
        let key = store::manifest_link_key(repo, digest);
        let mut pending = self.pending();
        if pending.keys.contains(&key) {
            return;
        }
        if pending.bytes + key.len() > MAX_PENDING_BYTES {
            drop(pending);
            metrics::pull_records("dropped", 1);
            return;
        }
        pending.bytes += key.len();
        pending.keys.insert(key);
    }

    /// Rewrites the link of every image pulled since the last flush;
    /// returns how many were written. A failed write is logged and
    /// forgotten (the image then looks older than it is).
    pub async fn flush(&self) -> usize {
        let keys: Vec<String> = std::mem::take(&mut *self.pending())
            .keys
            .into_iter()
            .collect();
        let store = self.store.clone();
        let written = futures::stream::iter(keys)
            .map(move |key| {
                let store = store.clone();
                async move {
                    store
                        .put_bytes(&key, Bytes::new(), "application/octet-stream")
                        .await
                        .inspect_err(|e| tracing::warn!(error = %e, "last-pull record not written"))
                        .is_ok()
                }
            })
            .buffer_unordered(FLUSH_CONCURRENCY)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        metrics::pull_records("written", written as u64);
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::S3Settings;

    #[test]
    fn pending_records_are_bounded_in_bytes() {
        // No request is made: records stay in memory until a flush.
        let store = Store::new(&S3Settings {
            endpoint: "http://127.0.0.1:9".into(),
            bucket: "wharf".into(),
            region: "us-east-1".into(),
            access_key: "a".into(),
            secret_key: "b".into(),
            part_size: 16 << 20,
        });
        let pulls = Pulls::new(store);
        let digest = Digest::sha256_of(b"x");
        let repo = |i: usize| RepositoryName::parse(&format!("up/team/app{i}")).unwrap();
        let mut i = 0;
        while pulls.pending().bytes + 200 < MAX_PENDING_BYTES {
            pulls.record(&repo(i), &digest);
            i += 1;
        }
        let before = pulls.pending().keys.len();
        for j in i..i + 100 {
            pulls.record(&repo(j), &digest);
        }
        let pending = pulls.pending();
        assert!(pending.bytes <= MAX_PENDING_BYTES, "{}", pending.bytes);
        assert!(
            pending.keys.len() < before + 100,
            "past the bound, pulls are dropped"
        );
        drop(pending);
        // An image already pending is still recorded (nothing new to keep).
        pulls.record(&repo(0), &digest);
        assert!(
            pulls
                .pending()
                .keys
                .contains(&store::manifest_link_key(&repo(0), &digest))
        );
    }
}
