//! Tag-change prefetch (issue 16): hot tags are revalidated ahead of their
//! clients, and when one moved, its new manifest and the blobs of the
//! platforms pulled before are hydrated before the tag switches — so the
//! first pull after a release is a warm pull.
//!
//! What is hot, when a hot tag is due and which platforms to hydrate are
//! the core's decisions (`wharf_core::prefetch`); this module keeps the pull
//! counts, runs the loop and does the I/O:
//!
//! 1. Every manifest answer counts: by tag into [`HotTags`], by digest into
//!    a byte-bounded set of recently pulled digests (which platforms of an
//!    index were pulled).
//! 2. Every `tick` (a twentieth of the shortest TTL of a rule with
//!    prefetch, within 50 ms..5 s) each hot tag due for revalidation gets
//!    one `HEAD` ([`Manifests::revalidate_hot`]; free on Docker Hub).
//! 3. A tag that moved: if the upstream's budget affords it above the
//!    rule's reserve, the new manifest is fetched by digest (else the tag
//!    stays and pulls are served it stale); if it also affords the
//!    platform manifests, a warm job
//!    ([`crate::warm::Jobs`], visible in `wharf jobs`) hydrates the chosen
//!    platforms' blobs, sharing hydrations with pulls; then the tag
//!    switches ([`Manifests::commit_move`]) and a `TagPrefetched` event and
//!    `wharf_prefetches_total` say how it went.
//!
//! The edge's cache hits reach the origin only as revalidations and pull
//! reports, so a tag hot at the edge counts here at the edge's revalidation
//! rate: set `prefetch_hot_pulls` with that in mind.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use wharf_core::prefetch::{HotTags, Selection, platforms_to_prefetch, refresh_due};
use wharf_core::{Digest, RepositoryName, Tag};

use crate::bounded::ByteLru;
use crate::events::{Event, now_ms};
use crate::manifests::HotRevalidation;
use crate::metrics;
use crate::state::{AppState, Target};

/// Memory the recently pulled digests may take (about 40,000).
const PULLED_BYTES: usize = 4 << 20;
/// Tags refreshed at once; the others wait for a later tick.
const CONCURRENT: usize = 4;

/// `repository:tag` (neither may contain a colon): one allocation per pull.
type TagKey = String;

impl Default for Prefetcher {
    fn default() -> Self {
        Prefetcher {
            hot: Mutex::default(),
            pulled: Mutex::new(ByteLru::new(PULLED_BYTES)),
            busy: Mutex::default(),
            deferred: Mutex::default(),
        }
    }
}

/// Pull counts and the refreshes in progress.
pub struct Prefetcher {
    hot: Mutex<HotTags<TagKey>>,
    pulled: Mutex<ByteLru<()>>,
    busy: Mutex<HashSet<TagKey>>,
    /// Tags not to look at again before a time (unix ms): their move could
    /// not be paid for, or their revalidation failed. One TTL later.
    deferred: Mutex<HashMap<TagKey, u64>>,
}

impl Prefetcher {
    /// A manifest of `target` was answered by tag.
    pub fn tag_pulled(&self, target: &Target, tag: &Tag) {
        if !target.prefetch.enabled() {
            return;
        }
        let key = format!("{}:{tag}", target.canonical);
        self.hot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(&key, target.prefetch, now_ms());
    }

    /// A manifest of `target` was answered by digest.
    pub fn digest_pulled(&self, target: &Target, digest: &Digest) {
        if !target.prefetch.enabled() {
            return;
        }
        let key = format!("{}@{digest}", target.canonical);
        let mut pulled = self.pulled.lock().unwrap_or_else(|e| e.into_inner());
        // Known: marked as used; else kept.
        if pulled.get(&key).is_none() {
            pulled.put(key, (), 32);
        }
    }

    fn was_pulled(&self, repo: &RepositoryName, digest: &Digest) -> bool {
        let mut pulled = self.pulled.lock().unwrap_or_else(|e| e.into_inner());
        pulled.get(&format!("{repo}@{digest}")).is_some()
    }
}

/// How often the loop looks, for the rules' TTLs: a twentieth of the
/// shortest, within 50 ms..5 s (`None`: no rule prefetches).
fn tick(state: &AppState) -> Option<Duration> {
    state
        .rules
        .rules()
        .iter()
        .zip(state.runtimes.iter())
        .filter(|(_, rt)| rt.prefetch.enabled())
        .map(|(spec, _)| spec.freshness.ttl / 20)
        .min()
        .map(|t| t.clamp(Duration::from_millis(50), Duration::from_secs(5)))
}

/// Starts the loop if a rule prefetches.
pub fn start(state: AppState) {
    let Some(tick) = tick(&state) else {
        return;
    };
    tokio::spawn(async move {
        let mut every = tokio::time::interval(tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            look(&state, tick).await;
        }
    });
}

