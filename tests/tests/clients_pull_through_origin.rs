//! Every real client pulls through the origin and gets exactly the bytes the
//! upstream has: dockerd (by rule prefix and as a Docker Hub
//! `--registry-mirror` sending bare names), skopeo, containerd (`ctr`
//! directly and through a `hosts.toml` mirror, which adds `?ns=docker.io`)
//! and podman; single images and multi-platform indexes, by tag.

use wharf_tests::clients::{Containerd, CopyOpts, Dockerd, Podman, Skopeo};
use wharf_tests::{
    ImageSpec, Kind, OriginOpts, PushedImage, PushedIndex, Stack, UPSTREAM_URL, UpstreamAuth,
};

/// A stack whose origin also maps `docker.io` to the upstream, seeded with
/// a Docker image and an OCI index under `team/…` and the same again under
/// `library/…` (what a Docker Hub mirror client asks for).
struct Seeded {
    image: PushedImage,
    index: PushedIndex,
    hub_image: PushedImage,
    hub_index: PushedIndex,
    stack: Stack,
}

async fn seeded(name: &str) -> Seeded {
    let opts = OriginOpts {
        rules: vec![("docker.io".to_owned(), UPSTREAM_URL.to_owned())],
        ..OriginOpts::default()
    };
    let stack = Stack::start_with(name, UpstreamAuth::Anonymous, opts)
        .await
        .unwrap();
    let up = &stack.upstream;
    let image = ImageSpec::docker(&[3000, 5000])
        .push(up, "team/app", "v1")
        .await
        .unwrap();
    let index = ImageSpec::oci(&[2000])
        .push_index(up, "team/multi", "v1")
        .await
        .unwrap();
    let hub_image = ImageSpec::docker(&[2500])
        .push(up, "library/wharfapp", "v1")
        .await
        .unwrap();
    let hub_index = ImageSpec::docker(&[1500])
        .push_index(up, "library/wharfmulti", "v1")
        .await
        .unwrap();
    Seeded {
        image,
        index,
        hub_image,
        hub_index,
        stack,
    }
}

/// The upstream saw the origin fetch this image (so the client did not
/// bypass the origin somehow).
fn assert_came_through_upstream(s: &Seeded, repo: &str) {
    let counts = s.stack.upstream.counts();
    let hits =
        counts.filter(|k| k.kind == Kind::Manifest && k.path.starts_with(&format!("/v2/{repo}/")));
    assert!(
        hits > 0,
        "the upstream never saw a manifest request for {repo}:\n{counts}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_pulls_images_and_indexes_by_rule_prefix() {
    let s = seeded("clients-docker-prefix").await;
    let docker = Dockerd::start(&s.stack.dir, None).await.unwrap();
    let got = docker
        .pull(&s.stack.origin_ref("team/app", "v1"))
        .await
        .unwrap();
    assert_eq!(got, s.image.manifest_digest);
    let got = docker
        .pull(&s.stack.origin_ref("team/multi", "v1"))
        .await
        .unwrap();
    assert_eq!(got, s.index.digest);
    assert_came_through_upstream(&s, "team/app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_registry_mirror_pulls_bare_docker_hub_names() {
    let s = seeded("clients-docker-mirror").await;
    let docker = Dockerd::start(&s.stack.dir, Some(&s.stack.origin.url()))
        .await
        .unwrap();
    // `wharfapp:v1` is `docker.io/library/wharfapp:v1`: dockerd asks the
    // mirror for `/v2/library/wharfapp/…`.
    assert_eq!(
        docker.pull("wharfapp:v1").await.unwrap(),
        s.hub_image.manifest_digest
    );
    assert_eq!(
        docker.pull("wharfmulti:v1").await.unwrap(),
        s.hub_index.digest
    );
    assert_came_through_upstream(&s, "library/wharfapp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_images_and_indexes_byte_for_byte() {
    let s = seeded("clients-skopeo").await;
    let skopeo = Skopeo::new(&s.stack.dir).unwrap();
    let plain = CopyOpts::default();
    let all = CopyOpts {
        all: true,
        ..CopyOpts::default()
    };
    let got = skopeo
        .copy(&s.stack.origin_ref("team/app", "v1"), &plain)
        .await
        .unwrap();
    assert_eq!(got, s.image.manifest_digest);
    // --all keeps the index itself and copies both platforms.
    let got = skopeo
        .copy(&s.stack.origin_ref("team/multi", "v1"), &all)
        .await
        .unwrap();
    assert_eq!(got, s.index.digest);
    let got = skopeo
        .copy(&s.stack.origin_ref("team/multi", "v1"), &plain)
        .await
        .unwrap();
    assert_eq!(got, s.index.child("amd64").manifest_digest);
    // By digest, and a Docker Hub name under the docker.io rule.
    let by_digest = format!(
        "{}/up/team/app@{}",
        s.stack.origin_host(),
        s.image.manifest_digest
    );
    assert_eq!(
        skopeo.copy(&by_digest, &plain).await.unwrap(),
        s.image.manifest_digest
    );
    let hub = format!("{}/docker.io/library/wharfapp:v1", s.stack.origin_host());
    assert_eq!(
        skopeo.copy(&hub, &plain).await.unwrap(),
        s.hub_image.manifest_digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_directly_and_through_a_hosts_toml_mirror() {
    let s = seeded("clients-ctr").await;
    let ctr = Containerd::start(&s.stack.dir).await.unwrap();
    let got = ctr
        .pull(&s.stack.origin_ref("team/app", "v1"))
        .await
        .unwrap();
    assert_eq!(got, s.image.manifest_digest);
    let got = ctr
        .pull(&s.stack.origin_ref("team/multi", "v1"))
        .await
        .unwrap();
    assert_eq!(got, s.index.digest);
    // hosts.toml mirror: containerd asks the origin for
    // `/v2/library/wharfapp/…?ns=docker.io`.
    let mirror = s.stack.origin.url();
    let got = ctr
        .pull_via_mirror("docker.io/library/wharfapp:v1", &mirror)
        .await
        .unwrap();
    assert_eq!(got, s.hub_image.manifest_digest);
    let got = ctr
        .pull_via_mirror("docker.io/library/wharfmulti:v1", &mirror)
        .await
        .unwrap();
    assert_eq!(got, s.hub_index.digest);
    assert_came_through_upstream(&s, "library/wharfapp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_images_and_indexes() {
    let s = seeded("clients-podman").await;
    let podman = Podman::new(&s.stack.dir).unwrap();
    let got = podman
        .pull(&s.stack.origin_ref("team/app", "v1"))
        .await
        .unwrap();
    assert_eq!(got, s.image.manifest_digest);
    let got = podman
        .pull(&s.stack.origin_ref("team/multi", "v1"))
        .await
        .unwrap();
    assert_eq!(got, s.index.digest);
    let hub = format!("{}/docker.io/library/wharfmulti:v1", s.stack.origin_host());
    assert_eq!(podman.pull(&hub).await.unwrap(), s.hub_index.digest);
}
