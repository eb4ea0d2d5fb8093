//! Issue 14, retention through the edge:
//!
//! * a manifest the edge answers from its own caches still counts as a pull
//!   at the origin (one background `HEAD` per image per isolate per ten
//!   minutes), so an image pulled only through the edge's caches is not
//!   evicted as unused;
//! * after the origin evicted an image and deleted its bytes, a pull through
//!   the edge — whose caches still hold the manifest — succeeds: the edge
//!   finds no link behind its cached entry and sends the blobs to the
//!   origin, which fetches them again. Never a broken pull.
//!
//! Real `wrangler dev` edge, real origin binary and upstream; the edge's
//! presence memory is 1 s here, below the origin's 3 s grace (the
//! production defaults are 1 h and 2 h).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use wharf_tests::edge::EdgeStack;
use wharf_tests::{
    ImageSpec, Kind, PushedImage, RULE_PREFIX, http_client, no_redirect_client, sha256_digest,
    wait_until,
};

const ADMIN: &str = "retention-edge-admin-token-0123456789";
const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json";

/// `X-Wharf-Cache` of a manifest GET through the edge, after checking the
/// digest.
async fn manifest(es: &EdgeStack, repo: &str, image: &PushedImage, token: &str) -> String {
    let r = no_redirect_client()
        .get(format!("{}/v2/{repo}/manifests/v1", es.edge.url()))
        .header("Accept", ACCEPT)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cache = r.headers()["x-wharf-cache"].to_str().unwrap().to_owned();
    let body = r.bytes().await.unwrap();
    assert_eq!(sha256_digest(&body), image.manifest_digest);
    cache
}

/// Every blob of `image` through the edge: its `307`, then the bytes where
/// it points, verified. Returns where each went (`hit`: the bucket, `miss`:
/// the origin).
async fn blobs(es: &EdgeStack, repo: &str, image: &PushedImage, token: &str) -> Vec<String> {
    let mut went = Vec::new();
    for (digest, size) in image.blobs() {
        let r = no_redirect_client()
            .get(format!("{}/v2/{repo}/blobs/{digest}", es.edge.url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        went.push(r.headers()["x-wharf-cache"].to_str().unwrap().to_owned());
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let body = http_client().get(&location).send().await.unwrap();
        assert_eq!(body.status(), StatusCode::OK, "{location}");
        let bytes = body.bytes().await.unwrap();
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(sha256_digest(&bytes), digest);
    }
    went
}

async fn gc(es: &EdgeStack) -> Value {
    let r = http_client()
        .post(format!("{}/admin/gc", es.stack.origin.url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_cache_hits_count_as_pulls_and_an_evicted_image_still_pulls_through_the_edge() {
    let es = EdgeStack::start_with(
        "retention-edge",
        Duration::from_secs(300),
        &format!(
            "[admin]\ntoken = \"{ADMIN}\"\n[retention]\nquota_high_mib = 1\ngrace = \"3s\"\nrecord_interval = \"300ms\"\n"
        ),
        vec![("WHARF_PRESENCE_TTL".into(), "1s".into())],
    )
    .await
    .unwrap();
    let image = ImageSpec::docker(&[700 << 10, 700 << 10])
        .push(&es.stack.upstream, "team/app", "v1")
        .await
        .unwrap();
    let repo = format!("{RULE_PREFIX}/team/app");
    let t = es.token(&repo).await.unwrap();

    // Cold, then warm: the second manifest comes from the edge's caches and
    // every blob from the bucket.
    assert_eq!(manifest(&es, &repo, &image, &t).await, "miss");
    blobs(&es, &repo, &image, &t).await;
    es.hydrations_settled().await.unwrap();
    es.origin_proxy.reset_counts();
    assert_eq!(manifest(&es, &repo, &image, &t).await, "hit");
    assert!(
        blobs(&es, &repo, &image, &t)
            .await
            .iter()
            .all(|c| c == "hit")
    );

    // The hit is reported to the origin once, in the background.
    let proxy = &es.origin_proxy;
    wait_until("the pull report", Duration::from_secs(10), || async {
        Ok(proxy.counts().get("HEAD", Kind::Manifest) == 1)
    })
    .await
    .unwrap();
    for _ in 0..3 {
        assert_eq!(manifest(&es, &repo, &image, &t).await, "hit");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        proxy.counts().get("HEAD", Kind::Manifest),
        1,
        "one report per image per isolate per ten minutes"
    );

    // Over the 1 MiB quota: evicted at the first pass; its objects are
    // deleted once they are older than the grace window and have been
    // unreferenced and unlinked for one more (two or three passes).
    let first = gc(&es).await;
    assert_eq!(first["evicted"].as_array().unwrap().len(), 1, "{first}");
    let mut deleted = 0;
    let started = std::time::Instant::now();
    while deleted < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "objects not deleted"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pass = gc(&es).await;
        deleted += pass["deleted"].as_array().unwrap().len();
    }
    assert_eq!(deleted, 4, "config, two layers, manifest");

    // The edge still holds the manifest; the blobs behind it are gone from
    // the bucket, so it sends them to the origin, which fetches them again.
    es.stack.upstream.reset_counts();
    assert_eq!(manifest(&es, &repo, &image, &t).await, "hit");
    let went = blobs(&es, &repo, &image, &t).await;
    assert!(went.iter().all(|c| c == "miss"), "{went:?}");
    assert_eq!(
        es.stack.upstream.counts().get("GET", Kind::Blob),
        image.blobs().len() as u64
    );
}
