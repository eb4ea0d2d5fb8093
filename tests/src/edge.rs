//! The real edge Worker under `wrangler dev --local` (workerd), started per
//! test, in front of a real origin (issue 4).
//!
//! * [`Edge`] writes a `wrangler.toml` into the test directory whose `main`
//!   is the bundle `edge/build.sh` produced (`edge/build/worker/shim.mjs`; a
//!   missing bundle fails with the command to run), with the test's vars and
//!   secrets, and runs `node_modules/.bin/wrangler dev --local` on free ports
//!   with its state under the test directory.
//! * [`EdgeStack`] is the usual arrangement: upstream registry, origin (its
//!   embedded S3 on a known port with known keys; the edge presigns with the
//!   read-only pair), a counting proxy in front
//!   of the origin (so tests count what reached the origin, and can take the
//!   origin down), and the edge, configured with one public rule (`up/…`) and
//!   one private rule (`priv/…`), both pulling from the upstream.
//! * [`Edge::requests`] reads what the Worker answered from wrangler's log
//!   (`[wrangler:info] GET /v2/… 307 Temporary Redirect (3ms)`).
//!
//! The S3 endpoint the edge presigns for is `http://localhost:<port>` while
//! the edge is `127.0.0.1:<port>`: Go clients (docker, skopeo, containerd)
//! keep the `Authorization` header on a redirect to the same host name, and
//! an S3 server refuses a request that carries both a presigned query and a
//! foreign `Authorization` header. Real deployments have distinct hosts.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::Daemon;
use crate::upstream::Proxy;
use crate::{
    OriginOpts, RULE_PREFIX, Stack, TestDir, UPSTREAM_URL, UpstreamAuth, free_port, wait_until,
};

/// The token key shared by the edge and the origin in tests.
pub const TOKEN_KEY: &str = "wharf-tests-token-key-0123456789abcdef";
/// The embedded store's access key in tests (read/write: the origin's).
pub const S3_ACCESS_KEY: &str = "wharftests";
/// Its secret key.
pub const S3_SECRET_KEY: &str = "wharf-tests-secret-key-0123456789";
/// The embedded store's read-only access key: the edge presigns with it.
pub const S3_READ_ONLY_ACCESS_KEY: &str = "wharftests-edge";
/// Its secret key.
pub const S3_READ_ONLY_SECRET_KEY: &str = "wharf-tests-read-only-secret-0123456789";
/// The origin's bucket.
pub const BUCKET: &str = "wharf";
/// The private rule's prefix in [`EdgeStack`].
pub const PRIVATE_PREFIX: &str = "priv";
/// A repository the stack's `docker.io` rule refuses (edge and origin).
pub const DENIED_REPOSITORY: &str = "library/denied";
/// The user allowed to pull the private rule; the edge stores the password
/// as `wharf-origin hash-password` prints it ([`hash_password`]).
pub const USER: (&str, &str) = ("alice", "alice-password");
/// The edge's global hostname (the token service).
pub const GLOBAL_HOST: &str = "wharf.test";

/// The workspace root (`tests/..`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// `node_modules/.bin/wrangler`, installed by `scripts/install-deps.sh`.
pub fn wrangler_bin() -> Result<PathBuf> {
    let p = workspace_root().join("node_modules/.bin/wrangler");
    if !p.exists() {
        bail!(
            "{} not found: run `npm ci` in {} (scripts/install-deps.sh does)",
            p.display(),
            workspace_root().display()
        );
    }
    Ok(p)
}

/// The Worker bundle's entry point, built by `edge/build.sh`.
pub fn edge_bundle() -> Result<PathBuf> {
    let p = workspace_root().join("edge/build/worker/shim.mjs");
    if !p.exists() {
        bail!(
            "{} not found: build the Worker first with `edge/build.sh` (after scripts/install-deps.sh)",
            p.display()
        );
    }
    Ok(p)
}

/// The stored form of `password` for `WHARF_USERS`, printed by the real
/// `wharf-origin hash-password` (PBKDF2-SHA256, 100 000 iterations).
pub fn hash_password(password: &str) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new(crate::origin::origin_bin()?)
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running wharf-origin hash-password")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(password.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "wharf-origin hash-password failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim_end().to_owned())
}

