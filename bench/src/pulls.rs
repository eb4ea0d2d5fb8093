//! Items 2 and 3: cold and warm pull times with skopeo — direct, through
//! Wharf's origin, through Distribution's proxy, and warm through the edge
//! (307s to presigned store URLs).

use std::time::Duration;

use anyhow::{Context, Result};
use wharf_tests::PushedImage;
use wharf_tests::upstream::{Kind, Proxy};

use crate::edge::BenchEdge;
use crate::herd::wait_hydrations;
use crate::probe::{self, secs, size};
use crate::report::{self, Row, Timings, Verdict};
use crate::systems::{Systems, WHARF_PREFIX};

/// Target of item 2: cold pull through Wharf ÷ direct.
pub(crate) const COLD_TARGET: f64 = 1.10;
/// Target of item 2c (issue 17): the origin's CPU seconds per cold GiB.
pub(crate) const COLD_CPU_TARGET: f64 = 1.0;
/// Target of item 3: warm pull through Wharf ÷ Distribution warm.
pub(crate) const WARM_TARGET: f64 = 1.00;

/// Items 2, 3a and 3b: cold pulls of each of `imgs` (new to both caches),
/// then `rounds` interleaved warm pulls of the first.
pub(crate) async fn cold_and_warm(
    sys: &Systems,
    imgs: &[PushedImage],
    skopeo: &mut probe::Skopeo,
    rounds: usize,
    edge: Option<&BenchEdge>,
) -> Result<Vec<Row>> {
    let img = imgs.first().context("no cold images pushed")?;
    let shape = format!(
        "{} image, {} layers (skopeo → dir: on {})",
        size(img.total_size),
        img.layer_sizes.len(),
        if skopeo.scratch().starts_with("/dev/shm") {
            "tmpfs"
        } else {
            "the temp dir"
        }
    );
    let cold = Cold::measure(sys, imgs, skopeo).await?;
    let warm = Warm::measure(sys, img, skopeo, rounds, edge).await?;
    Ok(vec![
        cold.row(&shape, imgs.len()),
        cold.cpu_row(img.total_size, sha256_secs_per_gib()),
        warm.origin_row(&shape, rounds),
        warm.edge_row(&shape, rounds),
    ])
}

/// The references of `img` direct, through Wharf and through Distribution.
fn refs(sys: &Systems, img: &PushedImage) -> (String, String, String) {
    (
        format!("{}/{}:v1", sys.upstream.host(), img.repo),
        format!("{}/{WHARF_PREFIX}/{}:v1", sys.wharf.host, img.repo),
        format!("{}/{}:v1", sys.dist.host, img.repo),
    )
}

/// Cold pull times, best of the images for each system, and the caches' CPU
/// seconds per cold pull (least of the images): what the cache takes from
/// the machine the client runs on.
struct Cold {
    direct: Duration,
    /// The floor of any cache that is a separate HTTP hop: the direct pull
    /// through one more plain hyper proxy (no hashing, no disk).
    hop: Duration,
    wharf: Duration,
    dist: Duration,
    wharf_cpu: f64,
    dist_cpu: f64,
}

impl Cold {
    /// Per image a direct pull, one through the extra hop, then Wharf, then
    /// Distribution.
    async fn measure(
        sys: &Systems,
        imgs: &[PushedImage],
        skopeo: &mut probe::Skopeo,
    ) -> Result<Cold> {
        let upstream = sys.upstream.host().parse();
        let hop = Proxy::counting(upstream.context("the upstream's address")?).await?;
        let mut c = Cold {
            direct: Duration::MAX,
            hop: Duration::MAX,
            wharf: Duration::MAX,
            dist: Duration::MAX,
            wharf_cpu: f64::MAX,
            dist_cpu: f64::MAX,
        };
        let (w_pid, dist_pid) = (sys.wharf.pid()?, sys.dist.pid()?);
        for img in imgs {
            let (direct, wharf, dist) = refs(sys, img);
            let m = &img.manifest_digest;
            let t = skopeo.timed_copy(&direct, m).await.context("direct pull")?;
            c.direct = c.direct.min(t);
            let via_hop = format!("{}/{}:v1", hop.host(), img.repo);
            let t = skopeo.timed_copy(&via_hop, m).await;
            c.hop = c.hop.min(t.context("direct pull through one more hop")?);
            let before = probe::sample(w_pid)?.cpu_secs;
            let t = skopeo.timed_copy(&wharf, m).await;
            c.wharf = c.wharf.min(t.context("cold pull through Wharf")?);
            // Includes committing to the store, which may outlast the pull.
            wait_hydrations(sys).await?;
            c.wharf_cpu = c.wharf_cpu.min(probe::sample(w_pid)?.cpu_secs - before);
            let before = probe::sample(dist_pid)?.cpu_secs;
            let t = skopeo.timed_copy(&dist, m).await;
            c.dist = c.dist.min(t.context("cold pull through Distribution")?);
            c.dist_cpu = c.dist_cpu.min(probe::sample(dist_pid)?.cpu_secs - before);
        }
        Ok(c)
    }

