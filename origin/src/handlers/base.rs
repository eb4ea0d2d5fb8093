//! `GET /v2/`: the API version check every client starts with.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wharf_core::headers::{API_VERSION_VALUE, DOCKER_DISTRIBUTION_API_VERSION};

use crate::metrics;

/// `200 {}` with the distribution API version header.
pub fn get() -> Response {
    metrics::request("base", "hit");
    let mut response = (StatusCode::OK, "{}").into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        DOCKER_DISTRIBUTION_API_VERSION,
        HeaderValue::from_static(API_VERSION_VALUE),
    );
    response
}
