//! `wharf-bench`: Wharf against Distribution's proxy mode and against pulling
//! straight from the upstream, in one run on the same generated images
//! (issue 6).
//!
//! ```text
//! cargo run --release -p wharf-bench            # the full variant (issue sizes)
//! cargo run --release -p wharf-bench -- --short # small images, CI
//! ```
//!
//! # Layout
//!
//! * [`systems`] — starts the upstream (Distribution, behind counting
//!   proxies), Distribution in proxy mode and `wharf-origin`.
//! * [`probe`] — instruments: `/proc` RSS and CPU, timed skopeo copies,
//!   `curl` downloads, sha256 throughput, machine description.
//! * [`cpus`] — which CPUs the clients, the upstream and the caches get.
//! * [`edge`] — the Worker under `wrangler dev` in front of the origin.
//! * one module per measured item: [`herd`] (1), [`pulls`] (2, 3a, 3b),
//!   [`revalidation`] (4), [`resources`] (5), [`throughput`] (6),
//!   [`edge_cost`] (7), [`load`] (8, with the static limit and `wrk` of
//!   [`limit`]), [`ci_day`] (9: a day of CI pulls against an upstream with
//!   Docker Hub's pull limit); each holds its target and builds its rows.
//! * [`report`] — rows, the Markdown table, the score; [`results`] — the
//!   results file.
//! * this file — flags, the variants, the images each item needs, and the
//!   order the items run in.
//!
//! # Decisions
//!
//! * Ratios inside one run, never absolute thresholds: the machine (2 shared
//!   cores here) moves absolute times, not who wins.
//! * Real clients where the issue names them (skopeo for pull times), the
//!   harness's verifying reqwest puller for herds (every byte is checked
//!   against its digest, so a fast wrong answer cannot win).
//! * The bench never fails on a missed target: it reports it. It exits
//!   non-zero only when a measurement could not be made at all, which in CI
//!   means the bench (or a system under test) is broken.
//! * Unless `--origin-bin` is given, the bench builds the origin first with
//!   cargo (release for the full variant), so it never measures a stale
//!   binary.

mod ci_day;
mod cpus;
mod edge;
mod edge_cost;
mod herd;
mod limit;
mod load;
mod probe;
mod pulls;
mod report;
mod resources;
mod results;
mod revalidation;
mod systems;
mod throughput;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use wharf_tests::{ImageSpec, PushedImage, PushedIndex};

use crate::cpus::CpuSplit;
use crate::report::Row;
use crate::systems::{Systems, WharfRules};

pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const GIB: u64 = 1 << 30;

#[derive(Parser, Debug)]
#[command(
    name = "wharf-bench",
    about = "Wharf vs Distribution's proxy mode vs the bare upstream, in one run (issue 6)"
)]
struct Args {
    /// Small images and few clients (CI); the default is the issue's sizes.
    #[arg(long)]
    short: bool,
    /// The `wharf-origin` binary to measure. Default: built with cargo first
    /// (`target/release/wharf-origin` for the full variant; the bench's own
    /// profile for `--short`).
    #[arg(long)]
    origin_bin: Option<PathBuf>,
    /// Where to write the Markdown results (default:
    /// `bench/results/latest.md`; a copy also goes to `latest-<variant>.md`
    /// beside it).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measure only these items (comma-separated: 1,2,4,5,6,7,8,9; 2
    /// includes 3a and 3b). For working on one figure: the results file is
    /// written only when `--out` is also given.
    #[arg(long, value_delimiter = ',', value_parser = ["1", "2", "3", "4", "5", "6", "7", "8", "9"])]
    only: Vec<String>,
    /// Let the timed clients, the upstream and the caches share every CPU
    /// (default: on a machine with two or more CPUs, clients get the first,
    /// the upstream the second or the clients' one, the caches the rest;
    /// see `cpus.rs`).
    #[arg(long)]
    shared_cpus: bool,
}

fn default_out() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("results/latest.md")
}

/// Sizes and counts of one variant.
#[derive(Clone, Debug)]
struct Variant {
    name: &'static str,
    herd_clients: usize,
    herd_layers: Vec<u64>,
    cold_layers: Vec<u64>,
    reval_pulls: usize,
    reval_ttl: Duration,
    res_clients: usize,
    res_layer: u64,
    runs: usize,
    /// Warm pulls are client-bound for every system (skopeo hashes and
    /// writes each byte): more rounds, so the best of each is its floor.
    warm_rounds: usize,
    edge_requests: usize,
    load_clients: usize,
    load_time: Duration,
    ci: ci_day::Day,
}

