//! The names of the registry and Wharf HTTP headers that the origin and the
//! edge both read or write.
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
/// The region that answered.
pub const X_WHARF_REGION: &str = "x-wharf-region";
/// The origin replica that answered.
pub const X_WHARF_REPLICA: &str = "x-wharf-replica";
/// The signed header with which one origin replica forwards a request to another
/// (see [`crate::peer`]).
pub const X_WHARF_FORWARDED: &str = crate::peer::HEADER;
