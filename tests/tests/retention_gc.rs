//! Issue 14, retention and GC: a quota with high and low watermarks evicts
//! the least recently pulled image first; the collection is two-phase
//! (links go at once, bytes one grace window later), never touches what a
//! kept image needs (a layer shared with an evicted image included), and a
//! dry run changes nothing. Afterwards every kept image pulls with 0
//! upstream requests and the evicted one pulls again, verified.
//!
//! Two replicas on one bucket: one pass at a time (the lease), and the
//! sweep's records live in the bucket, so one replica completes what the
//! other started; an origin that still remembers committing a blob another
//! replica deleted fetches it again rather than answering `404`.
//!
//! Driven through the admin API (`POST /admin/gc`), against the real
//! origin binary, a real Distribution upstream and the embedded store.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use wharf_tests::images::SharedLayer;
use wharf_tests::{ImageSpec, OriginOpts, Stack, UpstreamAuth, files_under, http_client};

const ADMIN: &str = "retention-test-admin-token-0123456789";

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

/// Whether the embedded store under `data` holds the object `key` (its
/// file is `objects/<key>%obj`).
fn stored(data: &Path, key: &str) -> bool {
    let suffix = format!("/objects/{key}%obj");
    files_under(&data.join("s3"))
        .iter()
        .any(|p| p.to_string_lossy().ends_with(&suffix))
}

