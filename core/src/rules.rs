//! Cache rules: which upstream registry serves a downstream repository name.
//!
//! Owns [`RuleSpec`] (configuration: a rule and its options), [`CacheRules`]
//! (validated rule set), [`Resolved`] (the answer for one request) and
//! [`RuleError`].
//!
//! A rule's options that both deployables apply (privacy, tag freshness) live
//! on [`RuleSpec`] and are copied onto [`Resolved`], so the edge and the
//! origin read them from the one resolved rule, never from a list kept
//! beside the rules in the same order.
//!
//! Key decisions:
//! * A rule's prefix is the first path component(s) of the downstream name
//!   (`ghcr.io/owner/img` → rule `ghcr.io`), so it must itself be a valid repository
//!   name: no ports (`:` is not allowed in names) — put the port in the upstream URL.
//! * Every request resolves to a **canonical** name `prefix/upstream-repo`, the cache
//!   key namespace. A registry-mirror client asking for `library/alpine`, a
//!   containerd mirror asking for `alpine?ns=docker.io` and a prefix client asking for
//!   `docker.io/alpine` all land on `docker.io/library/alpine`, so they share one
//!   cached copy.
//! * A canonical name belongs to exactly one rule: the rule its longest
//!   prefix selects. A resolution through `?ns=` or the Docker Hub fallback
//!   whose canonical name another rule's prefix would select is refused
//!   ([`RuleError::Aliased`]): otherwise `acme/app?ns=up` (rule `up`) and
//!   `up/acme/app` (rule `up/acme`, perhaps private) would share every cache
//!   key, ticket and link. Everything keyed by a canonical name therefore
//!   identifies its rule (issue 12).
//! * Docker Hub's implicit `library/` applies to single-component names on the
//!   Docker Hub rule: prefix `docker.io`, or any rule whose upstream host is
//!   `registry-1.docker.io`, `index.docker.io` or `docker.io`.
//! * Upstream URLs are parsed by hand (no `url` crate in the wasm bundle) and stored
//!   normalised as `scheme://host[:port]` without a trailing `/`, so callers can
//!   append `/v2/...` directly.

use crate::error::ErrorCode;
use crate::freshness::FreshnessPolicy;
use crate::reference::{ReferenceError, RepositoryName};

/// The Docker Hub prefix, which also receives bare (mirror-style) names.
pub const DOCKER_HUB_PREFIX: &str = "docker.io";

/// One configured rule: downstream prefix → upstream registry base URL, and
/// the options both deployables apply to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    /// Leading path component(s) of downstream names, e.g. `docker.io`, `ghcr.io`.
    pub prefix: String,
    /// Base URL, e.g. `https://registry-1.docker.io` or `http://127.0.0.1:5000`.
    pub upstream: String,
    /// Pulls need a token bound to this rule (a signed-in user).
    pub private: bool,
    /// How long tags stay fresh, and stale-if-error.
    pub freshness: FreshnessPolicy,
    /// The upstream repository prefix the rest of a name maps under (`hub/app`
    /// → `myorg/app` with `myorg`); empty: the upstream's root.
    pub upstream_prefix: String,
    /// Which repositories and tags may be pulled through.
    pub filter: Filter,
}

impl RuleSpec {
    /// A public rule with the default freshness, mapped to the upstream's
    /// root, letting everything through.
    pub fn new(prefix: impl Into<String>, upstream: impl Into<String>) -> RuleSpec {
        RuleSpec {
            prefix: prefix.into(),
            upstream: upstream.into(),
            private: false,
            freshness: FreshnessPolicy::default(),
            upstream_prefix: String::new(),
            filter: Filter::EMPTY,
        }
    }
}

/// Which repositories (and tags) a rule lets through: glob patterns over
/// the repository name *at the upstream* (`library/alpine`, `acme/*`,
/// `acme/**`) and over tags (`v*`, `latest`). `*` and `?` stay within a
/// path segment; `**` crosses them. A deny pattern wins over an allow
/// pattern; an empty allow list allows everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Repositories that may be pulled (empty: all).
    pub allow: Vec<String>,
    /// Repositories that may not.
    pub deny: Vec<String>,
    /// Tags that may be pulled by tag (empty: all). Digests are not
    /// filtered: a digest pulled through a tag was allowed by that tag.
    pub allow_tags: Vec<String>,
    /// Tags that may not.
    pub deny_tags: Vec<String>,
}

impl Filter {
    /// Lets everything through.
    pub const EMPTY: Filter = Filter {
        allow: Vec::new(),
        deny: Vec::new(),
        allow_tags: Vec::new(),
        deny_tags: Vec::new(),
    };

    /// Why `value` is refused by `allow`/`deny`, if it is.
    fn refuses(allow: &[String], deny: &[String], value: &str) -> Option<String> {
        if let Some(p) = deny.iter().find(|p| glob(p, value)) {
            return Some(format!("it matches the deny pattern `{p}`"));
        }
        if !allow.is_empty() && !allow.iter().any(|p| glob(p, value)) {
            return Some(format!(
                "it matches none of the allowed patterns ({})",
                allow.join(", ")
            ));
        }
        None
    }

