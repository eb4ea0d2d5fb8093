//! Parse, then apply: turns method + path + query into a typed [`ApiRequest`].
//!
//! Owns [`ApiMethod`], [`ApiRequest`], [`ApiError`] and [`parse_request`]; the origin
//! and the edge each apply the typed request, one handler per variant.
//!
//! Key decisions:
//! * Read-only: only `GET` and `HEAD` parse. Any other method (a push) is
//!   [`ApiError::MethodNotAllowed`] → `405 UNSUPPORTED`, checked before the path so
//!   that every push endpoint answers the same way.
//! * Repository names contain `/`, so the operation is found from the *end* of the
//!   path: `…/tags/list`, or `…/<manifests|blobs|referrers>/<last segment>`. This is
//!   the same as splitting on the last `/manifests/` etc., and it means upload paths
//!   (`…/blobs/uploads/…`) never parse as blobs.
//! * The path is percent-decoded first (pass the raw path, as `Uri::path()` gives
//!   it), as Go's `net/http` does for Distribution, so `sha256%3A…` works.
//! * Error codes: bad name → `NAME_INVALID`, bad digest → `DIGEST_INVALID`, bad tag →
//!   `MANIFEST_UNKNOWN` (no such manifest can exist), bad `n` →
//!   `PAGINATION_NUMBER_INVALID`, unknown path → `NAME_UNKNOWN` (404).

use crate::digest::{Digest, DigestError, excerpt};
use crate::error::ErrorCode;
use crate::reference::{Reference, ReferenceError, RepositoryName, Tag};
use crate::urlencode::{decode_path, decode_query_component, encode_component};

/// The methods a pull-through cache serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiMethod {
    /// `GET`: headers and body.
    Get,
    /// `HEAD`: headers only.
    Head,
}

impl ApiMethod {
    /// `GET` or `HEAD`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiMethod::Get => "GET",
            ApiMethod::Head => "HEAD",
        }
    }

    /// True for `HEAD`.
    pub fn is_head(self) -> bool {
        self == ApiMethod::Head
    }
}

/// A parsed registry API request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiRequest {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        /// Repository name as the client sent it.
        name: RepositoryName,
        /// Tag or digest.
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        /// Repository name as the client sent it.
        name: RepositoryName,
        /// The blob's digest.
        digest: Digest,
    },
    /// `/v2/<name>/tags/list?n=&last=`.
    TagsList {
        /// Repository name as the client sent it.
        name: RepositoryName,
        /// Page size.
        n: Option<u32>,
        /// Last tag of the previous page.
        last: Option<String>,
    },
    /// `/v2/<name>/referrers/<digest>?artifactType=`.
    Referrers {
        /// Repository name as the client sent it.
        name: RepositoryName,
        /// The subject manifest's digest.
        digest: Digest,
        /// Filter by artifact type.
        artifact_type: Option<String>,
    },
}

impl ApiRequest {
    /// A label for logs and metrics: `base`, `manifest`, `blob`, `tags`, `referrers`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiRequest::Base => "base",
            ApiRequest::Manifest { .. } => "manifest",
            ApiRequest::Blob { .. } => "blob",
            ApiRequest::TagsList { .. } => "tags",
            ApiRequest::Referrers { .. } => "referrers",
        }
    }

    /// The repository name, for everything but [`ApiRequest::Base`].
    pub fn name(&self) -> Option<&RepositoryName> {
        match self {
            ApiRequest::Base => None,
            ApiRequest::Manifest { name, .. }
            | ApiRequest::Blob { name, .. }
            | ApiRequest::TagsList { name, .. }
            | ApiRequest::Referrers { name, .. } => Some(name),
        }
    }

    /// The path (and query, for tags and referrers) of this request with the
    /// repository replaced by `repo` — e.g. the upstream repository from
    /// [`crate::rules::Resolved`]. Query values are percent-encoded.
    pub fn upstream_path(&self, repo: &RepositoryName) -> String {
        match self {
            ApiRequest::Base => "/v2/".to_owned(),
            ApiRequest::Manifest { reference, .. } => format!("/v2/{repo}/manifests/{reference}"),
            ApiRequest::Blob { digest, .. } => format!("/v2/{repo}/blobs/{digest}"),
            ApiRequest::TagsList { n, last, .. } => {
                let mut q = Vec::new();
                if let Some(n) = n {
                    q.push(format!("n={n}"));
                }
                if let Some(last) = last {
                    q.push(format!("last={}", encode_component(last)));
                }
                with_query(format!("/v2/{repo}/tags/list"), &q)
            }
            ApiRequest::Referrers {
                digest,
                artifact_type,
                ..
            } => {
                let q: Vec<String> = artifact_type
                    .iter()
                    .map(|t| format!("artifactType={}", encode_component(t)))
                    .collect();
                with_query(format!("/v2/{repo}/referrers/{digest}"), &q)
            }
        }
    }
}

