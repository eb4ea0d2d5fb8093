//! A blob request asks the object store for the object once (issue 13):
//! the request's own lookup, on a miss as on a hit (the leader's re-check
//! before the upstream fetch asks the process's memory of what it committed
//! lately, not the store). Before issue 13 a miss on a replica of a
//! multi-replica region asked three times (the owner check, `Blobs::open`,
//! the leader) and a hit twice.
//!
//! Two replicas of one region share an external S3 store (another origin's
//! embedded one) through a counting proxy, which sees every `HEAD` of the
//! blob's key.

use std::net::SocketAddr;

use wharf_core::Digest;
use wharf_core::region::rendezvous;
use wharf_tests::edge::{GLOBAL_HOST, TOKEN_KEY};
use wharf_tests::geo::pull_token;
use wharf_tests::upstream::Proxy;
use wharf_tests::{
    ImageSpec, Origin, OriginOpts, RULE_PREFIX, TestDir, Upstream, UpstreamAuth, free_port,
    http_client, sha256_digest,
};

const AK: &str = "lookupkey";
const SK: &str = "lookup-secret-key-0123456789";

/// Starts the replicas `ports` of region `eu` on the store at `endpoint`.
async fn replicas(dir: &TestDir, ports: &[u16], endpoint: &str, up: &str) -> Vec<Origin> {
    let origins: Vec<String> = ports
        .iter()
        .map(|p| format!("\"http://127.0.0.1:{p}\""))
        .collect();
    let mut started = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let config = format!(
            "region = \"eu\"\nadvertise = \"http://127.0.0.1:{port}\"\n\
             [s3]\nendpoint = \"{endpoint}\"\nbucket = \"wharf\"\nregion = \"us-east-1\"\n\
             [auth]\ntoken_key = \"{TOKEN_KEY}\"\nservice = \"{GLOBAL_HOST}\"\n\
             [[rule]]\nprefix = \"{RULE_PREFIX}\"\nupstream = \"{up}\"\n\
             [[regions]]\nname = \"eu\"\norigins = [{origins}]\ns3_endpoint = \"{endpoint}\"\n\
             bucket = \"wharf\"\ns3_region = \"us-east-1\"\ncontinents = [\"EU\"]\nlat = 50.0\nlon = 8.0\n",
            origins = origins.join(", "),
        );
        let origin = Origin::start(
            dir,
            OriginOpts {
                name: Some(format!("eu-{}", i + 1)),
                port: Some(*port),
                config_toml: Some(config),
                env: vec![
                    ("AWS_ACCESS_KEY_ID".into(), AK.into()),
                    ("AWS_SECRET_ACCESS_KEY".into(), SK.into()),
                ],
                external_store: true,
                ..OriginOpts::default()
            },
        )
        .await
        .unwrap();
        started.push(origin);
    }
    started
}

async fn get_blob(base: &str, repo: &str, digest: &str) -> (u16, String) {
    let r = http_client()
        .get(format!("{base}/v2/{repo}/blobs/{digest}"))
        .bearer_auth(pull_token(repo))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    (status, sha256_digest(&body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_request_looks_the_object_up_once() {
    let dir = TestDir::new("store-lookups").unwrap();
    let upstream = Upstream::start(&dir, UpstreamAuth::Anonymous)
        .await
        .unwrap();
    let img = ImageSpec::oci(&[40_000])
        .push(&upstream, "team/app", "v1")
        .await
        .unwrap();
    let (digest, _) = img.blobs()[0].clone();

    // The store: an origin's embedded S3 server, behind a counting proxy.
    let s3_port = free_port();
    let _store = Origin::start(
        &dir,
        OriginOpts {
            name: Some("store".into()),
            rules: vec![("up".into(), upstream.url())],
            config_toml: Some(format!(
                "[embedded]\nlisten = \"127.0.0.1:{s3_port}\"\naccess_key = \"{AK}\"\nsecret_key = \"{SK}\"\nbucket = \"wharf\"\n"
            )),
            ..OriginOpts::default()
        },
    )
    .await
    .unwrap();
    let proxy = Proxy::counting(SocketAddr::from(([127, 0, 0, 1], s3_port)))
        .await
        .unwrap();

    let ports = [free_port(), free_port()];
    let eu = replicas(&dir, &ports, &proxy.url(), &upstream.url()).await;
    // As the replicas list themselves (`[[regions]] origins`).
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let owner = rendezvous(&digest, &urls)[0];
    let repo = format!("{RULE_PREFIX}/team/app");
    let hex = Digest::parse(&digest).unwrap().hex().to_owned();
    let heads = |proxy: &Proxy| {
        proxy
            .counts()
            .filter(|k| k.method == "HEAD" && k.path == format!("/wharf/blobs/sha256/{hex}"))
    };

    // A miss at its owner: the request's lookup only.
    proxy.reset_counts();
    let (status, got) = get_blob(&urls[owner], &repo, &digest).await;
    assert_eq!((status, got.as_str()), (200, digest.as_str()));
    eu[owner].wait_committed(1).await.unwrap();
    assert_eq!(heads(&proxy), 1, "{}", proxy.counts());

    // A hit, at either replica: one lookup each.
    for url in &urls {
        proxy.reset_counts();
        let (status, got) = get_blob(url, &repo, &digest).await;
        assert_eq!((status, got.as_str()), (200, digest.as_str()));
        assert_eq!(heads(&proxy), 1, "{url}: {}", proxy.counts());
    }
}