/// One cache rule as the edge sees it.
#[derive(Clone, Debug)]
pub struct EdgeRule {
    /// Downstream prefix.
    pub prefix: String,
    /// Upstream registry URL (validated, not contacted, by the edge).
    pub upstream: String,
    /// Needs a user.
    pub private: bool,
    /// Repository patterns refused (`deny`).
    pub deny: Vec<String>,
}

/// One region as the edge sees it.
#[derive(Clone, Debug)]
pub struct EdgeRegion {
    /// Name: `<name>.<global host>` is pinned to it.
    pub name: String,
    /// The region's origin replicas' base URLs.
    pub origins: Vec<String>,
    /// `http://localhost:PORT` of the region's store, if presigning.
    pub s3_endpoint: Option<String>,
    /// Cloudflare continent codes the global hostname sends here.
    pub continents: Vec<String>,
    /// Coordinates of the region.
    pub lat: Option<f64>,
    /// Coordinates of the region.
    pub lon: Option<f64>,
    /// The region's bucket (default [`BUCKET`]).
    pub bucket: Option<String>,
    /// The store's signing region (default `us-east-1`).
    pub s3_region: Option<String>,
}

impl EdgeRegion {
    /// A region with one origin and no store.
    pub fn new(name: &str, origin: &str, continents: &[&str]) -> Self {
        EdgeRegion {
            name: name.to_owned(),
            origins: vec![origin.to_owned()],
            s3_endpoint: None,
            continents: continents.iter().map(|c| (*c).to_owned()).collect(),
            lat: None,
            lon: None,
            bucket: None,
            s3_region: None,
        }
    }
}

/// How to configure an [`Edge`].
#[derive(Clone, Debug)]
pub struct EdgeOpts {
    /// Regions; the first is the default.
    pub regions: Vec<EdgeRegion>,
    /// Cache rules.
    pub rules: Vec<EdgeRule>,
    /// `WHARF_TAG_TTL`.
    pub tag_ttl: Duration,
    /// `WHARF_STALE_IF_ERROR`.
    pub stale_if_error: Duration,
    /// Honour the test-only `X-Wharf-Test-Location` header.
    pub test_location_header: bool,
    /// Health thresholds: (fail after, recover after, probe interval seconds).
    pub health: Option<(u32, u32, u64)>,
    /// More `[vars]` (they override the defaults above).
    pub extra_vars: Vec<(String, String)>,
}

impl Default for EdgeOpts {
    fn default() -> Self {
        EdgeOpts {
            regions: Vec::new(),
            rules: Vec::new(),
            tag_ttl: Duration::from_secs(300),
            stale_if_error: Duration::from_secs(3600),
            test_location_header: false,
            health: None,
            extra_vars: Vec::new(),
        }
    }
}

/// One request as wrangler logged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeRequest {
    /// Method.
    pub method: String,
    /// Path (and query).
    pub path: String,
    /// Status code.
    pub status: u16,
}