    fn validate(&self) -> Result<(), String> {
        for p in self.allow.iter().chain(&self.deny) {
            if p.is_empty() || p.starts_with('/') || p.ends_with('/') || p.contains("//") {
                return Err(format!(
                    "repository pattern `{p}` must be a name with `*`, `**` or `?`, e.g. `library/*`"
                ));
            }
        }
        for p in self.allow_tags.iter().chain(&self.deny_tags) {
            if p.is_empty() || p.contains('/') {
                return Err(format!(
                    "tag pattern `{p}` must be a tag with `*` or `?`, e.g. `v1.*`"
                ));
            }
        }
        Ok(())
    }
}

/// Glob match: `**` any run of characters, `*` any run without `/`, `?`
/// one character that is not `/`; everything else literally.
pub fn glob(pattern: &str, value: &str) -> bool {
    fn go(p: &[u8], v: &[u8]) -> bool {
        match p {
            [] => v.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=v.len()).any(|i| go(rest, &v[i..])),
            [b'*', rest @ ..] => {
                let stop = v.iter().position(|&c| c == b'/').unwrap_or(v.len());
                (0..=stop).any(|i| go(rest, &v[i..]))
            }
            [b'?', rest @ ..] => matches!(v, [c, tail @ ..] if *c != b'/' && go(rest, tail)),
            [c, rest @ ..] => matches!(v, [d, tail @ ..] if d == c && go(rest, tail)),
        }
    }
    // Patterns and names are short (names ≤ 255 bytes); the recursion is
    // bounded by the pattern's length.
    pattern.len() <= 255 && value.len() <= 255 && go(pattern.as_bytes(), value.as_bytes())
}

/// Why a rule set is invalid, or why a name does not resolve.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A prefix that cannot lead a repository name.
    #[error("cache rule #{index} has invalid prefix `{prefix}`: {reason}")]
    InvalidPrefix {
        /// Position of the rule in the configuration.
        index: usize,
        /// The prefix as configured.
        prefix: String,
        /// What is wrong.
        reason: String,
    },
    /// An upstream that is not an `http(s)://host[:port]` base URL.
    #[error("cache rule #{index} (`{prefix}`) has invalid upstream `{upstream}`: {reason}")]
    InvalidUpstream {
        /// Position of the rule in the configuration.
        index: usize,
        /// The rule's prefix.
        prefix: String,
        /// The upstream as configured.
        upstream: String,
        /// What is wrong.
        reason: String,
    },
    /// Two rules with the same prefix.
    #[error(
        "cache rules #{first} and #{second} both use prefix `{prefix}`; prefixes must be unique"
    )]
    DuplicatePrefix {
        /// The prefix.
        prefix: String,
        /// Position of the first rule.
        first: usize,
        /// Position of the second rule.
        second: usize,
    },
    /// No rule serves this name or namespace.
    #[error(
        "no cache rule for {requested}; configured prefixes: {configured} (pull `<prefix>/<repository>`)"
    )]
    NoRule {
        /// What was asked for, e.g. ``repository `foo/bar` `` or ``namespace `x` (from `?ns=`)``.
        requested: String,
        /// The configured prefixes, comma-separated, or `(none)`.
        configured: String,
    },
    /// The name is exactly a rule prefix, with no repository after it.
    #[error("`{prefix}` is a cache rule prefix, not a repository; pull `{prefix}/<repository>`")]
    EmptyRemainder {
        /// The prefix.
        prefix: String,
    },
    /// The name resolved (through `?ns=` or the Docker Hub fallback) to a
    /// canonical name that belongs to another rule.
    #[error(
        "{requested} would be cached as `{canonical}`, which rule `{owner}` serves; pull `{canonical}` instead"
    )]
    Aliased {
        /// What was asked for, e.g. ``repository `acme/app` with `?ns=up` ``.
        requested: String,
        /// The canonical name it would have had.
        canonical: String,
        /// The prefix of the rule that owns that canonical name.
        owner: String,
    },
    /// The rule's allow/deny lists refuse the repository or tag.
    #[error("rule `{prefix}` does not let `{what}` through: {why}")]
    Filtered {
        /// The rule's prefix.
        prefix: String,
        /// The repository (`name`) or `name:tag` refused.
        what: String,
        /// Which pattern decided.
        why: String,
    },
    /// The upstream or canonical name would be invalid (in practice: longer than 255).
    #[error("repository `{name}` cannot be cached under this rule: {source}")]
    Name {
        /// The name that failed (possibly shortened).
        name: String,
        /// Why.
        source: ReferenceError,
    },
}

impl RuleError {
    /// The OCI code for a resolve failure (`NAME_UNKNOWN` / `NAME_INVALID`);
    /// configuration errors map to `UNKNOWN`.
    pub fn code(&self) -> ErrorCode {
        match self {
            RuleError::NoRule { .. } | RuleError::EmptyRemainder { .. } => ErrorCode::NameUnknown,
            RuleError::Name { .. } => ErrorCode::NameInvalid,
            RuleError::Aliased { .. } | RuleError::Filtered { .. } => ErrorCode::Denied,
            RuleError::InvalidPrefix { .. }
            | RuleError::InvalidUpstream { .. }
            | RuleError::DuplicatePrefix { .. } => ErrorCode::Unknown,
        }
    }
}

