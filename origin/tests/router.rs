//! Router tests through `app()` with `oneshot`: request parsing, rule
//! resolution and the OCI error shape, none of which touch the network.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use wharf_origin::config::{Config, Rule, Storage};
use wharf_origin::limits::LimitSettings;
use wharf_origin::state::AppState;
use wharf_origin::store::{S3Settings, Store};
use wharf_origin::upstream::Timeouts;

fn state(spool: &std::path::Path) -> AppState {
    // Nothing listens here: these tests must not reach the store.
    state_with(spool, "http://127.0.0.1:9", LimitSettings::default())
}

/// State whose upstream and store are both at `endpoint`.
fn state_with(spool: &std::path::Path, endpoint: &str, limits: LimitSettings) -> AppState {
    let s3 = S3Settings {
        endpoint: endpoint.into(),
        bucket: "wharf".into(),
        region: "us-east-1".into(),
        access_key: "a".into(),
        secret_key: "b".into(),
        part_size: 16 << 20,
    };
    let config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        storage: Storage::S3(s3.clone()),
        spool_dir: spool.to_owned(),
        rules: vec![Rule {
            prefix: "ghcr.io".into(),
            upstream: endpoint.into(),
            credentials: None,
            freshness: Default::default(),
            private: false,
            replicate: false,
            redirect_hosts: Vec::new(),
            keep: None,
            ratelimit_reserve: 10,
            upstream_prefix: String::new(),
            filter: Default::default(),
            prefetch: Default::default(),
            max_connections: None,
            max_bandwidth: None,
        }],
        upstream_timeouts: Timeouts {
            connect: Duration::from_secs(1),
            response: Duration::from_secs(1),
            idle_read: Duration::from_secs(1),
        },
        shutdown_grace: Duration::from_secs(1),
        tags_list_ttl: Duration::from_secs(1),
        limits,
        upstream_breaker: Default::default(),
        retention: Default::default(),
        admin_token: None,
        events: None,
        auth: None,
        geo: None,
    };
    AppState::new(&config, Store::new(&s3), None).unwrap()
}

