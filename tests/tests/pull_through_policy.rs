//! Issue 16, what may be pulled through: per rule, allow and deny lists of
//! repository patterns and tag patterns refuse a name outside them with
//! `DENIED` naming the rule — before any upstream request — and a prefix
//! maps under an upstream repository prefix (`hub/app` → `team/app`).

use wharf_tests::clients::{fetch_blob, get_manifest, oci_error_of};
use wharf_tests::{ImageSpec, Kind, OriginOpts, Stack, UpstreamAuth, http_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_lists_refuse_without_asking_the_upstream_and_prefixes_map() {
    let opts = OriginOpts {
        config_toml: Some(
            "[[rule]]\nprefix = \"up\"\nupstream = \"{upstream}\"\nallow = [\"team/*\"]\ndeny = [\"team/secret\"]\ndeny_tags = [\"latest\", \"*-rc*\"]\n\n\
             [[rule]]\nprefix = \"hub\"\nupstream = \"{upstream}\"\nupstream_prefix = \"team\"\n"
                .into(),
        ),
        ..OriginOpts::default()
    };
    let s = Stack::start_with("pull-policy", UpstreamAuth::Anonymous, opts)
        .await
        .unwrap();
    let app = ImageSpec::docker(&[10_000])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    for (repo, tag) in [
        ("team/app", "latest"),
        ("team/app", "2.0-rc1"),
        ("team/secret", "v1"),
        ("other/app", "v1"),
    ] {
        ImageSpec::docker(&[1000])
            .push(&s.upstream, repo, tag)
            .await
            .unwrap();
    }
    let client = http_client();
    let base = s.base();

    // Allowed.
    let (_, _, h) = get_manifest(&client, &base, "up/team/app", "v1")
        .await
        .unwrap();
    assert_eq!(h["docker-content-digest"], app.manifest_digest.as_str());

    // Refused, saying which rule and pattern, with no upstream request.
    s.upstream.reset_counts();
    for (repo, tag, says) in [
        ("up/team/secret", "v1", "deny pattern `team/secret`"),
        (
            "up/other/app",
            "v1",
            "none of the allowed patterns (team/*)",
        ),
        ("up/team/app", "latest", "deny pattern `latest`"),
        ("up/team/app", "2.0-rc1", "deny pattern `*-rc*`"),
    ] {
        let err = get_manifest(&client, &base, repo, tag).await.unwrap_err();
        let oci = oci_error_of(&err).unwrap_or_else(|| panic!("{err:#}"));
        assert_eq!(
            (oci.status, oci.code.as_str()),
            (403, "DENIED"),
            "{repo}:{tag}"
        );
        assert!(
            oci.message.contains("rule `up`") && oci.message.contains(says),
            "{repo}:{tag}: {}",
            oci.message
        );
    }
    // A denied repository's blobs too.
    let err = fetch_blob(
        &client,
        &base,
        "up/team/secret",
        &app.layer_digests[0],
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(oci_error_of(&err).map(|e| e.status), Some(403));
    let counts = s.upstream.counts();
    assert_eq!(
        counts.total(),
        0,
        "no upstream request for a refused name: {counts}"
    );

    // `hub/…` maps under `team/…` upstream; a pull through it is complete.
    let pulled = wharf_tests::pull_with_reqwest(&base, "hub/app", "v1")
        .await
        .unwrap();
    assert_eq!(pulled.digest, app.manifest_digest);
    assert_eq!(pulled.blobs, app.blobs());
    assert!(s.upstream.counts().get("GET", Kind::Manifest) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_refuses_a_denied_name_itself_without_asking_the_origin() {
    use std::time::Duration;
    use wharf_tests::edge::{DENIED_REPOSITORY, EdgeStack};

    let es = EdgeStack::start("pull-policy-edge", Duration::from_secs(300))
        .await
        .unwrap();
    ImageSpec::docker(&[1000])
        .push(&es.stack.upstream, DENIED_REPOSITORY, "v1")
        .await
        .unwrap();
    let repo = format!("docker.io/{DENIED_REPOSITORY}");
    let token = es.token(&repo).await.unwrap();
    es.origin_proxy.reset_counts();
    es.stack.upstream.reset_counts();
    for path in [
        format!("/v2/{repo}/manifests/v1"),
        format!("/v2/{repo}/blobs/sha256:{}", "a".repeat(64)),
    ] {
        let r = http_client()
            .get(format!("{}{path}", es.edge.url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "DENIED");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("rule `docker.io`") && message.contains("deny pattern"),
            "{message}"
        );
    }
    // (The edge's health probes of `/readyz` aside.)
    let asked = es
        .origin_proxy
        .counts()
        .filter(|k| k.path.starts_with("/v2/"));
    assert_eq!(
        asked,
        0,
        "the origin was not asked: {}",
        es.origin_proxy.counts()
    );
    assert_eq!(es.stack.upstream.counts().total(), 0);
}
