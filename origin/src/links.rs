//! Repository → digest links: which repositories may read which
//! content-addressed objects (the core's `wharf_core::access` decides; this
//! module keeps the records).
//!
//! A link is an empty object at `links/<repo>/_/{blobs,manifests}/<digest>`
//! in the region's bucket, so every replica and a restarted origin see it,
//! and the edge can check it with one presigned `HEAD` before it redirects a
//! client to the bucket. [`Links::confirm`] is the one place an unlinked
//! digest is checked with the repository's upstream.
//!
//! Memory: the links this process saw recently, as two generations of a
//! set (a lookup hits either; when the young one is full it becomes the old
//! one and the old one is dropped) — a bounded, approximately
//! least-recently-used cache without a dependency. A record not in memory
//! costs one store `HEAD`.
//!
//! Replication: a link recorded for a rule with `replicate = true` is
//! copied to the peer regions like the bytes it links (through the same
//! [`Replicator`] queue, verified against the empty object's digest), so a
//! peer region that received the bytes also knows which repositories may
//! read them, and its first pull costs no upstream `HEAD`.

use std::collections::HashSet;
use std::sync::Mutex;

use bytes::Bytes;
use reqwest::Method;
use tokio_util::task::TaskTracker;
use wharf_core::access::Reference;
use wharf_core::{Digest, RepositoryName};

use crate::error::Error;
use crate::metrics;
use crate::replicate::Replicator;
use crate::store::{self, Store};
use crate::upstream::Upstream;

/// Links kept in memory per generation (two generations: at most twice this).
const GENERATION: usize = 50_000;

/// What a link is to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A blob (`/blobs/`).
    Blob,
    /// A manifest (`/manifests/`).
    Manifest,
}

impl Kind {
    fn key(self, repo: &RepositoryName, digest: &Digest) -> String {
        match self {
            Kind::Blob => store::blob_link_key(repo, digest),
            Kind::Manifest => store::manifest_link_key(repo, digest),
        }
    }

    fn path(self) -> &'static str {
        match self {
            Kind::Blob => "blobs",
            Kind::Manifest => "manifests",
        }
    }
}

#[derive(Default)]
struct Generations {
    young: HashSet<String>,
    old: HashSet<String>,
}

impl Generations {
    fn contains(&mut self, key: &str) -> bool {
        if self.young.contains(key) {
            return true;
        }
        if self.old.remove(key) {
            self.insert(key.to_owned());
            return true;
        }
        false
    }

    /// True if the key was not known yet.
    fn insert(&mut self, key: String) -> bool {
        if self.young.contains(&key) {
            return false;
        }
        let new = !self.old.remove(&key);
        if self.young.len() >= GENERATION {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key);
        new
    }
}

/// A repository as its rule resolved it: whose upstream confirms a link
/// ([`Links::confirm`]) and where the link goes.
#[derive(Clone, Copy)]
pub struct Through<'a> {
    /// The rule's upstream.
    pub upstream: &'a Upstream,
    /// The repository's name there.
    pub upstream_repo: &'a RepositoryName,
    /// The canonical name: the repository the link is for.
    pub repo: &'a RepositoryName,
    /// The rule's `replicate` setting (the link goes to the peer regions).
    pub replicate: bool,
}

/// The link records of one region's bucket.
pub struct Links {
    store: Store,
    known: Mutex<Generations>,
    writes: TaskTracker,
    replicator: Option<Replicator>,
}

impl Links {
    /// Links kept in `store`; those of replicated rules are also queued on
    /// `replicator` (when there are peer regions).
    pub fn new(store: Store, replicator: Option<Replicator>) -> Self {
        Self {
            store,
            known: Mutex::default(),
            writes: TaskTracker::new(),
            replicator,
        }
    }

