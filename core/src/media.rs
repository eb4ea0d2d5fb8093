//! Manifest media types and `Accept` negotiation.
//!
//! Owns [`MediaType`], the [`MANIFEST_ACCEPT`] value the cache sends upstream,
//! [`accepts`] (does this client take that manifest?) and [`detect`] (what is this
//! manifest body?).
//!
//! Key decision: the cache always asks upstream for *every* manifest type it can
//! store, so one cached object serves all clients; negotiation happens on the way
//! out with [`accepts`]. A client that sends no `Accept` at all is treated as
//! accepting anything — old clients do that, and refusing them would break pulls
//! that work against Docker Hub directly.

use std::fmt;

use serde::Deserialize;
use serde::de::IgnoredAny;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The `Accept` header value the cache sends upstream for manifests: all four
/// manifest types, index types first.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json,\
application/vnd.docker.distribution.manifest.list.v2+json,\
application/vnd.oci.image.manifest.v1+json,\
application/vnd.docker.distribution.manifest.v2+json";

/// A manifest media type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MediaType {
    /// `application/vnd.docker.distribution.manifest.v2+json`
    DockerManifest,
    /// `application/vnd.docker.distribution.manifest.list.v2+json`
    DockerManifestList,
    /// `application/vnd.oci.image.manifest.v1+json`
    OciManifest,
    /// `application/vnd.oci.image.index.v1+json`
    OciIndex,
    /// Anything else, trimmed and without parameters, as received.
    Other(String),
}

impl MediaType {
    /// Parses a `Content-Type`-style value: parameters after `;` are dropped, the
    /// rest is trimmed and compared case-insensitively (media types are
    /// case-insensitive, RFC 9110 §8.3.1).
    pub fn parse(s: &str) -> MediaType {
        let essence = strip_params(s);
        for known in [
            MediaType::DockerManifest,
            MediaType::DockerManifestList,
            MediaType::OciManifest,
            MediaType::OciIndex,
        ] {
            if essence.eq_ignore_ascii_case(known.as_str()) {
                return known;
            }
        }
        MediaType::Other(essence.to_owned())
    }

    /// The media type string.
    pub fn as_str(&self) -> &str {
        match self {
            MediaType::DockerManifest => DOCKER_MANIFEST,
            MediaType::DockerManifestList => DOCKER_MANIFEST_LIST,
            MediaType::OciManifest => OCI_MANIFEST,
            MediaType::OciIndex => OCI_INDEX,
            MediaType::Other(s) => s,
        }
    }

    /// True for the multi-platform types (Docker manifest list, OCI index).
    pub fn is_index(&self) -> bool {
        matches!(self, MediaType::DockerManifestList | MediaType::OciIndex)
    }

