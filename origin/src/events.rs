//! What happened: the notable events of this origin (a hydration finished
//! or failed, an image was evicted, a tag moved (and was prefetched), the region's health
//! changed), emitted at one place each. A few of each kind are kept for the
//! status page (`/status`), and every one goes to the webhook outbox when
//! one is configured ([`crate::outbox`]).
//!
//! The status page shows rules and digests, never the `repository` an
//! event carries: it is as public as `/metrics`, which has the same
//! granularity; the webhook receiver is the operators' own.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Events kept per kind.
pub const RECENT: usize = 20;

/// One event.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A blob download ended: committed, or failed (nothing stored).
    Hydration {
        /// Unix ms.
        at_ms: u64,
        /// The rule it came through.
        rule: String,
        /// The repository it was fetched for.
        repository: String,
        /// The blob.
        digest: String,
        /// Bytes fetched.
        size: u64,
        /// How long it took.
        duration_ms: u64,
        /// Stored (true) or failed.
        ok: bool,
    },
    /// An image left the store's kept set.
    Eviction {
        /// Unix ms.
        at_ms: u64,
        /// Its rule.
        rule: String,
        /// Its repository.
        repository: String,
        /// Its top manifest.
        digest: String,
        /// expired, quota, purged.
        reason: String,
        /// Bytes only it held.
        bytes: u64,
    },
    /// A revalidation found that a tag points at another manifest.
    TagMoved {
        /// Unix ms.
        at_ms: u64,
        /// Its rule.
        rule: String,
        /// Its repository.
        repository: String,
        /// The tag.
        tag: String,
        /// The manifest it pointed at.
        from: String,
        /// The manifest it points at now.
        to: String,
    },
    /// A hot tag moved and was prefetched (`crate::prefetch`).
    TagPrefetched {
        /// Unix ms.
        at_ms: u64,
        /// Its rule.
        rule: String,
        /// Its repository.
        repository: String,
        /// The tag.
        tag: String,
        /// The manifest it points at now.
        digest: String,
        /// The platforms hydrated (empty for a single image).
        platforms: Vec<String>,
        /// Blobs hydrated or found stored.
        blobs: u64,
        /// Their bytes.
        bytes: u64,
        /// warmed, manifest_only, failed, budget (`wharf_prefetches_total`).
        result: String,
    },
    /// This region's readiness changed (`ok`, `degraded`, `down`).
    RegionHealth {
        /// Unix ms.
        at_ms: u64,
        /// The region (none for a single-region origin).
        region: Option<String>,
        /// Before.
        from: String,
        /// Now.
        to: String,
    },
}

/// The recent events, and the outbox they go to.
#[derive(Default)]
pub struct Events {
    hydrations: Mutex<VecDeque<Event>>,
    evictions: Mutex<VecDeque<Event>>,
    others: Mutex<VecDeque<Event>>,
    outbox: Option<std::sync::Arc<crate::outbox::Outbox>>,
    /// The region's health as last evaluated.
    health: Mutex<Option<String>>,
}

/// Unix ms now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Events {
    /// Events that also go to `outbox`.
    pub fn with_outbox(outbox: std::sync::Arc<crate::outbox::Outbox>) -> Self {
        Self {
            outbox: Some(outbox),
            ..Self::default()
        }
    }

    /// Records `event` (and queues it for the webhook).
    pub fn emit(&self, event: Event) {
        if let Some(outbox) = &self.outbox {
            outbox.queue(&event);
        }
        let ring = match event {
            Event::Hydration { .. } => &self.hydrations,
            Event::Eviction { .. } => &self.evictions,
            Event::TagMoved { .. } | Event::TagPrefetched { .. } | Event::RegionHealth { .. } => {
                &self.others
            }
        };
        let mut ring = ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == RECENT {
            ring.pop_front();
        }
        ring.push_back(event);
    }

    /// The region's readiness was evaluated as `status`: a change from the
    /// last evaluation is a [`Event::RegionHealth`] (the first one is not).
    pub fn observe_health(&self, region: Option<String>, status: &str) {
        let before = {
            let mut last = self.health.lock().unwrap_or_else(|e| e.into_inner());
            match last.as_deref() {
                Some(b) if b == status => return,
                _ => last.replace(status.to_owned()),
            }
        };
        if let Some(from) = before {
            tracing::warn!(from, to = status, "region health changed");
            self.emit(Event::RegionHealth {
                at_ms: now_ms(),
                region,
                from,
                to: status.to_owned(),
            });
        }
    }

    /// The recent hydrations, newest first.
    pub fn hydrations(&self) -> Vec<Event> {
        Self::newest_first(&self.hydrations)
    }

    /// The recent evictions, newest first.
    pub fn evictions(&self) -> Vec<Event> {
        Self::newest_first(&self.evictions)
    }

    fn newest_first(ring: &Mutex<VecDeque<Event>>) -> Vec<Event> {
        let ring = ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_keeps_its_newest() {
        let events = Events::default();
        for i in 0..(RECENT as u64 + 5) {
            events.emit(Event::Hydration {
                at_ms: i,
                rule: "up".into(),
                repository: "up/app".into(),
                digest: format!("d{i}"),
                size: i,
                duration_ms: 1,
                ok: true,
            });
        }
        events.emit(Event::Eviction {
            at_ms: 1,
            rule: "up".into(),
            repository: "up/app".into(),
            digest: "e".into(),
            reason: "quota".into(),
            bytes: 3,
        });
        events.observe_health(None, "ok");
        events.observe_health(None, "ok");
        events.observe_health(None, "degraded");
        let others = events.others.lock().unwrap().clone();
        assert_eq!(others.len(), 1, "only the change is an event");
        assert!(
            matches!(&others[0], Event::RegionHealth { from, to, .. } if from == "ok" && to == "degraded")
        );
        let h = events.hydrations();
        assert_eq!(h.len(), RECENT);
        assert!(matches!(&h[0], Event::Hydration { at_ms, .. } if *at_ms == RECENT as u64 + 4));
        assert_eq!(events.evictions().len(), 1);
    }
}
