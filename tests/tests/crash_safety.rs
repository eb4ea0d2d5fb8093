//! Issue 14, crash safety: an origin killed with SIGKILL in the middle of a
//! hydration, restarted, pulls the blob again successfully — fetched from
//! the upstream anew, verified, stored once — on its embedded store and on
//! an external S3 store alike. Nothing the killed process half-wrote is
//! ever served.

use std::time::Duration;

use wharf_tests::clients::fetch_blob;
use wharf_tests::{
    Fault, ImageSpec, Kind, Origin, OriginOpts, SharedBucket, Stack, TestDir, Upstream,
    UpstreamAuth, http_client, wait_until,
};

const LAYER: u64 = 4 << 20;

/// Starts a slow cold pull of the layer through `origin`, kills the origin
/// with SIGKILL once bytes are flowing, restarts it, and pulls again.
async fn kill_mid_hydration_and_pull_again(
    origin: &mut Origin,
    upstream: &Upstream,
    repo: &str,
    layer: &str,
    size: u64,
) {
    let client = http_client();
    let base = origin.url();
    upstream.set_fault(Fault::SlowBlobs(512 << 10));
    let pull = {
        let (client, base, repo, layer) = (
            client.clone(),
            base.clone(),
            repo.to_owned(),
            layer.to_owned(),
        );
        tokio::spawn(async move { fetch_blob(&client, &base, &repo, &layer, Some(size)).await })
    };
    wait_until(
        "the hydration to start",
        Duration::from_secs(10),
        || async { Ok(origin.metric("wharf_hydrations_in_flight", &[]).await? >= 1.0) },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = origin.pid().unwrap();
    // SAFETY: a plain syscall on the test's own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let cut = pull.await.unwrap();
    assert!(
        cut.is_err(),
        "the pull survived the origin's SIGKILL: {cut:?}"
    );

    upstream.set_fault(Fault::None);
    upstream.reset_counts();
    origin.restart().await.unwrap();
    let got = fetch_blob(&client, &origin.url(), repo, layer, Some(size))
        .await
        .unwrap();
    assert_eq!(got, size);
    origin.wait_committed(1).await.unwrap();
    assert_eq!(upstream.counts().for_path("GET", Kind::Blob, layer), 1);
    // From the store now.
    upstream.reset_counts();
    fetch_blob(&client, &origin.url(), repo, layer, Some(size))
        .await
        .unwrap();
    assert_eq!(upstream.counts().for_path("GET", Kind::Blob, layer), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_hydration_then_restart_on_the_embedded_store() {
    let mut s = Stack::start("crash-embedded").await.unwrap();
    let img = ImageSpec::docker(&[LAYER])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    let layer = img.layer_digests[0].clone();
    let repo = s.repo("team/app");
    wharf_tests::clients::get_manifest(&http_client(), &s.base(), &repo, "v1")
        .await
        .unwrap();
    kill_mid_hydration_and_pull_again(
        &mut s.origin,
        &s.upstream,
        &repo,
        &layer,
        img.layer_sizes[0],
    )
    .await;
    let hex = layer.trim_start_matches("sha256:");
    assert_eq!(wharf_tests::blob_objects(s.origin.data_dir(), hex), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_hydration_then_restart_on_an_external_s3_store() {
    // The store: another origin's embedded S3 server, reached by the origin
    // under test only over the S3 API (multipart uploads and all).
    let bucket = SharedBucket::new();
    let owner = Stack::start_with(
        "crash-s3-owner",
        UpstreamAuth::Anonymous,
        OriginOpts {
            config_toml: Some(bucket.owner_toml()),
            ..OriginOpts::default()
        },
    )
    .await
    .unwrap();
    let img = ImageSpec::docker(&[LAYER])
        .push(&owner.upstream, "team/app", "v1")
        .await
        .unwrap();
    let layer = img.layer_digests[0].clone();
    let dir = TestDir::new("crash-s3-client").unwrap();
    let mut origin = Origin::start(
        &dir,
        bucket.client(bucket.endpoint(), vec![("up".into(), owner.upstream.url())]),
    )
    .await
    .unwrap();
    wharf_tests::clients::get_manifest(&http_client(), &origin.url(), "up/team/app", "v1")
        .await
        .unwrap();
    kill_mid_hydration_and_pull_again(
        &mut origin,
        &owner.upstream,
        "up/team/app",
        &layer,
        img.layer_sizes[0],
    )
    .await;
    let hex = layer.trim_start_matches("sha256:");
    assert_eq!(wharf_tests::blob_objects(owner.origin.data_dir(), hex), 1);
}
