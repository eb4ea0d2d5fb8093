//! Issue 15 on the production shape: three regions (two replicas in `eu`),
//! buckets on a Garage cluster, replication on.
//!
//! * `wharf --regions … --all-regions` warms a multi-arch image in every
//!   region and shows every region's status;
//! * every metric the Grafana dashboard (`infra/grafana/wharf.json`)
//!   queries exists in a running origin's `/metrics`.

use std::collections::BTreeSet;
use std::process::Output;
use std::time::Duration;

use wharf_tests::geo::{GeoOpts, GeoStack, pull_token};
use wharf_tests::origin::wharf_bin;
use wharf_tests::{Fault, ImageSpec, RULE_PREFIX, http_client, wait_until};

const ADMIN: &str = "operations-geo-admin-token-0123456789";

async fn wharf(regions: &std::path::Path, args: &[&str]) -> Output {
    let out = tokio::process::Command::new(wharf_bin().unwrap())
        .arg("--regions")
        .arg(regions)
        .args(args)
        .env("WHARF_ADMIN_TOKEN", ADMIN)
        .output()
        .await
        .unwrap();
    eprintln!(
        "$ wharf --regions regions.toml {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The metric names a dashboard's queries use.
fn dashboard_metrics(dashboard: &serde_json::Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("wharf_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                names.insert(name);
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_warmed_and_shown_and_every_dashboard_metric_exists() {
    let g = GeoStack::start(
        "ops-geo",
        GeoOpts {
            replicate: true,
            origin_toml: format!("[admin]\ntoken = \"{ADMIN}\"\n"),
            ..GeoOpts::default()
        },
    )
    .await
    .unwrap();
    let regions = g.regions_file().unwrap();
    // The upstream reports a Docker-Hub-like budget on manifests.
    g.upstream.set_fault(Fault::RateLimitHeaders(97));
    let index = ImageSpec::oci(&[400_000, 100_000])
        .push_index(&g.upstream, "team/app", "v1")
        .await
        .unwrap();
    let image = format!("{RULE_PREFIX}/team/app:v1");

    // Warm in every region at once.
    let out = wharf(&regions, &["--all-regions", "warm", &image]).await;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for region in ["eu", "us", "ap"] {
        assert!(
            text.contains(&format!("{region}: job ")),
            "{region} in:\n{text}"
        );
    }
    assert!(text.contains("linux/amd64, linux/arm64"), "{text}");

    // Pulls from the warmed regions are hits (the origins want the edge's
    // tokens here); replication settles.
    let repo = format!("{RULE_PREFIX}/team/app");
    let token = pull_token(&repo);
    let child = index.child("amd64");
    for region in &g.regions {
        let base = region.replicas[0].url();
        let manifest = http_client()
            .get(format!("{base}/v2/{repo}/manifests/v1"))
            .header("Accept", "application/vnd.oci.image.index.v1+json")
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(manifest.status(), 200);
        assert_eq!(manifest.headers()["x-wharf-cache"], "hit");
        for (digest, size) in child.blobs() {
            let blob = http_client()
                .get(format!("{base}/v2/{repo}/blobs/{digest}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(blob.status(), 200);
            assert_eq!(blob.bytes().await.unwrap().len() as u64, size);
        }
    }
    let eu = &g.region("eu").replicas[0];
    wait_until("replication to settle", Duration::from_secs(30), || async {
        Ok(eu.metric("wharf_replication_backlog", &[]).await? == 0.0)
    })
    .await
    .unwrap();
    let out = wharf(&regions, &["--region", "eu", "gc"]).await;
    assert!(out.status.success());

    // Every region's status.
    let out = wharf(&regions, &["--all-regions", "status"]).await;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for region in ["eu: ok", "us: ok", "ap: ok"] {
        assert!(text.contains(region), "{region} in:\n{text}");
    }
    assert!(text.contains("rate limit remaining 97"), "{text}");
    let out = wharf(&regions, &["--all-regions", "status", "--output", "json"]).await;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status.as_array().unwrap().len(), 3);
    assert_eq!(status[0]["region"], "eu");

    // The dashboard asks only for what an origin exports.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            wharf_tests::edge::workspace_root().join("infra/grafana/wharf.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let wanted = dashboard_metrics(&dashboard);
    assert!(wanted.len() >= 25, "{wanted:?}");
    let text = http_client()
        .get(format!("{}/metrics", eu.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|m| !exported.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the origin does not export: {missing:?}"
    );
}
