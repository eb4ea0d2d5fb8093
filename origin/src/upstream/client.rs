//! One upstream registry: requests with authentication, redirects, timeouts,
//! rate-limit handling and health bookkeeping.
//!
//! Redirects are followed by hand (the client is built with redirects off):
//! Docker Hub answers blob GETs with a redirect to a CDN, and credentials must
//! never be forwarded to another origin, so `Authorization` is only re-sent
//! when the redirect stays on the same scheme, host and port.
//!
//! What an upstream says is not trusted (issue 12). Every redirect target and
//! token realm goes through the rule's [`EgressPolicy`] (scheme, address
//! class, allow-list) before it is requested, and every host name is
//! resolved by [`GuardedResolver`], which drops the addresses the policy
//! refuses, so a name that resolves (or rebinds) to loopback or the private
//! network is refused as well. A refusal is an [`UpstreamError::Refused`],
//! logged and counted in `wharf_upstream_refused_total`. Bodies read into
//! memory are bounded ([`read_limited`], error bodies to
//! [`MAX_ERROR_BODY_BYTES`], token answers to [`MAX_TOKEN_BODY_BYTES`]) in
//! size and in time ([`SMALL_BODY_DEADLINE`]), and numbers (`expires_in`,
//! `Retry-After`) are clamped before they touch a clock.
//!
//! A `429` records a "blocked until" instant from `Retry-After`; until then
//! requests fail fast with [`UpstreamError::RateLimited`] without spending
//! more of the upstream's budget, and callers fall back to stale content.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use wharf_core::RepositoryName;
use wharf_core::auth::{
    Challenge, TokenResponse, parse_www_authenticate, pull_scope, token_request_query,
};
use wharf_core::breaker::{Admit, Breaker, BreakerPolicy, Transition};
use wharf_core::egress::{Classes, EgressPolicy, Refusal, classify};
use wharf_core::ratelimit::Budget;

use super::auth::{BearerRealm, Credentials, Scheme, TokenCache};
use crate::metrics;

/// Why an upstream request did not produce a usable response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connection refused, DNS, TLS or a broken connection.
    #[error("cannot reach {url}: {cause}")]
    Unreachable {
        /// The URL that was requested.
        url: String,
        /// The innermost transport error (e.g. "Connection refused").
        cause: String,
    },
    /// No response headers within the request timeout.
    #[error("no response from {url} within {timeout:?}")]
    Timeout {
        /// The URL that was requested.
        url: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The upstream rate-limited us (now or recently).
    #[error("rate limited by the upstream; retry after {retry_after} s")]
    RateLimited {
        /// Seconds until the upstream accepts requests again.
        retry_after: u64,
    },
    /// Authentication failed with the configured credentials (or none).
    #[error("upstream refused access ({status}): {message}; check the rule's credentials")]
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// The upstream's error message.
        message: String,
    },
    /// The token server did not issue a token.
    #[error("token server {realm} failed: {message}")]
    Token {
        /// The token endpoint.
        realm: String,
        /// What went wrong.
        message: String,
    },
    /// Any other unexpected status.
    #[error("answered HTTP {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The upstream's error message, if it sent one.
        message: String,
    },
    /// A redirect without a usable `Location`, or too many of them.
    #[error("bad redirect: {0}")]
    Redirect(String),
    /// The response body broke off or stalled.
    #[error("response body failed: {0}")]
    Body(String),
    /// The upstream pointed somewhere the rule's egress policy forbids.
    #[error("refused {what}: {refusal}")]
    Refused {
        /// What was refused: "redirect", "token realm", "connection".
        what: &'static str,
        /// Why.
        refusal: Refusal,
    },
    /// Every connection the rule allows to the upstream (`max_connections`)
    /// stayed in use for the whole wait; nothing was sent.
    #[error(
        "all {connections} connections the rule allows to it stayed in use for {waited_ms} ms; retry, or raise the rule's max_connections"
    )]
    Busy {
        /// The rule's cap.
        connections: usize,
        /// How long the request waited.
        waited_ms: u64,
    },
    /// The upstream failed repeatedly and is skipped for a while
    /// (`wharf_core::breaker`); nothing was sent.
    #[error("skipped: it failed repeatedly; the next try is in {retry_after} s")]
    CircuitOpen {
        /// Seconds until the next try.
        retry_after: u64,
    },
}

