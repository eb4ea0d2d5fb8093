//! Item 8 (issues 14 and 17): warm manifest load — 64 (short: 16)
//! keep-alive connections asking for one warm manifest back to back, by tag
//! and by digest, against Wharf's origin, Distribution's proxy and the
//! physical limit: the same bytes as a static file served by nginx on the
//! same CPU ([`crate::limit`]). Every system is driven by `wrk` on the
//! clients' CPU.
//!
//! Two targets per reference: ≥ 3 × Distribution's requests per second at
//! no worse a p99 (issue 14), and ≥ 0.5 × the static server's requests per
//! second *per CPU* at a p99 of at most 2 ms (issue 17). Per CPU, from the
//! server's own CPU time over the run (`/proc/<pid>/stat`): with one client
//! CPU, `wrk` itself caps what a fast server answers per second (on the
//! 2-vCPU development machine, nginx and Wharf both stop at the same
//! ~75,000), but not the CPU each answer costs.

use std::time::Duration;

use anyhow::{Context, Result};
use wharf_tests::{PushedImage, pull_with_reqwest};

use crate::cpus::CpuSplit;
use crate::limit::{StaticServer, Wrk, wrk};
use crate::probe;
use crate::report::{Row, Verdict};
use crate::systems::{Systems, WHARF_PREFIX};

/// Wharf's requests per second ÷ Distribution's, at no worse a p99.
const DIST_TARGET: f64 = 3.0;
/// Wharf's requests per second ÷ the static server's.
const STATIC_TARGET: f64 = 0.5;
/// Wharf's p99 against the static server.
const P99_TARGET: Duration = Duration::from_millis(2);

/// Runs of each system and reference; the best is reported.
const LOAD_ROUNDS: usize = 2;

const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// Item 8: the same warm-manifest load against Wharf, Distribution and
/// nginx.
pub(crate) async fn warm_manifests(
    sys: &Systems,
    img: &PushedImage,
    clients: usize,
    duration: Duration,
    cpus: &CpuSplit,
) -> Result<Vec<Row>> {
    let wharf_repo = format!("{WHARF_PREFIX}/{}", img.repo);
    // Warm both caches (and Distribution's token, if any) first.
    pull_with_reqwest(&sys.wharf.url, &wharf_repo, "v1")
        .await
        .context("warming Wharf")?;
    pull_with_reqwest(&sys.dist.url, &img.repo, "v1")
        .await
        .context("warming Distribution")?;
    let limit = StaticServer::start(
        &sys.dir,
        &[(
            "/v2/static/manifest",
            &img.manifest_media_type,
            &img.manifest[..],
        )],
    )
    .await
    .context("starting nginx, the static limit")?;
    let (wharf_pid, dist_pid, limit_pid) = (sys.wharf.pid()?, sys.dist.pid()?, limit.pid()?);
    let servers = [wharf_pid, dist_pid, limit_pid];
    // Each run starts with every server idle: Distribution keeps its CPU
    // (shared with Wharf's) busy for seconds after its run ends.
    let run = |url: String, pid: u32| async move {
        probe::quiet(&servers, "item 8").await?;
        wrk(cpus, &url, ACCEPT, clients, duration, pid).await
    };
    // Interleaved rounds, the best (lowest p99, no errors) of each system
    // kept: a p99 on this VM moves by a millisecond between runs for nginx
    // as for Wharf (1.3–3.0 ms for nginx on 2026-12-01).
    let refs = [
        ("tag", "v1".to_owned(), ["8", "8b"]),
        ("digest", img.manifest_digest.clone(), ["8c", "8d"]),
    ];
    let mut best: [Option<Wrk>; 5] = Default::default();
    for _ in 0..LOAD_ROUNDS {
        let l = run(format!("{}/v2/static/manifest", limit.url), limit_pid)
            .await
            .context("nginx")?;
        keep_better(&mut best[0], l);
        for (i, (_, reference, _)) in refs.iter().enumerate() {
            let w = run(
                format!("{}/v2/{wharf_repo}/manifests/{reference}", sys.wharf.url),
                wharf_pid,
            )
            .await
            .context("Wharf")?;
            keep_better(&mut best[1 + 2 * i], w);
            let d = run(
                format!("{}/v2/{}/manifests/{reference}", sys.dist.url, img.repo),
                dist_pid,
            )
            .await
            .context("Distribution")?;
            keep_better(&mut best[2 + 2 * i], d);
        }
    }
    let [Some(limit), Some(wt), Some(dt), Some(wd), Some(dd)] = best else {
        anyhow::bail!("item 8 made no runs");
    };
    let mut rows = rows_for(refs[0].0, refs[0].2, clients, duration, &wt, &dt, &limit);
    rows.extend(rows_for(
        refs[1].0, refs[1].2, clients, duration, &wd, &dd, &limit,
    ));
    Ok(rows)
}

/// Keeps in `best` whichever of it and `run` answered without errors at
/// the lower p99.
fn keep_better(best: &mut Option<Wrk>, run: Wrk) {
    let key = |w: &Wrk| (w.errors > 0, w.p99);
    if best.as_ref().is_none_or(|b| key(&run) < key(b)) {
        *best = Some(run);
    }
}

fn rows_for(
    by: &str,
    items: [&str; 2],
    clients: usize,
    duration: Duration,
    w: &Wrk,
    d: &Wrk,
    limit: &Wrk,
) -> Vec<Row> {
    let what = format!(
        "warm manifest load by {by}: {clients} keep-alive connections for {:.0} s (wrk), the static limit nginx; the lowest p99 of {LOAD_ROUNDS} interleaved runs each",
        duration.as_secs_f64()
    );
    let vs_dist = w.per_sec / d.per_sec.max(1e-9);
    // Per CPU second of the server: on a small machine the one client CPU
    // may cap both Wharf's and nginx's requests per second.
    let vs_limit = w.per_cpu_sec() / limit.per_cpu_sec().max(1e-9);
    let healthy = w.errors == 0 && w.per_sec > 0.0;
    vec![
        Row::new(
            items[0],
            what.clone(),
            w.describe(),
            d.describe(),
            limit.describe(),
            format!("{vs_dist:.2} × Distribution req/s"),
            format!("≥ {DIST_TARGET:.2} × Distribution req/s at ≤ its p99"),
            Verdict::of(healthy && vs_dist >= DIST_TARGET && w.p99 <= d.p99),
        ),
        Row::new(
            items[1],
            what,
            w.describe(),
            d.describe(),
            limit.describe(),
            format!("{vs_limit:.2} × static req/s per CPU"),
            format!(
                "≥ {STATIC_TARGET:.2} × static req/s per CPU, p99 ≤ {} ms",
                P99_TARGET.as_millis()
            ),
            Verdict::of(healthy && vs_limit >= STATIC_TARGET && w.p99 <= P99_TARGET),
        ),
    ]
}
