//! The edge in the bench (items 3b and 7): the real Worker bundle under
//! `wrangler dev --local`, with one region whose origin is the bench's
//! `wharf-origin` and whose bucket is that origin's embedded store.
//!
//! * 3b — a warm pull through the edge: every blob request must be a `307`
//!   to a presigned store URL (checked in wrangler's request log), and the
//!   origin must serve 0 blob bytes (its `wharf_served_bytes_total` does not
//!   move); the time is compared with Distribution's warm pull.
//! * 7 — the bundle's compressed size (what `wrangler deploy` uploads), and
//!   the Worker's time per warm manifest request and per blob redirect,
//!   measured as request latency from a keep-alive client under `wrangler
//!   dev` on this machine. That is wall time through workerd's local HTTP
//!   stack, an upper bound on the Worker's CPU time (which only a deployed
//!   Worker reports); it is what this machine can measure honestly.

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

/// Latencies of `n` sequential warm requests for the manifest `repo:v1` and
/// for a redirect of `blob`: (manifest p50, p99, blob p50, p99).
pub async fn request_times(
    edge: &Edge,
    repo: &str,
    blob: &str,
    n: usize,
) -> Result<(Duration, Duration, Duration, Duration)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(Policy::none())
        .pool_max_idle_per_host(1)
        .build()?;
    let token: serde_json::Value = client
        .get(format!("{}/token", edge.url()))
        .query(&[
            ("service", GLOBAL_HOST.to_owned()),
            ("scope", format!("repository:{repo}:pull")),
        ])
        .send()
        .await?
        .json()
        .await?;
    let token = token["token"]
        .as_str()
        .context("no token from the edge")?
        .to_owned();
    let times = |path: String, want: u16| {
        let (client, token, url) = (
            client.clone(),
            token.clone(),
            format!("{}{path}", edge.url()),
        );
        async move {
            let mut t = Vec::with_capacity(n);
            // One request first so both caches are warm.
            for i in 0..=n {
                let started = Instant::now();
                let r = client
                    .get(&url)
                    .bearer_auth(&token)
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
                if i > 0 {
                    t.push(started.elapsed());
                }
            }
            t.sort();
            Ok::<_, anyhow::Error>(t)
        }
    };
    let m = times(format!("/v2/{repo}/manifests/v1"), 200).await?;
    let b = times(format!("/v2/{repo}/blobs/{blob}"), 307).await?;
    let pct = |v: &[Duration], p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    Ok((pct(&m, 0.5), pct(&m, 0.99), pct(&b, 0.5), pct(&b, 0.99)))
}