    fn row(&self, shape: &str, images: usize) -> Row {
        let ratio = self.wharf.as_secs_f64() / self.direct.as_secs_f64();
        Row::new(
            "2",
            format!("cold pull time; {shape}; the cache's CPU time per pull"),
            format!(
                "{} (best of {images}); CPU {:.2} s",
                secs(self.wharf),
                self.wharf_cpu
            ),
            format!(
                "{} (best of {images}); CPU {:.2} s",
                secs(self.dist),
                self.dist_cpu
            ),
            format!(
                "{} (best of {images}); through one more plain HTTP hop: {} = {:.2} × direct",
                secs(self.direct),
                secs(self.hop),
                self.hop.as_secs_f64() / self.direct.as_secs_f64()
            ),
            format!("{ratio:.2} × direct"),
            format!("≤ {COLD_TARGET:.2} × direct"),
            Verdict::of(ratio <= COLD_TARGET),
        )
    }

    /// Item 2c: CPU seconds per cold GiB, beside what sha256 alone costs.
    fn cpu_row(&self, bytes: u64, sha_per_gib: f64) -> Row {
        let gib = bytes as f64 / crate::GIB as f64;
        let (w, d) = (self.wharf_cpu / gib, self.dist_cpu / gib);
        Row::new(
            "2c",
            "the cache's CPU time per cold GiB (least of the images; hashing, spooling, storing and serving)",
            format!("{w:.2} s/GiB"),
            format!("{d:.2} s/GiB"),
            format!("sha256 alone (sha2 crate, one core): {sha_per_gib:.2} s/GiB"),
            format!("{:.2} × sha256 alone", w / sha_per_gib.max(1e-9)),
            format!("≤ {COLD_CPU_TARGET:.1} s/GiB"),
            Verdict::of(w <= COLD_CPU_TARGET),
        )
    }
}

/// Seconds sha256 takes per GiB in this process (256 MiB hashed, best of 3):
/// the floor of any cache that verifies what it stores.
fn sha256_secs_per_gib() -> f64 {
    use sha2::Digest as _;
    let buf = vec![0x5au8; 16 << 20];
    (0..3)
        .map(|_| {
            let start = std::time::Instant::now();
            let mut h = sha2::Sha256::new();
            for _ in 0..16 {
                h.update(&buf);
            }
            std::hint::black_box(h.finalize());
            start.elapsed().as_secs_f64() * 4.0
        })
        .fold(f64::MAX, f64::min)
}

/// Warm pull times of one image: interleaved rounds, best of each.
struct Warm {
    wharf: Timings,
    dist: Timings,
    direct: Timings,
    /// Upstream blob GETs and bytes Wharf took from the upstream during the
    /// warm rounds (both must stay 0).
    upstream_blob_gets: u64,
    from_upstream: f64,
    edge: Option<EdgeWarm>,
}

/// Warm pulls through the edge.
struct EdgeWarm {
    timings: Timings,
    /// Blob requests the origin saw during those pulls (must stay 0: every
    /// blob is a 307 to the store).
    origin_blobs: f64,
    /// Blob requests the Worker answered, and how many of them were not 307.
    blob_requests: usize,
    not_redirected: usize,
}

