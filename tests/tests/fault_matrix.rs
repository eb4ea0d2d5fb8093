//! Issue 14, faults: each upstream fault the test proxy injects, against a
//! cold blob pull. Whatever the fault, the client gets either the exact
//! bytes or an error (never a complete wrong body), the store holds the blob
//! only if it was verified, and nothing is left behind (no spool file, no
//! multipart upload); once the upstream is healthy the blob pulls and is
//! stored, fetched upstream once more.

use std::time::Duration;

use wharf_tests::clients::{fetch_blob, oci_error_of};
use wharf_tests::{Fault, ImageSpec, Kind, Stack, http_client, wait_until};

/// What the client must see under a fault.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// An error: an OCI error status or a broken body.
    Failure,
    /// An OCI error with this status.
    Status(u16),
    /// The exact bytes (the fault only slows things down).
    Bytes,
}

async fn cold_blob_under(name: &str, fault: impl FnOnce(&str) -> Fault, expect: Expect) {
    let s = Stack::start(name).await.unwrap();
    let img = ImageSpec::docker(&[300_000])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    let (layer, size) = (img.layer_digests[0].clone(), img.layer_sizes[0]);
    let hex = layer.trim_start_matches("sha256:").to_owned();
    let client = http_client();
    let repo = s.repo("team/app");
    let base = s.base();
    // The manifest first, healthy (it links the layer to the repository);
    // the layer itself is not in the store yet.
    wharf_tests::clients::get_manifest(&client, &base, &repo, "v1")
        .await
        .unwrap();

    s.upstream.set_fault(fault(&layer));
    let got = fetch_blob(&client, &base, &repo, &layer, Some(size)).await;
    match (expect, &got) {
        (Expect::Bytes, Ok(n)) => assert_eq!(*n, size),
        (Expect::Failure, Err(e)) => eprintln!("{name}: failed as it should: {e:#}"),
        (Expect::Status(want), Err(e)) => {
            let status = oci_error_of(e).map(|e| e.status);
            assert_eq!(status, Some(want), "{e:#}");
        }
        (want, got) => panic!("{name}: expected {want:?}, got {got:?}"),
    }

    // Settled: no download in flight, nothing left behind.
    wait_until("hydrations to settle", Duration::from_secs(30), || async {
        Ok(s.origin.metric("wharf_hydrations_in_flight", &[]).await? == 0.0)
    })
    .await
    .unwrap();
    let data = s.origin.data_dir().to_owned();
    // (Each origin process keeps a `.lock` in its own spool directory.)
    let spool: Vec<_> = wharf_tests::files_under(&data.join("spool"))
        .into_iter()
        .filter(|p| !p.ends_with(".lock"))
        .collect();
    assert!(spool.is_empty(), "{name}: spool files left: {spool:?}");
    let uploads = wharf_tests::upload_files(&data);
    assert!(
        uploads.is_empty(),
        "{name}: multipart uploads left: {uploads:?}"
    );
    let stored = wharf_tests::blob_objects(&data, &hex) > 0;
    assert_eq!(
        stored,
        expect == Expect::Bytes,
        "{name}: the blob is {} the store",
        if stored { "in" } else { "not in" }
    );

    // Healthy again (the rate limit's Retry-After and the circuit breaker's
    // cool-down are 1 s here): the blob pulls, fetched upstream once more
    // unless it was stored, then served from the store.
    s.upstream.set_fault(Fault::None);
    s.upstream.reset_counts();
    wait_until("the blob to pull", Duration::from_secs(10), || async {
        Ok(fetch_blob(&client, &base, &repo, &layer, Some(size))
            .await
            .is_ok())
    })
    .await
    .unwrap();
    let gets = s.upstream.counts().for_path("GET", Kind::Blob, &layer);
    assert_eq!(gets, u64::from(expect != Expect::Bytes), "{name}");
    s.upstream.reset_counts();
    fetch_blob(&client, &base, &repo, &layer, Some(size))
        .await
        .unwrap();
    assert_eq!(s.upstream.counts().for_path("GET", Kind::Blob, &layer), 0);
    if matches!(expect, Expect::Failure) && name.contains("corrupt") {
        let failures = s
            .origin
            .metric("wharf_integrity_failures_total", &[])
            .await
            .unwrap();
        assert!(
            failures >= 1.0,
            "{name}: wharf_integrity_failures_total = {failures}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_are_never_served_or_stored() {
    cold_blob_under(
        "fault-corrupt",
        |l| Fault::CorruptBlob(l.into()),
        Expect::Failure,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_mid_blob_leaves_nothing_behind() {
    cold_blob_under(
        "fault-reset",
        |l| Fault::TruncateBlob(l.into()),
        Expect::Failure,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_5xx_answers_are_oci_errors_and_leave_nothing_behind() {
    for status in [500, 502, 503] {
        cold_blob_under(
            &format!("fault-{status}"),
            |_| Fault::Status(status),
            Expect::Status(503),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_rate_limit_is_passed_on_as_429() {
    cold_blob_under("fault-429", |_| Fault::Status(429), Expect::Status(429)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_very_slow_upstream_still_delivers_verified_bytes() {
    cold_blob_under("fault-slow", |_| Fault::SlowBlobs(256 << 10), Expect::Bytes).await;
}
