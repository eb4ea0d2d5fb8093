//! The upstream registry a test pulls through: a real Distribution
//! (`docker-registry serve`) with filesystem storage, optionally behind a
//! Docker token server, always behind a counting, fault-injecting proxy.
//!
//! ```text
//!   origin ──► proxy (in-process, counts, faults) ──► docker-registry
//!                                                          │ 401 Bearer realm=…
//!   origin ──► token server (in-process, ES256 JWTs) ◄─────┘
//!   images::push ──► docker-registry directly (never counted)
//! ```
//!
//! # The token server
//!
//! Distribution 2.8 (`registry/auth/token/token.go`) verifies a token's
//! signing key in one of three ways: an `x5c` certificate chain that must
//! verify against `auth.token.rootcertbundle`, an embedded `jwk` or a
//! libtrust `kid` — the last two only against keys *derived from that same
//! bundle*. We take the `x5c` route because it is the standard JOSE header and
//! needs no libtrust key-id fingerprint: rcgen makes an EC P-256 key and a
//! self-signed certificate, the certificate is the registry's root bundle, and
//! every token carries it (DER, standard base64) in `x5c`. A self-signed leaf
//! that is itself in the root pool verifies in Go's `x509`. Tokens are ES256
//! (`r‖s` signatures, which is what libtrust verifies), with `iss`/`aud`
//! matching the registry's `issuer`/`service`, `nbf` a few seconds back, `exp`
//! five minutes ahead, and an `access` claim granting what was asked.
//!
//! # The proxy
//!
//! hyper on a listener we own, so [`Upstream::stop`] really closes the socket
//! (and every open connection: a pooled keep-alive connection must not
//! outlive an "outage") and [`Upstream::start`] binds the same port again.
//! Bodies stream through; faults rewrite the stream on the fly. One fault
//! keeps state across requests: [`Fault::DockerHubLimit`], a pull limit that
//! counts manifest `GET`s per window and answers `429` past it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};

use crate::process::Daemon;
use crate::{TestDir, free_port, require_tool, wait_until};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// The token service name the registry expects in `aud`.
pub const TOKEN_SERVICE: &str = "wharf-test-upstream";
/// The issuer the registry trusts.
pub const TOKEN_ISSUER: &str = "wharf-test-token-issuer";

/// How the upstream registry authenticates pulls.
#[derive(Clone, Debug)]
pub enum UpstreamAuth {
    /// No authentication: anyone may pull.
    Anonymous,
    /// Docker token auth; only these (user, password) pairs get tokens, and
    /// anonymous token requests are refused with 401.
    Token {
        /// Accepted Basic credentials.
        users: Vec<(String, String)>,
    },
}

/// A fault the proxy injects into what it forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything faithfully.
    None,
    /// Flip one byte of this blob's body (same length, wrong digest).
    CorruptBlob(String),
    /// Send half of this blob's body, then abort the connection.
    TruncateBlob(String),
    /// Flip one byte of every manifest `GET` body (same length, and the
    /// registry's `Docker-Content-Digest` no longer matches).
    CorruptManifests,
    /// Answer every request with this status and an OCI error body.
    Status(u16),
    /// Answer blob GETs with `307` to `<this base URL><path>` (a "CDN" on
    /// another host, as Docker Hub does), without contacting the registry.
    RedirectBlobs(String),
    /// Forward blob bodies at this many bytes per second (a slow upstream).
    SlowBlobs(u64),
    /// Answer every write (`PUT`, `POST`, `DELETE`) with this status, pass
    /// reads through (a store whose writes fail).
    FailWrites(u16),
    /// Forward every `GET` body at this many bytes per second (a slow store).
    SlowReads(u64),
    /// Forward everything; manifest answers carry Docker Hub's rate-limit
    /// headers (`ratelimit-limit: 100;w=21600`, `ratelimit-remaining:
    /// N;w=21600`) with this many remaining.
    RateLimitHeaders(u64),
    /// Docker Hub's pull limit, enforced: manifest `GET`s are counted, and
    /// once `limit` of them were made in the current window every further
    /// manifest `GET` is answered `429 TOOMANYREQUESTS` with `Retry-After`
    /// (the seconds until the window ends) without reaching the registry.
    /// `HEAD`s are free and always forwarded, as on Docker Hub. Every
    /// manifest answer, `429`s included, carries `ratelimit-limit:
    /// L;w=SECONDS` and `ratelimit-remaining: R;w=SECONDS`.
    ///
    /// The window is fixed: it starts at the first counted `GET` and the
    /// next one starts at the first `GET` after it ends (Docker Hub's is
    /// rolling). Setting a fault starts afresh; [`Proxy::limit_counts`]
    /// says how many `GET`s were let through and refused.
    DockerHubLimit {
        /// Manifest `GET`s allowed per window.
        limit: u64,
        /// The window (whole seconds in the headers).
        window: Duration,
    },
}