/// A running `wrangler dev --local` with the edge Worker.
pub struct Edge {
    daemon: Option<Daemon>,
    port: u16,
    log: PathBuf,
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

impl Edge {
    /// Writes the test's `wrangler.toml` and starts `wrangler dev`, waiting
    /// until the Worker answers `/healthz`.
    pub async fn start(dir: &TestDir, opts: &EdgeOpts) -> Result<Edge> {
        let wrangler = wrangler_bin()?;
        let bundle = edge_bundle()?;
        let base = dir.sub("edge");
        let regions: Vec<_> = opts
            .regions
            .iter()
            .map(|r| {
                let mut region = serde_json::json!({
                    "name": r.name, "origins": r.origins, "continents": r.continents,
                });
                if let Some(ep) = &r.s3_endpoint {
                    region["s3_endpoint"] = ep.clone().into();
                    region["bucket"] = r.bucket.clone().unwrap_or_else(|| BUCKET.into()).into();
                    region["s3_region"] = r
                        .s3_region
                        .clone()
                        .unwrap_or_else(|| "us-east-1".into())
                        .into();
                }
                if let (Some(lat), Some(lon)) = (r.lat, r.lon) {
                    region["lat"] = lat.into();
                    region["lon"] = lon.into();
                }
                region
            })
            .collect();
        let rules: Vec<_> = opts
            .rules
            .iter()
            .map(|r| serde_json::json!({"prefix": r.prefix, "upstream": r.upstream, "private": r.private, "deny": r.deny}))
            .collect();
        let users = serde_json::json!({ USER.0: hash_password(USER.1)? });
        let config = format!(
            "name = \"wharf-edge-test\"\nmain = {main}\ncompatibility_date = \"2026-04-01\"\n\n\
             [vars]\n\
             WHARF_GLOBAL_HOST = {global}\n\
             WHARF_REGIONS = {regions}\n\
             WHARF_RULES = {rules}\n\
             WHARF_TAG_TTL = \"{ttl}\"\n\
             WHARF_STALE_IF_ERROR = \"{stale}\"\n\
             WHARF_ORIGIN_TIMEOUT = \"10s\"\n\
             WHARF_TOKEN_KEY = {key}\n\
             WHARF_S3_ACCESS_KEY = {ak}\n\
             WHARF_S3_SECRET_KEY = {sk}\n\
             WHARF_USERS = {users}\n\n\
             [[kv_namespaces]]\nbinding = \"WHARF_KV\"\nid = \"wharf-tests\"\n",
            main = toml_str(&bundle.display().to_string()),
            global = toml_str(GLOBAL_HOST),
            regions = toml_str(&serde_json::Value::Array(regions).to_string()),
            rules = toml_str(&serde_json::Value::Array(rules).to_string()),
            ttl = opts.tag_ttl.as_secs(),
            stale = opts.stale_if_error.as_secs(),
            key = toml_str(TOKEN_KEY),
            ak = toml_str(S3_READ_ONLY_ACCESS_KEY),
            sk = toml_str(S3_READ_ONLY_SECRET_KEY),
            users = toml_str(&users.to_string()),
        );
        let mut config = config;
        let mut vars = String::new();
        if opts.test_location_header {
            vars.push_str("WHARF_TEST_LOCATION_HEADER = \"X-Wharf-Test-Location\"\n");
        }
        if let Some((fail, recover, interval)) = opts.health {
            vars.push_str(&format!(
                "WHARF_HEALTH_FAIL_AFTER = \"{fail}\"\nWHARF_HEALTH_RECOVER_AFTER = \"{recover}\"\nWHARF_HEALTH_PROBE_INTERVAL = \"{interval}s\"\n"
            ));
        }
        for (k, v) in &opts.extra_vars {
            // Later keys would be duplicates in TOML: drop the default first.
            config = config
                .lines()
                .filter(|l| !l.starts_with(&format!("{k} = ")))
                .collect::<Vec<_>>()
                .join("\n");
            vars.push_str(&format!("{k} = {}\n", toml_str(v)));
        }
        let config = config.replacen("[vars]\n", &format!("[vars]\n{vars}"), 1);
        let config_path = base.join("wrangler.toml");
        std::fs::write(&config_path, config)?;

        let mut edge = Edge {
            daemon: None,
            port: 0,
            log: base.join("wrangler.log"),
        };
        for attempt in 1..=3 {
            edge.port = free_port();
            let mut cmd = Command::new(&wrangler);
            cmd.current_dir(&base)
                .args(["dev", "--local", "--ip", "127.0.0.1"])
                .arg("--port")
                .arg(edge.port.to_string())
                .arg("--inspector-port")
                .arg(free_port().to_string())
                .arg("--config")
                .arg(&config_path)
                .arg("--persist-to")
                .arg(base.join("state"))
                .arg("--show-interactive-dev-session=false")
                .arg("--test-scheduled")
                .arg("--log-level=info");
            for (k, v) in crate::process::sealed_env() {
                cmd.env(k, v);
            }
            cmd.env("WRANGLER_SEND_METRICS", "false")
                // No request for Cloudflare's `cf` object: nothing leaves the machine.
                .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
                .env("WRANGLER_LOG_PATH", base.join("wrangler-logs"))
                .env("XDG_CONFIG_HOME", base.join("xdg"))
                .env("CI", "true")
                .env("NO_COLOR", "1");
            let mut daemon = Daemon::spawn("wrangler-dev", cmd, &edge.log, Duration::from_secs(5))?;
            let url = format!("{}/healthz", edge.url());
            let client = crate::http_client();
            let mut exited = None;
            let ready = wait_until("wrangler dev /healthz", Duration::from_secs(90), || {
                exited = exited.or(daemon.exited());
                let dead = exited;
                let (client, url) = (client.clone(), url.clone());
                async move {
                    if let Some(status) = dead {
                        bail!("wrangler dev exited: {status}");
                    }
                    Ok(client.get(&url).send().await?.status() == reqwest::StatusCode::OK)
                }
            })
            .await;
            match ready {
                Ok(()) => {
                    edge.daemon = Some(daemon);
                    return Ok(edge);
                }
                Err(e) if attempt < 3 && daemon.log_tail(30).contains("in use") => {
                    eprintln!("wrangler dev could not bind its ports: retrying ({e:#})");
                    daemon.stop();
                }
                Err(e) => {
                    let tail = daemon.log_tail(40);
                    daemon.stop();
                    bail!("{e:#}\n----- wrangler.log (tail) -----\n{tail}");
                }
            }
        }
        unreachable!()
    }

