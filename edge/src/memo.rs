//! Isolate memory: what one Workers isolate remembers between requests, so
//! that a warm request reads nothing from the Cache API or KV.
//!
//! This is the edge's one place of global mutable state besides the
//! configuration memo (`config.rs`), against the rule in `STYLE.md`. It is
//! acceptable for the same reasons: a Workers isolate runs one thread (a
//! `thread_local!` `RefCell`, never borrowed across an `.await`), every
//! value is keyed by everything it depends on, bounded in count (and in
//! bytes for manifests), expires, and only remembers what the tiers behind
//! it would answer anyway. Each memo is a [`Memo`]:
//!
//! * **Health records** ([`health`]), every region's, as this isolate last
//!   read or wrote them, for [`HEALTH_TTL_MS`] (2 s). Why 2 s: records change
//!   once per probe interval (10 s by default, at least 1 s) and failover
//!   needs several failed observations, so 2 s adds little to detection
//!   (this isolate's own observations update the memo at once; only other
//!   isolates' and the cron's wait), while a busy isolate reads the records
//!   once per 2 s instead of on every request.
//! * **Blob presence** ([`blob_present`]): "this digest is in region R's
//!   bucket *and* linked to repository N". Positive answers only, keyed by
//!   region, repository and digest: absence is never remembered, so a blob
//!   is redirected to the bucket as soon as it is there, and an answer for
//!   one repository is never one for another (`wharf_core::access`). Kept
//!   for [`SHORT_TTL_MS`], within `WHARF_PRESENCE_TTL`.
//! * **Manifests** ([`manifest`]), by the tiers' own key (canonical
//!   repository + digest or tag: never shared across repositories), for
//!   [`SHORT_TTL_MS`]. A tag entry is answered from here only while the
//!   rule's freshness policy calls it fresh (the caller checks), so the memo
//!   never serves a tag longer than the policy allows; digests are
//!   immutable.
//! * **Pull reports** ([`should_report_pull`]): which images this isolate
//!   told their region's origin it served from its caches, within
//!   [`PULL_REPORT_TTL_MS`] (10 min): the origin's retention counts a pull
//!   from the edge's cache as a pull, at one origin `HEAD` per image per
//!   isolate per ten minutes.
//!
//! Why [`SHORT_TTL_MS`] is a minute: long enough that a hot key costs one
//! tier read per minute per isolate, short enough that an operator's purge
//! of the Cache API or KV reaches every isolate within a minute.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use wharf_core::keys::blob_link_key;
use wharf_core::region::Health;
use wharf_core::{Digest, RepositoryName};

use crate::store::Entry;

/// How long health records are remembered (see the module doc).
pub const HEALTH_TTL_MS: u64 = 2_000;
/// How long blob presence and manifests are remembered (see the module doc).
pub const SHORT_TTL_MS: u64 = 60_000;

/// How long a reported pull is not reported again (see the module doc).
pub const PULL_REPORT_TTL_MS: u64 = 600_000;

/// A bounded map whose entries expire.
pub struct Memo<V> {
    map: HashMap<String, Slot<V>>,
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
}

struct Slot<V> {
    value: V,
    expires_ms: u64,
    size: usize,
}

impl<V: Clone> Memo<V> {
    /// An empty memo of at most `max_entries` entries and `max_bytes` bytes
    /// (as the callers size their values).
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Memo {
            map: HashMap::new(),
            max_entries,
            max_bytes,
            bytes: 0,
        }
    }

    /// The value under `key`, unless it expired.
    pub fn get(&self, key: &str, now_ms: u64) -> Option<V> {
        self.map
            .get(key)
            .filter(|s| s.expires_ms > now_ms)
            .map(|s| s.value.clone())
    }

    /// Keeps `value` (of `size` bytes) under `key` until `expires_ms`. When
    /// that would exceed a bound, expired entries go first, then those
    /// expiring soonest; a value larger than the byte bound is not kept.
    pub fn put(&mut self, key: String, value: V, size: usize, expires_ms: u64, now_ms: u64) {
        self.remove(&key);
        if size > self.max_bytes || self.max_entries == 0 || expires_ms <= now_ms {
            return;
        }
        let full = |m: &Self| m.map.len() >= m.max_entries || m.bytes + size > m.max_bytes;
        if full(self) {
            let expired: Vec<String> = self
                .map
                .iter()
                .filter(|(_, s)| s.expires_ms <= now_ms)
                .map(|(k, _)| k.clone())
                .collect();
            for k in expired {
                self.remove(&k);
            }
        }
        while full(self) {
            let Some(soonest) = self
                .map
                .iter()
                .min_by_key(|(_, s)| s.expires_ms)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&soonest);
        }
        self.bytes += size;
        self.map.insert(
            key,
            Slot {
                value,
                expires_ms,
                size,
            },
        );
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &str) {
        if let Some(s) = self.map.remove(key) {
            self.bytes -= s.size;
        }
    }

    /// How many entries are kept (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Everything this isolate remembers.
struct Isolate {
    health: Memo<Option<Health>>,
    presence: Memo<()>,
    manifests: Memo<Rc<Entry>>,
    reported: Memo<()>,
}

thread_local! {
    static ISOLATE: RefCell<Isolate> = RefCell::new(Isolate {
        // Regions: a handful; keyed by name, so a renamed region is a new key.
        health: Memo::new(256, usize::MAX),
        // A key is ~150 bytes: ~1 MiB at most.
        presence: Memo::new(8192, usize::MAX),
        // Workers isolates have 128 MiB; manifests are mostly a few KiB.
        manifests: Memo::new(2048, 16 * 1024 * 1024),
        // A key is ~150 bytes: ~1 MiB at most.
        reported: Memo::new(8192, usize::MAX),
    });
}

