//! A hostile upstream (issue 12): a small HTTP server that answers the
//! registry API the way a broken or malicious registry might — redirects to
//! loopback, gigabyte error bodies, oversized manifests, absurd token
//! lifetimes, token realms on plain http — and records every request it
//! gets (with its `Authorization`), so a test can show what the origin sent
//! where.
//!
//! To be an upstream that is *not* on loopback without sending traffic off
//! the machine, [`Netns`] creates a network namespace joined to this one by a
//! veth pair on `198.18.0.0/15` (the benchmarking range, unlikely to clash
//! with a real network); [`Netns::bind`] opens a listening socket inside it
//! from a thread that enters the namespace (a socket stays in the namespace
//! it was created in), so the server itself runs in the test process. The
//! namespace and the veth pair are removed on drop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::task::JoinHandle;

/// One request a [`Hostile`] server received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

/// How a [`Hostile`] server answers. `/v2/` always answers `200 {}`.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Answers everything with `200 ok` (a service that must not be reached).
    Victim,
    /// Blob GETs of `<first>/…/blobs/<digest>` are redirected to
    /// `http://<first>:<port>/stolen`, so the repository name picks the
    /// redirect's host spelling (`127.0.0.1`, `localhost`, `2130706433`, …);
    /// `self/…` is redirected to this server's own `/real-blob`, which
    /// serves [`Behaviour::RedirectBlobs::blob`].
    RedirectBlobs {
        /// Port of the service the redirects point at.
        port: u16,
        /// The bytes `/real-blob` serves.
        blob: Bytes,
    },
    /// Every registry request is answered `status` with a body of `len`
    /// bytes generated as it is sent (never held in memory), with its
    /// `Content-Length`.
    HugeError {
        /// The status, e.g. 500.
        status: u16,
        /// Body length.
        len: u64,
    },
    /// Manifest requests are answered `200` with a manifest media type and
    /// `len` bytes of JSON-ish filler, generated as sent; with
    /// `Content-Length` for `cl/…` repositories, chunked otherwise.
    HugeManifest {
        /// Body length.
        len: u64,
    },
    /// Registry requests without `Authorization: Bearer <token>` get `401`
    /// with `Bearer realm="<realm>",service="hostile"`; with it, manifest
    /// requests get [`small_manifest`].
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// The token it issues.
        token: String,
    },
    /// A token endpoint: answers `{"token": <token>, "expires_in": <raw>}`
    /// with `expires_in` spliced in as raw JSON.
    TokenServer {
        /// The token.
        token: String,
        /// Raw JSON for `expires_in`.
        expires_in: String,
    },
}

struct Ctx {
    behaviour: Behaviour,
    addr: SocketAddr,
    seen: Mutex<Vec<Seen>>,
}

/// A running hostile server; stopped on drop.
pub struct Hostile {
    ctx: Arc<Ctx>,
    task: JoinHandle<()>,
}

impl Hostile {
    /// Serves `behaviour` on `listener` (from [`Netns::bind`] or a loopback
    /// bind; it must be non-blocking).
    pub fn start(listener: std::net::TcpListener, behaviour: Behaviour) -> Result<Hostile> {
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let ctx = Arc::new(Ctx {
            behaviour,
            addr,
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(serve).with_state(ctx.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Hostile { ctx, task })
    }

    /// Binds `ip:0` on this host (loopback) and serves `behaviour`.
    pub fn on_loopback(ip: Ipv4Addr, behaviour: Behaviour) -> Result<Hostile> {
        let listener =
            std::net::TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))?;
        listener.set_nonblocking(true)?;
        Hostile::start(listener, behaviour)
    }

    /// `http://ip:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.ctx.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.ctx.addr
    }

    /// Every request received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.ctx.seen.lock().unwrap().clone()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A small, valid OCI image manifest and its digest.
pub fn small_manifest() -> (Bytes, String) {
    let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    (Bytes::from_static(body), crate::sha256_digest(body))
}

static FILLER: [u8; 64 * 1024] = [b' '; 64 * 1024];

/// `len` bytes of spaces, produced 64 KiB at a time as the body is sent.
fn lazy_body(len: u64) -> Body {
    let chunks = len.div_ceil(FILLER.len() as u64);
    let stream = futures::stream::iter((0..chunks).map(move |i| {
        let start = i * FILLER.len() as u64;
        let n = (len - start).min(FILLER.len() as u64) as usize;
        Ok::<_, std::io::Error>(Bytes::from_static(&FILLER[..n]))
    }));
    Body::from_stream(stream)
}

