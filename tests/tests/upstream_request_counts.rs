//! How many requests the upstream sees: none for content pulled before (by
//! digest always, by tag while fresh), one `HEAD` to revalidate a stale tag
//! (never a blind `GET`), and one `GET` per blob however many clients miss
//! at once.

use std::time::{Duration, Instant};

use wharf_tests::images::retag;
use wharf_tests::{ImageSpec, Kind, OriginOpts, Stack, UpstreamAuth};

/// The short tag TTL of the revalidation tests.
const TTL: Duration = Duration::from_secs(2);

fn ttl(d: Duration) -> OriginOpts {
    OriginOpts {
        tag_ttl: Some(d),
        ..OriginOpts::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_pull_by_digest_makes_no_upstream_request() {
    let s = Stack::start("counts-digest").await.unwrap();
    let img = ImageSpec::oci(&[20_000, 3000])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    let first = s.pull("team/app", &img.manifest_digest).await.unwrap();
    assert_eq!(first.blobs, img.blobs());
    assert!(
        s.upstream.counts().get("GET", Kind::Blob) >= 3,
        "{}",
        s.upstream.counts()
    );

    s.upstream.reset_counts();
    let second = s.pull("team/app", &img.manifest_digest).await.unwrap();
    assert_eq!(second.digest, img.manifest_digest);
    let counts = s.upstream.counts();
    assert_eq!(
        counts.total(),
        0,
        "a warm pull by digest reached the upstream:\n{counts}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_pull_within_ttl_makes_no_upstream_request() {
    let s = Stack::start_with(
        "counts-fresh-tag",
        UpstreamAuth::Anonymous,
        ttl(Duration::from_secs(300)),
    )
    .await
    .unwrap();
    let img = ImageSpec::docker(&[10_000])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    let index = ImageSpec::oci(&[1000])
        .push_index(&s.upstream, "team/multi", "v1")
        .await
        .unwrap();
    s.pull("team/app", "v1").await.unwrap();
    s.pull("team/multi", "v1").await.unwrap();

    s.upstream.reset_counts();
    assert_eq!(
        s.pull("team/app", "v1").await.unwrap().digest,
        img.manifest_digest
    );
    assert_eq!(
        s.pull("team/multi", "v1").await.unwrap().digest,
        index.digest
    );
    let counts = s.upstream.counts();
    assert_eq!(
        counts.total(),
        0,
        "a fresh tag reached the upstream:\n{counts}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_tag_is_revalidated_with_one_head_and_no_get() {
    let s = Stack::start_with("counts-stale-tag", UpstreamAuth::Anonymous, ttl(TTL))
        .await
        .unwrap();
    let img = ImageSpec::docker(&[10_000])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    s.pull("team/app", "v1").await.unwrap();

    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    s.upstream.reset_counts();
    let revalidating = Instant::now();
    let again = s.pull("team/app", "v1").await.unwrap();
    assert_eq!(again.digest, img.manifest_digest);
    let counts = s.upstream.counts();
    assert_eq!(counts.get("HEAD", Kind::Manifest), 1, "{counts}");
    assert_eq!(
        counts.get("GET", Kind::Manifest),
        0,
        "revalidation must not GET:\n{counts}"
    );
    assert_eq!(counts.get("GET", Kind::Blob), 0, "{counts}");

    // Revalidated means fresh again: the next pull inside the TTL is local
    // (checked only if this machine was quick enough to still be inside it).
    s.upstream.reset_counts();
    s.pull("team/app", "v1").await.unwrap();
    if revalidating.elapsed() < TTL {
        let counts = s.upstream.counts();
        assert_eq!(counts.registry_total(), 0, "{counts}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_tag_is_followed_after_revalidation() {
    let s = Stack::start_with("counts-moved-tag", UpstreamAuth::Anonymous, ttl(TTL))
        .await
        .unwrap();
    let old = ImageSpec::docker(&[10_000])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    let new = ImageSpec::docker(&[12_000])
        .push(&s.upstream, "team/app", "v2")
        .await
        .unwrap();
    let fetched = Instant::now();
    assert_eq!(
        s.pull("team/app", "v1").await.unwrap().digest,
        old.manifest_digest
    );

    retag(&s.upstream, &new, "v1").await.unwrap();
    // Inside the TTL the old answer stands (checked only if this machine
    // was quick enough to still be inside it).
    let digest = s.pull("team/app", "v1").await.unwrap().digest;
    if fetched.elapsed() < TTL {
        assert_eq!(digest, old.manifest_digest);
    }
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    s.upstream.reset_counts();
    let moved = s.pull("team/app", "v1").await.unwrap();
    assert_eq!(moved.digest, new.manifest_digest);
    assert_eq!(moved.blobs, new.blobs());
    let counts = s.upstream.counts();
    assert!(counts.get("HEAD", Kind::Manifest) <= 1, "{counts}");
    assert!(counts.get("GET", Kind::Manifest) <= 1, "{counts}");
}

/// 32 clients miss on the same cold image at once; the upstream serves each
/// blob once and every client still gets verified bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_pulls_make_one_upstream_fetch_per_blob() {
    const CLIENTS: usize = 32;
    let s = Stack::start("counts-herd").await.unwrap();
    let img = ImageSpec::oci(&[64 << 20, 4096])
        .push(&s.upstream, "team/big", "v1")
        .await
        .unwrap();

    let pulls = (0..CLIENTS).map(|_| {
        let (base, repo) = (s.base(), s.repo("team/big"));
        tokio::spawn(async move { wharf_tests::pull_with_reqwest(&base, &repo, "v1").await })
    });
    let results = futures::future::join_all(pulls).await;
    for (i, r) in results.into_iter().enumerate() {
        let pulled = r.unwrap().unwrap_or_else(|e| panic!("client {i}: {e:#}"));
        assert_eq!(pulled.digest, img.manifest_digest);
        assert_eq!(pulled.blobs, img.blobs());
    }

    let counts = s.upstream.counts();
    for (digest, _) in img.blobs() {
        assert_eq!(
            counts.for_path("GET", Kind::Blob, &digest),
            1,
            "blob {digest} was fetched more than once:\n{counts}"
        );
    }
    eprintln!("upstream requests for {CLIENTS} concurrent cold pulls:\n{counts}");

    let upstream_bytes = s
        .origin
        .metric("wharf_upstream_bytes_total", &[])
        .await
        .unwrap();
    assert!(
        upstream_bytes >= img.total_size as f64 && upstream_bytes < img.total_size as f64 * 1.1,
        "wharf_upstream_bytes_total = {upstream_bytes}, image is {} bytes",
        img.total_size
    );
    let served = s
        .origin
        .metric("wharf_served_bytes_total", &[])
        .await
        .unwrap();
    assert!(
        served >= (CLIENTS as u64 * img.total_size) as f64,
        "wharf_served_bytes_total = {served}, clients received {} bytes",
        CLIENTS as u64 * img.total_size
    );
}
