//! Peer regions: the other regions' stores, read on a miss before the
//! upstream (cross-region hydration) and written by eager replication.
//!
//! Key decision: a peer is reached **through its bucket**, not its origin.
//! A blob already in region A is copied by region B's hydration leader
//! straight from A's store (nearest peer first, a short `HEAD` each), through
//! the same spool → sha256 → multipart pipeline as an upstream fetch, so the
//! copy is verified and nothing unverified becomes visible. A peer origin
//! being down does not matter; a peer *store* being down only costs the
//! `HEAD` timeout before the next peer or the upstream.
//!
//! A peer copy that fails verification is counted, and that digest skips
//! peers from then on (the retry goes to the upstream).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use wharf_core::Digest;

use crate::config::GeoConfig;
use crate::metrics;
use crate::store::{ObjectMeta, Store};

/// How long a peer store may take to answer a `HEAD`.
const PEER_HEAD_TIMEOUT: Duration = Duration::from_secs(3);

/// One peer region's store.
#[derive(Clone)]
pub struct Peer {
    /// The region's name.
    pub name: String,
    /// Its bucket.
    pub store: Store,
}

/// This origin's region and its peers.
pub struct Geo {
    /// This origin's region.
    pub region: String,
    /// This replica's advertised URL.
    pub advertise: Option<String>,
    /// The region's replicas (including this one).
    pub replicas: Vec<String>,
    /// Signs and checks requests forwarded between replicas.
    pub peer_key: Option<wharf_core::token::SigningKey>,
    /// Other regions' stores, nearest first.
    pub peers: Vec<Peer>,
    /// Digests whose peer copy failed verification: fetched upstream from now on.
    distrusted: Mutex<HashSet<Digest>>,
}

impl Geo {
    /// Builds the runtime view of `config`.
    pub fn new(config: &GeoConfig) -> Self {
        Self {
            region: config.region.clone(),
            advertise: config.advertise.clone(),
            replicas: config.replicas.clone(),
            peer_key: config.peer_key.clone(),
            peers: config
                .peers
                .iter()
                .map(|p| Peer {
                    name: p.name.clone(),
                    store: Store::new(&p.s3),
                })
                .collect(),
            distrusted: Mutex::new(HashSet::new()),
        }
    }

    /// The nearest peer whose store has `key`, with its metadata.
    /// `digest`, when given, is skipped if a peer copy failed before.
    pub async fn find(&self, key: &str, digest: Option<&Digest>) -> Option<(Peer, ObjectMeta)> {
        if digest.is_some_and(|d| self.is_distrusted(d)) {
            return None;
        }
        for peer in &self.peers {
            match tokio::time::timeout(PEER_HEAD_TIMEOUT, peer.store.head(key)).await {
                Ok(Ok(Some(meta))) => {
                    metrics::peer_fetch(&peer.name, "hit");
                    return Some((peer.clone(), meta));
                }
                Ok(Ok(None)) => metrics::peer_fetch(&peer.name, "miss"),
                Ok(Err(e)) => {
                    metrics::peer_fetch(&peer.name, "error");
                    tracing::warn!(peer = %peer.name, key, error = %e, "peer store lookup failed");
                }
                Err(_) => {
                    metrics::peer_fetch(&peer.name, "error");
                    tracing::warn!(peer = %peer.name, key, "peer store lookup timed out");
                }
            }
        }
        None
    }

    /// Records that the peer copy of `digest` failed verification.
    pub fn distrust(&self, digest: &Digest) {
        let mut set = self.distrusted.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() > 10_000 {
            set.clear();
        }
        set.insert(digest.clone());
    }

    fn is_distrusted(&self, digest: &Digest) -> bool {
        self.distrusted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(digest)
    }
}
