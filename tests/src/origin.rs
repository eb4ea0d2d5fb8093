//! The real `wharf-origin` binary, started per test.
//!
//! The binary is `$WHARF_ORIGIN_BIN` or `<target>/debug/wharf-origin`, found
//! from the test executable's own path (`<target>/debug/deps/<test>-<hash>`),
//! so `cargo build -p wharf-origin && cargo test -p wharf-tests` is all it
//! takes. It is spawned as
//! `wharf-origin --listen 127.0.0.1:PORT --data DIR --rule P=URL… [--tag-ttl T] [--config F]`
//! with `RUST_LOG=info,wharf=debug` and its output in `origin.log` in the
//! test directory (tail printed if the test fails).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::Daemon;
use crate::{TestDir, free_port, wait_until};

/// How to start an origin.
#[derive(Clone, Debug, Default)]
pub struct OriginOpts {
    /// `--rule PREFIX=URL` flags.
    pub rules: Vec<(String, String)>,
    /// `--tag-ttl`, when set.
    pub tag_ttl: Option<Duration>,
    /// Content of a config file passed with `--config`, when set.
    pub config_toml: Option<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Use this external S3 endpoint (`--s3-endpoint URL --bucket wharf`,
    /// credentials in `env`) instead of the embedded store (`--data`).
    pub s3_endpoint: Option<String>,
    /// The store is configured in `config_toml` (`[s3]` or the region
    /// entry): pass neither `--data` nor `--s3-endpoint`.
    pub external_store: bool,
    /// Name of the origin's files in the test directory (`<name>-data`,
    /// `<name>.log`, `<name>.toml`); default `origin`. Several origins per test
    /// need distinct names.
    pub name: Option<String>,
    /// Listen on this port (chosen beforehand, e.g. because the region list
    /// names every replica); default a free port.
    pub port: Option<u16>,
}

/// A running origin; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Origin {
    daemon: Option<Daemon>,
    port: u16,
    data: PathBuf,
    log: PathBuf,
    opts: OriginOpts,
    config_path: Option<PathBuf>,
    starts: u32,
}

/// Where the origin binary is.
pub fn origin_bin() -> Result<PathBuf> {
    workspace_bin("wharf-origin", "WHARF_ORIGIN_BIN")
}

/// Where the `wharf` command is.
pub fn wharf_bin() -> Result<PathBuf> {
    workspace_bin("wharf", "WHARF_CLI_BIN")
}

/// A binary of the workspace: `$env` if set, else beside the running
/// executable (`cargo build --workspace --bins` puts them there).
fn workspace_bin(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{env}={} does not exist", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    // A test: <target>/debug/deps/<test>-<hash> → <target>/debug/<name>.
    // A binary of the workspace (the bench): <target>/debug/wharf-bench →
    // <target>/debug/<name>.
    let dir = exe
        .parent()
        .context("locating the target directory from the executable")?;
    let bin = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    let Some(bin) = bin else {
        panic!(
            "{name} not found beside {}: run `cargo build --workspace --bins` first (or set {env})",
            exe.display()
        );
    };
    Ok(bin)
}

