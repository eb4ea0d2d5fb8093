//! Item 6: streaming a cached blob, and hashing, beside the physical limits
//! (a plain download from the store; `sha256sum` and `openssl dgst`).

use anyhow::{Context, Result, ensure};
use wharf_tests::PushedImage;

use crate::cpus::CpuSplit;
use crate::probe::{self, gbps, size};
use crate::report::{Row, Verdict};
use crate::systems::{Systems, WHARF_PREFIX};

/// Targets of item 6: a cached blob through the origin at this fraction of
/// a plain download from its store (issue 17: 0.95), and the origin's hash
/// at this fraction of the faster of `sha256sum` and `openssl dgst
/// -sha256`.
pub(crate) const STREAM_TARGET: f64 = 0.95;
pub(crate) const HASH_TARGET: f64 = 0.90;
/// Streaming rounds beyond `runs`: one download of a few GiB swings by
/// ±20 % with the page cache and writeback, so each system gets more tries.
const STREAM_EXTRA_ROUNDS: usize = 2;

pub(crate) async fn throughput(
    sys: &Systems,
    img: &PushedImage,
    runs: usize,
    cpus: &CpuSplit,
) -> Result<Vec<Row>> {
    let digest = img
        .layer_digests
        .first()
        .context("image without layers")?
        .clone();
    let len = img.layer_sizes[0];
    let hex = digest.trim_start_matches("sha256:").to_owned();
    let wharf_url = format!(
        "{}/v2/{WHARF_PREFIX}/{}/blobs/{digest}",
        sys.wharf.url, img.repo
    );
    let dist_url = format!("{}/v2/{}/blobs/{digest}", sys.dist.url, img.repo);
    let registry_url = format!("{}/v2/{}/blobs/{digest}", sys.upstream.push_url(), img.repo);
    let store_url = sys.wharf.presign_blob(&digest)?;

    // Interleaved rounds, best of each: the first reader of a blob that was
    // just written (item 5) must not be the only one to pay for writeback
    // and a cold page cache. Each download starts with the caches idle
    // (item 5's herd leaves Distribution busy for a while, on the CPU Wharf
    // shares).
    let servers = [sys.wharf.pid()?, sys.dist.pid()?];
    let rounds = runs + STREAM_EXTRA_ROUNDS;
    let (mut w, mut d, mut r, mut s) = (0f64, 0f64, 0f64, 0f64);
    for _ in 0..rounds {
        for (best, url, what) in [
            (&mut w, &wharf_url, "through Wharf"),
            (&mut d, &dist_url, "through Distribution"),
            (&mut r, &registry_url, "from the upstream registry"),
            (&mut s, &store_url, "from Wharf's store, presigned"),
        ] {
            probe::quiet(&servers, "item 6").await?;
            let got = probe::curl_throughput(url, len, 1, cpus)
                .await
                .context(what)?;
            *best = best.max(got);
        }
    }

    // The blob as the upstream registry stores it: a plain file.
    let file = sys
        .upstream
        .dir()
        .join("storage/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(&hex)
        .join("data");
    ensure!(file.is_file(), "{} not found", file.display());
    let sha2 = probe::sha2_throughput(&file, &hex, runs).await?;
    let sum = probe::sha256sum_throughput(&file, &hex, runs).await?;
    let openssl = probe::openssl_throughput(&file, &hex, runs).await?;
    let best_tool = sum.max(openssl);

    let stream_ratio = w / s;
    let hash_ratio = sha2 / best_tool;
    Ok(vec![
        Row::new(
            "6",
            format!(
                "cached {} blob streamed by the cache (no redirect), curl -o /dev/null, best of {rounds}",
                size(len)
            ),
            gbps(w),
            gbps(d),
            format!("registry {}; store, presigned: {}", gbps(r), gbps(s)),
            format!("{stream_ratio:.2} × store"),
            format!("≥ {STREAM_TARGET:.2} × store"),
            Verdict::of(stream_ratio >= STREAM_TARGET),
        ),
        Row::new(
            "6",
            format!(
                "sha256 of the same {} (page cache), best of {runs}",
                size(len)
            ),
            format!("{} (sha2 crate, as the origin)", gbps(sha2)),
            "—",
            format!("sha256sum: {}; openssl dgst: {}", gbps(sum), gbps(openssl)),
            format!("{hash_ratio:.2} × the faster tool"),
            format!("≥ {HASH_TARGET:.2} × the faster tool"),
            Verdict::of(hash_ratio >= HASH_TARGET),
        ),
    ])
}
