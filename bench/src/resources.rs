//! Item 5: the cache process's peak RSS and CPU while a herd cold-pulls a
//! large blob, beside a blob 8× smaller (memory must not grow with blob
//! size).

use anyhow::Result;
use wharf_tests::PushedImage;
use wharf_tests::upstream::Proxy;

use crate::herd::{Herd, failures, gets_per_blob, herd_pull, wait_hydrations};
use crate::probe::{self, secs, size};
use crate::report::{Row, Verdict};
use crate::systems::{Systems, WHARF_PREFIX};
use crate::{GIB, MIB};

/// The origin's manifest cache budget (`limits.manifest_cache_mib`, its
/// default, as the bench runs it).
pub(crate) const MANIFEST_CACHE: u64 = 32 * MIB;
/// Target of item 5 (issue 17): 64 MiB plus the manifest cache's budget.
pub(crate) const RSS_TARGET: u64 = 64 * MIB + MANIFEST_CACHE;

pub(crate) async fn resources(
    sys: &Systems,
    img: &PushedImage,
    small: &PushedImage,
    clients: usize,
) -> Result<Vec<Row>> {
    // The smaller blob first: its peak beside the large one's shows whether
    // memory grows with blob size.
    let w_small = measure(
        sys.wharf.pid()?,
        &sys.wharf.url,
        &format!("{WHARF_PREFIX}/{}", small.repo),
        clients,
        &sys.wharf_up,
        wait_hydrations(sys),
    )
    .await?;
    let wharf_repo = format!("{WHARF_PREFIX}/{}", img.repo);
    let w = measure(
        sys.wharf.pid()?,
        &sys.wharf.url,
        &wharf_repo,
        clients,
        &sys.wharf_up,
        wait_hydrations(sys),
    )
    .await?;
    let d = measure(
        sys.dist.pid()?,
        &sys.dist.url,
        &img.repo,
        clients,
        &sys.dist_up,
        async { Ok(()) },
    )
    .await?;
    Ok(rows(img, small, clients, &w_small, &w, &d))
}

/// One herd, and the cache process before and after it.
struct Used {
    herd: Herd,
    before: probe::ProcSample,
    after: probe::ProcSample,
}
/// Runs a herd against `pid`'s service; `settle` waits for the work the
/// herd left behind (uploads) before the second sample.
async fn measure(
    pid: u32,
    base: &str,
    repo: &str,
    clients: usize,
    counter: &Proxy,
    settle: impl std::future::Future<Output = Result<()>>,
) -> Result<Used> {
    probe::reset_peak_rss(pid)?;
    let before = probe::sample(pid)?;
    let herd = herd_pull(base, repo, clients, counter).await;
    settle.await?;
    let after = probe::sample(pid)?;
    Ok(Used {
        herd,
        before,
        after,
    })
}

/// The rows of item 5.
fn rows(
    img: &PushedImage,
    small: &PushedImage,
    clients: usize,
    w_small: &Used,
    w: &Used,
    d: &Used,
) -> Vec<Row> {
    let served = (clients as u64 * img.total_size) as f64 / GIB as f64;
    let rss = |u: &Used| {
        format!(
            "{:.1} MiB peak ({:.1} MiB before){}",
            u.after.hwm as f64 / MIB as f64,
            u.before.rss as f64 / MIB as f64,
            failures(&u.herd, clients)
        )
    };
    let cpu = |u: &Used| {
        let s = u.after.cpu_secs - u.before.cpu_secs;
        format!(
            "{s:.1} s CPU, {:.2} s/GiB served; wall {}",
            s / served,
            secs(u.herd.took)
        )
    };
    let gets = |u: &Used| {
        let (mean, max) = gets_per_blob(&u.herd.counts, img);
        format!("{mean:.2} (max {max})")
    };
    let shape = format!(
        "{clients} clients cold-pulling a {} single-layer image ({} served)",
        size(img.layer_sizes[0]),
        size(clients as u64 * img.total_size)
    );
    vec![
        Row::new(
            "5",
            format!("peak RSS of the cache process; {shape}"),
            format!(
                "{}; with a {} blob: {:.1} MiB peak",
                rss(w),
                size(small.layer_sizes[0]),
                w_small.after.hwm as f64 / MIB as f64
            ),
            rss(d),
            "—",
            format!(
                "{:.2} × Distribution",
                w.after.hwm as f64 / d.after.hwm.max(1) as f64
            ),
            format!(
                "≤ 64 MiB + the manifest cache's {} MiB, flat in blob size",
                MANIFEST_CACHE / MIB
            ),
            Verdict::of(
                w.after.hwm <= RSS_TARGET
                    && w_small.after.hwm <= RSS_TARGET
                    && w.herd.failed + w_small.herd.failed == 0,
            ),
        ),
        Row::new(
            "5",
            "CPU time of the cache process (utime + stime), same herd",
            cpu(w),
            cpu(d),
            "—",
            format!(
                "{:.2} × Distribution",
                (w.after.cpu_secs - w.before.cpu_secs)
                    / (d.after.cpu_secs - d.before.cpu_secs).max(1e-9)
            ),
            "reported (per GiB)",
            Verdict::Info,
        ),
        Row::new(
            "5",
            "upstream GETs per blob, same herd",
            gets(w),
            gets(d),
            format!("{clients}.00"),
            "—",
            "reported",
            Verdict::Info,
        ),
    ]
}