fn with<R>(f: impl FnOnce(&mut Isolate) -> R) -> R {
    ISOLATE.with(|m| f(&mut m.borrow_mut()))
}

/// Region `region`'s record as remembered: `None` when not remembered (or
/// expired), `Some(None)` when it was read and there was none.
pub fn health(region: &str, now_ms: u64) -> Option<Option<Health>> {
    with(|m| m.health.get(region, now_ms))
}

/// Remembers region `region`'s record (as read, or as just written).
pub fn remember_health(region: &str, record: Option<Health>, now_ms: u64) {
    with(|m| {
        m.health
            .put(region.to_owned(), record, 1, now_ms + HEALTH_TTL_MS, now_ms)
    });
}

fn presence_key(region: &str, name: &RepositoryName, digest: &Digest) -> String {
    format!("{region}/{}", blob_link_key(name, digest))
}

/// Whether this isolate knows `digest` is in `region`'s bucket and linked
/// to `name`.
pub fn blob_present(region: &str, name: &RepositoryName, digest: &Digest, now_ms: u64) -> bool {
    with(|m| {
        m.presence
            .get(&presence_key(region, name, digest), now_ms)
            .is_some()
    })
}

/// Remembers that `digest` is in `region`'s bucket and linked to `name`, for
/// [`SHORT_TTL_MS`] but not beyond `until_ms` (the presence TTL).
pub fn remember_blob_present(
    region: &str,
    name: &RepositoryName,
    digest: &Digest,
    now_ms: u64,
    until_ms: u64,
) {
    let key = presence_key(region, name, digest);
    let size = key.len();
    let expires = until_ms.min(now_ms + SHORT_TTL_MS);
    with(|m| m.presence.put(key, (), size, expires, now_ms));
}

/// Whether this isolate should tell `region`'s origin that it served
/// `name`'s manifest `digest` from its caches: true at most once per
/// [`PULL_REPORT_TTL_MS`] (the answer is remembered as given).
pub fn should_report_pull(
    region: &str,
    name: &RepositoryName,
    digest: &Digest,
    now_ms: u64,
) -> bool {
    let key = format!("{region}/{name}@{digest}");
    with(|m| {
        if m.reported.get(&key, now_ms).is_some() {
            return false;
        }
        let size = key.len();
        m.reported
            .put(key, (), size, now_ms + PULL_REPORT_TTL_MS, now_ms);
        true
    })
}

/// The manifest entry under the tiers' key `path`, if remembered.
pub fn manifest(path: &str, now_ms: u64) -> Option<Rc<Entry>> {
    with(|m| m.manifests.get(path, now_ms))
}

/// Remembers `entry` under the tiers' key `path` for [`SHORT_TTL_MS`].
pub fn remember_manifest(path: &str, entry: &Entry, now_ms: u64) {
    let size = entry.body.len() + path.len() + entry.media_type.len() + 128;
    with(|m| {
        m.manifests.put(
            path.to_owned(),
            Rc::new(entry.clone()),
            size,
            now_ms + SHORT_TTL_MS,
            now_ms,
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_bounds_hold() {
        let mut m: Memo<u32> = Memo::new(3, 100);
        m.put("a".into(), 1, 10, 1_000, 0);
        assert_eq!(m.get("a", 999), Some(1));
        assert_eq!(m.get("a", 1_000), None, "expired");
        assert_eq!(m.get("b", 0), None);
        // Full by count: the expired entry goes first, then the soonest.
        m.put("b".into(), 2, 10, 5_000, 0);
        m.put("c".into(), 3, 10, 3_000, 0);
        m.put("d".into(), 4, 10, 9_000, 2_000);
        assert_eq!(m.get("a", 2_000), None);
        assert_eq!(m.len(), 3);
        m.put("e".into(), 5, 10, 9_000, 2_000);
        assert_eq!(m.get("c", 2_000), None, "soonest to expire evicted");
        assert_eq!(m.get("b", 2_000), Some(2));
        // Full by bytes.
        m.put("big".into(), 6, 90, 9_000, 2_000);
        assert_eq!(m.get("big", 2_000), Some(6));
        assert!(m.bytes <= 100, "{}", m.bytes);
        // Larger than the bound, or already expired: not kept.
        m.put("huge".into(), 7, 101, 9_000, 2_000);
        assert_eq!(m.get("huge", 2_000), None);
        m.put("past".into(), 8, 1, 2_000, 2_000);
        assert_eq!(m.get("past", 2_000), None);
        // Replacing a key keeps the byte count right.
        m.put("big".into(), 9, 50, 9_000, 2_000);
        m.remove("big");
        assert!(m.is_empty() || m.bytes < 100);
    }

    #[test]
    fn blob_presence_is_per_region_repository_and_digest() {
        let d = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        let e = Digest::parse(&format!("sha256:{}", "b".repeat(64))).unwrap();
        let a = RepositoryName::parse("hub/team/a").unwrap();
        let b = RepositoryName::parse("hub/team/b").unwrap();
        remember_blob_present("eu", &a, &d, 1_000, u64::MAX);
        assert!(blob_present("eu", &a, &d, 1_001));
        assert!(!blob_present("eu", &b, &d, 1_001), "another repository");
        assert!(!blob_present("us", &a, &d, 1_001), "another region");
        assert!(!blob_present("eu", &a, &e, 1_001), "another digest");
        assert!(!blob_present("eu", &a, &d, 1_000 + SHORT_TTL_MS), "expired");
        // Within the presence TTL only.
        remember_blob_present("eu", &b, &d, 1_000, 1_500);
        assert!(blob_present("eu", &b, &d, 1_499));
        assert!(!blob_present("eu", &b, &d, 1_500));
    }
}