async fn call(method: &str, uri: &str) -> (StatusCode, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let app = wharf_origin::app::app(state(dir.path()));
    let response = app
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

fn code(body: &serde_json::Value) -> &str {
    body["errors"][0]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn base_endpoint_answers_with_the_api_version() {
    let dir = tempfile::tempdir().unwrap();
    let app = wharf_origin::app::app(state(dir.path()));
    let response = app
        .oneshot(Request::get("/v2/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
}

#[tokio::test]
async fn bad_requests_get_oci_errors_with_the_right_status() {
    let digest = format!("sha256:{}", "a".repeat(64));
    let cases = [
        (
            "GET",
            "/v2/Bad_Name/manifests/latest".to_owned(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "GET",
            "/v2/ghcr.io/o/i/blobs/sha256:xyz".to_owned(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            "PUT",
            "/v2/ghcr.io/o/i/manifests/latest".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            "POST",
            "/v2/ghcr.io/o/i/blobs/uploads/".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            "GET",
            format!("/v2/quay.io/o/i/blobs/{digest}"),
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
        (
            "GET",
            "/v2/ghcr.io/o/i/nothing".to_owned(),
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
    ];
    for (method, uri, status, want) in cases {
        let (got_status, body) = call(method, &uri).await;
        assert_eq!(got_status, status, "{method} {uri}: {body}");
        assert_eq!(code(&body), want, "{method} {uri}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or("");
        assert!(
            !message.is_empty(),
            "{method} {uri}: error without a message"
        );
    }
}

/// The answer names the rule the client pulled through and what to do, but
/// not the upstream's address or what the transport said (issue 12).
#[tokio::test]
async fn unreachable_upstream_and_store_give_unavailable_naming_the_upstream() {
    let (status, body) = call("GET", "/v2/ghcr.io/o/i/manifests/latest").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(code(&body), "UNAVAILABLE");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("ghcr.io") && message.contains("retry later"),
        "{message}"
    );
    let text = body.to_string();
    for secret in ["127.0.0.1:9", "http://", "refused", "error sending"] {
        assert!(!text.contains(secret), "{secret:?} in {text}");
    }
}

#[tokio::test]
async fn readiness_fails_when_the_store_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let app = wharf_origin::app::app(state(dir.path()));
    let response = app
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["checks"]["store"]["ok"], false);
    assert_eq!(v["status"], "down");
    // Whether, never what: no bucket, endpoint, path or store error text.
    let text = v.to_string();
    let dir = dir.path().display().to_string();
    for secret in ["wharf", "127.0.0.1", "http://", dir.as_str()] {
        assert!(!text.contains(secret), "{secret:?} in /readyz: {text}");
    }
}

/// An endpoint that accepts connections and never answers: whatever the
/// origin asks there stays in progress.
async fn stalled_endpoint() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

async fn send(app: &wharf_origin::app::App, uri: &str) -> axum::response::Response {
    app.clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn error_code(response: axum::response::Response) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    code(&body).to_owned()
}

#[tokio::test]
async fn manifest_requests_past_the_limit_are_shed_and_slow_ones_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, stall) = stalled_endpoint().await;
    let limits = LimitSettings {
        api_concurrency: 1,
        api_timeout: Duration::from_millis(1500),
        blob_concurrency: 8,
        ..LimitSettings::default()
    };
    let app = wharf_origin::app::app(state_with(dir.path(), &endpoint, limits));
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, "/v2/ghcr.io/o/i/manifests/latest").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The one allowed manifest request is waiting on the upstream: the
    // next one (another repository, so not the same flight) is refused at
    // once, with a retry hint.
    let shed = send(&app, "/v2/ghcr.io/o/other/manifests/latest").await;
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.headers()["retry-after"], "1");
    assert_eq!(error_code(shed).await, "UNAVAILABLE");
    // `/v2/` is never limited.
    assert_eq!(send(&app, "/v2/").await.status(), StatusCode::OK);
    let first = first.await.unwrap();
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.headers()["retry-after"], "1");
    let body = first.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("took longer than 1s"), "{text}");
    // The permit went with the timed-out request.
    let again = tokio::spawn({
        let app = app.clone();
        async move { send(&app, "/v2/ghcr.io/o/i/manifests/latest").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !again.is_finished(),
        "a request after the timeout is admitted"
    );
    again.abort();
    stall.abort();
}

#[tokio::test]
async fn blob_requests_past_the_limit_are_shed() {
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, stall) = stalled_endpoint().await;
    let limits = LimitSettings {
        api_concurrency: 8,
        api_timeout: Duration::from_secs(60),
        blob_concurrency: 1,
        ..LimitSettings::default()
    };
    let app = wharf_origin::app::app(state_with(dir.path(), &endpoint, limits));
    let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let first = tokio::spawn({
        let app = app.clone();
        let uri = format!("/v2/ghcr.io/o/i/blobs/{}", digest('a'));
        async move { send(&app, &uri).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !first.is_finished(),
        "the first blob request waits on the store"
    );
    let shed = send(&app, &format!("/v2/ghcr.io/o/i/blobs/{}", digest('b'))).await;
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.headers()["retry-after"], "1");
    assert_eq!(error_code(shed).await, "UNAVAILABLE");
    // Manifest requests have their own limit.
    let manifest = tokio::spawn({
        let app = app.clone();
        async move { send(&app, "/v2/ghcr.io/o/i/manifests/latest").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!manifest.is_finished(), "a manifest request is admitted");
    manifest.abort();
    // A blob's permit is released when its request goes away.
    first.abort();
    let _ = first.await;
    let next = tokio::spawn({
        let app = app.clone();
        let uri = format!("/v2/ghcr.io/o/i/blobs/{}", digest('c'));
        async move { send(&app, &uri).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !next.is_finished(),
        "a blob request after the first ended is admitted"
    );
    next.abort();
    stall.abort();
}

#[tokio::test]
async fn the_admin_api_is_off_unless_its_token_is_set() {
    let (status, body) = call("POST", "/admin/gc?dry_run=true").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(&body), "DENIED");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("WHARF_ADMIN_TOKEN"), "{message}");
}
