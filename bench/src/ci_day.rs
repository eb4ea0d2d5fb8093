//! Item 9: a day of CI traffic against an upstream that enforces Docker
//! Hub's pull limit, through Wharf and through Distribution's proxy in the
//! same run.
//!
//! CI pulls a few hot tags all day (`latest` of a few repositories,
//! multi-arch indexes of which the runners pull linux/amd64 only), and now
//! and then one of them moves. Docker Hub counts manifest `GET`s per client
//! address (`ratelimit-limit: 100;w=21600`; `HEAD`s are free) and answers
//! `429` past the limit. A cache in front of a CI fleet is one address, so
//! its budget is the whole fleet's: a cache that spends it as soon as asked
//! fails pulls once it is gone, one that keeps a reserve serves a moved tag
//! stale a little longer instead.
//!
//! # The day
//!
//! [`REPOS`] repositories, each with `latest` pushed as a multi-arch index
//! (random layers). `pulls` pulls, evenly spread over `span`, go round the
//! repositories; each is made through Wharf (`ci/<repo>`) and through
//! Distribution (`<repo>`) side by side. `moves` times, evenly spread and
//! round the repositories, a new index with new layers is pushed under the
//! same tag. `span` is [`WINDOWS`] limit windows, as a day is four of Docker
//! Hub's six-hour windows.
//!
//! Each system's counting proxy enforces the same limit
//! ([`Fault::DockerHubLimit`]: `limit` manifest `GET`s per window), so each
//! has a budget of its own, as two caches on two addresses would. A cache
//! that `GET`s only what changed needs 2 `GET`s per cold pull and per move
//! (the index and the linux/amd64 manifest): [`REPOS`] × 2 + `moves` × 2 for
//! the day. The limit is chosen so that the day as a whole fits (`WINDOWS`
//! × `limit` ≥ that) but its first window does not when spent as soon as
//! asked (the cold pulls and the first moves); the other windows fit.
//!
//! # What is reported
//!
//! * Pulls that failed, per system (the target: none through Wharf).
//! * Manifest `GET`s spent, counted at each system's proxy (the `429`'d
//!   ones included, and said apart), and `HEAD`s.
//! * For each move, the first pull through a system that got the new
//!   digest: warm if every blob it pulled had been fetched upstream by that
//!   system before the pull started and none was fetched during it (a
//!   prefetch the cache ran on its own counts when it happened). A tag that
//!   moved again before a system served its previous move leaves that move
//!   unreached.
//! * Pulls that got an older digest than the upstream's tag when they
//!   started, and Wharf's answers marked `X-Wharf-Cache: stale`.
//!
//! # Decisions
//!
//! * Pulls are sequential per system (one through each cache at a time, the
//!   two side by side on proxies of their own), so every upstream request is
//!   attributed to the pull it happened in.
//! * The limit's window is fixed, starting at the first counted `GET`
//!   (Docker Hub's is rolling): simpler to reason about, and the same for
//!   both systems.
//! * The item runs last and lifts the limit (and forgets the counts) however
//!   it ends, so no other item runs against it.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::time::Instant;
use wharf_core::headers::{X_WHARF_CACHE, X_WHARF_STALE_REASON};
use wharf_tests::upstream::{Counts, Fault, Kind, LimitCounts, Proxy};
use wharf_tests::{ImageSpec, PushedIndex, Upstream, pull_with_reqwest};

use crate::probe::secs;
use crate::report::{Row, Verdict};
use crate::systems::{Systems, WHARF_CI_PREFIX};

/// The hot repositories.
pub(crate) const REPOS: [&str; 3] = ["bench/ci-a", "bench/ci-b", "bench/ci-c"];
/// The tag CI pulls and that moves.
const TAG: &str = "latest";
/// Limit windows in a day (Docker Hub: 24 h / 6 h).
const WINDOWS: u32 = 4;
/// `ratelimit_reserve` of Wharf's `ci/` rule: two `GET`s (a moved index and
/// its linux/amd64 manifest) below the point where revalidations wait, so a
/// revalidation started just above it never meets a `429`.
pub(crate) const RESERVE: u64 = 2;

