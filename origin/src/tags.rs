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