impl Variant {
    fn full() -> Variant {
        Variant {
            name: "full",
            herd_clients: 64,
            herd_layers: vec![64 * MIB; 4],
            cold_layers: vec![128 * MIB; 8],
            reval_pulls: 100,
            reval_ttl: Duration::from_secs(2),
            res_clients: 8,
            res_layer: 2 * GIB,
            runs: 3,
            warm_rounds: 5,
            edge_requests: 200,
            load_clients: 64,
            load_time: Duration::from_secs(10),
            // 10 pulls a second for 4 minutes; a one-minute limit window.
            ci: ci_day::Day {
                pulls: 2400,
                span: Duration::from_secs(240),
                moves: 12,
                limit: 8,
                layers: vec![4 * MIB; 2],
                ttl: Duration::from_secs(2),
            },
        }
    }

    fn short() -> Variant {
        Variant {
            name: "short",
            herd_clients: 8,
            herd_layers: vec![MIB; 4],
            cold_layers: vec![512 * 1024; 8],
            reval_pulls: 10,
            reval_ttl: Duration::from_secs(1),
            res_clients: 8,
            res_layer: 16 * MIB,
            runs: 3,
            warm_rounds: 3,
            edge_requests: 100,
            load_clients: 16,
            load_time: Duration::from_secs(2),
            // 8⅓ pulls a second for 36 s; a 9 s limit window.
            ci: ci_day::Day {
                pulls: 300,
                span: Duration::from_secs(36),
                moves: 12,
                limit: 8,
                layers: vec![128 * 1024; 2],
                ttl: Duration::from_secs(1),
            },
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Before the runtime: its threads inherit the servers' CPUs.
    let cpus = match CpuSplit::apply(args.shared_cpus) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench: cannot set CPU affinity: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C drops the run: every daemon is stopped and every directory
    // removed on the way out.
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = run(args, cpus) => r,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("bench: interrupted; stopping everything");
                Ok(ExitCode::from(130))
            }
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Progress on stderr; stdout is the table and the summary line.
macro_rules! say {
    ($start:expr, $($arg:tt)*) => {
        eprintln!("[bench {:>6.1}s] {}", $start.elapsed().as_secs_f64(), format!($($arg)*))
    };
}

async fn run(args: Args, cpus: CpuSplit) -> Result<ExitCode> {
    let v = if args.short {
        Variant::short()
    } else {
        Variant::full()
    };
    let origin_bin = origin_bin(&args, &v)?;
    let mut items = Items::new(&args.only);
    let t0 = items.t0;
    say!(
        t0,
        "{} variant; origin binary {}",
        v.name,
        origin_bin.display()
    );
    let mut machine = probe::machine_info();
    machine.push(("CPUs".into(), cpus.describe()));

    let rules = WharfRules {
        reval_ttl: v.reval_ttl,
        ci_ttl: v.ci.ttl,
        ci_reserve: ci_day::RESERVE,
    };
    let sys = Systems::start(&origin_bin, rules).await?;
    cpus.pin_upstream(
        sys.upstream
            .registry_pid()
            .context("the upstream registry is not running")?,
    )?;
    say!(
        t0,
        "upstream {} (registry {}), Distribution proxy {}, Wharf {}; work dir {}",
        sys.upstream.url(),
        sys.upstream.push_url(),
        sys.dist.url,
        sys.wharf.url,
        sys.dir.path().display()
    );
    // The edge (items 3b and 7): the Worker under `wrangler dev` in front of
    // this origin and its store.
    let edge = match items.wants("2") || items.wants("7") {
        true => start_edge(&sys, t0).await,
        false => None,
    };
    let imgs = Images::push(&sys, &v, &items).await?;
    let mut skopeo = probe::Skopeo::new(v.cold_layers.iter().sum(), &cpus)?;
    measure(
        &mut items,
        &sys,
        &v,
        &imgs,
        &mut skopeo,
        edge.as_ref(),
        &cpus,
    )
    .await;
    let wharf_log_tail = sys.wharf.log_tail(5);
    drop(edge);
    drop(skopeo);
    drop(sys);

    let load_end = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    machine.push(("load average at end".into(), load_end));
    // Items in issue order (item 3 is measured with item 2).
    let mut rows = items.rows;
    rows.sort_by_key(|r| item_order(&r.item));
    let (met, ties, total) = report::score(&rows);
    let table = report::table(&rows);
    let summary = match ties {
        0 => format!("bench: {met}/{total} targets met"),
        n => format!(
            "bench: {met}/{total} targets met ({n} of them ties within the run's resolution)"
        ),
    };
    let md = results::markdown(&v, &origin_bin, &machine, &table, &summary, t0.elapsed());
    let out = match (&args.out, args.only.is_empty()) {
        (Some(out), _) => Some(out.clone()),
        (None, true) => Some(default_out()),
        (None, false) => None,
    };
    if let Some(out) = out {
        results::write(&out, v.name, &md)?;
        say!(t0, "results written to {}", out.display());
    }
    if items.errors > 0 {
        eprintln!("----- wharf-origin log (tail) -----\n{wharf_log_tail}");
    }
    println!("{table}");
    println!("{summary}");
    Ok(if items.errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The items asked for (`--only`), and the rows and failures of those
/// measured so far.
struct Items {
    only: Vec<String>,
    t0: Instant,
    rows: Vec<Row>,
    errors: usize,
}

impl Items {
    fn new(only: &[String]) -> Items {
        Items {
            only: only.to_vec(),
            t0: Instant::now(),
            rows: Vec::new(),
            errors: 0,
        }
    }

    /// Whether `item` is to be measured (`--only 3` means item 2's run).
    fn wants(&self, item: &str) -> bool {
        self.only.is_empty()
            || self
                .only
                .iter()
                .any(|o| o == item || (o == "3" && item == "2"))
    }

    /// Measures one item if it is wanted; a failure becomes an error row
    /// (the other items still run).
    async fn measure(
        &mut self,
        item: &str,
        metric: &str,
        target: &str,
        fut: impl Future<Output = Result<Vec<Row>>>,
    ) {
        if !self.wants(item) {
            return;
        }
        say!(self.t0, "item {item}: {metric}");
        match fut.await {
            Ok(r) => self.rows.extend(r),
            Err(e) => {
                self.errors += 1;
                say!(self.t0, "item {item} failed: {e:#}");
                self.rows.push(Row::error(item, metric, target, &e));
            }
        }
    }
}

/// The edge under `wrangler dev`, or `None` (said on stderr) when it did not
/// start: the items that need it then report it as pending.
async fn start_edge(sys: &Systems, t0: Instant) -> Option<edge::BenchEdge> {
    match edge::start(sys).await {
        Ok(e) => {
            say!(
                t0,
                "edge (wrangler dev) on {}, clients use {}",
                e.edge.url(),
                e.front.url()
            );
            Some(e)
        }
        Err(e) => {
            say!(t0, "the edge did not start: {e:#}");
            None
        }
    }
}

/// The images each item pulls, generated and pushed to the upstream (only
/// those of the items asked for).
struct Images {
    herd: Option<PushedImage>,
    /// Images of the cold shape: each system gets one cold pull of each.
    cold: Vec<PushedImage>,
    reval: Option<PushedImage>,
    load: Option<PushedImage>,
    /// The resources herd, and one with a blob 8× smaller (RSS must not
    /// depend on blob size).
    res: Option<PushedImage>,
    res_small: Option<PushedImage>,
    /// The CI day's first `latest` of each hot repository.
    ci: Vec<PushedIndex>,
}

impl Images {
    async fn push(sys: &Systems, v: &Variant, items: &Items) -> Result<Images> {
        say!(items.t0, "generating and pushing images");
        let push = |want: bool, layers: Vec<u64>, repo: &'static str| {
            let upstream = &sys.upstream;
            async move {
                if !want {
                    return Ok(None);
                }
                ImageSpec::docker(&layers)
                    .push(upstream, repo, "v1")
                    .await
                    .map(Some)
            }
        };
        let w = |item| items.wants(item);
        let mut cold = Vec::new();
        for repo in ["bench/cold-a", "bench/cold-b", "bench/cold-c"] {
            cold.extend(push(w("2") || w("7"), v.cold_layers.clone(), repo).await?);
        }
        let images = Images {
            herd: push(w("1"), v.herd_layers.clone(), "bench/herd").await?,
            cold,
            reval: push(w("4"), vec![64 * 1024], "bench/reval").await?,
            load: push(w("8"), vec![64 * 1024], "bench/load").await?,
            res: push(w("5") || w("6"), vec![v.res_layer], "bench/res").await?,
            res_small: push(w("5"), vec![v.res_layer / 8], "bench/res-small").await?,
            ci: match w("9") {
                true => ci_day::push(&sys.upstream, &v.ci).await?,
                false => Vec::new(),
            },
        };
        say!(items.t0, "images pushed");
        Ok(images)
    }
}

fn need(img: &Option<PushedImage>) -> Result<PushedImage> {
    img.clone().context("image not pushed")
}

/// Every item asked for, in the order that keeps each one's preconditions
/// (item 2's cold images are new to both caches; item 6 reads the blob item
/// 5 cached; item 9 limits the upstream, so it goes last).
async fn measure(
    items: &mut Items,
    sys: &Systems,
    v: &Variant,
    imgs: &Images,
    skopeo: &mut probe::Skopeo,
    edge: Option<&edge::BenchEdge>,
    cpus: &CpuSplit,
) {
    let (w, t) = ("herd: upstream GETs per blob", "= 1.00");
    items
        .measure("1", w, t, async {
            herd::herd(sys, &need(&imgs.herd)?, v.herd_clients).await
        })
        .await;
    let (w, t) = (
        "cold pull time (skopeo)",
        "≤ 1.10 × direct; ≤ 1.0 s CPU per cold GiB",
    );
    let pulls = pulls::cold_and_warm(sys, &imgs.cold, skopeo, v.warm_rounds, edge);
    items.measure("2", w, t, pulls).await;
    let (w, t) = ("tag revalidation", "2 HEAD, 0 GET");
    let reval = async {
        revalidation::revalidation(sys, &need(&imgs.reval)?, v.reval_pulls, v.reval_ttl).await
    };
    items.measure("4", w, t, reval).await;
    let (w, t) = (
        "origin resources under a cold herd",
        "≤ 64 MiB + manifest cache",
    );
    let res = async {
        resources::resources(
            sys,
            &need(&imgs.res)?,
            &need(&imgs.res_small)?,
            v.res_clients,
        )
        .await
    };
    items.measure("5", w, t, res).await;
    let (w, t) = ("streaming and hashing throughput", "≥ 0.95 × store");
    let thr = async { throughput::throughput(sys, &need(&imgs.res)?, v.runs, cpus).await };
    items.measure("6", w, t, thr).await;
    let (w, t) = ("edge cost", "bundle ≤ 512 KiB gzip; handler CPU ≤ 1 ms");
    let cost = async {
        let img = imgs.cold.first().context("image not pushed")?;
        edge_cost::edge_cost(edge, img, v.edge_requests, cpus).await
    };
    items.measure("7", w, t, cost).await;
    let (w, t) = (
        "warm manifest load",
        "≥ 3 × Distribution req/s; ≥ 0.5 × static req/s, p99 ≤ 2 ms",
    );
    let load = async {
        let img = need(&imgs.load)?;
        load::warm_manifests(sys, &img, v.load_clients, v.load_time, cpus).await
    };
    items.measure("8", w, t, load).await;
    let (w, t) = ("CI day under a pull limit", "0 failed pulls (Wharf)");
    let day = ci_day::ci_day(sys, &v.ci, &imgs.ci);
    items.measure("9", w, t, day).await;
}

fn item_order(item: &str) -> (u32, String) {
    let digits: String = item.chars().take_while(char::is_ascii_digit).collect();
    (digits.parse().unwrap_or(99), item.to_owned())
}

/// `--origin-bin`, or the origin built with cargo for this variant.
fn origin_bin(args: &Args, v: &Variant) -> Result<PathBuf> {
    if let Some(p) = &args.origin_bin {
        ensure!(p.is_file(), "--origin-bin {} does not exist", p.display());
        return Ok(p.clone());
    }
    // The full variant measures what users run; the short one (CI) uses
    // whatever profile the bench itself was built with.
    let release = v.name == "full" || !cfg!(debug_assertions);
    let exe = std::env::current_exe()?;
    // <target>/<profile>/wharf-bench
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("locating the target directory from the bench executable")?;
    let bin = target
        .join(if release { "release" } else { "debug" })
        .join("wharf-origin");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-p", "wharf-origin"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .env("CARGO_TARGET_DIR", target);
    if release {
        cmd.arg("--release");
    }
    eprintln!("[bench] building the origin: {cmd:?}");
    let status = cmd
        .status()
        .context("running cargo to build wharf-origin")?;
    ensure!(
        status.success(),
        "`cargo build -p wharf-origin` failed ({status}); or pass --origin-bin"
    );
    ensure!(
        bin.is_file(),
        "{} missing after the build; pass --origin-bin",
        bin.display()
    );
    Ok(bin)
}
