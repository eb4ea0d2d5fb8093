//! Tag-change prefetch (issue 16): which tags are hot, when a hot tag is
//! revalidated ahead of its clients, and which platforms of a moved tag are
//! hydrated before anyone asks.
//!
//! A tag is *hot* when it was pulled at least `hot_pulls` times within the
//! last `window` ([`HotTags`]). A cache that revalidates only when a client
//! asks learns that a tag moved from that client, whose pull is then cold.
//! So a hot tag is revalidated by the cache itself shortly *before* it would
//! go stale ([`refresh_due`]); when it moved, the new manifest and the blobs
//! of the platforms pulled before ([`platforms_to_prefetch`]) are hydrated
//! while the old tag is still fresh, and the tag switches only then: the
//! first pull that sees the new digest is a warm pull.
//!
//! # Key decisions
//!
//! * Cost: one `HEAD` per TTL per hot tag (Docker Hub does not count them),
//!   and only while it is still being pulled (a pull within the last TTL):
//!   a tag nobody pulls any more is not kept fresh for the whole window.
//! * Only the platforms pulled before: CI fleets pull one or two of an
//!   index's many platforms, and each platform manifest `GET` spends the
//!   upstream's budget. Not knowing which were pulled (the tag was a
//!   single-platform image before, or only the index was asked for), none
//!   are: the manifest alone is fetched.
//! * Bounded: at most `hot_pulls` pull times per tag and [`MAX_TAGS`] tags;
//!   past that the least recently pulled tag is forgotten.
//!
//! Pure: times are passed in as unix milliseconds.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use crate::access::{platform_matches, platforms};
use crate::digest::Digest;
use crate::freshness::FreshnessPolicy;

/// Tags remembered at most.
pub const MAX_TAGS: usize = 50_000;

/// Largest `hot_pulls` accepted (each remembered tag keeps that many times).
pub const MAX_HOT_PULLS: u32 = 1_000;

/// When a tag is hot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefetchPolicy {
    /// Pulls within `window` that make a tag hot; 0 turns prefetch off.
    pub hot_pulls: u32,
    /// The window pulls are counted in.
    pub window: Duration,
}

impl Default for PrefetchPolicy {
    /// 5 pulls within an hour.
    fn default() -> Self {
        PrefetchPolicy {
            hot_pulls: 5,
            window: Duration::from_secs(3600),
        }
    }
}

impl PrefetchPolicy {
    /// Prefetch turned off.
    pub const OFF: PrefetchPolicy = PrefetchPolicy {
        hot_pulls: 0,
        window: Duration::ZERO,
    };

    /// Whether prefetch is on.
    pub fn enabled(&self) -> bool {
        self.hot_pulls > 0 && !self.window.is_zero()
    }