/// The outcome of [`CacheRules::resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Index of the rule in [`CacheRules::rules`].
    pub rule: usize,
    /// The rule's prefix.
    pub prefix: String,
    /// The rule's normalised upstream base URL (no trailing `/`).
    pub upstream: String,
    /// The repository name to ask the upstream for.
    pub upstream_repo: RepositoryName,
    /// `prefix/upstream_repo`: the cache key namespace.
    pub canonical: RepositoryName,
    /// The rule is private ([`RuleSpec::private`]).
    pub private: bool,
    /// The rule's tag freshness ([`RuleSpec::freshness`]).
    pub freshness: FreshnessPolicy,
    /// The rule's tag patterns (allow, deny): see [`Resolved::admit_tag`].
    pub tag_filter: (Vec<String>, Vec<String>),
}

/// A validated, non-overlapping-prefix rule set.
#[derive(Clone, Debug)]
pub struct CacheRules {
    rules: Vec<RuleSpec>,
    /// `host[:port]` of each upstream, lowercase, default port dropped; matched
    /// against `?ns=` when no prefix equals it.
    authorities: Vec<String>,
}

impl CacheRules {
    /// Validates and normalises the rules. An empty list is allowed (every resolve
    /// then fails with [`RuleError::NoRule`]).
    pub fn new(specs: Vec<RuleSpec>) -> Result<CacheRules, RuleError> {
        let mut rules = Vec::with_capacity(specs.len());
        let mut authorities = Vec::with_capacity(specs.len());
        for (index, spec) in specs.into_iter().enumerate() {
            validate_prefix(&spec.prefix).map_err(|reason| RuleError::InvalidPrefix {
                index,
                prefix: spec.prefix.clone(),
                reason,
            })?;
            if let Some(first) = rules
                .iter()
                .position(|r: &RuleSpec| r.prefix == spec.prefix)
            {
                return Err(RuleError::DuplicatePrefix {
                    prefix: spec.prefix,
                    first,
                    second: index,
                });
            }
            spec.filter
                .validate()
                .map_err(|reason| RuleError::InvalidPrefix {
                    index,
                    prefix: spec.prefix.clone(),
                    reason,
                })?;
            if !spec.upstream_prefix.is_empty() {
                RepositoryName::parse(&spec.upstream_prefix).map_err(|e| {
                    RuleError::InvalidPrefix {
                        index,
                        prefix: spec.prefix.clone(),
                        reason: format!("upstream_prefix `{}`: {e}", spec.upstream_prefix),
                    }
                })?;
            }
            let (upstream, authority) =
                parse_upstream(&spec.upstream).map_err(|reason| RuleError::InvalidUpstream {
                    index,
                    prefix: spec.prefix.clone(),
                    upstream: spec.upstream.clone(),
                    reason,
                })?;
            rules.push(RuleSpec { upstream, ..spec });
            authorities.push(authority);
        }
        Ok(CacheRules { rules, authorities })
    }

    /// The rules, normalised, in configuration order.
    pub fn rules(&self) -> &[RuleSpec] {
        &self.rules
    }

    /// The rule at `idx` (as in [`Resolved::rule`]).
    pub fn get(&self, idx: usize) -> Option<&RuleSpec> {
        self.rules.get(idx)
    }

    /// Maps a downstream name (plus containerd's optional `?ns=`) to its rule,
    /// upstream repository and canonical name:
    ///
    /// 1. `ns` given (and non-empty): the rule whose prefix equals it, else the rule
    ///    whose upstream `host[:port]` equals it (containerd sends the registry host,
    ///    e.g. `registry.example.com:5000`; of several, the shortest prefix); the
    ///    whole `name` is the upstream repo.
    /// 2. the rule with the longest prefix matching whole leading components.
    /// 3. the `docker.io` rule, treating `name` as a bare Docker Hub name.
    /// 4. [`RuleError::NoRule`].
    pub fn resolve(&self, name: &RepositoryName, ns: Option<&str>) -> Result<Resolved, RuleError> {
        if let Some(ns) = ns.map(str::trim).filter(|s| !s.is_empty()) {
            let lower = ns.to_ascii_lowercase();
            // Several rules may share an upstream (a public `docker.io` and a
            // private `docker.io/myorg` with the org's credentials): `ns`
            // naming that host picks the most general one, the shortest
            // prefix, never a more specific rule by configuration order.
            let idx = self
                .rules
                .iter()
                .position(|r| r.prefix == ns)
                .or_else(|| {
                    (0..self.rules.len())
                        .filter(|&i| self.authorities[i] == lower)
                        .min_by_key(|&i| self.rules[i].prefix.len())
                })
                .ok_or_else(|| self.no_rule(format!("namespace `{ns}` (from `?ns=`)")))?;
            return self.build(idx, name.as_str(), || {
                format!("repository `{name}` with `?ns={ns}`")
            });
        }
        let name_str = name.as_str();
        let best = self.by_prefix(name_str);
        if let Some((idx, rest)) = best {
            if rest.is_empty() {
                return Err(RuleError::EmptyRemainder {
                    prefix: self.rules[idx].prefix.clone(),
                });
            }
            return self.build(idx, rest, String::new);
        }
        if let Some(idx) = self
            .rules
            .iter()
            .position(|r| r.prefix == DOCKER_HUB_PREFIX)
        {
            return self.build(idx, name_str, || {
                format!("repository `{name_str}` (a bare Docker Hub name)")
            });
        }
        Err(self.no_rule(format!("repository `{name_str}`")))
    }

