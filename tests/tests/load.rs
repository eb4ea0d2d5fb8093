//! Issue 14, load: many concurrent clients mixing warm manifest and blob
//! requests with cold pulls of distinct images, for a fixed time. Every
//! answer is verified (the pullers hash what they receive); the only errors
//! allowed are the origin's own `429`/`503` refusals (none are expected at
//! these sizes); the origin's peak RSS and open file descriptors are
//! reported and bounded, and every cold image cost one upstream fetch per
//! blob.
//!
//! CI runs the short form (40 clients, 5 s, 5 cold images). The long form is
//! `WHARF_LOAD_CLIENTS=200 WHARF_LOAD_SECS=60 WHARF_LOAD_IMAGES=20`, which
//! `scripts/test.sh --long` sets.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use wharf_tests::clients::oci_error_of;
use wharf_tests::{ImageSpec, Kind, Stack, http_client, pull_with_reqwest};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `VmHWM` (peak RSS, bytes) and open descriptors of `pid`.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (kib * 1024, fds)
}

#[derive(Default)]
struct Tally {
    ok: u64,
    refused: u64,
    manifest_times: Vec<Duration>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_warm_and_cold_pulls_stay_correct_and_bounded() {
    let clients = setting("WHARF_LOAD_CLIENTS", 40) as usize;
    let secs = setting("WHARF_LOAD_SECS", 5);
    let cold_images = setting("WHARF_LOAD_IMAGES", 5) as usize;
    let s = Stack::start("load").await.unwrap();
    let warm = ImageSpec::docker(&[256 << 10, 64 << 10])
        .push(&s.upstream, "team/warm", "v1")
        .await
        .unwrap();
    let mut cold = Vec::new();
    for i in 0..cold_images {
        let img = ImageSpec::docker(&[512 << 10, 128 << 10])
            .push(&s.upstream, &format!("team/cold{i}"), "v1")
            .await
            .unwrap();
        cold.push(img);
    }
    s.pull("team/warm", "v1").await.unwrap();
    s.upstream.reset_counts();
    let pid = s.origin.pid().unwrap();
    let (rss_before, fds_before) = usage(pid);

    let base = s.base();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = JoinSet::new();
    for c in 0..clients {
        let base = base.clone();
        let warm_repo = s.repo("team/warm");
        let blob = warm.layer_digests[0].clone();
        // Every fifth client pulls the cold images, one after another,
        // starting at a different one; the rest hammer warm content.
        let cold_repos: Vec<String> = (0..cold.len())
            .map(|i| s.repo(&format!("team/cold{}", (i + c) % cold.len().max(1))))
            .collect();
        tasks.spawn(async move {
            let http = http_client();
            let mut tally = Tally::default();
            let mut next_cold = 0;
            while Instant::now() < deadline {
                let result = if c % 5 == 0 && next_cold < cold_repos.len() {
                    next_cold += 1;
                    pull_with_reqwest(&base, &cold_repos[next_cold - 1], "v1")
                        .await
                        .map(drop)
                } else if c % 2 == 0 {
                    let t = Instant::now();
                    let r =
                        wharf_tests::clients::get_manifest(&http, &base, &warm_repo, "v1").await;
                    tally.manifest_times.push(t.elapsed());
                    r.map(drop)
                } else {
                    wharf_tests::clients::fetch_blob(&http, &base, &warm_repo, &blob, None)
                        .await
                        .map(drop)
                };
                match result {
                    Ok(()) => tally.ok += 1,
                    Err(e) => match oci_error_of(&e).map(|e| e.status) {
                        Some(429 | 503) => tally.refused += 1,
                        _ => panic!("client {c}: {e:#}"),
                    },
                }
            }
            tally
        });
    }
    let mut all = Tally::default();
    while let Some(t) = tasks.join_next().await {
        let t = t.unwrap();
        all.ok += t.ok;
        all.refused += t.refused;
        all.manifest_times.extend(t.manifest_times);
    }
    let (rss_peak, _) = usage(pid);
    let (_, fds_after) = usage(pid);
    all.manifest_times.sort();
    let q = |p: f64| {
        let v = &all.manifest_times;
        v.get(((v.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    eprintln!(
        "load: {clients} clients, {secs} s: {} ok, {} refused (429/503); warm manifest p50 {:?}, p99 {:?}; origin peak RSS {} MiB (before {} MiB), fds {} after (before {})",
        all.ok,
        all.refused,
        q(0.5),
        q(0.99),
        rss_peak >> 20,
        rss_before >> 20,
        fds_after,
        fds_before
    );
    assert!(all.ok > clients as u64, "{} answers in {secs} s", all.ok);
    assert!(rss_peak < 256 << 20, "peak RSS {} MiB", rss_peak >> 20);
    // Descriptors come back once the clients are gone (keep-alive
    // connections close with them; give the origin a moment).
    wharf_tests::wait_until(
        "descriptors to come back",
        Duration::from_secs(10),
        || async { Ok(usage(pid).1 <= fds_before + 16) },
    )
    .await
    .unwrap();
    // One upstream fetch per blob of every cold image that was pulled.
    let counts = s.upstream.counts();
    for img in &cold {
        for (digest, _) in img.blobs() {
            let gets = counts.for_path("GET", Kind::Blob, &digest);
            assert!(gets <= 1, "{digest}: {gets} upstream GETs\n{counts}");
        }
    }
    assert_eq!(
        counts.for_path("GET", Kind::Blob, &warm.layer_digests[0]),
        0
    );
}
