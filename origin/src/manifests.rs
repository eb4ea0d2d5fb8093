//! Manifests: immutable by digest, revalidated by tag.
//!
//! A manifest fetched by digest is verified and kept forever. A tag maps to a
//! [`TagRecord`] (digest, media type, when it was last confirmed upstream),
//! kept in memory and in the store so that a restarted origin still knows
//! its tags. The core's [`FreshnessPolicy`] decides what a request costs:
//!
//! * fresh → served from the store, zero upstream requests;
//! * stale → one upstream `HEAD` (Docker Hub does not count HEADs against its
//!   pull limit); same digest → the record's clock is reset, no `GET`;
//!   another digest → one `GET` of the new manifest (none when this name
//!   already holds it: a prefetch stored it); when that `GET` would spend
//!   an upstream rate-limit budget at the rule's reserve, the old manifest
//!   is served instead, marked stale with `X-Wharf-Stale-Reason:
//!   ratelimit-budget`;
//! * upstream down, rate limited or failing → the last known manifest is
//!   served while inside the stale-if-error window, marked stale in the
//!   `X-Wharf-Cache` header and `wharf_stale_served_total`.
//!
//! A request may carry a shorter freshness than the rule's (the edge's ttl,
//! `X-Wharf-Max-Tag-Age-Ms`): the record is then served only while younger
//! than that too, and every answer by tag says how old the upstream's
//! confirmation is ([`Manifest::confirmed_at_ms`], `X-Wharf-Tag-Age-Ms`), so
//! freshness does not compound across the edge and the origin
//! (`wharf_core::freshness`). What a stale tag's `HEAD` leads to is the
//! core's decision (`wharf_core::revalidate`).
//!
//! Hot tags are also revalidated ahead of their clients
//! ([`Manifests::revalidate_hot`], driven by `crate::prefetch`): a moved
//! one's new manifest is stored at once, the tag switches only after its
//! blobs are prefetched ([`Manifests::commit_move`]).
//!
//! Concurrent requests for the same tag or digest share one upstream request
//! (a detached task behind a shared future), so a herd after a TTL expiry
//! still costs one `HEAD`.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use wharf_core::headers::DOCKER_CONTENT_DIGEST;
use wharf_core::media::{
    Accepted, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, ManifestError, accept_manifest,
    manifest_media_type,
};
use wharf_core::revalidate::{self, HeadResult, Revalidation};
use wharf_core::{Digest, Freshness, FreshnessPolicy, MediaType, RepositoryName, Tag};

use crate::bounded::ByteLru;
use crate::coalesce::SharedFlights;
use crate::error::Error;
use crate::links::{Kind, Links, Through};
use crate::metrics;
use crate::replicate::Replicator;
use crate::store::{self, Store};
/// Reads a bounded upstream body (also used for tag lists and referrers).
pub use crate::upstream::read_limited;
use crate::upstream::{Upstream, UpstreamError};

/// What the cache knows about a tag.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TagRecord {
    /// The manifest the tag pointed to when last confirmed.
    pub digest: Digest,
    /// That manifest's media type.
    pub media_type: String,
    /// Unix milliseconds of the last upstream confirmation.
    pub fetched_at_ms: u64,
}

impl TagRecord {
    /// A tag pointing at `m`, confirmed upstream at `at_ms`.
    fn of(m: &Manifest, at_ms: u64) -> TagRecord {
        TagRecord {
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            fetched_at_ms: at_ms,
        }
    }
}

/// A manifest's exact bytes and identity, and its response headers
/// rendered once: shared by every answer that serves it (a clone is one
/// reference count).
#[derive(Debug)]
pub struct Stored {
    /// Digest of `body`.
    pub digest: Digest,
    /// Media type (the `Content-Type` served).
    pub media_type: String,
    /// `media_type`, parsed (for `Accept`).
    pub media: MediaType,
    /// The bytes, exactly as the upstream sent them.
    pub body: Bytes,
    /// `Content-Type`.
    pub content_type: Option<HeaderValue>,
    /// `Docker-Content-Digest`.
    pub digest_header: Option<HeaderValue>,
    /// `ETag` (the digest, quoted).
    pub etag: Option<HeaderValue>,
}

