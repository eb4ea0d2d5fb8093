//! Item 8 (issue 14): warm manifest load — concurrent keep-alive clients
//! asking for one warm tag's manifest for a fixed time, against Wharf's
//! origin and Distribution's proxy in turn; requests per second and latency
//! side by side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use wharf_tests::{PushedImage, pull_with_reqwest};

use crate::cpus::CpuSplit;
use crate::edge::quantile;
use crate::report::{Row, Verdict};
use crate::systems::{Systems, WHARF_PREFIX};

/// Target of item 8: Wharf's requests per second ÷ Distribution's, at no
/// worse a p99.
const LOAD_TARGET: f64 = 3.0;

const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// What one system did under the load.
struct Load {
    /// Answered with 200, their latencies sorted.
    ok: Vec<Duration>,
    /// Anything else (status or transport error), and the first of them.
    errors: usize,
    first_error: Option<String>,
    took: Duration,
}

impl Load {
    fn per_sec(&self) -> f64 {
        self.ok.len() as f64 / self.took.as_secs_f64().max(1e-9)
    }

    fn describe(&self) -> String {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        let mut s = format!(
            "{:.0} req/s; p50 {}, p99 {}; {} errors",
            self.per_sec(),
            ms(quantile(&self.ok, 0.5)),
            ms(quantile(&self.ok, 0.99)),
            self.errors
        );
        if let Some(e) = &self.first_error {
            let mut e = e.replace('\n', " ");
            e.truncate(120);
            s.push_str(&format!(" (first: {e})"));
        }
        s
    }
}

/// `clients` keep-alive clients on the clients' CPU, each asking for `url`
/// back to back until `secs` have passed.
async fn load(url: String, clients: usize, duration: Duration, cpus: &CpuSplit) -> Result<Load> {
    cpus.on_client(move || async move {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(clients)
            .timeout(Duration::from_secs(30))
            .build()?;
        let url = Arc::new(url);
        let started = Instant::now();
        let deadline = started + duration;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (http, url) = (http.clone(), url.clone());
            tasks.spawn(async move {
                let (mut ok, mut errors, mut first_error) = (Vec::new(), 0, None);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = http.get(url.as_str()).header("Accept", ACCEPT).send().await;
                    let outcome = match r {
                        Ok(r) if r.status() == 200 => {
                            r.bytes().await.map(drop).map_err(|e| e.to_string())
                        }
                        Ok(r) => Err(format!("HTTP {}", r.status())),
                        Err(e) => Err(e.to_string()),
                    };
                    match outcome {
                        Ok(()) => ok.push(t.elapsed()),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                }
                (ok, errors, first_error)
            });
        }
        let mut all = Load {
            ok: Vec::new(),
            errors: 0,
            first_error: None,
            took: Duration::ZERO,
        };
        while let Some(r) = tasks.join_next().await {
            let (ok, errors, first_error) = r?;
            all.ok.extend(ok);
            all.errors += errors;
            if all.first_error.is_none() {
                all.first_error = first_error;
            }
        }
        all.took = started.elapsed();
        all.ok.sort();
        anyhow::Ok(all)
    })
    .await?
}

/// Item 8: the same warm-manifest load against Wharf and Distribution.
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
    let w_url = format!("{}/v2/{wharf_repo}/manifests/v1", sys.wharf.url);
    let d_url = format!("{}/v2/{}/manifests/v1", sys.dist.url, img.repo);
    let w = load(w_url, clients, duration, cpus).await?;
    let d = load(d_url, clients, duration, cpus).await?;
    let ratio = w.per_sec() / d.per_sec().max(1e-9);
    let p99 = |l: &Load| quantile(&l.ok, 0.99);
    let ok = w.errors == 0 && !w.ok.is_empty() && ratio >= LOAD_TARGET && p99(&w) <= p99(&d);
    Ok(vec![Row::new(
        "8",
        format!(
            "warm manifest load: {clients} keep-alive clients asking for one tag's manifest back to back for {:.0} s",
            duration.as_secs_f64()
        ),
        w.describe(),
        d.describe(),
        "—",
        format!("{ratio:.2} × Distribution req/s"),
        format!("≥ {LOAD_TARGET:.2} × Distribution req/s at ≤ its p99"),
        Verdict::of(ok),
    )])
}