    /// True for one of the four manifest types the cache stores.
    pub fn is_manifest_type(&self) -> bool {
        !matches!(self, MediaType::Other(_))
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn strip_params(s: &str) -> &str {
    s.split(';').next().unwrap_or("").trim()
}

/// True if a client that sent these `Accept` header values would accept `media`.
///
/// * no headers, or only blank ones ⇒ true (old clients send none);
/// * an entry `*/*` or `application/*` ⇒ true;
/// * otherwise one comma-separated entry must equal `media` (case-insensitive,
///   ignoring parameters) — except that an entry with `q=0` means "not acceptable"
///   (RFC 9110 §12.4.2) and is skipped.
pub fn accepts(accept_headers: &[&str], media: &MediaType) -> bool {
    let mut any_entry = false;
    for entry in accept_headers.iter().flat_map(|h| h.split(',')) {
        let essence = strip_params(entry);
        if essence.is_empty() {
            continue;
        }
        any_entry = true;
        if q_is_zero(entry) {
            continue;
        }
        if essence == "*/*"
            || essence.eq_ignore_ascii_case("application/*")
            || essence.eq_ignore_ascii_case(media.as_str())
        {
            return true;
        }
    }
    !any_entry
}

fn q_is_zero(entry: &str) -> bool {
    entry.split(';').skip(1).any(|p| {
        let Some((k, v)) = p.split_once('=') else {
            return false;
        };
        k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>().is_ok_and(|q| q == 0.0)
    })
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<IgnoredAny>,
    config: Option<IgnoredAny>,
    layers: Option<IgnoredAny>,
}

/// The media type of a manifest body: its `mediaType` field, or — when absent, which
/// the OCI spec allows — OCI index if it has `manifests`, OCI manifest if it has
/// `config` and `layers`. `None` for non-JSON, non-objects, or anything else
/// (including Docker schema 1 manifests, which the cache does not store).
pub fn detect(body: &[u8]) -> Option<MediaType> {
    let probe: Probe = serde_json::from_slice(body).ok()?;
    if let Some(mt) = probe.media_type {
        return Some(MediaType::parse(&mt));
    }
    if probe.manifests.is_some() {
        return Some(MediaType::OciIndex);
    }
    if probe.config.is_some() && probe.layers.is_some() {
        return Some(MediaType::OciManifest);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use MediaType::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*", bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let m = MediaType::parse(&s);
            prop_assert_eq!(MediaType::parse(m.as_str()), m.clone());
            let _ = accepts(&[s.as_str()], &m);
            let _ = detect(s.as_bytes());
            let _ = detect(&bytes);
        }
    }

    #[test]
    fn parse_table() {
        let cases = [
            (DOCKER_MANIFEST, DockerManifest),
            (DOCKER_MANIFEST_LIST, DockerManifestList),
            (
                " application/vnd.oci.image.manifest.v1+json ; charset=utf-8",
                OciManifest,
            ),
            ("Application/VND.OCI.image.index.v1+json", OciIndex),
            ("application/json; x=y", Other("application/json".into())),
            ("", Other(String::new())),
        ];
        for (input, want) in cases {
            let got = MediaType::parse(input);
            assert_eq!(got, want, "{input}");
            assert_eq!(got.is_manifest_type(), !matches!(want, Other(_)));
        }
        assert!(OciIndex.is_index() && DockerManifestList.is_index());
        assert!(!OciManifest.is_index() && !DockerManifest.is_index());
    }

    #[test]
    fn manifest_accept_lists_all_four_and_round_trips() {
        let all = [DockerManifest, DockerManifestList, OciManifest, OciIndex];
        for m in &all {
            assert!(accepts(&[MANIFEST_ACCEPT], m), "{m}");
        }
        let parsed: Vec<MediaType> = MANIFEST_ACCEPT.split(',').map(MediaType::parse).collect();
        assert_eq!(parsed.len(), 4);
        assert!(parsed.iter().all(MediaType::is_manifest_type));
        assert!(!accepts(&[MANIFEST_ACCEPT], &Other("text/plain".into())));
    }

    #[test]
    fn accepts_table() {
        let cases: &[(&[&str], MediaType, bool)] = &[
            (&[], OciIndex, true),
            (&[""], OciIndex, true),
            (&[" , "], DockerManifest, true),
            (&["*/*"], OciIndex, true),
            (&["application/*;q=0.8"], OciManifest, true),
            (&[DOCKER_MANIFEST], DockerManifest, true),
            (&[DOCKER_MANIFEST], OciManifest, false),
            (&[DOCKER_MANIFEST, OCI_INDEX], OciIndex, true),
            (
                &["text/html, application/vnd.oci.image.index.v1+json; q=0.5"],
                OciIndex,
                true,
            ),
            (
                &["application/vnd.oci.image.index.v1+json;q=0"],
                OciIndex,
                false,
            ),
            (
                &["application/vnd.oci.image.index.v1+json;q=0.0, */*"],
                OciIndex,
                true,
            ),
            (&["application/json"], DockerManifest, false),
        ];
        for (headers, media, want) in cases {
            assert_eq!(accepts(headers, media), *want, "{headers:?} {media}");
        }
    }

    #[test]
    fn detect_table() {
        let cases: &[(&str, Option<MediaType>)] = &[
            (
                r#"{"mediaType":"application/vnd.oci.image.index.v1+json"}"#,
                Some(OciIndex),
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[]}"#,
                Some(DockerManifest),
            ),
            (r#"{"schemaVersion":2,"manifests":[]}"#, Some(OciIndex)),
            (
                r#"{"schemaVersion":2,"config":{},"layers":[]}"#,
                Some(OciManifest),
            ),
            (r#"{"schemaVersion":2,"config":{}}"#, None),
            (r#"{"schemaVersion":1,"fsLayers":[]}"#, None),
            (r#"{"mediaType":7}"#, None),
            ("[]", None),
            ("not json", None),
        ];
        for (body, want) in cases {
            assert_eq!(detect(body.as_bytes()), *want, "{body}");
        }
    }
}