impl UpstreamError {
    /// The OCI code a client sees for this failure.
    pub fn code(&self) -> wharf_core::ErrorCode {
        use wharf_core::ErrorCode;
        match self {
            UpstreamError::RateLimited { .. } => ErrorCode::TooManyRequests,
            UpstreamError::Unauthorized { status: 403, .. } => ErrorCode::Denied,
            UpstreamError::Unauthorized { .. } => ErrorCode::Unauthorized,
            _ => ErrorCode::Unavailable,
        }
    }

    /// Seconds to wait before retrying, when the upstream said.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            UpstreamError::RateLimited { retry_after }
            | UpstreamError::CircuitOpen { retry_after } => Some(*retry_after),
            UpstreamError::Busy { .. } => Some(1),
            _ => None,
        }
    }
}

/// Connection and read timeouts toward an upstream.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// TCP/TLS connect.
    pub connect: Duration,
    /// From sending a request to its response headers.
    pub response: Duration,
    /// Longest pause between two body reads.
    pub idle_read: Duration,
}

/// The last outcome of a request to an upstream, for `/readyz`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct UpstreamHealth {
    /// Whether the last request got a non-error answer.
    pub ok: bool,
    /// HTTP status of the last answer, if any.
    pub status: Option<u16>,
    /// The last error, if the last request failed.
    pub error: Option<String>,
    /// Unix seconds of the last request.
    pub at: Option<u64>,
    /// Last advertised remaining rate-limit budget.
    pub ratelimit_remaining: Option<u64>,
    /// The circuit breaker's state: `closed`, `open` or `half_open`.
    pub circuit: &'static str,
}

/// Error bodies (4xx/5xx) are read up to this many bytes, for the message;
/// the rest is never read (the connection is dropped).
pub const MAX_ERROR_BODY_BYTES: usize = 64 << 10;
/// Largest token-server answer accepted.
pub const MAX_TOKEN_BODY_BYTES: usize = 1 << 20;
/// Longest time spent reading a bounded body (error, token, manifest, tag
/// list, referrers), however slowly it trickles in.
pub const SMALL_BODY_DEADLINE: Duration = Duration::from_secs(60);

/// A client for one upstream registry (one cache rule).
pub struct Upstream {
    registry: String,
    base: Url,
    http: reqwest::Client,
    egress: Arc<EgressPolicy>,
    /// The address classes the upstream is in ([`Classes`] bits): its
    /// literal, then whatever its host name resolved to.
    learned: Arc<AtomicU8>,
    credentials: Option<Credentials>,
    tokens: TokenCache,
    blocked_until: Mutex<Option<Instant>>,
    /// The last budget advertised, and when (unix ms).
    budget: Mutex<Option<(Budget, u64)>>,
    /// At or below this budget, revalidations that can wait do.
    reserve: u64,
    health: Mutex<UpstreamHealth>,
    timeouts: Timeouts,
    breaker: Mutex<Breaker>,
    /// The breaker's clock: milliseconds since this client was made.
    epoch: Instant,
    /// The rule's caps on connections and bandwidth.
    caps: super::Caps,
}

const MAX_REDIRECTS: usize = 5;

