//! Issue 14, faults: a circuit breaker per upstream. After repeated failures
//! the origin stops asking the upstream for a cool-down — stale tags are
//! served at once, cold content fails at once with `Retry-After` — shows it
//! in `/readyz` and the metrics, and one probe after the cool-down closes
//! the circuit again when the upstream is back.

use std::time::{Duration, Instant};

use wharf_tests::clients::{OciError, get_manifest};
use wharf_tests::{Fault, ImageSpec, Kind, OriginOpts, Stack, UpstreamAuth, http_client};

const TTL: Duration = Duration::from_secs(1);
const COOL_DOWN: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_is_skipped_for_a_cool_down_then_probed() {
    let opts = OriginOpts {
        tag_ttl: Some(TTL),
        config_toml: Some("[upstream]\nbreaker_failures = 2\n".into()),
        env: vec![(
            "WHARF_UPSTREAM_BREAKER_COOL_DOWN".into(),
            format!("{}s", COOL_DOWN.as_secs()),
        )],
        ..OriginOpts::default()
    };
    let s = Stack::start_with("breaker", UpstreamAuth::Anonymous, opts)
        .await
        .unwrap();
    let image = ImageSpec::docker(&[1000])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    let cold = ImageSpec::docker(&[1000])
        .push(&s.upstream, "team/cold", "v1")
        .await
        .unwrap();
    s.pull("team/app", "v1").await.unwrap();
    let client = http_client();
    let base = s.base();
    let cache_header = || async {
        let (bytes, _, headers) = get_manifest(&client, &base, &s.repo("team/app"), "v1")
            .await
            .unwrap();
        assert_eq!(wharf_tests::sha256_digest(&bytes), image.manifest_digest);
        headers["x-wharf-cache"].to_str().unwrap().to_owned()
    };
    let readyz = || async {
        let r = client.get(format!("{base}/readyz")).send().await.unwrap();
        let body: serde_json::Value = r.json().await.unwrap();
        (
            body["status"].as_str().unwrap().to_owned(),
            body["checks"]["upstreams"]["up"]["circuit"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    };
    assert_eq!(readyz().await, ("ok".into(), "closed".into()));

    // Two failed revalidations open the circuit.
    s.upstream.set_fault(Fault::Status(503));
    tokio::time::sleep(TTL + Duration::from_millis(200)).await;
    for _ in 0..2 {
        assert_eq!(cache_header().await, "stale");
        tokio::time::sleep(TTL + Duration::from_millis(200)).await;
    }
    assert_eq!(readyz().await, ("degraded".into(), "open".into()));
    let metric = |name: &'static str| s.origin.metric(name, &[("registry", "up")]);
    assert_eq!(metric("wharf_upstream_circuit_state").await.unwrap(), 2.0);
    assert_eq!(
        metric("wharf_upstream_circuit_opened_total").await.unwrap(),
        1.0
    );

    // While it is open, nothing goes upstream: stale tags at once, cold
    // content refused at once with a retry hint.
    s.upstream.reset_counts();
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(cache_header().await, "stale");
    }
    let r = client
        .get(format!("{base}/v2/{}/manifests/v1", s.repo("team/cold")))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=COOL_DOWN.as_secs()).contains(&retry_after),
        "{retry_after}"
    );
    let e = OciError::read(r).await;
    assert_eq!((e.status, e.code.as_str()), (503, "UNAVAILABLE"), "{e}");
    assert!(e.body.contains("skipped"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let counts = s.upstream.counts();
    assert_eq!(counts.registry_total(), 0, "{counts}");
    assert!(
        metric("wharf_upstream_circuit_refused_total")
            .await
            .unwrap()
            >= 4.0
    );

    // The upstream is back: after the cool-down one probe closes the
    // circuit and the tag is fresh again.
    s.upstream.set_fault(Fault::None);
    tokio::time::sleep(COOL_DOWN).await;
    assert_ne!(cache_header().await, "stale");
    assert_eq!(readyz().await, ("ok".into(), "closed".into()));
    assert_eq!(metric("wharf_upstream_circuit_state").await.unwrap(), 0.0);
    assert_eq!(
        s.pull("team/cold", "v1").await.unwrap().digest,
        cold.manifest_digest
    );
    assert!(s.upstream.counts().get("HEAD", Kind::Manifest) >= 1);
}
