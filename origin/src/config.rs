//! The origin's one typed configuration, from a TOML file, the environment
//! and flags (in increasing precedence), validated before anything starts.
//!
//! Every validation error names the setting and what would be accepted, so an
//! operator can fix the file without reading the source. A secret that is
//! still a placeholder shipped in `infra/` or `.dev.vars.example`
//! ([`wharf_core::placeholder`]) is such an error: the process exits with
//! status 2 rather than run with a key anyone can read.
//!
//! `Config::from_parts` merges the sources and hands each section to its own
//! builder, in this order (which is the order of the errors a configuration
//! with several gets): `part_size`, `own_region`, `storage`
//! (`embedded_storage` / `external_storage`), `rules` (`file_rule` per
//! `[[rule]]`), `limits`, `retention`, `admin_token`, `auth`, `geo` (`peers`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use wharf_core::region::{self, RegionSpec};
use wharf_core::token::SigningKey;
use wharf_core::{CacheRules, FreshnessPolicy, RuleSpec};

use crate::limits::{HydrationLimits, LimitSettings};
use crate::outbox::OutboxSettings;
use crate::retention::RetentionSettings;
use crate::store::S3Settings;
use crate::store::embedded::EmbeddedSettings;
use crate::upstream::{Credentials, Timeouts};
use wharf_core::breaker::BreakerPolicy;
use wharf_embedded_s3::KeyPair;

/// Command-line flags. Each also reads an environment variable.
#[derive(Parser, Debug, Default)]
#[command(
    name = "wharf-origin",
    version,
    about = "Wharf's regional origin: a pull-through registry cache"
)]
pub struct Cli {
    /// TOML configuration file (flags and environment override it).
    #[arg(long, env = "WHARF_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve the registry API, metrics and health on.
    #[arg(long, env = "WHARF_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Keep objects in an S3 server embedded in this process, under DIR.
    #[arg(long, env = "WHARF_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Use an external S3-compatible store at URL instead of --data.
    #[arg(long, env = "WHARF_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Bucket in the object store.
    #[arg(long, env = "WHARF_BUCKET")]
    pub bucket: Option<String>,
    /// Signing region of the external store.
    #[arg(long, env = "AWS_REGION")]
    pub s3_region: Option<String>,
    /// Pull repositories under PREFIX/ through from the registry at URL
    /// (repeatable), e.g. `docker.io=https://registry-1.docker.io`.
    #[arg(long = "rule", value_name = "PREFIX=URL")]
    pub rules: Vec<String>,
    /// How long a tag is served without asking the upstream (e.g. 5m, 30s).
    #[arg(long, env = "WHARF_TAG_TTL", value_parser = humantime::parse_duration)]
    pub tag_ttl: Option<Duration>,
    /// How long past its TTL a tag may be served when the upstream fails.
    #[arg(long, env = "WHARF_STALE_IF_ERROR", value_parser = humantime::parse_duration)]
    pub stale_if_error: Option<Duration>,
    /// How long an upstream that failed repeatedly is skipped (circuit
    /// breaker cool-down; default 30s).
    #[arg(long, env = "WHARF_UPSTREAM_BREAKER_COOL_DOWN", value_parser = humantime::parse_duration)]
    pub upstream_breaker_cool_down: Option<Duration>,
    /// Directory for in-flight downloads (default: DATA/spool or the temp dir).
    #[arg(long, env = "WHARF_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// This origin's region, a name in the region list (`[[regions]]`).
    #[arg(long, env = "WHARF_REGION")]
    pub region: Option<String>,
    /// This replica's URL exactly as listed in its region's `origins`
    /// (replicas route blob misses to one owner by rendezvous hashing).
    #[arg(long, env = "WHARF_ADVERTISE", value_name = "URL")]
    pub advertise: Option<String>,
    /// A command other than serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Commands beside serving (the default).
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Read a password from standard input (one line) and print its stored
    /// form for the edge's WHARF_USERS (`pbkdf2-sha256$<iterations>$<salt>$<hash>`).
    HashPassword {
        /// PBKDF2 iterations (10000 to 100000, the Workers runtime's limit).
        #[arg(long, default_value_t = wharf_core::password::DEFAULT_ITERATIONS)]
        iterations: u32,
    },
}