    /// Runs the Worker's `scheduled` handler once (what the cron trigger
    /// does in production): `GET /__scheduled` under `--test-scheduled`.
    pub async fn trigger_scheduled(&self) -> Result<()> {
        let r = crate::http_client()
            .get(format!("{}/__scheduled?cron=*+*+*+*+*", self.url()))
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "/__scheduled answered {}",
            r.status()
        );
        Ok(())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `wrangler dev` process (workerd runs as its child).
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().and_then(Daemon::pid)
    }

    /// `127.0.0.1:PORT`, as a registry host in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// wrangler's whole log (the Worker's JSON lines included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every request the Worker answered, in order.
    pub fn requests(&self) -> Vec<EdgeRequest> {
        parse_wrangler_requests(&self.log())
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
    }
}

/// Parses `[wrangler:info] GET /path 307 Temporary Redirect (3ms)` lines.
pub fn parse_wrangler_requests(log: &str) -> Vec<EdgeRequest> {
    log.lines()
        .filter_map(|line| {
            let rest = line.split("[wrangler:info] ").nth(1)?;
            let mut parts = rest.split_whitespace();
            let method = parts.next()?;
            if !method.chars().all(|c| c.is_ascii_uppercase()) {
                return None;
            }
            let path = parts.next()?;
            let status = parts.next()?.parse().ok()?;
            Some(EdgeRequest {
                method: method.to_owned(),
                path: path.to_owned(),
                status,
            })
        })
        .collect()
}

/// Upstream, origin (behind a counting proxy) and edge, wired together.
///
/// The edge has two regions on the one origin: `eu` (the default, with the
/// origin's store for presigned redirects, continent `EU`) and `us` (no
/// store: every blob goes to the origin; continent `NA`, which is what
/// `wrangler dev` reports for every client when it cannot fetch Cloudflare's
/// `cf` data, so the global hostname routes to `us`).
///
/// Fields drop in declaration order: the edge first, the stack (origin,
/// upstream, directory) last.
pub struct EdgeStack {
    /// The Worker.
    pub edge: Edge,
    /// The counting proxy in front of the origin: what the edge and the
    /// redirected clients sent to the origin. `stop()` takes the origin down.
    pub origin_proxy: Proxy,
    /// `http://localhost:PORT` of the origin's embedded store.
    pub s3_endpoint: String,
    /// Upstream and origin.
    pub stack: Stack,
}

impl EdgeStack {
    /// Starts everything with tags fresh for `tag_ttl` at the edge and at
    /// the origin.
    pub async fn start(name: &str, tag_ttl: Duration) -> Result<EdgeStack> {
        EdgeStack::start_with(name, tag_ttl, "", Vec::new()).await
    }

