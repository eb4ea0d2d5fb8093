//! `GET /v2/<name>/tags/list`: one page of the upstream's list, cached
//! briefly (see [`crate::tags`]).

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use wharf_core::RepositoryName;
use wharf_core::headers::X_WHARF_CACHE;

use crate::error::Result;
use crate::metrics;
use crate::state::{AppState, Target};

/// Answers a tag-list request.
pub async fn get(
    state: &AppState,
    head: bool,
    target: &Target,
    name: &RepositoryName,
    n: Option<u32>,
    last: Option<String>,
) -> Result<Response> {
    let (page, source) = state
        .tag_lists
        .list(target, name, n, last.as_deref())
        .await?;
    metrics::request("tags", source.as_str());
    let len = page.body.len();
    let mut response = Response::new(if head {
        Body::empty()
    } else {
        Body::from(page.body)
    });
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(X_WHARF_CACHE, HeaderValue::from_static(source.as_str()));
    if let Some(link) = page
        .link
        .as_deref()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        h.insert(header::LINK, link);
    }
    Ok(response)
}
