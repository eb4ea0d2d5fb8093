//! The origin on a real distributed object store: a 3-node, 3-zone Garage
//! cluster (replication factor 3) started by `infra/garage/cluster.sh`.
//! Pulls hydrate into it; when the cluster loses a node, warm pulls keep
//! succeeding from the two that are left, with no upstream request.

use wharf_tests::clients::{CopyOpts, Skopeo};
use wharf_tests::garage::Garage;
use wharf_tests::{
    ImageSpec, Kind, Origin, OriginOpts, TestDir, Upstream, UpstreamAuth, pull_with_reqwest,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_survive_the_loss_of_a_garage_node() {
    let dir = TestDir::new("garage-node-loss").unwrap();
    let upstream = Upstream::start(&dir, UpstreamAuth::Anonymous)
        .await
        .unwrap();
    let garage = Garage::start(&dir, &["wharf-eu"]).await.unwrap();
    let origin = Origin::start(
        &dir,
        OriginOpts {
            config_toml: Some(format!(
                "[s3]\nendpoint = \"{}\"\nbucket = \"wharf-eu\"\nregion = \"garage\"\n[[rule]]\nprefix = \"up\"\nupstream = \"{}\"\n",
                garage.s3_endpoint(0),
                upstream.url()
            )),
            env: garage.env(),
            external_store: true,
            ..OriginOpts::default()
        },
    )
    .await
    .unwrap();
    let img = ImageSpec::oci(&[3_000_000, 200_000, 5000])
        .push(&upstream, "team/app", "v1")
        .await
        .unwrap();

    // Cold: through the origin into Garage, every digest as upstream's.
    let skopeo = Skopeo::new(&dir).unwrap();
    let reference = format!("{}/up/team/app:v1", origin.host());
    let digest = skopeo.copy(&reference, &CopyOpts::default()).await.unwrap();
    assert_eq!(digest, img.manifest_digest);
    origin.wait_committed(3).await.unwrap();

    // One node of three goes away (not the one the origin talks to): reads
    // still reach a quorum of two.
    garage.kill_node(2).unwrap();
    upstream.reset_counts();
    for _ in 0..3 {
        let pulled = pull_with_reqwest(&origin.url(), "up/team/app", &img.manifest_digest)
            .await
            .unwrap();
        assert_eq!(pulled.blobs, img.blobs());
    }
    let digest = skopeo.copy(&reference, &CopyOpts::default()).await.unwrap();
    assert_eq!(digest, img.manifest_digest);
    let counts = upstream.counts();
    assert_eq!(
        counts.get("GET", Kind::Blob),
        0,
        "warm pulls reached the upstream:\n{counts}"
    );

    // The node comes back and the cluster keeps serving.
    garage.start_node(2).unwrap();
    let pulled = pull_with_reqwest(&origin.url(), "up/team/app", "v1")
        .await
        .unwrap();
    assert_eq!(pulled.digest, img.manifest_digest);
}