/// What an upstream request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `/v2/<name>/manifests/<reference>`
    Manifest,
    /// `/v2/<name>/blobs/<digest>` (not uploads)
    Blob,
    /// `/v2/<name>/tags/list`
    Tags,
    /// The token endpoint.
    Token,
    /// Anything else (`/v2/`, uploads, catalog, …).
    Other,
}

impl Kind {
    fn of(path: &str) -> Kind {
        if path == "/token" {
            Kind::Token
        } else if !path.starts_with("/v2/") {
            Kind::Other
        } else if path.contains("/manifests/") {
            Kind::Manifest
        } else if path.contains("/blobs/uploads") {
            Kind::Other
        } else if path.contains("/blobs/") {
            Kind::Blob
        } else if path.ends_with("/tags/list") {
            Kind::Tags
        } else {
            Kind::Other
        }
    }
}

/// One counted request shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey {
    /// HTTP method.
    pub method: String,
    /// What was asked for.
    pub kind: Kind,
    /// The path, without the query.
    pub path: String,
}

/// Requests the upstream saw since the last reset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts(pub BTreeMap<RequestKey, u64>);

impl Counts {
    /// All requests, token requests included.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Requests to the registry itself (everything but the token server).
    pub fn registry_total(&self) -> u64 {
        self.filter(|k| k.kind != Kind::Token)
    }

    /// Requests with this method and kind.
    pub fn get(&self, method: &str, kind: Kind) -> u64 {
        self.filter(|k| k.method == method && k.kind == kind)
    }

    /// Requests with this method and kind whose path ends with `suffix`
    /// (a digest, say).
    pub fn for_path(&self, method: &str, kind: Kind, suffix: &str) -> u64 {
        self.filter(|k| k.method == method && k.kind == kind && k.path.ends_with(suffix))
    }

    /// Sum over the keys `f` accepts.
    pub fn filter(&self, f: impl Fn(&RequestKey) -> bool) -> u64 {
        self.0.iter().filter(|(k, _)| f(k)).map(|(_, n)| n).sum()
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "(no upstream requests)");
        }
        for (k, n) in &self.0 {
            writeln!(
                f,
                "{n:>4} {:<6} {:<8} {}",
                k.method,
                format!("{:?}", k.kind),
                k.path
            )?;
        }
        Ok(())
    }
}

/// What [`Fault::DockerHubLimit`] did since the last reset of the counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitCounts {
    /// Manifest `GET`s let through (each spent one unit of the budget).
    pub allowed: u64,
    /// Manifest `GET`s answered `429` without reaching the registry.
    pub refused: u64,
}

/// The budget of [`Fault::DockerHubLimit`].
#[derive(Default)]
struct Limiter {
    /// When the current window started (its first counted `GET`); `None`
    /// between windows.
    started: Option<Instant>,
    /// `GET`s let through in the current window.
    used: u64,
    counts: LimitCounts,
}

impl Limiter {
    /// Decides one manifest request at `now`: `Ok(remaining)` to forward it
    /// (the budget left after it), `Err(retry_after_secs)` to refuse it.
    fn admit(&mut self, get: bool, limit: u64, window: Duration, now: Instant) -> Result<u64, u64> {
        if self
            .started
            .is_some_and(|s| now.duration_since(s) >= window)
        {
            self.started = None;
            self.used = 0;
        }
        if !get {
            return Ok(limit.saturating_sub(self.used));
        }
        if self.used >= limit {
            self.counts.refused += 1;
            let left = self
                .started
                .map_or(window, |s| (s + window).saturating_duration_since(now));
            // Rounded up: a client that waits this long finds a new window.
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            return Err(secs.max(1));
        }
        self.started.get_or_insert(now);
        self.used += 1;
        self.counts.allowed += 1;
        Ok(limit - self.used)
    }
}

