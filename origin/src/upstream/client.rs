//! One upstream registry: requests with authentication, redirects, timeouts,
//! rate-limit handling and health bookkeeping.
//!
//! Redirects are followed by hand (the client is built with redirects off):
//! Docker Hub answers blob GETs with a redirect to a CDN, and credentials must
//! never be forwarded to another origin, so `Authorization` is only re-sent
//! when the redirect stays on the same scheme, host and port.
//!
//! A `429` records a "blocked until" instant from `Retry-After`; until then
//! requests fail fast with [`UpstreamError::RateLimited`] without spending
//! more of the upstream's budget, and callers fall back to stale content.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use wharf_core::RepositoryName;
use wharf_core::auth::{
    Challenge, TokenResponse, parse_www_authenticate, pull_scope, token_request_query,
};

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
            UpstreamError::RateLimited { retry_after } => Some(*retry_after),
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
}

/// A client for one upstream registry (one cache rule).
pub struct Upstream {
    registry: String,
    base: Url,
    http: reqwest::Client,
    credentials: Option<Credentials>,
    tokens: TokenCache,
    blocked_until: Mutex<Option<Instant>>,
    health: Mutex<UpstreamHealth>,
    timeouts: Timeouts,
}

const MAX_REDIRECTS: usize = 5;

impl Upstream {
    /// A client for the registry at `base` (e.g. `https://registry-1.docker.io`),
    /// labelled `registry` in metrics and logs.
    pub fn new(
        registry: &str,
        base: &str,
        credentials: Option<Credentials>,
        timeouts: Timeouts,
    ) -> anyhow::Result<Self> {
        let base = Url::parse(base)?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.idle_read)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            registry: registry.to_owned(),
            base,
            http,
            credentials,
            tokens: TokenCache::default(),
            blocked_until: Mutex::new(None),
            health: Mutex::new(UpstreamHealth {
                ok: true,
                status: None,
                error: None,
                at: None,
                ratelimit_remaining: None,
            }),
            timeouts,
        })
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
            return self.classify(response).await;
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
                return Err(err);
            }
            Ok(Err(source)) => {
                metrics::upstream_request(&self.registry, method.as_str(), "error");
                let err = UpstreamError::Unreachable {
                    url: redact(url),
                    cause: root_cause(&source),
                };
                self.record(None, Some(err.to_string()));
                return Err(err);
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        metrics::upstream_request(&self.registry, method.as_str(), status.as_str());
        if let Some(remaining) = ratelimit_remaining(response.headers()) {
            metrics::ratelimit_remaining(&self.registry, remaining as f64);
            self.health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .ratelimit_remaining = Some(remaining);
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
        let body = response.bytes().await.unwrap_or_default();
        let message = wharf_core::error::parse_error_body(&body)
            .map(|(code, message)| format!("{code}: {message}"))
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&body[..body.len().min(200)])
                    .trim()
                    .to_owned()
            });
        let err = match status {
            StatusCode::TOO_MANY_REQUESTS => {
                let secs = retry_after.unwrap_or(60).min(3600);
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
        url.set_query(Some(&token_request_query(realm.service.as_deref(), scope)));
        let mut request = self.http.get(url.clone());
        if let Some(credentials) = &self.credentials {
            request = request.basic_auth(&credentials.username, Some(&credentials.password));
        }
        let response = tokio::time::timeout(self.timeouts.response, request.send())
            .await
            .map_err(|_| token_error(format!("no answer within {:?}", self.timeouts.response)))?
            .map_err(|e| token_error(e.to_string()))?;
        let status = response.status();
        metrics::upstream_token_request(&self.registry, status.as_str());
        let body = response
            .bytes()
            .await
            .map_err(|e| token_error(e.to_string()))?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
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
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| token_error(format!("bad token JSON: {e}")))?;
        let token = parsed
            .bearer()
            .ok_or_else(|| token_error("response has no token".into()))?
            .to_owned();
        Ok((token, Duration::from_secs(parsed.lifetime_secs())))
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
fn ratelimit_remaining(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get("ratelimit-remaining")?.to_str().ok()?;
    value.split(';').next()?.trim().parse().ok()
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
    }

    #[test]
    fn ratelimit_header_is_parsed() {
        let mut h = HeaderMap::new();
        h.insert(
            "ratelimit-remaining",
            HeaderValue::from_static("76;w=21600"),
        );
        assert_eq!(ratelimit_remaining(&h), Some(76));
    }

    #[test]
    fn redacted_urls_drop_the_query() {
        let u = Url::parse("https://cdn.example.com/b?X-Amz-Signature=secret").unwrap();
        assert_eq!(redact(&u), "https://cdn.example.com/b");
    }
}