/// The configuration file's shape. Every field is optional: flags may supply it.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<SocketAddr>,
    data: Option<PathBuf>,
    spool_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    tag_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    stale_if_error: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    tags_list_ttl: Option<Duration>,
    part_size_mib: Option<u64>,
    s3: Option<FileS3>,
    embedded: Option<FileEmbedded>,
    upstream: Option<FileTimeouts>,
    limits: Option<FileLimits>,
    retention: Option<FileRetention>,
    admin: Option<FileAdmin>,
    events: Option<FileEvents>,
    auth: Option<FileAuth>,
    #[serde(default)]
    rule: Vec<FileRule>,
    region: Option<String>,
    advertise: Option<String>,
    /// This region's replicas as they reach each other (e.g. StatefulSet pod
    /// names), when not the region entry's public `origins`.
    #[serde(default)]
    replicas: Vec<String>,
    /// The shared region list (`infra/regions.toml` has the same shape).
    #[serde(default)]
    regions: Vec<RegionSpec>,
    /// A file holding `[[regions]]`, relative to the config file.
    regions_file: Option<PathBuf>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RegionsFile {
    #[serde(default)]
    regions: Vec<RegionSpec>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    token_key: Option<String>,
    service: Option<String>,
    realm: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileS3 {
    endpoint: Option<String>,
    bucket: Option<String>,
    region: Option<String>,
    access_key: Option<String>,
    secret_key: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileEmbedded {
    listen: Option<SocketAddr>,
    bucket: Option<String>,
    access_key: Option<String>,
    secret_key: Option<String>,
    /// The key pair the edge presigns with: GET/HEAD objects only.
    read_only_access_key: Option<String>,
    read_only_secret_key: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileTimeouts {
    #[serde(default, with = "humantime_serde")]
    connect: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    response: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    idle_read: Option<Duration>,
    /// Consecutive failures that open an upstream's circuit.
    breaker_failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    breaker_cool_down: Option<Duration>,
}

impl FileTimeouts {
    /// The circuit breaker of `[upstream]`, validated.
    fn breaker(&self, cool_down: Option<Duration>) -> anyhow::Result<BreakerPolicy> {
        let d = BreakerPolicy::default();
        let threshold = self.breaker_failures.unwrap_or(d.threshold);
        anyhow::ensure!(
            threshold >= 1,
            "upstream.breaker_failures = 0 would skip every upstream at once; set at least 1 (default {})",
            d.threshold
        );
        let cool_down_ms = match cool_down.or(self.breaker_cool_down) {
            Some(c) if c.is_zero() => anyhow::bail!(
                "upstream.breaker_cool_down = 0 would never skip a failing upstream; set e.g. \"30s\""
            ),
            Some(c) => u64::try_from(c.as_millis()).unwrap_or(u64::MAX),
            None => d.cool_down_ms,
        };
        Ok(BreakerPolicy {
            threshold,
            cool_down_ms,
        })
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    api_concurrency: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    api_timeout: Option<Duration>,
    blob_concurrency: Option<usize>,
    hydrations: Option<usize>,
    hydrations_per_upstream: Option<usize>,
    spool_mib: Option<u64>,
    min_free_mib: Option<u64>,
    manifest_cache_mib: Option<usize>,
}

impl FileLimits {
    /// `[limits]`, validated; unset values keep their defaults.
    fn build(self) -> anyhow::Result<LimitSettings> {
        let d = LimitSettings::default();
        let positive = |name: &str, v: Option<usize>, default: usize| match v {
            Some(0) => anyhow::bail!(
                "limits.{name} = 0 would allow none at all; set at least 1 (default {default})"
            ),
            v => Ok(v.unwrap_or(default)),
        };
        let api_timeout = self.api_timeout.unwrap_or(d.api_timeout);
        anyhow::ensure!(
            !api_timeout.is_zero(),
            "limits.api_timeout = 0 would time out every manifest request; set e.g. \"60s\""
        );
        let h = d.hydration;
        let hydration = HydrationLimits {
            max: positive("hydrations", self.hydrations, h.max)?,
            per_upstream: positive(
                "hydrations_per_upstream",
                self.hydrations_per_upstream,
                h.per_upstream,
            )?,
            spool_bytes: self
                .spool_mib
                .map_or(h.spool_bytes, |m| m.saturating_mul(1 << 20)),
            min_free_bytes: self
                .min_free_mib
                .map_or(h.min_free_bytes, |m| m.saturating_mul(1 << 20)),
        };
        Ok(LimitSettings {
            api_concurrency: positive("api_concurrency", self.api_concurrency, d.api_concurrency)?,
            api_timeout,
            blob_concurrency: positive(
                "blob_concurrency",
                self.blob_concurrency,
                d.blob_concurrency,
            )?,
            hydration,
            manifest_cache_bytes: self
                .manifest_cache_mib
                .map_or(d.manifest_cache_bytes, |m| m.saturating_mul(1 << 20)),
        })
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileRetention {
    quota_high_mib: Option<u64>,
    quota_low_mib: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    record_interval: Option<Duration>,
}

impl FileRetention {
    /// `[retention]` and the rules' `keep`, validated.
    fn build(self, rules: &[Rule]) -> anyhow::Result<RetentionSettings> {
        let d = RetentionSettings::default();
        let mib = |v: Option<u64>| v.map(|m| m.saturating_mul(1 << 20));
        let (high, low) = (mib(self.quota_high_mib), mib(self.quota_low_mib));
        match (high, low) {
            (None, Some(_)) => anyhow::bail!(
                "retention.quota_low_mib is set without retention.quota_high_mib: set the high watermark (eviction starts above it)"
            ),
            (Some(h), Some(l)) if l > h => anyhow::bail!(
                "retention.quota_low_mib ({}) is above retention.quota_high_mib ({}): eviction runs from the high watermark down to the low one",
                l >> 20,
                h >> 20
            ),
            (Some(0), _) => anyhow::bail!(
                "retention.quota_high_mib = 0 would evict everything; set the store's size in MiB"
            ),
            _ => {}
        }
        let positive = |name: &str, v: Option<Duration>, default: Duration| match v {
            Some(v) if v.is_zero() => {
                anyhow::bail!("retention.{name} = 0 is not allowed; e.g. {default:?}")
            }
            v => Ok(v.unwrap_or(default)),
        };
        let keep = rules
            .iter()
            .filter_map(|r| r.keep.map(|k| (r.prefix.clone(), k)))
            .collect();
        Ok(RetentionSettings {
            keep,
            quota_high: high,
            // Without a low watermark, evict just below the high one.
            quota_low: low.or(high),
            grace: positive("grace", self.grace, d.grace)?,
            interval: match self.interval {
                Some(i) if i.is_zero() => None,
                Some(i) => Some(i),
                // A keep window or a quota is enforced hourly unless told.
                None if high.is_some() || rules.iter().any(|r| r.keep.is_some()) => {
                    Some(Duration::from_secs(3600))
                }
                None => None,
            },
            record_interval: positive("record_interval", self.record_interval, d.record_interval)?,
        })
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileEvents {
    webhook: Option<String>,
    secret: Option<String>,
    outbox_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    retry_min: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    retry_max: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_age: Option<Duration>,
}

impl FileEvents {
    /// `[events]`, validated; `None` without a webhook. `default_dir`:
    /// where the outbox goes unless told.
    fn build(self, env: &Env<'_>, default_dir: &Path) -> anyhow::Result<Option<OutboxSettings>> {
        let Some(webhook) = env("WHARF_EVENTS_WEBHOOK").or(self.webhook) else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(&webhook)
            .map_err(|e| anyhow::anyhow!("events.webhook {webhook:?}: {e}"))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https"),
            "events.webhook {webhook:?}: expected an http:// or https:// URL"
        );
        let secret = env("WHARF_EVENTS_SECRET").or(self.secret).ok_or_else(|| {
            anyhow::anyhow!(
                "events.webhook is set but no signing secret: set WHARF_EVENTS_SECRET (or events.secret) to at least 16 random characters"
            )
        })?;
        reject_placeholder("WHARF_EVENTS_SECRET (or events.secret)", &secret)?;
        anyhow::ensure!(
            secret.len() >= 16,
            "WHARF_EVENTS_SECRET (or events.secret) is {} characters; use at least 16 random ones",
            secret.len()
        );
        let retry_min = self.retry_min.unwrap_or(Duration::from_secs(1));
        let retry_max = self.retry_max.unwrap_or(Duration::from_secs(300));
        anyhow::ensure!(
            !retry_min.is_zero() && retry_min <= retry_max,
            "events.retry_min ({retry_min:?}) must be above 0 and at most events.retry_max ({retry_max:?})"
        );
        Ok(Some(OutboxSettings {
            webhook,
            secret,
            dir: self.outbox_dir.unwrap_or_else(|| default_dir.to_owned()),
            retry_min,
            retry_max,
            max_age: self.max_age.unwrap_or(Duration::from_secs(7 * 86_400)),
            source: String::new(),
        }))
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    token: Option<String>,
}

/// The admin API's bearer token (`WHARF_ADMIN_TOKEN`, `[admin] token`);
/// `None` leaves the admin API off.
fn admin_token(file: FileAdmin, env: &Env<'_>) -> anyhow::Result<Option<String>> {
    let Some(token) = env("WHARF_ADMIN_TOKEN").or(file.token) else {
        return Ok(None);
    };
    reject_placeholder("WHARF_ADMIN_TOKEN (or admin.token)", &token)?;
    anyhow::ensure!(
        token.len() >= 16,
        "WHARF_ADMIN_TOKEN (or admin.token) is {} characters; use at least 16 random ones (e.g. `openssl rand -hex 32`)",
        token.len()
    );
    Ok(Some(token))
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileRule {
    prefix: String,
    upstream: String,
    username: Option<String>,
    password: Option<String>,
    password_env: Option<String>,
    #[serde(default, with = "humantime_serde")]
    tag_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    stale_if_error: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    keep: Option<Duration>,
    #[serde(default)]
    private: bool,
    #[serde(default)]
    replicate: bool,
    #[serde(default)]
    redirect_hosts: Vec<String>,
    ratelimit_reserve: Option<u64>,
    #[serde(default)]
    upstream_prefix: String,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    allow_tags: Vec<String>,
    #[serde(default)]
    deny_tags: Vec<String>,
    prefetch_hot_pulls: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    prefetch_window: Option<Duration>,
    max_connections: Option<usize>,
    max_bandwidth_mib: Option<u64>,
}

/// Where objects are kept.
#[derive(Clone, Debug)]
pub enum Storage {
    /// The S3 server embedded in this process.
    Embedded(EmbeddedSettings),
    /// An external S3-compatible store.
    S3(S3Settings),
}

/// One cache rule, resolved.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Downstream repository prefix, e.g. `docker.io`.
    pub prefix: String,
    /// Upstream registry base URL.
    pub upstream: String,
    /// Credential set for the upstream.
    pub credentials: Option<Credentials>,
    /// Tag freshness for this rule.
    pub freshness: FreshnessPolicy,
    /// Whether pulls need a token bound to this rule (signed-in users).
    pub private: bool,
    /// Copy what this rule hydrates to every peer region at once.
    pub replicate: bool,
    /// Hosts the upstream may redirect to even on loopback or private
    /// addresses (`cdn.example.net`, `*.cdn.example.net`, an address).
    pub redirect_hosts: Vec<String>,
    /// Images not pulled for this long are evicted (`None`: kept until the
    /// quota needs the room).
    pub keep: Option<Duration>,
    /// At or below this advertised rate-limit budget, stale tags are served
    /// without revalidating (inside their stale window).
    pub ratelimit_reserve: u64,
    /// The upstream repository prefix names map under (`""`: the root).
    pub upstream_prefix: String,
    /// Which repositories and tags may be pulled through.
    pub filter: wharf_core::rules::Filter,
    /// When a hot tag that moved is prefetched (`prefetch_hot_pulls`,
    /// `prefetch_window`).
    pub prefetch: wharf_core::prefetch::PrefetchPolicy,
    /// At most this many requests open to the upstream at once.
    pub max_connections: Option<usize>,
    /// At most this many body bytes per second from the upstream.
    pub max_bandwidth: Option<u64>,
}

impl Rule {
    /// The core's form of this rule: what the edge knows of it too.
    pub fn spec(&self) -> RuleSpec {
        RuleSpec {
            prefix: self.prefix.clone(),
            upstream: self.upstream.clone(),
            private: self.private,
            freshness: self.freshness,
            upstream_prefix: self.upstream_prefix.clone(),
            filter: self.filter.clone(),
        }
    }
}

/// One other region whose store this origin reads (and replicates to).
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// The region's name.
    pub name: String,
    /// Its bucket.
    pub s3: S3Settings,
}

/// This origin's place in the deployment.
#[derive(Clone, Debug)]
pub struct GeoConfig {
    /// This origin's region.
    pub region: String,
    /// This replica's URL as listed in the region's `origins`.
    pub advertise: Option<String>,
    /// Every replica of this region (including this one).
    pub replicas: Vec<String>,
    /// Signs and checks requests forwarded between replicas (the token key;
    /// required with more than one replica).
    pub peer_key: Option<SigningKey>,
    /// Other regions with a store, nearest first.
    pub peers: Vec<PeerConfig>,
}

/// How requests are authenticated when the origin sits behind the edge.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// The key the edge signs tokens and tickets with.
    pub key: SigningKey,
    /// The global hostname (tokens' audience).
    pub service: String,
    /// The edge's token endpoint, for challenges.
    pub realm: String,
}

/// The validated configuration of one origin process.
#[derive(Clone, Debug)]
pub struct Config {
    /// Registry API / metrics / health address.
    pub listen: SocketAddr,
    /// Object store.
    pub storage: Storage,
    /// Directory for in-flight blob downloads.
    pub spool_dir: PathBuf,
    /// Cache rules, in configuration order.
    pub rules: Vec<Rule>,
    /// Timeouts toward upstreams.
    pub upstream_timeouts: Timeouts,
    /// How long shutdown waits for in-flight hydrations before aborting them.
    pub shutdown_grace: Duration,
    /// How long a `tags/list` answer is reused.
    pub tags_list_ttl: Duration,
    /// Per-kind limits on the registry API (`[limits]`).
    pub limits: LimitSettings,
    /// When an upstream's circuit opens, and for how long.
    pub upstream_breaker: BreakerPolicy,
    /// Keep windows, quota and the collection (`[retention]`, `keep`).
    pub retention: RetentionSettings,
    /// The admin API's bearer token; `None`: no admin API.
    pub admin_token: Option<String>,
    /// The webhook and its outbox (`[events]`); `None`: no webhook.
    pub events: Option<OutboxSettings>,
    /// Token checking; `None` leaves the origin open.
    pub auth: Option<AuthConfig>,
    /// Regions, replicas and peers; `None` for a single-region origin.
    pub geo: Option<GeoConfig>,
}

const DEFAULT_BUCKET: &str = "wharf";
/// Revalidations wait when an upstream advertises this few requests left.
const DEFAULT_RATELIMIT_RESERVE: u64 = 10;
const DEFAULT_PART_SIZE_MIB: u64 = 16;

impl Config {
    /// Reads the file named by `--config` (if any), applies the environment
    /// and flags, and validates the result.
    pub fn load(cli: Cli) -> anyhow::Result<Config> {
        let mut file = match &cli.config {
            Some(path) => read_file(path)?,
            None => File::default(),
        };
        include_regions_file(&mut file, cli.config.as_deref())?;
        Self::from_parts(cli, file, |name| std::env::var(name).ok())
    }

    fn from_parts(
        cli: Cli,
        file: File,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Config> {
        let env: &Env<'_> = &env;
        let defaults = FreshnessPolicy::default();
        let freshness = FreshnessPolicy {
            ttl: cli.tag_ttl.or(file.tag_ttl).unwrap_or(defaults.ttl),
            stale_if_error: cli
                .stale_if_error
                .or(file.stale_if_error)
                .unwrap_or(defaults.stale_if_error),
        };
        let listen = cli.listen.or(file.listen).ok_or_else(|| {
            anyhow::anyhow!(
                "no listen address: pass --listen 127.0.0.1:5000 or set `listen` in the config file"
            )
        })?;
        let part_size = part_size(file.part_size_mib)?;
        let data = cli.data.or(file.data);
        let advertise = cli.advertise.or(file.advertise);
        let own_region = own_region(cli.region.or(file.region), &file.regions)?;
        let storage = storage(
            StoreFlags {
                data: data.as_deref(),
                s3_endpoint: cli.s3_endpoint,
                bucket: cli.bucket,
                s3_region: cli.s3_region,
            },
            file.s3.unwrap_or_default(),
            file.embedded.unwrap_or_default(),
            own_region.as_ref(),
            part_size,
            env,
        )?;
        let spool_dir = cli
            .spool_dir
            .or(file.spool_dir)
            .or_else(|| data.as_ref().map(|d| d.join("spool")))
            .unwrap_or_else(|| std::env::temp_dir().join("wharf-spool"));
        let rules = rules(file.rule, &cli.rules, freshness, env)?;
        let auth = auth(file.auth.unwrap_or_default(), &rules, env)?;
        let geo = geo(
            own_region,
            advertise,
            &file.replicas,
            &file.regions,
            part_size,
            auth.as_ref(),
            env,
        )?;
        let timeouts = file.upstream.unwrap_or_default();
        let upstream_breaker = timeouts.breaker(cli.upstream_breaker_cool_down)?;
        let limits = file.limits.unwrap_or_default().build()?;
        let retention = file.retention.unwrap_or_default().build(&rules)?;
        let admin_token = admin_token(file.admin.unwrap_or_default(), env)?;
        let outbox_default = data
            .as_ref()
            .map(|d| d.join("outbox"))
            .unwrap_or_else(|| spool_dir.with_file_name("wharf-outbox"));
        let events = file
            .events
            .unwrap_or_default()
            .build(env, &outbox_default)?;
        Ok(Config {
            listen,
            storage,
            spool_dir,
            rules,
            upstream_timeouts: Timeouts {
                connect: timeouts.connect.unwrap_or(Duration::from_secs(10)),
                response: timeouts.response.unwrap_or(Duration::from_secs(30)),
                idle_read: timeouts.idle_read.unwrap_or(Duration::from_secs(60)),
            },
            shutdown_grace: file.shutdown_grace.unwrap_or(Duration::from_secs(30)),
            tags_list_ttl: file.tags_list_ttl.unwrap_or(Duration::from_secs(30)),
            limits,
            upstream_breaker,
            retention,
            admin_token,
            events,
            auth,
            geo,
        })
    }

    /// The cache rules in the core's form, with their options.
    pub fn cache_rules(&self) -> CacheRules {
        CacheRules::new(self.rules.iter().map(Rule::spec).collect())
            .expect("rules were validated in Config::load")
    }
}

/// The environment lookup the builders read secrets and credentials from.
type Env<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// `part_size_mib`, checked, in bytes.
fn part_size(part_size_mib: Option<u64>) -> anyhow::Result<u64> {
    let part_size_mib = part_size_mib.unwrap_or(DEFAULT_PART_SIZE_MIB);
    if !(5..=1024).contains(&part_size_mib) {
        anyhow::bail!("part_size_mib = {part_size_mib}: S3 multipart parts must be 5 to 1024 MiB");
    }
    Ok(part_size_mib << 20)
}

/// This origin's entry in the region list (`region` + `[[regions]]`).
fn own_region(name: Option<String>, regions: &[RegionSpec]) -> anyhow::Result<Option<RegionSpec>> {
    match &name {
        None if !regions.is_empty() => anyhow::bail!(
            "[[regions]] is set but `region` is not: set region (or --region / WHARF_REGION) to this origin's region, one of {}",
            names(regions)
        ),
        None => Ok(None),
        Some(name) => {
            region::validate(regions).map_err(|e| anyhow::anyhow!("{e}"))?;
            regions
                .iter()
                .find(|r| &r.name == name)
                .cloned()
                .map(Some)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "region {name:?} is not in the region list ([[regions]]: {})",
                        names(regions)
                    )
                })
        }
    }
}

/// The flags (and their environment variables) that choose the store.
struct StoreFlags<'a> {
    data: Option<&'a Path>,
    s3_endpoint: Option<String>,
    bucket: Option<String>,
    s3_region: Option<String>,
}

/// The object store: embedded (`--data`) or external (`--s3-endpoint`, or
/// the own region's bucket when neither is given).
fn storage(
    flags: StoreFlags<'_>,
    mut file_s3: FileS3,
    embedded: FileEmbedded,
    own_region: Option<&RegionSpec>,
    part_size: u64,
    env: &Env<'_>,
) -> anyhow::Result<Storage> {
    // Without an explicit store, the region entry names its bucket.
    if flags.data.is_none()
        && flags.s3_endpoint.is_none()
        && file_s3.endpoint.is_none()
        && let Some(own) = own_region
        && let (Some(endpoint), Some(bucket)) = (&own.s3_endpoint, &own.bucket)
    {
        file_s3.endpoint = Some(endpoint.clone());
        file_s3.bucket = file_s3.bucket.or(Some(bucket.clone()));
        file_s3.region = file_s3.region.or(own.s3_region.clone());
    }
    match (flags.data, flags.s3_endpoint.or(file_s3.endpoint.take())) {
        (Some(_), Some(endpoint)) => anyhow::bail!(
            "both --data and --s3-endpoint ({endpoint}) are set: choose the embedded store (--data DIR) or an external one (--s3-endpoint URL --bucket NAME)"
        ),
        (None, None) => anyhow::bail!(
            "no object store: pass --data DIR for the embedded store, or --s3-endpoint URL --bucket NAME for an external one"
        ),
        (Some(dir), None) => embedded_storage(dir, flags.bucket, embedded, part_size),
        (None, Some(endpoint)) => external_storage(
            endpoint,
            flags.bucket,
            flags.s3_region,
            file_s3,
            part_size,
            env,
        ),
    }
}

/// The `[embedded]` store under `dir`.
fn embedded_storage(
    dir: &Path,
    bucket: Option<String>,
    embedded: FileEmbedded,
    part_size: u64,
) -> anyhow::Result<Storage> {
    let read_only = match (embedded.read_only_access_key, embedded.read_only_secret_key) {
        (Some(access_key), Some(secret_key)) => Some(KeyPair {
            access_key,
            secret_key,
        }),
        (None, None) => None,
        _ => anyhow::bail!(
            "embedded.read_only_access_key and embedded.read_only_secret_key go together: set both (the edge presigns with them) or neither"
        ),
    };
    if let (Some(ro), Some(rw)) = (&read_only, &embedded.access_key)
        && ro.access_key == *rw
    {
        anyhow::bail!(
            "embedded.read_only_access_key equals embedded.access_key: the read-only key must be a key of its own"
        );
    }
    let mut secrets = vec![
        ("embedded.access_key", embedded.access_key.as_deref()),
        ("embedded.secret_key", embedded.secret_key.as_deref()),
    ];
    if let Some(k) = &read_only {
        secrets.push(("embedded.read_only_access_key", Some(&k.access_key)));
        secrets.push(("embedded.read_only_secret_key", Some(&k.secret_key)));
    }
    for (setting, value) in secrets {
        if let Some(v) = value {
            reject_placeholder(setting, v)?;
        }
    }
    Ok(Storage::Embedded(EmbeddedSettings {
        read_only,
        data: dir.to_path_buf(),
        listen: embedded
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        access_key: embedded.access_key,
        secret_key: embedded.secret_key,
        bucket: bucket
            .or(embedded.bucket)
            .unwrap_or_else(|| DEFAULT_BUCKET.to_owned()),
        part_size,
    }))
}

/// An external S3-compatible store at `endpoint`.
fn external_storage(
    endpoint: String,
    bucket: Option<String>,
    s3_region: Option<String>,
    file_s3: FileS3,
    part_size: u64,
    env: &Env<'_>,
) -> anyhow::Result<Storage> {
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        anyhow::bail!("--s3-endpoint {endpoint:?} must be an http:// or https:// URL");
    }
    let bucket = bucket.or(file_s3.bucket).ok_or_else(|| {
        anyhow::anyhow!("--s3-endpoint is set but no bucket: pass --bucket NAME or set s3.bucket")
    })?;
    if bucket.len() < 3 || bucket.len() > 63 {
        anyhow::bail!("bucket {bucket:?} must be 3 to 63 characters long");
    }
    let access_key = env("AWS_ACCESS_KEY_ID")
        .or(file_s3.access_key)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "external store needs credentials: set AWS_ACCESS_KEY_ID (or s3.access_key)"
            )
        })?;
    let secret_key = env("AWS_SECRET_ACCESS_KEY")
        .or(file_s3.secret_key)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "external store needs credentials: set AWS_SECRET_ACCESS_KEY (or s3.secret_key)"
            )
        })?;
    reject_placeholder("AWS_ACCESS_KEY_ID (or s3.access_key)", &access_key)?;
    reject_placeholder("AWS_SECRET_ACCESS_KEY (or s3.secret_key)", &secret_key)?;
    Ok(Storage::S3(S3Settings {
        endpoint,
        bucket,
        region: s3_region
            .or(file_s3.region)
            .unwrap_or_else(|| "us-east-1".to_owned()),
        access_key,
        secret_key,
        part_size,
    }))
}

