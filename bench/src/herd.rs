//! Item 1: upstream amplification under a herd of concurrent cold pulls,
//! and the herd puller that items 2 and 5 reuse.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::task::JoinSet;
use wharf_tests::upstream::{Counts, Kind, Proxy};
use wharf_tests::{PushedImage, pull_with_reqwest};

use crate::probe::{secs, size};
use crate::report::{Row, Verdict};
use crate::systems::{Systems, WHARF_PREFIX};

/// What a herd of concurrent verifying pulls saw.
pub(crate) struct Herd {
    pub(crate) took: Duration,
    pub(crate) counts: Counts,
    pub(crate) failed: usize,
    first_error: Option<String>,
}

/// `clients` concurrent pulls of `repo:v1` from `base`, each in its own task
/// (the pullers hash what they receive; one task would serialise that).
pub(crate) async fn herd_pull(base: &str, repo: &str, clients: usize, counter: &Proxy) -> Herd {
    counter.reset_counts();
    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..clients {
        let (base, repo) = (base.to_owned(), repo.to_owned());
        set.spawn(async move { pull_with_reqwest(&base, &repo, "v1").await });
    }
    let mut failed = 0;
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        let err = match r {
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) => format!("puller task: {e}"),
        };
        failed += 1;
        first_error.get_or_insert(err);
    }
    Herd {
        took: start.elapsed(),
        counts: counter.counts(),
        failed,
        first_error,
    }
}

/// Upstream GETs per unique blob: (mean, max).
pub(crate) fn gets_per_blob(c: &Counts, img: &PushedImage) -> (f64, u64) {
    let per: Vec<u64> = img
        .blobs()
        .iter()
        .map(|(d, _)| c.for_path("GET", Kind::Blob, d))
        .collect();
    let mean = per.iter().sum::<u64>() as f64 / per.len().max(1) as f64;
    (mean, per.iter().copied().max().unwrap_or(0))
}

pub(crate) fn failures(h: &Herd, clients: usize) -> String {
    match &h.first_error {
        None => String::new(),
        Some(e) => {
            let mut e = e.replace('\n', " ");
            e.truncate(160);
            format!(" ({} of {clients} pulls FAILED: {e})", h.failed)
        }
    }
}

pub(crate) async fn herd(sys: &Systems, img: &PushedImage, clients: usize) -> Result<Vec<Row>> {
    let wharf_repo = format!("{WHARF_PREFIX}/{}", img.repo);
    let w = herd_pull(&sys.wharf.url, &wharf_repo, clients, &sys.wharf_up).await;
    wait_hydrations(sys).await?;
    let d = herd_pull(&sys.dist.url, &img.repo, clients, &sys.dist_up).await;
    let (w_mean, w_max) = gets_per_blob(&w.counts, img);
    let (d_mean, d_max) = gets_per_blob(&d.counts, img);
    let shape = format!(
        "{clients} concurrent cold pulls of {} layers × {} + config",
        img.layer_sizes.len(),
        size(img.layer_sizes[0])
    );
    let manifests = |c: &Counts| {
        format!(
            "GET {}, HEAD {}",
            c.get("GET", Kind::Manifest),
            c.get("HEAD", Kind::Manifest)
        )
    };
    let w_ok = w.failed == 0 && w_max == 1 && w_mean == 1.0;
    Ok(vec![
        Row::new(
            "1",
            format!("herd: upstream GETs per unique blob, mean (max); {shape}"),
            format!("{w_mean:.2} (max {w_max}){}", failures(&w, clients)),
            format!("{d_mean:.2} (max {d_max}){}", failures(&d, clients)),
            format!("{clients}.00 (one per client)"),
            format!("{:.3} × Distribution", w_mean / d_mean.max(1e-9)),
            "= 1.00 for Wharf",
            Verdict::of(w_ok),
        ),
        Row::new(
            "1",
            "herd: upstream manifest requests",
            manifests(&w.counts),
            manifests(&d.counts),
            format!("GET {clients}"),
            "—",
            "reported",
            Verdict::Info,
        ),
        Row::new(
            "1",
            "herd: wall time until every client verified every blob",
            secs(w.took),
            secs(d.took),
            "—",
            format!(
                "{:.2} × Distribution",
                w.took.as_secs_f64() / d.took.as_secs_f64()
            ),
            "reported",
            Verdict::Info,
        ),
    ])
}

/// Waits until the origin has no hydration in flight (uploads finish after
/// the last client byte), so that the next phase starts quiet.
pub(crate) async fn wait_hydrations(sys: &Systems) -> Result<()> {
    let start = Instant::now();
    loop {
        if sys.wharf.metric("wharf_hydrations_in_flight", &[]).await? == 0.0 {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("hydrations still in flight after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
