//! Retention and garbage collection, as pure decisions (issue 14): which
//! images leave the store, and which blobs may then be deleted.
//!
//! # The two decisions
//!
//! 1. [`evict`] — which *images* (a repository's manifest, by digest) stop
//!    being kept: those not pulled within their rule's keep window, then,
//!    while the store is above its high watermark, the least recently pulled
//!    until it is at or below the low watermark. The bytes an eviction frees
//!    are only its blobs that no kept image also references, so an image
//!    sharing its base layers with a kept one frees little and is counted as
//!    such.
//! 2. [`sweep`] — which *blobs* may be deleted: those no kept image
//!    references (directly, through an index's child manifests, or as a
//!    referrer), that no hydration or replication is writing, that are
//!    older than the grace window, and that were already unreferenced one
//!    grace window ago (two phases: candidates first, deletion at a later
//!    sweep).
//!
//! # Key decisions
//!
//! * Mark from what is kept, never from what is evicted: a blob is deleted
//!   only when nothing kept points at it, so a wrong or stale eviction list
//!   can cost a re-fetch but never breaks a kept image.
//! * The grace window covers every race with a pull in progress: a blob
//!   written after the marking started (a new hydration, a replica's copy
//!   from another region) is younger than the window and survives this
//!   sweep; the next one decides it with the manifests that reference it.
//! * Least recently *pulled*, not least recently stored: `last_pulled_ms`
//!   is refreshed by hits (batched by the caller).
//! * Ties are broken by key, so that every replica computing the same
//!   decision from the same records deletes the same things.
//!
//! What an *image* is comes first ([`images`]): a repository's manifest
//! link that no other linked manifest of the same repository lists (an
//! index's platform manifests belong to the index), with everything it
//! needs and its last pull (the newest of its links' write times: a pull
//! rewrites the link).
//!
//! Time is an argument (unix milliseconds); nothing here reads a clock or a
//! store.

use std::collections::{BTreeMap, BTreeSet};

use crate::access::Reference;
use crate::{Digest, RepositoryName};

/// A repository's link to a manifest, as the store lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestLink {
    /// The repository.
    pub repo: RepositoryName,
    /// The manifest.
    pub digest: Digest,
    /// When the link was last written: the image's last pull (unix ms).
    pub written_ms: u64,
}

/// The images the links describe. `references`: what each stored manifest
/// lists ([`crate::access::references`]); `sizes`: every stored object's
/// size (a digest not stored is not part of any image's bytes);
/// `rule_of`: the rule a repository comes through.
pub fn images(
    links: &[ManifestLink],
    references: &BTreeMap<Digest, Vec<Reference>>,
    sizes: &BTreeMap<Digest, u64>,
    rule_of: impl Fn(&RepositoryName) -> String,
) -> Vec<Image> {
    let mut by_repo: BTreeMap<&RepositoryName, BTreeMap<&Digest, u64>> = BTreeMap::new();
    for l in links {
        let t = by_repo
            .entry(&l.repo)
            .or_default()
            .entry(&l.digest)
            .or_default();
        *t = (*t).max(l.written_ms);
    }
    let mut out = Vec::new();
    for (repo, linked) in by_repo {
        let children: BTreeSet<&Digest> = linked
            .keys()
            .flat_map(|d| references.get(*d).into_iter().flatten())
            .filter_map(|r| match r {
                Reference::Manifest(c) => Some(c),
                Reference::Blob(_) => None,
            })
            .collect();
        let rule = rule_of(repo);
        for (&top, _) in linked.iter().filter(|(d, _)| !children.contains(**d)) {
            // Depth-first over the manifests it lists; content addressing
            // rules out cycles, the `seen` set guards against a hostile one.
            let (mut digests, mut manifests, mut seen) = (Vec::new(), Vec::new(), BTreeSet::new());
            let mut last = 0;
            let mut stack = vec![top];
            while let Some(m) = stack.pop() {
                if !seen.insert(m) {
                    continue;
                }
                if let Some(t) = linked.get(m) {
                    last = last.max(*t);
                    manifests.push(m.clone());
                }
                if let Some(size) = sizes.get(m) {
                    digests.push((m.clone(), *size));
                }
                for r in references.get(m).into_iter().flatten() {
                    match r {
                        Reference::Manifest(c) => stack.push(c),
                        Reference::Blob(b) => {
                            if let Some(size) = sizes.get(b) {
                                digests.push((b.clone(), *size));
                            }
                        }
                    }
                }
            }
            out.push(Image {
                key: format!("{repo}@{top}"),
                rule: rule.clone(),
                last_pulled_ms: last,
                digests,
                manifests,
            });
        }
    }
    out
}