impl Origin {
    /// Starts an origin with its data under `<test dir>/origin-data` and
    /// waits until `/healthz` and `/readyz` answer 200.
    pub async fn start(dir: &TestDir, opts: OriginOpts) -> Result<Origin> {
        let config_path = match &opts.config_toml {
            Some(toml) => {
                let p = dir
                    .path()
                    .join(format!("{}.toml", opts.name.as_deref().unwrap_or("origin")));
                std::fs::write(&p, toml)?;
                Some(p)
            }
            None => None,
        };
        let name = opts.name.clone().unwrap_or_else(|| "origin".to_owned());
        let fixed_port = opts.port;
        let mut origin = Origin {
            daemon: None,
            port: fixed_port.unwrap_or_else(free_port),
            data: dir.sub(&format!("{name}-data")),
            log: dir.path().join(format!("{name}.log")),
            opts,
            config_path,
            starts: 0,
        };
        // The port was free a moment ago; if another test took it in
        // between, try another.
        for attempt in 1..=3 {
            match origin.spawn_and_wait().await {
                Ok(()) => return Ok(origin),
                Err(e)
                    if attempt < 3
                        && fixed_port.is_none()
                        && origin.log_tail(20).contains("in use") =>
                {
                    eprintln!(
                        "origin could not bind port {}: retrying ({e:#})",
                        origin.port
                    );
                    origin.port = free_port();
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!()
    }

    fn command(&self) -> Result<Command> {
        let mut cmd = Command::new(origin_bin()?);
        cmd.arg("--listen").arg(format!("127.0.0.1:{}", self.port));
        match &self.opts.s3_endpoint {
            Some(endpoint) => {
                cmd.arg("--s3-endpoint")
                    .arg(endpoint)
                    .arg("--bucket")
                    .arg("wharf");
                cmd.arg("--spool-dir").arg(self.data.join("spool"));
            }
            None if self.opts.external_store => {
                cmd.arg("--spool-dir").arg(self.data.join("spool"));
            }
            None => {
                cmd.arg("--data").arg(&self.data);
            }
        }
        for (prefix, url) in &self.opts.rules {
            cmd.arg("--rule").arg(format!("{prefix}={url}"));
        }
        if let Some(ttl) = self.opts.tag_ttl {
            cmd.arg("--tag-ttl").arg(format_duration(ttl));
        }
        if let Some(p) = &self.config_path {
            cmd.arg("--config").arg(p);
        }
        cmd.env(
            "RUST_LOG",
            "info,wharf=debug,wharf_origin=debug,wharf_core=debug",
        );
        for (k, v) in crate::process::sealed_env() {
            cmd.env(k, v);
        }
        // Tests stop and restart upstreams within seconds: a failing
        // upstream is skipped for 1 s, not the default 30 s. Tests of the
        // breaker itself set their own (`opts.env` comes after).
        cmd.env("WHARF_UPSTREAM_BREAKER_COOL_DOWN", "1s");
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        Ok(cmd)
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        self.starts += 1;
        {
            use std::io::Write as _;
            let mut f = std::fs::File::options()
                .create(true)
                .append(true)
                .open(&self.log)?;
            writeln!(
                f,
                "===== wharf-tests: start #{} on port {} =====",
                self.starts, self.port
            )?;
        }
        let daemon = Daemon::spawn(
            "wharf-origin",
            self.command()?,
            &self.log,
            Duration::from_secs(10),
        )?;
        self.daemon = Some(daemon);
        let client = crate::http_client();
        for path in ["/healthz", "/readyz"] {
            let url = format!("{}{path}", self.url());
            let daemon = self.daemon.as_mut().expect("just spawned");
            let mut exited = None;
            let r = wait_until(
                &format!("wharf-origin {path}"),
                Duration::from_secs(30),
                || {
                    exited = exited.or(daemon.exited());
                    let dead = exited;
                    let (client, url) = (client.clone(), url.clone());
                    async move {
                        if let Some(status) = dead {
                            bail!("wharf-origin exited: {status}");
                        }
                        Ok(client.get(&url).send().await?.status() == reqwest::StatusCode::OK)
                    }
                },
            )
            .await;
            if let Err(e) = r {
                let tail = self.log_tail(30);
                if let Some(mut d) = self.daemon.take() {
                    d.stop();
                }
                bail!("{e:#}\n----- origin.log (tail) -----\n{tail}");
            }
        }
        Ok(())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, as a registry host in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().and_then(|d| d.pid())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Stops the origin (SIGTERM, waits up to 10 s).
    pub fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
    }

    /// Stops and starts again on the same port with the same data.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn_and_wait().await
    }

    /// The whole log (all starts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::tail(&self.log, lines)
    }

    /// Every series at `/metrics`, keyed `name{label="v",…}` with labels
    /// sorted by name (`name` alone when unlabelled).
    pub async fn metrics(&self) -> Result<HashMap<String, f64>> {
        let text = crate::http_client()
            .get(format!("{}/metrics", self.url()))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(parse_prometheus(&text))
    }

    /// The sum of every series of `name` whose labels include all of
    /// `labels` (0 when there is none).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(sum_metric(&self.metrics().await?, name, labels))
    }