fn with_query(path: String, q: &[String]) -> String {
    if q.is_empty() {
        path
    } else {
        format!("{path}?{}", q.join("&"))
    }
}

/// Why a request does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Not `GET` or `HEAD`.
    #[error(
        "method {method} is not supported: Wharf is a read-only pull-through cache; push to the upstream registry instead"
    )]
    MethodNotAllowed {
        /// The method (possibly shortened).
        method: String,
    },
    /// No registry API route matches.
    #[error(
        "no registry API route matches `{path}`; expected /v2/, /v2/<name>/manifests/<reference>, /v2/<name>/blobs/<digest>, /v2/<name>/tags/list or /v2/<name>/referrers/<digest>"
    )]
    NotFound {
        /// The decoded path (possibly shortened).
        path: String,
    },
    /// Invalid repository name.
    #[error(transparent)]
    Name(ReferenceError),
    /// Invalid digest (blob or referrers path, or a manifest reference with `:`).
    #[error(transparent)]
    Digest(DigestError),
    /// Invalid tag in a manifest path.
    #[error(transparent)]
    Reference(ReferenceError),
    /// `n` is not a non-negative 32-bit integer.
    #[error(
        "query parameter n=`{value}` is not a valid page size; expected a non-negative integer"
    )]
    InvalidPageSize {
        /// The value (possibly shortened).
        value: String,
    },
}

impl ApiError {
    /// The OCI error code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::MethodNotAllowed { .. } => ErrorCode::Unsupported,
            ApiError::NotFound { .. } => ErrorCode::NameUnknown,
            ApiError::Name(_) => ErrorCode::NameInvalid,
            ApiError::Digest(_) => ErrorCode::DigestInvalid,
            ApiError::Reference(_) => ErrorCode::ManifestUnknown,
            ApiError::InvalidPageSize { .. } => ErrorCode::PaginationNumberInvalid,
        }
    }
}

#[derive(Default)]
struct Query {
    n: Option<String>,
    last: Option<String>,
    ns: Option<String>,
    artifact_type: Option<String>,
}

/// Known parameters, percent-decoded; first occurrence wins; empty values are absent.
fn parse_query(query: Option<&str>) -> Query {
    let mut q = Query::default();
    let raw = query.unwrap_or("");
    let raw = raw.strip_prefix('?').unwrap_or(raw);
    for pair in raw.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match decode_query_component(k).as_str() {
            "n" => &mut q.n,
            "last" => &mut q.last,
            "ns" => &mut q.ns,
            "artifactType" => &mut q.artifact_type,
            _ => continue,
        };
        if slot.is_none() {
            let v = decode_query_component(v);
            if !v.is_empty() {
                *slot = Some(v);
            }
        }
    }
    q
}