/// One kept image as the retention pass sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// A stable key (e.g. `<repository>@<manifest digest>`).
    pub key: String,
    /// The rule it came through (its keep window).
    pub rule: String,
    /// When it was last pulled (unix ms).
    pub last_pulled_ms: u64,
    /// Every digest it needs: its manifest, an index's child manifests,
    /// config and layers, referrers.
    pub digests: Vec<(Digest, u64)>,
    /// The repository's manifest links it is made of (the top manifest and
    /// its linked children): what evicting it deletes.
    pub manifests: Vec<Digest>,
}

/// How long each rule keeps what was not pulled, and the store's quota.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Keep window per rule (ms); a rule without one keeps until the quota
    /// needs the room.
    pub keep_ms: BTreeMap<String, u64>,
    /// Above this many bytes, evict least recently pulled first...
    pub high_watermark: Option<u64>,
    /// ...until at or below this many.
    pub low_watermark: Option<u64>,
}

/// Why an image is evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not pulled within its rule's keep window.
    Expired,
    /// The store was above its high watermark.
    Quota,
}

/// The images to evict, in eviction order, with why and how many bytes
/// each freed (blobs no remaining image shares).
pub fn evict(images: &[Image], policy: &Policy, now_ms: u64) -> Vec<(String, Reason, u64)> {
    // How many kept images need each digest.
    let mut users: BTreeMap<&Digest, (u32, u64)> = BTreeMap::new();
    for image in images {
        for (d, size) in unique(&image.digests) {
            users.entry(d).or_insert((0, size)).0 += 1;
        }
    }
    let mut stored: u64 = users.values().map(|(_, size)| size).sum();
    let mut order: Vec<&Image> = images.iter().collect();
    order.sort_by(|a, b| (a.last_pulled_ms, &a.key).cmp(&(b.last_pulled_ms, &b.key)));
    let mut out = Vec::new();
    let mut kept = Vec::new();
    for image in order {
        let expired = policy
            .keep_ms
            .get(&image.rule)
            .is_some_and(|keep| now_ms.saturating_sub(image.last_pulled_ms) > *keep);
        if expired {
            let freed = release(image, &mut users);
            stored -= freed;
            out.push((image.key.clone(), Reason::Expired, freed));
        } else {
            kept.push(image);
        }
    }
    if let (Some(high), low) = (policy.high_watermark, policy.low_watermark) {
        let low = low.unwrap_or(high).min(high);
        if stored > high {
            for image in kept {
                if stored <= low {
                    break;
                }
                let freed = release(image, &mut users);
                stored -= freed;
                out.push((image.key.clone(), Reason::Quota, freed));
            }
        }
    }
    out
}

/// A blob in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBlob {
    /// Its digest.
    pub digest: Digest,
    /// When it was written (unix ms).
    pub written_ms: u64,
}

/// What one sweep decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep<'a> {
    /// Delete these now.
    pub delete: Vec<&'a Digest>,
    /// Unreferenced, but not for long enough: remember each with when it
    /// was first seen so (carried over, or now) for the next sweep.
    pub candidates: Vec<(&'a Digest, u64)>,
}

