//! [`AppState`]: everything a request handler needs, as one cheap clone of
//! `Arc`s built once at start. No globals.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use wharf_core::{CacheRules, FreshnessPolicy, RepositoryName};

use crate::auth::Auth;
use crate::config::Config;
use crate::error::Error;
use crate::geo::Geo;
use crate::hydrate::{BlobRequest, Blobs};
use crate::limits::Limits;
use crate::links::Links;
use crate::manifests::{ManifestRequest, Manifests};
use crate::replicate::Replicator;
use crate::retention::Retention;
use crate::store::Store;
use crate::tags::TagLists;
use crate::upstream::Upstream;

/// One cache rule at run time (its privacy and freshness are on the core's
/// rule: `Resolved`).
pub struct RuleRuntime {
    /// The upstream client.
    pub upstream: Arc<Upstream>,
    /// Copy what the rule hydrates to the peer regions at once.
    pub replicate: bool,
    /// When the rule's hot tags are prefetched.
    pub prefetch: wharf_core::prefetch::PrefetchPolicy,
}

/// Shared state of the origin: one `Arc`, so that the clone every layer
/// and handler takes is one reference count, not one per service (measured:
/// cloning and dropping two dozen `Arc`s three times per request took 7 %
/// of a warm manifest's CPU).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Services {
    /// Downstream name → upstream mapping.
    pub rules: Arc<CacheRules>,
    /// Per-rule runtime, indexed like `rules`.
    pub runtimes: Arc<Vec<RuleRuntime>>,
    /// The object store.
    pub store: Store,
    /// Blob hydrations.
    pub blobs: Arc<Blobs>,
    /// Which repositories may read which digests.
    pub links: Arc<Links>,
    /// Manifest cache.
    pub manifests: Arc<Manifests>,
    /// `tags/list` cache.
    pub tag_lists: Arc<TagLists>,
    /// Renders `/metrics` (absent in router tests without a recorder).
    pub metrics: Option<PrometheusHandle>,
    /// Token checking (absent: the origin is open).
    pub auth: Option<Arc<Auth>>,
    /// Region, replicas and peer stores (absent: a single-region origin).
    pub geo: Option<Arc<Geo>>,
    /// Eager replication to the peer regions (when a rule asks for it).
    pub replicator: Option<Replicator>,
    /// Client for requests to the other replicas of this region.
    pub replicas: reqwest::Client,
    /// Per-kind limits on the registry API.
    pub limits: Arc<Limits>,
    /// Prewarming jobs.
    pub jobs: Arc<crate::warm::Jobs>,
    /// Hot tags and the prefetch of those that move.
    pub prefetch: Arc<crate::prefetch::Prefetcher>,
    /// Recent hydrations and evictions (the status page).
    pub events: Arc<crate::events::Events>,
    /// Last-pull records and the collection.
    pub retention: Arc<Retention>,
    /// The admin API's bearer token (absent: no admin API).
    pub admin_token: Option<Arc<str>>,
}

/// A request's repository resolved against the cache rules.
#[derive(Clone)]
pub struct Target {
    /// The rule's upstream.
    pub upstream: Arc<Upstream>,
    /// Repository at the upstream.
    pub upstream_repo: RepositoryName,
    /// Repository in the cache.
    pub canonical: RepositoryName,
    /// Tag freshness of the rule.
    pub freshness: FreshnessPolicy,
    /// The rule's prefix.
    pub prefix: String,
    /// Whether the rule is private.
    pub private: bool,
    /// Whether the rule replicates eagerly.
    pub replicate: bool,
    /// When the rule's hot tags are prefetched.
    pub prefetch: wharf_core::prefetch::PrefetchPolicy,
}

impl Target {
    /// The manifest-service view of this target.
    pub fn manifest_request(&self) -> ManifestRequest {
        ManifestRequest {
            upstream: self.upstream.clone(),
            upstream_repo: self.upstream_repo.clone(),
            canonical: self.canonical.clone(),
            freshness: self.freshness,
            replicate: self.replicate,
        }
    }

    /// Sends `method` to `/v2/<upstream repo>/<tail>` at the rule's upstream;
    /// failures become [`Error::Upstream`] naming the registry.
    pub async fn send(
        &self,
        method: reqwest::Method,
        tail: &str,
        headers: reqwest::header::HeaderMap,
    ) -> Result<reqwest::Response, Error> {
        self.upstream
            .send(method, &self.upstream_repo, tail, headers)
            .await
            .map_err(|source| Error::Upstream {
                registry: self.upstream.registry().to_owned(),
                source,
            })
    }

    /// The blob-service view of this target (`linked`: the canonical name
    /// is known to refer to `digest`).
    pub fn blob_request(&self, digest: wharf_core::Digest, linked: bool) -> BlobRequest {
        BlobRequest {
            upstream: self.upstream.clone(),
            upstream_repo: self.upstream_repo.clone(),
            canonical: self.canonical.clone(),
            digest,
            replicate: self.replicate,
            linked,
        }
    }
}

