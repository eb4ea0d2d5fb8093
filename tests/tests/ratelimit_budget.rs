//! Issue 16, spending the upstream's rate-limit budget wisely: once it
//! advertises (Docker Hub's `ratelimit-remaining: N;w=SECONDS`) no more
//! than the rule's reserve, a stale tag that moved upstream is served as it
//! was (inside its stale window), marked `X-Wharf-Cache: stale` with the
//! reason, after one `HEAD` (free on Docker Hub, and it tells the budget)
//! and no `GET`; an unchanged one is revalidated as always; cold pulls still
//! go upstream; when the budget refills, the moved tag is fetched.

use std::time::Duration;

use wharf_tests::clients::get_manifest;
use wharf_tests::{Fault, ImageSpec, Kind, OriginOpts, Stack, UpstreamAuth, http_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_budget_postpones_stale_revalidations_but_not_cold_pulls() {
    let opts = OriginOpts {
        tag_ttl: Some(Duration::from_secs(1)),
        config_toml: Some(
            "[[rule]]\nprefix = \"up\"\nupstream = \"{upstream}\"\nratelimit_reserve = 10\n".into(),
        ),
        ..OriginOpts::default()
    };
    let s = Stack::start_with("ratelimit-budget", UpstreamAuth::Anonymous, opts)
        .await
        .unwrap();
    let app = ImageSpec::docker(&[10_000])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    ImageSpec::docker(&[10_000])
        .push(&s.upstream, "team/cold", "v1")
        .await
        .unwrap();
    let client = http_client();
    let base = s.base();

    // The upstream says 5 left (the reserve is 10).
    s.upstream.set_fault(Fault::RateLimitHeaders(5));
    let (_, _, h) = get_manifest(&client, &base, "up/team/app", "v1")
        .await
        .unwrap();
    assert_eq!(h["x-wharf-cache"], "miss");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Stale now, unchanged upstream: a free HEAD confirms it.
    s.upstream.reset_counts();
    let (_, _, h) = get_manifest(&client, &base, "up/team/app", "v1")
        .await
        .unwrap();
    assert_eq!(h["x-wharf-cache"], "revalidated");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Stale, and moved upstream: the GET would spend the reserve, so the
    // old manifest is served, marked, after one HEAD and no GET.
    let moved = ImageSpec::docker(&[10_000])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    s.upstream.reset_counts();
    let (_, _, h) = get_manifest(&client, &base, "up/team/app", "v1")
        .await
        .unwrap();
    assert_eq!(h["x-wharf-cache"], "stale");
    assert_eq!(h["x-wharf-stale-reason"], "ratelimit-budget");
    assert_eq!(h["docker-content-digest"], app.manifest_digest.as_str());
    assert_eq!(s.upstream.counts().get("GET", Kind::Manifest), 0);
    assert_eq!(s.upstream.counts().get("HEAD", Kind::Manifest), 1);

    // A cold pull still goes upstream (and learns the budget refilled).
    s.upstream.set_fault(Fault::RateLimitHeaders(90));
    let (_, _, h) = get_manifest(&client, &base, "up/team/cold", "v1")
        .await
        .unwrap();
    assert_eq!(h["x-wharf-cache"], "miss");
    assert!(s.upstream.counts().get("GET", Kind::Manifest) >= 1);

    // Budget back: the moved tag is fetched (a HEAD, then its GET).
    s.upstream.reset_counts();
    let (_, _, h) = get_manifest(&client, &base, "up/team/app", "v1")
        .await
        .unwrap();
    assert_eq!(h["x-wharf-cache"], "miss");
    assert_eq!(h["docker-content-digest"], moved.manifest_digest.as_str());
    assert_eq!(s.upstream.counts().get("HEAD", Kind::Manifest), 1);
    assert_eq!(s.upstream.counts().get("GET", Kind::Manifest), 1);

    let postponed = s
        .origin
        .metric("wharf_revalidations_postponed_total", &[("registry", "up")])
        .await
        .unwrap();
    assert_eq!(postponed, 1.0);
}