/// The cache rules: the file's `[[rule]]` tables, then the `--rule` flags
/// (a flag overrides the file's rule with the same prefix, keeping that
/// rule's credentials), validated by the core.
fn rules(
    file_rules: Vec<FileRule>,
    flags: &[String],
    freshness: FreshnessPolicy,
    env: &Env<'_>,
) -> anyhow::Result<Vec<Rule>> {
    let mut rules = Vec::new();
    for (i, r) in file_rules.into_iter().enumerate() {
        rules.push(file_rule(i + 1, r, freshness, env)?);
    }
    for flag in flags {
        let (prefix, upstream) = flag.split_once('=').ok_or_else(|| {
            anyhow::anyhow!(
                "--rule {flag:?}: expected PREFIX=URL, e.g. docker.io=https://registry-1.docker.io"
            )
        })?;
        let rule = Rule {
            prefix: prefix.trim_matches('/').to_owned(),
            upstream: upstream.to_owned(),
            credentials: None,
            freshness,
            private: false,
            replicate: false,
            redirect_hosts: Vec::new(),
            keep: None,
            ratelimit_reserve: DEFAULT_RATELIMIT_RESERVE,
            upstream_prefix: String::new(),
            filter: wharf_core::rules::Filter::EMPTY,
            prefetch: wharf_core::prefetch::PrefetchPolicy::default(),
            max_connections: None,
            max_bandwidth: None,
        };
        match rules.iter_mut().find(|r| r.prefix == rule.prefix) {
            Some(existing) => {
                existing.upstream = rule.upstream;
            }
            None => rules.push(rule),
        }
    }
    if rules.is_empty() {
        anyhow::bail!(
            "no cache rules: pass --rule PREFIX=URL (e.g. --rule docker.io=https://registry-1.docker.io) or add [[rule]] tables to the config file"
        );
    }
    // The core validates prefixes and URLs with precise messages.
    CacheRules::new(rules.iter().map(Rule::spec).collect())
        .map_err(|e| anyhow::anyhow!("invalid cache rule: {e}"))?;
    Ok(rules)
}