/// The blobs that may be deleted: in the store, referenced by no kept
/// image, not being written (`in_flight`), written more than `grace_ms`
/// ago, and already unreferenced at an earlier sweep at least `grace_ms`
/// ago (`candidates`: digest → when first seen unreferenced).
///
/// The second condition is the two-phase part: between the last reference
/// going away and the bytes going away there is always one grace window, in
/// which whatever still points at the blob without a kept manifest behind
/// it — an edge's remembered redirect, a client between the manifest and
/// its layers — still finds it.
pub fn sweep<'a>(
    stored: &'a [StoredBlob],
    kept: &[Image],
    in_flight: &BTreeSet<Digest>,
    candidates: &BTreeMap<Digest, u64>,
    grace_ms: u64,
    now_ms: u64,
) -> Sweep<'a> {
    let marked: BTreeSet<&Digest> = kept
        .iter()
        .flat_map(|i| i.digests.iter().map(|(d, _)| d))
        .collect();
    let mut out = Sweep::default();
    let old_enough = |since: u64| now_ms.saturating_sub(since) > grace_ms;
    for b in stored {
        if marked.contains(&b.digest) || in_flight.contains(&b.digest) || !old_enough(b.written_ms)
        {
            continue;
        }
        match candidates.get(&b.digest) {
            Some(since) if old_enough(*since) => out.delete.push(&b.digest),
            Some(since) => out.candidates.push((&b.digest, *since)),
            None => out.candidates.push((&b.digest, now_ms)),
        }
    }
    out
}

/// Drops `image`'s use of its digests; returns the bytes no image uses any
/// more.
fn release<'a>(image: &'a Image, users: &mut BTreeMap<&'a Digest, (u32, u64)>) -> u64 {
    let mut freed = 0;
    for (d, _) in unique(&image.digests) {
        if let Some(entry) = users.get_mut(d) {
            entry.0 -= 1;
            if entry.0 == 0 {
                freed += entry.1;
            }
        }
    }
    freed
}

