//! The Worker's configuration: `[vars]` from `wrangler.toml` (or `.dev.vars`)
//! and secrets, parsed and validated into one [`Config`], once per isolate.
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `WHARF_GLOBAL_HOST` | var | global hostname; also the token `service`/`aud` |
//! | `WHARF_REGIONS` | var (JSON) | the region list (`wharf_core::region::RegionSpec`): `[{name, origin \| origins, s3_endpoint?, public_s3_endpoint?, bucket?, s3_region?, addressing?, continents?, countries?, lat?, lon?}]`; the first is the default |
//! | `WHARF_HEALTH_FAIL_AFTER`, `WHARF_HEALTH_RECOVER_AFTER` | var | consecutive failed / good observations that mark a region down / up (2, 2) |
//! | `WHARF_HEALTH_PROBE_INTERVAL`, `WHARF_HEALTH_PROBE_TIMEOUT`, `WHARF_HEALTH_STALE_AFTER` | var | re-probe a region's `/readyz` when its record is older (10s); probe timeout (2s); ignore older records, fail open (5m) |
//! | `WHARF_TEST_LOCATION_HEADER` | var | tests only: header that sets the client's location (`EU`, `EU/DE`, `AS@1.3,103.8`); refused unless the global host is local |
//! | `WHARF_RULES` | var (JSON) | `[{prefix, upstream, private?, tag_ttl?, stale_if_error?, upstream_prefix?, allow?, deny?, allow_tags?, deny_tags?}]`, as the origin's rules |
//! | `WHARF_TAG_TTL`, `WHARF_STALE_IF_ERROR` | var | defaults for the rules (`30s`, `5m`, `2h`, `7d` or seconds) |
//! | `WHARF_TOKEN_TTL`, `WHARF_TICKET_TTL`, `WHARF_PRESIGN_TTL`, `WHARF_PRESENCE_TTL`, `WHARF_ORIGIN_TIMEOUT` | var | lifetimes and timeouts |
//! | `WHARF_TOKEN_KEY` | secret | HMAC key (≥ 32 bytes) for tokens and tickets, shared with the origins |
//! | `WHARF_S3_ACCESS_KEY`, `WHARF_S3_SECRET_KEY` | secret | presigning credentials, a read-only key pair (GET/HEAD objects); `…_<REGION>` overrides per region |
//! | `WHARF_USERS` | secret (JSON) | `{"user": "<stored form>" \| {password: "<stored form>", rules?}}` for private rules; the stored form is `pbkdf2-sha256$<iterations>$<salt>$<hash>` from `wharf-origin hash-password` ([`wharf_core::password`]) |
//! | `WHARF_KV` | KV binding | manifests and tag records across locations (optional) |
//!
//! Secrets that are placeholders shipped in the repository
//! ([`wharf_core::placeholder`]) are refused, as the origin refuses them.
//! Plain passwords and unsalted `sha256:` hashes (earlier versions) are
//! refused with the command that prints the stored form: see
//! [`wharf_core::password`] for why.
//!
//! Key decision: parsing is a pure function of a name → value lookup
//! ([`Config::parse`]), so every validation is unit-tested natively; only
//! [`Config::from_env`] touches the Workers runtime. A JSON var may be a string
//! (`.dev.vars`, `--var`) or a TOML table/array in `[vars]` (an object at run time).
//! [`Config::parse`] hands each section to its own builder (`global_host`,
//! `rules`, `token_key`, `regions` with `s3_target`, `health`,
//! `test_location_header`, `users`, `lifetimes`), in a fixed order.
//!
//! # Parsed once per isolate
//!
//! [`Config::cached`] keeps the last parse in a `thread_local!` (with
//! `memo.rs`, the edge's isolate memory; both against the rule in
//! `STYLE.md`). It is acceptable because it is a memo, not shared state: a
//! Workers isolate runs one thread, the value is immutable once built
//! (`Rc<Config>`), and it is keyed by its inputs. [`Config::parse`] is a
//! deterministic function of the lookups it makes, so the memo records each
//! lookup (name and raw value, in order) and a later request re-reads those
//! names and compares the strings: equal lookups give an equal result, any
//! change (`wrangler dev` reloading vars, a new secret) parses again. Only the
//! parse is saved, not the reads. An error is memoised the same way, so a bad
//! configuration is still reported on every request until it is fixed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use serde::Deserialize;
use wharf_core::password::StoredPassword;
use wharf_core::placeholder::is_placeholder;
use wharf_core::region::{self, HealthPolicy, RegionSpec};
use wharf_core::sigv4::{Addressing, Credentials, S3Endpoint};
use wharf_core::token::SigningKey;
use wharf_core::{CacheRules, FreshnessPolicy, RuleSpec};