/// Parses a request into its method, typed request and containerd's `ns` query
/// parameter (decoded; `None` when absent or empty).
pub fn parse_request(
    method: &str,
    path: &str,
    query: Option<&str>,
) -> Result<(ApiMethod, ApiRequest, Option<String>), ApiError> {
    let method = match method {
        "GET" => ApiMethod::Get,
        "HEAD" => ApiMethod::Head,
        other => {
            return Err(ApiError::MethodNotAllowed {
                method: excerpt(other),
            });
        }
    };
    let q = parse_query(query);
    let path = decode_path(path);
    let not_found = || ApiError::NotFound {
        path: excerpt(&path),
    };
    if path == "/v2" || path == "/v2/" {
        return Ok((method, ApiRequest::Base, q.ns));
    }
    let rest = path.strip_prefix("/v2/").ok_or_else(not_found)?;
    let name = |s: &str| RepositoryName::parse(s).map_err(ApiError::Name);
    let request = if let Some(n) = rest.strip_suffix("/tags/list") {
        let name = name(n)?;
        let n = match q.n {
            None => None,
            Some(v) => Some(
                v.parse::<u32>()
                    .ok()
                    .filter(|_| v.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| ApiError::InvalidPageSize { value: excerpt(&v) })?,
            ),
        };
        ApiRequest::TagsList {
            name,
            n,
            last: q.last,
        }
    } else {
        let (head, last) = rest.rsplit_once('/').ok_or_else(not_found)?;
        let (n, op) = head.rsplit_once('/').ok_or_else(not_found)?;
        let digest = |s: &str| Digest::parse(s).map_err(ApiError::Digest);
        match op {
            "manifests" => {
                let name = name(n)?;
                let reference = if last.contains(':') {
                    Reference::Digest(digest(last)?)
                } else {
                    Reference::Tag(Tag::parse(last).map_err(ApiError::Reference)?)
                };
                ApiRequest::Manifest { name, reference }
            }
            "blobs" => ApiRequest::Blob {
                name: name(n)?,
                digest: digest(last)?,
            },
            "referrers" => ApiRequest::Referrers {
                name: name(n)?,
                digest: digest(last)?,
                artifact_type: q.artifact_type,
            },
            _ => return Err(not_found()),
        }
    };
    Ok((method, request, q.ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// (method, path, query, expected request, expected ns)
    type OkCase = (
        &'static str,
        String,
        Option<&'static str>,
        ApiRequest,
        Option<&'static str>,
    );

    fn d() -> Digest {
        Digest::sha256_of(b"x")
    }
    fn name(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    #[test]
    fn parse_ok_table() {
        let dg = d();
        let enc = dg.to_string().replace(':', "%3A");
        let manifest = |n: &str, r: &str| ApiRequest::Manifest {
            name: name(n),
            reference: Reference::parse(r).unwrap(),
        };
        let cases: Vec<OkCase> = vec![
            ("GET", "/v2/".into(), None, ApiRequest::Base, None),
            (
                "HEAD",
                "/v2".into(),
                Some("ns=docker.io"),
                ApiRequest::Base,
                Some("docker.io"),
            ),
            (
                "GET",
                "/v2/alpine/manifests/latest".into(),
                None,
                manifest("alpine", "latest"),
                None,
            ),
            (
                "HEAD",
                "/v2/library/alpine/manifests/3.19".into(),
                Some("ns=docker.io"),
                manifest("library/alpine", "3.19"),
                Some("docker.io"),
            ),
            (
                "GET",
                format!("/v2/ghcr.io/o/i/manifests/{dg}"),
                None,
                manifest("ghcr.io/o/i", &dg.to_string()),
                None,
            ),
            (
                "GET",
                format!("/v2/a/manifests/x/manifests/{enc}"),
                Some("?ns=&x=1"),
                manifest("a/manifests/x", &dg.to_string()),
                None,
            ),
            (
                "GET",
                format!("/v2/a/blobs/{dg}"),
                Some("ns=ghcr%2Eio"),
                ApiRequest::Blob {
                    name: name("a"),
                    digest: dg.clone(),
                },
                Some("ghcr.io"),
            ),
            (
                "GET",
                format!("/v2/blobs/blobs/{dg}"),
                None,
                ApiRequest::Blob {
                    name: name("blobs"),
                    digest: dg.clone(),
                },
                None,
            ),
            (
                "GET",
                "/v2/a/b/tags/list".into(),
                Some("n=10&last=v1%2B2&n=20"),
                ApiRequest::TagsList {
                    name: name("a/b"),
                    n: Some(10),
                    last: Some("v1+2".into()),
                },
                None,
            ),
            (
                "GET",
                "/v2/tags/tags/list".into(),
                Some("n="),
                ApiRequest::TagsList {
                    name: name("tags"),
                    n: None,
                    last: None,
                },
                None,
            ),
            (
                "GET",
                format!("/v2/a/referrers/{dg}"),
                Some("artifactType=application%2Fvnd.example%2Bjson"),
                ApiRequest::Referrers {
                    name: name("a"),
                    digest: dg.clone(),
                    artifact_type: Some("application/vnd.example+json".into()),
                },
                None,
            ),
        ];
        for (method, path, query, want, want_ns) in cases {
            let (m, req, ns) = parse_request(method, &path, query)
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            assert_eq!(m.as_str(), method);
            assert_eq!(req, want, "{path}");
            assert_eq!(ns.as_deref(), want_ns, "{path}");
        }
    }

    #[test]
    fn parse_err_table() {
        let dg = d();
        let cases: Vec<(&str, String, Option<&str>, ErrorCode, &str)> = vec![
            (
                "PUT",
                "/v2/a/manifests/latest".into(),
                None,
                ErrorCode::Unsupported,
                "method PUT is not supported",
            ),
            (
                "POST",
                "/v2/a/blobs/uploads/".into(),
                None,
                ErrorCode::Unsupported,
                "read-only",
            ),
            (
                "get",
                "/v2/".into(),
                None,
                ErrorCode::Unsupported,
                "method get",
            ),
            (
                "GET",
                "/".into(),
                None,
                ErrorCode::NameUnknown,
                "no registry API route matches `/`",
            ),
            (
                "GET",
                "/v1/_ping".into(),
                None,
                ErrorCode::NameUnknown,
                "no registry API route",
            ),
            (
                "GET",
                "/v2/a".into(),
                None,
                ErrorCode::NameUnknown,
                "`/v2/a`",
            ),
            (
                "GET",
                "/v2/a/blobs/uploads/".into(),
                None,
                ErrorCode::NameUnknown,
                "no registry API route",
            ),
            (
                "GET",
                "/v2/a/blobs/uploads/123".into(),
                None,
                ErrorCode::NameUnknown,
                "no registry API route",
            ),
            (
                "GET",
                "/v2/_catalog".into(),
                None,
                ErrorCode::NameUnknown,
                "no registry API route",
            ),
            (
                "GET",
                "/v2/manifests/latest".into(),
                None,
                ErrorCode::NameUnknown,
                "no registry API route",
            ),
            (
                "GET",
                "/v2/a/manifests/".into(),
                None,
                ErrorCode::ManifestUnknown,
                "tag is empty",
            ),
            (
                "GET",
                "/v2/A/manifests/latest".into(),
                None,
                ErrorCode::NameInvalid,
                "must be lowercase",
            ),
            (
                "GET",
                "/v2//a/manifests/latest".into(),
                None,
                ErrorCode::NameInvalid,
                "empty path component",
            ),
            (
                "GET",
                "/v2/a/manifests/-bad".into(),
                None,
                ErrorCode::ManifestUnknown,
                "tag `-bad`",
            ),
            (
                "GET",
                "/v2/a/manifests/sha256:abc".into(),
                None,
                ErrorCode::DigestInvalid,
                "exactly 64",
            ),
            (
                "GET",
                "/v2/a/blobs/latest".into(),
                None,
                ErrorCode::DigestInvalid,
                "has no `:`",
            ),
            (
                "GET",
                "/v2/a/referrers/md5:abc".into(),
                None,
                ErrorCode::DigestInvalid,
                "not supported",
            ),
            (
                "GET",
                "/v2/tags/list".into(),
                None,
                ErrorCode::NameUnknown,
                "no registry API route",
            ),
            (
                "GET",
                "/v2/a/tags/list".into(),
                Some("n=-1"),
                ErrorCode::PaginationNumberInvalid,
                "n=`-1`",
            ),
            (
                "GET",
                "/v2/a/tags/list".into(),
                Some("n=+5"),
                ErrorCode::PaginationNumberInvalid,
                "page size",
            ),
            (
                "GET",
                "/v2/a/tags/list".into(),
                Some("n=99999999999"),
                ErrorCode::PaginationNumberInvalid,
                "page size",
            ),
            (
                "GET",
                format!("/v2/a%20b/blobs/{dg}"),
                None,
                ErrorCode::NameInvalid,
                "` ` at position 1",
            ),
        ];
        for (method, path, query, code, msg) in cases {
            let e = parse_request(method, &path, query).unwrap_err();
            assert_eq!(e.code(), code, "{method} {path}: {e}");
            assert!(
                e.to_string().contains(msg),
                "{method} {path}: `{e}` lacks `{msg}`"
            );
        }
    }

    #[test]
    fn kind_name_and_upstream_path() {
        let dg = d();
        let up = name("library/alpine");
        let cases = [
            ("/v2/", None, "base", "/v2/"),
            (
                "/v2/alpine/manifests/latest",
                None,
                "manifest",
                "/v2/library/alpine/manifests/latest",
            ),
            (
                &*format!("/v2/alpine/blobs/{dg}"),
                None,
                "blob",
                &*format!("/v2/library/alpine/blobs/{dg}"),
            ),
            (
                "/v2/alpine/tags/list",
                Some("last=a%20b&n=5"),
                "tags",
                "/v2/library/alpine/tags/list?n=5&last=a%20b",
            ),
            (
                "/v2/alpine/tags/list",
                None,
                "tags",
                "/v2/library/alpine/tags/list",
            ),
            (
                &*format!("/v2/alpine/referrers/{dg}"),
                Some("artifactType=a/b"),
                "referrers",
                &*format!("/v2/library/alpine/referrers/{dg}?artifactType=a%2Fb"),
            ),
        ];
        for (path, query, kind, upstream) in cases {
            let (_, req, _) = parse_request("GET", path, query).unwrap();
            assert_eq!(req.kind(), kind);
            assert_eq!(req.name().is_some(), kind != "base");
            assert_eq!(req.upstream_path(&up), upstream);
        }
    }

    const COMPONENT: &str = "[a-z0-9]{1,4}((\\.|_|__|-{1,3})[a-z0-9]{1,4}){0,3}";

    proptest! {
        #[test]
        fn never_panics(method in "GET|HEAD|\\PC{0,6}", path in "\\PC*", query in proptest::option::of("\\PC*")) {
            let _ = parse_request(&method, &path, query.as_deref());
        }

        #[test]
        fn never_panics_on_api_shaped_paths(
            name in "[a-zA-Z0-9/._%-]{0,30}",
            op in "manifests|blobs|referrers|tags",
            last in "[a-zA-Z0-9:%._-]{0,80}",
        ) {
            let _ = parse_request("GET", &format!("/v2/{name}/{op}/{last}"), Some("n=1&ns=x"));
        }

        #[test]
        fn generated_requests_round_trip(
            parts in proptest::collection::vec(COMPONENT, 1..5),
            bytes in proptest::collection::vec(any::<u8>(), 0..16),
            tag in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}",
        ) {
            let n = RepositoryName::parse(&parts.join("/")).unwrap();
            let dg = Digest::sha256_of(&bytes);
            let requests = [
                ApiRequest::Manifest { name: n.clone(), reference: Reference::Tag(Tag::parse(&tag).unwrap()) },
                ApiRequest::Manifest { name: n.clone(), reference: Reference::Digest(dg.clone()) },
                ApiRequest::Blob { name: n.clone(), digest: dg.clone() },
                ApiRequest::Referrers { name: n.clone(), digest: dg.clone(), artifact_type: Some(tag.clone()) },
                ApiRequest::TagsList { name: n.clone(), n: Some(3), last: Some(tag.clone()) },
            ];
            for req in requests {
                let full = req.upstream_path(&n);
                let (path, query) = match full.split_once('?') {
                    Some((p, q)) => (p, Some(q)),
                    None => (full.as_str(), None),
                };
                let (_, parsed, _) = parse_request("HEAD", path, query).unwrap();
                prop_assert_eq!(parsed, req);
            }
        }
    }
}