impl AppState {
    /// Builds the state for `config` over `store`.
    pub fn new(
        config: &Config,
        store: Store,
        metrics: Option<PrometheusHandle>,
    ) -> anyhow::Result<Self> {
        let rules = config.cache_rules();
        let mut runtimes = Vec::new();
        for rule in &config.rules {
            let upstream = Upstream::new(
                &rule.prefix,
                &rule.upstream,
                rule.credentials.clone(),
                config.upstream_timeouts,
                &rule.redirect_hosts,
            )
            .map_err(|e| anyhow::anyhow!("rule {}: {e}", rule.prefix))?
            .with_breaker(config.upstream_breaker)
            .with_budget_reserve(rule.ratelimit_reserve)
            .with_caps(
                crate::upstream::Caps::default()
                    .with_connections(rule.max_connections)
                    .with_bandwidth(rule.max_bandwidth),
            );
            runtimes.push(RuleRuntime {
                upstream: Arc::new(upstream),
                replicate: rule.replicate,
                prefetch: rule.prefetch,
            });
        }
        let geo = config.geo.as_ref().map(|g| Arc::new(Geo::new(g)));
        let replicator = match &geo {
            Some(geo) if !geo.peers.is_empty() && config.rules.iter().any(|r| r.replicate) => {
                Some(Replicator::start(store.clone(), geo.peers.clone()))
            }
            _ => None,
        };
        let links = Arc::new(Links::new(store.clone(), replicator.clone()));
        let blobs = Blobs::new(
            store.clone(),
            config.spool_dir.clone(),
            links.clone(),
            geo.clone(),
            replicator.clone(),
        )
        .map_err(|e| anyhow::anyhow!("spool directory {}: {e}", config.spool_dir.display()))?
        .with_limits(
            config.limits.hydration.clone(),
            match &config.storage {
                crate::config::Storage::Embedded(s) => Some(crate::store::embedded::root(s)),
                crate::config::Storage::S3(_) => None,
            },
        );
        let replicas = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(std::time::Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow::anyhow!("building the replica client: {e}"))?;
        let rules = Arc::new(rules);
        let events = Arc::new(match &config.events {
            Some(settings) => {
                let source = match &config.geo {
                    Some(g) => format!(
                        "wharf://{}/{}",
                        g.region,
                        g.advertise.as_deref().unwrap_or("origin")
                    ),
                    None => format!("wharf://{}", config.listen),
                };
                let outbox = crate::outbox::Outbox::start(crate::outbox::OutboxSettings {
                    source,
                    ..settings.clone()
                })
                .map_err(|e| anyhow::anyhow!("events outbox {}: {e}", settings.dir.display()))?;
                crate::events::Events::with_outbox(outbox)
            }
            None => crate::events::Events::default(),
        });
        let blobs = Arc::new(blobs.with_events(events.clone()));
        let manifests = Arc::new(
            Manifests::new(store.clone(), links.clone(), replicator.clone())
                .with_events(events.clone())
                .with_memory(config.limits.manifest_cache_bytes),
        );
        let retention = Arc::new(Retention::new(
            crate::retention::Services {
                store: store.clone(),
                rules: rules.clone(),
                links: links.clone(),
                manifests: manifests.clone(),
                blobs: blobs.clone(),
                replicator: replicator.clone(),
                events: events.clone(),
            },
            config.retention.clone(),
        ));
        Ok(Self(Arc::new(Services {
            rules,
            runtimes: Arc::new(runtimes),
            manifests,
            blobs,
            links,
            tag_lists: Arc::new(TagLists::new(config.tags_list_ttl)),
            store,
            metrics,
            auth: config
                .auth
                .as_ref()
                .map(|a| Arc::new(Auth::new(a.key.clone(), a.service.clone(), a.realm.clone()))),
            geo,
            replicator,
            replicas,
            limits: Arc::new(Limits::new(&config.limits)),
            retention,
            jobs: Arc::default(),
            prefetch: Arc::default(),
            events,
            admin_token: config.admin_token.as_deref().map(Arc::from),
        })))
    }

    /// Maps a requested repository (and containerd's `ns`) to its upstream.
    pub fn resolve(&self, name: &RepositoryName, ns: Option<&str>) -> Result<Target, Error> {
        self.resolve_for(name, ns, None)
    }

    /// [`AppState::resolve`], and the rule's verdict on `request` (its tag
    /// patterns: the core's `Resolved::admit`).
    pub fn resolve_for(
        &self,
        name: &RepositoryName,
        ns: Option<&str>,
        request: Option<&wharf_core::ApiRequest>,
    ) -> Result<Target, Error> {
        let resolved = self.rules.resolve(name, ns)?;
        if let Some(request) = request {
            resolved.admit(request)?;
        }
        let runtime = &self.runtimes[resolved.rule];
        Ok(Target {
            upstream: runtime.upstream.clone(),
            upstream_repo: resolved.upstream_repo,
            canonical: resolved.canonical,
            freshness: resolved.freshness,
            prefix: resolved.prefix,
            private: resolved.private,
            replicate: runtime.replicate,
            prefetch: runtime.prefetch,
        })
    }
}