/// A configuration error: names the setting and what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("edge configuration: {0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// The store of one region, for presigning.
#[derive(Debug, Clone)]
pub struct S3Target {
    /// Parsed endpoint.
    pub endpoint: S3Endpoint,
    /// Bucket (the origin's).
    pub bucket: String,
    /// Signing region.
    pub region: String,
    /// Path-style or virtual-hosted URLs.
    pub addressing: Addressing,
    /// Presigning credentials (read-only ones suffice).
    pub credentials: Credentials,
}

/// One region: its origin replicas and, when set, its object store.
#[derive(Debug, Clone)]
pub struct Region {
    /// Short name, also the regional hostname's first label (`eu` → `eu.<global>`).
    pub name: String,
    /// The origin replicas' base URLs, no trailing `/`.
    pub origins: Vec<String>,
    /// The regional bucket; without it every blob goes to the origin.
    pub s3: Option<S3Target>,
    /// Cloudflare continent codes (`EU`, `NA`, `AS`, …) this region serves on
    /// the global hostname.
    pub continents: Vec<String>,
}

/// A user allowed to pull private rules.
#[derive(Clone)]
pub struct User {
    /// The stored password (PBKDF2-SHA256).
    pub password: StoredPassword,
    /// Private rule prefixes the user may pull; `None` = all.
    pub rules: Option<Vec<String>>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl User {
    /// True if the user may pull the private rule `prefix`.
    pub fn may_pull(&self, prefix: &str) -> bool {
        self.rules
            .as_ref()
            .is_none_or(|r| r.iter().any(|p| p == prefix))
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Global hostname, lowercase; the token service and audience.
    pub global_host: String,
    /// Regions; index 0 is the default.
    pub regions: Vec<Region>,
    /// Cache rules (the same as the origins'), with their options.
    pub rules: CacheRules,
    /// Token and ticket key.
    pub key: SigningKey,
    /// Users by name.
    pub users: HashMap<String, User>,
    /// Token lifetime.
    pub token_ttl: Duration,
    /// Blob ticket lifetime.
    pub ticket_ttl: Duration,
    /// Presigned URL lifetime.
    pub presign_ttl: Duration,
    /// How long a location remembers that a blob is in a region's store.
    pub presence_ttl: Duration,
    /// Timeout of one origin request.
    pub origin_timeout: Duration,
    /// The region list as written (locations, for nearest-region ranking),
    /// same order as [`Config::regions`].
    pub specs: Vec<RegionSpec>,
    /// Health thresholds.
    pub health: HealthPolicy,
    /// A region's health is probed again when its record is this old.
    pub probe_interval: Duration,
    /// Timeout of one `/readyz` probe.
    pub probe_timeout: Duration,
    /// Test-only: a request header that overrides the client's location.
    pub test_location_header: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DurationVar {
    Secs(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleVar {
    prefix: String,
    upstream: String,
    #[serde(default)]
    private: bool,
    tag_ttl: Option<DurationVar>,
    stale_if_error: Option<DurationVar>,
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
}

#[derive(Deserialize)]
#[serde(untagged)]
enum UserVar {
    Password(String),
    Full {
        password: String,
        rules: Option<Vec<String>>,
    },
}

/// Parses `30`, `30s`, `5m`, `2h`, `7d` into a duration.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mult).map(Duration::from_secs)
}

fn duration_var(name: &str, v: &DurationVar) -> Result<Duration, ConfigError> {
    match v {
        DurationVar::Secs(s) => Ok(Duration::from_secs(*s)),
        DurationVar::Text(t) => parse_duration(t).ok_or_else(|| {
            err(format!(
                "{name} = {t:?}: expected seconds or e.g. `30s`, `5m`, `2h`, `7d`"
            ))
        }),
    }
}

fn stored_password(user: &str, p: &str) -> Result<StoredPassword, ConfigError> {
    if is_placeholder(p) {
        return Err(err(format!(
            "WHARF_USERS[{user}]: the password is the placeholder {p:?}: store the output of `printf %s \"$PASSWORD\" | wharf-origin hash-password`"
        )));
    }
    StoredPassword::parse(p).map_err(|e| err(format!("WHARF_USERS[{user}]: the password {e}")))
}

/// Refuses a secret that is a placeholder shipped in the repository.
fn real_secret(name: &str, value: String) -> Result<String, ConfigError> {
    if is_placeholder(&value) {
        return Err(err(format!(
            "secret {name} is {value:?}, a placeholder shipped in .dev.vars.example or infra/: set a secret of your own"
        )));
    }
    Ok(value)
}

/// Where [`Config::parse`] reads values from. `json` returns the JSON text of
/// a structured var (string or object at run time).
pub trait Source {
    /// A plain string var or secret.
    fn text(&self, name: &str) -> Option<String>;
    /// A JSON var: its JSON text.
    fn json(&self, name: &str) -> Option<String>;
}

impl Config {
    /// Validates everything; errors name the setting. One builder per
    /// section, in this order (the order of the lookups, which the memo
    /// compares, and of the errors a configuration with several gets).
    pub fn parse(src: &impl Source) -> Result<Config, ConfigError> {
        let global_host = global_host(src)?;
        let rules = rules(src)?;
        let key = token_key(src)?;
        let (specs, regions) = regions(src)?;
        let (health, probe_interval, probe_timeout) = health(src)?;
        let test_location_header = test_location_header(src, &global_host)?;
        let users = users(src)?;
        let (token_ttl, ticket_ttl, presign_ttl) = lifetimes(src)?;
        Ok(Config {
            global_host,
            regions,
            rules,
            key,
            users,
            token_ttl,
            ticket_ttl,
            presign_ttl,
            presence_ttl: dur(src, "WHARF_PRESENCE_TTL", Duration::from_secs(3600))?,
            origin_timeout: dur(src, "WHARF_ORIGIN_TIMEOUT", Duration::from_secs(20))?,
            specs,
            health,
            probe_interval,
            probe_timeout,
            test_location_header,
        })
    }

    /// The rule at `idx` (as in `Resolved::rule`), with its options.
    pub fn rule(&self, idx: usize) -> &RuleSpec {
        // `idx` comes from resolving against these rules; fall back to a
        // private rule rather than panic if that ever broke.
        static FALLBACK: RuleSpec = RuleSpec {
            prefix: String::new(),
            upstream: String::new(),
            private: true,
            freshness: FreshnessPolicy {
                ttl: Duration::from_secs(300),
                stale_if_error: Duration::from_secs(0),
            },
            upstream_prefix: String::new(),
            filter: wharf_core::rules::Filter::EMPTY,
        };
        self.rules.get(idx).unwrap_or(&FALLBACK)
    }

    /// Prefixes of the private rules.
    pub fn private_prefixes(&self) -> impl Iterator<Item = &str> {
        self.rules
            .rules()
            .iter()
            .filter(|r| r.private)
            .map(|r| r.prefix.as_str())
    }
}

/// A duration var (`30s`, `5m`, …), `default` when unset.
fn dur(src: &impl Source, name: &str, default: Duration) -> Result<Duration, ConfigError> {
    match src.text(name) {
        None => Ok(default),
        Some(v) => parse_duration(&v).ok_or_else(|| {
            err(format!(
                "{name} = {v:?}: expected seconds or e.g. `30s`, `5m`, `2h`, `7d`"
            ))
        }),
    }
}

/// `WHARF_GLOBAL_HOST`, lowercase, without a trailing dot.
fn global_host(src: &impl Source) -> Result<String, ConfigError> {
    src.text("WHARF_GLOBAL_HOST")
        .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| err("WHARF_GLOBAL_HOST is not set (e.g. `registry.example.com`)"))
}

/// `WHARF_RULES` with their options (defaults: `WHARF_TAG_TTL`,
/// `WHARF_STALE_IF_ERROR`), validated by the core.
fn rules(src: &impl Source) -> Result<CacheRules, ConfigError> {
    let defaults = FreshnessPolicy {
        ttl: dur(src, "WHARF_TAG_TTL", FreshnessPolicy::default().ttl)?,
        stale_if_error: dur(
            src,
            "WHARF_STALE_IF_ERROR",
            FreshnessPolicy::default().stale_if_error,
        )?,
    };
    let rules_json = src
        .json("WHARF_RULES")
        .ok_or_else(|| err("WHARF_RULES is not set (e.g. `[{\"prefix\":\"docker.io\",\"upstream\":\"https://registry-1.docker.io\"}]`)"))?;
    let rule_vars: Vec<RuleVar> =
        serde_json::from_str(&rules_json).map_err(|e| err(format!("WHARF_RULES: {e}")))?;
    let mut specs = Vec::new();
    for r in rule_vars {
        let name = format!("WHARF_RULES[{}]", r.prefix);
        let freshness = FreshnessPolicy {
            ttl: match &r.tag_ttl {
                Some(v) => duration_var(&format!("{name}.tag_ttl"), v)?,
                None => defaults.ttl,
            },
            stale_if_error: match &r.stale_if_error {
                Some(v) => duration_var(&format!("{name}.stale_if_error"), v)?,
                None => defaults.stale_if_error,
            },
        };
        specs.push(RuleSpec {
            prefix: r.prefix,
            upstream: r.upstream,
            private: r.private,
            freshness,
            upstream_prefix: r.upstream_prefix,
            filter: wharf_core::rules::Filter {
                allow: r.allow,
                deny: r.deny,
                allow_tags: r.allow_tags,
                deny_tags: r.deny_tags,
            },
        });
    }
    if specs.is_empty() {
        return Err(err(
            "WHARF_RULES is empty: configure at least one cache rule",
        ));
    }
    CacheRules::new(specs).map_err(|e| err(format!("WHARF_RULES: {e}")))
}

/// The secret `WHARF_TOKEN_KEY`.
fn token_key(src: &impl Source) -> Result<SigningKey, ConfigError> {
    let key = src
        .text("WHARF_TOKEN_KEY")
        .ok_or_else(|| err("secret WHARF_TOKEN_KEY is not set (`wrangler secret put WHARF_TOKEN_KEY`, the same key as the origins')"))?;
    let key = real_secret("WHARF_TOKEN_KEY", key)?;
    SigningKey::new(key.into_bytes()).map_err(|e| err(format!("WHARF_TOKEN_KEY: {e}")))
}

/// `WHARF_REGIONS`: the list as configured, and each region as the edge uses it.
fn regions(src: &impl Source) -> Result<(Vec<RegionSpec>, Vec<Region>), ConfigError> {
    let regions_json = src
        .json("WHARF_REGIONS")
        .ok_or_else(|| err("WHARF_REGIONS is not set (e.g. `[{\"name\":\"eu\",\"origin\":\"https://eu.origin.example.com\"}]`)"))?;
    let specs: Vec<RegionSpec> =
        serde_json::from_str(&regions_json).map_err(|e| err(format!("WHARF_REGIONS: {e}")))?;
    region::validate(&specs).map_err(|e| err(format!("WHARF_REGIONS: {}", e.0)))?;
    let mut regions: Vec<Region> = Vec::new();
    for r in &specs {
        regions.push(Region {
            name: r.name.clone(),
            origins: r.origins(),
            s3: s3_target(src, r)?,
            continents: r
                .continents
                .iter()
                .map(|c| c.to_ascii_uppercase())
                .collect(),
        });
    }
    Ok((specs, regions))
}

/// The store region `r` presigns for, with its credentials
/// (`WHARF_S3_*_KEY_<REGION>`, else `WHARF_S3_*_KEY`); `None` without one.
fn s3_target(src: &impl Source, r: &RegionSpec) -> Result<Option<S3Target>, ConfigError> {
    let Some(ep) = r.public_endpoint() else {
        return Ok(None);
    };
    let endpoint = S3Endpoint::parse(ep)
        .map_err(|e| err(format!("WHARF_REGIONS[{}].s3_endpoint: {e}", r.name)))?;
    let suffix = r.name.to_ascii_uppercase().replace('-', "_");
    let cred = |base: &str| {
        src.text(&format!("{base}_{suffix}"))
            .or_else(|| src.text(base))
    };
    let access_key = cred("WHARF_S3_ACCESS_KEY").ok_or_else(|| {
        err(format!(
            "region {}: secret WHARF_S3_ACCESS_KEY (or WHARF_S3_ACCESS_KEY_{suffix}) is not set",
            r.name
        ))
    })?;
    let secret_key = cred("WHARF_S3_SECRET_KEY").ok_or_else(|| {
        err(format!(
            "region {}: secret WHARF_S3_SECRET_KEY (or WHARF_S3_SECRET_KEY_{suffix}) is not set",
            r.name
        ))
    })?;
    let access_key = real_secret(
        &format!("WHARF_S3_ACCESS_KEY (or WHARF_S3_ACCESS_KEY_{suffix})"),
        access_key,
    )?;
    let secret_key = real_secret(
        &format!("WHARF_S3_SECRET_KEY (or WHARF_S3_SECRET_KEY_{suffix})"),
        secret_key,
    )?;
    let addressing = match r.addressing.as_deref() {
        None | Some("path") => Addressing::Path,
        Some("virtual-hosted") | Some("virtual") => Addressing::VirtualHosted,
        Some(other) => {
            return Err(err(format!(
                "WHARF_REGIONS[{}].addressing = {other:?}: expected `path` or `virtual-hosted`",
                r.name
            )));
        }
    };
    Ok(Some(S3Target {
        endpoint,
        bucket: r.bucket.clone().unwrap_or_else(|| "wharf".to_owned()),
        region: r
            .s3_region
            .clone()
            .unwrap_or_else(|| "us-east-1".to_owned()),
        addressing,
        credentials: Credentials {
            access_key,
            secret_key,
            session_token: None,
        },
    }))
}

/// `WHARF_HEALTH_*`: the health policy, probe interval and probe timeout.
fn health(src: &impl Source) -> Result<(HealthPolicy, Duration, Duration), ConfigError> {
    let count = |name: &str, default: u32| -> Result<u32, ConfigError> {
        match src.text(name) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| err(format!("{name} = {v:?}: expected a count from 1 to 100"))),
        }
    };
    let health = HealthPolicy {
        fail_after: count("WHARF_HEALTH_FAIL_AFTER", 2)?,
        recover_after: count("WHARF_HEALTH_RECOVER_AFTER", 2)?,
        stale_after_ms: dur(src, "WHARF_HEALTH_STALE_AFTER", Duration::from_secs(300))?.as_millis()
            as u64,
    };
    let probe_interval = dur(src, "WHARF_HEALTH_PROBE_INTERVAL", Duration::from_secs(10))?;
    let probe_timeout = dur(src, "WHARF_HEALTH_PROBE_TIMEOUT", Duration::from_secs(2))?;
    if probe_interval.is_zero() || probe_timeout.is_zero() {
        return Err(err(
            "WHARF_HEALTH_PROBE_INTERVAL and WHARF_HEALTH_PROBE_TIMEOUT must be at least 1s",
        ));
    }
    Ok((health, probe_interval, probe_timeout))
}

/// `WHARF_TEST_LOCATION_HEADER`, refused unless the global host is local.
fn test_location_header(
    src: &impl Source,
    global_host: &str,
) -> Result<Option<String>, ConfigError> {
    let test_location_header = src
        .text("WHARF_TEST_LOCATION_HEADER")
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty());
    if let Some(h) = &test_location_header {
        let local = global_host == "localhost"
            || global_host == "127.0.0.1"
            || global_host.ends_with(".localhost")
            || global_host.ends_with(".test");
        if !local {
            return Err(err(format!(
                "WHARF_TEST_LOCATION_HEADER = {h:?} lets clients choose their region; it is for tests only and refused unless WHARF_GLOBAL_HOST is localhost, 127.0.0.1, *.localhost or *.test (it is {global_host:?})"
            )));
        }
    }
    Ok(test_location_header)
}

