//! When the upstream is down (connection refused) or failing (503, 429),
//! everything pulled before keeps pulling — tags even after their TTL, marked
//! `X-Wharf-Cache: stale` — and anything never seen fails with an OCI error
//! that names the upstream failure.

use std::time::Duration;

use wharf_tests::clients::{CopyOpts, OciError, Skopeo, get_manifest, oci_error_of};
use wharf_tests::{
    Fault, ImageSpec, OriginOpts, PushedImage, PushedIndex, Stack, UpstreamAuth, http_client,
};

const TTL: Duration = Duration::from_secs(2);

struct Warm {
    image: PushedImage,
    index: PushedIndex,
    stack: Stack,
}

/// A stack with a 2 s tag TTL and an image and an index pulled once (by tag
/// and by digest), so they are in the cache.
async fn warm(name: &str) -> Warm {
    let opts = OriginOpts {
        tag_ttl: Some(TTL),
        ..OriginOpts::default()
    };
    let stack = Stack::start_with(name, UpstreamAuth::Anonymous, opts)
        .await
        .unwrap();
    let image = ImageSpec::docker(&[8000, 3000])
        .push(&stack.upstream, "team/app", "v1")
        .await
        .unwrap();
    let index = ImageSpec::oci(&[2000])
        .push_index(&stack.upstream, "team/multi", "v1")
        .await
        .unwrap();
    stack.pull("team/app", "v1").await.unwrap();
    stack.pull("team/multi", "v1").await.unwrap();
    stack
        .pull("team/app", &image.manifest_digest)
        .await
        .unwrap();
    Warm {
        image,
        index,
        stack,
    }
}

async fn assert_everything_warm_pulls(w: &Warm) {
    let s = &w.stack;
    assert_eq!(
        s.pull("team/app", "v1").await.unwrap().digest,
        w.image.manifest_digest
    );
    assert_eq!(
        s.pull("team/app", &w.image.manifest_digest)
            .await
            .unwrap()
            .blobs,
        w.image.blobs()
    );
    let multi = s.pull("team/multi", "v1").await.unwrap();
    assert_eq!(multi.digest, w.index.digest);
    assert_eq!(multi.image_digest, w.index.child("amd64").manifest_digest);
    assert_eq!(
        s.pull("team/multi", &w.index.digest).await.unwrap().digest,
        w.index.digest
    );
}

async fn stale_header(w: &Warm, repo: &str, tag: &str) -> Option<String> {
    let (_, _, headers) = get_manifest(&http_client(), &w.stack.base(), &w.stack.repo(repo), tag)
        .await
        .unwrap();
    headers
        .get("x-wharf-cache")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// The origin's answer for something it never saw, while the upstream
/// cannot answer: an OCI error naming the upstream, 502/503/504 — or 429
/// `TOOMANYREQUESTS` when the upstream said it is rate limiting (the origin
/// may honour its `Retry-After` without asking again).
fn assert_upstream_failure(err: &anyhow::Error) -> OciError {
    let e = oci_error_of(err)
        .unwrap_or_else(|| panic!("not an OCI error response: {err:#}"))
        .clone();
    match e.status {
        502..=504 => assert!(
            matches!(e.code.as_str(), "UNAVAILABLE" | "UNKNOWN"),
            "unexpected OCI error code: {e}"
        ),
        429 => assert_eq!(e.code, "TOOMANYREQUESTS", "{e}"),
        _ => panic!("a cold miss with the upstream failing should be 429 or 502..=504, got {e}"),
    }
    assert!(
        e.body.to_lowercase().contains("upstream"),
        "the error should name the upstream: {e}"
    );
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_tags_and_digests_keep_pulling_while_the_upstream_is_down() {
    let w = warm("down-warm").await;
    w.stack.upstream.proxy().stop().await;

    // Inside the TTL, then after it (the tag is stale, revalidation fails).
    assert_everything_warm_pulls(&w).await;
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    assert_everything_warm_pulls(&w).await;
    assert_eq!(
        stale_header(&w, "team/app", "v1").await.as_deref(),
        Some("stale")
    );
    assert_eq!(
        stale_header(&w, "team/multi", "v1").await.as_deref(),
        Some("stale")
    );

    // A real client is just as happy.
    let skopeo = Skopeo::new(&w.stack.dir).unwrap();
    let got = skopeo
        .copy(&w.stack.origin_ref("team/app", "v1"), &CopyOpts::default())
        .await
        .unwrap();
    assert_eq!(got, w.image.manifest_digest);

    let stale = w
        .stack
        .origin
        .metric("wharf_requests_total", &[("result", "stale")])
        .await
        .unwrap();
    assert!(
        stale >= 1.0,
        "wharf_requests_total{{result=\"stale\"}} = {stale}"
    );

    // Back up: the tag is revalidated and no longer stale — at the latest
    // once the circuit breaker's cool-down (1 s in tests) has passed.
    w.stack.upstream.proxy().start().await.unwrap();
    wharf_tests::wait_until(
        "the tag to be revalidated",
        Duration::from_secs(5),
        || async { Ok(stale_header(&w, "team/app", "v1").await.as_deref() != Some("stale")) },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_seen_content_fails_with_an_oci_error_naming_the_upstream() {
    let w = warm("down-cold").await;
    let cold = ImageSpec::docker(&[1000])
        .push(&w.stack.upstream, "team/cold", "v1")
        .await
        .unwrap();
    w.stack.upstream.proxy().stop().await;
    let client = http_client();
    let base = w.stack.base();

    let err = get_manifest(&client, &base, "up/team/app", "never-pushed")
        .await
        .unwrap_err();
    assert_upstream_failure(&err);
    let err = get_manifest(&client, &base, "up/team/cold", "v1")
        .await
        .unwrap_err();
    assert_upstream_failure(&err);
    let err = get_manifest(&client, &base, "up/team/cold", &cold.manifest_digest)
        .await
        .unwrap_err();
    assert_upstream_failure(&err);
    let resp = client
        .get(format!(
            "{base}/v2/up/team/cold/blobs/{}",
            cold.layer_digests[0]
        ))
        .send()
        .await
        .unwrap();
    assert_upstream_failure(&anyhow::Error::new(OciError::read(resp).await));

    // The origin is still healthy, and recovers with the upstream.
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // (At the latest once the circuit breaker's 1 s cool-down has passed.)
    w.stack.upstream.proxy().start().await.unwrap();
    wharf_tests::wait_until("the cold image to pull", Duration::from_secs(5), || async {
        Ok(w.stack.pull("team/cold", "v1").await?.digest == cold.manifest_digest)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_or_rate_limited_upstream_serves_stale_tags() {
    let w = warm("down-503-429").await;
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;

    for status in [503, 429] {
        w.stack.upstream.set_fault(Fault::Status(status));
        assert_everything_warm_pulls(&w).await;
        assert_eq!(
            stale_header(&w, "team/app", "v1").await.as_deref(),
            Some("stale"),
            "upstream answering {status}"
        );
        let err = get_manifest(
            &http_client(),
            &w.stack.base(),
            "up/team/app",
            "never-pushed",
        )
        .await
        .unwrap_err();
        let e = assert_upstream_failure(&err);
        if status == 503 {
            assert_eq!(e.status, 503, "{e}");
        }
    }
}
