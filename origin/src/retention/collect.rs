//! One retention pass: inventory → evict → sweep (see the module above).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use wharf_core::access::{Reference, references};
use wharf_core::keys::{GC_CANDIDATES_KEY, GC_LEASE_KEY, StoreKey};
use wharf_core::retention::{self, Image, ManifestLink, Policy, Reason, StoredBlob};
use wharf_core::{Digest, RepositoryName};

use super::{Evicted, GcError, Report, Retention};
use crate::events::Event;
use crate::manifests::TagRecord;
use crate::metrics;
use crate::store::{self, Store};

/// How long a new lease is left to settle before it is read back (far
/// above one store round trip).
const LEASE_SETTLE: Duration = Duration::from_millis(500);

/// How long a lease holds if its holder dies mid-pass.
const LEASE_TTL: Duration = Duration::from_secs(15 * 60);

/// Store reads and deletes in flight during a pass.
const CONCURRENCY: usize = 16;

#[derive(Serialize, Deserialize)]
struct Lease {
    holder: String,
    until_ms: u64,
}

/// The sweep's first phase, kept between passes (and replicas).
#[derive(Serialize, Deserialize, Default)]
struct Candidates {
    #[serde(default)]
    blobs: BTreeMap<Digest, u64>,
    #[serde(default)]
    manifests: BTreeMap<Digest, u64>,
}

/// What the bucket holds, from three listings.
#[derive(Default)]
struct Inventory {
    manifest_links: Vec<ManifestLink>,
    /// Blob → the repositories linked to it.
    blob_links: BTreeMap<Digest, Vec<RepositoryName>>,
    blobs: Vec<StoredBlob>,
    manifests: Vec<StoredBlob>,
    /// Size of every stored blob and manifest.
    sizes: BTreeMap<Digest, u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Inventory {
    async fn take(store: &Store) -> Result<Inventory, store::Error> {
        let (links, blobs, manifests) = tokio::try_join!(
            store.list("links/"),
            store.list("blobs/"),
            store.list("manifests/"),
        )?;
        let mut inv = Inventory::default();
        for l in links {
            match StoreKey::parse(&l.key) {
                Some(StoreKey::ManifestLink(repo, digest)) => {
                    inv.manifest_links.push(ManifestLink {
                        repo,
                        digest,
                        written_ms: l.modified_ms,
                    })
                }
                Some(StoreKey::BlobLink(repo, digest)) => {
                    inv.blob_links.entry(digest).or_default().push(repo)
                }
                _ => {}
            }
        }
        for (listed, is_blob) in blobs
            .into_iter()
            .map(|l| (l, true))
            .chain(manifests.into_iter().map(|l| (l, false)))
        {
            let digest = match (StoreKey::parse(&listed.key), is_blob) {
                (Some(StoreKey::Blob(d)), true) | (Some(StoreKey::Manifest(d)), false) => d,
                _ => continue,
            };
            inv.sizes.insert(digest.clone(), listed.len);
            let stored = StoredBlob {
                digest,
                written_ms: listed.modified_ms,
            };
            if is_blob {
                inv.blobs.push(stored);
            } else {
                inv.manifests.push(stored);
            }
        }
        Ok(inv)
    }
}

impl Retention {
    pub(super) async fn collect(&self, dry_run: bool) -> Result<Report, GcError> {
        let now = now_ms();
        if dry_run {
            return self.pass(true, now).await;
        }
        self.pulls.flush().await;
        self.take_lease(now).await?;
        let result = self.pass(false, now).await;
        self.release_lease().await;
        result
    }

    async fn take_lease(&self, now: u64) -> Result<(), GcError> {
        let current = self.read_json::<Lease>(GC_LEASE_KEY).await?;
        if let Some(l) = current
            && l.holder != self.holder
            && l.until_ms > now
        {
            return Err(GcError::Busy {
                holder: l.holder,
                until_ms: l.until_ms,
            });
        }
        let mine = Lease {
            holder: self.holder.clone(),
            until_ms: now + LEASE_TTL.as_millis() as u64,
        };
        self.write_json(GC_LEASE_KEY, &mine).await?;
        // Two replicas that both saw the lease free both write it, the
        // store keeps the last write, and the one that then reads another's
        // id steps back. Reading back only after a pause covers a
        // competitor whose read came before our write and whose write
        // comes after it (one round trip later): by the time we read,
        // its write has landed.
        tokio::time::sleep(LEASE_SETTLE).await;
        match self.read_json::<Lease>(GC_LEASE_KEY).await? {
            Some(l) if l.holder != self.holder => Err(GcError::Busy {
                holder: l.holder,
                until_ms: l.until_ms,
            }),
            _ => Ok(()),
        }
    }