/// The secret `WHARF_USERS`.
fn users(src: &impl Source) -> Result<HashMap<String, User>, ConfigError> {
    let mut users = HashMap::new();
    if let Some(text) = src.json("WHARF_USERS") {
        let vars: HashMap<String, UserVar> = serde_json::from_str(&text).map_err(|e| {
            err(format!(
                "WHARF_USERS: {e} (expected {{\"user\": \"<output of wharf-origin hash-password>\"}})"
            ))
        })?;
        for (name, v) in vars {
            let (password, rules) = match v {
                UserVar::Password(p) => (p, None),
                UserVar::Full { password, rules } => (password, rules),
            };
            let password = stored_password(&name, &password)?;
            users.insert(name, User { password, rules });
        }
    }
    Ok(users)
}

/// Token, ticket and presigned-URL lifetimes, checked against what clients
/// and the core allow.
fn lifetimes(src: &impl Source) -> Result<(Duration, Duration, Duration), ConfigError> {
    let token_ttl = dur(src, "WHARF_TOKEN_TTL", Duration::from_secs(300))?;
    if token_ttl < Duration::from_secs(60) {
        return Err(err(
            "WHARF_TOKEN_TTL must be at least 60s (clients assume 60s)",
        ));
    }
    let ticket_ttl = dur(src, "WHARF_TICKET_TTL", Duration::from_secs(60))?;
    if ticket_ttl.is_zero() || ticket_ttl.as_secs() > wharf_core::ticket::MAX_LIFETIME_SECS {
        return Err(err("WHARF_TICKET_TTL must be 1s to 1h"));
    }
    let presign_ttl = dur(src, "WHARF_PRESIGN_TTL", Duration::from_secs(600))?;
    if presign_ttl.is_zero() || presign_ttl.as_secs() > wharf_core::sigv4::MAX_EXPIRES_SECS {
        return Err(err("WHARF_PRESIGN_TTL must be 1s to 7d"));
    }
    Ok((token_ttl, ticket_ttl, presign_ttl))
}

