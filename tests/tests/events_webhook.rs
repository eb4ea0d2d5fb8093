//! Issue 15, events that are not lost: CloudEvents 1.0 webhooks for
//! hydrations, evictions, moved tags and region health changes, signed with HMAC-SHA256, retried
//! while the receiver is down, and durable — the origin is killed (SIGKILL)
//! with events queued and the receiver down, both come back, and the
//! receiver sees every event exactly once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use wharf_tests::{ImageSpec, OriginOpts, Stack, UpstreamAuth, free_port, http_client, wait_until};

const ADMIN: &str = "events-webhook-admin-token-0123456789";
const SECRET: &str = "events-webhook-secret-0123456789";

/// What the receiver got: (idempotency key, signature, body).
type Received = Arc<Mutex<Vec<(String, String, serde_json::Value, Bytes)>>>;

/// A webhook receiver on `port` (until the returned handle is aborted).
async fn receiver(port: u16, received: Received) -> tokio::task::JoinHandle<()> {
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let received = received.clone();
            async move {
                let get = |h: &str| {
                    headers
                        .get(h)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                received.lock().unwrap().push((
                    get("idempotency-key"),
                    get("x-wharf-signature"),
                    json,
                    body,
                ));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    })
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_while_the_receiver_is_down_survive_a_sigkill_and_arrive_once() {
    let port = free_port();
    let opts = OriginOpts {
        tag_ttl: Some(Duration::from_secs(1)),
        config_toml: Some(format!(
            "[admin]\ntoken = \"{ADMIN}\"\n\n[events]\nwebhook = \"http://127.0.0.1:{port}/hook\"\nsecret = \"{SECRET}\"\nretry_min = \"200ms\"\nretry_max = \"1s\"\n"
        )),
        ..OriginOpts::default()
    };
    let mut s = Stack::start_with("events-webhook", UpstreamAuth::Anonymous, opts)
        .await
        .unwrap();
    let image = ImageSpec::docker(&[100_000, 20_000])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();

    // The receiver is down. A cold pull: one event per blob hydrated.
    s.pull("team/app", "v1").await.unwrap();
    s.origin.wait_committed(3).await.unwrap();
    // The tag moves upstream; past its 1 s TTL the origin finds out.
    let moved = ImageSpec::docker(&[10_000])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, _, headers) =
        wharf_tests::clients::get_manifest(&http_client(), &s.base(), "up/team/app", "v1")
            .await
            .unwrap();
    assert_eq!(
        headers["docker-content-digest"],
        moved.manifest_digest.as_str()
    );
    // An eviction.
    let purge = http_client()
        .post(format!("{}/admin/purge", s.base()))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"image": "up/team/app:v1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 200);

    // Five events written to the outbox, attempts failing.
    let origin = &s.origin;
    wait_until(
        "five events in the outbox",
        Duration::from_secs(10),
        || async {
            Ok(origin.metric("wharf_events_outbox", &[]).await? == 5.0
                && origin
                    .metric("wharf_events_total", &[("result", "failed")])
                    .await?
                    >= 1.0)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        origin
            .metric("wharf_events_total", &[("result", "delivered")])
            .await
            .unwrap(),
        0.0
    );

    // Killed with the events queued; the receiver comes back, then the origin.
    let pid = s.origin.pid().unwrap();
    // SAFETY: a plain syscall on the test's own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let received: Received = Arc::default();
    let server = receiver(port, received.clone()).await;
    s.origin.restart().await.unwrap();
    let got = received.clone();
    wait_until("every event to arrive", Duration::from_secs(20), || {
        let n = got.lock().unwrap().len();
        async move { Ok(n >= 5) }
    })
    .await
    .unwrap();
    // Nothing more comes: each once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all = received.clone();
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 5, "{received:#?}");
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    let mut ids = std::collections::BTreeSet::new();
    for (key, signature, event, body) in &received {
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["datacontenttype"], "application/json");
        assert!(event["source"].as_str().unwrap().starts_with("wharf://"));
        assert!(event["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            event["id"].as_str().unwrap(),
            key,
            "Idempotency-Key is the event id"
        );
        assert!(ids.insert(key.clone()), "event {key} delivered twice");
        assert_eq!(signature, &sign(body), "signed with the secret");
        *types
            .entry(event["type"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        types,
        BTreeMap::from([
            ("dev.wharf.hydration.completed".to_owned(), 3),
            ("dev.wharf.image.evicted".to_owned(), 1),
            ("dev.wharf.tag.moved".to_owned(), 1),
        ])
    );
    let data = |t: &str| {
        received
            .iter()
            .find(|(_, _, e, _)| e["type"] == t)
            .map(|(_, _, e, _)| e["data"].clone())
            .unwrap()
    };
    let hydrated = data("dev.wharf.hydration.completed");
    assert_eq!(hydrated["rule"], "up");
    assert_eq!(hydrated["repository"], "up/team/app");
    assert!(
        image
            .blobs()
            .iter()
            .any(|(d, size)| hydrated["digest"] == d.as_str() && hydrated["size"] == *size)
    );
    let tag = data("dev.wharf.tag.moved");
    assert_eq!(
        (tag["from"].as_str(), tag["to"].as_str()),
        (
            Some(image.manifest_digest.as_str()),
            Some(moved.manifest_digest.as_str())
        )
    );
    assert_eq!(data("dev.wharf.image.evicted")["reason"], "purged");
    let origin = &s.origin;
    assert_eq!(
        origin
            .metric("wharf_events_total", &[("result", "delivered")])
            .await
            .unwrap(),
        5.0
    );
    assert_eq!(
        origin.metric("wharf_events_outbox", &[]).await.unwrap(),
        0.0
    );

    // The region's health: an upstream whose circuit opens degrades it,
    // and it recovers; each change is an event (seen when the readiness is
    // evaluated: here by `/readyz`, otherwise every 10 s).
    let readyz = |base: String| async move {
        let v: serde_json::Value = http_client()
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["status"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(readyz(s.base()).await, "ok");
    s.upstream.set_fault(wharf_tests::Fault::Status(503));
    for _ in 0..6 {
        let _ =
            wharf_tests::clients::get_manifest(&http_client(), &s.base(), "up/team/other", "v1")
                .await;
    }
    assert_eq!(readyz(s.base()).await, "degraded");
    s.upstream.set_fault(wharf_tests::Fault::None);
    let base = s.base();
    wait_until("the region to recover", Duration::from_secs(20), || {
        let base = base.clone();
        async move {
            // A request lets the circuit's probe through.
            let _ = wharf_tests::clients::get_manifest(&http_client(), &base, "up/team/app", "v1")
                .await;
            Ok(readyz(base).await == "ok")
        }
    })
    .await
    .unwrap();
    wait_until("the health events", Duration::from_secs(20), || {
        let n = all
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, e, _)| e["type"] == "dev.wharf.region.health_changed")
            .count();
        async move { Ok(n >= 2) }
    })
    .await
    .unwrap();
    let changes: Vec<(String, String)> = all
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, e, _)| e["type"] == "dev.wharf.region.health_changed")
        .map(|(_, _, e, _)| {
            (
                e["data"]["from"].as_str().unwrap().to_owned(),
                e["data"]["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("ok".to_owned(), "degraded".to_owned()),
            ("degraded".to_owned(), "ok".to_owned())
        ]
    );
    server.abort();
}