impl Warm {
    async fn measure(
        sys: &Systems,
        img: &PushedImage,
        skopeo: &mut probe::Skopeo,
        rounds: usize,
        edge: Option<&BenchEdge>,
    ) -> Result<Warm> {
        let (direct, wharf, dist) = refs(sys, img);
        let m = &img.manifest_digest;
        sys.wharf_up.reset_counts();
        let served_from_upstream = || {
            sys.wharf
                .metric("wharf_served_bytes_total", &[("source", "upstream")])
        };
        let from_upstream = served_from_upstream().await?;
        let edge_blob_requests = |e: &BenchEdge| {
            e.edge
                .requests()
                .into_iter()
                .filter(|r| r.path.contains("/blobs/"))
                .collect::<Vec<_>>()
        };
        let edge_blob_requests_before = edge.map_or(0, |e| edge_blob_requests(e).len());
        let (mut w, mut d, mut direct_t) =
            (Timings::default(), Timings::default(), Timings::default());
        let mut e_warm = Timings::default();
        let mut origin_blobs = 0.0;
        for _ in 0..rounds {
            if let Some(edge) = edge {
                let eref = format!("{}/{WHARF_PREFIX}/{}:v1", edge.front.host(), img.repo);
                let blob_requests = || {
                    sys.wharf
                        .metric("wharf_requests_total", &[("kind", "blob")])
                };
                let before = blob_requests().await?;
                let t = skopeo.timed_copy(&eref, m).await;
                e_warm.push(t.context("warm via the edge")?);
                origin_blobs += blob_requests().await? - before;
            }
            w.push(skopeo.timed_copy(&wharf, m).await.context("warm Wharf")?);
            let t = skopeo.timed_copy(&dist, m).await;
            d.push(t.context("warm Distribution")?);
            let t = skopeo.timed_copy(&direct, m).await;
            direct_t.push(t.context("direct")?);
        }
        let edge = edge.map(|e| {
            let requests: Vec<_> = edge_blob_requests(e)
                .into_iter()
                .skip(edge_blob_requests_before)
                .collect();
            EdgeWarm {
                timings: e_warm,
                origin_blobs,
                blob_requests: requests.len(),
                not_redirected: requests.iter().filter(|r| r.status != 307).count(),
            }
        });
        Ok(Warm {
            wharf: w,
            dist: d,
            direct: direct_t,
            upstream_blob_gets: sys.wharf_up.counts().get("GET", Kind::Blob),
            from_upstream: served_from_upstream().await? - from_upstream,
            edge,
        })
    }

    /// Item 3a: the origin serving the bytes itself.
    fn origin_row(&self, shape: &str, rounds: usize) -> Row {
        let ratio = self.wharf.best().as_secs_f64() / self.dist.best().as_secs_f64();
        let really_warm = self.upstream_blob_gets == 0 && self.from_upstream == 0.0;
        Row::new(
            "3a",
            format!("warm pull time, origin serving the bytes (no redirects); {shape}"),
            format!(
                "{} (best of {rounds}; {} upstream blob GETs{})",
                secs(self.wharf.best()),
                self.upstream_blob_gets,
                if really_warm {
                    String::new()
                } else {
                    format!(", {:.0} B from upstream", self.from_upstream)
                }
            ),
            format!("{} (best of {rounds})", secs(self.dist.best())),
            format!("{} (best of {rounds})", secs(self.direct.best())),
            format!("{ratio:.3} × Distribution"),
            format!("≤ {WARM_TARGET:.2} × Distribution warm"),
            if really_warm {
                report::at_most(ratio, WARM_TARGET, &[&self.wharf, &self.dist])
            } else {
                Verdict::Fail
            },
        )
    }

    /// Item 3b: through the edge, every blob a 307 to the store.
    fn edge_row(&self, shape: &str, rounds: usize) -> Row {
        let target = "≤ 1.00 × Distribution warm; 0 blob bytes through Worker and origin";
        let dist = format!("{} (best of {rounds})", secs(self.dist.best()));
        let Some(e) = &self.edge else {
            return Row::new(
                "3b",
                "warm pull time via the edge (307 → presigned store URLs)",
                "—",
                dist,
                "—",
                "—",
                target,
                Verdict::Pending("the edge did not start (see the log)".into()),
            );
        };
        let ratio = e.timings.best().as_secs_f64() / self.dist.best().as_secs_f64();
        let all_redirected = e.not_redirected == 0 && e.blob_requests > 0 && e.origin_blobs == 0.0;
        Row::new(
            "3b",
            format!(
                "warm pull time via the edge (wrangler dev; 307 → presigned store URLs); {shape}"
            ),
            format!(
                "{} (best of {rounds}); {} blob requests to the Worker, {} not 307; {:.0} blob requests reached the origin",
                secs(e.timings.best()),
                e.blob_requests,
                e.not_redirected,
                e.origin_blobs
            ),
            dist,
            "—",
            format!("{ratio:.3} × Distribution"),
            target,
            if all_redirected {
                report::at_most(ratio, WARM_TARGET, &[&e.timings, &self.dist])
            } else {
                Verdict::Fail
            },
        )
    }
}