/// One lookup [`Config::parse`] made: which kind, which name, what it read.
#[derive(Debug, PartialEq, Eq)]
struct Lookup {
    json: bool,
    name: String,
    value: Option<String>,
}

/// A [`Source`] that records every lookup it answers.
struct Recorder<'a, S> {
    src: &'a S,
    seen: RefCell<Vec<Lookup>>,
}

impl<S: Source> Recorder<'_, S> {
    fn note(&self, json: bool, name: &str, value: Option<String>) -> Option<String> {
        self.seen.borrow_mut().push(Lookup {
            json,
            name: name.to_owned(),
            value: value.clone(),
        });
        value
    }
}

impl<S: Source> Source for Recorder<'_, S> {
    fn text(&self, name: &str) -> Option<String> {
        self.note(false, name, self.src.text(name))
    }
    fn json(&self, name: &str) -> Option<String> {
        self.note(true, name, self.src.json(name))
    }
}

/// A parse result and the lookups it depends on (see the module doc).
pub struct Memo {
    inputs: Vec<Lookup>,
    result: Result<Rc<Config>, ConfigError>,
}

impl Memo {
    /// Whether `src` still answers every recorded lookup the same way.
    fn matches(&self, src: &impl Source) -> bool {
        self.inputs.iter().all(|l| {
            let now = if l.json {
                src.json(&l.name)
            } else {
                src.text(&l.name)
            };
            now == l.value
        })
    }

