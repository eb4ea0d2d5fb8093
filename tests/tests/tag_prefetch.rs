//! Issue 16, tag-change prefetch: when a hot tag (pulled at least
//! `prefetch_hot_pulls` times within `prefetch_window`) moves upstream,
//! Wharf notices it before the next pull and hydrates the new manifest and
//! the blobs of the platforms pulled before — not every platform of the
//! index — so the first pull after the release makes no upstream request.
//! With the upstream's budget at the rule's reserve, only free `HEAD`s are
//! sent: no manifest `GET`, no blob.

use std::time::Duration;

use wharf_tests::{
    Fault, ImageSpec, Kind, OriginOpts, Stack, UpstreamAuth, pull_with_reqwest, wait_until,
};

fn opts(reserve: u64) -> OriginOpts {
    OriginOpts {
        config_toml: Some(format!(
            "[[rule]]\nprefix = \"up\"\nupstream = \"{{upstream}}\"\ntag_ttl = \"2s\"\n\
             prefetch_hot_pulls = 3\nprefetch_window = \"1h\"\nratelimit_reserve = {reserve}\n"
        )),
        ..OriginOpts::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_tag_that_moves_is_prefetched_for_the_platforms_pulled_before() {
    let s = Stack::start_with("tag-prefetch", UpstreamAuth::Anonymous, opts(0))
        .await
        .unwrap();
    let spec = ImageSpec::oci(&[64 * 1024, 32 * 1024]);
    spec.push_index(&s.upstream, "team/app", "latest")
        .await
        .unwrap();
    let base = s.base();
    // Three pulls of linux/amd64 (as a CI fleet does): the tag is hot.
    for _ in 0..3 {
        pull_with_reqwest(&base, "up/team/app", "latest")
            .await
            .unwrap();
    }

    // A release: the tag moves upstream.
    let next = spec
        .push_index(&s.upstream, "team/app", "latest")
        .await
        .unwrap();
    s.upstream.reset_counts();
    wait_until(
        "the moved tag is prefetched",
        Duration::from_secs(30),
        || {
            let origin = &s.origin;
            async move {
                Ok(origin
                    .metric("wharf_prefetches_total", &[("result", "warmed")])
                    .await?
                    >= 1.0)
            }
        },
    )
    .await
    .unwrap();
    let counts = s.upstream.counts();
    let (amd64, arm64) = (next.child("amd64"), next.child("arm64"));
    for (blob, _) in amd64.blobs() {
        assert_eq!(
            counts.for_path("GET", Kind::Blob, &blob),
            1,
            "{blob} of linux/amd64 prefetched once:\n{counts}"
        );
    }
    for (blob, _) in arm64.blobs() {
        assert_eq!(
            counts.for_path("GET", Kind::Blob, &blob),
            0,
            "linux/arm64 was never pulled:\n{counts}"
        );
    }
    assert_eq!(
        counts.for_path("GET", Kind::Manifest, &arm64.manifest_digest),
        0
    );
    assert_eq!(
        counts.get("GET", Kind::Manifest),
        2,
        "the index and linux/amd64's manifest:\n{counts}"
    );

    // The first pull after the release: the new image, warm.
    s.upstream.reset_counts();
    let pulled = pull_with_reqwest(&base, "up/team/app", "latest")
        .await
        .unwrap();
    assert_eq!(pulled.digest, next.digest);
    assert_eq!(pulled.image_digest, amd64.manifest_digest);
    let counts = s.upstream.counts();
    assert_eq!(
        counts.get("GET", Kind::Blob) + counts.get("GET", Kind::Manifest),
        0,
        "a warm pull:\n{counts}"
    );
    assert!(
        s.origin
            .metric("wharf_hot_tag_revalidations_total", &[("result", "moved")])
            .await
            .unwrap()
            >= 1.0
    );
    let bytes = s
        .origin
        .metric("wharf_prefetched_bytes_total", &[("registry", "up")])
        .await
        .unwrap();
    assert_eq!(bytes as u64, amd64.total_size, "config and layers of amd64");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_prefetch_spends_a_budget_at_its_reserve() {
    let s = Stack::start_with("tag-prefetch-budget", UpstreamAuth::Anonymous, opts(10))
        .await
        .unwrap();
    let spec = ImageSpec::docker(&[16 * 1024]);
    let first = spec.push(&s.upstream, "team/app", "latest").await.unwrap();
    let base = s.base();
    // Docker Hub's headers: 5 left, below the reserve of 10.
    s.upstream.set_fault(Fault::RateLimitHeaders(5));
    for _ in 0..3 {
        pull_with_reqwest(&base, "up/team/app", "latest")
            .await
            .unwrap();
    }
    spec.push(&s.upstream, "team/app", "latest").await.unwrap();
    s.upstream.reset_counts();
    // Past the TTL: the move was seen (a free HEAD), not fetched.
    wait_until("the move is seen", Duration::from_secs(20), || {
        let origin = &s.origin;
        async move {
            Ok(origin
                .metric("wharf_prefetches_total", &[("result", "budget")])
                .await?
                >= 1.0)
        }
    })
    .await
    .unwrap();
    let counts = s.upstream.counts();
    assert!(counts.get("HEAD", Kind::Manifest) >= 1, "{counts}");
    assert_eq!(
        counts.get("GET", Kind::Manifest) + counts.get("GET", Kind::Blob),
        0,
        "{counts}"
    );
    // Past the TTL, the next pull is served stale for the budget, not
    // failed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pulled = pull_with_reqwest(&base, "up/team/app", "latest")
        .await
        .unwrap();
    assert_eq!(pulled.digest, first.manifest_digest);
    assert_eq!(pulled.headers["x-wharf-stale-reason"], "ratelimit-budget");
    assert_eq!(
        s.origin
            .metric("wharf_prefetches_total", &[("result", "warmed")])
            .await
            .unwrap(),
        0.0
    );
    let counts = s.upstream.counts();
    assert_eq!(counts.get("GET", Kind::Manifest), 0, "{counts}");
    // The prefetch's HEAD, the pull's own, and no more: a move that could
    // not be paid for is left alone for a TTL.
    assert!(counts.get("HEAD", Kind::Manifest) <= 2, "{counts}");
}