/// State shared by the proxy and the token server.
#[derive(Default)]
struct Shared {
    counts: Mutex<BTreeMap<RequestKey, u64>>,
    /// `METHOD path?query` of every request, in arrival order.
    log: Mutex<Vec<String>>,
    fault: Mutex<Option<Fault>>,
    limiter: Mutex<Limiter>,
    /// Requests being answered now (until their body is sent or dropped),
    /// and the most there were at once since the last reset.
    in_flight: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

/// One request being answered; leaving lowers the count.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> InFlight {
        use std::sync::atomic::Ordering::SeqCst;
        let now = shared.in_flight.fetch_add(1, SeqCst) + 1;
        shared.peak.fetch_max(now, SeqCst);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Shared {
    fn count(&self, method: &Method, path: &str, query: Option<&str>) -> Kind {
        let kind = Kind::of(path);
        let line = match query {
            Some(q) => format!("{method} {path}?{q}"),
            None => format!("{method} {path}"),
        };
        self.log.lock().unwrap().push(line);
        let key = RequestKey {
            method: method.as_str().to_owned(),
            kind,
            path: path.to_owned(),
        };
        *self.counts.lock().unwrap().entry(key).or_default() += 1;
        kind
    }

    fn fault(&self) -> Fault {
        self.fault.lock().unwrap().clone().unwrap_or(Fault::None)
    }

    /// A new fault, and a new window for [`Fault::DockerHubLimit`].
    fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap() = Some(fault);
        let mut limiter = self.limiter.lock().unwrap();
        limiter.started = None;
        limiter.used = 0;
    }

    fn reset_counts(&self) {
        self.counts.lock().unwrap().clear();
        self.log.lock().unwrap().clear();
        self.limiter.lock().unwrap().counts = LimitCounts::default();
        use std::sync::atomic::Ordering::SeqCst;
        self.peak.store(self.in_flight.load(SeqCst), SeqCst);
    }
}

/// A running upstream registry with its proxy (and token server).
///
/// Dropping it stops the proxy, the token server and the registry.
pub struct Upstream {
    proxy: Proxy,
    token: Option<TokenServer>,
    shared: Arc<Shared>,
    registry_addr: SocketAddr,
    registry: Daemon,
    dir: PathBuf,
}

impl Upstream {
    /// Starts Distribution with storage under `<test dir>/upstream`, the
    /// token server if `auth` asks for one, and the proxy in front.
    pub async fn start(dir: &TestDir, auth: UpstreamAuth) -> Result<Upstream> {
        Upstream::start_in(dir, "upstream", auth).await
    }

    /// Like [`Upstream::start`], with storage, config and logs under
    /// `<test dir>/<sub>`: several upstreams in one test (a public and a
    /// private registry) each need their own.
    pub async fn start_in(dir: &TestDir, sub: &str, auth: UpstreamAuth) -> Result<Upstream> {
        let bin = require_tool("docker-registry", "docker-registry")?;
        let up_dir = dir.sub(sub);
        let shared = Arc::new(Shared::default());

        let token = match auth {
            UpstreamAuth::Anonymous => None,
            UpstreamAuth::Token { users } => {
                Some(TokenServer::start(&up_dir, users, shared.clone()).await?)
            }
        };

        // The registry's port is picked by binding :0 and releasing it; a
        // concurrent test may grab it in between, so retry on a bind failure.
        let mut attempt = 0;
        let (registry, registry_addr) = loop {
            attempt += 1;
            let port = free_port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let config = registry_config(&up_dir, addr, token.as_ref());
            let config_path = up_dir.join("config.yml");
            std::fs::write(&config_path, config)?;
            let mut cmd = Command::new(&bin);
            cmd.arg("serve").arg(&config_path).current_dir(&up_dir);
            let log = up_dir.join(format!("registry-{attempt}.log"));
            let mut daemon = Daemon::spawn("docker-registry", cmd, &log, Duration::from_secs(5))?;
            match wait_registry(&mut daemon, addr).await {
                Ok(()) => break (daemon, addr),
                Err(e) if attempt < 3 => {
                    eprintln!("docker-registry did not come up on {addr} ({e:#}); retrying");
                    daemon.stop();
                }
                Err(e) => bail!("{e:#}\n{}", daemon.log_tail(30)),
            }
        };

        let proxy = Proxy::launch(registry_addr, shared.clone()).await?;
        Ok(Upstream {
            proxy,
            token,
            shared,
            registry_addr,
            registry,
            dir: up_dir,
        })
    }

    /// The proxy's URL (`http://127.0.0.1:PORT`): what origins are pointed at.
    pub fn url(&self) -> String {
        format!("http://{}", self.proxy.addr)
    }

    /// The proxy's `127.0.0.1:PORT`, as a registry host in image references.
    pub fn host(&self) -> String {
        self.proxy.addr.to_string()
    }

    /// The registry's own URL, for seeding: requests here are not counted
    /// and not subject to faults.
    pub fn push_url(&self) -> String {
        format!("http://{}", self.registry_addr)
    }

