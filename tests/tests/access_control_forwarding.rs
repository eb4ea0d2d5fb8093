//! `X-Wharf-Forwarded` is trusted only from peers (issue 12, class 4).
//!
//! Two origin replicas of one region over one bucket (replica 1's embedded
//! store, which replica 2 uses as its external S3 store). A blob miss is
//! owned by one replica (rendezvous hashing); the other forwards it there
//! with `X-Wharf-Forwarded`, and a request that carries the header is served
//! where it lands. A client that sends the header itself (here with the
//! other replica's real URL, the best an address guess can do) must still be
//! forwarded to the owner: 32 concurrent cold pulls spread over both
//! replicas make exactly one upstream `GET`.

use futures::future::join_all;
use wharf_tests::edge::{BUCKET, GLOBAL_HOST, S3_ACCESS_KEY, S3_SECRET_KEY, TOKEN_KEY};
use wharf_tests::geo::pull_token as token;
use wharf_tests::probes::{Outcome, Probes};
use wharf_tests::{
    Fault, ImageSpec, Kind, Origin, OriginOpts, TestDir, Upstream, UpstreamAuth, free_port,
    http_client,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarding_headers_from_clients_are_not_trusted() {
    let dir = TestDir::new("acl-forwarding").unwrap();
    let upstream = Upstream::start(&dir, UpstreamAuth::Anonymous)
        .await
        .unwrap();
    let image = ImageSpec::docker(&[4 << 20, 4 << 20])
        .push(&upstream, "team/herd", "v1")
        .await
        .unwrap();
    let (control, _) = image.blobs()[1].clone();
    let (layer, size) = image.blobs()[2].clone();

    let ports = [free_port(), free_port()];
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let s3_port = free_port();
    let common = |i: usize| {
        format!(
            "region = \"eu\"\nadvertise = \"{adv}\"\n\
             [auth]\ntoken_key = \"{TOKEN_KEY}\"\nservice = \"{GLOBAL_HOST}\"\n\
             [[rule]]\nprefix = \"up\"\nupstream = \"{up}\"\n\
             [[regions]]\nname = \"eu\"\norigins = [\"{o1}\", \"{o2}\"]\ncontinents = [\"EU\"]\n",
            adv = urls[i],
            up = upstream.url(),
            o1 = urls[0],
            o2 = urls[1],
        )
    };
    let first = Origin::start(
        &dir,
        OriginOpts {
            name: Some("eu-1".into()),
            port: Some(ports[0]),
            config_toml: Some(format!(
                "{}[embedded]\nlisten = \"127.0.0.1:{s3_port}\"\naccess_key = \"{S3_ACCESS_KEY}\"\nsecret_key = \"{S3_SECRET_KEY}\"\nbucket = \"{BUCKET}\"\n",
                common(0)
            )),
            ..OriginOpts::default()
        },
    )
    .await
    .unwrap();
    let second = Origin::start(
        &dir,
        OriginOpts {
            name: Some("eu-2".into()),
            port: Some(ports[1]),
            config_toml: Some(format!(
                "{}[s3]\nendpoint = \"http://127.0.0.1:{s3_port}\"\nbucket = \"{BUCKET}\"\naccess_key = \"{S3_ACCESS_KEY}\"\nsecret_key = \"{S3_SECRET_KEY}\"\n",
                common(1)
            )),
            external_store: true,
            ..OriginOpts::default()
        },
    )
    .await
    .unwrap();
    let replicas = [&first, &second];

    // The upstream serves the blob at 4 MiB/s: every request below arrives
    // while the first download is in flight.
    upstream.set_fault(Fault::SlowBlobs(4 << 20));
    upstream.reset_counts();
    let t = token("up/team/herd");
    let mut p = Probes::new("origin replicas: forged X-Wharf-Forwarded");
    let herd = |digest: &str, forge: bool| {
        join_all((0..32).map(|i| {
            let url = format!("{}/v2/up/team/herd/blobs/{digest}", urls[i % 2]);
            let mut req = http_client().get(url).bearer_auth(&t);
            if forge {
                // The other replica's own URL: what a peer would send.
                req = req.header("X-Wharf-Forwarded", urls[(i + 1) % 2].clone());
            }
            Outcome::send(req)
        }))
    };

    // Control: the same herd without the header makes one upstream GET.
    let bodies = herd(&control, false).await;
    let served = bodies.iter().filter(|o| o.served(&control)).count();
    let gets = upstream.counts().for_path("GET", Kind::Blob, &control);
    p.record(
        "control: 32 concurrent cold GETs over 2 replicas, no forged header",
        format!("{served}/32 served, {gets} upstream GET(s)"),
    );
    p.expect(served == 32 && gets == 1, || {
        format!(
            "the replicas do not coalesce even without a forged header:\n{}",
            upstream.counts()
        )
    });
    let mut before = 0.0;
    for r in replicas {
        before += r
            .metric("wharf_forwarded_total", &[("result", "forwarded")])
            .await
            .unwrap_or(0.0);
    }

    upstream.reset_counts();
    let bodies = herd(&layer, true).await;
    let served = bodies.iter().filter(|o| o.served(&layer)).count();
    p.record(
        "32 concurrent cold GETs over 2 replicas, each with a forged X-Wharf-Forwarded",
        format!("{served}/32 served the exact blob ({size} bytes)"),
    );
    p.expect(served == 32, || {
        format!(
            "not every pull was served: {:?}",
            bodies.iter().map(Outcome::summary).collect::<Vec<_>>()
        )
    });
    let counts = upstream.counts();
    let gets = counts.for_path("GET", Kind::Blob, &layer);
    p.record("upstream GETs of the blob", gets.to_string());
    p.expect(gets == 1, || {
        format!("the forged header made the replicas fetch {gets} times, want 1:\n{counts}")
    });
    let mut forwarded = -before;
    for r in replicas {
        forwarded += r
            .metric("wharf_forwarded_total", &[("result", "forwarded")])
            .await
            .unwrap_or(0.0);
    }
    p.record(
        "wharf_forwarded_total{result=forwarded} over both replicas, forged herd",
        forwarded.to_string(),
    );
    p.expect(forwarded >= 1.0, || {
        "no request was forwarded to the owner: the forged header was trusted".into()
    });
    p.finish();
}
