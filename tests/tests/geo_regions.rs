//! Geography (issue 5), on the three-region stack of `wharf_tests::geo`:
//! Garage (3 nodes, 3 zones) under every region's bucket, four origins (two
//! replicas in `eu`), the edge under `wrangler dev`, Distribution upstream.
//!
//! * a client in each geography is served by its region;
//! * a blob pulled in one region is copied from there, not from the
//!   upstream, when another region needs it;
//! * concurrent cold pulls spread over one region's replicas make one
//!   upstream GET per blob;
//! * a region whose origin stops: the global hostname fails over within the
//!   detection time with no failed pull afterwards, the regional hostname
//!   answers 503 and does not fail over, and traffic comes back after a
//!   restart.

use std::time::{Duration, Instant};

use futures::future::join_all;
use wharf_tests::clients::Containerd;
use wharf_tests::edge::GLOBAL_HOST;
use wharf_tests::geo::{GeoOpts, GeoStack, LOCATION_HEADER};
use wharf_tests::{ImageSpec, Kind, PushedImage};

use wharf_tests::no_redirect_client as client;

/// An anonymous pull token for `repo` from the edge.
async fn token(s: &GeoStack, repo: &str) -> String {
    let r = client()
        .get(format!("{}/token", s.edge().url()))
        .query(&[
            ("service", GLOBAL_HOST.to_owned()),
            ("scope", format!("repository:{repo}:pull")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "token: {}", r.text().await.unwrap());
    r.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// GET of a manifest from the edge as a client at `location`, with `host`
/// as the hostname used (the global one by default).
async fn manifest_as(
    s: &GeoStack,
    host: &str,
    location: &str,
    repo: &str,
    reference: &str,
) -> reqwest::Response {
    let t = token(s, repo).await;
    client()
        .get(format!("{}/v2/{repo}/manifests/{reference}", s.edge().url()))
        .header("Host", host)
        .header(LOCATION_HEADER, location)
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        )
        .bearer_auth(t)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET manifest {repo}:{reference} via {host} from {location}: {e:?}"))
}

/// The region that answered, from the edge's `X-Wharf-Region` header.
fn region_of(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-wharf-region")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Requests for manifests and blobs that each region's origins answered.
async fn served(s: &GeoStack) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for r in &s.regions {
        let n = r
            .metric("wharf_requests_total", &[("kind", "manifest")])
            .await
            + r.metric("wharf_requests_total", &[("kind", "blob")]).await;
        out.push((r.name.to_owned(), n));
    }
    out
}

fn delta(before: &[(String, f64)], after: &[(String, f64)]) -> Vec<(String, f64)> {
    before
        .iter()
        .zip(after)
        .map(|((n, b), (_, a))| (n.clone(), a - b))
        .collect()
}

/// `ctr` pull through the edge as a client at `location`.
async fn ctr_pull(ctr: &Containerd, s: &GeoStack, location: &str, image: &str) -> String {
    let reference = format!("{}/{}:v1", s.edge().host(), s.repo(image));
    ctr.pull_with_headers(&reference, &[(LOCATION_HEADER, location)])
        .await
        .unwrap_or_else(|e| panic!("pull of {reference} as {location}: {e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_geography_is_served_by_its_region_and_regions_copy_from_each_other() {
    let s = GeoStack::start(
        "geo-serve",
        GeoOpts {
            edge: true,
            replicate: false,
            ..GeoOpts::default()
        },
    )
    .await
    .unwrap();
    let ctr = Containerd::start(&s.dir).await.unwrap();

    // A client in each geography is served by its region: the edge says so,
    // and only that region's origins saw the pull.
    for (location, region) in [("EU", "eu"), ("NA", "us"), ("AS", "ap")] {
        let image = format!("geo/{region}");
        let pushed = ImageSpec::docker(&[300_000, 40_000])
            .push(&s.upstream, &image, "v1")
            .await
            .unwrap();
        let r = manifest_as(&s, GLOBAL_HOST, location, &s.repo(&image), "v1").await;
        assert_eq!(r.status(), 200);
        assert_eq!(region_of(&r), region, "client in {location}");
        let before = served(&s).await;
        let digest = ctr_pull(&ctr, &s, location, &image).await;
        assert_eq!(digest, pushed.manifest_digest);
        let d = delta(&before, &served(&s).await);
        for (name, n) in &d {
            if name == region {
                assert!(*n >= 1.0, "{region} served nothing for {location}: {d:?}");
            } else {
                assert_eq!(*n, 0.0, "{name} served a client in {location}: {d:?}");
            }
        }
    }

    // Pulled in eu, then in us: us copies every blob from eu's bucket (its
    // nearest peer), verified, and the upstream sees no blob request.
    let pushed = ImageSpec::docker(&[2_000_000, 500_000, 20_000])
        .push(&s.upstream, "geo/shared", "v1")
        .await
        .unwrap();
    assert_eq!(
        ctr_pull(&ctr, &s, "EU", "geo/shared").await,
        pushed.manifest_digest
    );
    s.upstream.reset_counts();
    // A second node (its own content store), in America.
    let us_dir = wharf_tests::TestDir::new("geo-serve-us-node").unwrap();
    let ctr_us = Containerd::start(&us_dir).await.unwrap();
    assert_eq!(
        ctr_pull(&ctr_us, &s, "NA", "geo/shared").await,
        pushed.manifest_digest
    );
    let counts = s.upstream.counts();
    assert_eq!(
        counts.get("GET", Kind::Blob),
        0,
        "region us fetched blobs from the upstream:\n{counts}"
    );
    let us = s.region("us");
    let hits = us
        .metric(
            "wharf_peer_fetches_total",
            &[("region", "eu"), ("result", "hit")],
        )
        .await;
    assert!(
        hits >= pushed.blobs().len() as f64,
        "us copied {hits} blobs from eu, want {}",
        pushed.blobs().len()
    );

    // 32 concurrent cold pulls of one blob spread over eu's two replicas:
    // one upstream GET (the owner fetches; the other replica forwards).
    let herd = ImageSpec::docker(&[8_000_000])
        .push(&s.upstream, "geo/herd", "v1")
        .await
        .unwrap();
    s.upstream.reset_counts();
    let (layer, size) = herd.blobs()[0].clone();
    let repo = s.repo("geo/herd");
    let t = token(&s, &repo).await;
    let eu = s.region("eu");
    let urls: Vec<String> = (0..32)
        .map(|i| {
            format!(
                "{}/v2/{repo}/blobs/{layer}",
                eu.replicas[i % eu.replicas.len()].url()
            )
        })
        .collect();
    let bodies = join_all(urls.iter().map(|u| {
        let (u, t) = (u.clone(), t.clone());
        async move {
            let r = client().get(&u).bearer_auth(t).send().await.unwrap();
            assert_eq!(r.status(), 200, "{u}");
            r.bytes().await.unwrap()
        }
    }))
    .await;
    for b in &bodies {
        assert_eq!(b.len() as u64, size);
        assert_eq!(wharf_tests::sha256_digest(b), layer);
    }
    let counts = s.upstream.counts();
    assert_eq!(
        counts.for_path("GET", Kind::Blob, &layer),
        1,
        "32 pulls over 2 replicas:\n{counts}"
    );
    let forwarded = eu.metric("wharf_forwarded_total", &[]).await;
    assert!(forwarded >= 1.0, "no request was forwarded to the owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_hostname_fails_over_and_regional_hostname_does_not() {
    let mut s = GeoStack::start(
        "geo-failover",
        GeoOpts {
            edge: true,
            replicate: false,
            ..GeoOpts::default()
        },
    )
    .await
    .unwrap();
    let ctr = Containerd::start(&s.dir).await.unwrap();
    let mut images: Vec<PushedImage> = Vec::new();
    for i in 0..4 {
        images.push(
            ImageSpec::docker(&[200_000, 10_000])
                .push(&s.upstream, &format!("geo/fo{i}"), "v1")
                .await
                .unwrap(),
        );
    }
    let ap_host = format!("ap.{GLOBAL_HOST}");
    let repo0 = s.repo("geo/fo0");
    let r = manifest_as(&s, GLOBAL_HOST, "AS", &repo0, "v1").await;
    assert_eq!(region_of(&r), "ap");
    assert_eq!(
        ctr_pull(&ctr, &s, "AS", "geo/fo0").await,
        images[0].manifest_digest
    );

    // The ap region goes down.
    s.region_mut("ap").replicas[0].stop();
    let stopped = Instant::now();
    let detection = Duration::from_secs(20);
    loop {
        s.edge().trigger_scheduled().await.unwrap();
        let r = manifest_as(&s, GLOBAL_HOST, "AS", &repo0, "v1").await;
        if r.status() == 200 && region_of(&r) == "eu" {
            break;
        }
        assert!(
            stopped.elapsed() < detection,
            "no failover within {detection:?}: last answer {} from {:?}",
            r.status(),
            region_of(&r)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("failover after {:?}", stopped.elapsed());

    // From now on every pull of an Asian client succeeds, served by the
    // next-nearest region.
    let before = served(&s).await;
    for (i, img) in images.iter().enumerate().skip(1) {
        let digest = ctr_pull(&ctr, &s, "AS", &format!("geo/fo{i}")).await;
        assert_eq!(digest, img.manifest_digest);
    }
    let d = delta(&before, &served(&s).await);
    assert!(d[0].1 >= 3.0, "eu served the failed-over pulls: {d:?}");

    // The regional hostname is pinned: 503 naming the region, no failover.
    let r = manifest_as(&s, &ap_host, "AS", &repo0, "v1").await;
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(body.contains("UNAVAILABLE"), "{body}");
    assert!(body.contains("ap"), "{body}");
    assert!(
        body.contains(GLOBAL_HOST),
        "suggests the global hostname: {body}"
    );

    // Back up: traffic returns to ap.
    s.region_mut("ap").replicas[0].restart().await.unwrap();
    let restarted = Instant::now();
    loop {
        s.edge().trigger_scheduled().await.unwrap();
        let r = manifest_as(&s, GLOBAL_HOST, "AS", &repo0, "v1").await;
        if r.status() == 200 && region_of(&r) == "ap" {
            break;
        }
        assert!(
            restarted.elapsed() < detection,
            "traffic did not come back to ap within {detection:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let r = manifest_as(&s, &ap_host, "AS", &repo0, "v1").await;
    assert_eq!(r.status(), 200);
}

/// GET of `path` on `base` with a bearer token; the body's sha256 and length.
async fn get_blob(base: &str, path: &str, token: &str) -> (u16, String, u64) {
    let r = client()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    (status, wharf_tests::sha256_digest(&body), body.len() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_rules_copy_to_every_region_and_replicas_survive_a_lost_owner() {
    let mut s = GeoStack::start(
        "geo-replicate",
        GeoOpts {
            edge: false,
            replicate: true,
            ..GeoOpts::default()
        },
    )
    .await
    .unwrap();
    let img = ImageSpec::docker(&[20_000_000, 300_000])
        .push(&s.upstream, "geo/rep", "v1")
        .await
        .unwrap();
    let repo = s.repo("geo/rep");
    let token = s.token(&repo);

    // Pulled once, in eu.
    let eu_url = s.region("eu").replicas[0].url();
    for (digest, size) in img.blobs() {
        let (status, got, len) =
            get_blob(&eu_url, &format!("/v2/{repo}/blobs/{digest}"), &token).await;
        assert_eq!((status, got.as_str(), len), (200, digest.as_str(), size));
    }

    // Without any pull there, us and ap receive every blob, verified, and
    // the repository's link to it.
    let want = 2.0 * img.blobs().len() as f64;
    let eu = s.region("eu");
    let started = Instant::now();
    loop {
        let us = eu
            .metric(
                "wharf_replications_total",
                &[("region", "us"), ("result", "copied")],
            )
            .await;
        let ap = eu
            .metric(
                "wharf_replications_total",
                &[("region", "ap"), ("result", "copied")],
            )
            .await;
        if us >= want && ap >= want && eu.metric("wharf_replication_backlog", &[]).await == 0.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "replication did not finish: us {us}, ap {ap} of {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(eu.metric("wharf_replication_backlog", &[]).await, 0.0);
    // /readyz lists the peer regions' buckets (informational).
    let ready: serde_json::Value = client()
        .get(format!("{eu_url}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["region"], "eu");
    for peer in ["us", "ap"] {
        assert_eq!(ready["checks"]["peer_regions"][peer]["ok"], true, "{ready}");
    }

    // A pull in ap is served from its own bucket: no upstream (not even a
    // `HEAD` to confirm the repository's link), no peer copy.
    s.upstream.reset_counts();
    let ap = s.region("ap");
    for (digest, size) in img.blobs() {
        let (status, got, len) = get_blob(
            &ap.replicas[0].url(),
            &format!("/v2/{repo}/blobs/{digest}"),
            &token,
        )
        .await;
        assert_eq!((status, got.as_str(), len), (200, digest.as_str(), size));
    }
    let counts = s.upstream.counts();
    assert_eq!(counts.get("GET", Kind::Blob), 0, "{counts}");
    assert_eq!(counts.get("HEAD", Kind::Blob), 0, "{counts}");
    assert_eq!(
        ap.metric("wharf_peer_fetches_total", &[("result", "hit")])
            .await,
        0.0
    );

    // eu's replicas: a new blob whose owner is down is still served, by the
    // other replica, after the owner is found unreachable.
    let other = ImageSpec::docker(&[500_000])
        .push(&s.upstream, "geo/rep2", "v1")
        .await
        .unwrap();
    let repo2 = s.repo("geo/rep2");
    let token2 = s.token(&repo2);
    let (layer, size) = other.blobs()[0].clone();
    let replicas: Vec<String> = s.region("eu").replicas.iter().map(|r| r.url()).collect();
    let owner = wharf_core::region::rendezvous(&layer, &replicas)[0];
    let survivor = replicas[1 - owner].clone();
    s.region_mut("eu").replicas[owner].stop();
    let (status, got, len) =
        get_blob(&survivor, &format!("/v2/{repo2}/blobs/{layer}"), &token2).await;
    assert_eq!((status, got.as_str(), len), (200, layer.as_str(), size));
    let down = s
        .region("eu")
        .metric("wharf_forwarded_total", &[("result", "owner_down")])
        .await;
    assert!(
        down >= 1.0,
        "the survivor did not notice the owner was down"
    );
}

/// Issue 14: a region whose origin reports itself degraded (here: under
/// disk pressure) stays routable but comes after the healthy regions on the
/// global hostname; its regional hostname still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_region_comes_after_the_healthy_ones() {
    let s = GeoStack::start(
        "geo-degraded",
        GeoOpts {
            edge: true,
            degraded: Some("ap"),
            ..GeoOpts::default()
        },
    )
    .await
    .unwrap();
    ImageSpec::docker(&[10_000])
        .push(&s.upstream, "geo/dg", "v1")
        .await
        .unwrap();
    let repo = s.repo("geo/dg");
    let started = Instant::now();
    loop {
        s.edge().trigger_scheduled().await.unwrap();
        let r = manifest_as(&s, GLOBAL_HOST, "AS", &repo, "v1").await;
        if r.status() == 200 && region_of(&r) == "eu" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "Asian clients still go to the degraded region: {} from {:?}",
            r.status(),
            region_of(&r)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Pinned: the regional hostname still serves from ap.
    let r = manifest_as(&s, &format!("ap.{GLOBAL_HOST}"), "AS", &repo, "v1").await;
    assert_eq!((r.status().as_u16(), region_of(&r)), (200, "ap".to_owned()));
}
