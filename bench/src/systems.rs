//! The three systems under comparison, started side by side in one run.
//!
//! ```text
//!   bench clients ──► wharf-origin ──────► counting proxy W ─┐
//!   bench clients ──► docker-registry ───► counting proxy D ─┼─► docker-registry
//!                     (proxy mode)                           │   (the upstream)
//!   bench clients ──────────────────────► counting proxy U ─┘
//! ```
//!
//! Each client of the upstream goes through a counting proxy of its own
//! ([`wharf_tests::upstream::Proxy::counting`]), so Wharf's, Distribution's
//! and the direct pulls' upstream requests are counted apart even when
//! phases overlap, and every path pays the same extra loopback hop.
//!
//! Wharf is the real `wharf-origin` binary with its embedded object store on
//! a port and key pair we choose, so that the bench can presign URLs straight
//! into the store (the "physical limit" of a cached read). Distribution is
//! `docker-registry` with `proxy.remoteurl` and its own storage directory,
//! configured as its documentation's pull-through cache example
//! (`blobdescriptor: inmemory`). Both log at `warn`/`info` level without
//! access logs, so logging costs neither of them much.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rand::distr::{Alphanumeric, SampleString};
use wharf_core::Digest;
use wharf_core::sigv4::{Addressing, Credentials, PresignRequest, S3Endpoint};
use wharf_tests::process::{Daemon, sealed_env};
use wharf_tests::upstream::Proxy;
use wharf_tests::{TestDir, Upstream, UpstreamAuth, free_port, http_client, require_tool};

/// The rule prefix for ordinary pulls through Wharf: `<origin>/up/<repo>`.
pub const WHARF_PREFIX: &str = "up";
/// The rule prefix with the short tag TTL of the revalidation phase.
pub const WHARF_REVAL_PREFIX: &str = "reval";
/// The rule prefix of the CI day (item 9): a short tag TTL and a rate-limit
/// reserve.
pub const WHARF_CI_PREFIX: &str = "ci";
const BUCKET: &str = "wharf";
const REGION: &str = "us-east-1";

/// What Wharf's item-specific rules are set to.
#[derive(Clone, Copy, Debug)]
pub struct WharfRules {
    /// Tag TTL of the `reval/` rule (item 4).
    pub reval_ttl: Duration,
    /// Tag TTL of the `ci/` rule (item 9).
    pub ci_ttl: Duration,
    /// `ratelimit_reserve` of the `ci/` rule: at or below this advertised
    /// budget, stale tags are served without revalidating.
    pub ci_reserve: u64,
}

/// Everything one bench run talks to. Fields drop in declaration order:
/// the caches stop before the upstream, the directory goes last.
pub struct Systems {
    /// Wharf's origin.
    pub wharf: Wharf,
    /// Distribution in proxy mode.
    pub dist: DistProxy,
    /// Counts Wharf's upstream requests.
    pub wharf_up: Proxy,
    /// Counts Distribution's upstream requests.
    pub dist_up: Proxy,
    /// The upstream registry; its own proxy counts direct pulls.
    pub upstream: Upstream,
    /// Working directory (registries' storage, logs, the origin's data).
    pub dir: TestDir,
}

impl Systems {
    /// Starts the upstream, its counting proxies, Distribution's proxy and
    /// Wharf's origin (`origin_bin`, its item rules set as `rules` says).
    pub async fn start(origin_bin: &Path, rules: WharfRules) -> Result<Systems> {
        let dir = TestDir::new("bench")?;
        let upstream = Upstream::start(&dir, UpstreamAuth::Anonymous)
            .await
            .context("starting the upstream registry")?;
        let wharf_up = upstream.counting_proxy().await?;
        let dist_up = upstream.counting_proxy().await?;
        let dist = DistProxy::start(&dir, &dist_up.url())
            .await
            .context("starting Distribution in proxy mode")?;
        let wharf = Wharf::start(origin_bin, &dir, &wharf_up.url(), rules)
            .await
            .context("starting wharf-origin")?;
        Ok(Systems {
            wharf,
            dist,
            wharf_up,
            dist_up,
            upstream,
            dir,
        })
    }
}

/// A running `wharf-origin`.
pub struct Wharf {
    daemon: Daemon,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub host: String,
    s3_endpoint: String,
    credentials: Credentials,
}