/// The sizes and counts of one variant's day.
#[derive(Clone, Debug)]
pub(crate) struct Day {
    /// Pulls through each system.
    pub pulls: usize,
    /// How long the day lasts ([`WINDOWS`] limit windows).
    pub span: Duration,
    /// Tag moves in the day.
    pub moves: usize,
    /// Manifest `GET`s allowed per window.
    pub limit: u64,
    /// Layer sizes of every image (per platform).
    pub layers: Vec<u64>,
    /// Tag TTL of Wharf's `ci/` rule.
    pub ttl: Duration,
}

impl Day {
    fn window(&self) -> Duration {
        self.span / WINDOWS
    }
}

/// Pushes the day's first `latest` of every repository.
pub(crate) async fn push(upstream: &Upstream, day: &Day) -> Result<Vec<PushedIndex>> {
    let mut out = Vec::new();
    for repo in REPOS {
        out.push(
            ImageSpec::docker(&day.layers)
                .push_index(upstream, repo, TAG)
                .await
                .with_context(|| format!("pushing {repo}:{TAG}"))?,
        );
    }
    Ok(out)
}

/// One move: `REPOS[repo]:latest` became `digest` at `at` (after the start).
struct Move {
    repo: usize,
    digest: String,
    at: Duration,
}

/// What one pull through one system got.
struct Seen {
    digest: String,
    /// Every blob was fetched upstream before the pull, none during it.
    warm: bool,
    /// The manifest answer's `X-Wharf-Cache: stale`, with its reason.
    stale: Option<String>,
}

/// One tick of the day: the same pull through both systems.
struct Pull {
    repo: usize,
    at: Duration,
    wharf: Result<Seen, String>,
    dist: Result<Seen, String>,
}

pub(crate) async fn ci_day(sys: &Systems, day: &Day, initial: &[PushedIndex]) -> Result<Vec<Row>> {
    ensure!(
        initial.len() == REPOS.len(),
        "the CI images were not pushed"
    );
    let window = day.window();
    let _lift = Lift(sys);
    for up in [&sys.wharf_up, &sys.dist_up] {
        up.reset_counts();
        up.set_fault(Fault::DockerHubLimit {
            limit: day.limit,
            window,
        });
    }
    let start = Instant::now();
    let (moves, pulls) = tokio::try_join!(move_tags(sys, day, start), pull_all(sys, day, start))?;
    let took = start.elapsed();

    let mut history: Vec<Vec<(Duration, String)>> = initial
        .iter()
        .map(|i| vec![(Duration::ZERO, i.digest.clone())])
        .collect();
    for m in &moves {
        history[m.repo].push((m.at, m.digest.clone()));
    }
    let wharf = Summary::of(&pulls, &moves, &history, |p| &p.wharf);
    let dist = Summary::of(&pulls, &moves, &history, |p| &p.dist);
    let (wc, wl) = (sys.wharf_up.counts(), sys.wharf_up.limit_counts());
    let (dc, dl) = (sys.dist_up.counts(), sys.dist_up.limit_counts());
    for (name, s) in [("Wharf", &wharf), ("Distribution", &dist)] {
        if let Some(e) = &s.first_error {
            eprintln!("[bench] item 9: first failed pull through {name}: {e}");
        }
    }

    let need = 2 * (REPOS.len() + day.moves);
    let setting = format!(
        "{} pulls of {} hot multi-arch tags (linux/amd64 pulled; {} per platform) over {:.1} s, {} tag moves; each system's upstream allows {} manifest GETs per {} window (Docker Hub-like, fixed window, HEADs free), {} over the day, where GETting only what changed needs {need}; Wharf's rule: tag TTL {}, ratelimit_reserve {RESERVE}",
        day.pulls,
        REPOS.len(),
        layers(&day.layers),
        took.as_secs_f64(),
        day.moves,
        day.limit,
        secs(window),
        day.limit * u64::from(WINDOWS),
        secs(day.ttl),
    );
    let failed = |s: &Summary| format!("{} of {} pulls failed", s.failed, day.pulls);
    let first = |s: &Summary| {
        let lag = match s.lags.as_slice() {
            [] => String::new(),
            lags => format!(
                "; move to first pull of it: median {}, max {}",
                secs(lags[lags.len() / 2]),
                secs(lags[lags.len() - 1])
            ),
        };
        format!(
            "{} of {} warm ({} of {} moves reached{lag})",
            s.warm, s.reached, s.reached, day.moves
        )
    };
    Ok(vec![
        Row::new(
            "9",
            format!("CI day under a pull limit: failed pulls; {setting}"),
            failed(&wharf),
            failed(&dist),
            "—",
            "—",
            "0 failed pulls (Wharf)",
            Verdict::of(wharf.failed == 0),
        ),
        Row::info(
            "9",
            "CI day: upstream manifest requests, counted at each system's proxy (GETs include those answered 429)",
            spent(&wc, wl),
            spent(&dc, dl),
            "—",
        ),
        Row::info(
            "9",
            "CI day: first pulls after a tag move that were warm (every blob fetched upstream before the pull, none during it)",
            first(&wharf),
            first(&dist),
            "—",
        ),
        Row::info(
            "9",
            "CI day: pulls that got an older digest than the upstream's tag when they started (tag TTL or a postponed revalidation), and answers marked stale",
            format!(
                "{} behind; {} answers X-Wharf-Cache: stale ({} for ratelimit-budget)",
                wharf.behind, wharf.stale, wharf.stale_budget
            ),
            format!("{} behind; not marked", dist.behind),
            "—",
        ),
    ])
}