/// An image's digests, each once (a layer listed twice counts once).
fn unique(digests: &[(Digest, u64)]) -> impl Iterator<Item = (&Digest, u64)> {
    let mut seen = BTreeSet::new();
    digests
        .iter()
        .filter(move |(d, _)| seen.insert(d))
        .map(|(d, size)| (d, *size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn image(key: &str, rule: &str, last: u64, digests: &[(char, u64)]) -> Image {
        Image {
            key: key.into(),
            rule: rule.into(),
            last_pulled_ms: last,
            digests: digests.iter().map(|(c, s)| (d(*c), *s)).collect(),
            manifests: Vec::new(),
        }
    }

    const DAY: u64 = 86_400_000;

    fn images() -> Vec<Image> {
        vec![
            // `a` and `b` share the base layer `1` (100 bytes).
            image(
                "app@a",
                "docker.io",
                10 * DAY,
                &[('a', 1), ('1', 100), ('2', 50)],
            ),
            image(
                "app@b",
                "docker.io",
                2 * DAY,
                &[('b', 1), ('1', 100), ('3', 40)],
            ),
            image(
                "tool@c",
                "ghcr.io",
                5 * DAY,
                &[('c', 1), ('4', 30), ('4', 30)],
            ),
            image("old@d", "ghcr.io", 0, &[('d', 1), ('5', 20)]),
        ]
    }

    #[test]
    fn keep_windows_evict_what_was_not_pulled_per_rule() {
        let policy = Policy {
            keep_ms: BTreeMap::from([("ghcr.io".to_owned(), 7 * DAY)]),
            ..Policy::default()
        };
        // At day 11 only `old@d` (11 days unpulled) is past ghcr.io's 7
        // days (`tool@c`: 6); docker.io has no window. At day 13 both are.
        assert_eq!(
            evict(&images(), &policy, 11 * DAY),
            [("old@d".to_owned(), Reason::Expired, 21)]
        );
        assert_eq!(
            evict(&images(), &policy, 13 * DAY),
            [
                ("old@d".to_owned(), Reason::Expired, 21),
                ("tool@c".to_owned(), Reason::Expired, 31)
            ]
        );
    }

    #[test]
    fn quota_evicts_least_recently_pulled_down_to_the_low_watermark() {
        // Stored: a 1 + 1 100 + 2 50 + b 1 + 3 40 + c 1 + 4 30 + d 1 + 5 20 = 244.
        let quota = |high, low| Policy {
            high_watermark: Some(high),
            low_watermark: Some(low),
            ..Policy::default()
        };
        // Below the high watermark: nothing.
        assert_eq!(evict(&images(), &quota(244, 100), DAY), []);
        // Above: d (21), then b — which frees only b and 3 (41), as `1` is
        // still `a`'s — then c (31): 244 - 21 - 41 - 31 = 151 ≤ 160.
        assert_eq!(
            evict(&images(), &quota(200, 160), 11 * DAY),
            [
                ("old@d".to_owned(), Reason::Quota, 21),
                ("app@b".to_owned(), Reason::Quota, 41),
                ("tool@c".to_owned(), Reason::Quota, 31),
            ]
        );
        // Evicting everything frees the shared layer with its last user.
        let all: u64 = evict(&images(), &quota(1, 0), 11 * DAY)
            .iter()
            .map(|(_, _, f)| f)
            .sum();
        assert_eq!(all, 244);
    }

    #[test]
    fn sweeping_keeps_what_is_referenced_in_flight_or_young() {
        let kept = &images()[..2]; // a and b
        let stored: Vec<StoredBlob> = ['a', '1', '2', 'b', '3', 'c', '4', 'd', '5', '6']
            .iter()
            .map(|c| StoredBlob {
                digest: d(*c),
                written_ms: if *c == '6' { 10 * DAY } else { DAY },
            })
            .collect();
        let in_flight = BTreeSet::from([d('4')]);
        let grace = DAY / 2;
        // First sweep: c, d, 5 (unreferenced and old) become candidates; 4
        // is being written; 6 is young. Nothing is deleted yet.
        let first = sweep(&stored, kept, &in_flight, &BTreeMap::new(), grace, 10 * DAY);
        assert_eq!(first.delete, Vec::<&Digest>::new());
        let now = 10 * DAY;
        assert_eq!(
            first.candidates,
            [(&d('c'), now), (&d('d'), now), (&d('5'), now)]
        );
        let candidates: BTreeMap<Digest, u64> = first
            .candidates
            .iter()
            .map(|(d, t)| ((*d).clone(), *t))
            .collect();
        // Within the grace window: still candidates, since the first time.
        let soon = sweep(&stored, kept, &in_flight, &candidates, grace, now + grace);
        assert_eq!(soon.delete, Vec::<&Digest>::new());
        assert_eq!(soon.candidates.len(), 3);
        assert!(soon.candidates.iter().all(|(_, t)| *t == now));
        // After it: deleted — unless referenced again meanwhile (`d` is
        // pulled anew and kept).
        let mut kept_again = kept.to_vec();
        kept_again.push(image("old@d", "ghcr.io", now, &[('d', 1), ('5', 20)]));
        let later = sweep(
            &stored,
            &kept_again,
            &in_flight,
            &candidates,
            grace,
            now + DAY,
        );
        assert_eq!(later.delete, [&d('c')]);
        // `6` is old enough now: a candidate for the next sweep.
        assert_eq!(later.candidates, [(&d('6'), now + DAY)]);
    }

    #[test]
    fn an_index_and_its_platforms_are_one_image_pulled_when_any_was() {
        // Letters that read as what they stand for, as hex digests.
        let d = |c: char| {
            d(match c {
                'i' => 'a',
                'p' => 'b',
                'q' => 'c',
                's' => 'd',
                c => c,
            })
        };
        let repo = |n: &str| RepositoryName::parse(n).unwrap();
        let link = |r: &str, c: char, t: u64| ManifestLink {
            repo: repo(r),
            digest: d(c),
            written_ms: t,
        };
        // Index `i` lists platforms `p` and `q`; `p` (pulled at 9) lists
        // layers 1 and 2; `q` was never fetched (not stored). `s` is
        // another image of the same repository; `other/app` links `p`
        // alone, so there `p` is an image of its own.
        let references = BTreeMap::from([
            (
                d('i'),
                vec![Reference::Manifest(d('p')), Reference::Manifest(d('q'))],
            ),
            (
                d('p'),
                vec![Reference::Blob(d('1')), Reference::Blob(d('2'))],
            ),
            (d('s'), vec![Reference::Blob(d('1'))]),
        ]);
        let sizes = BTreeMap::from([
            (d('i'), 5),
            (d('p'), 4),
            (d('s'), 3),
            (d('1'), 100),
            (d('2'), 50),
        ]);
        let links = [
            link("docker.io/app", 'i', 2),
            link("docker.io/app", 'p', 9),
            link("docker.io/app", 's', 4),
            link("ghcr.io/other/app", 'p', 1),
        ];
        let rule = |r: &RepositoryName| r.as_str().split('/').next().unwrap().to_owned();
        let mut got = super::images(&links, &references, &sizes, rule);
        for i in &mut got {
            i.digests.sort();
        }
        let want = |key: &str, rule: &str, last, ds: &[(char, u64)], ms: &[char]| Image {
            key: key
                .replace('I', &d('i').to_string())
                .replace('P', &d('p').to_string())
                .replace('S', &d('s').to_string()),
            rule: rule.into(),
            last_pulled_ms: last,
            digests: {
                let mut v: Vec<_> = ds.iter().map(|(c, s)| (d(*c), *s)).collect();
                v.sort();
                v
            },
            manifests: ms.iter().map(|c| d(*c)).collect(),
        };
        assert_eq!(
            got,
            [
                want(
                    "docker.io/app@I",
                    "docker.io",
                    9,
                    &[('i', 5), ('p', 4), ('1', 100), ('2', 50)],
                    &['i', 'p']
                ),
                want(
                    "docker.io/app@S",
                    "docker.io",
                    4,
                    &[('s', 3), ('1', 100)],
                    &['s']
                ),
                want(
                    "ghcr.io/other/app@P",
                    "ghcr.io",
                    1,
                    &[('p', 4), ('1', 100), ('2', 50)],
                    &['p']
                ),
            ]
        );
    }

    proptest::proptest! {
        /// Whatever the images, windows and watermarks: nothing a kept
        /// image references is swept, and the bytes evictions report freed
        /// are exactly what left the store.
        #[test]
        fn nothing_kept_is_ever_swept(
            specs in proptest::collection::vec(
                (0u64..20, proptest::collection::vec((0u8..12, 1u64..100), 1..6), proptest::bool::ANY),
                0..12,
            ),
            keep_days in proptest::option::of(0u64..20),
            high in proptest::option::of(0u64..600),
            low in 0u64..600,
        ) {
            let images: Vec<Image> = specs
                .iter()
                .enumerate()
                .map(|(i, (last, digests, ghcr))| Image {
                    key: format!("img{i}"),
                    rule: if *ghcr { "ghcr.io".into() } else { "docker.io".into() },
                    last_pulled_ms: last * DAY,
                    // A digest's size is a function of the digest.
                    digests: digests
                        .iter()
                        .map(|(c, _)| (d(char::from(b"0123456789abcdef"[usize::from(*c)])), u64::from(*c) * 7 + 1))
                        .collect(),
                    manifests: Vec::new(),
                })
                .collect();
            let policy = Policy {
                keep_ms: keep_days
                    .map(|k| BTreeMap::from([("ghcr.io".to_owned(), k * DAY)]))
                    .unwrap_or_default(),
                high_watermark: high,
                low_watermark: Some(low),
            };
            let evicted = evict(&images, &policy, 20 * DAY);
            let gone: BTreeSet<&str> = evicted.iter().map(|(k, _, _)| k.as_str()).collect();
            let kept: Vec<Image> = images
                .iter()
                .filter(|i| !gone.contains(i.key.as_str()))
                .cloned()
                .collect();
            let sizes: BTreeMap<Digest, u64> =
                images.iter().flat_map(|i| i.digests.clone()).collect();
            let stored: Vec<StoredBlob> = sizes
                .keys()
                .map(|d| StoredBlob { digest: d.clone(), written_ms: 0 })
                .collect();
            // Two sweeps, the second after the grace window.
            let first = sweep(&stored, &kept, &BTreeSet::new(), &BTreeMap::new(), DAY, 20 * DAY);
            let candidates: BTreeMap<Digest, u64> =
                first.candidates.iter().map(|(d, t)| ((*d).clone(), *t)).collect();
            proptest::prop_assert!(first.delete.is_empty());
            let swept = sweep(&stored, &kept, &BTreeSet::new(), &candidates, DAY, 22 * DAY).delete;
            for image in &kept {
                for (digest, _) in &image.digests {
                    proptest::prop_assert!(!swept.contains(&digest), "{digest} of kept {}", image.key);
                }
            }
            let freed: u64 = evicted.iter().map(|(_, _, f)| f).sum();
            let swept_bytes: u64 = swept.iter().map(|d| sizes[*d]).sum();
            proptest::prop_assert_eq!(freed, swept_bytes);
        }
    }
}
