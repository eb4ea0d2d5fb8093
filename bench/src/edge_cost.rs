//! Item 7: the edge's cost — the Worker bundle's size, and the CPU time
//! workerd spends per warm manifest request and per blob redirect above the
//! floor of a request answered before any routing.

use std::time::Duration;

use anyhow::{Context, Result};
use wharf_tests::PushedImage;

use crate::cpus::CpuSplit;
use crate::edge::{self, BenchEdge};
use crate::probe;
use crate::report::{Row, Verdict};
use crate::systems::WHARF_PREFIX;

/// Target of item 7 (issue 17): the Worker's CPU time per warm request
/// (a tenth of the CPU limit of Workers' free plan).
pub(crate) const EDGE_CPU_TARGET: Duration = Duration::from_millis(1);
/// Target of item 7 (issue 17): the bundle, gzipped.
pub(crate) const BUNDLE_TARGET: u64 = 512 * 1024;

pub(crate) async fn edge_cost(
    edge: Option<&BenchEdge>,
    img: &PushedImage,
    n: usize,
    cpus: &CpuSplit,
) -> Result<Vec<Row>> {
    let edge = &edge.context("the edge did not start")?.edge;
    let pid = edge.pid().context("wrangler dev is not running")?;
    let (gz, raw) = edge::bundle_size()?;
    let repo = format!("{WHARF_PREFIX}/{}", img.repo);
    let token = edge::token(&edge.url(), &repo).await?;
    let manifest = EdgeTiming::measure(
        cpus,
        pid,
        format!("{}/v2/{repo}/manifests/v1", edge.url()),
        &token,
        200,
        n,
    )
    .await?;
    // A warm redirect: the blob is hydrated first (fetched once through the
    // redirect to the origin), so the edge redirects to the store.
    let blob_url = format!("{}/v2/{repo}/blobs/{}", edge.url(), img.layer_digests[0]);
    reqwest::Client::new()
        .get(&blob_url)
        .bearer_auth(&token)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let redirect = EdgeTiming::measure(cpus, pid, blob_url.clone(), &token, 307, n).await?;
    // The floor: a request the Worker answers before reading its
    // configuration. What workerd spends on it is its own HTTP serving and
    // wrangler's local entry worker, none of which a deployed Worker is
    // billed for; the rest of a request's CPU is the handler's.
    let floor =
        EdgeTiming::measure(cpus, pid, format!("{}/healthz", edge.url()), &token, 200, n).await?;
    // `/v2/` with a token: configuration, routing and the token check, but
    // no cache or KV reads. What a manifest or redirect costs above it is
    // the Cache API and KV (simulated by wrangler here, I/O when deployed).
    let base =
        EdgeTiming::measure(cpus, pid, format!("{}/v2/", edge.url()), &token, 200, n).await?;
    let ms = |s: f64| format!("{:.1} ms", s * 1000.0);
    let describe = |t: &EdgeTiming| {
        format!(
            "**handler {}** (workerd {} − floor; {} with wrangler's own processes); wall p50 {} (p99 {})",
            ms(t.handler_cpu(&floor)),
            ms(t.workerd_cpu),
            ms(t.tree_cpu),
            ms(edge::quantile(&t.wall, 0.5).as_secs_f64()),
            ms(edge::quantile(&t.wall, 0.99).as_secs_f64()),
        )
    };
    let limit = EDGE_CPU_TARGET.as_secs_f64();
    let ok = gz <= BUNDLE_TARGET
        && manifest.handler_cpu(&floor) <= limit
        && redirect.handler_cpu(&floor) <= limit;
    Ok(vec![Row::new(
        "7",
        format!(
            "edge cost: bundle size; CPU time per warm manifest request and per blob redirect, measured in `wrangler dev` as the CPU time workerd spent over {n} sequential requests from one keep-alive client, less the same for `/healthz` (answered before any routing: workerd's HTTP serving and wrangler's entry worker, the floor). The handler's share still includes the local KV and Cache API simulation, so it is an upper bound"
        ),
        format!(
            "bundle {} KiB gzip ({} KiB raw); manifest: {}; blob redirect: {}; floor (`/healthz`): workerd {}, wall p50 {}; `/v2/` with a token (config, routing, token check; no cache or KV reads): handler {}",
            gz / 1024,
            raw / 1024,
            describe(&manifest),
            describe(&redirect),
            ms(floor.workerd_cpu),
            ms(edge::quantile(&floor.wall, 0.5).as_secs_f64()),
            ms(base.handler_cpu(&floor)),
        ),
        "n/a",
        "n/a",
        "—",
        format!(
            "bundle ≤ {} KiB gzip; handler CPU ≤ {} per request",
            BUNDLE_TARGET / 1024,
            ms(limit)
        ),
        Verdict::of(ok),
    )])
}

/// Untimed requests before each kind of edge request is measured.
pub(crate) const WARMUP: usize = 30;

/// One kind of edge request, timed.
pub(crate) struct EdgeTiming {
    /// Wall times, sorted.
    wall: Vec<Duration>,
    /// workerd's CPU seconds per request.
    workerd_cpu: f64,
    /// CPU seconds per request of `wrangler dev` and all its processes.
    tree_cpu: f64,
}

impl EdgeTiming {
    /// CPU per request above `floor`'s (never negative).
    fn handler_cpu(&self, floor: &EdgeTiming) -> f64 {
        (self.workerd_cpu - floor.workerd_cpu).max(0.0)
    }

    async fn measure(
        cpus: &CpuSplit,
        wrangler: u32,
        url: String,
        token: &str,
        want: u16,
        n: usize,
    ) -> Result<EdgeTiming> {
        let sum = |procs: &[(String, f64)], only: Option<&str>| -> f64 {
            procs
                .iter()
                .filter(|(comm, _)| only.is_none_or(|o| comm == o))
                .map(|(_, cpu)| cpu)
                .sum()
        };
        // V8 compiles the Worker's hot paths in tiers over its first
        // requests, and the first fills the caches: those are not what a
        // steady request costs.
        let token = token.to_owned();
        let (u, t) = (url.clone(), token.clone());
        cpus.on_client(move || async move { edge::timed_requests(&u, &t, want, WARMUP).await })
            .await??;
        let before = probe::tree_cpu(wrangler)?;
        let wall = cpus
            .on_client(move || async move { edge::timed_requests(&url, &token, want, n).await })
            .await??;
        let after = probe::tree_cpu(wrangler)?;
        let per = |only| (sum(&after, only) - sum(&before, only)).max(0.0) / n.max(1) as f64;
        Ok(EdgeTiming {
            wall,
            workerd_cpu: per(Some("workerd")),
            tree_cpu: per(None),
        })
    }
}