    /// The registry process's pid, while it runs.
    pub fn registry_pid(&self) -> Option<u32> {
        self.registry.pid()
    }

    /// The registry's own address (see [`Upstream::push_url`]).
    pub fn registry_addr(&self) -> SocketAddr {
        self.registry_addr
    }

    /// Another counting proxy in front of this registry, with counts of its
    /// own and no faults: one per client under comparison (the benchmark
    /// gives each cache its own, so their upstream requests never mix).
    pub async fn counting_proxy(&self) -> Result<Proxy> {
        Proxy::counting(self.registry_addr).await
    }

    /// The token server's URL, when the upstream uses token auth.
    pub fn token_url(&self) -> Option<String> {
        self.token
            .as_ref()
            .map(|t| format!("http://{}/token", t.addr))
    }

    /// The upstream's working directory (config, logs, storage).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Requests seen since the last [`Upstream::reset_counts`].
    pub fn counts(&self) -> Counts {
        Counts(self.shared.counts.lock().unwrap().clone())
    }

    /// Forgets all counted requests (the peak of requests at once and
    /// [`Upstream::limit_counts`] too).
    pub fn reset_counts(&self) {
        self.shared.reset_counts();
    }

    /// The most requests the registry's proxy was answering at once since
    /// the last reset ([`Proxy::peak_in_flight`]).
    pub fn peak_in_flight(&self) -> usize {
        self.proxy().peak_in_flight()
    }

    /// What [`Fault::DockerHubLimit`] let through and refused since the last
    /// reset.
    pub fn limit_counts(&self) -> LimitCounts {
        self.shared.limiter.lock().unwrap().counts
    }