/// One look at the hot tags: starts a refresh of each that is due.
async fn look(state: &AppState, tick: Duration) {
    let hot = state
        .prefetch
        .hot
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .hot(now_ms());
    let now = now_ms();
    state
        .prefetch
        .deferred
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|_, until| *until > now);
    for (key, last_pull) in hot {
        if state
            .prefetch
            .deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&key)
        {
            continue;
        }
        if state
            .prefetch
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            >= CONCURRENT
        {
            return;
        }
        let Some((Ok(name), Ok(tag))) = key
            .rsplit_once(':')
            .map(|(n, t)| (RepositoryName::parse(n), Tag::parse(t)))
        else {
            continue;
        };
        let Ok(target) = state.resolve(&name, None) else {
            continue;
        };
        let request = target.manifest_request();
        let Some(record) = state.manifests.tag_record_of(&request, &tag).await else {
            continue;
        };
        // Twice the tick: the next look may come a tick late.
        if !refresh_due(
            &target.freshness,
            record.fetched_at_ms,
            last_pull,
            now_ms(),
            tick * 2,
        ) {
            continue;
        }
        if !state
            .prefetch
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone())
        {
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            if !refresh(&state, &target, &tag, record).await {
                let until = now_ms().saturating_add(target.freshness.ttl.as_millis() as u64);
                state
                    .prefetch
                    .deferred
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.clone(), until);
            }
            state
                .prefetch
                .busy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        });
    }
}

/// Revalidates one hot tag; prefetches it if it moved. `false`: it is to
/// be left alone for a TTL (the move could not be paid for, or the
/// upstream failed).
async fn refresh(
    state: &AppState,
    target: &Target,
    tag: &Tag,
    record: crate::manifests::TagRecord,
) -> bool {
    let request = target.manifest_request();
    let registry = target.upstream.registry().to_owned();
    let (digest, confirmed_at_ms) = match state
        .manifests
        .revalidate_hot(&request, tag, &record)
        .await
    {
        Ok(HotRevalidation::Moved {
            digest,
            confirmed_at_ms,
        }) => (digest, confirmed_at_ms),
        Ok(HotRevalidation::Unchanged) => {
            metrics::hot_revalidation(&registry, "unchanged");
            return true;
        }
        // The next pull's own revalidation deals with these.
        Ok(HotRevalidation::Gone | HotRevalidation::Unknown) => {
            metrics::hot_revalidation(&registry, "failed");
            return false;
        }
        Err(e) => {
            metrics::hot_revalidation(&registry, "failed");
            tracing::debug!(repo = %target.canonical, %tag, error = %e, "hot tag not revalidated");
            return false;
        }
    };
    metrics::hot_revalidation(&registry, "moved");
    // The new manifest's GET: only above the reserve. Otherwise the tag
    // stays as it is; pulls serve it stale until the budget refills.
    if !target.upstream.budget_affords(1) {
        metrics::prefetch(&registry, "budget", 0);
        return false;
    }
    let manifest = match state.manifests.by_digest(&request, &digest).await {
        Ok((m, _)) => m,
        Err(e) => {
            metrics::prefetch(&registry, "failed", 0);
            tracing::warn!(repo = %target.canonical, %tag, %digest, error = %e, "moved tag's manifest not fetched");
            return false;
        }
    };
    let old = state.manifests.load(&record.digest).await;
    let selection = platforms_to_prefetch(
        old.as_ref().map_or(&[][..], |m| &m.body[..]),
        &manifest.body,
        |d| state.prefetch.was_pulled(&target.canonical, d),
    );
    let (platforms, manifest_gets) = match &selection {
        Selection::Image => (Vec::new(), 0),
        Selection::Platforms(p) => (p.clone(), p.len() as u64),
        Selection::Nothing => (Vec::new(), 0),
    };
    let (result, blobs, bytes) = if selection == Selection::Nothing {
        ("manifest_only", 0, 0)
    } else if !target.upstream.budget_affords(manifest_gets) {
        ("budget", 0, 0)
    } else {
        let job = state.jobs.start(
            state.clone(),
            wharf_core::admin::WarmRequest {
                images: vec![format!("{}@{}", target.canonical, manifest.digest)],
                platforms: platforms.clone(),
            },
        );
        job.ended().await;
        let progress = job.progress();
        let result = match progress.state {
            wharf_core::admin::JobState::Done => "warmed",
            _ => "failed",
        };
        (result, progress.blobs.len(), progress.bytes_done)
    };
    metrics::prefetch(&registry, result, bytes);
    tracing::info!(repo = %target.canonical, %tag, from = %record.digest, to = %manifest.digest, result, blobs, bytes, "moved tag prefetched");
    state
        .manifests
        .commit_move(&request, tag, &record, &manifest, confirmed_at_ms)
        .await;
    state.events.emit(Event::TagPrefetched {
        at_ms: now_ms(),
        rule: registry,
        repository: target.canonical.to_string(),
        tag: tag.to_string(),
        digest: manifest.digest.to_string(),
        platforms,
        blobs: blobs as u64,
        bytes,
        result: result.to_owned(),
    });
    true
}
