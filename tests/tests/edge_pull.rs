//! Real clients (skopeo, dockerd, containerd) pull through the edge Worker
//! under `wrangler dev --local`, in front of the real origin and a real
//! upstream (issue 4):
//!
//! * every blob request the Worker sees is answered with a `307` (no blob
//!   byte flows through it): to the origin with a ticket while the blob is
//!   cold, to a presigned URL on the store once it is hydrated, so a warm pull
//!   sends nothing to the origin's blob path;
//! * tokens from `/token` work; missing, forged, expired and other-repository
//!   tokens, and a private repository without credentials, get `401
//!   UNAUTHORIZED` with a challenge;
//! * a stale tag is served while the origin is down.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use wharf_tests::clients::{Containerd, CopyOpts, Dockerd, Skopeo};
use wharf_tests::edge::{EdgeStack, GLOBAL_HOST, PRIVATE_PREFIX, TOKEN_KEY, USER};
use wharf_tests::{ImageSpec, Kind, RULE_PREFIX};

use wharf_tests::no_redirect_client as client;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token from the edge's `/token` for `repository:<repo>:pull`.
async fn token(es: &EdgeStack, repo: &str, creds: Option<(&str, &str)>) -> String {
    let mut req = client().get(format!("{}/token", es.edge.url())).query(&[
        ("service", GLOBAL_HOST),
        ("scope", &format!("repository:{repo}:pull")),
    ]);
    if let Some((u, p)) = creds {
        req = req.basic_auth(u, Some(p));
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

async fn get(es: &EdgeStack, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = client().get(format!("{}{path}", es.edge.url())).header(
        "Accept",
        "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
    );
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// Status, OCI code, message and challenge of a refused request.
async fn refusal(r: reqwest::Response) -> (u16, String, String, String) {
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: serde_json::Value = r.json().await.unwrap();
    let e = &body["errors"][0];
    (
        status,
        e["code"].as_str().unwrap_or_default().to_owned(),
        e["message"].as_str().unwrap_or_default().to_owned(),
        challenge,
    )
}

/// Every blob request the Worker answered was a redirect.
fn assert_blobs_only_redirected(es: &EdgeStack) -> usize {
    let blobs: Vec<_> = es
        .edge
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/blobs/"))
        .collect();
    for r in &blobs {
        assert_eq!(
            r.status, 307,
            "the Worker answered a blob request without a redirect: {r:?}"
        );
    }
    blobs.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_through_the_edge_and_blob_bytes_never_pass_through_it() {
    let es = EdgeStack::start("edge-skopeo", Duration::from_secs(300))
        .await
        .unwrap();
    let up = &es.stack.upstream;
    let image = ImageSpec::docker(&[30_000, 50_000])
        .push(up, "team/app", "v1")
        .await
        .unwrap();
    let index = ImageSpec::oci(&[20_000])
        .push_index(up, "team/multi", "v1")
        .await
        .unwrap();
    let skopeo = Skopeo::new(&es.stack.dir).unwrap();

    // Cold: manifests from the origin, blobs redirected to the origin with a ticket.
    let got = skopeo
        .copy(&es.edge_ref("team/app", "v1"), &CopyOpts::default())
        .await
        .unwrap();
    assert_eq!(got, image.manifest_digest);
    let cold = es.origin_proxy.counts();
    assert!(
        cold.get("GET", Kind::Blob) >= 1,
        "cold blobs come from the origin:\n{cold}"
    );
    assert!(
        assert_blobs_only_redirected(&es) >= 3,
        "{:?}",
        es.edge.requests()
    );

    // Warm: once hydrated, the same pull makes no request to the origin's
    // blob path (presigned store URLs) nor its manifest path (fresh tag).
    es.hydrations_settled().await.unwrap();
    es.origin_proxy.reset_counts();
    let got = skopeo
        .copy(&es.edge_ref("team/app", "v1"), &CopyOpts::default())
        .await
        .unwrap();
    assert_eq!(got, image.manifest_digest);
    let warm = es.origin_proxy.counts();
    assert_eq!(
        warm.get("GET", Kind::Blob),
        0,
        "a warm pull reached the origin's blob path:\n{warm}"
    );
    assert_eq!(
        warm.get("GET", Kind::Manifest),
        0,
        "a fresh tag reached the origin:\n{warm}"
    );
    assert_blobs_only_redirected(&es);

    // Where the redirects point.
    let t = token(&es, &format!("{RULE_PREFIX}/team/app"), None).await;
    let layer = &image.layer_digests[0];
    let r = get(
        &es,
        &format!("/v2/{RULE_PREFIX}/team/app/blobs/{layer}"),
        Some(&t),
    )
    .await;
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = r.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with(&format!("{}/wharf/blobs/sha256/", es.s3_endpoint))
            && location.contains("X-Amz-Signature="),
        "a hydrated blob redirects to a presigned store URL: {location}"
    );
    let cold_layer = &index.children[0].layer_digests[0];
    let t = token(&es, &format!("{RULE_PREFIX}/team/multi"), None).await;
    let r = get(
        &es,
        &format!("/v2/{RULE_PREFIX}/team/multi/blobs/{cold_layer}"),
        Some(&t),
    )
    .await;
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = r.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with(&format!(
            "{}/v2/{RULE_PREFIX}/team/multi/blobs/{cold_layer}?wharf-ticket=",
            es.origin_proxy.url()
        )),
        "a cold blob redirects to the origin with a ticket: {location}"
    );

    // A multi-platform index, every platform.
    let got = skopeo
        .copy(
            &es.edge_ref("team/multi", "v1"),
            &CopyOpts {
                all: true,
                ..CopyOpts::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(got, index.digest);
    assert_blobs_only_redirected(&es);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_pulls_through_the_edge() {
    let es = EdgeStack::start("edge-docker", Duration::from_secs(300))
        .await
        .unwrap();
    let image = ImageSpec::docker(&[25_000, 4_000])
        .push(&es.stack.upstream, "team/docker", "v1")
        .await
        .unwrap();
    let docker = Dockerd::start(&es.stack.dir, None).await.unwrap();
    let got = docker
        .pull(&es.edge_ref("team/docker", "v1"))
        .await
        .unwrap();
    assert_eq!(got, image.manifest_digest);
    assert!(
        assert_blobs_only_redirected(&es) >= 2,
        "{:?}",
        es.edge.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_an_index_through_the_edge() {
    let es = EdgeStack::start("edge-ctr", Duration::from_secs(300))
        .await
        .unwrap();
    let index = ImageSpec::oci(&[12_000])
        .push_index(&es.stack.upstream, "team/ctr", "v1")
        .await
        .unwrap();
    let ctr = Containerd::start(&es.stack.dir).await.unwrap();
    let got = ctr.pull(&es.edge_ref("team/ctr", "v1")).await.unwrap();
    assert_eq!(got, index.digest);
    assert!(
        assert_blobs_only_redirected(&es) >= 2,
        "{:?}",
        es.edge.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_and_private_repositories_get_precise_oci_errors() {
    let es = EdgeStack::start("edge-tokens", Duration::from_secs(300))
        .await
        .unwrap();
    let up = &es.stack.upstream;
    let image = ImageSpec::docker(&[1000])
        .push(up, "team/app", "v1")
        .await
        .unwrap();
    ImageSpec::docker(&[1000])
        .push(up, "team/other", "v1")
        .await
        .unwrap();
    let repo = format!("{RULE_PREFIX}/team/app");
    let path = format!("/v2/{repo}/manifests/v1");

    // /v2/ challenges with the host the client used and the global service.
    let (status, code, _, challenge) = refusal(get(&es, "/v2/", None).await).await;
    assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"));
    assert_eq!(
        challenge,
        format!(
            r#"Bearer realm="{}/token",service="{GLOBAL_HOST}""#,
            es.edge.url()
        )
    );

    // A good token works, on /v2/ and on the repository.
    let good = token(&es, &repo, None).await;
    assert_eq!(get(&es, "/v2/", Some(&good)).await.status(), StatusCode::OK);
    let r = get(&es, &path, Some(&good)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        image.manifest_digest
    );

    let sign = |key: &[u8], name: &str, exp: u64| {
        let claims = serde_json::json!({
            "iss": "test", "sub": "", "aud": GLOBAL_HOST,
            "exp": exp, "nbf": now() - 600, "iat": now() - 600,
            "access": [{"type": "repository", "name": name, "actions": ["pull"]}],
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(key),
        )
        .unwrap()
    };
    let cases = [
        ("no token", None, "authentication required", ""),
        (
            "forged",
            Some(sign(
                b"not-the-key-not-the-key-not-the-key!",
                &repo,
                now() + 300,
            )),
            "signature is invalid",
            "invalid_token",
        ),
        (
            "expired",
            Some(sign(TOKEN_KEY.as_bytes(), &repo, now() - 300)),
            "expired",
            "invalid_token",
        ),
        (
            "other repository",
            Some(token(&es, &format!("{RULE_PREFIX}/team/other"), None).await),
            "does not grant",
            "insufficient_scope",
        ),
        (
            "garbage",
            Some("not.a.jwt".to_owned()),
            "malformed",
            "invalid_token",
        ),
    ];
    for (what, t, message, error) in cases {
        let (status, code, msg, challenge) = refusal(get(&es, &path, t.as_deref()).await).await;
        assert_eq!(
            (status, code.as_str()),
            (401, "UNAUTHORIZED"),
            "{what}: {msg}"
        );
        assert!(
            msg.contains(message),
            "{what}: {msg:?} should mention {message:?}"
        );
        assert!(
            challenge.contains(&format!(r#"scope="repository:{repo}:pull""#)),
            "{what}: {challenge}"
        );
        assert!(challenge.contains(error), "{what}: {challenge}");
    }
    // The same refusals hold for blobs: no redirect without a valid token.
    let layer = &image.layer_digests[0];
    let r = get(
        &es,
        &format!("/v2/{repo}/blobs/{layer}"),
        Some(&sign(
            b"not-the-key-not-the-key-not-the-key!",
            &repo,
            now() + 300,
        )),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A private rule: anonymous tokens leave the scope out; the user's include it.
    let private = format!("{PRIVATE_PREFIX}/team/app");
    let private_path = format!("/v2/{private}/manifests/v1");
    let anonymous = token(&es, &private, None).await;
    let (status, code, msg, challenge) =
        refusal(get(&es, &private_path, Some(&anonymous)).await).await;
    assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"), "{msg}");
    assert!(challenge.contains("insufficient_scope"), "{challenge}");
    let r = client()
        .get(format!("{}/token", es.edge.url()))
        .query(&[("scope", format!("repository:{private}:pull"))])
        .basic_auth(USER.0, Some("wrong"))
        .send()
        .await
        .unwrap();
    let (status, code, msg, _) = refusal(r).await;
    assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"), "{msg}");
    let user = token(&es, &private, Some(USER)).await;
    let r = get(&es, &private_path, Some(&user)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        image.manifest_digest
    );

    // Not a registry route: an OCI 404, not a crash.
    let (status, code, _, _) = refusal(get(&es, "/nope", None).await).await;
    assert_eq!((status, code.as_str()), (404, "NAME_UNKNOWN"));
}

/// A request to the edge as if sent to `host` (wrangler dev keeps the Host
/// header as the request URL's host, as Cloudflare does).
async fn get_as(es: &EdgeStack, host: &str, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = client()
        .get(format!("{}{path}", es.edge.url()))
        .header("Host", host)
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        );
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_work_on_every_hostname_and_regional_hostnames_are_pinned() {
    let es = EdgeStack::start("edge-regions", Duration::from_secs(300))
        .await
        .unwrap();
    let image = ImageSpec::docker(&[8000])
        .push(&es.stack.upstream, "team/app", "v1")
        .await
        .unwrap();
    let repo = format!("{RULE_PREFIX}/team/app");
    let eu = format!("eu.{GLOBAL_HOST}");
    let us = format!("us.{GLOBAL_HOST}");

    // The realm follows the hostname the client used; the service never changes.
    let r = get_as(&es, &eu, "/v2/", None).await;
    let challenge = r.headers()["www-authenticate"].to_str().unwrap();
    assert_eq!(
        challenge,
        format!(r#"Bearer realm="http://{eu}/token",service="{GLOBAL_HOST}""#)
    );

    // A token from the eu hostname works on us and on the global hostname.
    let r = client()
        .get(format!("{}/token", es.edge.url()))
        .header("Host", &eu)
        .query(&[("scope", format!("repository:{repo}:pull"))])
        .send()
        .await
        .unwrap();
    let t = r.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    for host in [eu.as_str(), us.as_str(), GLOBAL_HOST] {
        assert_eq!(
            get_as(&es, host, "/v2/", Some(&t)).await.status(),
            StatusCode::OK,
            "{host}"
        );
        let r = get_as(&es, host, &format!("/v2/{repo}/manifests/v1"), Some(&t)).await;
        assert_eq!(r.status(), StatusCode::OK, "{host}");
        assert_eq!(
            r.headers()["docker-content-digest"].to_str().unwrap(),
            image.manifest_digest
        );
    }

    // Regional hostnames are pinned; the global one routes by continent.
    let region = |r: &reqwest::Response| r.headers()["x-wharf-region"].to_str().unwrap().to_owned();
    let path = format!("/v2/{repo}/manifests/v1");
    assert_eq!(region(&get_as(&es, &eu, &path, Some(&t)).await), "eu");
    assert_eq!(region(&get_as(&es, &us, &path, Some(&t)).await), "us");
    assert_eq!(
        region(&get_as(&es, GLOBAL_HOST, &path, Some(&t)).await),
        "eu",
        "wrangler dev reports continent NA, which the stack's eu lists"
    );
    assert_eq!(
        region(&get_as(&es, "127.0.0.1", &path, Some(&t)).await),
        "eu",
        "unknown hosts are served like the global hostname"
    );

    // Hydrate the layer, then: eu (has a store) presigns, us (none) sends the
    // blob to its origin with a ticket.
    let layer = &image.layer_digests[0];
    let blob = format!("/v2/{repo}/blobs/{layer}");
    let r = get_as(&es, &us, &blob, Some(&t)).await;
    let ticketed = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(ticketed.contains("?wharf-ticket="), "{ticketed}");
    let body = client()
        .get(&ticketed)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(wharf_tests::sha256_digest(&body), *layer);
    es.hydrations_settled().await.unwrap();
    let r = get_as(&es, &eu, &blob, Some(&t)).await;
    let location = r.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with(&es.s3_endpoint),
        "eu presigns: {location}"
    );
    let r = get_as(&es, &us, &blob, Some(&t)).await;
    let location = r.headers()["location"].to_str().unwrap();
    assert!(
        location.contains("?wharf-ticket="),
        "us never fails over to eu's store: {location}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_tag_is_served_while_the_origin_is_down() {
    let es = EdgeStack::start("edge-stale", Duration::from_secs(1))
        .await
        .unwrap();
    let up = &es.stack.upstream;
    let image = ImageSpec::docker(&[1000])
        .push(up, "team/app", "v1")
        .await
        .unwrap();
    ImageSpec::docker(&[1000])
        .push(up, "team/cold", "v1")
        .await
        .unwrap();
    let repo = format!("{RULE_PREFIX}/team/app");
    let t = token(&es, &repo, None).await;
    let r = get(&es, &format!("/v2/{repo}/manifests/v1"), Some(&t)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-wharf-cache"], "miss");

    es.origin_proxy.stop().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = get(&es, &format!("/v2/{repo}/manifests/v1"), Some(&t)).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "stale tags are served while the origin is down"
    );
    assert_eq!(r.headers()["x-wharf-cache"], "stale");
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        image.manifest_digest
    );
    let body = r.bytes().await.unwrap();
    assert_eq!(body, image.manifest, "byte-exact");

    // A tag never seen cannot be served: a clear OCI error, not a hang.
    let cold = format!("{RULE_PREFIX}/team/cold");
    let t = token(&es, &cold, None).await;
    let (status, code, msg, _) =
        refusal(get(&es, &format!("/v2/{cold}/manifests/v1"), Some(&t)).await).await;
    assert_eq!((status, code.as_str()), (503, "UNAVAILABLE"), "{msg}");
    assert!(msg.contains("unreachable"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_is_served_stale_once_then_revalidated_with_a_head() {
    let es = EdgeStack::start("edge-revalidate", Duration::from_secs(1))
        .await
        .unwrap();
    let up = &es.stack.upstream;
    let old = ImageSpec::docker(&[1000])
        .push(up, "team/app", "v1")
        .await
        .unwrap();
    let repo = format!("{RULE_PREFIX}/team/app");
    let path = format!("/v2/{repo}/manifests/v1");
    let t = token(&es, &repo, None).await;
    let digest = |r: &reqwest::Response| {
        r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        digest(&get(&es, &path, Some(&t)).await),
        old.manifest_digest
    );

    let new = ImageSpec::docker(&[1000])
        .push(up, "team/app", "v1")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    es.origin_proxy.reset_counts();
    // Stale: answered at once from the cache while the revalidation runs.
    let r = get(&es, &path, Some(&t)).await;
    assert_eq!(r.headers()["x-wharf-cache"], "stale");
    assert_eq!(digest(&r), old.manifest_digest);
    // The background revalidation asked with a HEAD, saw the tag move, and
    // fetched the new manifest: later requests get it.
    wharf_tests::wait_until(
        "the edge to serve the moved tag",
        Duration::from_secs(20),
        || {
            let (es, path, t, want) = (&es, &path, &t, &new.manifest_digest);
            async move { Ok(digest(&get(es, path, Some(t)).await) == *want) }
        },
    )
    .await
    .unwrap();
    let counts = es.origin_proxy.counts();
    assert!(
        counts.get("HEAD", Kind::Manifest) >= 1,
        "revalidation starts with a HEAD:\n{counts}"
    );
}