    /// `METHOD path?query` of every request since the last reset, in order
    /// (to check query parameters such as containerd's `ns=`).
    pub fn request_log(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Token requests since the last reset.
    pub fn token_requests(&self) -> u64 {
        self.counts().filter(|k| k.kind == Kind::Token)
    }

    /// Sets the fault the proxy injects from now on (open responses keep
    /// the fault they started with).
    pub fn set_fault(&self, fault: Fault) {
        self.shared.set_fault(fault);
    }

    /// The proxy in front of the registry: [`Proxy::stop`] takes the
    /// upstream down, [`Proxy::start`] brings it back.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// The `Authorization` header value for pushing to (and pulling from)
    /// `repo` at [`Upstream::push_url`], minted in-process so that seeding
    /// never shows in the token counts. `None` for an anonymous registry.
    pub fn push_authorization(&self, repo: &str) -> Option<String> {
        let token = self.token.as_ref()?;
        let access = vec![Access {
            kind: "repository".into(),
            name: repo.into(),
            actions: vec!["pull".into(), "push".into()],
        }];
        let jwt = token
            .ctx
            .mint("wharf-test-seeder", access)
            .expect("minting a seeding token");
        Some(format!("Bearer {jwt}"))
    }

    /// The registry's log.
    pub fn registry_log(&self) -> String {
        self.registry.log()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.proxy.abort();
        if let Some(t) = &self.token {
            t.handle.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.abort();
    }
}

fn registry_config(dir: &Path, addr: SocketAddr, token: Option<&TokenServer>) -> String {
    let storage = dir.join("storage");
    let mut cfg = format!(
        r#"version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: wharf-test-secret
"#,
        storage = storage.display()
    );
    if let Some(t) = token {
        cfg.push_str(&format!(
            r#"auth:
  token:
    realm: http://{addr}/token
    service: {TOKEN_SERVICE}
    issuer: {TOKEN_ISSUER}
    rootcertbundle: {bundle}
"#,
            addr = t.addr,
            bundle = t.cert_path.display()
        ));
    }
    cfg
}

async fn wait_registry(daemon: &mut Daemon, addr: SocketAddr) -> Result<()> {
    let client = crate::http_client();
    let url = format!("http://{addr}/v2/");
    let mut exited = None;
    let r = wait_until(
        "docker-registry to answer /v2/",
        Duration::from_secs(20),
        || {
            exited = exited.or(daemon.exited());
            let client = client.clone();
            let url = url.clone();
            let dead = exited;
            async move {
                if let Some(status) = dead {
                    bail!("docker-registry exited: {status}");
                }
                let resp = client.get(&url).send().await?;
                Ok(matches!(resp.status().as_u16(), 200 | 401))
            }
        },
    )
    .await;
    if let Some(status) = exited {
        bail!("docker-registry exited: {status}");
    }
    r
}

// ---------------------------------------------------------------------------
// Proxy

/// The counting, fault-injecting proxy in front of the registry.
pub struct Proxy {
    addr: SocketAddr,
    ctx: Arc<ProxyCtx>,
    running: tokio::sync::Mutex<Option<Running>>,
}

struct ProxyCtx {
    target: SocketAddr,
    shared: Arc<Shared>,
    client: Client<HttpConnector, Incoming>,
}

struct Running {
    accept: JoinHandle<()>,
    conns: Arc<Mutex<JoinSet<()>>>,
}

impl Proxy {
    /// Injects `fault` into what this proxy forwards from now on.
    pub fn set_fault(&self, fault: Fault) {
        self.ctx.shared.set_fault(fault);
    }

    async fn launch(target: SocketAddr, shared: Arc<Shared>) -> Result<Proxy> {
        let listener = bind_reusable(([127, 0, 0, 1], 0).into())?;
        let addr = listener.local_addr()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let ctx = Arc::new(ProxyCtx {
            target,
            shared,
            client,
        });
        let running = Running::spawn(listener, ctx.clone());
        Ok(Proxy {
            addr,
            ctx,
            running: tokio::sync::Mutex::new(Some(running)),
        })
    }

    /// A counting proxy, with counts of its own, in front of any plain-HTTP
    /// registry at `target`; stopped on drop.
    pub async fn counting(target: SocketAddr) -> Result<Proxy> {
        Proxy::launch(target, Arc::new(Shared::default())).await
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, as a registry host in image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Requests this proxy's counts have seen since the last reset (for the
    /// proxy of an [`Upstream`], the token server's requests too).
    pub fn counts(&self) -> Counts {
        Counts(self.ctx.shared.counts.lock().unwrap().clone())
    }

    /// Forgets the counted requests (the peak of requests at once and
    /// [`Proxy::limit_counts`] too).
    pub fn reset_counts(&self) {
        self.ctx.shared.reset_counts();
    }

    /// The most requests this proxy was answering at once (from the first
    /// byte of a request to the last of its response) since the last reset.
    pub fn peak_in_flight(&self) -> usize {
        self.ctx
            .shared
            .peak
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// What [`Fault::DockerHubLimit`] let through and refused since the last
    /// reset.
    pub fn limit_counts(&self) -> LimitCounts {
        self.ctx.shared.limiter.lock().unwrap().counts
    }

    /// Closes the listening socket and every open connection: the upstream
    /// is down (connection refused) until [`Proxy::start`].
    pub async fn stop(&self) {
        if let Some(running) = self.running.lock().await.take() {
            running.accept.abort();
            let _ = running.accept.await;
            let mut conns = std::mem::take(&mut *running.conns.lock().unwrap());
            conns.shutdown().await;
        }
    }

    /// Reopens the listening socket on the same port.
    pub async fn start(&self) -> Result<()> {
        let mut running = self.running.lock().await;
        if running.is_none() {
            // The port was ours a moment ago; SO_REUSEADDR lets us take it
            // back despite connections in TIME_WAIT.
            let listener = bind_reusable(self.addr)
                .with_context(|| format!("rebinding the upstream proxy on {}", self.addr))?;
            *running = Some(Running::spawn(listener, self.ctx.clone()));
        }
        Ok(())
    }

    fn abort(&self) {
        if let Ok(mut running) = self.running.try_lock()
            && let Some(r) = running.take()
        {
            r.accept.abort();
            r.conns.lock().unwrap().abort_all();
        }
    }
}

fn bind_reusable(addr: SocketAddr) -> Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(1024)?)
}

impl Running {
    fn spawn(listener: TcpListener, ctx: Arc<ProxyCtx>) -> Running {
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let set = conns.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let ctx = ctx.clone();
                let mut set = set.lock().unwrap();
                while set.try_join_next().is_some() {}
                set.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move {
                            let in_flight = InFlight::enter(&ctx.shared);
                            let response = ctx.handle(req).await;
                            // Held by the body: hyper drops it once sent.
                            Ok::<_, Infallible>(response.map(move |body| {
                                body.map_frame(move |frame| {
                                    let _ = &in_flight;
                                    frame
                                })
                                .boxed()
                            }))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Running { accept, conns }
    }
}

/// Headers that belong to one hop and must not be forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(Full::new(body.into()).map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap(),
    );
    resp
}

/// Docker Hub's `ratelimit-limit: L;w=SECONDS` and `ratelimit-remaining:
/// R;w=SECONDS`.
fn rate_limit_headers(headers: &mut HeaderMap, limit: u64, window_secs: u64, remaining: u64) {
    for (name, n) in [
        ("ratelimit-limit", limit),
        ("ratelimit-remaining", remaining),
    ] {
        if let Ok(v) = HeaderValue::from_str(&format!("{n};w={window_secs}")) {
            headers.insert(name, v);
        }
    }
}

fn oci_error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
    full(status, "application/json", body.to_string())
}

