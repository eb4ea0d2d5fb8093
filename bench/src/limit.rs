//! The physical limit of item 8 (issue 17): the same manifest bytes served
//! as static files by nginx (Debian's `nginx-light`, one process, on the
//! caches' CPU), and `wrk`, the load generator every HTTP row of item 8 is
//! measured with.
//!
//! Why `wrk` and not the bench's own reqwest client: at 30,000–80,000
//! requests per second one client CPU running reqwest becomes the
//! bottleneck, and a ratio of two systems both capped by their client says
//! nothing. `wrk` (C, an event loop per thread) keeps up with nginx on one
//! CPU and reports latency percentiles in microseconds.
//!
//! nginx runs with `master_process off` (one process: the worker) so that it
//! is pinned like the caches and stopped like any daemon of the bench.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use wharf_tests::process::{Daemon, run_tool};
use wharf_tests::{TestDir, free_port, require_tool};

use crate::cpus::CpuSplit;
use crate::probe::sample;
use crate::systems::wait_ready;

/// nginx serving files as a static web server.
pub struct StaticServer {
    daemon: Daemon,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl StaticServer {
    /// Serves each `(path, content type, bytes)` at `path`.
    pub async fn start(dir: &TestDir, files: &[(&str, &str, &[u8])]) -> Result<StaticServer> {
        let nginx = Path::new("/usr/sbin/nginx");
        ensure!(
            nginx.is_file(),
            "nginx is missing (apt-get install nginx-light; scripts/install-deps.sh does)"
        );
        let base = dir.sub("nginx");
        let root = base.join("www");
        let mut locations = String::new();
        for (path, content_type, bytes) in files {
            let file = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(file.parent().context("a file path has a parent")?)?;
            std::fs::write(&file, bytes)?;
            locations.push_str(&format!(
                "    location = {path} {{ default_type \"{content_type}\"; }}\n"
            ));
        }
        let mut last_err = None;
        for _ in 0..3 {
            let port = free_port();
            let conf = base.join("nginx.conf");
            std::fs::write(
                &conf,
                format!(
                    "worker_processes 1;\nmaster_process off;\ndaemon off;\npid {pid};\nerror_log {err} warn;\n\
                     events {{ worker_connections 4096; }}\n\
                     http {{\n  access_log off;\n  keepalive_requests 10000000;\n\
                     client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n  fastcgi_temp_path {tmp};\n\
                     uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n\
                     server {{\n    listen 127.0.0.1:{port};\n    root {root};\n{locations}  }}\n}}\n",
                    pid = base.join("nginx.pid").display(),
                    err = base.join("error.log").display(),
                    tmp = base.display(),
                    root = root.display(),
                ),
            )?;
            let mut cmd = Command::new(nginx);
            cmd.arg("-c").arg(&conf).arg("-p").arg(&base);
            let log = base.join("nginx.out");
            let mut daemon = Daemon::spawn("nginx", cmd, &log, Duration::from_secs(5))?;
            let url = format!("http://127.0.0.1:{port}");
            let probe = format!("{url}{}", files.first().map_or("/", |f| f.0));
            match wait_ready(&mut daemon, &[probe]).await {
                Ok(()) => return Ok(StaticServer { daemon, url }),
                Err(e) => {
                    daemon.stop();
                    last_err = Some(e.context(format!(
                        "nginx did not start: {}",
                        std::fs::read_to_string(base.join("error.log")).unwrap_or_default()
                    )));
                }
            }
        }
        Err(last_err.expect("three attempts were made"))
    }

    /// nginx's process id (one process: `master_process off`).
    pub fn pid(&self) -> Result<u32> {
        self.daemon.pid().context("nginx is not running")
    }
}

/// What `wrk` measured.
#[derive(Clone, Debug)]
pub struct Wrk {
    /// Requests per second.
    pub per_sec: f64,
    /// Latency percentiles.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Non-2xx answers and socket errors.
    pub errors: u64,
    /// Requests completed.
    pub requests: u64,
    /// CPU time the server spent meanwhile (utime + stime).
    pub server_cpu_secs: f64,
}

impl Wrk {
    /// Requests answered per second of the server's CPU: what one CPU
    /// can serve, whoever the client is (the client's CPU may be the
    /// bottleneck of `per_sec`).
    pub fn per_cpu_sec(&self) -> f64 {
        self.requests as f64 / self.server_cpu_secs.max(1e-9)
    }

