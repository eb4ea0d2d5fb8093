//! `GET /v2/<name>/tags/list`: pass-through with pagination, cached briefly
//! (see [`crate::tags`]).

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use reqwest::Method;
use wharf_core::RepositoryName;
use wharf_core::headers::X_WHARF_CACHE;

use crate::error::{Error, Result};
use crate::manifests::read_limited;
use crate::metrics;
use crate::state::{AppState, Target};
use crate::tags::{TagList, rewrite_body, rewrite_link};

/// Largest tag list accepted from an upstream.
const MAX_TAG_LIST_BYTES: usize = 8 << 20;

/// Answers a tag-list request.
pub async fn get(
    state: &AppState,
    head: bool,
    target: &Target,
    name: &RepositoryName,
    n: Option<u32>,
    last: Option<String>,
) -> Result<Response> {
    let mut query = Vec::new();
    if let Some(n) = n {
        query.push(format!("n={n}"));
    }
    if let Some(last) = &last {
        query.push(format!(
            "last={}",
            wharf_core::urlencode::encode_component(last)
        ));
    }
    let query = query.join("&");
    let key = format!("{}?{query}|{name}", target.canonical);
    let (list, result) = match state.tag_lists.get(&key, false) {
        Some(list) => (list, "hit"),
        None => match fetch(state, target, name, &query, &key).await {
            Ok(list) => (list, "miss"),
            Err(e @ Error::Upstream { .. }) => match state.tag_lists.get(&key, true) {
                Some(list) => {
                    tracing::warn!(repo = %target.canonical, error = %e, "upstream failed; serving the last tag list");
                    (list, "stale")
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        },
    };
    metrics::request("tags", result);
    let len = list.body.len();
    let mut response = Response::new(if head {
        Body::empty()
    } else {
        Body::from(list.body)
    });
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(X_WHARF_CACHE, HeaderValue::from_static(result));
    if let Some(link) = list
        .link
        .as_deref()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        h.insert(header::LINK, link);
    }
    Ok(response)
}

async fn fetch(
    state: &AppState,
    target: &crate::state::Target,
    name: &RepositoryName,
    query: &str,
    key: &str,
) -> Result<TagList> {
    let registry = target.upstream.registry().to_owned();
    let tail = if query.is_empty() {
        "tags/list".to_owned()
    } else {
        format!("tags/list?{query}")
    };
    let response = target.send(Method::GET, &tail, Default::default()).await?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(Error::RepositoryUnknown {
            name: name.to_string(),
            registry,
        });
    }
    let link = response
        .headers()
        .get(reqwest::header::LINK)
        .and_then(|v| v.to_str().ok())
        .map(|l| rewrite_link(l, target.upstream_repo.as_str(), name.as_str()));
    let body = read_limited(response, MAX_TAG_LIST_BYTES)
        .await
        .map_err(|source| Error::Upstream { registry, source })?;
    Ok(state
        .tag_lists
        .put(key.to_owned(), rewrite_body(&body, name.as_str()), link))
}
