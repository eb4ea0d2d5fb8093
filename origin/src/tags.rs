//! `tags/list`: the upstream's whole list, kept briefly, paged by the cache.
//!
//! A miss reads the repository's whole tag list from the upstream, following
//! the upstream's own `Link` pages (bounded in pages and bytes), and keeps it
//! for a short TTL (default 30 s) keyed by the canonical repository; every
//! page a client asks for (`n`, `last`) is cut from that one list by the
//! core's [`wharf_core::tags::page`], so pagination follows the spec whatever
//! the upstream does with `n` and `last`. When the upstream fails, the last
//! list is served however old, marked stale.
//!
//! Memory is bounded in bytes, not entries: the lists share a byte budget
//! ([`BUDGET_BYTES`]) and the least recently used are dropped first.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::Method;
use wharf_core::RepositoryName;
use wharf_core::tags::{self, next_link, normalise, page, upstream_next};

use crate::bounded::ByteLru;
use crate::error::{Error, Result};
use crate::manifests::read_limited;
use crate::state::Target;
use crate::upstream::UpstreamError;

/// Largest tag list (all of its upstream pages together) accepted from an
/// upstream.
const MAX_TAG_LIST_BYTES: usize = 8 << 20;
/// Most upstream pages followed for one list.
const MAX_UPSTREAM_PAGES: usize = 100;
/// Memory all kept lists may take together (their tags' bytes plus a
/// per-tag overhead).
pub const BUDGET_BYTES: usize = 32 << 20;
/// What one tag costs beyond its bytes (a `String` in a `Vec`).
const PER_TAG_OVERHEAD: usize = 32;

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

/// One page of a tag list, ready to send.
pub struct TagPage {
    /// The JSON body, naming the repository as the client did.
    pub body: Bytes,
    /// `Link` to the next page, when there is one.
    pub link: Option<String>,
}

/// A repository's whole tag list, sorted.
struct Entry {
    tags: Arc<Vec<String>>,
    fetched: Instant,
}

/// The process's tag-list cache.
pub struct TagLists {
    ttl: Duration,
    lists: Mutex<ByteLru<Entry>>,
}

impl TagLists {
    /// A cache whose lists are fresh for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self::with_budget(ttl, BUDGET_BYTES)
    }

    /// A cache whose lists together take at most `budget` bytes.
    pub fn with_budget(ttl: Duration, budget: usize) -> Self {
        Self {
            ttl,
            lists: Mutex::new(ByteLru::new(budget)),
        }
    }

    /// One page (`n`, `last`) of `target`'s tag list, for the repository as
    /// the client named it (`name`): from a fresh list in this cache, else
    /// from the upstream, else (the upstream failing) the last list, however
    /// old.
    pub async fn list(
        &self,
        target: &Target,
        name: &RepositoryName,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<(TagPage, Source)> {
        let key = target.canonical.to_string();
        let (tags, source) = match self.get(&key, false) {
            Some(tags) => (tags, Source::Hit),
            None => match fetch(target, name).await {
                Ok(tags) => (self.put(key, tags), Source::Miss),
                Err(e @ Error::Upstream { .. }) => match self.get(&key, true) {
                    Some(tags) => {
                        tracing::warn!(repo = %target.canonical, error = %e, "upstream failed; serving the last tag list");
                        (tags, Source::Stale)
                    }
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            },
        };
        let p = page(&tags, n, last);
        let link = match (n, p.next_last) {
            (Some(n), Some(next)) => Some(next_link(name.as_str(), n, next)),
            _ => None,
        };
        let body = Bytes::from(tags::render(name.as_str(), p.tags));
        Ok((TagPage { body, link }, source))
    }

    /// A fresh list for `key`, or (with `stale_ok`) any list.
    fn get(&self, key: &str, stale_ok: bool) -> Option<Arc<Vec<String>>> {
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        lists
            .get(key)
            .filter(|e| stale_ok || e.fetched.elapsed() < self.ttl)
            .map(|e| e.tags.clone())
    }

    /// Keeps `tags` for `key`, dropping the least recently used lists past
    /// the budget (a list larger than the whole budget is served, not kept).
    fn put(&self, key: String, tags: Vec<String>) -> Arc<Vec<String>> {
        let bytes = tags.iter().map(|t| t.len() + PER_TAG_OVERHEAD).sum();
        let tags = Arc::new(tags);
        let entry = Entry {
            tags: tags.clone(),
            fetched: Instant::now(),
        };
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        lists.put(key, entry, bytes);
        tags
    }

    /// Bytes the kept lists take.
    pub fn bytes(&self) -> usize {
        self.lists.lock().unwrap_or_else(|e| e.into_inner()).bytes()
    }
}

/// `target`'s whole tag list from its upstream: every page, sorted.
async fn fetch(target: &Target, name: &RepositoryName) -> Result<Vec<String>> {
    let registry = || target.upstream.registry().to_owned();
    let bad = |reason: String| Error::Upstream {
        registry: registry(),
        source: UpstreamError::Body(reason),
    };
    let prefix = format!("/v2/{}/", target.upstream_repo);
    let mut tail = "tags/list".to_owned();
    let (mut all, mut read) = (Vec::new(), 0);
    for _ in 0..MAX_UPSTREAM_PAGES {
        let response = target.send(Method::GET, &tail, Default::default()).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(Error::RepositoryUnknown {
                name: name.to_string(),
                registry: registry(),
            });
        }
        let next = response
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(upstream_next);
        let body = read_limited(response, MAX_TAG_LIST_BYTES - read)
            .await
            .map_err(|source| Error::Upstream {
                registry: registry(),
                source,
            })?;
        read += body.len();
        all.extend(tags::parse(&body).map_err(bad)?);
        // The next page of the same repository only.
        match next.as_deref().and_then(|n| n.strip_prefix(&prefix)) {
            Some(next) if next.starts_with("tags/list") => tail = next.to_owned(),
            _ => return Ok(normalise(all)),
        }
    }
    Err(bad(format!(
        "tag list longer than {MAX_UPSTREAM_PAGES} pages"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(n: usize, prefix: &str) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i:04}")).collect()
    }

    #[test]
    fn lists_expire_but_stay_available_as_stale() {
        let lists = TagLists::new(Duration::from_millis(0));
        lists.put("k".into(), list(2, "v"));
        assert!(lists.get("k", false).is_none());
        assert_eq!(lists.get("k", true).unwrap().len(), 2);
    }

    #[test]
    fn lists_are_bounded_in_bytes_least_recently_used_first() {
        // Each list: key (1 byte) + 10 tags × (5 + 32) bytes = 371 bytes.
        let lists = TagLists::with_budget(Duration::from_secs(60), 1000);
        lists.put("a".into(), list(10, "a"));
        lists.put("b".into(), list(10, "b"));
        assert_eq!(lists.bytes(), 742);
        // Using `a` makes `b` the least recently used.
        assert!(lists.get("a", false).is_some());
        lists.put("c".into(), list(10, "c"));
        assert!(lists.get("b", true).is_none(), "b was evicted");
        assert!(lists.get("a", true).is_some() && lists.get("c", true).is_some());
        assert_eq!(lists.bytes(), 742);
        // Replacing a list does not count it twice.
        lists.put("c".into(), list(10, "d"));
        assert_eq!(lists.bytes(), 742);
        // A list larger than the budget is not kept, and evicts nothing.
        lists.put("huge".into(), list(100, "h"));
        assert!(lists.get("huge", true).is_none());
        assert_eq!(lists.bytes(), 742);
    }
}