    /// Writes the link object (and queues it for the peer regions when the
    /// rule replicates); true once the store has it.
    async fn write(
        store: &Store,
        replicator: Option<&Replicator>,
        key: &str,
        replicate: bool,
    ) -> bool {
        match store
            .put_bytes(key, Bytes::new(), "application/octet-stream")
            .await
        {
            Ok(()) => {
                if replicate && let Some(r) = replicator {
                    r.enqueue(key.to_owned(), Digest::sha256_of(b""));
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "repository link not recorded");
                false
            }
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `repo` is linked to `digest`. A store that cannot be read
    /// counts as "not linked": the caller then asks the upstream.
    pub async fn has(&self, kind: Kind, repo: &RepositoryName, digest: &Digest) -> bool {
        let key = kind.key(repo, digest);
        if self.known().contains(&key) {
            return true;
        }
        match self.store.head(&key).await {
            Ok(Some(_)) => {
                self.known().insert(key);
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "link lookup failed; asking the upstream");
                false
            }
        }
    }

    /// Records that `repo`'s upstream served or confirmed `digest`: in
    /// memory now, in the store in the background (a lost write costs one
    /// upstream `HEAD` later, never a wrong answer). `replicate`: the
    /// rule's `replicate` setting.
    pub fn record(&self, kind: Kind, repo: &RepositoryName, digest: &Digest, replicate: bool) {
        let key = kind.key(repo, digest);
        if !self.known().insert(key.clone()) {
            return;
        }
        let store = self.store.clone();
        let replicator = self.replicator.clone();
        self.writes.spawn(async move {
            Self::write(&store, replicator.as_ref(), &key, replicate).await;
        });
    }

    /// Records the link and waits until the store has it (the edge may
    /// look for it as soon as the caller reports the blob committed).
    pub async fn record_now(
        &self,
        kind: Kind,
        repo: &RepositoryName,
        digest: &Digest,
        replicate: bool,
    ) {
        let key = kind.key(repo, digest);
        if Self::write(&self.store, self.replicator.as_ref(), &key, replicate).await {
            self.known().insert(key);
        }
    }

    /// Records the digests a manifest that `repo`'s upstream served refers
    /// to (see `wharf_core::access::references`).
    pub fn record_references(&self, repo: &RepositoryName, body: &[u8], replicate: bool) {
        for reference in wharf_core::access::references(body) {
            match reference {
                Reference::Blob(d) => self.record(Kind::Blob, repo, &d, replicate),
                Reference::Manifest(d) => self.record(Kind::Manifest, repo, &d, replicate),
            }
        }
    }

    /// Asks `through`'s upstream whether it has `digest` (one `HEAD`): 200
    /// records the link; 404 is `not_found`; anything else is the upstream's
    /// error (fail closed).
    pub async fn confirm(
        &self,
        kind: Kind,
        through: Through<'_>,
        digest: &Digest,
        not_found: impl FnOnce() -> Error,
    ) -> Result<(), Error> {
        let Through {
            upstream,
            upstream_repo,
            repo,
            replicate,
        } = through;
        let response = upstream
            .send(
                Method::HEAD,
                upstream_repo,
                &format!("{}/{digest}", kind.path()),
                Default::default(),
            )
            .await
            .map_err(|source| Error::Upstream {
                registry: upstream.registry().to_owned(),
                source,
            })?;
        if response.status().is_success() {
            metrics::link_check("confirmed");
            self.record(kind, repo, digest, replicate);
            Ok(())
        } else {
            metrics::link_check("refused");
            tracing::info!(%repo, %digest, status = response.status().as_u16(), "digest held for another repository; this repository's upstream does not have it");
            Err(not_found())
        }
    }

    /// Forgets a link the retention pass deleted, so this process writes it
    /// again when the repository's upstream serves the digest anew.
    pub fn forget(&self, key: &str) {
        let mut known = self.known();
        known.young.remove(key);
        known.old.remove(key);
    }

    /// Waits for the link writes in flight (shutdown, tests).
    pub async fn flush(&self) {
        self.writes.close();
        self.writes.wait().await;
        self.writes.reopen();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_bounded_and_keep_what_is_used() {
        let mut g = Generations::default();
        for i in 0..GENERATION {
            assert!(g.insert(format!("k{i}")));
        }
        assert!(!g.insert("k0".into()));
        // k0 is touched, then the young generation rolls over twice: k0
        // survives the first roll (moved to young on use), k1 does not
        // survive two.
        assert!(g.contains("k0"));
        for i in 0..GENERATION {
            g.insert(format!("a{i}"));
        }
        assert!(g.contains("k0"));
        for i in 0..2 * GENERATION {
            g.insert(format!("b{i}"));
        }
        assert!(!g.contains("k1"));
        assert!(g.young.len() + g.old.len() <= 2 * GENERATION);
    }
}