    /// Like [`EdgeStack::start`], with `origin_toml` appended to the
    /// origin's configuration file and `edge_vars` added to the Worker's.
    pub async fn start_with(
        name: &str,
        tag_ttl: Duration,
        origin_toml: &str,
        edge_vars: Vec<(String, String)>,
    ) -> Result<EdgeStack> {
        let s3_port = free_port();
        let opts = OriginOpts {
            // `docker.io` too: the README's client guides pull Docker Hub
            // names (tests/tests/client_guides.rs).
            rules: vec![
                (PRIVATE_PREFIX.to_owned(), UPSTREAM_URL.to_owned()),
                ("docker.io".to_owned(), UPSTREAM_URL.to_owned()),
            ],
            tag_ttl: Some(tag_ttl),
            config_toml: Some(format!(
                "[embedded]\nlisten = \"127.0.0.1:{s3_port}\"\naccess_key = \"{S3_ACCESS_KEY}\"\nsecret_key = \"{S3_SECRET_KEY}\"\nbucket = \"{BUCKET}\"\n\
                 read_only_access_key = \"{S3_READ_ONLY_ACCESS_KEY}\"\nread_only_secret_key = \"{S3_READ_ONLY_SECRET_KEY}\"\n\
                 [auth]\ntoken_key = \"{TOKEN_KEY}\"\nservice = \"{GLOBAL_HOST}\"\n\
                 [[rule]]\nprefix = \"{PRIVATE_PREFIX}\"\nupstream = \"{UPSTREAM_URL}\"\nprivate = true\n\
                 [[rule]]\nprefix = \"docker.io\"\nupstream = \"{UPSTREAM_URL}\"\ndeny = [\"{DENIED_REPOSITORY}\"]\n{origin_toml}"
            )),
            ..OriginOpts::default()
        };
        let stack = Stack::start_with(name, UpstreamAuth::Anonymous, opts).await?;
        let origin_addr = stack
            .origin
            .host()
            .parse()
            .context("the origin's address")?;
        let origin_proxy = Proxy::counting(origin_addr).await?;
        let s3_endpoint = format!("http://localhost:{s3_port}");
        let upstream = stack.upstream.url();
        let rule = |prefix: &str, private| EdgeRule {
            prefix: prefix.to_owned(),
            upstream: upstream.clone(),
            private,
            deny: Vec::new(),
        };
        let edge = Edge::start(
            &stack.dir,
            &EdgeOpts {
                regions: vec![
                    EdgeRegion {
                        s3_endpoint: Some(s3_endpoint.clone()),
                        // `wrangler dev` reports continent NA for every request.
                        ..EdgeRegion::new("eu", &origin_proxy.url(), &["EU", "NA"])
                    },
                    EdgeRegion::new("us", &origin_proxy.url(), &["SA"]),
                ],
                rules: vec![
                    rule(RULE_PREFIX, false),
                    rule(PRIVATE_PREFIX, true),
                    EdgeRule {
                        deny: vec![DENIED_REPOSITORY.to_owned()],
                        ..rule("docker.io", false)
                    },
                ],
                tag_ttl,
                stale_if_error: Duration::from_secs(3600),
                extra_vars: edge_vars,
                ..EdgeOpts::default()
            },
        )
        .await?;
        Ok(EdgeStack {
            edge,
            origin_proxy,
            s3_endpoint,
            stack,
        })
    }

    /// An anonymous token from the edge's `/token` for
    /// `repository:<repo>:pull`.
    pub async fn token(&self, repo: &str) -> Result<String> {
        let r = crate::no_redirect_client()
            .get(format!("{}/token", self.edge.url()))
            .query(&[
                ("service", GLOBAL_HOST),
                ("scope", &format!("repository:{repo}:pull")),
            ])
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "/token answered {}", r.status());
        let body: serde_json::Value = r.json().await?;
        body["token"]
            .as_str()
            .map(str::to_owned)
            .context("/token answered without a token")
    }

    /// `<edge host>/up/<repo>:<tag>`.
    pub fn edge_ref(&self, repo: &str, tag: &str) -> String {
        format!("{}/{RULE_PREFIX}/{repo}:{tag}", self.edge.host())
    }

    /// Waits until the origin has no hydration in flight (every blob it
    /// served is committed to the store).
    pub async fn hydrations_settled(&self) -> Result<()> {
        let origin = &self.stack.origin;
        wait_until(
            "origin hydrations to finish",
            Duration::from_secs(30),
            || async { Ok(origin.metric("wharf_hydrations_in_flight", &[]).await? == 0.0) },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrangler_request_lines() {
        let log = "[wrangler:info] Ready on http://127.0.0.1:1\n\
                   {\"level\":\"INFO\"}\n\
                   [wrangler:info] GET /v2/ 401 Unauthorized (25ms)\n\
                   \u{1b}[0m[wrangler:info] HEAD /v2/up/a/blobs/sha256:ab 307 Temporary Redirect (3ms)\n";
        assert_eq!(
            parse_wrangler_requests(log),
            vec![
                EdgeRequest {
                    method: "GET".into(),
                    path: "/v2/".into(),
                    status: 401
                },
                EdgeRequest {
                    method: "HEAD".into(),
                    path: "/v2/up/a/blobs/sha256:ab".into(),
                    status: 307
                },
            ]
        );
    }
}
