//! Issue 14, faults on the store's side: an origin whose S3 store fails its
//! writes, or is down, still serves cold pulls with verified bytes from the
//! upstream (nothing half-written becomes visible), `/readyz` says when the
//! store is down, and once the store is healthy the blob is stored on the
//! next pull; a slow store still serves warm blobs exactly, without going
//! upstream.

use std::net::SocketAddr;
use std::path::Path;

use wharf_tests::upstream::Proxy;
use wharf_tests::{
    Fault, ImageSpec, Kind, Origin, OriginOpts, SharedBucket, Stack, TestDir, UpstreamAuth,
    http_client,
};

/// Blob objects and multipart-upload files in the embedded store under
/// `data`.
fn store_contents(data: &Path) -> (usize, usize) {
    (
        wharf_tests::blob_objects(data, ""),
        wharf_tests::upload_files(data).len(),
    )
}

struct Scene {
    owner: Stack,
    proxy: Proxy,
    origin: Origin,
    _dir: TestDir,
}

/// An origin whose store (another origin's embedded S3 server) is reached
/// through a fault-injecting proxy.
async fn scene(name: &str) -> Scene {
    let bucket = SharedBucket::new();
    let owner = Stack::start_with(
        &format!("{name}-owner"),
        UpstreamAuth::Anonymous,
        OriginOpts {
            config_toml: Some(bucket.owner_toml()),
            ..OriginOpts::default()
        },
    )
    .await
    .unwrap();
    let proxy = Proxy::counting(SocketAddr::from(([127, 0, 0, 1], bucket.port)))
        .await
        .unwrap();
    let dir = TestDir::new(name).unwrap();
    let origin = Origin::start(
        &dir,
        bucket.client(proxy.url(), vec![("up".into(), owner.upstream.url())]),
    )
    .await
    .unwrap();
    Scene {
        owner,
        proxy,
        origin,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_store_writes_serve_verified_bytes_and_store_nothing_partial() {
    let s = scene("store-fail-writes").await;
    let img = ImageSpec::docker(&[6 << 20, 1000])
        .push(&s.owner.upstream, "team/app", "v1")
        .await
        .unwrap();
    s.proxy.set_fault(Fault::FailWrites(503));
    let pulled = wharf_tests::pull_with_reqwest(&s.origin.url(), "up/team/app", "v1")
        .await
        .unwrap();
    assert_eq!(pulled.blobs, img.blobs());
    let data = s.owner.origin.data_dir();
    wharf_tests::wait_until(
        "hydrations to end",
        std::time::Duration::from_secs(20),
        || async { Ok(s.origin.metric("wharf_hydrations_in_flight", &[]).await? == 0.0) },
    )
    .await
    .unwrap();
    assert_eq!(
        store_contents(data),
        (0, 0),
        "something was stored while writes failed"
    );

    // Writes work again: the next pull goes upstream once more and stores.
    s.proxy.set_fault(Fault::None);
    s.owner.upstream.reset_counts();
    wharf_tests::pull_with_reqwest(&s.origin.url(), "up/team/app", "v1")
        .await
        .unwrap();
    let n = img.blobs().len();
    s.origin.wait_committed(n as u64).await.unwrap();
    assert_eq!(store_contents(data), (n, 0));
    let counts = s.owner.upstream.counts();
    assert_eq!(counts.get("GET", Kind::Blob), n as u64, "{counts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_still_serves_cold_pulls_and_readyz_says_so() {
    let s = scene("store-down").await;
    let img = ImageSpec::docker(&[2 << 20])
        .push(&s.owner.upstream, "team/app", "v1")
        .await
        .unwrap();
    s.proxy.stop().await;
    let client = http_client();
    let ready = client
        .get(format!("{}/readyz", s.origin.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["store"]["ok"], false);
    let pulled = wharf_tests::pull_with_reqwest(&s.origin.url(), "up/team/app", "v1")
        .await
        .unwrap();
    assert_eq!(pulled.blobs, img.blobs());

    s.proxy.start().await.unwrap();
    wharf_tests::pull_with_reqwest(&s.origin.url(), "up/team/app", "v1")
        .await
        .unwrap();
    s.origin.wait_committed(2).await.unwrap();
    assert_eq!(store_contents(s.owner.origin.data_dir()).0, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_still_serves_warm_blobs_exactly() {
    let s = scene("store-slow").await;
    let img = ImageSpec::docker(&[4 << 20])
        .push(&s.owner.upstream, "team/app", "v1")
        .await
        .unwrap();
    wharf_tests::pull_with_reqwest(&s.origin.url(), "up/team/app", "v1")
        .await
        .unwrap();
    s.origin
        .wait_committed(img.blobs().len() as u64)
        .await
        .unwrap();
    // Reads from the store at 2 MiB/s: the warm pull takes its time and
    // gets the exact bytes, with no upstream request.
    s.proxy.set_fault(Fault::SlowReads(2 << 20));
    s.owner.upstream.reset_counts();
    let started = std::time::Instant::now();
    let pulled = wharf_tests::pull_with_reqwest(&s.origin.url(), "up/team/app", "v1")
        .await
        .unwrap();
    assert_eq!(pulled.blobs, img.blobs());
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "the store was not slow"
    );
    assert_eq!(s.owner.upstream.counts().get("GET", Kind::Blob), 0);
}