    /// Checks the numbers a configuration gave.
    pub fn validate(&self) -> Result<(), String> {
        if self.hot_pulls > MAX_HOT_PULLS {
            return Err(format!(
                "prefetch_hot_pulls = {} is more than {MAX_HOT_PULLS}; use 0 to turn prefetch off",
                self.hot_pulls
            ));
        }
        if self.hot_pulls > 0 && self.window.is_zero() {
            return Err(
                "prefetch_window is 0 while prefetch_hot_pulls is not; e.g. prefetch_window = \"1h\""
                    .into(),
            );
        }
        Ok(())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One remembered tag.
#[derive(Clone, Debug)]
struct Entry {
    policy: PrefetchPolicy,
    /// The latest pull times, oldest first, at most `policy.hot_pulls`.
    pulls: VecDeque<u64>,
}

impl Entry {
    fn last(&self) -> u64 {
        self.pulls.back().copied().unwrap_or(0)
    }

    fn hot(&self, now_ms: u64) -> bool {
        let need = self.policy.hot_pulls as usize;
        need > 0
            && self.pulls.len() >= need
            && self
                .pulls
                .front()
                .is_some_and(|&oldest| now_ms.saturating_sub(oldest) <= millis(self.policy.window))
    }
}

/// Pull counts of recently pulled tags, keyed by whatever names a tag
/// (the origin uses repository and tag).
#[derive(Debug)]
pub struct HotTags<K> {
    entries: HashMap<K, Entry>,
    max: usize,
}

impl<K> Default for HotTags<K> {
    fn default() -> Self {
        HotTags {
            entries: HashMap::new(),
            max: MAX_TAGS,
        }
    }
}

impl<K: Clone + Eq + std::hash::Hash> HotTags<K> {
    /// At most `max` tags remembered.
    pub fn with_capacity(max: usize) -> Self {
        HotTags {
            entries: HashMap::new(),
            max: max.max(1),
        }
    }

    /// A pull of `key` at `now_ms`, under `policy` (off: nothing is kept).
    pub fn record(&mut self, key: &K, policy: PrefetchPolicy, now_ms: u64) {
        if !policy.enabled() {
            return;
        }
        if !self.entries.contains_key(key) && self.entries.len() >= self.max {
            self.make_room(now_ms);
        }
        let entry = self.entries.entry(key.clone()).or_insert_with(|| Entry {
            policy,
            pulls: VecDeque::new(),
        });
        entry.policy = policy;
        entry.pulls.push_back(now_ms);
        while entry.pulls.len() > policy.hot_pulls as usize {
            entry.pulls.pop_front();
        }
    }

    /// Forgets tags not pulled within their window; if none was, the least
    /// recently pulled one.
    fn make_room(&mut self, now_ms: u64) {
        let before = self.entries.len();
        self.entries
            .retain(|_, e| now_ms.saturating_sub(e.last()) <= millis(e.policy.window));
        if self.entries.len() < before {
            return;
        }
        if let Some(oldest) = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.last())
            .map(|(k, _)| k.clone())
        {
            self.entries.remove(&oldest);
        }
    }

    /// Whether `key` is hot at `now_ms`.
    pub fn is_hot(&self, key: &K, now_ms: u64) -> bool {
        self.entries.get(key).is_some_and(|e| e.hot(now_ms))
    }

    /// The hot tags at `now_ms`, each with its last pull; forgets the tags
    /// not pulled within their window.
    pub fn hot(&mut self, now_ms: u64) -> Vec<(K, u64)> {
        self.entries
            .retain(|_, e| now_ms.saturating_sub(e.last()) <= millis(e.policy.window));
        self.entries
            .iter()
            .filter(|(_, e)| e.hot(now_ms))
            .map(|(k, e)| (k.clone(), e.last()))
            .collect()
    }

    /// Tags remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no tag is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Whether a hot tag confirmed at `fetched_at_ms` and last pulled at
/// `last_pull_ms` is to be revalidated now: it goes stale within `lead`
/// (the time until the caller looks again), and someone pulled it within
/// its TTL. An entry dated in the future (another clock) is due at once.
pub fn refresh_due(
    freshness: &FreshnessPolicy,
    fetched_at_ms: u64,
    last_pull_ms: u64,
    now_ms: u64,
    lead: Duration,
) -> bool {
    let ttl = millis(freshness.ttl);
    let still_pulled = now_ms.saturating_sub(last_pull_ms) <= ttl;
    let stale_at = fetched_at_ms.saturating_add(ttl);
    let future = fetched_at_ms > now_ms.saturating_add(ttl);
    still_pulled && (future || now_ms.saturating_add(millis(lead)) >= stale_at)
}

/// What to hydrate of a tag that moved from `old_top` to `new_top` (their
/// manifest bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The new manifest is one image: its blobs.
    Image,
    /// The new manifest is an index: the children with these platforms
    /// (`os/arch[/variant]`), the ones pulled before.
    Platforms(Vec<String>),
    /// An index, but which platforms were pulled is unknown, or none of them
    /// is in the new index: nothing beyond the manifest.
    Nothing,
}

/// The core's choice for a moved tag: an image's blobs; an index's
/// platforms that were pulled before (`pulled` says whether a child
/// manifest of the old index was pulled) and that the new index has.
pub fn platforms_to_prefetch(
    old_top: &[u8],
    new_top: &[u8],
    pulled: impl Fn(&Digest) -> bool,
) -> Selection {
    let new = platforms(new_top);
    if new.is_empty() {
        return Selection::Image;
    }
    let before: BTreeSet<String> = platforms(old_top)
        .into_iter()
        .filter(|(d, _)| pulled(d))
        .filter_map(|(_, p)| p)
        .collect();
    let chosen: Vec<String> = before
        .into_iter()
        .filter(|p| {
            new.iter()
                .any(|(_, n)| n.as_deref().is_some_and(|n| platform_matches(p, n)))
        })
        .collect();
    if chosen.is_empty() {
        Selection::Nothing
    } else {
        Selection::Platforms(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOT: PrefetchPolicy = PrefetchPolicy {
        hot_pulls: 3,
        window: Duration::from_secs(60),
    };

    #[test]
    fn a_tag_is_hot_after_enough_pulls_within_the_window() {
        let mut tags = HotTags::default();
        let t = "app:v1";
        tags.record(&t, HOT, 1_000);
        tags.record(&t, HOT, 2_000);
        assert!(!tags.is_hot(&t, 2_000), "two pulls");
        tags.record(&t, HOT, 3_000);
        assert!(tags.is_hot(&t, 3_000));
        assert!(tags.is_hot(&t, 61_000), "the oldest of three is 60 s old");
        assert!(!tags.is_hot(&t, 61_001), "now it is older than the window");
        // Spread out: never three within a minute.
        let mut spread = HotTags::default();
        for at in [0, 40_000, 80_000, 120_000] {
            spread.record(&"slow", HOT, at);
            assert!(!spread.is_hot(&"slow", at), "{at}");
        }
        assert_eq!(spread.entries[&"slow"].pulls.len(), 3, "bounded");
    }

    #[test]
    fn off_keeps_nothing_and_the_bound_forgets_the_coldest() {
        let mut tags = HotTags::with_capacity(2);
        tags.record(&"a", PrefetchPolicy::OFF, 0);
        assert!(tags.is_empty());
        tags.record(&"a", HOT, 10);
        tags.record(&"b", HOT, 20);
        tags.record(&"c", HOT, 30);
        assert_eq!(tags.len(), 2);
        assert!(
            !tags.entries.contains_key(&"a"),
            "the least recently pulled"
        );
        // Past their window, all go at once.
        tags.record(&"d", HOT, 1_000_000);
        assert_eq!(tags.len(), 1);
        let hot = {
            for at in [1_000_001, 1_000_002] {
                tags.record(&"d", HOT, at);
            }
            tags.hot(1_000_003)
        };
        assert_eq!(hot, vec![("d", 1_000_002)]);
        assert!(tags.hot(1_000_002 + 60_001).is_empty());
        assert!(tags.is_empty(), "forgotten once out of the window");
    }

    #[test]
    fn hot_tags_refresh_just_before_going_stale_while_pulled() {
        let f = FreshnessPolicy {
            ttl: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(60),
        };
        let lead = Duration::from_secs(1);
        // (fetched, last pull, now, due)
        let table = [
            (0, 5_000, 8_000, false),  // 2 s left
            (0, 5_000, 9_000, true),   // stale within the lead
            (0, 9_500, 12_000, true),  // already stale
            (0, 1_000, 12_000, false), // nobody pulled it for 11 s > TTL
            (50_000, 0, 0, true),      // dated in the future
        ];
        for (fetched, last, now, due) in table {
            assert_eq!(
                refresh_due(&f, fetched, last, now, lead),
                due,
                "{fetched} {last} {now}"
            );
        }
    }

    fn index(children: &[(&Digest, &str)]) -> Vec<u8> {
        let entries: Vec<String> = children
            .iter()
            .map(|(d, p)| {
                let mut parts = p.split('/');
                let (os, arch) = (parts.next().unwrap(), parts.next().unwrap());
                let variant = parts
                    .next()
                    .map(|v| format!(r#","variant":"{v}""#))
                    .unwrap_or_default();
                format!(
                    r#"{{"digest":"{d}","platform":{{"os":"{os}","architecture":"{arch}"{variant}}}}}"#
                )
            })
            .collect();
        format!(r#"{{"manifests":[{}]}}"#, entries.join(",")).into_bytes()
    }

    fn digest(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    #[test]
    fn only_the_platforms_pulled_before_are_prefetched() {
        let (a1, b1, c1) = (digest('a'), digest('b'), digest('c'));
        let (a2, b2) = (digest('d'), digest('e'));
        let old = index(&[
            (&a1, "linux/amd64"),
            (&b1, "linux/arm64/v8"),
            (&c1, "linux/s390x"),
        ]);
        let new = index(&[(&a2, "linux/amd64"), (&b2, "linux/arm64/v8")]);
        let image = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert_eq!(
            platforms_to_prefetch(&old, &new, |d| *d == a1),
            Selection::Platforms(vec!["linux/amd64".into()])
        );
        assert_eq!(
            platforms_to_prefetch(&old, &new, |d| *d == a1 || *d == b1 || *d == c1),
            Selection::Platforms(vec!["linux/amd64".into(), "linux/arm64/v8".into()]),
            "s390x is gone from the new index"
        );
        assert_eq!(
            platforms_to_prefetch(&old, &new, |_| false),
            Selection::Nothing
        );
        assert_eq!(
            platforms_to_prefetch(image, &new, |_| true),
            Selection::Nothing,
            "an image before: which platform it was is unknown"
        );
        assert_eq!(
            platforms_to_prefetch(&old, image, |_| false),
            Selection::Image
        );
        assert_eq!(
            platforms_to_prefetch(b"garbage", b"{", |_| true),
            Selection::Image
        );
    }

    #[test]
    fn the_policy_checks_its_numbers() {
        assert!(PrefetchPolicy::default().validate().is_ok());
        assert!(PrefetchPolicy::OFF.validate().is_ok());
        assert!(!PrefetchPolicy::OFF.enabled());
        let too_many = PrefetchPolicy {
            hot_pulls: MAX_HOT_PULLS + 1,
            ..PrefetchPolicy::default()
        };
        assert!(
            too_many
                .validate()
                .unwrap_err()
                .contains("prefetch_hot_pulls")
        );
        let no_window = PrefetchPolicy {
            hot_pulls: 3,
            window: Duration::ZERO,
        };
        assert!(
            no_window
                .validate()
                .unwrap_err()
                .contains("prefetch_window")
        );
    }
}
