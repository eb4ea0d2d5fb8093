//! A blob whose bytes do not match its digest (flipped or cut short on the
//! way from the upstream) fails the client's pull, is counted in
//! `wharf_integrity_failures_total`, and is never stored: once the upstream
//! is healthy again the origin fetches it anew and serves the right bytes.
//! The same holds for a manifest, by tag (checked against the upstream's
//! `Docker-Content-Digest`) and by digest (checked against the one asked for).

use wharf_tests::clients::{CopyOpts, Skopeo, fetch_blob, get_manifest, oci_error_of};
use wharf_tests::{Fault, ImageSpec, Kind, Stack, http_client};

async fn bad_blob_is_never_stored(name: &str, fault: fn(String) -> Fault, counts_integrity: bool) {
    let s = Stack::start(name).await.unwrap();
    let img = ImageSpec::docker(&[300_000, 2000])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    let layer = img.layer_digests[0].clone();
    let size = img.layer_sizes[0];
    let skopeo = Skopeo::new(&s.dir).unwrap();
    let reference = s.origin_ref("team/app", "v1");

    s.upstream.set_fault(fault(layer.clone()));
    let err = skopeo
        .copy(&reference, &CopyOpts::default())
        .await
        .unwrap_err();
    eprintln!("skopeo failed as it should: {err:#}");
    let client = http_client();
    let repo = s.repo("team/app");
    let direct = fetch_blob(&client, &s.base(), &repo, &layer, Some(size)).await;
    assert!(
        direct.is_err(),
        "the origin served {layer} intact while the upstream broke it"
    );

    if counts_integrity {
        let failures = s
            .origin
            .metric("wharf_integrity_failures_total", &[])
            .await
            .unwrap();
        assert!(
            failures >= 1.0,
            "wharf_integrity_failures_total = {failures}"
        );
    }

    // Healthy again: the origin has to go back upstream (nothing was
    // stored), and now serves the right bytes.
    s.upstream.set_fault(Fault::None);
    s.upstream.reset_counts();
    fetch_blob(&client, &s.base(), &repo, &layer, Some(size))
        .await
        .unwrap();
    let counts = s.upstream.counts();
    assert!(
        counts.for_path("GET", Kind::Blob, &layer) >= 1,
        "the bad blob was served from the store instead of being fetched again:\n{counts}"
    );
    assert_eq!(
        skopeo.copy(&reference, &CopyOpts::default()).await.unwrap(),
        img.manifest_digest
    );

    // And now it is stored.
    s.upstream.reset_counts();
    fetch_blob(&client, &s.base(), &repo, &layer, Some(size))
        .await
        .unwrap();
    assert_eq!(s.upstream.counts().for_path("GET", Kind::Blob, &layer), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_fails_the_pull_and_is_never_stored() {
    bad_blob_is_never_stored("corrupt-blob", Fault::CorruptBlob, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_blob_fails_the_pull_and_is_never_stored() {
    // A cut-short body is an upstream failure rather than a digest
    // mismatch, so the integrity counter is not required to move.
    bad_blob_is_never_stored("truncated-blob", Fault::TruncateBlob, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_manifest_is_refused_counted_and_never_stored() {
    let s = Stack::start("corrupt-manifest").await.unwrap();
    let img = ImageSpec::docker(&[2000])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    let client = http_client();
    let repo = s.repo("team/app");

    s.upstream.set_fault(Fault::CorruptManifests);
    for reference in ["v1", img.manifest_digest.as_str()] {
        let before = s
            .origin
            .metric("wharf_integrity_failures_total", &[])
            .await
            .unwrap_or(0.0);
        let err = get_manifest(&client, &s.base(), &repo, reference)
            .await
            .unwrap_err();
        let oci = oci_error_of(&err).expect("an OCI error");
        assert_eq!(
            (oci.status, oci.code.as_str()),
            (503, "UNAVAILABLE"),
            "{oci}"
        );
        assert!(oci.message.contains("does not match"), "{oci}");
        let after = s
            .origin
            .metric("wharf_integrity_failures_total", &[])
            .await
            .unwrap();
        assert!(
            after > before,
            "{reference}: wharf_integrity_failures_total {before} -> {after}"
        );
    }

    // Healthy again: nothing was stored, so both are fetched anew, intact.
    s.upstream.set_fault(Fault::None);
    for reference in ["v1", img.manifest_digest.as_str()] {
        let (_, _, headers) = get_manifest(&client, &s.base(), &repo, reference)
            .await
            .unwrap();
        assert_eq!(
            headers["docker-content-digest"].to_str().unwrap(),
            img.manifest_digest
        );
    }
}