/// A manifest as one request serves it.
#[derive(Clone, Debug)]
pub struct Manifest {
    stored: Arc<Stored>,
    /// Fetched by tag: when the upstream last confirmed that the tag points
    /// here (unix milliseconds). `None` by digest.
    pub confirmed_at_ms: Option<u64>,
}

impl std::ops::Deref for Manifest {
    type Target = Stored;

    fn deref(&self) -> &Stored {
        &self.stored
    }
}

impl Manifest {
    /// `body`, whose digest is `digest`, served as `media_type`.
    pub fn new(digest: Digest, media_type: String, body: Bytes) -> Manifest {
        let text = digest.to_string();
        Manifest {
            stored: Arc::new(Stored {
                media: MediaType::parse(&media_type),
                content_type: HeaderValue::from_str(&media_type).ok(),
                digest_header: HeaderValue::from_str(&text).ok(),
                etag: HeaderValue::from_str(&format!("\"{text}\"")).ok(),
                digest,
                media_type,
                body,
            }),
            confirmed_at_ms: None,
        }
    }

    fn confirmed_at(self, at_ms: u64) -> Manifest {
        Manifest {
            confirmed_at_ms: Some(at_ms),
            ..self
        }
    }

    /// Milliseconds since the upstream confirmed the tag, for
    /// `X-Wharf-Tag-Age-Ms`; `None` by digest.
    pub fn tag_age_ms(&self) -> Option<u64> {
        self.confirmed_at_ms
            .map(|at| wharf_core::freshness::age_ms(at, now_ms()))
    }
}

/// How a manifest request was answered, for the `X-Wharf-Cache` header and
/// the `result` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// From the cache, no upstream request.
    Hit,
    /// Fetched from the upstream.
    Miss,
    /// From the cache after the upstream confirmed the tag.
    Revalidated,
    /// From the cache because the upstream failed.
    Stale,
    /// From the cache, stale: the tag moved, but fetching the new manifest
    /// would spend an upstream rate-limit budget at its reserve (cold
    /// pulls keep what is left).
    Postponed,
}

impl CacheStatus {
    /// Header and metric spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Stale | CacheStatus::Postponed => "stale",
        }
    }
}

/// What a hot tag's revalidation found ([`Manifests::revalidate_hot`]).
#[derive(Debug)]
pub enum HotRevalidation {
    /// Same digest; the record's clock was reset.
    Unchanged,
    /// Another digest; the tag is not switched yet.
    Moved {
        /// The new top manifest's digest.
        digest: Digest,
        /// When the upstream said so.
        confirmed_at_ms: u64,
    },
    /// The upstream no longer has the tag (the next pull says so).
    Gone,
    /// The answer carried no digest.
    Unknown,
}

/// What a manifest request needs to know about its rule.
#[derive(Clone)]
pub struct ManifestRequest {
    /// The rule's upstream.
    pub upstream: Arc<Upstream>,
    /// Repository name at the upstream.
    pub upstream_repo: RepositoryName,
    /// Repository name in the cache.
    pub canonical: RepositoryName,
    /// The rule's tag freshness.
    pub freshness: FreshnessPolicy,
    /// Queue stored manifests for the peer regions.
    pub replicate: bool,
}

/// Memory the remembered tag records may take: about 100,000 tags.
const TAG_RECORDS_BYTES: usize = 16 << 20;
/// What one remembered record costs beyond its key and media type (the
/// digest, the time, the map's own entry).
const TAG_RECORD_OVERHEAD: usize = 160;

/// What one manifest kept in memory costs beyond its bytes.
const MANIFEST_OVERHEAD: usize = 256;

/// The manifest cache of this process.
pub struct Manifests {
    store: Store,
    links: Arc<Links>,
    replicator: Option<Replicator>,
    /// Tag records read or written lately (the store has them all),
    /// bounded in bytes.
    tags: Mutex<ByteLru<TagRecord>>,
    /// Manifests served lately, by digest, bounded in bytes: a warm
    /// manifest costs no store round trip. Immutable by digest, so never
    /// stale; dropped when the collection deletes one.
    memory: Mutex<ByteLru<Manifest>>,
    flights: SharedFlights<String, (Manifest, CacheStatus), Error>,
    /// Where moved tags are told.
    events: Arc<crate::events::Events>,
}

