//! Secrets and exposure at the edge, under `wrangler dev --local` (issue 12):
//!
//! * a user whose `WHARF_USERS` entry is what `wharf-origin hash-password`
//!   printed signs in: the Worker's WebCrypto PBKDF2 and the native one agree;
//!   the figures printed are the cost of a signed-in `/token` against an
//!   anonymous one (the module doc of `wharf_core::password` quotes them);
//! * repeated failed sign-ins get `429 TOOMANYREQUESTS` with a `Retry-After`
//!   that doubles, without the password being looked at; anonymous tokens are
//!   not affected, and the user signs in once the delay has passed;
//! * an error answer does not carry the origin's address.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use wharf_tests::edge::{EdgeStack, GLOBAL_HOST, PRIVATE_PREFIX, USER};
use wharf_tests::no_redirect_client as client;

async fn token_request(es: &EdgeStack, creds: Option<(&str, &str)>) -> reqwest::Response {
    let mut req = client().get(format!("{}/token", es.edge.url())).query(&[
        ("service", GLOBAL_HOST),
        (
            "scope",
            &format!("repository:{PRIVATE_PREFIX}/team/app:pull"),
        ),
    ]);
    if let Some((u, p)) = creds {
        req = req.basic_auth(u, Some(p));
    }
    req.send().await.unwrap()
}

/// Status, OCI code and `Retry-After` of a `/token` answer.
async fn outcome(r: reqwest::Response) -> (u16, String, Option<u64>) {
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    let code = body["errors"][0]["code"].as_str().unwrap_or("").to_owned();
    (status, code, retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_passwords_sign_in_and_repeated_failures_are_slowed_down() {
    let es = EdgeStack::start("edge-signin", Duration::from_secs(300))
        .await
        .unwrap();

    // The stored form came from `wharf-origin hash-password`; the Worker
    // derives with WebCrypto and must agree.
    let r = token_request(&es, Some(USER)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["token"].as_str().is_some_and(|t| !t.is_empty()));

    // Cost of a sign-in: N signed-in against N anonymous token requests.
    const N: u32 = 10;
    let mut timings = Vec::new();
    for creds in [None, Some(USER)] {
        let started = Instant::now();
        for _ in 0..N {
            assert_eq!(token_request(&es, creds).await.status(), StatusCode::OK);
        }
        timings.push(started.elapsed() / N);
    }
    eprintln!(
        "/token under wrangler dev, mean of {N}: anonymous {:?}, signed in (PBKDF2-SHA256, 100000 iterations) {:?}, difference {:?}",
        timings[0],
        timings[1],
        timings[1].saturating_sub(timings[0])
    );

    // Five failures are free…
    let wrong = (USER.0, "not-the-password");
    for i in 1..=5 {
        let got = outcome(token_request(&es, Some(wrong)).await).await;
        assert_eq!(got, (401, "UNAUTHORIZED".into(), None), "failure {i}");
    }
    // …then the client waits, even with the right password, which is not
    // looked at; an unknown user from the same client waits too.
    let started = Instant::now();
    for creds in [wrong, USER, ("mallory", "x")] {
        let got = outcome(token_request(&es, Some(creds)).await).await;
        assert_eq!(got, (429, "TOOMANYREQUESTS".into(), Some(1)), "{creds:?}");
    }
    // Anonymous tokens are not throttled.
    assert_eq!(token_request(&es, None).await.status(), StatusCode::OK);

    // After the delay one more failure doubles it.
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(started.elapsed())).await;
    let got = outcome(token_request(&es, Some(wrong)).await).await;
    assert_eq!(got.0, 401, "{got:?}");
    let got = outcome(token_request(&es, Some(USER)).await).await;
    assert_eq!(got, (429, "TOOMANYREQUESTS".into(), Some(2)));

    // Once it has passed, the right password signs in.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        token_request(&es, Some(USER)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_origin_is_reported_without_its_address() {
    let es = EdgeStack::start("edge-exposure", Duration::from_secs(300))
        .await
        .unwrap();
    let origin = es.origin_proxy.url();
    es.origin_proxy.stop().await;
    let token = {
        let r = client()
            .get(format!("{}/token", es.edge.url()))
            .query(&[("scope", "repository:up/app:pull")])
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        v["token"].as_str().unwrap().to_owned()
    };
    let r = client()
        .get(format!("{}/v2/up/app/manifests/v1", es.edge.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert!(status.is_server_error(), "{status} {body}");
    assert!(body.contains("UNAVAILABLE"), "{body}");
    let host = origin.trim_start_matches("http://");
    assert!(
        !body.contains(host),
        "the answer names the origin {host}: {body}"
    );
}
