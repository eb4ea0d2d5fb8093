//! Issue 15, operating it: the `wharf` command against a real origin's
//! admin API — warm a multi-arch image (every platform, or the ones asked
//! for) as a job, follow it, find it resumable; status; purge; gc; exit
//! codes and messages that say what to do.

use std::process::Output;

use serde_json::Value;
use wharf_tests::clients::fetch_blob;
use wharf_tests::origin::wharf_bin;
use wharf_tests::{ImageSpec, Kind, OriginOpts, Stack, UpstreamAuth, http_client};

const ADMIN: &str = "operations-cli-admin-token-0123456789";

/// Runs `wharf --origin <origin> ARGS` with the admin token.
async fn wharf(s: &Stack, args: &[&str]) -> Output {
    wharf_with(s, ADMIN, args).await
}

async fn wharf_with(s: &Stack, token: &str, args: &[&str]) -> Output {
    let out = tokio::process::Command::new(wharf_bin().unwrap())
        .arg("--origin")
        .arg(s.base())
        .args(args)
        .env("WHARF_ADMIN_TOKEN", token)
        .output()
        .await
        .unwrap();
    eprintln!(
        "$ wharf {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn stack(name: &str) -> Stack {
    let opts = OriginOpts {
        config_toml: Some(format!("[admin]\ntoken = \"{ADMIN}\"\n")),
        ..OriginOpts::default()
    };
    Stack::start_with(name, UpstreamAuth::Anonymous, opts)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_a_multi_arch_image_then_pull_it_warm_on_every_platform() {
    let s = stack("cli-warm").await;
    let index = ImageSpec::oci(&[300_000, 200_000])
        .push_index(&s.upstream, "team/multi", "v1")
        .await
        .unwrap();

    // Every platform by default; the job is followed to the end.
    let out = wharf(&s, &["warm", "up/team/multi:v1", "--output", "json"]).await;
    let jobs = json(&out);
    let job = &jobs[0];
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["images"][0]["digest"], index.digest);
    assert_eq!(
        job["images"][0]["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );
    let blobs: usize = index.children.iter().map(|c| c.blobs().len()).sum();
    assert_eq!(job["blobs"].as_array().unwrap().len(), blobs);
    assert_eq!(job["bytes_done"], job["bytes_total"]);
    assert!(
        job["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["state"] == "done")
    );

    // Both platforms pull warm: no upstream blob request.
    s.upstream.reset_counts();
    let client = http_client();
    for child in &index.children {
        for (digest, size) in child.blobs() {
            fetch_blob(&client, &s.base(), "up/team/multi", &digest, Some(size))
                .await
                .unwrap();
        }
    }
    assert_eq!(
        s.upstream.counts().get("GET", Kind::Blob),
        0,
        "{:?}",
        s.upstream.counts()
    );

    // Warming again is resumable: everything is already stored, nothing is
    // fetched; the text output says so.
    s.upstream.reset_counts();
    let out = wharf(&s, &["warm", "up/team/multi:v1"]).await;
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains(&format!("{blobs} already stored")), "{text}");
    assert_eq!(s.upstream.counts().get("GET", Kind::Blob), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_chosen_platforms_detached_jobs_status_purge_and_gc() {
    let s = stack("cli-ops").await;
    let index = ImageSpec::docker(&[200_000])
        .push_index(&s.upstream, "team/arm", "v1")
        .await
        .unwrap();
    let single = ImageSpec::docker(&[100_000])
        .push(&s.upstream, "team/single", "v1")
        .await
        .unwrap();

    // Only arm64, detached: the id comes back at once; `jobs ID --follow`
    // follows it to the end.
    let out = wharf(
        &s,
        &[
            "warm",
            "up/team/arm:v1",
            "--platform",
            "linux/arm64",
            "--detach",
            "--output",
            "json",
        ],
    )
    .await;
    let started = json(&out);
    let id = started[0]["id"].as_str().unwrap().to_owned();
    let out = wharf(&s, &["jobs", &id, "--follow", "--output", "json"]).await;
    let job = json(&out);
    assert_eq!(job["state"], "done");
    assert_eq!(
        job["images"][0]["platforms"],
        serde_json::json!(["linux/arm64"])
    );
    let arm = index.child("arm64");
    let amd = index.child("amd64");
    let warmed: Vec<&str> = job["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap())
        .collect();
    for (d, _) in arm.blobs() {
        assert!(warmed.contains(&d.as_str()), "{d} of arm64 not warmed");
    }
    for (d, _) in amd.blobs() {
        assert!(!warmed.contains(&d.as_str()), "{d} of amd64 warmed");
    }
    let listed = json(&wharf(&s, &["jobs", "--output", "json"]).await);
    assert!(listed.as_array().unwrap().iter().any(|j| j["id"] == id));

    // Status: health and figures, as JSON and as text.
    s.pull("team/single", "v1").await.unwrap();
    s.pull("team/single", "v1").await.unwrap();
    let status = json(&wharf(&s, &["status", "--output", "json"]).await);
    assert_eq!(status[0]["health"]["status"], "ok", "{status}");
    let figures = &status[0]["figures"];
    assert!(figures["hits"].as_f64().unwrap() >= 3.0, "{figures}");
    assert!(figures["hit_ratio"].as_f64().unwrap() > 0.0);
    assert!(figures["bytes_from_cache"].as_f64().unwrap() >= 100_000.0);
    assert!(figures["upstream_requests"].as_f64().unwrap() >= 1.0);
    let text = stdout(&wharf(&s, &["status"]).await);
    for want in [
        "store        ok",
        "upstream     up: ok, circuit closed",
        "hit ratio",
        "saved",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }

    // Purge: the tag and its image go; the next pull asks the upstream.
    let report = json(&wharf(&s, &["purge", "up/team/single:v1", "--output", "json"]).await);
    assert_eq!(report["digest"], single.manifest_digest);
    assert_eq!(report["tags"], serde_json::json!(["v1"]));
    s.upstream.reset_counts();
    s.pull("team/single", "v1").await.unwrap();
    assert!(s.upstream.counts().get("GET", Kind::Manifest) >= 1);

    // gc --dry-run changes nothing and says so.
    let gc = json(&wharf(&s, &["gc", "--dry-run", "--output", "json"]).await);
    assert_eq!(gc["dry_run"], true);
    let text = stdout(&wharf(&s, &["gc", "--dry-run"]).await);
    assert!(text.contains("would evict"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_what_to_do_with_distinct_exit_codes() {
    let s = stack("cli-errors").await;
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let out = wharf_with(&s, "wrong-token-0123456789", &["status"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("WHARF_ADMIN_TOKEN"),
        "{}",
        stderr(&out)
    );

    let out = wharf(&s, &["warm", "Not A Name"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("name:tag"), "{}", stderr(&out));

    let out = wharf(&s, &["jobs", "no-such-job"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no job no-such-job"),
        "{}",
        stderr(&out)
    );

    // An image the upstream does not have: the job fails and says why.
    let out = wharf(&s, &["warm", "up/team/missing:v1"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("failed"), "{}", stdout(&out));

    let out = tokio::process::Command::new(wharf_bin().unwrap())
        .args([
            "--origin",
            &format!("http://127.0.0.1:{}", wharf_tests::free_port()),
            "status",
        ])
        .env("WHARF_ADMIN_TOKEN", ADMIN)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("unreachable"));
}