/// The `n`th `[[rule]]` table (counted from 1, as messages name it).
fn file_rule(n: usize, r: FileRule, defaults: FreshnessPolicy, env: &Env) -> anyhow::Result<Rule> {
    let password = match (r.password, r.password_env) {
        (Some(_), Some(var)) => anyhow::bail!(
            "rule {n} ({}): set either password or password_env ({var}), not both",
            r.prefix
        ),
        (Some(p), None) => Some(p),
        (None, Some(var)) => Some(env(&var).ok_or_else(|| {
            anyhow::anyhow!(
                "rule {n} ({}): password_env names {var}, which is not set",
                r.prefix
            )
        })?),
        (None, None) => None,
    };
    if let Some(p) = &password {
        reject_placeholder(&format!("rule {n} ({}): password", r.prefix), p)?;
    }
    let credentials = match (r.username, password) {
        (Some(username), Some(password)) => Some(Credentials { username, password }),
        (None, None) => None,
        _ => anyhow::bail!(
            "rule {n} ({}): a credential set needs both username and password (or password_env)",
            r.prefix
        ),
    };
    for host in &r.redirect_hosts {
        wharf_core::egress::HostPattern::parse(host)
            .map_err(|e| anyhow::anyhow!("rule {n} ({}): redirect_hosts: {e}", r.prefix))?;
    }
    if r.keep.is_some_and(|k| k.is_zero()) {
        anyhow::bail!(
            "rule {n} ({}): keep = 0 would evict every image at once; e.g. keep = \"30d\"",
            r.prefix
        );
    }
    let keep = r.keep;
    let defaults_prefetch = wharf_core::prefetch::PrefetchPolicy::default();
    let prefetch = wharf_core::prefetch::PrefetchPolicy {
        hot_pulls: r.prefetch_hot_pulls.unwrap_or(defaults_prefetch.hot_pulls),
        window: r.prefetch_window.unwrap_or(defaults_prefetch.window),
    };
    prefetch
        .validate()
        .map_err(|e| anyhow::anyhow!("rule {n} ({}): {e}", r.prefix))?;
    if r.max_connections == Some(0) {
        anyhow::bail!(
            "rule {n} ({}): max_connections = 0 would never reach the upstream; omit it for no cap, e.g. max_connections = 8",
            r.prefix
        );
    }
    let max_bandwidth = match r.max_bandwidth_mib {
        Some(0) => anyhow::bail!(
            "rule {n} ({}): max_bandwidth_mib = 0 would never read a byte; omit it for no cap, e.g. max_bandwidth_mib = 50",
            r.prefix
        ),
        Some(mib) => Some(mib.checked_mul(1 << 20).ok_or_else(|| {
            anyhow::anyhow!(
                "rule {n} ({}): max_bandwidth_mib = {mib} is too large",
                r.prefix
            )
        })?),
        None => None,
    };
    Ok(Rule {
        prefix: r.prefix,
        upstream: r.upstream,
        credentials,
        freshness: FreshnessPolicy {
            ttl: r.tag_ttl.unwrap_or(defaults.ttl),
            stale_if_error: r.stale_if_error.unwrap_or(defaults.stale_if_error),
        },
        private: r.private,
        replicate: r.replicate,
        redirect_hosts: r.redirect_hosts,
        keep,
        ratelimit_reserve: r.ratelimit_reserve.unwrap_or(DEFAULT_RATELIMIT_RESERVE),
        upstream_prefix: r.upstream_prefix,
        filter: wharf_core::rules::Filter {
            allow: r.allow,
            deny: r.deny,
            allow_tags: r.allow_tags,
            deny_tags: r.deny_tags,
        },
        prefetch,
        max_connections: r.max_connections,
        max_bandwidth,
    })
}

