//! A private upstream with Docker token auth: a rule with credentials (in
//! the config file, inline or from an environment variable) pulls through;
//! a rule without credentials, or with wrong ones, gets a clean OCI
//! `UNAUTHORIZED`/`DENIED` error and the origin stays healthy.

use wharf_tests::clients::{CopyOpts, Skopeo, get_manifest, oci_error_of};
use wharf_tests::{
    ImageSpec, Origin, OriginOpts, PushedImage, TestDir, Upstream, UpstreamAuth, http_client,
};

struct Private {
    image: PushedImage,
    origin: Origin,
    upstream: Upstream,
    dir: TestDir,
}

/// A token-auth upstream (user `alice`) and an origin with four rules to
/// it: `private` (inline password), `envcreds` (`password_env`), `nocreds`
/// and `badcreds`.
async fn private(name: &str) -> Private {
    let dir = TestDir::new(name).unwrap();
    let users = vec![("alice".to_owned(), "s3cret-pw".to_owned())];
    let upstream = Upstream::start(&dir, UpstreamAuth::Token { users })
        .await
        .unwrap();
    let image = ImageSpec::oci(&[5000, 1000])
        .push(&upstream, "corp/app", "v1")
        .await
        .unwrap();
    let url = upstream.url();
    let config = format!(
        r#"
[[rule]]
prefix = "private"
upstream = "{url}"
username = "alice"
password = "s3cret-pw"

[[rule]]
prefix = "envcreds"
upstream = "{url}"
username = "alice"
password_env = "WHARF_TEST_UPSTREAM_PASSWORD"

[[rule]]
prefix = "nocreds"
upstream = "{url}"

[[rule]]
prefix = "badcreds"
upstream = "{url}"
username = "alice"
password = "not-the-password"
"#
    );
    let opts = OriginOpts {
        config_toml: Some(config),
        env: vec![(
            "WHARF_TEST_UPSTREAM_PASSWORD".to_owned(),
            "s3cret-pw".to_owned(),
        )],
        ..OriginOpts::default()
    };
    let origin = Origin::start(&dir, opts).await.unwrap();
    Private {
        image,
        origin,
        upstream,
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_with_credentials_pulls_from_a_token_upstream() {
    let p = private("token-creds").await;
    let base = p.origin.url();
    let pulled = wharf_tests::pull_with_reqwest(&base, "private/corp/app", "v1")
        .await
        .unwrap();
    assert_eq!(pulled.digest, p.image.manifest_digest);
    assert_eq!(pulled.blobs, p.image.blobs());
    assert!(p.upstream.token_requests() >= 1, "{}", p.upstream.counts());

    let pulled = wharf_tests::pull_with_reqwest(&base, "envcreds/corp/app", "v1")
        .await
        .unwrap();
    assert_eq!(pulled.digest, p.image.manifest_digest);

    let skopeo = Skopeo::new(&p.dir).unwrap();
    let reference = format!("{}/private/corp/app:v1", p.origin.host());
    assert_eq!(
        skopeo.copy(&reference, &CopyOpts::default()).await.unwrap(),
        p.image.manifest_digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_without_or_with_wrong_credentials_gets_an_oci_auth_error() {
    let p = private("token-nocreds").await;
    let client = http_client();
    let base = p.origin.url();
    for prefix in ["nocreds", "badcreds"] {
        let err = get_manifest(&client, &base, &format!("{prefix}/corp/app"), "v1")
            .await
            .unwrap_err();
        let e = oci_error_of(&err).unwrap_or_else(|| panic!("{prefix}: not an OCI error: {err:#}"));
        assert!(
            matches!(e.code.as_str(), "UNAUTHORIZED" | "DENIED"),
            "{prefix}: expected UNAUTHORIZED or DENIED, got {e}"
        );
        assert!(
            matches!(e.status, 401 | 403),
            "{prefix}: expected 401/403, got {e}"
        );
    }
    // A client sees a refusal, not a crash; the origin keeps running.
    let skopeo = Skopeo::new(&p.dir).unwrap();
    let reference = format!("{}/nocreds/corp/app:v1", p.origin.host());
    skopeo
        .copy(&reference, &CopyOpts::default())
        .await
        .unwrap_err();
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // And the credentialled rule still works beside them.
    let pulled = wharf_tests::pull_with_reqwest(&base, "private/corp/app", "v1")
        .await
        .unwrap();
    assert_eq!(pulled.digest, p.image.manifest_digest);
}