    /// `N req/s; p50 …, p99 …; µs of server CPU per request` (and errors,
    /// if any).
    pub fn describe(&self) -> String {
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
        let mut s = format!(
            "{:.0} req/s; p50 {}, p99 {}; server CPU {:.1} µs/req = {:.0} req/s per CPU",
            self.per_sec,
            ms(self.p50),
            ms(self.p99),
            self.server_cpu_secs * 1e6 / (self.requests.max(1) as f64),
            self.per_cpu_sec()
        );
        if self.errors > 0 {
            s.push_str(&format!("; {} errors", self.errors));
        }
        s
    }
}

/// `wrk` with `connections` keep-alive connections (one thread, on the
/// clients' CPU) asking for `url` with `accept` for `duration`, and the CPU
/// time the server (process `server`) spent meanwhile.
pub async fn wrk(
    cpus: &CpuSplit,
    url: &str,
    accept: &str,
    connections: usize,
    duration: Duration,
    server: u32,
) -> Result<Wrk> {
    let bin = require_tool("wrk", "wrk")?;
    let args = vec![
        "-t1".to_owned(),
        format!("-c{connections}"),
        format!("-d{}s", duration.as_secs().max(1)),
        "--latency".to_owned(),
        "-H".to_owned(),
        format!("Accept: {accept}"),
        url.to_owned(),
    ];
    let (bin, args) = cpus.client_command(&bin, args);
    let before = sample(server)?.cpu_secs;
    let out = run_tool(&bin, &args, &[], duration + Duration::from_secs(30))
        .await
        .with_context(|| format!("wrk against {url}"))?;
    let server_cpu_secs = sample(server)?.cpu_secs - before;
    let mut w = parse(&out.stdout).with_context(|| format!("wrk's output:\n{}", out.stdout))?;
    w.server_cpu_secs = server_cpu_secs;
    Ok(w)
}

/// Reads `Requests/sec`, the 50 % and 99 % latencies and the errors from
/// wrk's `--latency` report.
fn parse(out: &str) -> Result<Wrk> {
    let mut per_sec = None;
    let mut requests = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = 0u64;
    for line in out.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(n)) => per_sec = n.parse::<f64>().ok(),
            (Some(n), Some("requests")) => requests = n.parse::<u64>().ok(),
            (Some("50%"), Some(t)) => p50 = duration(t),
            (Some("99%"), Some(t)) => p99 = duration(t),
            (Some("Non-2xx"), _) => {
                errors += line
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            }
            (Some("Socket"), Some("errors:")) => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                errors += line
                    .split(',')
                    .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    match (per_sec, p50, p99, requests) {
        (Some(per_sec), Some(p50), Some(p99), Some(requests)) => Ok(Wrk {
            per_sec,
            p50,
            p99,
            errors,
            requests,
            server_cpu_secs: 0.0,
        }),
        _ => bail!("no Requests/sec or latency distribution in wrk's output"),
    }
}

/// `123.45us`, `1.23ms`, `2.00s`.
fn duration(t: &str) -> Option<Duration> {
    let (number, scale) = if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    Some(Duration::from_secs_f64(number.parse::<f64>().ok()? * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrks_report() {
        let out = "Running 2s test @ http://127.0.0.1:1/v2/x\n  1 threads and 64 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.51ms  310.00us   9.00ms   90.00%\n  Latency Distribution\n     50%  845.00us\n     75%    1.60ms\n     90%    1.80ms\n     99%    2.50ms\n  84012 requests in 2.00s, 100.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  42006.00\nTransfer/sec:     50.00MB\n";
        let w = parse(out).unwrap();
        assert_eq!(w.per_sec, 42006.0);
        assert_eq!(w.p50, Duration::from_micros(845));
        assert_eq!(w.p99, Duration::from_micros(2500));
        assert_eq!(w.errors, 7);
        assert_eq!(w.requests, 84012);
        assert!(parse("garbage").is_err());
    }
}
