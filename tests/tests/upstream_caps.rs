//! Issue 16, per-upstream caps: a rule's `max_connections` bounds the
//! requests open to its upstream at once (the rest wait their turn and are
//! served, verified), and `max_bandwidth_mib` the bytes per second its
//! bodies bring in, so one cache cannot saturate a private registry. The
//! same pulls through a rule without caps open more connections, so the
//! count is a real bound.

use std::time::{Duration, Instant};

use futures::future::try_join_all;
use wharf_tests::clients::fetch_blob;
use wharf_tests::{Fault, ImageSpec, OriginOpts, Stack, UpstreamAuth, http_client};

const LAYERS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cap_bounds_requests_open_to_the_upstream() {
    let opts = OriginOpts {
        config_toml: Some(
            "[[rule]]\nprefix = \"capped\"\nupstream = \"{upstream}\"\nmax_connections = 2\n\n\
             [[rule]]\nprefix = \"free\"\nupstream = \"{upstream}\"\n\n\
             [limits]\nhydrations_per_upstream = 8\n"
                .into(),
        ),
        ..OriginOpts::default()
    };
    let s = Stack::start_with("upstream-caps", UpstreamAuth::Anonymous, opts)
        .await
        .unwrap();
    let capped = ImageSpec::docker(&[256 * 1024; LAYERS])
        .push(&s.upstream, "team/capped", "v1")
        .await
        .unwrap();
    let free = ImageSpec::docker(&[256 * 1024; LAYERS])
        .push(&s.upstream, "team/free", "v1")
        .await
        .unwrap();
    // Each layer takes half a second to arrive: requests overlap.
    s.upstream.set_fault(Fault::SlowBlobs(512 * 1024));
    let client = http_client();
    let base = s.base();
    let pull_layers = |prefix: &'static str, img: &wharf_tests::PushedImage| {
        let (client, base, img) = (client.clone(), base.clone(), img.clone());
        async move {
            let repo = format!("{prefix}/{}", img.repo);
            wharf_tests::clients::get_manifest(&client, &base, &repo, "v1").await?;
            try_join_all(
                img.layer_digests
                    .iter()
                    .zip(&img.layer_sizes)
                    .map(|(d, n)| fetch_blob(&client, &base, &repo, d, Some(*n))),
            )
            .await
        }
    };

    s.upstream.reset_counts();
    pull_layers("capped", &capped).await.unwrap();
    let peak = s.upstream.peak_in_flight();
    assert!(
        peak <= 2,
        "{peak} requests at once with max_connections = 2"
    );
    assert!(
        s.origin
            .metric(
                "wharf_upstream_connection_waits_total",
                &[("registry", "capped")]
            )
            .await
            .unwrap()
            >= 1.0
    );

    s.upstream.reset_counts();
    pull_layers("free", &free).await.unwrap();
    let peak = s.upstream.peak_in_flight();
    assert!(peak > 2, "without a cap the same pull opened only {peak}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bandwidth_cap_paces_downloads_and_keeps_them_exact() {
    let opts = OriginOpts {
        config_toml: Some(
            "[[rule]]\nprefix = \"slow\"\nupstream = \"{upstream}\"\nmax_bandwidth_mib = 1\n"
                .into(),
        ),
        ..OriginOpts::default()
    };
    let s = Stack::start_with("upstream-bandwidth", UpstreamAuth::Anonymous, opts)
        .await
        .unwrap();
    let img = ImageSpec::docker(&[3 << 20])
        .push(&s.upstream, "team/big", "v1")
        .await
        .unwrap();
    let client = http_client();
    let base = s.base();
    let repo = format!("slow/{}", img.repo);
    wharf_tests::clients::get_manifest(&client, &base, &repo, "v1")
        .await
        .unwrap();
    let start = Instant::now();
    fetch_blob(
        &client,
        &base,
        &repo,
        &img.layer_digests[0],
        Some(img.layer_sizes[0]),
    )
    .await
    .unwrap();
    // One second's worth at once, then 1 MiB/s: at least 2 s for 3 MiB,
    // however fast the machine (a lower bound, not a speed target).
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1_800),
        "3 MiB at 1 MiB/s took {took:?}"
    );
}
