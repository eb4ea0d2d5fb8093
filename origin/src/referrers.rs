//! Referrers: passed through to the upstream; when the upstream predates the
//! referrers API (404), the distribution spec's fallback tag is consulted
//! (`wharf_core::referrers`), and an empty index is the answer when that
//! does not exist either. Not cached: referrers change as signatures and
//! SBOMs are attached, and clients ask for them rarely.

use bytes::Bytes;
use reqwest::Method;
use wharf_core::Digest;
use wharf_core::headers::OCI_FILTERS_APPLIED;
use wharf_core::referrers::{EMPTY_INDEX, OCI_INDEX, fallback_tag, filter_by_artifact_type};

use crate::error::{Error, Result};
use crate::manifests::read_limited;
use crate::state::Target;

/// Largest referrers index accepted from an upstream.
const MAX_REFERRERS_BYTES: usize = 4 << 20;

/// A referrers answer.
pub struct Referrers {
    /// The image index (media type [`OCI_INDEX`]).
    pub body: Bytes,
    /// The filters applied to it (`OCI-Filters-Applied`), if any.
    pub filters_applied: Option<String>,
}

/// The referrers of `subject` in `target`'s upstream, filtered by
/// `artifact_type` when given.
pub async fn fetch(
    target: &Target,
    subject: &Digest,
    artifact_type: Option<&str>,
) -> Result<Referrers> {
    let mut tail = format!("referrers/{subject}");
    if let Some(t) = artifact_type {
        tail.push_str(&format!(
            "?artifactType={}",
            wharf_core::urlencode::encode_component(t)
        ));
    }
    let mut accept = reqwest::header::HeaderMap::new();
    accept.insert(
        reqwest::header::ACCEPT,
        reqwest::header::HeaderValue::from_static(OCI_INDEX),
    );
    let response = target.send(Method::GET, &tail, accept.clone()).await?;
    if response.status() != reqwest::StatusCode::NOT_FOUND {
        let filters_applied = response
            .headers()
            .get(OCI_FILTERS_APPLIED)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        return Ok(Referrers {
            body: read(target, response).await?,
            filters_applied,
        });
    }
    let fallback = format!("manifests/{}", fallback_tag(subject));
    let response = target.send(Method::GET, &fallback, accept).await?;
    let body = match response.status() {
        reqwest::StatusCode::NOT_FOUND => Bytes::from_static(EMPTY_INDEX),
        _ => read(target, response).await?,
    };
    Ok(
        match artifact_type.and_then(|t| filter_by_artifact_type(&body, t)) {
            Some(filtered) => Referrers {
                body: Bytes::from(filtered),
                filters_applied: Some("artifactType".to_owned()),
            },
            None => Referrers {
                body,
                filters_applied: None,
            },
        },
    )
}

async fn read(target: &Target, response: reqwest::Response) -> Result<Bytes> {
    read_limited(response, MAX_REFERRERS_BYTES)
        .await
        .map_err(|source| Error::Upstream {
            registry: target.upstream.registry().to_owned(),
            source,
        })
}