impl Wharf {
    async fn start(bin: &Path, dir: &TestDir, upstream: &str, rules: WharfRules) -> Result<Wharf> {
        let data = dir.sub("wharf-data");
        let log = dir.path().join("wharf-origin.log");
        let access_key = format!("BENCH{}", Alphanumeric.sample_string(&mut rand::rng(), 15));
        let secret_key = Alphanumeric.sample_string(&mut rand::rng(), 40);
        let mut last_err = None;
        // Ports are picked free and released; retry if another process took
        // one in between.
        for _ in 0..3 {
            let port = free_port();
            let s3_port = free_port();
            let config = format!(
                r#"listen = "127.0.0.1:{port}"
data = "{data}"

[embedded]
listen = "127.0.0.1:{s3_port}"
bucket = "{BUCKET}"
access_key = "{access_key}"
secret_key = "{secret_key}"

[[rule]]
prefix = "{WHARF_PREFIX}"
upstream = "{upstream}"

[[rule]]
prefix = "{WHARF_REVAL_PREFIX}"
upstream = "{upstream}"
tag_ttl = "{ttl}ms"

# Item 9. stale_if_error keeps its default (7 days), far longer than the
# run: a tag postponed for the budget is always servable stale.
[[rule]]
prefix = "{WHARF_CI_PREFIX}"
upstream = "{upstream}"
tag_ttl = "{ci_ttl}ms"
ratelimit_reserve = {ci_reserve}
"#,
                data = data.display(),
                ttl = rules.reval_ttl.as_millis(),
                ci_ttl = rules.ci_ttl.as_millis(),
                ci_reserve = rules.ci_reserve,
            );
            let config_path = dir.path().join("wharf-origin.toml");
            std::fs::write(&config_path, config)?;
            let mut cmd = Command::new(bin);
            cmd.arg("--config").arg(&config_path);
            for (k, v) in sealed_env() {
                cmd.env(k, v);
            }
            // Production's default level: no per-request lines.
            cmd.env("RUST_LOG", "info");
            let mut daemon = Daemon::spawn("wharf-origin", cmd, &log, Duration::from_secs(10))?;
            let url = format!("http://127.0.0.1:{port}");
            match wait_ready(
                &mut daemon,
                &[format!("{url}/healthz"), format!("{url}/readyz")],
            )
            .await
            {
                Ok(()) => {
                    return Ok(Wharf {
                        daemon,
                        host: format!("127.0.0.1:{port}"),
                        url,
                        s3_endpoint: format!("http://127.0.0.1:{s3_port}"),
                        credentials: Credentials {
                            access_key: access_key.clone(),
                            secret_key: secret_key.clone(),
                            session_token: None,
                        },
                    });
                }
                Err(e) => {
                    daemon.stop();
                    last_err = Some(e.context(daemon.log_tail(20)));
                }
            }
        }
        Err(last_err.expect("three attempts were made"))
    }

    /// The origin's process id.
    pub fn pid(&self) -> Result<u32> {
        self.daemon.pid().context("wharf-origin is not running")
    }

    /// Every series at `/metrics`.
    pub async fn metrics(&self) -> Result<HashMap<String, f64>> {
        let text = http_client()
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(wharf_tests::origin::parse_prometheus(&text))
    }

    /// The sum of the series of `name` whose labels include `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(wharf_tests::origin::sum_metric(
            &self.metrics().await?,
            name,
            labels,
        ))
    }

    /// A presigned GET URL for a cached blob, straight into the embedded
    /// store (the same SigV4 code the edge uses for its redirects).
    pub fn presign_blob(&self, digest: &str) -> Result<String> {
        let digest = Digest::parse(digest).map_err(|e| anyhow::anyhow!("{digest}: {e}"))?;
        let key = wharf_core::keys::blob_key(&digest);
        let endpoint = S3Endpoint::parse(&self.s3_endpoint)
            .map_err(|e| anyhow::anyhow!("store endpoint {}: {e}", self.s3_endpoint))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        wharf_core::sigv4::presign(&PresignRequest {
            method: wharf_core::ApiMethod::Get,
            endpoint: &endpoint,
            addressing: Addressing::Path,
            bucket: BUCKET,
            key: &key,
            region: REGION,
            credentials: &self.credentials,
            now_unix_secs: now,
            expires_in_secs: 3600,
        })
        .map_err(|e| anyhow::anyhow!("presigning {key}: {e}"))
    }

    /// The embedded store as clients reach it for presigned URLs
    /// (`http://localhost:PORT`: Go clients then drop the edge's
    /// Authorization header on the redirect, as between real hostnames),
    /// its bucket, signing region and key pair.
    pub fn store(&self) -> (String, &'static str, &'static str, &str, &str) {
        (
            self.s3_endpoint.replace("127.0.0.1", "localhost"),
            BUCKET,
            REGION,
            &self.credentials.access_key,
            &self.credentials.secret_key,
        )
    }

    /// The last lines of the origin's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.daemon.log_tail(lines)
    }
}

/// A running Distribution registry in proxy (pull-through cache) mode.
pub struct DistProxy {
    daemon: Daemon,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub host: String,
}

impl DistProxy {
    async fn start(dir: &TestDir, remote: &str) -> Result<DistProxy> {
        let bin = require_tool("docker-registry", "docker-registry")?;
        let base: PathBuf = dir.sub("distribution-proxy");
        let log = base.join("registry.log");
        let mut last_err = None;
        for attempt in 1..=3 {
            let port = free_port();
            let config = format!(
                r#"version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: wharf-bench-secret
proxy:
  remoteurl: {remote}
"#,
                storage = base.join("storage").display()
            );
            let config_path = base.join(format!("config-{attempt}.yml"));
            std::fs::write(&config_path, config)?;
            let mut cmd = Command::new(&bin);
            cmd.arg("serve").arg(&config_path).current_dir(&base);
            let mut daemon =
                Daemon::spawn("docker-registry (proxy)", cmd, &log, Duration::from_secs(5))?;
            let url = format!("http://127.0.0.1:{port}");
            match wait_ready(&mut daemon, &[format!("{url}/v2/")]).await {
                Ok(()) => {
                    return Ok(DistProxy {
                        daemon,
                        host: format!("127.0.0.1:{port}"),
                        url,
                    });
                }
                Err(e) => {
                    daemon.stop();
                    last_err = Some(e.context(daemon.log_tail(20)));
                }
            }
        }
        Err(last_err.expect("three attempts were made"))
    }

    /// The registry's process id.
    pub fn pid(&self) -> Result<u32> {
        self.daemon
            .pid()
            .context("the Distribution proxy is not running")
    }
}

/// Waits until every URL answers 200, failing early if the process exits.
pub(crate) async fn wait_ready(daemon: &mut Daemon, urls: &[String]) -> Result<()> {
    let client = http_client();
    for url in urls {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = daemon.exited() {
                bail!("exited before answering {url}: {status}");
            }
            if let Ok(resp) = client.get(url).send().await
                && resp.status() == reqwest::StatusCode::OK
            {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("{url} did not answer 200 within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}
