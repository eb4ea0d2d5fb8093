//! Issue 14, bounded by design: past the download bounds — hydrations in
//! flight, or free space on the spool's or store's filesystem — a cold blob
//! is passed through (streamed from the upstream, verified, not stored)
//! instead of hydrated; warm pulls are unaffected, `/readyz` and the metrics
//! say so, and it recovers by itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use wharf_tests::clients::fetch_blob;
use wharf_tests::{
    Fault, ImageSpec, Kind, Origin, OriginOpts, Stack, TestDir, Upstream, UpstreamAuth,
    http_client, wait_until,
};

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_hydration_limit_cold_blobs_pass_through() {
    let opts = OriginOpts {
        config_toml: Some("[limits]\nhydrations = 1\n".into()),
        ..OriginOpts::default()
    };
    let s = Stack::start_with("bounded-hydrations", UpstreamAuth::Anonymous, opts)
        .await
        .unwrap();
    let big = ImageSpec::docker(&[1 << 20])
        .push(&s.upstream, "team/big", "v1")
        .await
        .unwrap();
    let small = ImageSpec::docker(&[64 << 10])
        .push(&s.upstream, "team/small", "v1")
        .await
        .unwrap();
    let client = http_client();
    let base = s.base();
    for repo in ["team/big", "team/small"] {
        wharf_tests::clients::get_manifest(&client, &base, &s.repo(repo), "v1")
            .await
            .unwrap();
    }
    // The one allowed hydration: about 4 s.
    s.upstream.set_fault(Fault::SlowBlobs(256 << 10));
    let (big_layer, big_size) = (big.layer_digests[0].clone(), big.layer_sizes[0]);
    let first = {
        let (client, base, repo, layer) = (
            client.clone(),
            base.clone(),
            s.repo("team/big"),
            big_layer.clone(),
        );
        tokio::spawn(async move { fetch_blob(&client, &base, &repo, &layer, Some(big_size)).await })
    };
    wait_until(
        "the hydration to start",
        Duration::from_secs(10),
        || async { Ok(s.origin.metric("wharf_hydrations_in_flight", &[]).await? >= 1.0) },
    )
    .await
    .unwrap();

    // Another cold blob: passed through, verified, not stored.
    let (layer, size) = (small.layer_digests[0].clone(), small.layer_sizes[0]);
    let repo = s.repo("team/small");
    fetch_blob(&client, &base, &repo, &layer, Some(size))
        .await
        .unwrap();
    let passed = s
        .origin
        .metric("wharf_passthrough_total", &[("reason", "hydrations")])
        .await
        .unwrap();
    assert_eq!(passed, 1.0);
    first.await.unwrap().unwrap();
    s.origin.wait_committed(1).await.unwrap();
    let data = s.origin.data_dir().to_owned();
    assert!(wharf_tests::blob_objects(&data, hex(&big_layer)) > 0);
    assert!(
        wharf_tests::blob_objects(&data, hex(&layer)) == 0,
        "a passed-through blob was stored"
    );

    // The bound is free again: the next request hydrates it.
    s.upstream.set_fault(Fault::None);
    s.upstream.reset_counts();
    fetch_blob(&client, &base, &repo, &layer, Some(size))
        .await
        .unwrap();
    s.origin.wait_committed(2).await.unwrap();
    assert!(wharf_tests::blob_objects(&data, hex(&layer)) > 0);
    assert_eq!(s.upstream.counts().for_path("GET", Kind::Blob, &layer), 1);
}

/// A tmpfs mounted on `path` for the test's life (the origin is stopped
/// before it is unmounted: declare it first).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "wharf-test"])
            .arg(path)
            .status()
            .expect("mount (the tests run as root)");
        assert!(ok.success(), "mounting a tmpfs on {}", path.display());
        Tmpfs(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_passes_cold_pulls_through_and_recovers() {
    let dir = TestDir::new("disk-pressure").unwrap();
    let tmpfs = Tmpfs::mount(&dir.path().join("origin-data"), 64);
    let upstream = Upstream::start(&dir, UpstreamAuth::Anonymous)
        .await
        .unwrap();
    let origin = Origin::start(
        &dir,
        OriginOpts {
            rules: vec![("up".into(), upstream.url())],
            config_toml: Some("[limits]\nmin_free_mib = 40\n".into()),
            ..OriginOpts::default()
        },
    )
    .await
    .unwrap();
    let img = ImageSpec::docker(&[2 << 20])
        .push(&upstream, "team/app", "v1")
        .await
        .unwrap();
    let client = http_client();
    let base = origin.url();
    let readyz = || async {
        let r = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200, "a full disk is degraded, not down");
        let body: serde_json::Value = r.json().await.unwrap();
        (
            body["status"].as_str().unwrap().to_owned(),
            body["checks"]["disk"]["spool"]["ok"].as_bool().unwrap(),
        )
    };
    assert_eq!(readyz().await, ("ok".into(), true));

    // Someone else's 30 MiB: about 34 MiB left, under the 40 MiB floor.
    let filler = tmpfs.0.join("filler");
    std::fs::write(&filler, vec![7u8; 30 << 20]).unwrap();
    assert_eq!(readyz().await, ("degraded".into(), false));
    let pulled = wharf_tests::pull_with_reqwest(&base, "up/team/app", "v1")
        .await
        .unwrap();
    assert_eq!(pulled.digest, img.manifest_digest);
    let layer = &img.layer_digests[0];
    assert!(
        wharf_tests::blob_objects(&tmpfs.0, hex(layer)) == 0,
        "stored under disk pressure"
    );
    let passed = origin
        .metric("wharf_passthrough_total", &[("reason", "disk")])
        .await
        .unwrap();
    assert!(
        passed >= 1.0,
        "wharf_passthrough_total{{reason=\"disk\"}} = {passed}"
    );
    let free = origin
        .metric("wharf_disk_free_bytes", &[("dir", "spool")])
        .await
        .unwrap();
    assert!(free < (40 << 20) as f64, "{free}");
    assert!(filler.exists(), "the origin deleted a file it does not own");

    // Space returns: cold pulls hydrate again, by themselves.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(readyz().await, ("ok".into(), true));
    wharf_tests::pull_with_reqwest(&base, "up/team/app", "v1")
        .await
        .unwrap();
    origin.wait_committed(2).await.unwrap();
    assert!(wharf_tests::blob_objects(&tmpfs.0, hex(layer)) > 0);
    drop(origin);
    drop(upstream);
}
