//! The edge in the bench (items 3b and 7): the real Worker bundle under
//! `wrangler dev --local`, with one region whose origin is the bench's
//! `wharf-origin` and whose bucket is that origin's embedded store.
//!
//! * 3b — a warm pull through the edge: every blob request must be a `307`
//!   to a presigned store URL (checked in wrangler's request log), and the
//!   origin must serve 0 blob bytes (its `wharf_served_bytes_total` does not
//!   move); the time is compared with Distribution's warm pull.
//! * 7 — the bundle's compressed size (what `wrangler deploy` uploads), and
//!   the Worker's CPU time per warm manifest request and per blob redirect:
//!   the CPU workerd spends (read from `/proc`) over sequential requests from
//!   one keep-alive client, less the same for `/healthz`, which the Worker
//!   answers before any routing (workerd's HTTP serving and wrangler's local
//!   entry worker are the floor). Only a deployed Worker reports its own CPU
//!   time; this is the closest this machine can measure honestly, and still
//!   an upper bound (it includes the local KV and Cache API simulation).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use reqwest::redirect::Policy;
use wharf_tests::edge::{Edge, EdgeOpts, EdgeRegion, EdgeRule, GLOBAL_HOST, workspace_root};

use crate::systems::{Systems, WHARF_PREFIX};

/// The Worker, and the address clients use for it.
pub struct BenchEdge {
    /// Forwards to the Worker. skopeo tries HTTPS before HTTP on a
    /// registry whose TLS is not verified; workerd's dev listener leaves a
    /// TLS hello unanswered until skopeo's 10 s handshake timeout, where a
    /// real HTTP server (Distribution, the origin, this proxy) fails it at
    /// once. Only the small API answers pass through it; blob bytes go from
    /// the store to the client.
    pub front: wharf_tests::upstream::Proxy,
    /// `wrangler dev`.
    pub edge: Edge,
}

/// Starts `wrangler dev` in front of the bench's origin and store.
pub async fn start(sys: &Systems) -> Result<BenchEdge> {
    let edge = start_worker(sys).await?;
    let addr = edge.host().parse().context("the edge's address")?;
    let front = wharf_tests::upstream::Proxy::counting(addr).await?;
    Ok(BenchEdge { front, edge })
}

async fn start_worker(sys: &Systems) -> Result<Edge> {
    let (endpoint, bucket, region, ak, sk) = sys.wharf.store();
    let opts = EdgeOpts {
        regions: vec![EdgeRegion {
            s3_endpoint: Some(endpoint),
            bucket: Some(bucket.to_owned()),
            s3_region: Some(region.to_owned()),
            ..EdgeRegion::new("bench", &sys.wharf.url, &["NA", "EU", "AS"])
        }],
        rules: vec![EdgeRule {
            prefix: WHARF_PREFIX.to_owned(),
            upstream: sys.wharf_up.url(),
            private: false,
            deny: Vec::new(),
        }],
        extra_vars: vec![
            ("WHARF_S3_ACCESS_KEY".into(), ak.to_owned()),
            ("WHARF_S3_SECRET_KEY".into(), sk.to_owned()),
        ],
        ..EdgeOpts::default()
    };
    Edge::start(&sys.dir, &opts).await
}

/// Compressed (gzip -9) and raw size of what `wrangler deploy` uploads.
pub fn bundle_size() -> Result<(u64, u64)> {
    let build = workspace_root().join("edge/build");
    let mut raw = 0;
    let mut gz = 0;
    let mut stack = vec![build.clone()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("wasm" | "js" | "mjs")
            ) {
                raw += std::fs::metadata(&path)?.len();
                gz += gzip_len(&path)?;
            }
        }
    }
    if raw == 0 {
        bail!("{} holds no bundle: run edge/build.sh", build.display());
    }
    Ok((gz, raw))
}

fn gzip_len(path: &Path) -> Result<u64> {
    let out = Command::new("gzip")
        .arg("-9")
        .arg("-c")
        .arg(path)
        .output()
        .context("running gzip")?;
    if !out.status.success() {
        bail!("gzip {} failed", path.display());
    }
    Ok(out.stdout.len() as u64)
}

fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .redirect(Policy::none())
        .pool_max_idle_per_host(1)
        .build()?)
}

/// A pull token for `repo` from the edge at `edge_url`.
pub async fn token(edge_url: &str, repo: &str) -> Result<String> {
    let token: serde_json::Value = client()?
        .get(format!("{edge_url}/token"))
        .query(&[
            ("service", GLOBAL_HOST.to_owned()),
            ("scope", format!("repository:{repo}:pull")),
        ])
        .send()
        .await?
        .json()
        .await?;
    Ok(token["token"]
        .as_str()
        .context("no token from the edge")?
        .to_owned())
}

/// Wall times of `n` sequential requests for `url` from one keep-alive
/// client, sorted; each must answer `want`.
pub async fn timed_requests(url: &str, token: &str, want: u16, n: usize) -> Result<Vec<Duration>> {
    let client = client()?;
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let r = client
            .get(url)
            .bearer_auth(token)
            .header(
                "Accept",
                "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
            )
            .send()
            .await?;
        let status = r.status().as_u16();
        r.bytes().await?;
        if status != want {
            bail!("{url}: HTTP {status}, expected {want}");
        }
        t.push(started.elapsed());
    }
    t.sort();
    Ok(t)
}

/// The `p` quantile of sorted timings.
pub fn quantile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}
