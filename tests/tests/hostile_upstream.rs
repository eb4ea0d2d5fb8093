//! Upstreams are not trusted either (issue 12): what a hostile upstream
//! sends — redirects to loopback, gigabyte error bodies, oversized
//! manifests, absurd token lifetimes, token realms on plain http — is
//! checked and bounded by the real origin binary.
//!
//! Traffic stays on 127.0.0.0/8 and in a network namespace each test
//! creates itself ([`Netns`]).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use wharf_tests::hostile::{Behaviour, Hostile, Netns, peak_rss, small_manifest};
use wharf_tests::{Origin, OriginOpts, TestDir, http_client, sha256_digest};

const PREFIX: &str = "hostile";
/// An origin that buffered one of the hostile bodies would pass this.
const RSS_LIMIT: u64 = 256 << 20;

fn opts(upstream: &str) -> OriginOpts {
    OriginOpts {
        rules: vec![(PREFIX.to_owned(), upstream.to_owned())],
        ..OriginOpts::default()
    }
}

/// GETs `path` from the origin; returns status and body text.
async fn get(origin: &Origin, path: &str) -> (u16, String) {
    let r = http_client()
        .get(format!("{}{path}", origin.url()))
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// The origin logged `needle` (the detail; public error bodies may be
/// redacted, the log is where operators look).
fn assert_logged(origin: &Origin, needle: &str) {
    let log = origin.log();
    assert!(
        log.contains(needle),
        "the origin's log does not mention {needle:?}:\n{}",
        origin.log_tail(40)
    );
}

fn oci_error_code(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("not an OCI error body ({e}): {body}"));
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_from_a_non_loopback_upstream_to_loopback_are_refused() {
    let dir = TestDir::new("hostile-redirects").unwrap();
    let netns = Netns::create().unwrap();
    let victim = Hostile::on_loopback(Ipv4Addr::LOCALHOST, Behaviour::Victim).unwrap();
    let blob = bytes::Bytes::from_static(b"bytes served inside the namespace");
    let upstream = Hostile::start(
        netns.bind().unwrap(),
        Behaviour::RedirectBlobs {
            port: victim.addr().port(),
            blob: blob.clone(),
        },
    )
    .unwrap();
    let mut o = opts(&upstream.url());
    // The harness points non-loopback traffic at a dead proxy; the
    // namespace is reached directly.
    let no_proxy = format!("127.0.0.1,127.0.0.2,localhost,::1,{}", netns.inner_ip());
    o.env = vec![
        ("NO_PROXY".into(), no_proxy.clone()),
        ("no_proxy".into(), no_proxy),
    ];
    let origin = Origin::start(&dir, o).await.unwrap();

    // Control: a redirect within the upstream's own network is followed.
    let digest = sha256_digest(&blob);
    let (status, body) = get(&origin, &format!("/v2/{PREFIX}/self/app/blobs/{digest}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_bytes(), &blob[..]);

    // Every spelling of loopback is refused before connecting (names that
    // resolve to loopback are refused by the origin's resolver: unit-tested
    // in origin/src/upstream/client.rs).
    let hosts = ["127.0.0.1", "2130706433", "127.1", "localhost"];
    for (i, host) in hosts.iter().enumerate() {
        let digest = sha256_digest(format!("blob {i}").as_bytes());
        let (status, body) = get(&origin, &format!("/v2/{PREFIX}/{host}/app/blobs/{digest}")).await;
        assert_eq!(status, 503, "{host}: {body}");
        assert_eq!(oci_error_code(&body), "UNAVAILABLE", "{host}: {body}");
    }
    // Logged with the rule and the refused target.
    assert_logged(
        &origin,
        &format!(
            "http://127.0.0.1:{} is a loopback address",
            victim.addr().port()
        ),
    );
    assert_logged(
        &origin,
        &format!(
            "http://localhost:{} is a loopback address",
            victim.addr().port()
        ),
    );
    assert_logged(
        &origin,
        &format!("upstream {PREFIX} failed: refused redirect"),
    );
    assert!(
        victim.seen().is_empty(),
        "the loopback service was reached: {:?}",
        victim.seen()
    );
    let refused = origin
        .metric("wharf_upstream_refused_total", &[("registry", PREFIX)])
        .await
        .unwrap();
    assert!(refused >= hosts.len() as f64, "refusals counted: {refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_error_body_is_not_buffered_and_ends_in_bounded_time() {
    let dir = TestDir::new("hostile-error-body").unwrap();
    let upstream = Hostile::on_loopback(
        Ipv4Addr::LOCALHOST,
        Behaviour::HugeError {
            status: 500,
            len: 1 << 30,
        },
    )
    .unwrap();
    let origin = Origin::start(&dir, opts(&upstream.url())).await.unwrap();
    let digest = sha256_digest(b"x");
    for path in [
        format!("/v2/{PREFIX}/app/manifests/v1"),
        format!("/v2/{PREFIX}/app/blobs/{digest}"),
    ] {
        let started = Instant::now();
        let (status, body) = tokio::time::timeout(Duration::from_secs(60), get(&origin, &path))
            .await
            .expect("the request ended in bounded time");
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(oci_error_code(&body), "UNAVAILABLE", "{path}: {body}");
        assert!(
            body.len() < 64 << 10,
            "{path}: error body echoed: {} bytes",
            body.len()
        );
        eprintln!("{path}: {status} in {:?}", started.elapsed());
    }
    let rss = peak_rss(origin.pid().unwrap()).unwrap();
    eprintln!("origin peak RSS: {} MiB", rss >> 20);
    assert!(rss < RSS_LIMIT, "origin peak RSS {} MiB", rss >> 20);
    let (status, _) = get(&origin, "/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_manifest_is_refused_without_buffering() {
    let dir = TestDir::new("hostile-manifest").unwrap();
    let upstream = Hostile::on_loopback(
        Ipv4Addr::LOCALHOST,
        Behaviour::HugeManifest { len: 64 << 20 },
    )
    .unwrap();
    let origin = Origin::start(&dir, opts(&upstream.url())).await.unwrap();
    // `cl/` announces its length, `chunked/` does not.
    for repo in ["cl/app", "chunked/app"] {
        let (status, body) = tokio::time::timeout(
            Duration::from_secs(60),
            get(&origin, &format!("/v2/{PREFIX}/{repo}/manifests/v1")),
        )
        .await
        .expect("the request ended in bounded time");
        assert_eq!(status, 503, "{repo}: {body}");
        assert_eq!(oci_error_code(&body), "UNAVAILABLE", "{repo}: {body}");
    }
    assert_logged(&origin, "larger than the 4194304-byte limit");
    let rss = peak_rss(origin.pid().unwrap()).unwrap();
    eprintln!("origin peak RSS: {} MiB", rss >> 20);
    assert!(rss < RSS_LIMIT, "origin peak RSS {} MiB", rss >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_in_2_pow_64_minus_1_seconds_panics_nothing() {
    let dir = TestDir::new("hostile-expires-in").unwrap();
    let tokens = Hostile::on_loopback(
        Ipv4Addr::LOCALHOST,
        Behaviour::TokenServer {
            token: "forever".into(),
            expires_in: "18446744073709551615".into(),
        },
    )
    .unwrap();
    let upstream = Hostile::on_loopback(
        Ipv4Addr::LOCALHOST,
        Behaviour::Bearer {
            realm: format!("{}/token", tokens.url()),
            token: "forever".into(),
        },
    )
    .unwrap();
    let mut o = opts(&upstream.url());
    // Every request revalidates, so the token is used again.
    o.tag_ttl = Some(Duration::from_millis(1));
    let origin = Origin::start(&dir, o).await.unwrap();
    let (manifest, digest) = small_manifest();
    for attempt in 0..3 {
        let (status, body) = get(&origin, &format!("/v2/{PREFIX}/app/manifests/v1")).await;
        assert_eq!(status, 200, "attempt {attempt}: {body}");
        assert_eq!(body.as_bytes(), &manifest[..]);
    }
    let (status, body) = get(&origin, &format!("/v2/{PREFIX}/app/manifests/{digest}")).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = get(&origin, "/healthz").await;
    assert_eq!(status, 200);
    assert!(
        !origin.log().contains("panicked"),
        "the origin panicked:\n{}",
        origin.log_tail(40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_not_sent_to_a_plain_http_realm_on_another_host() {
    let dir = TestDir::new("hostile-realm").unwrap();
    // Another host (127.0.0.2), plain http.
    let realm = Hostile::on_loopback(
        Ipv4Addr::new(127, 0, 0, 2),
        Behaviour::TokenServer {
            token: "stolen".into(),
            expires_in: "300".into(),
        },
    )
    .unwrap();
    let upstream = Hostile::on_loopback(
        Ipv4Addr::LOCALHOST,
        Behaviour::Bearer {
            realm: format!("{}/token", realm.url()),
            token: "stolen".into(),
        },
    )
    .unwrap();
    let o = OriginOpts {
        config_toml: Some(format!(
            "[[rule]]\nprefix = \"{PREFIX}\"\nupstream = \"{}\"\nusername = \"alice\"\npassword = \"s3cret-pw\"\n",
            upstream.url()
        )),
        ..OriginOpts::default()
    };
    let origin = Origin::start(&dir, o).await.unwrap();
    let (status, body) = get(&origin, &format!("/v2/{PREFIX}/app/manifests/v1")).await;
    assert!(status >= 400, "{body}");
    oci_error_code(&body);
    assert_logged(&origin, "the rule's credentials are not sent there");
    let seen = realm.seen();
    assert!(
        seen.iter().all(|s| s.authorization.is_none()),
        "credentials went to the plain-http realm: {seen:?}"
    );
    // The upstream itself never saw the password either (it asked for a token).
    assert!(
        upstream.seen().iter().all(|s| s
            .authorization
            .as_deref()
            .is_none_or(|a| !a.starts_with("Basic"))),
        "{:?}",
        upstream.seen()
    );
}
