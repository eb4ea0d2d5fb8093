//! Issue 15, a status page people look at: `/status` on a real origin after
//! real traffic (pulls, a warm job, a purge), read as HTML and rendered by
//! headless Chromium (Debian's `chromium`), with screenshots at phone and
//! desktop widths kept in `target/test-output/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use wharf_tests::origin::wharf_bin;
use wharf_tests::{ImageSpec, OriginOpts, Stack, UpstreamAuth, http_client, require_tool};

const ADMIN: &str = "status-page-admin-token-0123456789";

/// Runs headless Chromium on `url` with `args`; its stdout.
async fn chromium(profile: &Path, url: &str, args: &[&str]) -> String {
    let bin = require_tool("chromium", "chromium").unwrap();
    let run = tokio::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("chromium finished within 90 s")
        .unwrap();
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `target/test-output/` of the workspace (kept after the run).
fn output_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| wharf_tests::edge::workspace_root().join("target"));
    let dir = target.join("test-output");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_real_traffic_and_renders_in_chromium() {
    let opts = OriginOpts {
        config_toml: Some(format!("[admin]\ntoken = \"{ADMIN}\"\n")),
        ..OriginOpts::default()
    };
    let s = Stack::start_with("status-page", UpstreamAuth::Anonymous, opts)
        .await
        .unwrap();
    let app = ImageSpec::docker(&[300_000, 50_000])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    ImageSpec::oci(&[200_000])
        .push_index(&s.upstream, "team/multi", "v1")
        .await
        .unwrap();
    ImageSpec::docker(&[10_000])
        .push(&s.upstream, "team/old", "v1")
        .await
        .unwrap();
    // Traffic: cold then warm pulls, a warm job, a purge; the upstream
    // reports a Docker-Hub-like budget.
    s.upstream
        .set_fault(wharf_tests::Fault::RateLimitHeaders(73));
    for _ in 0..3 {
        s.pull("team/app", "v1").await.unwrap();
    }
    s.pull("team/old", "v1").await.unwrap();
    let warm = tokio::process::Command::new(wharf_bin().unwrap())
        .args(["--origin", &s.base(), "warm", "up/team/multi:v1"])
        .env("WHARF_ADMIN_TOKEN", ADMIN)
        .output()
        .await
        .unwrap();
    assert!(warm.status.success(), "{warm:?}");
    let purge = tokio::process::Command::new(wharf_bin().unwrap())
        .args(["--origin", &s.base(), "purge", "up/team/old:v1"])
        .env("WHARF_ADMIN_TOKEN", ADMIN)
        .output()
        .await
        .unwrap();
    assert!(purge.status.success(), "{purge:?}");

    // As served: one HTML document, no external asset, no script.
    let url = format!("{}/status", s.base());
    let resp = http_client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    let html = resp.text().await.unwrap();
    for absent in ["<script", "src=\"http", "href=\"http", "@import", "url("] {
        assert!(!html.contains(absent), "{absent} in the page");
    }
    assert!(html.contains("name=\"viewport\""), "readable on a phone");

    // As a browser renders it.
    let profile = s.dir.sub("chromium-profile");
    let dom = chromium(&profile, &url, &["--dump-dom"]).await;
    for want in [
        "id=\"status\">ok<",
        "Hit ratio",
        "id=\"hit-ratio\">",
        "from the cache",
        "upstream requests saved",
        "upstream up",
        "rate limit remaining 73",
        "object store",
        "Recent hydrations",
        "stored",
        "Recent evictions",
        "purged",
        "Warm jobs",
        "done",
    ] {
        assert!(
            dom.contains(want),
            "{want:?} not in the rendered page:\n{dom}"
        );
    }
    let layer = &app.layer_digests[0];
    let short: String = layer
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect();
    assert!(dom.contains(&short), "the hydrated layer {short} is listed");
    // The hit ratio shown is the one `/metrics` gives.
    let ratio = dom
        .split("id=\"hit-ratio\">")
        .nth(1)
        .and_then(|r| r.split('%').next())
        .and_then(|r| r.parse::<f64>().ok())
        .unwrap();
    assert!(ratio > 0.0 && ratio < 100.0, "{ratio}");

    let out = output_dir();
    for (name, size) in [("phone", "390,1600"), ("desktop", "1280,1200")] {
        let png = out.join(format!("status-page-{name}.png"));
        let _ = std::fs::remove_file(&png);
        chromium(
            &profile,
            &url,
            &[
                &format!("--screenshot={}", png.display()),
                &format!("--window-size={size}"),
            ],
        )
        .await;
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{} is a PNG", png.display());
        assert!(bytes.len() > 10_000, "{} has content", png.display());
        eprintln!("status page screenshot ({name}): {}", png.display());
    }
}