/// Lifts the limit and forgets the counts however the item ends.
struct Lift<'a>(&'a Systems);

impl Drop for Lift<'_> {
    fn drop(&mut self) {
        for up in [&self.0.wharf_up, &self.0.dist_up] {
            up.set_fault(Fault::None);
            up.reset_counts();
        }
    }
}

/// Moves the tags on schedule: move `k` at `(k + ½) / moves` of the day.
async fn move_tags(sys: &Systems, day: &Day, start: Instant) -> Result<Vec<Move>> {
    let mut moves = Vec::with_capacity(day.moves);
    for k in 0..day.moves {
        let when = day.span.mul_f64((k as f64 + 0.5) / day.moves as f64);
        tokio::time::sleep_until(start + when).await;
        let repo = k % REPOS.len();
        let pushed = ImageSpec::docker(&day.layers)
            .push_index(&sys.upstream, REPOS[repo], TAG)
            .await
            .with_context(|| format!("moving {}:{TAG}", REPOS[repo]))?;
        moves.push(Move {
            repo,
            digest: pushed.digest,
            at: start.elapsed(),
        });
    }
    Ok(moves)
}

/// The day's pulls on schedule, each through both systems side by side.
async fn pull_all(sys: &Systems, day: &Day, start: Instant) -> Result<Vec<Pull>> {
    let mut pulls = Vec::with_capacity(day.pulls);
    for i in 0..day.pulls {
        let when = day.span.mul_f64(i as f64 / day.pulls as f64);
        tokio::time::sleep_until(start + when).await;
        let repo = i % REPOS.len();
        let at = start.elapsed();
        let wharf_repo = format!("{WHARF_CI_PREFIX}/{}", REPOS[repo]);
        let (wharf, dist) = tokio::join!(
            observe(&sys.wharf.url, &wharf_repo, &sys.wharf_up),
            observe(&sys.dist.url, REPOS[repo], &sys.dist_up),
        );
        pulls.push(Pull {
            repo,
            at,
            wharf,
            dist,
        });
    }
    Ok(pulls)
}