impl ProxyCtx {
    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let kind = self.shared.count(&method, &path, req.uri().query());
        let fault = self.shared.fault();

        if let Fault::Status(code) = fault {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let code = match code {
                429 => "TOOMANYREQUESTS",
                401 => "UNAUTHORIZED",
                403 => "DENIED",
                _ => "UNAVAILABLE",
            };
            let mut resp = oci_error(status, code, "fault injected by the wharf test proxy");
            if status == StatusCode::TOO_MANY_REQUESTS {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            return resp;
        }

        if let Fault::FailWrites(code) = fault
            && matches!(method, Method::PUT | Method::POST | Method::DELETE)
        {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return full(
                status,
                "application/xml",
                "<Error><Code>ServiceUnavailable</Code><Message>fault injected by the wharf test proxy</Message></Error>",
            );
        }

        if let Fault::RedirectBlobs(cdn) = &fault
            && method == Method::GET
            && kind == Kind::Blob
        {
            let mut resp = full(StatusCode::TEMPORARY_REDIRECT, "text/plain", String::new());
            if let Ok(v) = HeaderValue::from_str(&format!("{cdn}{path}")) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            return resp;
        }

        // Docker Hub's limit is decided before the registry is asked.
        let budget = match fault {
            Fault::DockerHubLimit { limit, window } if kind == Kind::Manifest => {
                let w = window.as_secs().max(1);
                let admitted = self.shared.limiter.lock().unwrap().admit(
                    method == Method::GET,
                    limit,
                    window,
                    Instant::now(),
                );
                match admitted {
                    Ok(remaining) => Some((limit, w, remaining)),
                    Err(retry_after) => {
                        let mut resp = oci_error(
                            StatusCode::TOO_MANY_REQUESTS,
                            "TOOMANYREQUESTS",
                            "You have reached your pull rate limit (wharf test proxy)",
                        );
                        let headers = resp.headers_mut();
                        rate_limit_headers(headers, limit, w, 0);
                        headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                        return resp;
                    }
                }
            }
            Fault::RateLimitHeaders(remaining) if kind == Kind::Manifest => {
                Some((100, 21600, remaining))
            }
            _ => None,
        };

        let (mut parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned();
        parts.uri = match format!("http://{}{pq}", self.target).parse() {
            Ok(uri) => uri,
            Err(e) => return oci_error(StatusCode::BAD_REQUEST, "UNSUPPORTED", &e.to_string()),
        };
        strip_hop_by_hop(&mut parts.headers);
        // The Host header is kept: the registry builds Location URLs from it,
        // which then point back through the proxy.
        let upstream = match self.client.request(Request::from_parts(parts, body)).await {
            Ok(resp) => resp,
            Err(e) => {
                return oci_error(
                    StatusCode::BAD_GATEWAY,
                    "UNAVAILABLE",
                    &format!("test proxy could not reach the registry: {e}"),
                );
            }
        };
        let (mut parts, body) = upstream.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some((limit, window, remaining)) = budget {
            rate_limit_headers(&mut parts.headers, limit, window, remaining);
        }

        let faulty_blob = |d: &str| {
            method == Method::GET
                && kind == Kind::Blob
                && parts.status == StatusCode::OK
                && path.ends_with(&format!("/blobs/{d}"))
        };
        let body: ProxyBody = match &fault {
            Fault::CorruptBlob(d) if faulty_blob(d) => corrupt(body),
            Fault::CorruptManifests
                if method == Method::GET
                    && kind == Kind::Manifest
                    && parts.status == StatusCode::OK =>
            {
                corrupt(body)
            }
            Fault::SlowBlobs(rate) if method == Method::GET && kind == Kind::Blob => {
                throttle(body, *rate)
            }
            Fault::SlowReads(rate) if method == Method::GET => throttle(body, *rate),
            Fault::TruncateBlob(d) if faulty_blob(d) => {
                let len = parts
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(2);
                truncate(body, len / 2)
            }
            _ => body.map_err(|e| Box::new(e) as BoxError).boxed(),
        };
        Response::from_parts(parts, body)
    }
}

/// Forwards the body at about `rate` bytes per second, in 64 KiB slices.
fn throttle(body: Incoming, rate: u64) -> ProxyBody {
    let rate = rate.max(1);
    let stream = body.into_data_stream().flat_map(move |chunk| {
        let slices: Vec<Result<Frame<Bytes>, BoxError>> = match chunk {
            Ok(chunk) => (0..chunk.len())
                .step_by(64 * 1024)
                .map(|i| {
                    Ok(Frame::data(
                        chunk.slice(i..(i + 64 * 1024).min(chunk.len())),
                    ))
                })
                .collect(),
            Err(e) => vec![Err(Box::new(e) as BoxError)],
        };
        futures::stream::iter(slices).then(move |frame| async move {
            if let Ok(f) = &frame
                && let Some(d) = f.data_ref()
            {
                tokio::time::sleep(Duration::from_secs_f64(d.len() as f64 / rate as f64)).await;
            }
            frame
        })
    });
    http_body_util::BodyExt::boxed(StreamBody::new(stream))
}

/// Flips one byte in the middle of the first non-empty chunk.
fn corrupt(body: Incoming) -> ProxyBody {
    let mut done = false;
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(|e| Box::new(e) as BoxError)?;
        if done || chunk.is_empty() {
            return Ok(Frame::data(chunk));
        }
        done = true;
        let mut v = chunk.to_vec();
        let i = v.len() / 2;
        v[i] ^= 0xff;
        Ok(Frame::data(Bytes::from(v)))
    });
    http_body_util::BodyExt::boxed(StreamBody::new(stream))
}

