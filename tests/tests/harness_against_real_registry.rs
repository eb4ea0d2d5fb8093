//! The harness itself, checked against the real registry and real clients
//! with no origin in between: generated images are valid for every client,
//! the token upstream behaves like a private registry, and the proxy counts
//! and breaks things the way the origin tests rely on.

use std::time::Duration;

use wharf_tests::clients::{
    Containerd, CopyOpts, Dockerd, Podman, Skopeo, fetch_blob, get_manifest, oci_error_of,
};
use wharf_tests::upstream::fetch_token;
use wharf_tests::{
    Fault, ImageSpec, Kind, PushedImage, PushedIndex, TestDir, Upstream, UpstreamAuth, http_client,
    pull_with_reqwest,
};

/// A Docker image, an OCI image, a Docker manifest list and an OCI index,
/// pushed to a fresh anonymous upstream.
struct Seeded {
    docker: PushedImage,
    oci: PushedImage,
    docker_list: PushedIndex,
    oci_index: PushedIndex,
    upstream: Upstream,
    dir: TestDir,
}

async fn seeded(name: &str) -> Seeded {
    let dir = TestDir::new(name).unwrap();
    let upstream = Upstream::start(&dir, UpstreamAuth::Anonymous)
        .await
        .unwrap();
    let docker = ImageSpec::docker(&[3000, 5000])
        .push(&upstream, "t/docker", "v1")
        .await
        .unwrap();
    let oci = ImageSpec::oci(&[4000])
        .push(&upstream, "t/oci", "v1")
        .await
        .unwrap();
    let docker_list = ImageSpec::docker(&[2000])
        .push_index(&upstream, "t/docker-list", "v1")
        .await
        .unwrap();
    let oci_index = ImageSpec::oci(&[2000])
        .push_index(&upstream, "t/oci-index", "v1")
        .await
        .unwrap();
    Seeded {
        docker,
        oci,
        docker_list,
        oci_index,
        upstream,
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_images_pull_and_verify_over_http() {
    let s = seeded("harness-reqwest").await;
    let base = s.upstream.url();
    for (repo, img) in [("t/docker", &s.docker), ("t/oci", &s.oci)] {
        let pulled = pull_with_reqwest(&base, repo, "v1").await.unwrap();
        assert_eq!(pulled.digest, img.manifest_digest);
        assert_eq!(pulled.media_type, img.manifest_media_type);
        assert_eq!(pulled.blobs, img.blobs());
        let by_digest = pull_with_reqwest(&base, repo, &img.manifest_digest)
            .await
            .unwrap();
        assert_eq!(by_digest.digest, img.manifest_digest);
    }
    for (repo, idx) in [
        ("t/docker-list", &s.docker_list),
        ("t/oci-index", &s.oci_index),
    ] {
        let pulled = pull_with_reqwest(&base, repo, "v1").await.unwrap();
        assert_eq!(pulled.digest, idx.digest);
        assert_eq!(pulled.media_type, idx.media_type);
        assert_eq!(pulled.image_digest, idx.child("amd64").manifest_digest);
        assert_eq!(pulled.blobs, idx.child("amd64").blobs());
    }
    drop(s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_generated_images_byte_for_byte() {
    let s = seeded("harness-skopeo").await;
    let skopeo = Skopeo::new(&s.dir).unwrap();
    let host = s.upstream.host();
    let plain = CopyOpts::default();
    let all = CopyOpts {
        all: true,
        ..CopyOpts::default()
    };
    assert_eq!(
        skopeo
            .copy(&format!("{host}/t/docker:v1"), &plain)
            .await
            .unwrap(),
        s.docker.manifest_digest
    );
    assert_eq!(
        skopeo
            .copy(&format!("{host}/t/oci:v1"), &plain)
            .await
            .unwrap(),
        s.oci.manifest_digest
    );
    assert_eq!(
        skopeo
            .copy(&format!("{host}/t/docker-list:v1"), &all)
            .await
            .unwrap(),
        s.docker_list.digest
    );
    assert_eq!(
        skopeo
            .copy(&format!("{host}/t/oci-index:v1"), &all)
            .await
            .unwrap(),
        s.oci_index.digest
    );
    // Without --all skopeo picks this machine's platform.
    assert_eq!(
        skopeo
            .copy(&format!("{host}/t/oci-index:v1"), &plain)
            .await
            .unwrap(),
        s.oci_index.child("amd64").manifest_digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_pulls_generated_images() {
    let s = seeded("harness-docker").await;
    let docker = Dockerd::start(&s.dir, None).await.unwrap();
    let host = s.upstream.host();
    assert_eq!(
        docker.pull(&format!("{host}/t/docker:v1")).await.unwrap(),
        s.docker.manifest_digest
    );
    assert_eq!(
        docker.pull(&format!("{host}/t/oci:v1")).await.unwrap(),
        s.oci.manifest_digest
    );
    assert_eq!(
        docker
            .pull(&format!("{host}/t/docker-list:v1"))
            .await
            .unwrap(),
        s.docker_list.digest
    );
    assert_eq!(
        docker
            .pull(&format!("{host}/t/oci-index:v1"))
            .await
            .unwrap(),
        s.oci_index.digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_generated_images() {
    let s = seeded("harness-ctr").await;
    let ctr = Containerd::start(&s.dir).await.unwrap();
    let host = s.upstream.host();
    assert_eq!(
        ctr.pull(&format!("{host}/t/docker:v1")).await.unwrap(),
        s.docker.manifest_digest
    );
    assert_eq!(
        ctr.pull(&format!("{host}/t/oci:v1")).await.unwrap(),
        s.oci.manifest_digest
    );
    assert_eq!(
        ctr.pull(&format!("{host}/t/docker-list:v1")).await.unwrap(),
        s.docker_list.digest
    );
    assert_eq!(
        ctr.pull(&format!("{host}/t/oci-index:v1")).await.unwrap(),
        s.oci_index.digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_generated_images() {
    let s = seeded("harness-podman").await;
    let podman = Podman::new(&s.dir).unwrap();
    let host = s.upstream.host();
    assert_eq!(
        podman.pull(&format!("{host}/t/docker:v1")).await.unwrap(),
        s.docker.manifest_digest
    );
    assert_eq!(
        podman.pull(&format!("{host}/t/oci:v1")).await.unwrap(),
        s.oci.manifest_digest
    );
    assert_eq!(
        podman
            .pull(&format!("{host}/t/docker-list:v1"))
            .await
            .unwrap(),
        s.docker_list.digest
    );
    assert_eq!(
        podman
            .pull(&format!("{host}/t/oci-index:v1"))
            .await
            .unwrap(),
        s.oci_index.digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_upstream_refuses_anonymous_pulls_and_accepts_basic_credentials() {
    let dir = TestDir::new("harness-token").unwrap();
    let users = vec![("alice".to_owned(), "s3cret".to_owned())];
    let upstream = Upstream::start(&dir, UpstreamAuth::Token { users })
        .await
        .unwrap();
    let img = ImageSpec::docker(&[1000])
        .push(&upstream, "private/app", "v1")
        .await
        .unwrap();
    assert_eq!(upstream.counts().total(), 0, "seeding must not be counted");

    // The registry challenges anonymous requests with a realm on 127.0.0.1.
    let client = http_client();
    let resp = client
        .get(format!("{}/v2/private/app/manifests/v1", upstream.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let realm = upstream.token_url().unwrap();
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"{realm}\"")),
        "{challenge}"
    );

    let scope = "repository:private/app:pull";
    let anon = fetch_token(&realm, scope, None).await.unwrap_err();
    assert!(anon.to_string().contains("401"), "{anon:#}");
    assert!(
        fetch_token(&realm, scope, Some(("alice", "wrong")))
            .await
            .is_err()
    );
    let token = fetch_token(&realm, scope, Some(("alice", "s3cret")))
        .await
        .unwrap();
    let resp = client
        .get(format!("{}/v2/private/app/manifests/v1", upstream.url()))
        .header("accept", img.manifest_media_type.as_str())
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "registry refused our token: {}",
        upstream.registry_log()
    );
    // A token for one repository does not open another.
    let resp = client
        .get(format!("{}/v2/private/other/manifests/v1", upstream.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let skopeo = Skopeo::new(&dir).unwrap();
    let reference = format!("{}/private/app:v1", upstream.host());
    let err = skopeo
        .copy(&reference, &CopyOpts::default())
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("unauthorized"), "{err:#}");
    let creds = CopyOpts {
        creds: Some(("alice".into(), "s3cret".into())),
        ..CopyOpts::default()
    };
    assert_eq!(
        skopeo.copy(&reference, &creds).await.unwrap(),
        img.manifest_digest
    );
    assert!(upstream.token_requests() >= 3, "{}", upstream.counts());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_counts_requests_and_injects_faults() {
    let dir = TestDir::new("harness-proxy").unwrap();
    let upstream = Upstream::start(&dir, UpstreamAuth::Anonymous)
        .await
        .unwrap();
    let img = ImageSpec::oci(&[200_000, 1000])
        .push(&upstream, "t/app", "v1")
        .await
        .unwrap();
    assert_eq!(upstream.counts().total(), 0, "seeding must not be counted");
    let base = upstream.url();
    let client = http_client();

    pull_with_reqwest(&base, "t/app", "v1").await.unwrap();
    let counts = upstream.counts();
    assert_eq!(counts.get("GET", Kind::Manifest), 1, "{counts}");
    assert_eq!(counts.get("GET", Kind::Blob), 3, "{counts}");
    assert_eq!(
        counts.for_path("GET", Kind::Blob, &img.layer_digests[0]),
        1,
        "{counts}"
    );
    assert_eq!(counts.registry_total(), 4, "{counts}");
    upstream.reset_counts();
    assert_eq!(upstream.counts().total(), 0);

    let layer = &img.layer_digests[0];
    let size = Some(img.layer_sizes[0]);
    upstream.set_fault(Fault::CorruptBlob(layer.clone()));
    let err = fetch_blob(&client, &base, "t/app", layer, size)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("arrived with digest"), "{err:#}");
    // Other blobs are untouched.
    fetch_blob(&client, &base, "t/app", &img.layer_digests[1], None)
        .await
        .unwrap();

    upstream.set_fault(Fault::TruncateBlob(layer.clone()));
    let err = fetch_blob(&client, &base, "t/app", layer, size)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("reading blob"), "{err:#}");

    upstream.set_fault(Fault::Status(503));
    let err = get_manifest(&client, &base, "t/app", "v1")
        .await
        .unwrap_err();
    assert_eq!(oci_error_of(&err).unwrap().status, 503);
    upstream.set_fault(Fault::Status(429));
    let err = get_manifest(&client, &base, "t/app", "v1")
        .await
        .unwrap_err();
    assert_eq!(oci_error_of(&err).unwrap().code, "TOOMANYREQUESTS");

    upstream.set_fault(Fault::None);
    fetch_blob(&client, &base, "t/app", layer, size)
        .await
        .unwrap();

    // A pooled keep-alive connection must not survive the outage.
    upstream.proxy().stop().await;
    let err = client.get(format!("{base}/v2/")).send().await.unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    let raw = std::net::TcpStream::connect(upstream.host());
    assert_eq!(
        raw.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    upstream.proxy().start().await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        pull_with_reqwest(&base, "t/app", "v1"),
    )
    .await
    .unwrap()
    .unwrap();
}

/// `Fault::DockerHubLimit` behaves like Docker Hub's pull limit: manifest
/// `GET`s past the limit get `429 TOOMANYREQUESTS` with `Retry-After`,
/// `HEAD`s and blobs always pass, every manifest
/// answer says the budget, and a new window refills it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_hub_limit_refuses_manifest_gets_past_the_limit_but_not_heads() {
    let dir = TestDir::new("harness-limit").unwrap();
    let upstream = Upstream::start(&dir, UpstreamAuth::Anonymous)
        .await
        .unwrap();
    let img = ImageSpec::docker(&[1000])
        .push(&upstream, "t/app", "v1")
        .await
        .unwrap();
    let (base, client) = (upstream.url(), http_client());
    let manifest = format!("{base}/v2/t/app/manifests/v1");
    let window = Duration::from_secs(2);
    upstream.set_fault(Fault::DockerHubLimit { limit: 2, window });
    let header = |h: &reqwest::header::HeaderMap, name: &str| {
        h.get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };

    for remaining in ["1;w=2", "0;w=2"] {
        let (_, _, h) = get_manifest(&client, &base, "t/app", "v1").await.unwrap();
        assert_eq!(header(&h, "ratelimit-limit"), "2;w=2");
        assert_eq!(header(&h, "ratelimit-remaining"), remaining);
    }
    let head = client.head(&manifest).send().await.unwrap();
    assert_eq!(head.status(), 200, "HEADs are free");
    assert_eq!(header(head.headers(), "ratelimit-remaining"), "0;w=2");
    let blob = &img.layer_digests[0];
    fetch_blob(&client, &base, "t/app", blob, None)
        .await
        .unwrap();

    let refused = client.get(&manifest).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry: u64 = header(refused.headers(), "retry-after").parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(header(refused.headers(), "ratelimit-remaining"), "0;w=2");
    let err = get_manifest(&client, &base, "t/app", "v1")
        .await
        .unwrap_err();
    assert_eq!(oci_error_of(&err).unwrap().code, "TOOMANYREQUESTS");

    let limited = upstream.limit_counts();
    assert_eq!((limited.allowed, limited.refused), (2, 2));
    let counts = upstream.counts();
    assert_eq!(counts.get("GET", Kind::Manifest), 4, "the 429s are counted");
    assert_eq!(counts.get("HEAD", Kind::Manifest), 1, "{counts}");

    // A new window: the budget is back.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let (_, _, h) = get_manifest(&client, &base, "t/app", "v1").await.unwrap();
    assert_eq!(header(&h, "ratelimit-remaining"), "1;w=2");

    upstream.set_fault(Fault::None);
    upstream.reset_counts();
    assert_eq!(upstream.limit_counts().allowed, 0);
    let (_, _, h) = get_manifest(&client, &base, "t/app", "v1").await.unwrap();
    assert!(h.get("ratelimit-remaining").is_none());
}

/// The mirror set-ups the origin tests use (dockerd `--registry-mirror`,
/// containerd `hosts.toml`) really send bare Docker Hub names to the mirror,
/// containerd with `?ns=docker.io`. Here the "mirror" is the upstream itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_configurations_send_docker_hub_names_to_the_mirror() {
    let dir = TestDir::new("harness-mirror").unwrap();
    let upstream = Upstream::start(&dir, UpstreamAuth::Anonymous)
        .await
        .unwrap();
    let img = ImageSpec::docker(&[1000])
        .push(&upstream, "library/mirrored", "v1")
        .await
        .unwrap();

    let docker = Dockerd::start(&dir, Some(&upstream.url())).await.unwrap();
    assert_eq!(
        docker.pull("mirrored:v1").await.unwrap(),
        img.manifest_digest
    );
    let log = upstream.request_log();
    // dockerd resolves the tag with a HEAD, then GETs the manifest by digest.
    assert!(
        log.iter()
            .any(|l| l.starts_with("HEAD /v2/library/mirrored/manifests/v1")),
        "{log:#?}"
    );
    upstream.reset_counts();

    let ctr = Containerd::start(&dir).await.unwrap();
    let digest = ctr
        .pull_via_mirror("docker.io/library/mirrored:v1", &upstream.url())
        .await
        .unwrap();
    assert_eq!(digest, img.manifest_digest);
    let log = upstream.request_log();
    assert!(
        log.iter()
            .all(|l| l == "GET /v2/" || l.ends_with("?ns=docker.io")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("/v2/library/mirrored/manifests/v1?ns=docker.io")),
        "{log:#?}"
    );
}
