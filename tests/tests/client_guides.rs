//! Issue 15, client guides backed by tests: every guide in the README's
//! "Pointing clients at it" section, run as written — read from the README
//! itself ([`wharf_tests::guides`]), with only the example addresses
//! swapped for the test's — by the real clients: dockerd (by name, as the
//! Docker Hub mirror, a CI runner signing in for a private rule),
//! containerd (`hosts.toml`, and a Kubernetes image name), podman
//! (`registries.conf`), and docker against an origin without the edge.
//! Docker Hub is a closed loopback port here: a guide that did not really
//! go through Wharf fails.

use std::time::Duration;

use wharf_tests::clients::{Containerd, Dockerd, Podman};
use wharf_tests::edge::{EdgeStack, GLOBAL_HOST, USER};
use wharf_tests::guides::{guide, localize};
use wharf_tests::upstream::Proxy;
use wharf_tests::{ImageSpec, OriginOpts, Stack, UPSTREAM_URL, UpstreamAuth};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_containerd_and_podman_follow_the_readme_through_the_edge() {
    let es = EdgeStack::start("client-guides", Duration::from_secs(300))
        .await
        .unwrap();
    let up = &es.stack.upstream;
    let alpine = ImageSpec::docker(&[200_000])
        .push(up, "library/alpine", "3.20")
        .await
        .unwrap();
    let nginx = ImageSpec::oci(&[150_000])
        .push_index(up, "library/nginx", "1.27")
        .await
        .unwrap();
    let private = ImageSpec::docker(&[100_000])
        .push(up, "team/app", "v1")
        .await
        .unwrap();
    let edge = es.edge.host();
    let origin = es.stack.origin_host();
    let local = |name: &str| localize(&guide(name).unwrap(), &edge, &origin);

    // docker: daemon.json as the guide has it (the Docker Hub mirror).
    let dockerd = Dockerd::start_with(&es.stack.dir, &local("docker-daemon-json"), None)
        .await
        .unwrap();
    // By name.
    dockerd.sh(&local("docker-by-name"), &[]).await.unwrap();
    let digests = dockerd
        .repo_digests(&format!("{edge}/docker.io/library/alpine:3.20"))
        .await
        .unwrap();
    assert!(
        digests.iter().any(|d| d.ends_with(&alpine.manifest_digest)),
        "{digests:?}"
    );
    // A plain Docker Hub name, through the mirror.
    let before = es.edge.requests().len();
    dockerd.sh(&local("docker-mirror-pull"), &[]).await.unwrap();
    let digests = dockerd.repo_digests("alpine:3.20").await.unwrap();
    assert!(
        digests.iter().any(|d| d.ends_with(&alpine.manifest_digest)),
        "{digests:?}"
    );
    let through_edge = es.edge.requests()[before..]
        .iter()
        .any(|r| r.path == "/v2/library/alpine/manifests/3.20");
    assert!(through_edge, "the mirror pull reached the edge");
    // A CI runner signs in and pulls from a private rule.
    let (user, password) = USER;
    dockerd
        .sh(
            &local("ci-login"),
            &[("WHARF_USER", user), ("WHARF_PASSWORD", password)],
        )
        .await
        .unwrap();
    let digests = dockerd
        .repo_digests(&format!("{edge}/priv/team/app:v1"))
        .await
        .unwrap();
    assert!(
        digests
            .iter()
            .any(|d| d.ends_with(&private.manifest_digest)),
        "{digests:?}"
    );

    // containerd: hosts.toml for docker.io, then a Kubernetes image name.
    let containerd = Containerd::start(&es.stack.dir).await.unwrap();
    let got = containerd
        .pull_with_hosts_toml(
            "docker.io",
            &local("containerd-hosts-toml"),
            "docker.io/library/alpine:3.20",
        )
        .await
        .unwrap();
    assert_eq!(got, alpine.manifest_digest);
    let yaml = local("kubernetes-image");
    let image = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("image:"))
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(image, format!("{edge}/docker.io/library/nginx:1.27"));
    assert_eq!(containerd.pull(&image).await.unwrap(), nginx.digest);

    // podman: registries.conf (the mirror on loopback is plain HTTP: the
    // one line the guide does not have).
    let podman = Podman::new(&es.stack.dir).unwrap();
    let conf = local("registries-conf").replace(
        &format!("location = \"{edge}\""),
        &format!("location = \"{edge}\"\ninsecure = true"),
    );
    podman.set_registries_conf(&conf).unwrap();
    let got = podman.pull("docker.io/library/alpine:3.20").await.unwrap();
    assert_eq!(got, alpine.manifest_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_follows_the_origin_only_guide() {
    let s = Stack::start_with(
        "client-guide-origin",
        UpstreamAuth::Anonymous,
        OriginOpts {
            rules: vec![("docker.io".into(), UPSTREAM_URL.into())],
            ..OriginOpts::default()
        },
    )
    .await
    .unwrap();
    let alpine = ImageSpec::docker(&[100_000])
        .push(&s.upstream, "library/alpine", "3.20")
        .await
        .unwrap();
    let dockerd = Dockerd::start(&s.dir, None).await.unwrap();
    let script = localize(
        &guide("origin-only").unwrap(),
        "edge.invalid",
        &s.origin_host(),
    );
    dockerd.sh(&script, &[]).await.unwrap();
    let digests = dockerd
        .repo_digests(&format!(
            "{}/docker.io/library/alpine:3.20",
            s.origin_host()
        ))
        .await
        .unwrap();
    assert!(
        digests.iter().any(|d| d.ends_with(&alpine.manifest_digest)),
        "{digests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_follows_the_regional_hostname_guide() {
    let es = EdgeStack::start("client-guide-regional", Duration::from_secs(300))
        .await
        .unwrap();
    let alpine = ImageSpec::docker(&[100_000])
        .push(&es.stack.upstream, "library/alpine", "3.20")
        .await
        .unwrap();
    // `eu.wharf.test` resolves nowhere: dockerd reaches it through a test
    // proxy that hands every request to the edge, Host header and all (as
    // DNS would send it to Cloudflare).
    let edge: std::net::SocketAddr = es.edge.host().parse().unwrap();
    let resolver = Proxy::counting(edge).await.unwrap();
    let global = format!("{GLOBAL_HOST}:{}", edge.port());
    let regional = format!("eu.{global}");
    let dockerd = Dockerd::start_behind_proxy(
        &es.stack.dir,
        &format!(r#"{{"insecure-registries": ["{regional}"]}}"#),
        &resolver.url(),
    )
    .await
    .unwrap();
    let script = localize(
        &guide("docker-regional").unwrap(),
        &global,
        &es.stack.origin_host(),
    );
    assert!(
        script.contains(&format!("docker pull {regional}/")),
        "{script}"
    );
    dockerd.sh(&script, &[]).await.unwrap();
    let digests = dockerd
        .repo_digests(&format!("{regional}/docker.io/library/alpine:3.20"))
        .await
        .unwrap();
    assert!(
        digests.iter().any(|d| d.ends_with(&alpine.manifest_digest)),
        "{digests:?}"
    );
    assert!(
        resolver.counts().total() > 0,
        "the pull went to the edge by its regional name"
    );
    // And a regional name pins its region: the same request by name,
    // through the same proxy, is answered by that region (`us` too, which
    // the global name would not pick here).
    let via = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(resolver.url()).unwrap())
        .build()
        .unwrap();
    let token: serde_json::Value = via
        .get(format!("http://{regional}/token"))
        .query(&[
            ("service", GLOBAL_HOST),
            ("scope", "repository:docker.io/library/alpine:pull"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for region in ["eu", "us"] {
        let r = via
            .head(format!(
                "http://{region}.{global}/v2/docker.io/library/alpine/manifests/3.20"
            ))
            .header(
                "Accept",
                "application/vnd.docker.distribution.manifest.v2+json",
            )
            .bearer_auth(token["token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-wharf-region"], region);
    }
}
