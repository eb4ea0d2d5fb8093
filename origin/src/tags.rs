//! `tags/list`: passed through to the upstream, reused briefly.
//!
//! Tag lists change often and cost one upstream request each, so answers are
//! kept for a short TTL (default 30 s) and reused; when the upstream fails,
//! the last answer is served however old, marked stale. The body's `name` and
//! the pagination `Link` are rewritten to the repository name the client
//! used, so that clients follow pages through the cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::Method;
use wharf_core::RepositoryName;

use crate::error::{Error, Result};
use crate::manifests::read_limited;
use crate::state::Target;

/// Largest tag list accepted from an upstream.
const MAX_TAG_LIST_BYTES: usize = 8 << 20;

/// How a tag list was answered (the `X-Wharf-Cache` value and the
/// request metric's result).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Fresh from this cache.
    Hit,
    /// Fetched from the upstream now.
    Miss,
    /// The upstream failed; the last answer, however old.
    Stale,
}

impl Source {
    /// The header value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Hit => "hit",
            Source::Miss => "miss",
            Source::Stale => "stale",
        }
    }
}

/// A cached upstream answer.
#[derive(Clone)]
pub struct TagList {
    /// JSON body, already rewritten for the client's name.
    pub body: Bytes,
    /// Rewritten `Link` header, if the upstream paginated.
    pub link: Option<String>,
    fetched: Instant,
}

/// The process's tag-list cache.
pub struct TagLists {
    ttl: Duration,
    entries: Mutex<HashMap<String, TagList>>,
}

impl TagLists {
    /// A cache whose entries are fresh for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh entry for `key`, or (with `stale_ok`) any entry.
    pub fn get(&self, key: &str, stale_ok: bool) -> Option<TagList> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|e| stale_ok || e.fetched.elapsed() < self.ttl)
            .cloned()
    }

    /// The tag list of `target` as the client named it (`name`), one page
    /// (`n`, `last`) of it: fresh from this cache, else from the upstream,
    /// else (the upstream failing) the last answer, however old.
    pub async fn list(
        &self,
        target: &Target,
        name: &RepositoryName,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<(TagList, Source)> {
        let query = page_query(n, last);
        let key = format!("{}?{query}|{name}", target.canonical);
        if let Some(list) = self.get(&key, false) {
            return Ok((list, Source::Hit));
        }
        match self.fetch(target, name, &query, key.clone()).await {
            Ok(list) => Ok((list, Source::Miss)),
            Err(e @ Error::Upstream { .. }) => match self.get(&key, true) {
                Some(list) => {
                    tracing::warn!(repo = %target.canonical, error = %e, "upstream failed; serving the last tag list");
                    Ok((list, Source::Stale))
                }
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    async fn fetch(
        &self,
        target: &Target,
        name: &RepositoryName,
        query: &str,
        key: String,
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
        Ok(self.put(key, rewrite_body(&body, name.as_str()), link))
    }

    /// Stores an answer.
    pub fn put(&self, key: String, body: Bytes, link: Option<String>) -> TagList {
        let entry = TagList {
            body,
            link,
            fetched: Instant::now(),
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() > 10_000 {
            entries.clear();
        }
        entries.insert(key, entry.clone());
        entry
    }
}

/// The query string of one page of a tag list (`n=…&last=…`, either may be
/// absent), as sent upstream and as part of the cache key.
fn page_query(n: Option<u32>, last: Option<&str>) -> String {
    let mut query = Vec::new();
    if let Some(n) = n {
        query.push(format!("n={n}"));
    }
    if let Some(last) = last {
        query.push(format!(
            "last={}",
            wharf_core::urlencode::encode_component(last)
        ));
    }
    query.join("&")
}

/// Rewrites an upstream `tags/list` body for the client's repository name.
/// Bodies that are not the expected JSON are passed through unchanged.
pub fn rewrite_body(body: &[u8], client_name: &str) -> Bytes {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.insert(
                "name".into(),
                serde_json::Value::String(client_name.to_owned()),
            );
            serde_json::to_vec(&map)
                .map(Bytes::from)
                .unwrap_or_else(|_| Bytes::copy_from_slice(body))
        }
        _ => Bytes::copy_from_slice(body),
    }
}

/// Rewrites `</v2/<upstream>/tags/list?…>; rel="next"` to the client's name.
pub fn rewrite_link(link: &str, upstream_name: &str, client_name: &str) -> String {
    link.replace(
        &format!("/v2/{upstream_name}/tags/list"),
        &format!("/v2/{client_name}/tags/list"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_queries_carry_n_and_an_encoded_last() {
        assert_eq!(page_query(None, None), "");
        assert_eq!(page_query(Some(10), None), "n=10");
        assert_eq!(page_query(None, Some("v1")), "last=v1");
        assert_eq!(page_query(Some(2), Some("a b&c")), "n=2&last=a%20b%26c");
    }

    #[test]
    fn names_and_links_are_rewritten_for_the_client() {
        let body = rewrite_body(
            br#"{"name":"library/alpine","tags":["3.19","3.20"]}"#,
            "docker.io/library/alpine",
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["name"], "docker.io/library/alpine");
        assert_eq!(v["tags"][1], "3.20");
        assert_eq!(
            rewrite_link(
                r#"</v2/library/alpine/tags/list?last=3.20&n=2>; rel="next""#,
                "library/alpine",
                "docker.io/library/alpine"
            ),
            r#"</v2/docker.io/library/alpine/tags/list?last=3.20&n=2>; rel="next""#
        );
    }

    #[test]
    fn entries_expire_but_stay_available_as_stale() {
        let lists = TagLists::new(Duration::from_millis(0));
        lists.put("k".into(), Bytes::from_static(b"{}"), None);
        assert!(lists.get("k", false).is_none());
        assert!(lists.get("k", true).is_some());
    }
}
