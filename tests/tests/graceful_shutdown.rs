//! SIGTERM while a blob is being hydrated: the origin stops within its
//! shutdown grace, aborts the hydration and its multipart upload (nothing
//! half-written becomes visible, no upload is left behind), and after a
//! restart the blob is fetched again and served correctly.

use std::time::{Duration, Instant};

use futures::StreamExt;
use wharf_tests::{Fault, ImageSpec, Kind, OriginOpts, Stack, UpstreamAuth, http_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_aborts_in_flight_hydrations_cleanly() {
    let opts = OriginOpts {
        config_toml: Some("shutdown_grace = \"1s\"\npart_size_mib = 5\n".to_owned()),
        ..OriginOpts::default()
    };
    let mut s = Stack::start_with("graceful-shutdown", UpstreamAuth::Anonymous, opts)
        .await
        .unwrap();
    let img = ImageSpec::oci(&[12 << 20])
        .push(&s.upstream, "team/big", "v1")
        .await
        .unwrap();
    let (layer, size) = img.blobs().last().cloned().unwrap();
    // 12 MiB at 2 MiB/s: still downloading, with a part uploaded, at SIGTERM.
    s.upstream.set_fault(Fault::SlowBlobs(2 << 20));
    let url = format!("{}/v2/{}/blobs/{layer}", s.base(), s.repo("team/big"));
    let client = tokio::spawn({
        let url = url.clone();
        async move {
            let response = http_client().get(&url).send().await?;
            let mut body = response.bytes_stream();
            let mut got = 0u64;
            while let Some(chunk) = body.next().await {
                got += chunk?.len() as u64;
            }
            anyhow::Ok(got)
        }
    });
    let uploads = s.origin.data_dir().join("s3/wharf/uploads");
    let open_uploads = || std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0);
    // Wait (polling, not a fixed sleep: CI machines are slow) until the first
    // part is being uploaded; at 2 MiB/s the download still has seconds to go.
    let waiting = Instant::now();
    while open_uploads() == 0 && waiting.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        open_uploads(),
        1,
        "a multipart upload should be in progress"
    );

    let stopping = Instant::now();
    tokio::task::block_in_place(|| s.origin.stop());
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "took {:?} to stop",
        stopping.elapsed()
    );
    // The client was cut off, never given a complete body.
    if let Ok(got) = client.await.unwrap() {
        assert!(
            got < size,
            "the client got the whole blob ({got} bytes) from an aborted hydration"
        );
    }
    assert_eq!(
        open_uploads(),
        0,
        "the aborted hydration left its multipart upload behind"
    );
    assert!(
        s.origin.log().contains("aborting hydrations"),
        "{}",
        s.origin.log_tail(30)
    );

    // Nothing was stored: after a restart the blob is fetched again, whole.
    s.upstream.set_fault(Fault::None);
    s.upstream.reset_counts();
    s.origin.restart().await.unwrap();
    let bytes = http_client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(wharf_tests::sha256_digest(&bytes), layer);
    let counts = s.upstream.counts();
    assert_eq!(counts.for_path("GET", Kind::Blob, &layer), 1, "{counts}");
}
