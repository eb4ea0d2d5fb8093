//! Item 4: what keeping a tag fresh costs upstream — pulls spread over 2.5
//! TTLs must make two manifest HEADs and no GET.

use std::time::Duration;

use anyhow::{Context, Result};
use wharf_tests::upstream::{Counts, Kind};
use wharf_tests::{PushedImage, pull_with_reqwest};

use crate::probe::secs;
use crate::report::{Row, Verdict};
use crate::systems::{Systems, WHARF_REVAL_PREFIX};

pub(crate) async fn revalidation(
    sys: &Systems,
    img: &PushedImage,
    pulls: usize,
    ttl: Duration,
) -> Result<Vec<Row>> {
    let wharf_repo = format!("{WHARF_REVAL_PREFIX}/{}", img.repo);
    // The first pull of each cache is cold (a manifest GET) and not counted:
    // the question is what keeping a tag fresh costs.
    pull_with_reqwest(&sys.wharf.url, &wharf_repo, "v1")
        .await
        .context("warming Wharf")?;
    pull_with_reqwest(&sys.dist.url, &img.repo, "v1")
        .await
        .context("warming Distribution")?;
    sys.wharf_up.reset_counts();
    sys.dist_up.reset_counts();
    sys.upstream.reset_counts();
    // Pulls evenly spread over 2.5 TTLs: the tag goes stale twice.
    let span = ttl.mul_f64(2.5);
    let direct = sys.upstream.url();
    let start = tokio::time::Instant::now();
    for i in 1..=pulls {
        tokio::time::sleep_until(start + span.mul_f64(i as f64 / pulls as f64)).await;
        let (w, d, u) = tokio::join!(
            pull_with_reqwest(&sys.wharf.url, &wharf_repo, "v1"),
            pull_with_reqwest(&sys.dist.url, &img.repo, "v1"),
            pull_with_reqwest(&direct, &img.repo, "v1"),
        );
        w.context("pull through Wharf")?;
        d.context("pull through Distribution")?;
        u.context("direct pull")?;
    }
    let took = start.elapsed();
    let describe = |c: &Counts| {
        format!(
            "{} HEAD, {} GET manifest; {} blob GETs; {} requests in all",
            c.get("HEAD", Kind::Manifest),
            c.get("GET", Kind::Manifest),
            c.get("GET", Kind::Blob),
            c.registry_total()
        )
    };
    let w = sys.wharf_up.counts();
    let d = sys.dist_up.counts();
    let u = sys.upstream.counts();
    let ok = w.get("HEAD", Kind::Manifest) == 2
        && w.get("GET", Kind::Manifest) == 0
        && w.get("GET", Kind::Blob) == 0;
    Ok(vec![Row::new(
        "4",
        format!(
            "tag revalidation: upstream requests for {pulls} pulls of one tag over {:.1} s (TTL {}, 2.5 TTL windows)",
            took.as_secs_f64(),
            secs(ttl)
        ),
        describe(&w),
        describe(&d),
        describe(&u),
        "—",
        "2 HEAD, 0 GET",
        Verdict::of(ok),
    )])
}
