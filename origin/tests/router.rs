//! Router tests through `app()` with `oneshot`: request parsing, rule
//! resolution and the OCI error shape, none of which touch the network.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use wharf_origin::config::{Config, Rule, Storage};
use wharf_origin::state::AppState;
use wharf_origin::store::{S3Settings, Store};
use wharf_origin::upstream::Timeouts;

fn state(spool: &std::path::Path) -> AppState {
    let s3 = S3Settings {
        // Nothing listens here: these tests must not reach the store.
        endpoint: "http://127.0.0.1:9".into(),
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
            upstream: "http://127.0.0.1:9".into(),
            credentials: None,
            freshness: Default::default(),
            private: false,
            replicate: false,
            redirect_hosts: Vec::new(),
        }],
        upstream_timeouts: Timeouts {
            connect: Duration::from_secs(1),
            response: Duration::from_secs(1),
            idle_read: Duration::from_secs(1),
        },
        shutdown_grace: Duration::from_secs(1),
        tags_list_ttl: Duration::from_secs(1),
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