async fn serve(State(ctx): State<Arc<Ctx>>, request: Request) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let path = request.uri().path().to_owned();
    ctx.seen.lock().unwrap().push(Seen {
        method: request.method().to_string(),
        uri: request.uri().to_string(),
        authorization: authorization.clone(),
    });
    if path == "/v2/" {
        return (StatusCode::OK, "{}").into_response();
    }
    let repo_path = path.strip_prefix("/v2/").unwrap_or_default();
    match &ctx.behaviour {
        Behaviour::Victim => (StatusCode::OK, "ok").into_response(),
        Behaviour::RedirectBlobs { port, blob } => {
            if path == "/real-blob" {
                return (StatusCode::OK, blob.clone()).into_response();
            }
            if !repo_path.contains("/blobs/") {
                return (StatusCode::NOT_FOUND, "").into_response();
            }
            let first = repo_path.split('/').next().unwrap_or_default();
            let location = if first == "self" {
                format!("http://{}/real-blob", ctx.addr)
            } else {
                format!("http://{first}:{port}/stolen")
            };
            let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Behaviour::HugeError { status, len } => {
            let mut r = Response::new(lazy_body(*len));
            *r.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(*len));
            r
        }
        Behaviour::HugeManifest { len } => {
            let mut r = Response::new(lazy_body(*len));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
            );
            if repo_path.starts_with("cl/") {
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(*len));
            }
            r
        }
        Behaviour::Bearer { realm, token } => {
            if authorization.as_deref() != Some(&format!("Bearer {token}")) {
                let mut r = (StatusCode::UNAUTHORIZED, "").into_response();
                let challenge = format!("Bearer realm=\"{realm}\",service=\"hostile\"");
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                return r;
            }
            if !repo_path.contains("/manifests/") {
                return (StatusCode::NOT_FOUND, "").into_response();
            }
            let (body, digest) = small_manifest();
            let mut r = Response::new(Body::from(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
            );
            if let Ok(v) = HeaderValue::from_str(&digest) {
                r.headers_mut().insert("docker-content-digest", v);
            }
            r
        }
        Behaviour::TokenServer { token, expires_in } => {
            let body = format!(r#"{{"token":"{token}","expires_in":{expires_in}}}"#);
            let mut r = (StatusCode::OK, body).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
    }
}

/// A network namespace joined to this one by a veth pair: this side is
/// [`Netns::host_ip`], the namespace's side [`Netns::inner_ip`]. Removed
/// (with the pair) on drop.
pub struct Netns {
    name: String,
    host_if: String,
    host_ip: Ipv4Addr,
    inner_ip: Ipv4Addr,
}

fn ip_cmd(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Creates `wharf-<random>` with a veth pair on a random
    /// `198.18.x.y/30`. Needs root and `ip` (iproute2).
    pub fn create() -> Result<Netns> {
        crate::require_tool("ip", "iproute2")?;
        let mut last = None;
        for _ in 0..5 {
            let tag: u32 = rand::random();
            let tag = format!("{tag:08x}");
            let (a, b) = (rand::random::<u8>(), rand::random::<u8>() & 0xfc);
            let third = 18 + (a & 1);
            let ns = Netns {
                name: format!("wharf-{tag}"),
                host_if: format!("whh{tag}"),
                host_ip: Ipv4Addr::new(198, third, a, b + 1),
                inner_ip: Ipv4Addr::new(198, third, a, b + 2),
            };
            match ns.setup() {
                Ok(()) => return Ok(ns),
                Err(e) => last = Some(e), // dropping `ns` removes what was made
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no attempt made")))
            .context("creating a network namespace for the hostile upstream (needs root)")
    }

    fn setup(&self) -> Result<()> {
        let inner_if = self.host_if.replacen("whh", "whn", 1);
        let (host_cidr, inner_cidr) = (
            format!("{}/30", self.host_ip),
            format!("{}/30", self.inner_ip),
        );
        let taken = Command::new("ip")
            .args(["-o", "-4", "addr", "show", "to", &host_cidr])
            .output()?;
        if !String::from_utf8_lossy(&taken.stdout).trim().is_empty() {
            bail!("{host_cidr} is already in use here");
        }
        ip_cmd(&["netns", "add", &self.name])?;
        ip_cmd(&[
            "link",
            "add",
            &self.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &inner_if,
        ])?;
        ip_cmd(&["link", "set", &inner_if, "netns", &self.name])?;
        ip_cmd(&["addr", "add", &host_cidr, "dev", &self.host_if])?;
        ip_cmd(&["link", "set", &self.host_if, "up"])?;
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", self.name.as_str(), "ip"];
            all.extend_from_slice(args);
            ip_cmd(&all)
        };
        exec(&["addr", "add", &inner_cidr, "dev", &inner_if])?;
        exec(&["link", "set", &inner_if, "up"])?;
        exec(&["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// This side's address.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The namespace's address (where servers from [`Netns::bind`] listen).
    pub fn inner_ip(&self) -> Ipv4Addr {
        self.inner_ip
    }

    /// A non-blocking listener on `inner_ip:0` inside the namespace.
    pub fn bind(&self) -> Result<std::net::TcpListener> {
        let path = format!("/run/netns/{}", self.name);
        let addr = SocketAddr::new(IpAddr::V4(self.inner_ip), 0);
        std::thread::spawn(move || -> Result<std::net::TcpListener> {
            let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            // Only this thread moves; the socket stays in the namespace.
            // SAFETY: setns on a valid namespace fd; affects this thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding {addr} in the namespace"))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .join()
        .map_err(|_| anyhow!("the namespace thread panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and so the pair.
        let _ = ip_cmd(&["netns", "del", &self.name]);
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// Peak resident memory (`VmHWM`) of a process, in bytes.
pub fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/<pid>/status")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmHWM")?
        .parse()?;
    Ok(kb * 1024)
}