/// Token checking (`[auth]`, `WHARF_TOKEN_KEY`); required by private rules.
fn auth(file_auth: FileAuth, rules: &[Rule], env: &Env) -> anyhow::Result<Option<AuthConfig>> {
    let Some(key) = env("WHARF_TOKEN_KEY").or(file_auth.token_key) else {
        if rules.iter().any(|r| r.private) {
            anyhow::bail!(
                "a rule is marked private but no token key is set: set WHARF_TOKEN_KEY (or auth.token_key) to the edge's key"
            );
        }
        return Ok(None);
    };
    reject_placeholder("WHARF_TOKEN_KEY (or auth.token_key)", &key)?;
    let key =
        SigningKey::new(key.into_bytes()).map_err(|e| anyhow::anyhow!("auth.token_key: {e}"))?;
    let service = file_auth.service.ok_or_else(|| {
        anyhow::anyhow!("a token key is set but auth.service is not: set it to the global hostname tokens are issued for")
    })?;
    let realm = file_auth
        .realm
        .unwrap_or_else(|| format!("https://{service}/token"));
    Ok(Some(AuthConfig {
        key,
        service,
        realm,
    }))
}

/// This origin's place in the deployment: region, replicas, peer stores.
fn geo(
    own_region: Option<RegionSpec>,
    advertise: Option<String>,
    file_replicas: &[String],
    regions: &[RegionSpec],
    part_size: u64,
    auth: Option<&AuthConfig>,
    env: &Env<'_>,
) -> anyhow::Result<Option<GeoConfig>> {
    let Some(own) = own_region else {
        if advertise.is_some() || !file_replicas.is_empty() {
            anyhow::bail!(
                "advertise or replicas is set but no region: set region and [[regions]] (replicas belong to a region)"
            );
        }
        return Ok(None);
    };
    let replicas: Vec<String> = if file_replicas.is_empty() {
        own.origins()
    } else {
        file_replicas
            .iter()
            .map(|r| r.trim_end_matches('/').to_owned())
            .collect()
    };
    if let Some(a) = &advertise {
        let a = a.trim_end_matches('/');
        if !replicas.iter().any(|r| r == a) {
            anyhow::bail!(
                "advertise {a:?} is not one of region {:?}'s replicas ({}): set it to this replica's URL exactly as listed in `replicas` (or the region's `origins`)",
                own.name,
                replicas.join(", ")
            );
        }
    } else if replicas.len() > 1 {
        anyhow::bail!(
            "region {:?} has {} origins but advertise is not set: set advertise (or --advertise / WHARF_ADVERTISE) to this replica's URL as listed",
            own.name,
            replicas.len()
        );
    }
    let peers = peers(regions, &own.name, part_size, env)?;
    // A forwarded request is served where it lands: only a peer may say so,
    // with a signature (wharf_core::peer).
    let peer_key = auth.map(|a| a.key.clone());
    if replicas.len() > 1 && peer_key.is_none() {
        anyhow::bail!(
            "region {:?} has {} replicas but no token key: replicas sign the requests they forward to each other with it; set WHARF_TOKEN_KEY (or auth.token_key and auth.service)",
            own.name,
            replicas.len()
        );
    }
    Ok(Some(GeoConfig {
        region: own.name.clone(),
        advertise: advertise.map(|a| a.trim_end_matches('/').to_owned()),
        replicas,
        peer_key,
        peers,
    }))
}

/// The other regions with a store, nearest first, with their credentials
/// (`WHARF_S3_*_KEY_<REGION>`, else `AWS_*`).
fn peers(
    regions: &[RegionSpec],
    own: &str,
    part_size: u64,
    env: &Env<'_>,
) -> anyhow::Result<Vec<PeerConfig>> {
    let mut peers = Vec::new();
    for i in region::peers(regions, own) {
        let r = &regions[i];
        let (Some(endpoint), Some(bucket)) = (&r.s3_endpoint, &r.bucket) else {
            continue;
        };
        let upper = r.name.to_ascii_uppercase().replace('-', "_");
        let key = |specific: &str, general: &str| {
            env(&format!("{specific}_{upper}")).or_else(|| env(general))
        };
        let access_key = key("WHARF_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID").ok_or_else(|| {
            anyhow::anyhow!("peer region {:?}: no credentials; set WHARF_S3_ACCESS_KEY_{upper} (or AWS_ACCESS_KEY_ID)", r.name)
        })?;
        let secret_key = key("WHARF_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY").ok_or_else(|| {
            anyhow::anyhow!("peer region {:?}: no credentials; set WHARF_S3_SECRET_KEY_{upper} (or AWS_SECRET_ACCESS_KEY)", r.name)
        })?;
        reject_placeholder(
            &format!("WHARF_S3_ACCESS_KEY_{upper} (or AWS_ACCESS_KEY_ID)"),
            &access_key,
        )?;
        reject_placeholder(
            &format!("WHARF_S3_SECRET_KEY_{upper} (or AWS_SECRET_ACCESS_KEY)"),
            &secret_key,
        )?;
        peers.push(PeerConfig {
            name: r.name.clone(),
            s3: S3Settings {
                endpoint: endpoint.clone(),
                bucket: bucket.clone(),
                region: r
                    .s3_region
                    .clone()
                    .unwrap_or_else(|| "us-east-1".to_owned()),
                access_key,
                secret_key,
                part_size,
            },
        });
    }
    Ok(peers)
}

/// Refuses a secret that is a placeholder shipped in `infra/` or
/// `.dev.vars.example`; names the setting.
fn reject_placeholder(setting: &str, value: &str) -> anyhow::Result<()> {
    if wharf_core::placeholder::is_placeholder(value) {
        anyhow::bail!(
            "{setting} is {value:?}, a placeholder shipped in infra/ or .dev.vars.example: set a secret of your own (e.g. `openssl rand -hex 32`)"
        );
    }
    Ok(())
}