/// The error of a manifest flight whose task ended without a result.
fn lost_flight() -> Error {
    Error::Lost("manifest")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Manifests {
    /// A manifest cache over `store`.
    pub fn new(store: Store, links: Arc<Links>, replicator: Option<Replicator>) -> Self {
        Self {
            store,
            links,
            replicator,
            tags: Mutex::new(ByteLru::new(TAG_RECORDS_BYTES)),
            memory: Mutex::new(ByteLru::new(0)),
            flights: SharedFlights::new(lost_flight),
            events: Arc::default(),
        }
    }

    /// Keeps up to `bytes` of manifests in memory.
    pub fn with_memory(mut self, bytes: usize) -> Self {
        self.memory = Mutex::new(ByteLru::new(bytes));
        self
    }

    /// Forgets the manifest `digest` kept in memory (the collection
    /// deleted it from the store).
    pub fn forget_manifest(&self, digest: &Digest) {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&digest.to_string());
    }

    fn remember_manifest(&self, m: &Manifest) {
        let weight = m.body.len() + m.media_type.len() + MANIFEST_OVERHEAD;
        self.memory.lock().unwrap_or_else(|e| e.into_inner()).put(
            m.digest.to_string(),
            m.clone(),
            weight,
        );
    }

    /// Tells `events` when a revalidation finds that a tag moved.
    pub fn with_events(mut self, events: Arc<crate::events::Events>) -> Self {
        self.events = events;
        self
    }

    /// Resolves `tag` under the freshness policy, shortened to `max_age`
    /// when the asker (the edge) serves confirmations only that long.
    pub async fn by_tag(
        self: &Arc<Self>,
        req: &ManifestRequest,
        tag: &Tag,
        max_age: Option<std::time::Duration>,
    ) -> Result<(Manifest, CacheStatus), Error> {
        let key = store::tag_key(&req.canonical, tag);
        let record = self.tag_record(&key).await;
        if let Some(r) = &record
            && req
                .freshness
                .at_most(max_age)
                .classify(r.fetched_at_ms, now_ms())
                == Freshness::Fresh
            && let Some(m) = self.load(&r.digest).await
        {
            return Ok((m.confirmed_at(r.fetched_at_ms), CacheStatus::Hit));
        }
        let this = self.clone();
        let (req, tag) = (req.clone(), tag.clone());
        let flight_key = key.clone();
        self.single(flight_key, async move {
            this.refresh_tag(&req, &tag, &key, record).await
        })
        .await
        .map_err(Error::Joined)
    }

    /// Returns the manifest `digest`, from the store or the upstream. A
    /// stored manifest is served for `req.canonical` only when that
    /// repository is linked to it or its upstream confirms it
    /// (`wharf_core::access`).
    pub async fn by_digest(
        self: &Arc<Self>,
        req: &ManifestRequest,
        digest: &Digest,
    ) -> Result<(Manifest, CacheStatus), Error> {
        if let Some(m) = self.load(digest).await {
            if !self.links.has(Kind::Manifest, &req.canonical, digest).await {
                self.links
                    .confirm(
                        Kind::Manifest,
                        Through {
                            upstream: &req.upstream,
                            upstream_repo: &req.upstream_repo,
                            repo: &req.canonical,
                            replicate: req.replicate,
                        },
                        digest,
                        || Error::ManifestUnknown {
                            name: req.canonical.to_string(),
                            reference: digest.to_string(),
                            registry: req.upstream.registry().to_owned(),
                        },
                    )
                    .await?;
            }
            return Ok((m, CacheStatus::Hit));
        }
        let this = self.clone();
        let (req, want) = (req.clone(), digest.clone());
        // Per repository: a fetch through one name confirms nothing for
        // another, so requests through two names do not share one.
        let flight = format!("{}@{digest}", req.canonical);
        self.single(flight, async move {
            this.fetch(&req, &want.to_string(), Some(&want))
                .await
                .map(|m| (m, CacheStatus::Miss))
        })
        .await
        .map_err(Error::Joined)
    }

    /// Runs `work` once per `key` at a time, in a detached task so that it
    /// completes even if every waiting client goes away; however the task
    /// ends (a panic included), its entry goes and the next call runs afresh.
    async fn single(
        self: &Arc<Self>,
        key: String,
        work: impl Future<Output = Result<(Manifest, CacheStatus), Error>> + Send + 'static,
    ) -> Result<(Manifest, CacheStatus), Arc<Error>> {
        let (flight, leader) = self.flights.run(key, work);
        if !leader {
            metrics::coalesced("manifest");
        }
        flight.await
    }

    async fn refresh_tag(
        &self,
        req: &ManifestRequest,
        tag: &Tag,
        key: &str,
        record: Option<TagRecord>,
    ) -> Result<(Manifest, CacheStatus), Error> {
        let registry = req.upstream.registry().to_owned();
        let Some(record) = record else {
            return self
                .fetch_tag(req, tag, key)
                .await
                .map(|m| (m, CacheStatus::Miss));
        };
        let head = head_tag(req, tag).await;
        // `send` answers only 2xx and 404; every other status is its error.
        let (status, digest, failure) = match head {
            Ok(response) => {
                let digest = header_digest(response.headers());
                (response.status().as_u16(), digest, None)
            }
            Err(source) => (0, None, Some(source)),
        };
        let result = match failure {
            Some(_) => HeadResult::Failed,
            None => HeadResult::from_status(status, digest.as_ref()),
        };
        let now = now_ms();
        match revalidate::decide(
            &req.freshness,
            &record.digest,
            record.fetched_at_ms,
            now,
            result,
        ) {
            Revalidation::Confirmed => {
                if let Some(m) = self.load(&record.digest).await {
                    let touched = TagRecord {
                        fetched_at_ms: now,
                        ..record
                    };
                    self.save_tag(key, &touched).await;
                    return Ok((m.confirmed_at(now), CacheStatus::Revalidated));
                }
                self.fetch_tag(req, tag, key)
                    .await
                    .map(|m| (m, CacheStatus::Miss))
            }
            Revalidation::Fetch => {
                // The tag moved to a manifest this name already holds (a
                // prefetch stored it): no `GET`.
                let m = match self.linked(req, digest.as_ref()).await {
                    Some(m) => {
                        self.save_tag(key, &TagRecord::of(&m, now)).await;
                        m.confirmed_at(now)
                    }
                    None => {
                        // Moved, and the `GET` would spend a budget at its
                        // reserve: the old tag waits (inside its stale
                        // window), a cold pull cannot. The `HEAD` was free
                        // (Docker Hub does not count it) and told the
                        // budget; the next pull asks again.
                        if req.upstream.postpone_revalidation()
                            && req.freshness.on_upstream_error(record.fetched_at_ms, now)
                                == wharf_core::OnUpstreamError::ServeStale
                            && let Some(old) = self.load(&record.digest).await
                        {
                            metrics::revalidation_postponed(&registry);
                            return Ok((
                                old.confirmed_at(record.fetched_at_ms),
                                CacheStatus::Postponed,
                            ));
                        }
                        self.fetch_tag(req, tag, key).await?
                    }
                };
                if m.digest != record.digest {
                    self.tell_moved(req, tag, &record.digest, &m.digest, now);
                }
                Ok((m, CacheStatus::Miss))
            }
            Revalidation::Gone => {
                self.forget_tag(key).await;
                Err(Error::ManifestUnknown {
                    name: req.canonical.to_string(),
                    reference: tag.to_string(),
                    registry,
                })
            }
            decision @ (Revalidation::ServeStale | Revalidation::Fail) => {
                let source = failure.unwrap_or_else(|| UpstreamError::Status {
                    status,
                    message: "unexpected answer to a HEAD".into(),
                });
                if decision == Revalidation::ServeStale
                    && let Some(m) = self.load(&record.digest).await
                {
                    metrics::stale_served(&registry);
                    tracing::warn!(repo = %req.canonical, %tag, registry, error = %source, "upstream failed; serving the last known tag");
                    return Ok((m.confirmed_at(record.fetched_at_ms), CacheStatus::Stale));
                }
                Err(Error::Upstream { registry, source })
            }
        }
    }

    /// The stored manifest `digest`, if `req.canonical` is linked to it.
    async fn linked(&self, req: &ManifestRequest, digest: Option<&Digest>) -> Option<Manifest> {
        let digest = digest?;
        if !self.links.has(Kind::Manifest, &req.canonical, digest).await {
            return None;
        }
        self.load(digest).await
    }

    /// What the cache knows of `tag` (memory, else the store).
    pub async fn tag_record_of(&self, req: &ManifestRequest, tag: &Tag) -> Option<TagRecord> {
        self.tag_record(&store::tag_key(&req.canonical, tag)).await
    }

    /// Revalidates a hot tag ahead of its clients (`crate::prefetch`): one
    /// `HEAD`. Unchanged, the record's clock is reset. Moved, the tag is
    /// *not* switched: the caller fetches the new manifest (when the budget
    /// affords it) and its blobs, then [`Manifests::commit_move`] switches
    /// it; until then clients keep the old one, which is still fresh.
    pub async fn revalidate_hot(
        self: &Arc<Self>,
        req: &ManifestRequest,
        tag: &Tag,
        record: &TagRecord,
    ) -> Result<HotRevalidation, Error> {
        let head = head_tag(req, tag).await.map_err(|source| Error::Upstream {
            registry: req.upstream.registry().to_owned(),
            source,
        })?;
        let now = now_ms();
        if head.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(HotRevalidation::Gone);
        }
        let Some(digest) = header_digest(head.headers()) else {
            // Without a digest a HEAD cannot tell; the next pull's
            // revalidation (a GET) will.
            return Ok(HotRevalidation::Unknown);
        };
        if digest == record.digest {
            let touched = TagRecord {
                fetched_at_ms: now,
                ..record.clone()
            };
            self.save_tag(&store::tag_key(&req.canonical, tag), &touched)
                .await;
            return Ok(HotRevalidation::Unchanged);
        }
        Ok(HotRevalidation::Moved {
            digest,
            confirmed_at_ms: now,
        })
    }

    /// Switches `tag` from `from` to `to` (confirmed upstream at
    /// `confirmed_at_ms`) and tells the events.
    pub async fn commit_move(
        &self,
        req: &ManifestRequest,
        tag: &Tag,
        from: &TagRecord,
        to: &Manifest,
        confirmed_at_ms: u64,
    ) {
        let key = store::tag_key(&req.canonical, tag);
        // A client's own revalidation may have switched it already, later.
        if let Some(current) = self.tag_record(&key).await
            && current.digest == to.digest
            && current.fetched_at_ms >= confirmed_at_ms
        {
            return;
        }
        self.save_tag(&key, &TagRecord::of(to, confirmed_at_ms))
            .await;
        self.tell_moved(req, tag, &from.digest, &to.digest, confirmed_at_ms);
    }

    /// A `TagMoved` event for `tag` of `req`'s repository.
    fn tell_moved(&self, req: &ManifestRequest, tag: &Tag, from: &Digest, to: &Digest, at_ms: u64) {
        self.events.emit(crate::events::Event::TagMoved {
            at_ms,
            rule: req.upstream.registry().to_owned(),
            repository: req.canonical.to_string(),
            tag: tag.to_string(),
            from: from.to_string(),
            to: to.to_string(),
        });
    }

    async fn fetch_tag(
        &self,
        req: &ManifestRequest,
        tag: &Tag,
        key: &str,
    ) -> Result<Manifest, Error> {
        let now = now_ms();
        let manifest = self.fetch(req, tag.as_str(), None).await?;
        let record = TagRecord::of(&manifest, now);
        self.save_tag(key, &record).await;
        Ok(manifest.confirmed_at(now))
    }

    /// GETs a manifest from the upstream, verifies it and stores it.
    async fn fetch(
        &self,
        req: &ManifestRequest,
        reference: &str,
        want: Option<&Digest>,
    ) -> Result<Manifest, Error> {
        let registry = req.upstream.registry().to_owned();
        let upstream_error = |source| Error::Upstream {
            registry: registry.clone(),
            source,
        };
        let response = req
            .upstream
            .send(
                Method::GET,
                &req.upstream_repo,
                &format!("manifests/{reference}"),
                accept(),
            )
            .await
            .map_err(upstream_error)?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(Error::ManifestUnknown {
                name: req.canonical.to_string(),
                reference: reference.to_owned(),
                registry,
            });
        }
        let claimed = header_digest(response.headers());
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_limited(response, MAX_MANIFEST_BYTES as usize)
            .await
            .map_err(upstream_error)?;
        // The core decides: size, digest (what was asked for, else what the
        // upstream claimed; a mismatch is never cached), media type.
        let Accepted { digest, media_type } = match accept_manifest(
            &body,
            content_type.as_deref(),
            want,
            claimed.as_ref(),
        ) {
            Ok(accepted) => accepted,
            Err(ManifestError::DigestMismatch { expected, got, .. }) => {
                metrics::integrity_failure(&registry);
                tracing::error!(repo = %req.canonical, reference, %expected, %got, "upstream manifest failed verification");
                return Err(Error::DigestMismatch {
                    registry,
                    want: expected,
                    got: got.to_string(),
                });
            }
            // `read_limited` already refuses these; same error if it did not.
            Err(e @ ManifestError::TooLarge { .. }) => {
                return Err(upstream_error(UpstreamError::Body(e.to_string())));
            }
        };
        let manifest = Manifest::new(digest, media_type.as_str().to_owned(), body);
        self.remember_manifest(&manifest);
        // The upstream served it through this name: the name may read it and
        // what it refers to.
        self.links.record(
            Kind::Manifest,
            &req.canonical,
            &manifest.digest,
            req.replicate,
        );
        self.links
            .record_references(&req.canonical, &manifest.body, req.replicate);
        if let Err(e) = self
            .store
            .put_bytes(
                &store::manifest_key(&manifest.digest),
                manifest.body.clone(),
                &manifest.media_type,
            )
            .await
        {
            tracing::warn!(error = %e, "manifest served but not cached");
        } else if req.replicate
            && let Some(r) = &self.replicator
        {
            r.enqueue(
                store::manifest_key(&manifest.digest),
                manifest.digest.clone(),
            );
        }
        Ok(manifest)
    }

    /// Loads a stored manifest, from memory if it was served lately; store
    /// failures count as absent (and are logged).
    pub async fn load(&self, digest: &Digest) -> Option<Manifest> {
        if let Some(m) = self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest.to_string())
        {
            return Some(m.clone());
        }
        match self.store.get_bytes(&store::manifest_key(digest)).await {
            Ok(Some((meta, body))) => {
                let media_type = manifest_media_type(meta.content_type.as_deref(), &body)
                    .as_str()
                    .to_owned();
                let m = Manifest::new(digest.clone(), media_type, body);
                self.remember_manifest(&m);
                Some(m)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "manifest lookup failed");
                None
            }
        }
    }

    async fn tag_record(&self, key: &str) -> Option<TagRecord> {
        if let Some(r) = self.tags.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Some(r.clone());
        }
        match self.store.get_bytes(key).await {
            Ok(Some((_, body))) => match serde_json::from_slice::<TagRecord>(&body) {
                Ok(record) => {
                    self.remember(key, &record);
                    Some(record)
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "unreadable tag record ignored");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "tag lookup failed");
                None
            }
        }
    }

    fn remember(&self, key: &str, record: &TagRecord) {
        let weight = record.media_type.len() + TAG_RECORD_OVERHEAD;
        let mut tags = self.tags.lock().unwrap_or_else(|e| e.into_inner());
        tags.put(key.to_owned(), record.clone(), weight);
    }

    async fn save_tag(&self, key: &str, record: &TagRecord) {
        self.remember(key, record);
        let body = match serde_json::to_vec(record) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                tracing::warn!(error = %e, "tag record not serialisable");
                return;
            }
        };
        if let Err(e) = self.store.put_bytes(key, body, "application/json").await {
            tracing::warn!(error = %e, "tag record not stored");
        }
    }

    /// Forgets the tag record under `key` in this process's memory (the
    /// retention pass or a purge deleted it from the store).
    pub fn forget_remembered(&self, key: &str) {
        self.tags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    async fn forget_tag(&self, key: &str) {
        self.forget_remembered(key);
        if let Err(e) = self.store.delete(key).await {
            tracing::warn!(error = %e, "tag record not deleted");
        }
    }
}

/// One `HEAD` of `tag` at the rule's upstream.
async fn head_tag(req: &ManifestRequest, tag: &Tag) -> Result<reqwest::Response, UpstreamError> {
    req.upstream
        .send(
            Method::HEAD,
            &req.upstream_repo,
            &format!("manifests/{tag}"),
            accept(),
        )
        .await
}

/// The `Docker-Content-Digest` an answer claims, if it parses.
fn header_digest(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get(DOCKER_CONTENT_DIGEST)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Digest::parse(v).ok())
}

fn accept() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
    headers
}
