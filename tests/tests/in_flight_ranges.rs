//! Issue 14: a `Range` request for a blob whose download is still in flight
//! never receives unverified bytes presented as final. The origin either
//! waits for the blob's verification before completing the range, or passes
//! the range through to the upstream as a direct pull would; it never
//! completes a `206` from bytes it has not verified yet.

use std::time::{Duration, Instant};

use wharf_tests::{Fault, ImageSpec, Kind, Stack, http_client, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_an_in_flight_blob_waits_for_verification_or_goes_upstream() {
    let s = Stack::start("inflight-range").await.unwrap();
    let img = ImageSpec::docker(&[1 << 20])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    let (layer, size) = (img.layer_digests[0].clone(), img.layer_sizes[0]);
    let client = http_client();
    let repo = s.repo("team/app");
    let base = s.base();
    wharf_tests::clients::get_manifest(&client, &base, &repo, "v1")
        .await
        .unwrap();
    // About 4 s for the whole blob.
    s.upstream.set_fault(Fault::SlowBlobs(256 << 10));
    s.upstream.reset_counts();
    let full = {
        let (client, base, repo, layer) =
            (client.clone(), base.clone(), repo.clone(), layer.clone());
        tokio::spawn(async move {
            let r =
                wharf_tests::clients::fetch_blob(&client, &base, &repo, &layer, Some(size)).await;
            (r, Instant::now())
        })
    };
    wait_until(
        "the hydration to start",
        Duration::from_secs(10),
        || async { Ok(s.origin.metric("wharf_hydrations_in_flight", &[]).await? >= 1.0) },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;

    // The first kilobyte has long arrived in the origin's spool.
    let asked = Instant::now();
    let r = client
        .get(format!("{base}/v2/{repo}/blobs/{layer}"))
        .header("Range", "bytes=0-999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let body = r.bytes().await;
    let range_done = Instant::now();
    let (full, full_done) = full.await.unwrap();
    full.unwrap_or_else(|e| panic!("the full pull failed: {e:#}"));
    let gets = s.upstream.counts().for_path("GET", Kind::Blob, &layer);
    // Either way, the range's bytes are the blob's.
    let body = body.unwrap();
    assert_eq!(body.len(), 1000);
    let direct = client
        .get(format!("{}/v2/team/app/blobs/{layer}", s.upstream.url()))
        .header("Range", "bytes=0-999")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body, direct);
    // Waiting for verification ends the range with the full pull (whose
    // last byte is held back until then); passing it through costs a second
    // upstream GET.
    let early = full_done.saturating_duration_since(range_done);
    assert!(
        gets >= 2 || early < Duration::from_millis(300),
        "a range of an in-flight blob completed {early:?} before the blob was verified, \
         {:?} after it was asked ({gets} upstream GETs: not passed through)",
        range_done - asked
    );
}
