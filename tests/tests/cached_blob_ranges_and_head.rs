//! A cached blob answers `HEAD` with its length and digest and `GET` with a
//! `Range` (206, `Content-Range`, exactly the asked bytes) from the store,
//! without touching the upstream; manifests answer `HEAD` likewise.

use wharf_tests::clients::fetch_blob;
use wharf_tests::{ImageSpec, Stack, http_client};

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_blob_serves_ranges_and_head_from_the_store() {
    let s = Stack::start("ranges-head").await.unwrap();
    let img = ImageSpec::oci(&[50_000])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    s.pull("team/app", "v1").await.unwrap();
    let digest = &img.layer_digests[0];
    let size = img.layer_sizes[0];
    let client = http_client();
    // The true bytes, straight from the registry.
    let truth = client
        .get(format!(
            "{}/v2/team/app/blobs/{digest}",
            s.upstream.push_url()
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(truth.len() as u64, size);

    s.upstream.reset_counts();
    let url = format!("{}/v2/{}/blobs/{digest}", s.base(), s.repo("team/app"));

    let head = client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-length"), Some(size.to_string()));
    assert_eq!(
        header(&head, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    assert!(head.bytes().await.unwrap().is_empty());

    for (range, start, end) in [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-1999", 1000, 1999),
        (
            &format!("bytes={}-", size - 10) as &str,
            size - 10,
            size - 1,
        ),
    ] {
        let resp = client
            .get(&url)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 206, "{range}");
        assert_eq!(
            header(&resp, "content-range"),
            Some(format!("bytes {start}-{end}/{size}")),
            "{range}"
        );
        assert_eq!(
            header(&resp, "content-length"),
            Some((end - start + 1).to_string()),
            "{range}"
        );
        let body = resp.bytes().await.unwrap();
        assert_eq!(&body[..], &truth[start as usize..=end as usize], "{range}");
    }

    // A plain GET is still the whole, verified blob.
    fetch_blob(&client, &s.base(), &s.repo("team/app"), digest, Some(size))
        .await
        .unwrap();
    let counts = s.upstream.counts();
    assert_eq!(
        counts.registry_total(),
        0,
        "a cached blob went upstream:\n{counts}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_head_reports_digest_type_and_length() {
    let s = Stack::start("manifest-head").await.unwrap();
    let img = ImageSpec::docker(&[1000])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    let index = ImageSpec::oci(&[1000])
        .push_index(&s.upstream, "team/multi", "v1")
        .await
        .unwrap();
    let client = http_client();
    let accept = wharf_tests::images::ALL_MANIFEST_TYPES.join(", ");
    // Cold (straight after the push) and warm (after a pull) alike.
    for round in ["cold", "warm"] {
        for (repo, reference, digest, media_type, len) in [
            (
                "team/app",
                "v1",
                &img.manifest_digest,
                &img.manifest_media_type,
                img.manifest.len(),
            ),
            (
                "team/multi",
                "v1",
                &index.digest,
                &index.media_type,
                index.manifest.len(),
            ),
        ] {
            let url = format!("{}/v2/{}/manifests/{reference}", s.base(), s.repo(repo));
            let head = client
                .head(&url)
                .header("accept", &accept)
                .send()
                .await
                .unwrap();
            assert_eq!(head.status(), 200, "{round} {repo}");
            assert_eq!(
                header(&head, "docker-content-digest").as_ref(),
                Some(digest),
                "{round} {repo}"
            );
            assert_eq!(
                header(&head, "content-type").as_ref(),
                Some(media_type),
                "{round} {repo}"
            );
            assert_eq!(
                header(&head, "content-length"),
                Some(len.to_string()),
                "{round} {repo}"
            );
        }
        s.pull("team/app", "v1").await.unwrap();
        s.pull("team/multi", "v1").await.unwrap();
    }
}
