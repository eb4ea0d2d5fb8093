//! The names of the registry and Wharf HTTP headers that the origin and the
//! edge both read or write.
//!
//! Every header name Wharf itself defines (`x-wharf-*`) or reads and writes
//! from the registry protocol is here, so that `grep` finds each name once.
//!
//! Key decision: names are lowercase, as HTTP/2 and the `http` crate spell them
//! (`HeaderName::from_static` refuses uppercase); the Workers `Headers` API is
//! case-insensitive, so the edge uses the same constants. Standard headers
//! (`Content-Type`, `Accept`, …) are not repeated here: each side's HTTP library
//! already names them.

/// The digest of the manifest or blob in the body (distribution spec).
pub const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
/// The registry API version, `registry/2.0` on every response; clients check it on `/v2/`.
pub const DOCKER_DISTRIBUTION_API_VERSION: &str = "docker-distribution-api-version";
/// The value of [`DOCKER_DISTRIBUTION_API_VERSION`].
pub const API_VERSION_VALUE: &str = "registry/2.0";
/// The filters a referrers answer applied (distribution spec).
pub const OCI_FILTERS_APPLIED: &str = "oci-filters-applied";
/// How a request was answered: `hit`, `miss`, `revalidated`, `stale`, ….
pub const X_WHARF_CACHE: &str = "x-wharf-cache";
/// Why a tag was served stale without asking the upstream
/// (`ratelimit-budget`: the upstream's budget is at its reserve).
pub const X_WHARF_STALE_REASON: &str = "x-wharf-stale-reason";
/// The region that answered.
pub const X_WHARF_REGION: &str = "x-wharf-region";
/// The origin replica that answered.
pub const X_WHARF_REPLICA: &str = "x-wharf-replica";
/// The signed header with which one origin replica forwards a request to another
/// (see [`crate::peer`]).
pub const X_WHARF_FORWARDED: &str = crate::peer::HEADER;
/// On a manifest fetched by tag: how many milliseconds ago the upstream last
/// confirmed that the tag points at this manifest. The origin sets it; the
/// edge counts its own freshness from that confirmation
/// (see [`crate::freshness`]).
pub const X_WHARF_TAG_AGE_MS: &str = "x-wharf-tag-age-ms";
/// On a manifest request by tag: the oldest upstream confirmation, in
/// milliseconds, the asker (the edge) may still serve as fresh, i.e. its ttl.
/// The origin asks the upstream first when its record is older
/// (see [`crate::freshness`]).
pub const X_WHARF_MAX_TAG_AGE_MS: &str = "x-wharf-max-tag-age-ms";
/// On the edge's Cache API entries (never on the wire): the manifest's digest.
pub const X_WHARF_DIGEST: &str = "x-wharf-digest";
/// On the edge's Cache API entries (never on the wire): when the upstream last
/// confirmed the tag, unix milliseconds.
pub const X_WHARF_FETCHED_AT: &str = "x-wharf-fetched-at";