    /// The memoised result if `slot` holds one for the same inputs, else a
    /// fresh parse (kept in `slot`, error or not).
    pub fn get(slot: &RefCell<Option<Memo>>, src: &impl Source) -> Result<Rc<Config>, ConfigError> {
        if let Some(m) = slot.borrow().as_ref()
            && m.matches(src)
        {
            return m.result.clone();
        }
        let recorder = Recorder {
            src,
            seen: RefCell::new(Vec::new()),
        };
        let result = Config::parse(&recorder).map(Rc::new);
        *slot.borrow_mut() = Some(Memo {
            inputs: recorder.seen.into_inner(),
            result: result.clone(),
        });
        result
    }
}

thread_local! {
    /// This isolate's last parse (see the module doc for why this is global).
    static MEMO: RefCell<Option<Memo>> = const { RefCell::new(None) };
}

impl Config {
    /// [`Config::parse`], memoised per isolate and keyed by its inputs.
    pub fn cached(src: &impl Source) -> Result<Rc<Config>, ConfigError> {
        MEMO.with(|slot| Memo::get(slot, src))
    }
}

/// A [`Source`] over a map, for unit tests here and in other modules.
#[cfg(test)]
pub(crate) struct Map(pub HashMap<&'static str, String>);

#[cfg(test)]
impl Source for Map {
    fn text(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
    fn json(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Map {
        Map(HashMap::from([
            ("WHARF_GLOBAL_HOST", "Registry.Example.com.".to_owned()),
            (
                "WHARF_REGIONS",
                r#"[{"name":"eu","origin":"https://eu-origin.example.com/","s3_endpoint":"https://s3.eu.example.com","bucket":"wharf-eu","s3_region":"eu-central-1","continents":["eu","af"]},
                    {"name":"us","origin":"https://us-origin.example.com"}]"#
                    .to_owned(),
            ),
            (
                "WHARF_RULES",
                r#"[{"prefix":"docker.io","upstream":"https://registry-1.docker.io","tag_ttl":"10m"},
                    {"prefix":"private","upstream":"https://r.example.com","private":true,"stale_if_error":60}]"#
                    .to_owned(),
            ),
            ("WHARF_TOKEN_KEY", "k".repeat(32)),
            ("WHARF_S3_ACCESS_KEY", "AK".to_owned()),
            ("WHARF_S3_SECRET_KEY", "SK".to_owned()),
            ("WHARF_S3_SECRET_KEY_EU", "SK-EU".to_owned()),
            (
                "WHARF_USERS",
                format!(
                    r#"{{"alice":"{}","bob":{{"password":"{}","rules":["other"]}}}}"#,
                    StoredPassword::new(b"pw", b"alice-salt", 10_000),
                    StoredPassword::new(b"secret", b"bob-salt", 10_000),
                ),
            ),
            ("WHARF_TAG_TTL", "2m".to_owned()),
        ]))
    }

    #[test]
    fn a_full_configuration_parses() {
        let c = Config::parse(&base()).unwrap();
        assert_eq!(c.global_host, "registry.example.com");
        assert_eq!(c.regions.len(), 2);
        let eu = &c.regions[0];
        assert_eq!(eu.origins, vec!["https://eu-origin.example.com"]);
        assert_eq!(eu.continents, ["EU", "AF"]);
        let s3 = eu.s3.as_ref().unwrap();
        assert_eq!(
            (s3.bucket.as_str(), s3.region.as_str()),
            ("wharf-eu", "eu-central-1")
        );
        assert_eq!(s3.credentials.access_key, "AK");
        assert_eq!(s3.credentials.secret_key, "SK-EU", "per-region override");
        assert!(c.regions[1].s3.is_none());
        assert_eq!(c.rule(0).freshness.ttl, Duration::from_secs(600));
        assert_eq!(
            c.rule(1).freshness.ttl,
            Duration::from_secs(120),
            "WHARF_TAG_TTL default"
        );
        assert_eq!(c.rule(1).freshness.stale_if_error, Duration::from_secs(60));
        assert!(!c.rule(0).private && c.rule(1).private);
        assert_eq!(c.private_prefixes().collect::<Vec<_>>(), ["private"]);
        assert!(c.users["alice"].password.verify(b"pw"));
        assert!(!c.users["alice"].password.verify(b"pw2"));
        assert!(c.users["bob"].password.verify(b"secret"));
        assert!(c.users["alice"].may_pull("private"));
        assert!(!c.users["bob"].may_pull("private"));
        assert_eq!(c.token_ttl, Duration::from_secs(300));
        assert!(!format!("{:?}", c.users["alice"]).contains("hash"));
    }

    #[test]
    fn invalid_settings_are_named() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("WHARF_GLOBAL_HOST", None, "WHARF_GLOBAL_HOST is not set"),
            (
                "WHARF_TOKEN_KEY",
                Some("short"),
                "WHARF_TOKEN_KEY: signing key is 5 bytes",
            ),
            ("WHARF_TOKEN_KEY", None, "WHARF_TOKEN_KEY is not set"),
            ("WHARF_RULES", Some("[]"), "WHARF_RULES is empty"),
            (
                "WHARF_RULES",
                Some(r#"[{"prefix":"a","upstream":"ftp://x"}]"#),
                "WHARF_RULES: cache rule #0",
            ),
            (
                "WHARF_RULES",
                Some(r#"[{"prefix":"a","upstream":"http://x","tag_ttl":"5 fortnights"}]"#),
                "WHARF_RULES[a].tag_ttl",
            ),
            (
                "WHARF_REGIONS",
                Some(r#"[{"name":"EU","origin":"https://x"}]"#),
                "lowercase DNS label",
            ),
            (
                "WHARF_REGIONS",
                Some(r#"[{"name":"eu","origin":"x"}]"#),
                "must be an http:// or https:// URL",
            ),
            (
                "WHARF_REGIONS",
                Some(r#"[{"name":"eu","origins":[]}]"#),
                "has no origin",
            ),
            ("WHARF_HEALTH_FAIL_AFTER", Some("0"), "count from 1 to 100"),
            ("WHARF_HEALTH_PROBE_INTERVAL", Some("0s"), "at least 1s"),
            (
                "WHARF_TEST_LOCATION_HEADER",
                Some("X-Wharf-Test-Location"),
                "for tests only",
            ),
            (
                "WHARF_REGIONS",
                Some(r#"[{"name":"eu","origin":"http://x","s3_endpoint":"s3"}]"#),
                "s3_endpoint",
            ),
            (
                "WHARF_REGIONS",
                Some(r#"[{"name":"eu","origin":"http://x","bogus":1}]"#),
                "unknown field",
            ),
            (
                "WHARF_S3_ACCESS_KEY",
                None,
                "WHARF_S3_ACCESS_KEY (or WHARF_S3_ACCESS_KEY_EU)",
            ),
            (
                "WHARF_USERS",
                Some(r#"{"a":"sha256:zz"}"#),
                "WHARF_USERS[a]: the password is a plain password or an unsalted sha256: hash, which are no longer accepted; store the output of `wharf-origin hash-password`",
            ),
            (
                "WHARF_USERS",
                Some(r#"{"a":"hunter2"}"#),
                "WHARF_USERS[a]: the password is a plain password",
            ),
            (
                "WHARF_USERS",
                Some(
                    r#"{"a":"pbkdf2-sha256$600000$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
                ),
                "has 600000 iterations; expected 10000 to 100000",
            ),
            (
                "WHARF_USERS",
                Some(r#"{"dev":"replace-me-with-the-output-of-wharf-origin-hash-password"}"#),
                "WHARF_USERS[dev]: the password is the placeholder",
            ),
            (
                "WHARF_TOKEN_KEY",
                Some("dev-only-token-key-0123456789abcdef0123456789"),
                "secret WHARF_TOKEN_KEY is \"dev-only-token-key",
            ),
            (
                "WHARF_S3_SECRET_KEY_EU",
                Some("replace-me-read-only-secret-key"),
                "WHARF_S3_SECRET_KEY (or WHARF_S3_SECRET_KEY_EU) is",
            ),
            ("WHARF_TOKEN_TTL", Some("10s"), "at least 60s"),
            ("WHARF_TICKET_TTL", Some("2h"), "1s to 1h"),
            ("WHARF_ORIGIN_TIMEOUT", Some("soon"), "WHARF_ORIGIN_TIMEOUT"),
        ];
        for (name, value, want) in cases {
            let mut src = base();
            match value {
                Some(v) => src.0.insert(name, (*v).to_owned()),
                None => src.0.remove(name),
            };
            let e = Config::parse(&src).unwrap_err().to_string();
            assert!(
                e.contains(want),
                "{name}={value:?}: {e:?} should contain {want:?}"
            );
        }
    }

    #[test]
    fn the_memo_parses_again_only_when_an_input_changes() {
        let slot = RefCell::new(None);
        let mut src = base();
        let first = Memo::get(&slot, &src).unwrap();
        let again = Memo::get(&slot, &src).unwrap();
        assert!(Rc::ptr_eq(&first, &again), "same inputs: the memo");

        src.0.insert("WHARF_TAG_TTL", "3m".to_owned());
        let changed = Memo::get(&slot, &src).unwrap();
        assert!(!Rc::ptr_eq(&first, &changed), "a changed var parses again");
        assert_eq!(changed.rule(1).freshness.ttl, Duration::from_secs(180));

        // A name that was read and absent counts too: a per-region override
        // appearing later is picked up.
        src.0.insert("WHARF_S3_ACCESS_KEY_EU", "AK-EU".to_owned());
        let added = Memo::get(&slot, &src).unwrap();
        assert!(!Rc::ptr_eq(&changed, &added));
        let s3 = added.regions[0].s3.as_ref().unwrap();
        assert_eq!(s3.credentials.access_key, "AK-EU");
    }

    #[test]
    fn the_memo_reports_an_error_until_it_is_fixed() {
        let slot = RefCell::new(None);
        let mut src = base();
        src.0.insert("WHARF_TOKEN_TTL", "10s".to_owned());
        for _ in 0..2 {
            let e = Memo::get(&slot, &src).unwrap_err().to_string();
            assert!(e.contains("WHARF_TOKEN_TTL"), "{e}");
        }
        src.0.insert("WHARF_TOKEN_TTL", "5m".to_owned());
        let c = Memo::get(&slot, &src).unwrap();
        assert_eq!(c.token_ttl, Duration::from_secs(300));
    }

    #[test]
    fn durations() {
        for (s, want) in [
            ("30", 30),
            ("30s", 30),
            ("5m", 300),
            ("2h", 7200),
            ("7d", 604_800),
            (" 1m ", 60),
        ] {
            assert_eq!(parse_duration(s), Some(Duration::from_secs(want)), "{s}");
        }
        for s in ["", "m", "1w", "-1s", "99999999999999999999d"] {
            assert_eq!(parse_duration(s), None, "{s}");
        }
    }
}