/// Appends the regions of `regions_file` (relative to the config file).
fn include_regions_file(file: &mut File, config_path: Option<&Path>) -> anyhow::Result<()> {
    let Some(rel) = file.regions_file.take() else {
        return Ok(());
    };
    let base = config_path.and_then(Path::parent).unwrap_or(Path::new("."));
    let path = base.join(rel);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read regions_file {}: {e}", path.display()))?;
    let extra: RegionsFile = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("regions_file {}: {e}", path.display()))?;
    file.regions.extend(extra.regions);
    Ok(())
}

fn names(regions: &[RegionSpec]) -> String {
    let names: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
    if names.is_empty() {
        "none listed".to_owned()
    } else {
        names.join(", ")
    }
}

fn read_file(path: &Path) -> anyhow::Result<File> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["wharf-origin"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    }

    fn load(args: &[&str], file: &str) -> anyhow::Result<Config> {
        let file: File = toml::from_str(file)?;
        Config::from_parts(cli(args), file, |name| {
            (name == "PW").then(|| "from-env".to_owned())
        })
    }

    #[test]
    fn flags_alone_make_a_config() {
        let c = load(
            &[
                "--listen",
                "127.0.0.1:5000",
                "--data",
                "/tmp/w",
                "--rule",
                "docker.io=http://127.0.0.1:5001",
            ],
            "",
        )
        .unwrap();
        assert_eq!(c.rules.len(), 1);
        assert_eq!(c.rules[0].freshness.ttl, Duration::from_secs(300));
        assert!(matches!(c.storage, Storage::Embedded(_)));
        assert_eq!(c.spool_dir, PathBuf::from("/tmp/w/spool"));
    }

    #[test]
    fn file_rules_take_credentials_from_the_environment() {
        let c = load(
            &["--listen", "127.0.0.1:5000", "--data", "/tmp/w", "--tag-ttl", "2s"],
            "[[rule]]\nprefix = \"private\"\nupstream = \"http://127.0.0.1:1\"\nusername = \"u\"\npassword_env = \"PW\"\n",
        )
        .unwrap();
        let creds = c.rules[0].credentials.as_ref().unwrap();
        assert_eq!(creds.password, "from-env");
        assert_eq!(c.rules[0].freshness.ttl, Duration::from_secs(2));
    }

    #[test]
    fn rules_take_a_redirect_allow_list() {
        let c = load(
            &["--listen", "127.0.0.1:5000", "--data", "/tmp/w"],
            "[[rule]]\nprefix = \"corp\"\nupstream = \"https://registry.corp\"\nredirect_hosts = [\"cdn.corp\", \"*.cloudfront.net\"]\n",
        )
        .unwrap();
        assert_eq!(c.rules[0].redirect_hosts, ["cdn.corp", "*.cloudfront.net"]);
    }

    #[test]
    fn limits_default_and_are_validated() {
        let args = [
            "--listen",
            "127.0.0.1:5000",
            "--data",
            "/tmp/w",
            "--rule",
            "docker.io=http://127.0.0.1:5001",
        ];
        let c = load(&args, "").unwrap();
        assert_eq!(c.limits, LimitSettings::default());
        let c = load(
            &args,
            "[limits]\napi_concurrency = 10\napi_timeout = \"5s\"\nblob_concurrency = 20\n",
        )
        .unwrap();
        assert_eq!(
            c.limits,
            LimitSettings {
                api_concurrency: 10,
                api_timeout: Duration::from_secs(5),
                blob_concurrency: 20,
                ..LimitSettings::default()
            }
        );
        let c = load(
            &args,
            "[limits]\nhydrations = 8\nhydrations_per_upstream = 2\nspool_mib = 100\nmin_free_mib = 50\n",
        )
        .unwrap();
        assert_eq!(
            c.limits.hydration,
            HydrationLimits {
                max: 8,
                per_upstream: 2,
                spool_bytes: 100 << 20,
                min_free_bytes: 50 << 20,
            }
        );
        for (file, says) in [
            (
                "[limits]\nblob_concurrency = 0\n",
                "limits.blob_concurrency = 0",
            ),
            (
                "[limits]\napi_concurrency = 0\n",
                "limits.api_concurrency = 0",
            ),
            ("[limits]\napi_timeout = \"0s\"\n", "limits.api_timeout = 0"),
            ("[limits]\nhydrations = 0\n", "limits.hydrations = 0"),
        ] {
            let err = format!("{:#}", load(&args, file).unwrap_err());
            assert!(err.contains(says), "{file}: {err}");
        }
    }

    #[test]
    fn retention_defaults_off_and_is_validated() {
        let args = [
            "--listen",
            "127.0.0.1:5000",
            "--data",
            "/tmp/w",
            "--rule",
            "docker.io=http://127.0.0.1:5001",
        ];
        let c = load(&args, "").unwrap();
        assert_eq!(c.retention, RetentionSettings::default());
        assert_eq!(c.retention.interval, None, "no policy, no scheduled pass");
        assert_eq!(c.admin_token, None);
        let c = load(
            &args,
            "[retention]\nquota_high_mib = 100\ngrace = \"3h\"\n\n[admin]\ntoken = \"0123456789abcdef0123\"\n\n[[rule]]\nprefix = \"docker.io\"\nupstream = \"http://127.0.0.1:5001\"\nkeep = \"30d\"\n",
        )
        .unwrap();
        assert_eq!(
            c.retention,
            RetentionSettings {
                keep: [("docker.io".to_owned(), Duration::from_secs(30 * 86_400))].into(),
                quota_high: Some(100 << 20),
                quota_low: Some(100 << 20),
                grace: Duration::from_secs(3 * 3600),
                // A policy is enforced hourly unless told otherwise.
                interval: Some(Duration::from_secs(3600)),
                record_interval: Duration::from_secs(60),
            }
        );
        assert_eq!(c.admin_token.as_deref(), Some("0123456789abcdef0123"));
        for (file, says) in [
            (
                "[retention]\nquota_low_mib = 5\n",
                "without retention.quota_high_mib",
            ),
            (
                "[retention]\nquota_high_mib = 5\nquota_low_mib = 6\n",
                "is above retention.quota_high_mib",
            ),
            ("[retention]\nquota_high_mib = 0\n", "quota_high_mib = 0"),
            ("[retention]\ngrace = \"0s\"\n", "retention.grace = 0"),
            ("[admin]\ntoken = \"short\"\n", "at least 16"),
            (
                "[[rule]]\nprefix = \"docker.io\"\nupstream = \"http://127.0.0.1:5001\"\nkeep = \"0s\"\n",
                "keep = 0",
            ),
        ] {
            let err = format!("{:#}", load(&args, file).unwrap_err());
            assert!(err.contains(says), "{file}: {err}");
        }
    }

    #[test]
    fn a_rules_caps_and_prefetch_are_read_and_validated() {
        let args = ["--listen", "127.0.0.1:5000", "--data", "/tmp/w"];
        let rule = "[[rule]]\nprefix = \"docker.io\"\nupstream = \"http://127.0.0.1:5001\"\n";
        let c = load(&args, rule).unwrap();
        assert_eq!(
            c.rules[0].prefetch,
            wharf_core::prefetch::PrefetchPolicy::default()
        );
        assert_eq!(
            (c.rules[0].max_connections, c.rules[0].max_bandwidth),
            (None, None)
        );
        let file = format!(
            "{rule}max_connections = 8\nmax_bandwidth_mib = 50\nprefetch_hot_pulls = 0\nprefetch_window = \"10m\"\n"
        );
        let c = load(&args, &file).unwrap();
        assert_eq!(c.rules[0].max_connections, Some(8));
        assert_eq!(c.rules[0].max_bandwidth, Some(50 << 20));
        assert!(!c.rules[0].prefetch.enabled(), "0 turns it off");
        for (extra, says) in [
            ("max_connections = 0\n", "max_connections = 0"),
            ("max_bandwidth_mib = 0\n", "max_bandwidth_mib = 0"),
            (
                "prefetch_hot_pulls = 100000\n",
                "prefetch_hot_pulls = 100000",
            ),
            ("prefetch_window = \"0s\"\n", "prefetch_window is 0"),
        ] {
            let err = format!("{:#}", load(&args, &format!("{rule}{extra}")).unwrap_err());
            assert!(
                err.contains(says) && err.contains("rule 1"),
                "{extra}: {err}"
            );
        }
    }

    #[test]
    fn the_upstream_breaker_defaults_and_is_validated() {
        let args = [
            "--listen",
            "127.0.0.1:5000",
            "--data",
            "/tmp/w",
            "--rule",
            "docker.io=http://127.0.0.1:5001",
        ];
        assert_eq!(
            load(&args, "").unwrap().upstream_breaker,
            BreakerPolicy::default()
        );
        let file = "[upstream]\nbreaker_failures = 3\nbreaker_cool_down = \"10s\"\n";
        let policy = load(&args, file).unwrap().upstream_breaker;
        assert_eq!((policy.threshold, policy.cool_down_ms), (3, 10_000));
        // The flag (or WHARF_UPSTREAM_BREAKER_COOL_DOWN) overrides the file.
        let mut with_flag = args.to_vec();
        with_flag.extend(["--upstream-breaker-cool-down", "2s"]);
        let policy = load(&with_flag, file).unwrap().upstream_breaker;
        assert_eq!(policy.cool_down_ms, 2_000);
        for (file, says) in [
            (
                "[upstream]\nbreaker_failures = 0\n",
                "upstream.breaker_failures = 0",
            ),
            (
                "[upstream]\nbreaker_cool_down = \"0s\"\n",
                "upstream.breaker_cool_down = 0",
            ),
        ] {
            let err = format!("{:#}", load(&args, file).unwrap_err());
            assert!(err.contains(says), "{file}: {err}");
        }
    }

    #[test]
    fn invalid_configs_say_what_to_fix() {
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &["--data", "/d", "--rule", "docker.io=http://x"],
                "",
                "no listen address",
            ),
            (
                &["--listen", "127.0.0.1:1", "--rule", "docker.io=http://x"],
                "",
                "no object store",
            ),
            (
                &["--listen", "127.0.0.1:1", "--data", "/d"],
                "",
                "no cache rules",
            ),
            (
                &[
                    "--listen",
                    "127.0.0.1:1",
                    "--data",
                    "/d",
                    "--rule",
                    "docker.io",
                ],
                "",
                "expected PREFIX=URL",
            ),
            (
                &[
                    "--listen",
                    "127.0.0.1:1",
                    "--data",
                    "/d",
                    "--s3-endpoint",
                    "http://s3",
                    "--rule",
                    "a=http://x",
                ],
                "",
                "both --data and --s3-endpoint",
            ),
            (
                &[
                    "--listen",
                    "127.0.0.1:1",
                    "--data",
                    "/d",
                    "--rule",
                    "a=ftp://x",
                ],
                "",
                "invalid cache rule",
            ),
            (
                &["--listen", "127.0.0.1:1", "--data", "/d"],
                "[[rule]]\nprefix = \"p\"\nupstream = \"http://x\"\nusername = \"u\"\n",
                "needs both username and password",
            ),
            (
                &["--listen", "127.0.0.1:1", "--data", "/d"],
                "[[rule]]\nprefix = \"p\"\nupstream = \"http://x\"\nusername = \"u\"\npassword_env = \"NOPE\"\n",
                "NOPE, which is not set",
            ),
            (
                &["--listen", "127.0.0.1:1", "--data", "/d"],
                "[[rule]]\nprefix = \"p\"\nupstream = \"https://x\"\nredirect_hosts = [\"https://cdn/\"]\n",
                "redirect_hosts: `https://cdn/` is not a host name",
            ),
        ];
        for (args, file, want) in cases {
            let err = load(args, file).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{args:?}: {err:?} should contain {want:?}"
            );
        }
    }

    #[test]
    fn the_infra_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/origin.example.toml");
        let mut file: File = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        include_regions_file(&mut file, Some(&path)).unwrap();
        let env = |name: &str| match name {
            "AWS_ACCESS_KEY_ID"
            | "AWS_SECRET_ACCESS_KEY"
            | "DOCKERHUB_TOKEN"
            | "CORP_REGISTRY_TOKEN" => Some("x".to_owned()),
            "WHARF_TOKEN_KEY" => Some("k".repeat(32)),
            _ => None,
        };
        let c = Config::from_parts(cli(&[]), file, env).unwrap();
        assert_eq!(c.rules.len(), 4);
        assert!(c.rules[3].private);
        assert!(matches!(c.storage, Storage::S3(_)));
        assert_eq!(c.auth.unwrap().realm, "https://wharf.example.com/token");
        let geo = c.geo.unwrap();
        assert_eq!(geo.region, "eu");
        assert_eq!(geo.replicas.len(), 2);
        let peers: Vec<_> = geo.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(peers, ["us", "ap"]);
    }

    /// `infra/regions.toml` is the one region list: the edge's production
    /// `WHARF_REGIONS` in `wrangler.toml` must say the same.
    #[test]
    fn the_edge_and_the_origins_share_one_region_list() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let infra: RegionsFile =
            toml::from_str(&std::fs::read_to_string(root.join("infra/regions.toml")).unwrap())
                .unwrap();
        let wrangler: toml::Value =
            toml::from_str(&std::fs::read_to_string(root.join("wrangler.toml")).unwrap()).unwrap();
        let edge: Vec<RegionSpec> = wrangler["env"]["production"]["vars"]["WHARF_REGIONS"]
            .clone()
            .try_into()
            .unwrap();
        let norm = |r: &RegionSpec| {
            (
                r.name.clone(),
                r.origins(),
                r.s3_endpoint.clone(),
                r.public_endpoint().map(str::to_owned),
                r.bucket.clone(),
                r.s3_region.clone(),
                r.continents.clone(),
                r.countries.clone(),
                r.lat.map(f64::to_bits),
                r.lon.map(f64::to_bits),
            )
        };
        let a: Vec<_> = infra.regions.iter().map(norm).collect();
        let b: Vec<_> = edge.iter().map(norm).collect();
        assert_eq!(
            a, b,
            "infra/regions.toml and wrangler.toml [env.production.vars] WHARF_REGIONS differ"
        );
        // The Kubernetes ConfigMap carries the same list, verbatim.
        let k8s = std::fs::read_to_string(root.join("infra/k8s/origin.yaml")).unwrap();
        let list = std::fs::read_to_string(root.join("infra/regions.toml")).unwrap();
        let tables = &list[list.find("[[regions]]").unwrap()..];
        for line in tables.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                k8s.contains(&format!("    {line}\n")),
                "infra/k8s/origin.yaml's regions.toml lacks {line:?} (keep it equal to infra/regions.toml)"
            );
        }
    }

    const REGIONS: &str = r#"
