//! Tag lists (`GET /v2/<name>/tags/list`): pagination as the distribution
//! spec defines it, applied by the cache to the upstream's full list.
//!
//! # Key decisions
//!
//! * The cache answers `n` and `last` itself, from the whole list it read
//!   from the upstream (following the upstream's own `Link` pages), because
//!   upstreams disagree: Distribution 2.8 ignores both, others cap `n`.
//!   A client that pages through the cache gets the spec's behaviour from
//!   every upstream, and one cached list serves every page.
//! * Tags are in lexical (byte) order, as the spec requires for paginated
//!   answers; duplicates across upstream pages are dropped.
//! * `n = 0` is an empty page without a `Link` (spec); a page that ends
//!   before the list does carries `Link: <…?n=N&last=T>; rel="next"`, where
//!   `T` is the page's last tag.
//! * An upstream body whose `tags` is `null` (Distribution, for a
//!   repository without tags) is an empty list; a body that is not a tag
//!   list is refused, never passed through.

use serde::{Deserialize, Serialize};

use crate::urlencode::encode_component;

/// One page of a tag list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<'a> {
    /// The page's tags, in order.
    pub tags: &'a [String],
    /// The `last` of the next page, when there is one.
    pub next_last: Option<&'a str>,
}

/// The page of `sorted` (sorted and deduplicated) after `last`, at most `n`
/// long.
pub fn page<'a>(sorted: &'a [String], n: Option<u32>, last: Option<&str>) -> Page<'a> {
    let start = match last {
        Some(last) => sorted.partition_point(|t| t.as_str() <= last),
        None => 0,
    };
    let rest = &sorted[start..];
    let len = n.map_or(rest.len(), |n| rest.len().min(n as usize));
    let tags = &rest[..len];
    let next_last = match (n, tags.last()) {
        (Some(_), Some(t)) if len < rest.len() => Some(t.as_str()),
        _ => None,
    };
    Page { tags, next_last }
}

/// The `Link` header value that points at the page after `last`.
pub fn next_link(client_name: &str, n: u32, last: &str) -> String {
    format!(
        "</v2/{client_name}/tags/list?n={n}&last={}>; rel=\"next\"",
        encode_component(last)
    )
}

/// The body of a tag-list answer.
pub fn render(client_name: &str, tags: &[String]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        name: &'a str,
        tags: &'a [String],
    }
    // Serialising a struct of strings cannot fail.
    serde_json::to_vec(&Body {
        name: client_name,
        tags,
    })
    .unwrap_or_default()
}

/// The tags of an upstream's tag-list body.
pub fn parse(body: &[u8]) -> Result<Vec<String>, String> {
    #[derive(Deserialize)]
    struct Body {
        tags: Option<Vec<String>>,
    }
    serde_json::from_slice::<Body>(body)
        .map(|b| b.tags.unwrap_or_default())
        .map_err(|e| format!("not a tag list: {e}"))
}

/// Sorts and deduplicates tags gathered from upstream pages.
pub fn normalise(mut tags: Vec<String>) -> Vec<String> {
    tags.sort_unstable();
    tags.dedup();
    tags
}

/// The path and query of the next upstream page from its `Link` header
/// (`<…>; rel="next"`), when it points under `/v2/` on the same registry.
/// An absolute URL keeps only its path and query: the next page is asked of
/// the same upstream, never of a host the header names.
pub fn upstream_next(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().to_ascii_lowercase();
            p == "rel=\"next\"" || p == "rel=next"
        });
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let path = match target.find("://") {
            Some(i) => &target[i + 3..][target[i + 3..].find('/')?..],
            None => target,
        };
        (is_next && path.starts_with("/v2/")).then(|| path.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn pages_follow_the_spec() {
        let all = tags(&["a", "b", "c", "d", "e"]);
        // n, last → the page, the next page's last.
        type Case<'a> = (Option<u32>, Option<&'a str>, &'a [&'a str], Option<&'a str>);
        let cases: &[Case] = &[
            (None, None, &["a", "b", "c", "d", "e"], None),
            (Some(2), None, &["a", "b"], Some("b")),
            (Some(2), Some("b"), &["c", "d"], Some("d")),
            (Some(2), Some("d"), &["e"], None),
            (Some(5), None, &["a", "b", "c", "d", "e"], None),
            (Some(9), None, &["a", "b", "c", "d", "e"], None),
            (Some(0), None, &[], None),
            (None, Some("c"), &["d", "e"], None),
            // `last` need not be a tag of the list.
            (Some(1), Some("bb"), &["c"], Some("c")),
            (Some(3), Some("zz"), &[], None),
            (Some(3), Some(""), &["a", "b", "c"], Some("c")),
        ];
        for (n, last, want, next) in cases {
            let p = page(&all, *n, *last);
            assert_eq!(p.tags, tags(want).as_slice(), "n={n:?} last={last:?}");
            assert_eq!(p.next_last, *next, "n={n:?} last={last:?}");
        }
    }

    #[test]
    fn links_and_bodies_are_what_clients_follow() {
        assert_eq!(
            next_link("docker.io/library/alpine", 2, "3.19"),
            "</v2/docker.io/library/alpine/tags/list?n=2&last=3.19>; rel=\"next\""
        );
        assert_eq!(
            next_link("r", 1, "a b&c"),
            "</v2/r/tags/list?n=1&last=a%20b%26c>; rel=\"next\""
        );
        assert_eq!(
            render("up/app", &tags(&["a", "b"])),
            br#"{"name":"up/app","tags":["a","b"]}"#
        );
    }

    #[test]
    fn upstream_bodies_are_tag_lists_or_refused() {
        assert_eq!(
            parse(br#"{"name":"x","tags":["b","a"]}"#),
            Ok(tags(&["b", "a"]))
        );
        assert_eq!(parse(br#"{"name":"x","tags":null}"#), Ok(vec![]));
        assert_eq!(parse(br#"{"name":"x"}"#), Ok(vec![]));
        assert!(parse(br#"{"tags":[1]}"#).is_err());
        assert!(parse(b"<html>").is_err());
        assert_eq!(normalise(tags(&["b", "a", "b"])), tags(&["a", "b"]));
    }

    #[test]
    fn the_next_upstream_page_stays_on_the_upstream() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "</v2/lib/app/tags/list?n=100&last=v9>; rel=\"next\"",
                Some("/v2/lib/app/tags/list?n=100&last=v9"),
            ),
            (
                "<https://other.example/v2/lib/app/tags/list?last=v9>; rel=next",
                Some("/v2/lib/app/tags/list?last=v9"),
            ),
            ("</v2/a/tags/list?last=x>; rel=\"prev\"", None),
            ("</etc/passwd>; rel=\"next\"", None),
            ("garbage", None),
            ("<https://host>; rel=\"next\"", None),
        ];
        for (link, want) in cases {
            assert_eq!(upstream_next(link).as_deref(), *want, "{link}");
        }
    }
}
