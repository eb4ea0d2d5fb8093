//! Serve now, hydrate for later: a client that walks away mid-download does
//! not stop the hydration, and the blob is then served from the store with
//! no further upstream request. Also the pass-through endpoints (tags list
//! with pagination, referrers with the fallback tag schema).

use std::time::Duration;

use futures::StreamExt;
use wharf_tests::{ImageSpec, Kind, Stack, http_client, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hydration_completes_after_the_first_client_disconnects() {
    let s = Stack::start("hydration-outlives-client").await.unwrap();
    let img = ImageSpec::oci(&[48 << 20])
        .push(&s.upstream, "team/big", "v1")
        .await
        .unwrap();
    let (layer, size) = img.blobs().last().cloned().unwrap();
    let url = format!("{}/v2/{}/blobs/{layer}", s.base(), s.repo("team/big"));
    let http = http_client();

    // Read one chunk, then hang up.
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(body);

    // The hydration still commits the blob to the store.
    wait_until(
        "the abandoned blob to be committed",
        Duration::from_secs(60),
        || async {
            let committed = s
                .origin
                .metric(
                    "wharf_hydration_duration_seconds_count",
                    &[("outcome", "committed")],
                )
                .await
                .unwrap_or(0.0);
            Ok(committed >= 1.0)
        },
    )
    .await
    .unwrap();

    // A later client is served whole from the store: still one upstream GET.
    let bytes = http.get(&url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, size);
    assert_eq!(wharf_tests::sha256_digest(&bytes), layer);
    let counts = s.upstream.counts();
    assert_eq!(counts.for_path("GET", Kind::Blob, &layer), 1, "{counts}");
    let hits = s
        .origin
        .metric(
            "wharf_requests_total",
            &[("kind", "blob"), ("result", "hit")],
        )
        .await
        .unwrap();
    assert!(hits >= 1.0, "the second request was not a store hit");
}

/// Issue 14: `n` and `last` as the distribution spec defines them, with
/// `Link` pagination, although Distribution (the upstream here) ignores
/// both: the cache pages its own copy of the whole list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_lists_are_paged_by_the_cache_whatever_the_upstream_does() {
    let s = Stack::start("tags-pages").await.unwrap();
    let img = ImageSpec::docker(&[1000])
        .push(&s.upstream, "team/paged", "e")
        .await
        .unwrap();
    for tag in ["c", "a", "d", "b"] {
        wharf_tests::images::retag(&s.upstream, &img, tag)
            .await
            .unwrap();
    }
    let http = http_client();
    let repo = s.repo("team/paged");
    let mut url = format!("{}/v2/{repo}/tags/list?n=2", s.base());
    let mut pages = Vec::new();
    loop {
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let link = r
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_owned());
        let page: serde_json::Value = r.json().await.unwrap();
        assert_eq!(page["name"], repo.as_str());
        pages.push(serde_json::from_value::<Vec<String>>(page["tags"].clone()).unwrap());
        let Some(link) = link else { break };
        let path = link
            .strip_prefix('<')
            .and_then(|l| l.split_once(">; rel=\"next\""))
            .map(|(p, _)| p.to_owned())
            .unwrap_or_else(|| panic!("Link header {link:?}"));
        url = format!("{}{path}", s.base());
        assert!(pages.len() < 10, "pagination does not end");
    }
    assert_eq!(pages, [vec!["a", "b"], vec!["c", "d"], vec!["e"]]);

    let page = |query: &'static str| {
        let url = format!("{}/v2/{repo}/tags/list?{query}", s.base());
        let http = http.clone();
        async move {
            let r = http.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let link = r.headers().contains_key("link");
            let page: serde_json::Value = r.json().await.unwrap();
            let tags: Vec<String> = serde_json::from_value(page["tags"].clone()).unwrap();
            (tags, link)
        }
    };
    assert_eq!(page("n=0").await, (vec![], false));
    assert_eq!(page("last=c").await, (vec!["d".into(), "e".into()], false));
    assert_eq!(page("n=1&last=bb").await, (vec!["c".into()], true));
    // Every page came from one upstream read of the whole list.
    let counts = s.upstream.counts();
    assert_eq!(counts.get("GET", Kind::Tags), 1, "{counts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_lists_pass_through_under_the_clients_name_and_are_reused() {
    let s = Stack::start("tags-list").await.unwrap();
    let img = ImageSpec::docker(&[1000])
        .push(&s.upstream, "team/app", "a")
        .await
        .unwrap();
    for tag in ["b", "c"] {
        wharf_tests::images::retag(&s.upstream, &img, tag)
            .await
            .unwrap();
    }
    let http = http_client();
    let repo = s.repo("team/app");
    let url = format!("{}/v2/{repo}/tags/list?n=50", s.base());
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let page: serde_json::Value = r.json().await.unwrap();
    // The body names the repository as the client asked for it, not as the
    // upstream knows it. (Distribution 2.8 does not paginate tag lists; the
    // Link rewrite is unit-tested in the origin.)
    assert_eq!(page["name"], repo.as_str());
    let mut tags: Vec<String> = serde_json::from_value(page["tags"].clone()).unwrap();
    tags.sort();
    assert_eq!(tags, ["a", "b", "c"]);
    let counts = s.upstream.counts();
    assert_eq!(
        counts.for_path("GET", Kind::Tags, "/v2/team/app/tags/list"),
        1,
        "{counts}"
    );

    // Reused briefly: asking again makes no upstream request.
    s.upstream.reset_counts();
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-wharf-cache"], "hit");
    assert_eq!(
        s.upstream.counts().get("GET", Kind::Tags),
        0,
        "{}",
        s.upstream.counts()
    );

    // An unknown repository is NAME_UNKNOWN, as the upstream says.
    let r = http
        .get(format!("{}/v2/{}/tags/list", s.base(), s.repo("team/none")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "NAME_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_fall_back_to_an_empty_index_when_the_upstream_has_none() {
    let s = Stack::start("referrers").await.unwrap();
    let img = ImageSpec::oci(&[1000])
        .push(&s.upstream, "team/app", "v1")
        .await
        .unwrap();
    let r = http_client()
        .get(format!(
            "{}/v2/{}/referrers/{}",
            s.base(),
            s.repo("team/app"),
            img.manifest_digest
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.index.v1+json"
    );
    let index: serde_json::Value = r.json().await.unwrap();
    assert_eq!(index["manifests"], serde_json::json!([]));
}