/// Pulls `repo:latest` from `base`, judging warmth by the upstream requests
/// `up` counted before and during the pull.
async fn observe(base: &str, repo: &str, up: &Proxy) -> Result<Seen, String> {
    let before = up.counts();
    let img = pull_with_reqwest(base, repo, TAG)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let after = up.counts();
    let warm = img.blobs.iter().all(|(d, _)| {
        let fetched = before.for_path("GET", Kind::Blob, d);
        fetched > 0 && after.for_path("GET", Kind::Blob, d) == fetched
    });
    let header = |name| img.headers.get(name).and_then(|v| v.to_str().ok());
    let stale = (header(X_WHARF_CACHE) == Some("stale"))
        .then(|| header(X_WHARF_STALE_REASON).unwrap_or("").to_owned());
    Ok(Seen {
        digest: img.digest,
        warm,
        stale,
    })
}

/// One system's day.
struct Summary {
    failed: usize,
    first_error: Option<String>,
    /// Answers marked `X-Wharf-Cache: stale`, and of those for the budget.
    stale: usize,
    stale_budget: usize,
    /// Pulls that got an older digest than the upstream's at their start.
    behind: usize,
    /// Moves whose digest this system served, the first pulls of them that
    /// were warm, and the time from each move to that pull (sorted).
    reached: usize,
    warm: usize,
    lags: Vec<Duration>,
}

impl Summary {
    fn of(
        pulls: &[Pull],
        moves: &[Move],
        history: &[Vec<(Duration, String)>],
        side: impl Fn(&Pull) -> &Result<Seen, String>,
    ) -> Summary {
        let mut s = Summary {
            failed: 0,
            first_error: None,
            stale: 0,
            stale_budget: 0,
            behind: 0,
            reached: 0,
            warm: 0,
            lags: Vec::new(),
        };
        for p in pulls {
            let seen = match side(p) {
                Ok(seen) => seen,
                Err(e) => {
                    s.failed += 1;
                    s.first_error.get_or_insert_with(|| e.clone());
                    continue;
                }
            };
            if let Some(reason) = &seen.stale {
                s.stale += 1;
                s.stale_budget += usize::from(reason == "ratelimit-budget");
            }
            let h = &history[p.repo];
            let current = h.iter().rposition(|(at, _)| *at <= p.at).unwrap_or(0);
            if h.iter()
                .position(|(_, d)| *d == seen.digest)
                .is_some_and(|got| got < current)
            {
                s.behind += 1;
            }
        }
        for m in moves {
            let first = pulls.iter().find_map(|p| match side(p) {
                Ok(seen) if seen.digest == m.digest => Some((p.at, seen.warm)),
                _ => None,
            });
            if let Some((at, warm)) = first {
                s.reached += 1;
                s.warm += usize::from(warm);
                s.lags.push(at.saturating_sub(m.at));
            }
        }
        s.lags.sort();
        s
    }
}

/// "N manifest GETs (A allowed, R answered 429); H HEADs; B blob GETs".
fn spent(c: &Counts, l: LimitCounts) -> String {
    format!(
        "{} manifest GETs ({} allowed, {} answered 429); {} manifest HEADs; {} blob GETs",
        c.get("GET", Kind::Manifest),
        l.allowed,
        l.refused,
        c.get("HEAD", Kind::Manifest),
        c.get("GET", Kind::Blob),
    )
}

/// "2 × 128 KiB" when the layers are alike, else each.
fn layers(sizes: &[u64]) -> String {
    let kib = |b: u64| match b {
        b if b >= crate::MIB && b % crate::MIB == 0 => format!("{} MiB", b / crate::MIB),
        b => format!("{} KiB", b / 1024),
    };
    match sizes {
        [first, rest @ ..] if rest.iter().all(|s| s == first) => {
            format!("{} × {}", sizes.len(), kib(*first))
        }
        _ => sizes
            .iter()
            .map(|&s| kib(s))
            .collect::<Vec<_>>()
            .join(" + "),
    }
}