[[regions]]
name = "eu"
origins = ["http://eu-1:5000", "http://eu-2:5000"]
s3_endpoint = "http://s3-eu:3900"
bucket = "wharf-eu"
s3_region = "garage"
continents = ["EU"]
lat = 50.1
lon = 8.7

[[regions]]
name = "us"
origin = "http://us-1:5000"
s3_endpoint = "http://s3-us:3900"
bucket = "wharf-us"
continents = ["NA"]
lat = 39.0
lon = -77.5

[[regions]]
name = "ap"
origin = "http://ap-1:5000"
s3_endpoint = "http://s3-ap:3900"
bucket = "wharf-ap"
lat = 1.35
lon = 103.8
"#;

    fn load_env(args: &[&str], file: &str) -> anyhow::Result<Config> {
        let file: File = toml::from_str(file)?;
        Config::from_parts(cli(args), file, |name| match name {
            "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" => Some("k".to_owned()),
            "WHARF_S3_ACCESS_KEY_AP" => Some("ap-key".to_owned()),
            _ => None,
        })
    }

    #[test]
    fn a_region_entry_gives_the_store_replicas_and_nearest_peers() {
        let args = [
            "--listen",
            "127.0.0.1:1",
            "--rule",
            "a=http://x",
            "--advertise",
            "http://eu-2:5000/",
        ];
        let c = load_env(
            &args,
            &format!(
                "region = \"eu\"\n[auth]\ntoken_key = \"{}\"\nservice = \"wharf.test\"\n{REGIONS}",
                "t".repeat(32)
            ),
        )
        .unwrap();
        let Storage::S3(s3) = &c.storage else {
            panic!("the region's bucket is the store")
        };
        assert_eq!(
            (s3.bucket.as_str(), s3.region.as_str()),
            ("wharf-eu", "garage")
        );
        let geo = c.geo.unwrap();
        assert_eq!(geo.advertise.as_deref(), Some("http://eu-2:5000"));
        assert_eq!(geo.replicas.len(), 2);
        let peers: Vec<_> = geo.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(peers, ["us", "ap"], "nearest first from Frankfurt");
        assert_eq!(
            geo.peers[1].s3.access_key, "ap-key",
            "per-region credentials win"
        );
        assert_eq!(geo.peers[0].s3.region, "us-east-1");
        assert!(geo.peer_key.is_some(), "replicas sign with the token key");
        // Without a token key, replicas could not tell a peer from a client.
        let e = load_env(&args, &format!("region = \"eu\"\n{REGIONS}")).unwrap_err();
        assert!(
            e.to_string().contains("has 2 replicas but no token key"),
            "{e}"
        );
    }

    #[test]
    fn region_settings_are_checked() {
        let base = ["--listen", "127.0.0.1:1", "--rule", "a=http://x"];
        let cases: &[(&[&str], String, &str)] = &[
            (
                &[],
                format!("region = \"xx\"\n{REGIONS}"),
                "region \"xx\" is not in the region list ([[regions]]: eu, us, ap)",
            ),
            (&[], REGIONS.to_owned(), "`region` is not"),
            (
                &[],
                format!("region = \"eu\"\n{REGIONS}"),
                "has 2 origins but advertise is not set",
            ),
            (
                &["--advertise", "http://eu-3:5000"],
                format!("region = \"eu\"\n{REGIONS}"),
                "is not one of region \"eu\"'s replicas",
            ),
            (
                &["--advertise", "http://x:1", "--data", "/d"],
                String::new(),
                "but no region",
            ),
            (
                &["--data", "/d"],
                "replicas = [\"http://a:1\"]".to_owned(),
                "but no region",
            ),
            (
                &["--region", "us"],
                format!("{REGIONS}\n[[regions]]\nname = \"us\"\norigin = \"http://u\"\n"),
                "listed twice",
            ),
        ];
        for (extra, file, want) in cases {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            let err = load_env(&args, file).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{extra:?}: {err:?} should contain {want:?}"
            );
        }
    }

    /// Every secret value shipped in `.dev.vars.example` and in `infra/`
    /// (Kubernetes Secrets, anything marked REPLACE-ME) is in the one list
    /// of placeholders, so the check below cannot fall behind the files.
    #[test]
    fn every_shipped_placeholder_is_listed() {
        use wharf_core::placeholder::PLACEHOLDERS;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut found: Vec<(String, String)> = Vec::new();
        let unquote = |v: &str| v.trim().trim_matches('"').trim_matches('\'').to_owned();

        let dev = std::fs::read_to_string(root.join(".dev.vars.example")).unwrap();
        for line in dev
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
        {
            let (name, value) = line.split_once('=').unwrap();
            let value = unquote(value);
            if name == "WHARF_USERS" {
                let users: std::collections::HashMap<String, String> =
                    serde_json::from_str(&value).unwrap();
                found.extend(users.into_values().map(|v| (name.to_owned(), v)));
            } else {
                found.push((name.to_owned(), value));
            }
        }
        assert!(found.len() >= 4, ".dev.vars.example: {found:?}");

        let mut files = vec![root.join("infra")];
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let mut in_secret_data = false;
            for line in text.lines() {
                let t = line.trim();
                if t.starts_with("kind:") || t == "---" {
                    in_secret_data = false;
                }
                if t == "stringData:" && text.contains("kind: Secret") {
                    in_secret_data = true;
                    continue;
                }
                if t.starts_with('#') {
                    continue;
                }
                if let Some((name, value)) = t.split_once(['=', ':']) {
                    let value = unquote(value);
                    if in_secret_data || value.to_ascii_lowercase().contains("replace-me") {
                        found.push((format!("{}: {name}", path.display()), value));
                    }
                }
            }
        }
        assert!(
            found.iter().any(|(_, v)| v == "REPLACE-ME"),
            "infra/k8s/origin.yaml's Secret was not read: {found:?}"
        );
        for (where_, value) in &found {
            assert!(
                PLACEHOLDERS.contains(&value.as_str()),
                "{where_} = {value:?} is a shipped placeholder missing from wharf_core::placeholder::PLACEHOLDERS"
            );
        }
    }

    #[test]
    fn placeholder_secrets_are_refused_naming_the_setting() {
        let base = ["--listen", "127.0.0.1:1", "--rule", "a=http://x"];
        let env = |token: &'static str, aws: &'static str| {
            move |name: &str| match name {
                "WHARF_TOKEN_KEY" => Some(token.to_owned()),
                "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" => Some(aws.to_owned()),
                _ => None,
            }
        };
        let good = "0123456789abcdef0123456789abcdef-real";
        let auth = "[auth]\nservice = \"w\"\n";
        // (extra flags, config file, (token key, AWS keys), what the error says)
        type Case = (
            &'static [&'static str],
            String,
            (&'static str, &'static str),
            &'static str,
        );
        let cases: &[Case] = &[
            (
                &["--data", "/d"],
                auth.into(),
                ("dev-only-token-key-0123456789abcdef0123456789", good),
                "WHARF_TOKEN_KEY (or auth.token_key) is \"dev-only-token-key",
            ),
            (
                &["--data", "/d"],
                auth.into(),
                ("REPLACE-ME-WITH-32-OR-MORE-RANDOM-BYTES", good),
                "WHARF_TOKEN_KEY (or auth.token_key)",
            ),
            (
                &["--data", "/d"],
                format!("{auth}[embedded]\naccess_key = \"wharfdev\"\nsecret_key = \"{good}\"\n"),
                (good, good),
                "embedded.access_key is \"wharfdev\"",
            ),
            (
                &["--data", "/d"],
                format!("{auth}[embedded]\nsecret_key = \"wharfdev-secret-key-0123456789\"\n"),
                (good, good),
                "embedded.secret_key",
            ),
            (
                &["--data", "/d"],
                format!(
                    "{auth}[embedded]\nread_only_access_key = \"ro\"\nread_only_secret_key = \"replace-me-read-only-secret-key\"\n"
                ),
                (good, good),
                "embedded.read_only_secret_key",
            ),
            (
                &["--s3-endpoint", "http://s3", "--bucket", "wharf"],
                auth.into(),
                (good, "REPLACE-ME"),
                "AWS_ACCESS_KEY_ID (or s3.access_key) is \"REPLACE-ME\"",
            ),
            (
                &["--data", "/d"],
                format!(
                    "{auth}[[rule]]\nprefix = \"p\"\nupstream = \"http://x\"\nusername = \"u\"\npassword = \"changeme\"\n"
                ),
                (good, good),
                "rule 1 (p): password",
            ),
            (
                &["--data", "/d"],
                format!("{auth}[embedded]\nread_only_access_key = \"ro\"\n"),
                (good, good),
                "go together",
            ),
            (
                &["--data", "/d"],
                format!(
                    "{auth}[embedded]\naccess_key = \"same\"\nread_only_access_key = \"same\"\nread_only_secret_key = \"s\"\n"
                ),
                (good, good),
                "must be a key of its own",
            ),
        ];
        for (extra, file, (token, aws), want) in cases {
            let mut args = vec!["wharf-origin"];
            args.extend_from_slice(&base);
            args.extend_from_slice(extra);
            let file: File = toml::from_str(file).unwrap();
            let err = Config::from_parts(Cli::try_parse_from(args).unwrap(), file, env(token, aws))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(want),
                "{extra:?}: {err:?} should contain {want:?}"
            );
        }
        // The same settings with real values load.
        let file: File = toml::from_str(&format!(
            "{auth}[embedded]\naccess_key = \"rw\"\nsecret_key = \"{good}\"\nread_only_access_key = \"ro\"\nread_only_secret_key = \"{good}-ro\"\n"
        ))
        .unwrap();
        let mut args = vec!["wharf-origin"];
        args.extend_from_slice(&base);
        args.extend_from_slice(&["--data", "/d"]);
        let c =
            Config::from_parts(Cli::try_parse_from(args).unwrap(), file, env(good, good)).unwrap();
        let Storage::Embedded(e) = c.storage else {
            panic!("embedded")
        };
        assert_eq!(e.read_only.unwrap().access_key, "ro");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        assert!(toml::from_str::<File>("lissten = \"127.0.0.1:1\"").is_err());
    }
}