impl Upstream {
    /// A client for the registry at `base` (e.g. `https://registry-1.docker.io`),
    /// labelled `registry` in metrics and logs; redirects may also go to
    /// `redirect_hosts` (the rule's allow-list) wherever they resolve.
    pub fn new(
        registry: &str,
        base: &str,
        credentials: Option<Credentials>,
        timeouts: Timeouts,
        redirect_hosts: &[String],
    ) -> anyhow::Result<Self> {
        let base = Url::parse(base)?;
        let egress = Arc::new(
            EgressPolicy::new(base.as_str(), redirect_hosts).map_err(|e| anyhow::anyhow!(e))?,
        );
        let learned = Arc::new(AtomicU8::new(egress.upstream_classes().bits()));
        let resolver = GuardedResolver {
            registry: registry.to_owned(),
            egress: egress.clone(),
            learned: learned.clone(),
            trusted: proxy_hosts(),
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(resolver))
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.idle_read)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            registry: registry.to_owned(),
            base,
            http,
            egress,
            learned,
            credentials,
            tokens: TokenCache::default(),
            blocked_until: Mutex::new(None),
            budget: Mutex::new(None),
            reserve: 0,
            health: Mutex::new(UpstreamHealth {
                ok: true,
                status: None,
                error: None,
                at: None,
                ratelimit_remaining: None,
                circuit: "closed",
            }),
            timeouts,
            breaker: Mutex::new(Breaker::new(BreakerPolicy::default())),
            epoch: Instant::now(),
            caps: super::Caps::default(),
        })
    }

    /// The same client with `policy` for its circuit breaker.
    pub fn with_breaker(self, policy: BreakerPolicy) -> Self {
        Self {
            breaker: Mutex::new(Breaker::new(policy)),
            ..self
        }
    }

    /// Revalidations that can wait do once the advertised budget is at or
    /// below `reserve` (see [`Upstream::postpone_revalidation`]).
    pub fn with_budget_reserve(self, reserve: u64) -> Self {
        Self { reserve, ..self }
    }

    /// The same client held to `caps` (connections, bandwidth).
    pub fn with_caps(self, caps: super::Caps) -> Self {
        Self { caps, ..self }
    }

    /// Whether `requests` more manifest requests that can wait (a
    /// prefetch) fit in the advertised budget above the reserve (the
    /// core's `Budget::affords`); yes when no budget was advertised.
    pub fn budget_affords(&self, requests: u64) -> bool {
        let budget = *self.budget.lock().unwrap_or_else(|e| e.into_inner());
        budget.is_none_or(|(b, at)| b.affords(requests, self.reserve, at, unix_ms()))
    }

    /// Whether a revalidation that can wait should (the core's
    /// `Budget::postpone` on the last budget this upstream advertised).
    pub fn postpone_revalidation(&self) -> bool {
        let budget = *self.budget.lock().unwrap_or_else(|e| e.into_inner());
        budget.is_some_and(|(b, at)| b.postpone(self.reserve, at, unix_ms()))
    }

    /// The metrics/log label of this upstream (its rule prefix).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The last request's outcome.
    pub fn health(&self) -> UpstreamHealth {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sends `method` to `/v2/<repo>/<tail>` with the registry's auth, follows
    /// redirects, and returns the final response if its status is 2xx or 404.
    /// Everything else becomes an [`UpstreamError`].
    pub async fn send(
        &self,
        method: Method,
        repo: &RepositoryName,
        tail: &str,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = self
            .base
            .join(&format!("/v2/{}/{}", repo.as_str(), tail))
            .map_err(|e| UpstreamError::Redirect(format!("cannot build URL: {e}")))?;
        self.send_url(method, repo, url, headers).await
    }

    async fn send_url(
        &self,
        method: Method,
        repo: &RepositoryName,
        url: Url,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, UpstreamError> {
        self.check_rate_limit()?;
        self.check_circuit()?;
        // Held through redirects and, on the final response, until its body
        // is read or dropped (`caps`).
        let permit = self
            .caps
            .admit(&self.registry, self.timeouts.response)
            .await
            .map_err(|busy| UpstreamError::Busy {
                connections: busy.connections,
                waited_ms: busy.waited.as_millis() as u64,
            })?;
        let scope = pull_scope(repo);
        let mut auth = self.authorization(&scope).await?;
        let mut retried_auth = false;
        let mut url = url;
        let mut redirects = 0;
        loop {
            let same_origin = same_origin(&url, &self.base);
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if same_origin && let Some(value) = &auth {
                request = request.header(header::AUTHORIZATION, value.clone());
            }
            let response = self.execute(&method, request, &url).await?;
            let status = response.status();
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(UpstreamError::Redirect(format!(
                        "more than {MAX_REDIRECTS} redirects"
                    )));
                }
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| UpstreamError::Redirect(format!("{status} without Location")))?;
                url = url.join(location).map_err(|e| {
                    UpstreamError::Redirect(format!("bad Location {location:?}: {e}"))
                })?;
                // The URL as the HTTP client will use it (hosts normalised:
                // `0x7f.1` is already 127.0.0.1 here).
                self.egress
                    .check_redirect(url.as_str(), self.learned())
                    .map_err(|refusal| self.refused("redirect", refusal))?;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && same_origin && !retried_auth {
                retried_auth = true;
                self.tokens.forget(&scope);
                let challenges = response
                    .headers()
                    .get_all(header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .filter_map(|v| parse_www_authenticate(v).ok())
                    .flatten()
                    .collect::<Vec<_>>();
                self.learn_scheme(&challenges);
                auth = self.authorization(&scope).await?;
                if auth.is_some() {
                    continue;
                }
            }
            return self
                .classify(response)
                .await
                .map(|r| self.caps.wrap(&self.registry, r, permit));
        }
    }

    async fn execute(
        &self,
        method: &Method,
        request: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<reqwest::Response, UpstreamError> {
        let result = tokio::time::timeout(self.timeouts.response, request.send()).await;
        let response = match result {
            Err(_) => {
                metrics::upstream_request(&self.registry, method.as_str(), "timeout");
                let err = UpstreamError::Timeout {
                    url: redact(url),
                    timeout: self.timeouts.response,
                };
                self.record(None, Some(err.to_string()));
                self.breaker_outcome(false);
                return Err(err);
            }
            Ok(Err(source)) if source.is_timeout() => {
                // reqwest's idle-read timeout fired before the headers came.
                metrics::upstream_request(&self.registry, method.as_str(), "timeout");
                let err = UpstreamError::Timeout {
                    url: redact(url),
                    timeout: self.timeouts.idle_read,
                };
                self.record(None, Some(err.to_string()));
                self.breaker_outcome(false);
                return Err(err);
            }
            Ok(Err(source)) => {
                if let Some(refusal) = refusal_in(&source) {
                    // The resolver refused every address of the host (and
                    // logged and counted it).
                    metrics::upstream_request(&self.registry, method.as_str(), "refused");
                    let err = UpstreamError::Refused {
                        what: "connection",
                        refusal: refusal.clone(),
                    };
                    self.record(None, Some(err.to_string()));
                    return Err(err);
                }
                metrics::upstream_request(&self.registry, method.as_str(), "error");
                let err = UpstreamError::Unreachable {
                    url: redact(url),
                    cause: root_cause(&source),
                };
                self.record(None, Some(err.to_string()));
                self.breaker_outcome(false);
                return Err(err);
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        metrics::upstream_request(&self.registry, method.as_str(), status.as_str());
        self.breaker_outcome(!status.is_server_error());
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
        if let Some(budget) =
            Budget::from_headers(header("ratelimit-remaining"), header("ratelimit-limit"))
        {
            metrics::ratelimit_remaining(&self.registry, budget.remaining as f64);
            self.health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .ratelimit_remaining = Some(budget.remaining);
            *self.budget.lock().unwrap_or_else(|e| e.into_inner()) = Some((budget, unix_ms()));
        }
        Ok(response)
    }

    /// Turns a final response into Ok (2xx, 404) or an error.
    async fn classify(
        &self,
        response: reqwest::Response,
    ) -> Result<reqwest::Response, UpstreamError> {
        let status = response.status();
        if status.is_success() || status == StatusCode::NOT_FOUND {
            self.record(Some(status.as_u16()), None);
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(parse_retry_after);
        // Only the start of an error body is read: a hostile or broken
        // upstream may send gigabytes; dropping the rest drops the connection.
        let body = read_prefix(response, MAX_ERROR_BODY_BYTES).await;
        let message = wharf_core::error::parse_error_body(&body)
            .map(|(code, message)| format!("{code}: {message}"))
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&body[..body.len().min(200)])
                    .trim()
                    .to_owned()
            });
        let err = match status {
            StatusCode::TOO_MANY_REQUESTS => {
                let secs = rate_limit_secs(retry_after);
                *self.blocked_until.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Instant::now() + Duration::from_secs(secs));
                UpstreamError::RateLimited { retry_after: secs }
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => UpstreamError::Unauthorized {
                status: status.as_u16(),
                message,
            },
            _ => UpstreamError::Status {
                status: status.as_u16(),
                message,
            },
        };
        self.record(Some(status.as_u16()), Some(err.to_string()));
        Err(err)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Refuses at once while the circuit is open (see `wharf_core::breaker`).
    fn check_circuit(&self) -> Result<(), UpstreamError> {
        let mut breaker = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        match breaker.admit(self.now_ms()) {
            Admit::Yes => Ok(()),
            Admit::Probe => {
                drop(breaker);
                tracing::info!(registry = %self.registry, "upstream circuit half-open: probing");
                self.circuit_changed("half_open");
                Ok(())
            }
            Admit::No { retry_after_ms } => {
                metrics::circuit_refused(&self.registry);
                Err(UpstreamError::CircuitOpen {
                    retry_after: retry_after_ms.div_ceil(1000).max(1),
                })
            }
        }
    }

    /// Feeds one request's outcome to the circuit breaker: `healthy` unless
    /// the upstream was unreachable, timed out or answered `5xx`.
    fn breaker_outcome(&self, healthy: bool) {
        let mut breaker = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        let transition = breaker.record(healthy, self.now_ms());
        drop(breaker);
        match transition {
            Transition::None => {}
            Transition::Opened => {
                tracing::warn!(registry = %self.registry, "upstream failed repeatedly: circuit open, skipping it for a while");
                metrics::circuit_opened(&self.registry);
                self.circuit_changed("open");
            }
            Transition::Closed => {
                tracing::info!(registry = %self.registry, "upstream answered the probe: circuit closed");
                self.circuit_changed("closed");
            }
        }
    }

    fn circuit_changed(&self, state: &'static str) {
        metrics::circuit_state(&self.registry, state);
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .circuit = state;
    }

    fn check_rate_limit(&self) -> Result<(), UpstreamError> {
        let mut blocked = self.blocked_until.lock().unwrap_or_else(|e| e.into_inner());
        match *blocked {
            Some(until) if until > Instant::now() => Err(UpstreamError::RateLimited {
                retry_after: until
                    .saturating_duration_since(Instant::now())
                    .as_secs()
                    .max(1),
            }),
            Some(_) => {
                *blocked = None;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn learn_scheme(&self, challenges: &[Challenge]) {
        let bearer = challenges
            .iter()
            .find(|c| c.scheme.eq_ignore_ascii_case("bearer"));
        if let Some(c) = bearer
            && let Some(realm) = c.realm()
        {
            self.tokens.set_scheme(Scheme::Bearer(BearerRealm {
                realm: realm.to_owned(),
                service: c.service().map(str::to_owned),
            }));
        } else if challenges
            .iter()
            .any(|c| c.scheme.eq_ignore_ascii_case("basic"))
        {
            self.tokens.set_scheme(Scheme::Basic);
        }
    }

    /// The `Authorization` value for a request in `scope`, fetching a token
    /// when the upstream uses bearer tokens and none is cached.
    async fn authorization(&self, scope: &str) -> Result<Option<HeaderValue>, UpstreamError> {
        match self.tokens.scheme() {
            Scheme::Unknown => Ok(None),
            Scheme::Basic => Ok(self.credentials.as_ref().map(basic)),
            Scheme::Bearer(realm) => {
                let now = Instant::now();
                let token = match self.tokens.token(scope, now) {
                    Some(token) => token,
                    None => {
                        let (token, lifetime) = self.fetch_token(&realm, scope).await?;
                        self.tokens.put(scope, token.clone(), lifetime, now);
                        token
                    }
                };
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .map(Some)
                    .map_err(|_| UpstreamError::Token {
                        realm: realm.realm,
                        message: "token is not a valid header value".into(),
                    })
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &BearerRealm,
        scope: &str,
    ) -> Result<(String, Duration), UpstreamError> {
        let token_error = |message: String| UpstreamError::Token {
            realm: realm.realm.clone(),
            message,
        };
        let mut url =
            Url::parse(&realm.realm).map_err(|e| token_error(format!("bad realm: {e}")))?;
        // The realm is named by the upstream: checked like a redirect, and
        // the rule's credentials go only where the policy says they may.
        let check = self
            .egress
            .check_realm(url.as_str(), self.learned())
            .map_err(|refusal| self.refused("token realm", refusal))?;
        if self.credentials.is_some() && !check.credentials {
            return Err(self.refused("token realm", check.credentials_refusal()));
        }
        url.set_query(Some(&token_request_query(realm.service.as_deref(), scope)));
        let mut request = self.http.get(url.clone());
        if let Some(credentials) = &self.credentials {
            request = request.basic_auth(&credentials.username, Some(&credentials.password));
        }
        let response = tokio::time::timeout(self.timeouts.response, request.send())
            .await
            .map_err(|_| token_error(format!("no answer within {:?}", self.timeouts.response)))?
            .map_err(|e| match refusal_in(&e) {
                // Logged and counted by the resolver already.
                Some(refusal) => UpstreamError::Refused {
                    what: "token realm",
                    refusal: refusal.clone(),
                },
                None => token_error(root_cause(&e)),
            })?;
        let status = response.status();
        metrics::upstream_token_request(&self.registry, status.as_str());
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let body = read_prefix(response, MAX_ERROR_BODY_BYTES).await;
            let message = wharf_core::error::parse_error_body(&body)
                .map(|(code, message)| format!("{code}: {message}"))
                .unwrap_or_else(|| format!("token server answered {status}"));
            return Err(UpstreamError::Unauthorized {
                status: status.as_u16(),
                message,
            });
        }
        if !status.is_success() {
            return Err(token_error(format!("answered {status}")));
        }
        let body = read_limited(response, MAX_TOKEN_BODY_BYTES)
            .await
            .map_err(|e| token_error(e.to_string()))?;
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| token_error(format!("bad token JSON: {e}")))?;
        let token = parsed
            .bearer()
            .ok_or_else(|| token_error("response has no token".into()))?
            .to_owned();
        // Clamped in the core to [60 s, 1 day]: `expires_in` may be 2^64 − 1.
        Ok((token, Duration::from_secs(parsed.lifetime_secs())))
    }

    /// What is known of the upstream's address classes.
    fn learned(&self) -> Classes {
        Classes::from_bits(self.learned.load(Ordering::Relaxed))
    }

    /// Logs and counts a refusal, and turns it into the request's error.
    fn refused(&self, what: &'static str, refusal: Refusal) -> UpstreamError {
        metrics::upstream_refused(&self.registry, refusal.reason());
        tracing::warn!(registry = %self.registry, what, %refusal, "upstream pointed somewhere the rule does not allow; refused");
        UpstreamError::Refused { what, refusal }
    }

    fn record(&self, status: Option<u16>, error: Option<String>) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.ok = error.is_none();
        health.status = status;
        health.error = error;
        health.at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
    }
}

/// The innermost error of a chain: reqwest's own text repeats the URL and
/// hides the useful part ("Connection refused", "dns error", …).
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn basic(credentials: &Credentials) -> HeaderValue {
    use base64::Engine;
    let raw = format!("{}:{}", credentials.username, credentials.password);
    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut value =
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap_or(HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// A URL without its query (presigned CDN URLs carry secrets there).
fn redact(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.to_string()
}

/// The egress refusal somewhere in an HTTP client error's chain (put there
/// by [`GuardedResolver`]).
fn refusal_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refusal> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(refused) = e.downcast_ref::<ResolveRefused>() {
            return Some(&refused.0);
        }
        cause = e.source();
    }
    None
}

/// Reads a response body of at most `limit` bytes, within
/// [`SMALL_BODY_DEADLINE`]; a longer one is an error (an announced length
/// over the limit is refused before any byte is read) and is never buffered
/// past the limit.
pub async fn read_limited(
    response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, UpstreamError> {
    let too_large = || UpstreamError::Body(format!("larger than the {limit}-byte limit"));
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = async {
        let mut body = BytesMut::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| UpstreamError::Body(root_cause(&e)))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(SMALL_BODY_DEADLINE, read)
        .await
        .unwrap_or_else(|_| {
            Err(UpstreamError::Body(format!(
                "not complete within {SMALL_BODY_DEADLINE:?}"
            )))
        })
}

/// The first `limit` bytes of a body (all of it when shorter), read within
/// [`SMALL_BODY_DEADLINE`]; errors end the read with what arrived.
async fn read_prefix(response: reqwest::Response, limit: usize) -> Bytes {
    let mut body = BytesMut::new();
    let read = async {
        let mut stream = response.bytes_stream();
        while let Some(Ok(chunk)) = stream.next().await {
            let room = limit - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(SMALL_BODY_DEADLINE, read).await;
    body.freeze()
}

/// The hosts of the proxies the HTTP client takes from the environment:
/// operator-configured, so resolved without the egress check.
fn proxy_hosts() -> Vec<String> {
    [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ]
    .iter()
    .filter_map(|var| std::env::var(var).ok())
    .filter_map(|v| Url::parse(&v).ok())
    .filter_map(|u| u.host_str().map(str::to_owned))
    .collect()
}

/// A resolver refusal, carried through the HTTP client's error chain.
#[derive(Debug)]
struct ResolveRefused(Refusal);

impl std::fmt::Display for ResolveRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ResolveRefused {}

/// The DNS resolver of one upstream's HTTP client: resolves with the
/// system resolver, then keeps only the addresses the rule's
/// [`EgressPolicy`] allows for that host. The connection is made to one of
/// the addresses checked here, so DNS rebinding between a check and the
/// connect cannot happen. Resolving the upstream's own host name teaches
/// the policy which classes the upstream is in.
struct GuardedResolver {
    registry: String,
    egress: Arc<EgressPolicy>,
    learned: Arc<AtomicU8>,
    trusted: Vec<String>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let egress = self.egress.clone();
        let learned = self.learned.clone();
        let trusted = self.trusted.iter().any(|t| t.eq_ignore_ascii_case(&host));
        let registry = self.registry.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if trusted {
                return Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs);
            }
            if egress.is_upstream_host(&host) {
                let classes = addrs
                    .iter()
                    .fold(Classes::EMPTY, |c, a| c.with(classify(a.ip())));
                learned.fetch_or(classes.bits(), Ordering::Relaxed);
                return Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs);
            }
            let known = Classes::from_bits(learned.load(Ordering::Relaxed));
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match egress.check_address(&host, a.ip(), known) {
                    Ok(()) => true,
                    Err(r) => {
                        refusal.get_or_insert(r);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refusal) {
                (true, Some(refusal)) => {
                    metrics::upstream_refused(&registry, refusal.reason());
                    tracing::warn!(registry, host, %refusal, "host resolves only to addresses the rule does not allow; refused");
                    Err(Box::new(ResolveRefused(refusal))
                        as Box<dyn std::error::Error + Send + Sync>)
                }
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// How long a `429` blocks requests: `Retry-After` (default a minute),
/// clamped to an hour, since the number is the upstream's.
fn rate_limit_secs(retry_after: Option<u64>) -> u64 {
    retry_after.unwrap_or(60).min(3600)
}

fn parse_retry_after(value: &HeaderValue) -> Option<u64> {
    let value = value.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs);
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

/// Docker Hub's `ratelimit-remaining: 76;w=21600`.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_credentials_only_on_the_same_origin() {
        let base = Url::parse("https://registry-1.docker.io").unwrap();
        assert!(same_origin(
            &Url::parse("https://registry-1.docker.io/v2/x").unwrap(),
            &base
        ));
        assert!(!same_origin(
            &Url::parse("https://cdn.example.com/blob").unwrap(),
            &base
        ));
        assert!(!same_origin(
            &Url::parse("http://registry-1.docker.io/v2/x").unwrap(),
            &base
        ));
        assert!(!same_origin(
            &Url::parse("https://registry-1.docker.io:8443/v2/x").unwrap(),
            &base
        ));
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("120")),
            Some(120)
        );
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT")),
            Some(0)
        );
        assert_eq!(parse_retry_after(&HeaderValue::from_static("soon")), None);
        // Hostile values parse without panicking and are clamped to an hour.
        for v in [
            "18446744073709551615",
            "99999999999999999999999",
            "-1",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            let secs = rate_limit_secs(parse_retry_after(&HeaderValue::from_static(v)));
            assert!(secs <= 3600, "{v}");
            let _ = Instant::now() + Duration::from_secs(secs);
        }
    }

    fn resolver(upstream: &str, allow: &[&str]) -> GuardedResolver {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        let egress = Arc::new(EgressPolicy::new(upstream, &allow).unwrap());
        GuardedResolver {
            registry: "test".into(),
            learned: Arc::new(AtomicU8::new(egress.upstream_classes().bits())),
            egress,
            trusted: Vec::new(),
        }
    }

    async fn resolve(r: &GuardedResolver, host: &str) -> Result<Vec<SocketAddr>, String> {
        use reqwest::dns::Resolve;
        match r.resolve(host.parse().unwrap()).await {
            Ok(addrs) => Ok(addrs.collect()),
            Err(e) => Err(refusal_in(&*e).map_or_else(|| e.to_string(), |r| r.to_string())),
        }
    }

    // `localhost` comes from /etc/hosts: no traffic, no DNS server needed.
    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_unless_the_upstream_is_there() {
        let err = resolve(&resolver("https://registry.example", &[]), "localhost")
            .await
            .unwrap_err();
        assert!(err.contains("loopback"), "{err}");
        let ok = resolve(&resolver("http://127.0.0.1:5000", &[]), "localhost").await;
        assert!(ok.is_ok_and(|a| !a.is_empty()));
        let ok = resolve(
            &resolver("https://registry.example", &["localhost"]),
            "localhost",
        )
        .await;
        assert!(ok.is_ok_and(|a| !a.is_empty()));
    }

    #[tokio::test]
    async fn the_upstream_host_is_trusted_and_teaches_its_classes() {
        let r = resolver("http://localhost:5000", &[]);
        r.learned.store(0, Ordering::Relaxed);
        assert!(resolve(&r, "localhost").await.is_ok());
        let learned = Classes::from_bits(r.learned.load(Ordering::Relaxed));
        assert!(learned.contains(wharf_core::egress::AddressClass::Loopback));
    }

    #[test]
    fn redacted_urls_drop_the_query() {
        let u = Url::parse("https://cdn.example.com/b?X-Amz-Signature=secret").unwrap();
        assert_eq!(redact(&u), "https://cdn.example.com/b");
    }
}