    /// Waits until at least `n` hydrations were committed to the store (the
    /// commit completes just after the client received its last byte).
    pub async fn wait_committed(&self, n: u64) -> Result<()> {
        let started = std::time::Instant::now();
        loop {
            let committed = self
                .metric(
                    "wharf_hydration_duration_seconds_count",
                    &[("outcome", "committed")],
                )
                .await?;
            if committed >= n as f64 {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("{committed} of {n} hydrations were committed to the store after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Parses Prometheus text exposition into `name{sorted labels} -> value`.
pub fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(_) => match line.rfind('}') {
                Some(close) => (&line[..=close], line[close + 1..].trim()),
                None => continue,
            },
            None => match line.split_once(char::is_whitespace) {
                Some((s, r)) => (s, r.trim()),
                None => continue,
            },
        };
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let key = match series.find('{') {
            Some(open) => {
                let name = &series[..open];
                let mut labels = parse_labels(&series[open + 1..series.len() - 1]);
                labels.sort();
                let body: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                format!("{name}{{{}}}", body.join(","))
            }
            None => series.to_owned(),
        };
        *out.entry(key).or_insert(0.0) += value;
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `a="x",b="y\"z"` → [(a, x), (b, y"z)].
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(',' | ' ')) {
            chars.next();
        }
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if name.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((name.trim().to_owned(), value));
    }
    out
}

/// Sums the series of `name` whose labels include all of `labels`.
pub fn sum_metric(metrics: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .iter()
        .filter(|(key, _)| {
            let (n, l) = match key.find('{') {
                Some(i) => (&key[..i], parse_labels(&key[i + 1..key.len() - 1])),
                None => (key.as_str(), Vec::new()),
            };
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, v)| v)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text_and_sums_matching_series() {
        let text = "# HELP wharf_requests_total x\n# TYPE wharf_requests_total counter\n\
            wharf_requests_total{result=\"hit\",kind=\"blob\"} 3\n\
            wharf_requests_total{kind=\"blob\",result=\"miss\"} 2\n\
            wharf_requests_total{kind=\"manifest\",result=\"hit\"} 5 1700000000\n\
            wharf_up 1\n\
            weird{msg=\"a,b=\\\"c\\\"\"} 7\n";
        let m = parse_prometheus(text);
        assert_eq!(m["wharf_requests_total{kind=\"blob\",result=\"hit\"}"], 3.0);
        assert_eq!(m["wharf_up"], 1.0);
        assert_eq!(
            sum_metric(&m, "wharf_requests_total", &[("kind", "blob")]),
            5.0
        );
        assert_eq!(sum_metric(&m, "wharf_requests_total", &[]), 10.0);
        assert_eq!(
            sum_metric(&m, "wharf_requests_total", &[("result", "hit")]),
            8.0
        );
        assert_eq!(sum_metric(&m, "weird", &[("msg", "a,b=\"c\"")]), 7.0);
        assert_eq!(sum_metric(&m, "absent", &[]), 0.0);
    }
}

/// A bucket several origins share: one origin embeds its S3 server (on a
/// port chosen here, with fixed test keys), the others reach it only over
/// the S3 API (`--s3-endpoint` and `AWS_*` credentials), as replicas on an
/// external store do.
#[derive(Clone, Debug)]
pub struct SharedBucket {
    /// The embedded S3 server's port.
    pub port: u16,
}

impl SharedBucket {
    /// The test keys of every shared bucket.
    pub const ACCESS_KEY: &'static str = "sharedbucketkey";
    /// The secret that goes with [`SharedBucket::ACCESS_KEY`].
    pub const SECRET_KEY: &'static str = "shared-bucket-secret-key-0123456789";

    /// A bucket on a free port (nothing runs until its owner starts).
    pub fn new() -> SharedBucket {
        SharedBucket {
            port: crate::free_port(),
        }
    }

    /// `http://127.0.0.1:PORT`: the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `[embedded]` table of the origin that owns the bucket.
    pub fn owner_toml(&self) -> String {
        format!(
            "[embedded]\nlisten = \"127.0.0.1:{}\"\naccess_key = \"{}\"\nsecret_key = \"{}\"\nbucket = \"wharf\"\n",
            self.port,
            Self::ACCESS_KEY,
            Self::SECRET_KEY
        )
    }

    /// Options of an origin on the bucket through `endpoint` (the bucket's
    /// own, or a proxy in front of it), with `rules`.
    pub fn client(&self, endpoint: String, rules: Vec<(String, String)>) -> OriginOpts {
        OriginOpts {
            rules,
            s3_endpoint: Some(endpoint),
            env: vec![
                ("AWS_ACCESS_KEY_ID".into(), Self::ACCESS_KEY.into()),
                ("AWS_SECRET_ACCESS_KEY".into(), Self::SECRET_KEY.into()),
            ],
            ..OriginOpts::default()
        }
    }
}

impl SharedBucket {
    /// Writes the object `key` over the S3 API (what another replica, or a
    /// crashed one, left in the bucket).
    pub async fn put(&self, key: &str, body: &[u8]) -> Result<()> {
        use aws_sdk_s3::config::{Credentials, Region};
        let config = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .endpoint_url(self.endpoint())
            .region(Region::new("us-east-1"))
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                Self::ACCESS_KEY,
                Self::SECRET_KEY,
                None,
                None,
                "wharf-tests",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(config)
            .put_object()
            .bucket("wharf")
            .key(key)
            .body(body.to_vec().into())
            .send()
            .await
            .with_context(|| format!("PutObject {key}"))?;
        Ok(())
    }
}

impl Default for SharedBucket {
    fn default() -> Self {
        Self::new()
    }
}