async fn gc(s: &Stack, dry_run: bool) -> Value {
    let resp = http_client()
        .post(format!("{}/admin/gc?dry_run={dry_run}", s.base()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", s.origin.log_tail(30));
    resp.json().await.unwrap()
}

fn evicted(report: &Value) -> Vec<(String, String)> {
    report["evicted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["image"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_quota_evicts_the_least_recently_pulled_and_keeps_what_kept_images_share() {
    let opts = OriginOpts {
        config_toml: Some(format!(
            "[admin]\ntoken = \"{ADMIN}\"\n\n[retention]\nquota_high_mib = 3\nquota_low_mib = 3\ngrace = \"2s\"\nrecord_interval = \"300ms\"\n"
        )),
        ..OriginOpts::default()
    };
    let s = Stack::start_with("retention-quota", UpstreamAuth::Anonymous, opts)
        .await
        .unwrap();
    let data = s.origin.data_dir().to_owned();
    // `legacy` and `app` share a 1 MiB base layer; each has 1 MiB of its
    // own; `tool` has 512 KiB. About 3.5 MiB in all, above the 3 MiB quota.
    let base = SharedLayer::generate(&s.dir.sub("base"), 1 << 20)
        .await
        .unwrap();
    let legacy = ImageSpec::docker(&[1 << 20])
        .push_with_shared(&s.upstream, "team/legacy", "v1", &[&base])
        .await
        .unwrap();
    let app = ImageSpec::docker(&[1 << 20])
        .push_with_shared(&s.upstream, "team/app", "v1", &[&base])
        .await
        .unwrap();
    let tool = ImageSpec::docker(&[512 << 10])
        .push(&s.upstream, "team/tool", "v1")
        .await
        .unwrap();

    // The admin API wants its token.
    let refused = http_client()
        .post(format!("{}/admin/gc", s.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");

    // `legacy` is pulled first; `app` and `tool` later (the last-pull
    // records are written every 300 ms; store times have 1 s resolution).
    s.pull("team/legacy", "v1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.pull("team/app", "v1").await.unwrap();
    s.pull("team/tool", "v1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let legacy_key = format!("up/team/legacy@{}", legacy.manifest_digest);
    let legacy_own = &legacy.layer_digests[1];
    let legacy_link = format!(
        "links/up/team/legacy/_/manifests/sha256/{}",
        hex(&legacy.manifest_digest)
    );

    // A dry run says what would go and changes nothing.
    let dry = gc(&s, true).await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["images"], 3, "{dry}");
    assert_eq!(evicted(&dry), [(legacy_key.clone(), "quota".to_owned())]);
    assert!(stored(&data, &legacy_link));

    // First pass: `legacy` is evicted (its link and tag record go); its
    // own blobs become candidates (their links go); no bytes yet.
    let first = gc(&s, false).await;
    assert_eq!(evicted(&first), [(legacy_key.clone(), "quota".to_owned())]);
    assert_eq!(first["deleted"].as_array().unwrap().len(), 0, "{first}");
    assert!(first["candidates"].as_u64().unwrap() >= 3, "{first}");
    assert!(
        !stored(&data, &legacy_link),
        "the evicted image's link stays"
    );
    assert!(!stored(&data, "tags/up/team/legacy/_/v1"));
    assert!(stored(&data, &format!("blobs/sha256/{}", hex(legacy_own))));

    // After the grace window, the second pass deletes exactly what only
    // `legacy` needed: its own layer, its config, its manifest.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let second = gc(&s, false).await;
    let mut deleted: Vec<String> = second["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    deleted.sort();
    let mut want = vec![
        format!("blobs/sha256/{}", hex(legacy_own)),
        format!("blobs/sha256/{}", hex(&legacy.config_digest)),
        format!("manifests/sha256/{}", hex(&legacy.manifest_digest)),
    ];
    want.sort();
    assert_eq!(deleted, want, "{second}");
    for key in &want {
        assert!(!stored(&data, key), "{key} is still stored");
    }
    for (digest, _) in app.blobs().iter().chain(tool.blobs().iter()) {
        assert!(
            stored(&data, &format!("blobs/sha256/{}", hex(digest))),
            "kept blob {digest} was deleted"
        );
    }
    assert_eq!(base.digest(), app.layer_digests[0]);

    // Kept images: 0 upstream requests.
    s.upstream.reset_counts();
    for (repo, image) in [("team/app", &app), ("team/tool", &tool)] {
        let pulled = s.pull(repo, "v1").await.unwrap();
        assert_eq!(pulled.digest, image.manifest_digest);
    }
    assert_eq!(
        s.upstream.counts().registry_total(),
        0,
        "{:?}",
        s.upstream.counts()
    );

    // The evicted image pulls again, verified, from the upstream.
    let again = s.pull("team/legacy", "v1").await.unwrap();
    assert_eq!(again.digest, legacy.manifest_digest);
    assert!(s.upstream.counts().registry_total() > 0);

    let m = &s.origin;
    let runs = m
        .metric("wharf_gc_runs_total", &[("mode", "run"), ("result", "ok")])
        .await
        .unwrap();
    assert_eq!(runs, 2.0);
    let dry_runs = m
        .metric(
            "wharf_gc_runs_total",
            &[("mode", "dry_run"), ("result", "ok")],
        )
        .await
        .unwrap();
    assert_eq!(dry_runs, 1.0);
    let evictions = m
        .metric(
            "wharf_evicted_images_total",
            &[("rule", "up"), ("reason", "quota")],
        )
        .await
        .unwrap();
    assert_eq!(evictions, 1.0);
    let blobs_deleted = m
        .metric("wharf_gc_deleted_objects_total", &[("kind", "blob")])
        .await
        .unwrap();
    assert_eq!(blobs_deleted, 2.0);
    assert!(m.metric("wharf_gc_deleted_bytes_total", &[]).await.unwrap() >= (1 << 20) as f64);
    assert!(
        m.metric("wharf_store_bytes", &[("rule", "up")])
            .await
            .unwrap()
            > (2 << 20) as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_keep_window_evicts_what_was_not_pulled_within_it() {
    let opts = OriginOpts {
        config_toml: Some(format!(
            "[admin]\ntoken = \"{ADMIN}\"\n\n[retention]\ngrace = \"1s\"\nrecord_interval = \"200ms\"\n\n[[rule]]\nprefix = \"up\"\nupstream = \"{{upstream}}\"\nkeep = \"3s\"\n"
        )),
        ..OriginOpts::default()
    };
    let s = Stack::start_with("retention-keep", UpstreamAuth::Anonymous, opts)
        .await
        .unwrap();
    let old = ImageSpec::docker(&[64 << 10])
        .push(&s.upstream, "team/old", "v1")
        .await
        .unwrap();
    ImageSpec::docker(&[64 << 10])
        .push(&s.upstream, "team/hot", "v1")
        .await
        .unwrap();
    s.pull("team/old", "v1").await.unwrap();
    s.pull("team/hot", "v1").await.unwrap();
    // `hot` keeps being pulled (by digest too: a hit refreshes it); `old`
    // is not.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        s.pull("team/hot", "v1").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = gc(&s, false).await;
    assert_eq!(
        evicted(&report),
        [(
            format!("up/team/old@{}", old.manifest_digest),
            "expired".to_owned()
        )],
        "{report}"
    );
    assert_eq!(report["images"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_bucket_collect_once_and_share_the_sweeps_records() {
    // `owner` embeds the store; `replica` uses the same bucket over S3.
    let bucket = wharf_tests::SharedBucket::new();
    let retention = format!(
        "[admin]\ntoken = \"{ADMIN}\"\n\n[retention]\nquota_high_mib = 1\ngrace = \"2s\"\nrecord_interval = \"200ms\"\n"
    );
    let s = Stack::start_with(
        "retention-shared",
        UpstreamAuth::Anonymous,
        OriginOpts {
            config_toml: Some(format!("{}\n{retention}", bucket.owner_toml())),
            ..OriginOpts::default()
        },
    )
    .await
    .unwrap();
    let replica = wharf_tests::Origin::start(
        &s.dir,
        OriginOpts {
            name: Some("replica".into()),
            config_toml: Some(retention.clone()),
            ..bucket.client(bucket.endpoint(), vec![("up".into(), s.upstream.url())])
        },
    )
    .await
    .unwrap();
    let old = ImageSpec::docker(&[1 << 20])
        .push(&s.upstream, "team/old", "v1")
        .await
        .unwrap();
    ImageSpec::docker(&[512 << 10])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    // `old` through the owner, then `app` through the replica, later.
    s.pull("team/old", "v1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    wharf_tests::pull_with_reqwest(&replica.url(), "up/team/app", "v1")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Both at once: each pass runs whole or is refused with `Retry-After`
    // (the lease); never two halves.
    let post = |base: String| async move {
        http_client()
            .post(format!("{base}/admin/gc"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
    };
    let (a, b) = tokio::join!(post(s.base()), post(replica.url()));
    let mut evicted_by = Vec::new();
    for r in [a, b] {
        match r.status().as_u16() {
            200 => {
                let report: Value = r.json().await.unwrap();
                evicted_by.extend(evicted(&report));
            }
            503 => {
                assert!(r.headers().contains_key("retry-after"));
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // `old` is evicted (by whichever pass ran first; a second pass finds it
    // gone).
    assert_eq!(
        evicted_by,
        [(
            format!("up/team/old@{}", old.manifest_digest),
            "quota".to_owned()
        )]
    );

    // The owner's pass recorded the candidates in the bucket; the
    // replica's pass one grace window later deletes them.
    let first = gc(&s, false).await;
    assert_eq!(first["deleted"].as_array().unwrap().len(), 0, "{first}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let resp = http_client()
        .post(format!("{}/admin/gc", replica.url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let second: Value = resp.json().await.unwrap();
    let mut deleted: Vec<&str> = second["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    deleted.sort();
    let mut want = vec![
        format!("blobs/sha256/{}", hex(&old.layer_digests[0])),
        format!("blobs/sha256/{}", hex(&old.config_digest)),
        format!("manifests/sha256/{}", hex(&old.manifest_digest)),
    ];
    want.sort();
    assert_eq!(deleted, want, "{second}");

    // The kept image pulls through both with 0 upstream requests; the
    // evicted one pulls again through the replica that deleted it and
    // through the owner, which still remembers committing its blobs a few
    // seconds ago: an object gone from the store is a miss, never a 404.
    s.upstream.reset_counts();
    s.pull("team/app", "v1").await.unwrap();
    wharf_tests::pull_with_reqwest(&replica.url(), "up/team/app", "v1")
        .await
        .unwrap();
    assert_eq!(
        s.upstream.counts().registry_total(),
        0,
        "{:?}",
        s.upstream.counts()
    );
    s.pull("team/old", "v1").await.unwrap();
    wharf_tests::pull_with_reqwest(&replica.url(), "up/team/old", "v1")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_crashed_pass_leaves_behind_delays_the_next_one_but_never_deletes_a_kept_blob() {
    let bucket = wharf_tests::SharedBucket::new();
    let opts = OriginOpts {
        config_toml: Some(format!(
            "{}\n[admin]\ntoken = \"{ADMIN}\"\n\n[retention]\ngrace = \"1s\"\n",
            bucket.owner_toml()
        )),
        ..OriginOpts::default()
    };
    let s = Stack::start_with("retention-crash", UpstreamAuth::Anonymous, opts)
        .await
        .unwrap();
    let data = s.origin.data_dir().to_owned();
    let image = ImageSpec::docker(&[256 << 10])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    s.pull("team/app", "v1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    // A replica died mid-pass an instant ago: its lease holds (503 with
    // Retry-After, never two passes at once); a dry run still answers.
    bucket
        .put(
            "gc/lease",
            format!(
                "{{\"holder\":\"dead-replica\",\"until_ms\":{}}}",
                now_ms + 3_600_000
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let busy = http_client()
        .post(format!("{}/admin/gc", s.base()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(busy.status(), 503);
    assert_eq!(busy.headers()["retry-after"], "60");
    assert_eq!(gc(&s, true).await["dry_run"], true);

    // Once its lease expired the next pass runs. The dead pass had recorded
    // the kept image's layer as a candidate long ago (a stale record, or one
    // written before the image was pulled again): references decide, the
    // record does not.
    bucket
        .put(
            "gc/lease",
            format!(
                "{{\"holder\":\"dead-replica\",\"until_ms\":{}}}",
                now_ms - 1
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    bucket
        .put(
            "gc/candidates.json",
            format!("{{\"blobs\":{{\"{}\":0}}}}", image.layer_digests[0]).as_bytes(),
        )
        .await
        .unwrap();
    let report = gc(&s, false).await;
    assert_eq!(report["deleted"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(report["candidates"], 0, "{report}");
    assert!(!stored(&data, "gc/lease"), "the pass released its lease");

    // An unreadable record (a torn write) is ignored, not fatal.
    bucket
        .put("gc/candidates.json", b"{\"blobs\":")
        .await
        .unwrap();
    let report = gc(&s, false).await;
    assert_eq!(report["deleted"].as_array().unwrap().len(), 0, "{report}");

    s.upstream.reset_counts();
    let pulled = s.pull("team/app", "v1").await.unwrap();
    assert_eq!(pulled.digest, image.manifest_digest);
    assert_eq!(s.upstream.counts().registry_total(), 0);
}
