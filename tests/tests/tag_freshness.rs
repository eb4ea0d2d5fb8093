//! Tag freshness does not compound across the edge and the origin (issue 13).
//!
//! The rule: a tag is served as fresh (`X-Wharf-Cache: hit`) only while the
//! *upstream's* last confirmation of it is younger than the TTL of the cache
//! answering. The origin reports how old its confirmation is
//! (`X-Wharf-Tag-Age-Ms`) and the edge counts from that confirmation, not
//! from when it fetched from the origin; the edge tells the origin its TTL
//! (`X-Wharf-Max-Tag-Age-Ms`) and the origin asks the upstream when its
//! record is older than that. Before the fix, an edge that first fetched a
//! tag from the origin just before the origin's record expired served it as
//! fresh for its own TTL on top: up to edge TTL + origin TTL after the
//! upstream moved.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use wharf_tests::edge::EdgeStack;
use wharf_tests::{ImageSpec, RULE_PREFIX, no_redirect_client as client};

const TTL: Duration = Duration::from_secs(2);
const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// (digest, `X-Wharf-Cache`) of a manifest GET at `base`.
async fn get(base: &str, path: &str, token: &str) -> (String, String) {
    let r = client()
        .get(format!("{base}{path}"))
        .header("Accept", ACCEPT)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    let header = |name: &str| r.headers()[name].to_str().unwrap().to_owned();
    (header("docker-content-digest"), header("x-wharf-cache"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_is_never_served_fresh_longer_than_one_ttl_after_the_upstream_confirmed_it() {
    let es = EdgeStack::start("tag-freshness", TTL).await.unwrap();
    let up = &es.stack.upstream;
    let old = ImageSpec::docker(&[1000])
        .push(up, "team/app", "v1")
        .await
        .unwrap();
    let repo = format!("{RULE_PREFIX}/team/app");
    let path = format!("/v2/{repo}/manifests/v1");
    let t = es.token(&repo).await.unwrap();

    // The origin confirms the tag with the upstream (directly, not through
    // the edge): its record's clock starts now.
    let confirmed = Instant::now();
    let (digest, cache) = get(&es.stack.origin.url(), &path, &t).await;
    assert_eq!(
        (digest.as_str(), cache.as_str()),
        (old.manifest_digest.as_str(), "miss")
    );

    // The tag moves upstream right after.
    let new = ImageSpec::docker(&[1000])
        .push(up, "team/app", "v1")
        .await
        .unwrap();
    assert_ne!(new.manifest_digest, old.manifest_digest);

    // The edge's first request comes while the origin's record is still
    // fresh: the origin answers from it (the old digest, as it should).
    tokio::time::sleep((confirmed + TTL * 3 / 4).saturating_duration_since(Instant::now())).await;
    let (digest, _) = get(&es.edge.url(), &path, &t).await;
    assert_eq!(digest, old.manifest_digest, "the origin's record was fresh");

    // One TTL (plus slack) after the upstream's confirmation, the old digest
    // may only come marked stale (while a revalidation runs), never as a hit.
    tokio::time::sleep(
        (confirmed + TTL + Duration::from_millis(300)).saturating_duration_since(Instant::now()),
    )
    .await;
    let (digest, cache) = get(&es.edge.url(), &path, &t).await;
    assert!(
        digest == new.manifest_digest || cache == "stale",
        "{:?} after the upstream confirmed it, the edge served the old digest as `{cache}`",
        confirmed.elapsed()
    );

    // And the revalidation brings the new digest well before edge TTL +
    // origin TTL.
    let deadline = confirmed + TTL * 2;
    loop {
        let (digest, cache) = get(&es.edge.url(), &path, &t).await;
        if digest == new.manifest_digest {
            break;
        }
        assert_eq!(
            cache, "stale",
            "the old digest is only ever served stale now"
        );
        assert!(
            Instant::now() < deadline,
            "the edge still served the old digest {:?} after the upstream confirmed it",
            confirmed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
