//! `--s3-endpoint URL --bucket NAME` with `AWS_*` credentials: an origin on
//! an external S3-compatible store (here another origin's embedded store,
//! reached only over the S3 API) pulls through into it, and what it stored
//! is what the store's own origin then serves with no upstream request.

use wharf_tests::{ImageSpec, OriginOpts, SharedBucket, Stack, TestDir, UpstreamAuth};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_on_an_external_s3_store_hydrates_into_it() {
    let bucket = SharedBucket::new();
    let opts = OriginOpts {
        config_toml: Some(bucket.owner_toml()),
        ..OriginOpts::default()
    };
    // The store's owner: an origin whose embedded S3 server is the store.
    let owner = Stack::start_with("external-store-owner", UpstreamAuth::Anonymous, opts)
        .await
        .unwrap();
    let img = ImageSpec::oci(&[40_000, 3000])
        .push(&owner.upstream, "team/app", "v1")
        .await
        .unwrap();

    // An origin that only knows the store by its S3 endpoint.
    let dir = TestDir::new("external-store-client").unwrap();
    let client = wharf_tests::Origin::start(
        &dir,
        bucket.client(bucket.endpoint(), vec![("up".into(), owner.upstream.url())]),
    )
    .await
    .unwrap();
    let pulled = wharf_tests::pull_with_reqwest(&client.url(), "up/team/app", "v1")
        .await
        .unwrap();
    assert_eq!(pulled.digest, img.manifest_digest);
    assert_eq!(pulled.blobs, img.blobs());
    client.wait_committed(2).await.unwrap();

    // The owner finds every blob in its store: no upstream blob request.
    owner.upstream.reset_counts();
    let again = owner.pull("team/app", &img.manifest_digest).await.unwrap();
    assert_eq!(again.blobs, img.blobs());
    let counts = owner.upstream.counts();
    assert_eq!(counts.get("GET", wharf_tests::Kind::Blob), 0, "{counts}");
}