    async fn release_lease(&self) {
        if let Ok(Some(l)) = self.read_json::<Lease>(GC_LEASE_KEY).await
            && l.holder == self.holder
            && let Err(e) = self.services.store.delete(GC_LEASE_KEY).await
        {
            tracing::warn!(error = %e, "retention lease not released; it expires by itself");
        }
    }

    pub(super) async fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
    ) -> Result<Option<T>, store::Error> {
        Ok(self
            .services
            .store
            .get_bytes(key)
            .await?
            .and_then(|(_, body)| {
                serde_json::from_slice(&body)
                    .inspect_err(
                        |e| tracing::warn!(key, error = %e, "unreadable record; ignoring it"),
                    )
                    .ok()
            }))
    }

    async fn write_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), store::Error> {
        let body = serde_json::to_vec(value).unwrap_or_default();
        self.services
            .store
            .put_bytes(key, Bytes::from(body), "application/json")
            .await
    }

    /// What each stored manifest lists (a manifest that cannot be read
    /// lists nothing: its image then holds only its own bytes, and the
    /// pass deletes nothing it cannot see referenced — see `sweep_blobs`).
    pub(super) async fn references(
        &self,
        manifests: &[StoredBlob],
    ) -> Result<BTreeMap<Digest, Vec<Reference>>, store::Error> {
        // Owned captures: a stream of futures borrowing `self` is not
        // `Send` for every lifetime, which `tokio::spawn` needs.
        let store = self.services.store.clone();
        let read: Vec<Result<(Digest, Vec<Reference>), store::Error>> = futures::stream::iter(
            manifests
                .iter()
                .map(|m| m.digest.clone())
                .collect::<Vec<_>>(),
        )
        .map(move |digest| {
            let store = store.clone();
            async move {
                let body = store.get_bytes(&store::manifest_key(&digest)).await?;
                let refs = body.map(|(_, b)| references(&b)).unwrap_or_default();
                Ok((digest, refs))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
        // A manifest that could not be read would leave its blobs looking
        // unreferenced: stop the pass rather than sweep them.
        read.into_iter().collect()
    }

    async fn pass(&self, dry_run: bool, now: u64) -> Result<Report, GcError> {
        let inv = Inventory::take(&self.services.store).await?;
        let refs = self.references(&inv.manifests).await?;
        let rule_of = |repo: &RepositoryName| self.rule_of(repo);
        let images = retention::images(&inv.manifest_links, &refs, &inv.sizes, rule_of);
        let mut report = Report {
            dry_run,
            images: images.len(),
            ..Report::default()
        };
        let (kept, evicted) = self.evictions(&images, now, &mut report);
        // Eviction: the images' manifest links and the tag records that
        // point at them.
        let (mut link_keys, tops) = eviction_keys(&evicted);
        let tag_keys = self.tags_pointing_at(&tops).await?;
        let previous = self
            .read_json::<Candidates>(GC_CANDIDATES_KEY)
            .await?
            .unwrap_or_default();
        let in_flight = self.in_flight();
        let grace = self.settings.grace.as_millis() as u64;
        let mut sweep = sweep_plan(&inv, &kept, &previous, &in_flight, grace, now);
        link_keys.append(&mut sweep.unlink);
        report.links_deleted = link_keys.len();
        report.tags_deleted = tag_keys.len();
        if !dry_run {
            self.carry_out(&link_keys, &tag_keys, &mut sweep, &in_flight, &report, now)
                .await?;
        }
        report.candidates = sweep.next.blobs.len() + sweep.next.manifests.len();
        report.deleted_bytes = sweep.doomed.iter().map(|(_, n)| n).sum();
        report.deleted = sweep.doomed.into_iter().map(|(k, _)| k).collect();
        Ok(report)
    }

    /// Which images go (keep windows, then the quota), recorded in
    /// `report` with the bytes each rule's kept images hold; returns the
    /// kept and the evicted images.
    fn evictions(
        &self,
        images: &[Image],
        now: u64,
        report: &mut Report,
    ) -> (Vec<Image>, Vec<Image>) {
        let s = &self.settings;
        let policy = Policy {
            keep_ms: s
                .keep
                .iter()
                .map(|(rule, keep)| (rule.clone(), keep.as_millis() as u64))
                .collect(),
            high_watermark: s.quota_high,
            low_watermark: s.quota_low,
        };
        let evictions = retention::evict(images, &policy, now);
        let gone: BTreeMap<&str, (Reason, u64)> = evictions
            .iter()
            .map(|(k, reason, freed)| (k.as_str(), (*reason, *freed)))
            .collect();
        let (evicted, kept): (Vec<Image>, Vec<Image>) = images
            .iter()
            .cloned()
            .partition(|i| gone.contains_key(i.key.as_str()));
        for (key, reason, bytes) in &evictions {
            let Some(image) = evicted.iter().find(|i| &i.key == key) else {
                continue;
            };
            report.evicted.push(Evicted {
                image: image.key.clone(),
                rule: image.rule.clone(),
                reason: match reason {
                    Reason::Expired => "expired",
                    Reason::Quota => "quota",
                }
                .to_owned(),
                bytes: *bytes,
            });
        }
        for image in &kept {
            let mut seen = BTreeSet::new();
            let held: u64 = image
                .digests
                .iter()
                .filter(|(d, _)| seen.insert(d))
                .map(|(_, n)| n)
                .sum();
            *report.store_bytes.entry(image.rule.clone()).or_default() += held;
        }
        (kept, evicted)
    }

    /// Deletes what the pass decided, in the order that keeps every pull
    /// whole: links and tag records, then the candidates' record, then
    /// bytes (of blobs no repository got a link to meanwhile).
    async fn carry_out(
        &self,
        link_keys: &[String],
        tag_keys: &[String],
        sweep: &mut SweepPlan,
        in_flight: &BTreeSet<Digest>,
        report: &Report,
        now: u64,
    ) -> Result<(), GcError> {
        self.delete_all("link", link_keys).await;
        for key in link_keys {
            self.services.links.forget(key);
        }
        self.delete_all("tag", tag_keys).await;
        for key in tag_keys {
            self.services.manifests.forget_remembered(key);
        }
        // A blob that got a link since the listing (a repository's
        // upstream served it meanwhile) stays, and starts over.
        let relinked = Inventory::take_links(&self.services.store).await?;
        let next = &mut sweep.next;
        sweep.doomed.retain(|(key, _)| match StoreKey::parse(key) {
            Some(StoreKey::Blob(d)) if relinked.contains(&d) || in_flight.contains(&d) => {
                next.blobs.insert(d, now);
                false
            }
            _ => true,
        });
        self.write_json(GC_CANDIDATES_KEY, &sweep.next).await?;
        for e in &report.evicted {
            metrics::evicted(&e.rule, &e.reason, e.bytes);
            let (repository, digest) = e.image.rsplit_once('@').unwrap_or((&e.image, ""));
            self.services.events.emit(Event::Eviction {
                at_ms: now,
                rule: e.rule.clone(),
                repository: repository.to_owned(),
                digest: digest.to_owned(),
                reason: e.reason.clone(),
                bytes: e.bytes,
            });
        }
        for (rule, bytes) in &report.store_bytes {
            metrics::store_bytes(rule, *bytes);
        }
        metrics::gc_candidates(sweep.next.blobs.len() + sweep.next.manifests.len());
        for (key, len) in &sweep.doomed {
            match self.services.store.delete(key).await {
                Ok(()) => {
                    let kind = match StoreKey::parse(key) {
                        Some(StoreKey::Blob(d)) => {
                            self.services.blobs.forget_committed(&d);
                            "blob"
                        }
                        Some(StoreKey::Manifest(d)) => {
                            self.services.manifests.forget_manifest(&d);
                            "manifest"
                        }
                        _ => "manifest",
                    };
                    metrics::gc_deleted(kind, 1, *len);
                }
                Err(e) => tracing::warn!(key, error = %e, "not deleted; the next pass retries"),
            }
        }
        Ok(())
    }

    /// The tag records of `tops`' repositories that point at one of them.
    pub(super) async fn tags_pointing_at(
        &self,
        tops: &BTreeMap<RepositoryName, BTreeSet<Digest>>,
    ) -> Result<Vec<String>, store::Error> {
        let mut out = Vec::new();
        for (repo, digests) in tops {
            let listed = self.services.store.list(&format!("tags/{repo}/_/")).await?;
            let store = self.services.store.clone();
            let digests = digests.clone();
            let found: Vec<Option<String>> = futures::stream::iter(listed)
                .map(move |l| {
                    let (store, digests) = (store.clone(), digests.clone());
                    async move {
                        let (_, body) = store.get_bytes(&l.key).await.ok().flatten()?;
                        let record: TagRecord = serde_json::from_slice(&body).ok()?;
                        digests.contains(&record.digest).then_some(l.key)
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            out.extend(found.into_iter().flatten());
        }
        Ok(out)
    }

    pub(super) async fn delete_all(&self, kind: &'static str, keys: &[String]) {
        let store = self.services.store.clone();
        let deleted = futures::stream::iter(keys.to_vec())
            .map(move |key| {
                let store = store.clone();
                async move {
                    store
                        .delete(&key)
                        .await
                        .inspect_err(|e| tracing::warn!(key, error = %e, "not deleted; the next pass retries"))
                        .is_ok()
                }
            })
            .buffer_unordered(CONCURRENCY)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        metrics::gc_deleted(kind, deleted as u64, 0);
    }
}

impl Inventory {
    /// The blobs some repository is linked to now.
    async fn take_links(store: &Store) -> Result<BTreeSet<Digest>, store::Error> {
        Ok(store
            .list("links/")
            .await?
            .into_iter()
            .filter_map(|l| match StoreKey::parse(&l.key) {
                Some(StoreKey::BlobLink(_, d)) => Some(d),
                _ => None,
            })
            .collect())
    }
}

/// The evicted images' manifest links, and their top manifests by
/// repository (whose tag records go too).
fn eviction_keys(evicted: &[Image]) -> (Vec<String>, BTreeMap<RepositoryName, BTreeSet<Digest>>) {
    let mut link_keys = Vec::new();
    let mut tops: BTreeMap<RepositoryName, BTreeSet<Digest>> = BTreeMap::new();
    for image in evicted {
        let Some((repo, top)) = image.key.rsplit_once('@') else {
            continue;
        };
        let (Ok(repo), Ok(top)) = (RepositoryName::parse(repo), Digest::parse(top)) else {
            continue;
        };
        link_keys.extend(
            image
                .manifests
                .iter()
                .map(|d| store::manifest_link_key(&repo, d)),
        );
        tops.entry(repo).or_default().insert(top);
    }
    (link_keys, tops)
}

/// What the sweep does this pass.
struct SweepPlan {
    /// The candidates to record for the next pass.
    next: Candidates,
    /// Objects to delete now, with their sizes.
    doomed: Vec<(String, u64)>,
    /// Links of unreferenced blobs, withdrawn now.
    unlink: Vec<String>,
}

/// The core's two sweeps (blobs, manifests) and the links rule: an
/// unreferenced blob that still has links loses them now and counts its
/// grace window from now; only an unlinked one is deleted.
fn sweep_plan(
    inv: &Inventory,
    kept: &[Image],
    previous: &Candidates,
    in_flight: &BTreeSet<Digest>,
    grace: u64,
    now: u64,
) -> SweepPlan {
    let blobs = retention::sweep(&inv.blobs, kept, in_flight, &previous.blobs, grace, now);
    let manifests = retention::sweep(
        &inv.manifests,
        kept,
        &BTreeSet::new(),
        &previous.manifests,
        grace,
        now,
    );
    let mut plan = SweepPlan {
        next: Candidates::default(),
        doomed: Vec::new(),
        unlink: Vec::new(),
    };
    let candidates = blobs.candidates.into_iter();
    let due = blobs.delete.into_iter().map(|d| (d, None));
    for (d, since) in candidates.map(|(d, t)| (d, Some(t))).chain(due) {
        match (inv.blob_links.get(d), since) {
            (Some(repos), _) => {
                plan.unlink
                    .extend(repos.iter().map(|r| store::blob_link_key(r, d)));
                plan.next.blobs.insert(d.clone(), now);
            }
            (None, Some(since)) => {
                plan.next.blobs.insert(d.clone(), since);
            }
            (None, None) => plan.doomed.push((store::blob_key(d), inv.sizes[d])),
        }
    }
    for (d, since) in manifests.candidates {
        plan.next.manifests.insert(d.clone(), since);
    }
    for d in manifests.delete {
        plan.doomed.push((store::manifest_key(d), inv.sizes[d]));
    }
    plan
}
