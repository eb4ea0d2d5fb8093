//! SIGTERM while a blob is being hydrated: the origin stops within its
//! shutdown grace, aborts the hydration and its multipart upload (nothing
//! half-written becomes visible, no upload is left behind), and after a
//! restart the blob is fetched again and served correctly.
//!
//! The origin under test uses an external S3 store (another origin's
//! embedded server, over the S3 API), where blobs are uploaded in parts
//! while they arrive; with its own embedded store an origin commits on disk
//! only after verification, which the second test covers.

use std::time::{Duration, Instant};

use futures::StreamExt;
use wharf_tests::{
    Fault, ImageSpec, Kind, Origin, OriginOpts, Stack, TestDir, UpstreamAuth, free_port,
    http_client,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_aborts_in_flight_hydrations_cleanly() {
    let s3_port = free_port();
    let (ak, sk) = ("shutdownkey", "shutdown-secret-key-0123456789");
    let store_dir = TestDir::new("graceful-shutdown-store").unwrap();
    let store = Origin::start(
        &store_dir,
        OriginOpts {
            rules: vec![("unused".into(), "http://127.0.0.1:9".into())],
            config_toml: Some(format!(
                "[embedded]\nlisten = \"127.0.0.1:{s3_port}\"\naccess_key = \"{ak}\"\nsecret_key = \"{sk}\"\nbucket = \"wharf\"\n"
            )),
            ..OriginOpts::default()
        },
    )
    .await
    .unwrap();
    let opts = OriginOpts {
        config_toml: Some("shutdown_grace = \"1s\"\npart_size_mib = 5\n".to_owned()),
        s3_endpoint: Some(format!("http://127.0.0.1:{s3_port}")),
        env: vec![
            ("AWS_ACCESS_KEY_ID".into(), ak.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), sk.into()),
        ],
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
    let uploads = store.data_dir().join("s3/wharf/uploads");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_hydration_leaves_nothing_in_the_embedded_store() {
    let opts = OriginOpts {
        config_toml: Some("shutdown_grace = \"1s\"\n".to_owned()),
        ..OriginOpts::default()
    };
    let mut s = Stack::start_with("graceful-shutdown-embedded", UpstreamAuth::Anonymous, opts)
        .await
        .unwrap();
    let img = ImageSpec::oci(&[8 << 20])
        .push(&s.upstream, "team/big", "v1")
        .await
        .unwrap();
    let (layer, size) = img.blobs().last().cloned().unwrap();
    s.upstream.set_fault(Fault::SlowBlobs(2 << 20));
    let url = format!("{}/v2/{}/blobs/{layer}", s.base(), s.repo("team/big"));
    let response = http_client().get(&url).send().await.unwrap();
    let mut body = response.bytes_stream();
    let mut got = 0u64;
    // Some bytes arrived: the hydration is under way.
    while got == 0 {
        got += body.next().await.unwrap().unwrap().len() as u64;
    }
    tokio::task::block_in_place(|| s.origin.stop());
    while let Some(Ok(chunk)) = body.next().await {
        got += chunk.len() as u64;
    }
    assert!(
        got < size,
        "the client got the whole blob from an aborted hydration"
    );
    let objects = s.origin.data_dir().join("s3/wharf");
    let stored = wharf_tests::files_under(&objects).into_iter().any(|p| {
        p.to_string_lossy()
            .contains(layer.trim_start_matches("sha256:"))
    });
    assert!(!stored, "the aborted blob is in the store");

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
    assert_eq!(s.upstream.counts().for_path("GET", Kind::Blob, &layer), 1);
    // …and now it is in the store (the check above can see it).
    let hex = layer.trim_start_matches("sha256:").to_owned();
    let started = Instant::now();
    while !wharf_tests::files_under(&objects)
        .iter()
        .any(|p| p.to_string_lossy().contains(&hex))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the blob was never stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