/// Passes `keep` bytes, then fails the body (hyper then drops the
/// connection mid-response, as a dying upstream would). The failure waits a
/// moment so that headers and the first half really reach the client first.
fn truncate(body: Incoming, keep: u64) -> ProxyBody {
    let stream = futures::stream::unfold(
        (body.into_data_stream(), 0u64, false),
        move |(mut body, sent, failed)| async move {
            if failed {
                return None;
            }
            match body.next().await {
                Some(Ok(chunk)) if sent < keep => {
                    let room = (keep - sent).min(chunk.len() as u64) as usize;
                    Some((
                        Ok(Frame::data(chunk.slice(..room))),
                        (body, sent + room as u64, false),
                    ))
                }
                Some(Err(e)) => Some((Err(Box::new(e) as BoxError), (body, sent, true))),
                _ => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let e: BoxError = "fault injected: blob truncated".into();
                    Some((Err(e), (body, sent, true)))
                }
            }
        },
    );
    http_body_util::BodyExt::boxed(StreamBody::new(stream))
}

// ---------------------------------------------------------------------------
// Token server

struct TokenServer {
    addr: SocketAddr,
    cert_path: PathBuf,
    ctx: Arc<TokenCtx>,
    handle: JoinHandle<()>,
}

struct TokenCtx {
    users: Vec<(String, String)>,
    key: jsonwebtoken::EncodingKey,
    /// The certificate, DER in standard base64, for the `x5c` header.
    x5c: String,
    shared: Arc<Shared>,
}

/// One `access` claim entry (distribution's `ResourceActions`).
#[derive(Clone, Debug, serde::Serialize)]
struct Access {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    actions: Vec<String>,
}

#[derive(serde::Serialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<Access>,
}

impl TokenServer {
    async fn start(dir: &Path, users: Vec<(String, String)>, shared: Arc<Shared>) -> Result<Self> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(vec!["wharf-test-token".to_owned()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wharf test token issuer");
        let cert = params.self_signed(&key)?;
        let cert_path = dir.join("token-cert.pem");
        std::fs::write(&cert_path, cert.pem())?;
        let ctx = Arc::new(TokenCtx {
            users,
            key: jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())?,
            x5c: base64::engine::general_purpose::STANDARD.encode(cert.der()),
            shared,
        });

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token_handler))
            .with_state(ctx.clone());
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(TokenServer {
            addr,
            cert_path,
            ctx,
            handle,
        })
    }
}

impl TokenCtx {
    fn mint(&self, subject: &str, access: Vec<Access>) -> Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = Claims {
            iss: TOKEN_ISSUER.into(),
            sub: subject.into(),
            aud: TOKEN_SERVICE.into(),
            exp: now + 300,
            nbf: now - 5,
            iat: now,
            jti: hex::encode(rand::random::<[u8; 16]>()),
            access,
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.x5c = Some(vec![self.x5c.clone()]);
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }

    fn check_basic(&self, headers: &HeaderMap) -> Option<String> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let encoded = value
            .strip_prefix("Basic ")
            .or_else(|| value.strip_prefix("basic "))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, pass) = decoded.split_once(':')?;
        self.users
            .iter()
            .any(|(u, p)| u == user && p == pass)
            .then(|| user.to_owned())
    }
}