    /// The rule with the longest prefix matching whole leading components of
    /// `name`, and the rest of the name after it.
    fn by_prefix<'n>(&self, name: &'n str) -> Option<(usize, &'n str)> {
        let mut best: Option<(usize, &str)> = None;
        for (idx, rule) in self.rules.iter().enumerate() {
            let rest = match name.strip_prefix(rule.prefix.as_str()) {
                Some("") => "",
                Some(rest) => match rest.strip_prefix('/') {
                    Some(rest) => rest,
                    None => continue, // `ghcr.iox/...` does not match `ghcr.io`
                },
                None => continue,
            };
            if best.is_none_or(|(b, _)| rule.prefix.len() > self.rules[b].prefix.len()) {
                best = Some((idx, rest));
            }
        }
        best
    }

    fn no_rule(&self, requested: String) -> RuleError {
        let configured = if self.rules.is_empty() {
            "(none)".to_owned()
        } else {
            self.rules
                .iter()
                .map(|r| r.prefix.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        RuleError::NoRule {
            requested,
            configured,
        }
    }

    fn is_docker_hub(&self, idx: usize) -> bool {
        self.rules[idx].prefix == DOCKER_HUB_PREFIX
            || matches!(
                self.authorities[idx].as_str(),
                "registry-1.docker.io" | "index.docker.io" | "docker.io"
            )
    }

    /// Builds the resolution of `repo` under rule `idx`, refusing a canonical
    /// name that [`Self::by_prefix`] would give to another rule (`requested`
    /// describes the request for that error).
    fn build(
        &self,
        idx: usize,
        repo: &str,
        requested: impl FnOnce() -> String,
    ) -> Result<Resolved, RuleError> {
        let rule = &self.rules[idx];
        let repo =
            if self.is_docker_hub(idx) && !repo.contains('/') && rule.upstream_prefix.is_empty() {
                format!("library/{repo}")
            } else {
                repo.to_owned()
            };
        let upstream_repo = match rule.upstream_prefix.as_str() {
            "" => repo.clone(),
            under => format!("{under}/{repo}"),
        };
        if let Some(why) = Filter::refuses(&rule.filter.allow, &rule.filter.deny, &upstream_repo) {
            return Err(RuleError::Filtered {
                prefix: rule.prefix.clone(),
                what: format!("{}/{repo}", rule.prefix),
                why,
            });
        }
        let parse = |s: String| {
            RepositoryName::parse(&s).map_err(|source| RuleError::Name {
                name: crate::digest::excerpt(&s),
                source,
            })
        };
        let canonical = parse(format!("{}/{}", rule.prefix, repo))?;
        if let Some((owner, _)) = self.by_prefix(canonical.as_str())
            && owner != idx
        {
            return Err(RuleError::Aliased {
                requested: requested(),
                canonical: canonical.to_string(),
                owner: self.rules[owner].prefix.clone(),
            });
        }
        let upstream_repo = parse(upstream_repo)?;
        Ok(Resolved {
            rule: idx,
            prefix: rule.prefix.clone(),
            upstream: rule.upstream.clone(),
            upstream_repo,
            canonical,
            private: rule.private,
            freshness: rule.freshness,
            tag_filter: (
                rule.filter.allow_tags.clone(),
                rule.filter.deny_tags.clone(),
            ),
        })
    }
}

impl Resolved {
    /// Whether the rule lets `request` through: a manifest by tag is
    /// subject to the rule's tag patterns (the repository's were applied by
    /// [`CacheRules::resolve`]). Both deployables ask right after resolving.
    pub fn admit(&self, request: &crate::ApiRequest) -> Result<(), RuleError> {
        match request {
            crate::ApiRequest::Manifest {
                reference: crate::Reference::Tag(tag),
                ..
            } => self.admit_tag(tag),
            _ => Ok(()),
        }
    }

    /// Whether the rule lets this tag of the repository through.
    pub fn admit_tag(&self, tag: &crate::Tag) -> Result<(), RuleError> {
        let (allow, deny) = &self.tag_filter;
        match Filter::refuses(allow, deny, tag.as_str()) {
            Some(why) => Err(RuleError::Filtered {
                prefix: self.prefix.clone(),
                what: format!("{}:{tag}", self.canonical),
                why,
            }),
            None => Ok(()),
        }
    }
}

fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.contains(':') {
        return Err("prefixes cannot contain `:` because repository names cannot; \
                    drop the port from the prefix and keep it in the upstream URL \
                    (e.g. prefix `registry.example.com`, upstream `http://registry.example.com:5000`)"
            .to_owned());
    }
    RepositoryName::parse(prefix)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Returns (normalised base URL, lowercase authority without default port).
fn parse_upstream(url: &str) -> Result<(String, String), String> {
    let (scheme, rest, default_port) = if let Some(rest) = url.strip_prefix("https://") {
        ("https", rest, "443")
    } else if let Some(rest) = url.strip_prefix("http://") {
        ("http", rest, "80")
    } else {
        return Err("must start with `http://` or `https://`".to_owned());
    };
    if rest.contains(['?', '#']) {
        return Err("must not have a query or fragment".to_owned());
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !path.trim_end_matches('/').is_empty() {
        return Err(
            "must be a base URL without a path (the registry API is always at `/v2/`)".to_owned(),
        );
    }
    if authority.is_empty() {
        return Err("has no host".to_owned());
    }
    if authority.contains('@') {
        return Err("must not contain credentials; configure them separately".to_owned());
    }
    let authority = authority.to_ascii_lowercase();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (inner, after) = v6
            .split_once(']')
            .ok_or("has an unterminated IPv6 literal `[`")?;
        if inner.is_empty()
            || !inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(format!("has an invalid IPv6 literal `[{inner}]`"));
        }
        match after {
            "" => (&authority[..inner.len() + 2], None),
            _ => match after.strip_prefix(':') {
                Some(port) => (&authority[..inner.len() + 2], Some(port)),
                None => return Err("has junk after the IPv6 literal".to_owned()),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority.as_str(), None),
        }
    };
    if host.is_empty() {
        return Err("has no host".to_owned());
    }
    if !host.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!("has an invalid host `{host}`"));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(p),
            _ => return Err(format!("has an invalid port `{p}` (expected 1-65535)")),
        },
    };
    let base = match port {
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    };
    let authority = match port {
        Some(p) if p != default_port => format!("{host}:{p}"),
        _ => host.to_owned(),
    };
    Ok((base, authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_table() {
        for (pattern, value, want) in [
            ("library/alpine", "library/alpine", true),
            ("library/*", "library/alpine", true),
            ("library/*", "library/alpine/extra", false),
            ("acme/**", "acme/team/app", true),
            ("acme/**", "acme", false),
            ("**", "anything/at/all", true),
            ("*/app", "acme/app", true),
            ("*/app", "acme/x/app", false),
            ("v1.?", "v1.2", true),
            ("v1.?", "v1.22", false),
            ("v*", "v1.2.3", true),
            ("v*", "latest", false),
            ("", "", true),
        ] {
            assert_eq!(glob(pattern, value), want, "{pattern} ~ {value}");
        }
        assert!(
            !glob(&"*".repeat(300), "x"),
            "over-long patterns match nothing"
        );
    }

    #[test]
    fn allow_and_deny_lists_refuse_before_any_upstream_request_and_say_why() {
        let mut hub = RuleSpec::new("docker.io", "https://registry-1.docker.io");
        hub.filter = Filter {
            allow: vec!["library/*".into(), "acme/**".into()],
            deny: vec!["library/bad".into()],
            allow_tags: Vec::new(),
            deny_tags: vec!["latest".into(), "*-rc*".into()],
        };
        let rules = CacheRules::new(vec![hub]).unwrap();
        let name = |n: &str| RepositoryName::parse(n).unwrap();
        assert!(rules.resolve(&name("docker.io/alpine"), None).is_ok());
        assert!(
            rules
                .resolve(&name("docker.io/acme/team/app"), None)
                .is_ok()
        );
        for (n, says) in [
            ("docker.io/library/bad", "deny pattern `library/bad`"),
            (
                "docker.io/other/app",
                "none of the allowed patterns (library/*, acme/**)",
            ),
            ("bad", "deny pattern"),
        ] {
            let err = rules.resolve(&name(n), None).unwrap_err();
            assert_eq!(err.code(), ErrorCode::Denied, "{n}");
            let text = err.to_string();
            assert!(
                text.contains("rule `docker.io`") && text.contains(says),
                "{n}: {text}"
            );
        }
        let ok = rules.resolve(&name("docker.io/alpine"), None).unwrap();
        assert!(ok.admit_tag(&crate::Tag::parse("3.20").unwrap()).is_ok());
        for t in ["latest", "2.0-rc1"] {
            let err = ok.admit_tag(&crate::Tag::parse(t).unwrap()).unwrap_err();
            assert_eq!(err.code(), ErrorCode::Denied);
            assert!(
                err.to_string().contains("docker.io/library/alpine:"),
                "{err}"
            );
        }
        let mut bad = RuleSpec::new("x", "https://x.example");
        bad.filter.deny = vec!["/abs".into()];
        assert!(CacheRules::new(vec![bad]).is_err());
    }

    #[test]
    fn a_prefix_maps_under_an_upstream_repository_prefix() {
        let mut hub = RuleSpec::new("hub", "https://registry-1.docker.io");
        hub.upstream_prefix = "myorg".into();
        let rules = CacheRules::new(vec![
            hub,
            RuleSpec::new("docker.io", "https://registry-1.docker.io"),
        ])
        .unwrap();
        let r = rules
            .resolve(&RepositoryName::parse("hub/app").unwrap(), None)
            .unwrap();
        assert_eq!(r.upstream_repo.as_str(), "myorg/app");
        assert_eq!(r.canonical.as_str(), "hub/app");
        let r = rules
            .resolve(&RepositoryName::parse("hub/team/app").unwrap(), None)
            .unwrap();
        assert_eq!(r.upstream_repo.as_str(), "myorg/team/app");
        // The root, as before: Docker Hub's `library/` for a single component.
        let r = rules
            .resolve(&RepositoryName::parse("docker.io/alpine").unwrap(), None)
            .unwrap();
        assert_eq!(r.upstream_repo.as_str(), "library/alpine");
        let mut bad = RuleSpec::new("y", "https://y.example");
        bad.upstream_prefix = "Not Valid".into();
        assert!(CacheRules::new(vec![bad]).is_err());
    }

    /// Ok((rule, upstream_repo, canonical)), or a fragment of the error message.
    type Expected = Result<(usize, &'static str, &'static str), &'static str>;

    fn spec(prefix: &str, upstream: &str) -> RuleSpec {
        RuleSpec::new(prefix, upstream)
    }

    fn standard() -> CacheRules {
        CacheRules::new(vec![
            spec("docker.io", "https://registry-1.docker.io/"),
            spec("ghcr.io", "https://ghcr.io"),
            spec("quay.io", "https://quay.io"),
            spec("ghcr.io/special", "http://127.0.0.1:5000"),
            spec("private", "http://Registry.Example.com:5000"),
            spec("hub", "https://index.docker.io:443"),
        ])
        .unwrap()
    }

    #[test]
    fn new_rejects_bad_rules() {
        let ok = "https://r.example";
        let cases: &[(Vec<RuleSpec>, &str)] = &[
            (
                vec![spec("", ok)],
                "#0 has invalid prefix ``: repository name is empty",
            ),
            (
                vec![spec("registry.example.com:5000", ok)],
                "cannot contain `:`",
            ),
            (vec![spec("GHCR.io", ok)], "must be lowercase"),
            (vec![spec("ghcr.io/", ok)], "empty path component"),
            (
                vec![spec("a", ok), spec("a", ok)],
                "rules #0 and #1 both use prefix `a`",
            ),
            (
                vec![spec("a", "ftp://x")],
                "#0 (`a`) has invalid upstream `ftp://x`: must start with",
            ),
            (vec![spec("a", "HTTPS://x")], "must start with"),
            (vec![spec("a", "https://")], "has no host"),
            (vec![spec("a", "https:///v2")], "without a path"),
            (vec![spec("a", "https://x/v2/")], "without a path"),
            (vec![spec("a", "https://x?a=b")], "query"),
            (vec![spec("a", "https://u:p@x")], "credentials"),
            (vec![spec("a", "https://x:0")], "invalid port `0`"),
            (vec![spec("a", "https://x:99999")], "invalid port"),
            (vec![spec("a", "https://x:+1")], "invalid port"),
            (vec![spec("a", "https://x:")], "invalid port ``"),
            (vec![spec("a", "https://:80")], "has no host"),
            (vec![spec("a", "https://x y")], "invalid host"),
            (vec![spec("a", "http://[::1")], "unterminated"),
            (vec![spec("a", "http://[zz]")], "invalid IPv6"),
            (vec![spec("a", "http://[::1]x")], "junk"),
        ];
        for (specs, msg) in cases {
            let e = CacheRules::new(specs.clone()).unwrap_err();
            assert!(
                e.to_string().contains(msg),
                "{specs:?}: `{e}` lacks `{msg}`"
            );
            assert_eq!(e.code(), ErrorCode::Unknown);
        }
    }

    #[test]
    fn new_normalises_upstreams() {
        let rules = CacheRules::new(vec![
            spec("a", "https://registry-1.docker.io/"),
            spec("b", "http://LOCALHOST:5000//"),
            spec("c", "http://[::1]:5000"),
            spec("d", "http://[::1]"),
        ])
        .unwrap();
        let ups: Vec<&str> = rules.rules().iter().map(|r| r.upstream.as_str()).collect();
        assert_eq!(
            ups,
            [
                "https://registry-1.docker.io",
                "http://localhost:5000",
                "http://[::1]:5000",
                "http://[::1]"
            ]
        );
        assert_eq!(rules.get(1).unwrap().prefix, "b");
        assert!(rules.get(4).is_none());
        assert!(CacheRules::new(vec![]).unwrap().rules().is_empty());
    }

    #[test]
    fn resolve_table() {
        let rules = standard();
        // (name, ns, Ok((rule, upstream_repo, canonical)) | Err(message part))
        let cases: &[(&str, Option<&str>, Expected)] = &[
            // prefix clients
            (
                "docker.io/alpine",
                None,
                Ok((0, "library/alpine", "docker.io/library/alpine")),
            ),
            (
                "docker.io/library/alpine",
                None,
                Ok((0, "library/alpine", "docker.io/library/alpine")),
            ),
            (
                "docker.io/bitnami/redis",
                None,
                Ok((0, "bitnami/redis", "docker.io/bitnami/redis")),
            ),
            (
                "ghcr.io/owner/img",
                None,
                Ok((1, "owner/img", "ghcr.io/owner/img")),
            ),
            ("ghcr.io/img", None, Ok((1, "img", "ghcr.io/img"))),
            ("quay.io/a/b/c", None, Ok((2, "a/b/c", "quay.io/a/b/c"))),
            // longest prefix wins
            ("ghcr.io/special/x", None, Ok((3, "x", "ghcr.io/special/x"))),
            (
                "ghcr.io/specialx/y",
                None,
                Ok((1, "specialx/y", "ghcr.io/specialx/y")),
            ),
            (
                "private/team/app",
                None,
                Ok((4, "team/app", "private/team/app")),
            ),
            // Hub normalisation on a non-`docker.io` prefix whose upstream is Hub
            (
                "hub/alpine",
                None,
                Ok((5, "library/alpine", "hub/library/alpine")),
            ),
            // registry-mirror clients: bare names go to Docker Hub
            (
                "library/alpine",
                None,
                Ok((0, "library/alpine", "docker.io/library/alpine")),
            ),
            (
                "alpine",
                None,
                Ok((0, "library/alpine", "docker.io/library/alpine")),
            ),
            (
                "ghcr.iox/y",
                None,
                Ok((0, "ghcr.iox/y", "docker.io/ghcr.iox/y")),
            ),
            // containerd mirrors
            (
                "alpine",
                Some("docker.io"),
                Ok((0, "library/alpine", "docker.io/library/alpine")),
            ),
            (
                "library/alpine",
                Some("docker.io"),
                Ok((0, "library/alpine", "docker.io/library/alpine")),
            ),
            (
                "owner/img",
                Some("ghcr.io"),
                Ok((1, "owner/img", "ghcr.io/owner/img")),
            ),
            ("img", Some("ghcr.io"), Ok((1, "img", "ghcr.io/img"))),
            (
                "team/app",
                Some("registry.example.com:5000"),
                Ok((4, "team/app", "private/team/app")),
            ),
            (
                "x",
                Some("registry-1.docker.io"),
                Ok((0, "library/x", "docker.io/library/x")),
            ),
            (
                "alpine",
                Some(""),
                Ok((0, "library/alpine", "docker.io/library/alpine")),
            ),
            (
                "a",
                Some("example.org"),
                Err(
                    "namespace `example.org` (from `?ns=`); configured prefixes: docker.io, ghcr.io, quay.io",
                ),
            ),
            // errors
            ("ghcr.io", None, Err("`ghcr.io` is a cache rule prefix")),
            (
                "ghcr.io/special",
                None,
                Err("`ghcr.io/special` is a cache rule prefix"),
            ),
        ];
        for (name, ns, want) in cases {
            let n = RepositoryName::parse(name).unwrap();
            match (rules.resolve(&n, *ns), want) {
                (Ok(r), Ok((rule, up, canon))) => {
                    assert_eq!(
                        (r.rule, r.upstream_repo.as_str(), r.canonical.as_str()),
                        (*rule, *up, *canon),
                        "{name} {ns:?}"
                    );
                    assert_eq!(r.prefix, rules.rules()[r.rule].prefix);
                    assert_eq!(r.upstream, rules.rules()[r.rule].upstream);
                }
                (Err(e), Err(msg)) => {
                    assert!(e.to_string().contains(msg), "{name}: `{e}` lacks `{msg}`");
                    assert_eq!(e.code(), ErrorCode::NameUnknown);
                }
                (got, want) => panic!("{name} {ns:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn a_rules_options_come_with_its_resolution() {
        let slow = FreshnessPolicy {
            ttl: std::time::Duration::from_secs(7),
            stale_if_error: std::time::Duration::from_secs(11),
        };
        let rules = CacheRules::new(vec![
            spec("up", "http://127.0.0.1:5000"),
            RuleSpec {
                private: true,
                freshness: slow,
                ..spec("up/acme", "http://127.0.0.1:5001/")
            },
        ])
        .unwrap();
        let resolve = |name: &str| {
            rules
                .resolve(&RepositoryName::parse(name).unwrap(), None)
                .unwrap()
        };
        let (public, private) = (resolve("up/app"), resolve("up/acme/app"));
        assert_eq!(
            (public.private, public.freshness),
            (false, FreshnessPolicy::default())
        );
        assert_eq!((private.private, private.freshness), (true, slow));
        let normalised = rules.get(1).unwrap();
        assert_eq!(
            (
                normalised.upstream.as_str(),
                normalised.private,
                normalised.freshness
            ),
            ("http://127.0.0.1:5001", true, slow)
        );
    }

    #[test]
    fn without_docker_hub_rule_bare_names_fail_listing_prefixes() {
        let rules = CacheRules::new(vec![spec("ghcr.io", "https://ghcr.io")]).unwrap();
        let e = rules
            .resolve(&RepositoryName::parse("library/alpine").unwrap(), None)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "no cache rule for repository `library/alpine`; configured prefixes: ghcr.io \
             (pull `<prefix>/<repository>`)"
        );
        let empty = CacheRules::new(vec![]).unwrap();
        let e = empty
            .resolve(&RepositoryName::parse("a").unwrap(), None)
            .unwrap_err();
        assert!(e.to_string().contains("configured prefixes: (none)"), "{e}");
    }

    /// Rules nested under others: `up/acme` under `up`, `docker.io/myorg`
    /// under Docker Hub.
    fn nested() -> CacheRules {
        CacheRules::new(vec![
            spec("up", "http://127.0.0.1:5000"),
            spec("up/acme", "http://127.0.0.1:5001"),
            spec("docker.io", "https://registry-1.docker.io"),
            spec("docker.io/myorg", "http://127.0.0.1:5002"),
        ])
        .unwrap()
    }

    #[test]
    fn resolutions_that_alias_another_rules_names_are_refused() {
        // `up` public and `up/acme` private: `acme/app?ns=up` must not become
        // `up/acme/app`, the private rule's name (issue 12).
        let rules = nested();
        let cases: &[(&str, Option<&str>, &str)] = &[
            (
                "acme/app",
                Some("up"),
                "`up/acme/app`, which rule `up/acme` serves",
            ),
            ("acme/app", Some("127.0.0.1:5000"), "rule `up/acme` serves"),
            ("acme", Some("up"), "`up/acme`, which rule `up/acme` serves"),
            // the bare-name fallback of Docker Hub
            (
                "myorg/app",
                None,
                "`docker.io/myorg/app`, which rule `docker.io/myorg`",
            ),
            (
                "myorg/app",
                Some("docker.io"),
                "rule `docker.io/myorg` serves",
            ),
        ];
        for (name, ns, msg) in cases {
            let e = rules
                .resolve(&RepositoryName::parse(name).unwrap(), *ns)
                .unwrap_err();
            assert!(matches!(e, RuleError::Aliased { .. }), "{name} {ns:?}: {e}");
            assert!(
                e.to_string().contains(msg),
                "{name} {ns:?}: `{e}` lacks `{msg}`"
            );
            assert_eq!(e.code(), ErrorCode::Denied);
        }
        // The same names by their own prefix, and names that do not alias.
        for (name, ns, rule) in [
            ("up/acme/app", None, 1),
            ("other/app", Some("up"), 0),
            ("app", Some("up/acme"), 1),
            ("docker.io/myorg/app", None, 3),
            ("library/alpine", None, 2),
        ] {
            let r = rules
                .resolve(&RepositoryName::parse(name).unwrap(), ns)
                .unwrap();
            assert_eq!(r.rule, rule, "{name} {ns:?}");
        }
    }

    #[test]
    fn ns_naming_a_shared_upstream_picks_the_most_general_rule() {
        // The private rule comes first in the configuration on purpose.
        let rules = CacheRules::new(vec![
            spec("docker.io/myorg", "https://registry-1.docker.io"),
            spec("docker.io", "https://registry-1.docker.io"),
        ])
        .unwrap();
        let r = rules
            .resolve(
                &RepositoryName::parse("alpine").unwrap(),
                Some("registry-1.docker.io"),
            )
            .unwrap();
        assert_eq!(
            (r.rule, r.canonical.as_str()),
            (1, "docker.io/library/alpine")
        );
    }

    proptest::proptest! {
        /// Whatever is asked, an accepted resolution's canonical name resolves
        /// (without `?ns=`) to the same rule and upstream repository: a cache
        /// key names its rule.
        #[test]
        fn canonical_names_identify_their_rule(
            parts in proptest::collection::vec("(up|acme|app|x|library|docker.io|myorg)", 1..5),
            ns in proptest::option::of("(up|up/acme|docker.io|docker.io/myorg|127.0.0.1:5000|127.0.0.1:5001)"),
        ) {
            let rules = nested();
            let Ok(name) = RepositoryName::parse(&parts.join("/")) else { return Ok(()) };
            if let Ok(r) = rules.resolve(&name, ns.as_deref()) {
                let again = rules.resolve(&r.canonical, None).unwrap();
                proptest::prop_assert_eq!(again, r);
            }
        }
    }

    #[test]
    fn canonical_name_too_long_is_name_invalid() {
        let rules = standard();
        let long = format!("{}/{}", "a".repeat(200), "b".repeat(50)); // 251 chars
        let e = rules
            .resolve(&RepositoryName::parse(&long).unwrap(), None)
            .unwrap_err();
        assert!(matches!(e, RuleError::Name { .. }), "{e}");
        assert_eq!(e.code(), ErrorCode::NameInvalid);
        assert!(e.to_string().contains("maximum is 255"), "{e}");
    }
}
