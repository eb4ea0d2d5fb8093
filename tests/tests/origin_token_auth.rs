//! An origin with a token key (behind the edge) refuses anonymous direct
//! requests with a challenge pointing at the edge's token endpoint, accepts
//! the edge's tokens for the right repository, and serves blobs to the
//! short-lived tickets the edge puts in its redirects.

use wharf_core::token::SigningKey;
use wharf_core::{Digest, RepositoryName, ticket};
use wharf_tests::{ImageSpec, OriginOpts, Stack, UpstreamAuth, http_client};

const KEY: &str = "origin-token-auth-test-key-0123456789";
const SERVICE: &str = "wharf.test";

fn key() -> SigningKey {
    wharf_tests::tokens::key(KEY)
}

fn token(repo: &str) -> String {
    wharf_tests::tokens::pull_token(KEY, SERVICE, &[repo], &[], 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_with_a_key_accepts_only_edge_tokens_and_tickets() {
    let opts = OriginOpts {
        config_toml: Some(format!(
            "[auth]\ntoken_key = \"{KEY}\"\nservice = \"{SERVICE}\"\n"
        )),
        ..OriginOpts::default()
    };
    let s = Stack::start_with("origin-token-auth", UpstreamAuth::Anonymous, opts)
        .await
        .unwrap();
    let img = ImageSpec::docker(&[5000])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    let repo = s.repo("team/app");
    let http = http_client();

    // Anonymous: 401 with a challenge naming the edge's realm and the scope.
    let r = http.get(format!("{}/v2/", s.base())).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let manifest_url = format!("{}/v2/{repo}/manifests/v1", s.base());
    let r = http.get(&manifest_url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.contains(r#"realm="https://wharf.test/token""#),
        "{challenge}"
    );
    assert!(
        challenge.contains(&format!(r#"scope="repository:{repo}:pull""#)),
        "{challenge}"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");

    // A token for another repository is refused; one for this one works.
    let r = http
        .get(&manifest_url)
        .bearer_auth(token("up/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(&manifest_url)
        .bearer_auth(token(&repo))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-content-digest"],
        img.manifest_digest.as_str()
    );

    // A blob with the edge's ticket, no token: served and verified.
    let (layer, _) = img.blobs().last().cloned().unwrap();
    let digest = Digest::parse(&layer).unwrap();
    let name = RepositoryName::parse(&repo).unwrap();
    let rule = ticket::TicketRule {
        prefix: "up",
        private: false,
    };
    let t = ticket::issue(
        &key(),
        rule,
        &name,
        &digest,
        wharf_tests::tokens::now() + 60,
    );
    let url = format!(
        "{}/v2/{repo}/blobs/{layer}?{}={t}",
        s.base(),
        ticket::QUERY_PARAM
    );
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    assert_eq!(wharf_tests::sha256_digest(&bytes), layer);

    // A ticket for another blob, or a forged one, is refused.
    let other = format!("sha256:{}", "0".repeat(64));
    let forged = format!(
        "{}/v2/{repo}/blobs/{other}?{}={t}",
        s.base(),
        ticket::QUERY_PARAM
    );
    let r = http.get(&forged).send().await.unwrap();
    assert!(r.status() == 403 || r.status() == 401, "{}", r.status());
}
