//! Upstream timeouts: an upstream that accepts connections but never
//! answers gets a clear OCI error after the response timeout, and one that
//! stalls mid-body fails the hydration after the idle-read timeout (the
//! client's connection is failed, nothing is stored).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wharf_tests::{Origin, OriginOpts, TestDir, http_client};

/// An "upstream" that reads each request and then answers with `reply`
/// (possibly nothing), keeping the connection open.
async fn stalling_upstream(reply: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(reply).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    format!("http://{addr}")
}

async fn origin(name: &str, upstream: String) -> (Origin, TestDir) {
    let dir = TestDir::new(name).unwrap();
    let opts = OriginOpts {
        rules: vec![("slow".into(), upstream)],
        config_toml: Some(
            "[upstream]\nconnect = \"1s\"\nresponse = \"1s\"\nidle_read = \"1s\"\n".into(),
        ),
        ..OriginOpts::default()
    };
    (Origin::start(&dir, opts).await.unwrap(), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_times_out_with_an_oci_error() {
    let (origin, _dir) = origin("timeout-response", stalling_upstream(b"").await).await;
    let started = Instant::now();
    let r = http_client()
        .get(format!("{}/v2/slow/app/manifests/v1", origin.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("no response") && message.contains("slow"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stalls_mid_blob_fails_the_pull_after_the_idle_timeout() {
    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 1000000\r\n\r\npartial body";
    let (origin, _dir) = origin("timeout-idle", stalling_upstream(HEAD).await).await;
    let digest = format!("sha256:{}", "ab".repeat(32));
    let url = format!("{}/v2/slow/app/blobs/{digest}", origin.url());
    let started = Instant::now();
    let result = async { http_client().get(&url).send().await?.bytes().await }.await;
    match result {
        Ok(bytes) => panic!("a stalled blob was served whole ({} bytes)", bytes.len()),
        Err(_) => assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        ),
    }
    assert!(
        origin.log().contains("hydration failed"),
        "{}",
        origin.log_tail(20)
    );
}
