//! Issue 14: a spool file is released as soon as its blob is committed; a
//! slow reader of the same download does not pin it — it reads the rest
//! from the store, and still gets exactly the blob's bytes.

use std::time::Duration;

use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use wharf_tests::clients::fetch_blob;
use wharf_tests::{ImageSpec, Stack, http_client, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_does_not_pin_the_spool_of_a_committed_blob() {
    let s = Stack::start("spool-release").await.unwrap();
    let img = ImageSpec::docker(&[32 << 20])
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

    // The slow reader: starts the download, reads one chunk, then stops.
    let slow = client
        .get(format!("{base}/v2/{repo}/blobs/{layer}"))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    let mut body = slow.bytes_stream();
    let mut hasher = Sha256::new();
    let first = body.next().await.unwrap().unwrap();
    hasher.update(&first);
    let mut read = first.len() as u64;

    // A fast reader of the same flight; the blob commits.
    fetch_blob(&client, &base, &repo, &layer, Some(size))
        .await
        .unwrap();
    s.origin.wait_committed(1).await.unwrap();
    let spool = s.origin.data_dir().join("spool");
    let spool_files = || {
        wharf_tests::files_under(&spool)
            .into_iter()
            .filter(|p| !p.ends_with(".lock"))
            .collect::<Vec<_>>()
    };
    wait_until("the spool file to go", Duration::from_secs(10), || async {
        Ok(spool_files().is_empty())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", spool_files()));
    assert!(read < size, "the slow reader had read everything already");

    // The slow reader goes on, from the store, and gets the exact blob.
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        hasher.update(&chunk);
        read += chunk.len() as u64;
    }
    assert_eq!(read, size);
    assert_eq!(format!("sha256:{}", hex::encode(hasher.finalize())), layer);
}