/// Parses `repository:name:pull,push` scopes (several per parameter,
/// space separated, or several parameters).
fn parse_scopes(params: &[(String, String)]) -> Vec<Access> {
    params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|scope| {
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(Access {
                kind: kind.to_owned(),
                name: name.to_owned(),
                actions: actions
                    .split(',')
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })
        .collect()
}

async fn token_handler(
    axum::extract::State(ctx): axum::extract::State<Arc<TokenCtx>>,
    axum::extract::Query(params): axum::extract::Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response<axum::body::Body> {
    ctx.shared.count(&Method::GET, "/token", None);
    let json = |status: StatusCode, v: serde_json::Value| {
        let mut r = Response::new(axum::body::Body::from(v.to_string()));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let service = params
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.as_str());
    if service.is_some_and(|s| s != TOKEN_SERVICE) {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"errors": [{"code": "DENIED", "message": "unknown service"}]}),
        );
    }
    let Some(user) = ctx.check_basic(&headers) else {
        let mut r = json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"errors": [{"code": "UNAUTHORIZED",
                "message": "authentication required: this registry refuses anonymous tokens"}]}),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"wharf-test-token\""),
        );
        return r;
    };
    match ctx.mint(&user, parse_scopes(&params)) {
        Ok(token) => json(
            StatusCode::OK,
            serde_json::json!({"token": token, "access_token": token, "expires_in": 300}),
        ),
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"errors": [{"code": "UNKNOWN", "message": e.to_string()}]}),
        ),
    }
}

/// Fetches a token the way a client would (Basic auth when `creds` is
/// given), for tests of the token server itself.
pub async fn fetch_token(realm: &str, scope: &str, creds: Option<(&str, &str)>) -> Result<String> {
    let mut req = crate::http_client()
        .get(realm)
        .query(&[("service", TOKEN_SERVICE), ("scope", scope)]);
    if let Some((u, p)) = creds {
        req = req.basic_auth(u, Some(p));
    }
    let resp = req.send().await?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await?;
    if !status.is_success() {
        return Err(anyhow!("token request failed: {status} {body}"));
    }
    body["token"]
        .as_str()
        .map(str::to_owned)
        .context("token response without `token`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_registry_paths() {
        for (path, kind) in [
            ("/v2/", Kind::Other),
            ("/v2/a/b/manifests/v1", Kind::Manifest),
            ("/v2/a/manifests/sha256:abc", Kind::Manifest),
            ("/v2/a/blobs/sha256:abc", Kind::Blob),
            ("/v2/a/blobs/uploads/", Kind::Other),
            ("/v2/a/blobs/uploads/uuid", Kind::Other),
            ("/v2/a/b/tags/list", Kind::Tags),
            ("/v2/_catalog", Kind::Other),
            ("/token", Kind::Token),
        ] {
            assert_eq!(Kind::of(path), kind, "{path}");
        }
    }

    #[test]
    fn the_limit_counts_gets_in_a_fixed_window_and_heads_are_free() {
        let (limit, window) = (2, Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut l = Limiter::default();
        assert_eq!(
            l.admit(false, limit, window, at(0)),
            Ok(2),
            "a HEAD is free"
        );
        assert_eq!(l.admit(true, limit, window, at(1_000)), Ok(1));
        assert_eq!(l.admit(true, limit, window, at(2_000)), Ok(0));
        assert_eq!(l.admit(false, limit, window, at(2_500)), Ok(0));
        // The window started at the first GET (1 s): 8.5 s left, rounded up.
        assert_eq!(l.admit(true, limit, window, at(2_500)), Err(9));
        assert_eq!(l.admit(true, limit, window, at(10_999)), Err(1));
        assert_eq!(
            l.admit(true, limit, window, at(11_000)),
            Ok(1),
            "a new window"
        );
        assert_eq!(
            l.counts,
            LimitCounts {
                allowed: 3,
                refused: 2
            }
        );
    }

    #[test]
    fn parses_token_scopes() {
        let params = vec![
            ("service".to_owned(), TOKEN_SERVICE.to_owned()),
            ("scope".to_owned(), "repository:a/b:pull,push".to_owned()),
            (
                "scope".to_owned(),
                "repository:c:pull registry:catalog:*".to_owned(),
            ),
        ];
        let scopes: Vec<(String, String, Vec<String>)> = parse_scopes(&params)
            .into_iter()
            .map(|a| (a.kind, a.name, a.actions))
            .collect();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            scopes,
            vec![
                ("repository".into(), "a/b".into(), s(&["pull", "push"])),
                ("repository".into(), "c".into(), s(&["pull"])),
                ("registry".into(), "catalog".into(), s(&["*"])),
            ]
        );
    }
}
