//! Manifest media types and `Accept` negotiation.
//!
//! Owns [`MediaType`], the [`MANIFEST_ACCEPT`] value the cache sends upstream,
//! [`accepts`] (does this client take that manifest?) and [`detect`] (what is this
//! manifest body?), and [`accept_manifest`]: whether manifest bytes fetched from
//! an upstream (origin) or from the origin (edge) may be kept and served, under
//! which digest and media type.
//!
//! Key decision: the cache always asks upstream for *every* manifest type it can
//! store, so one cached object serves all clients; negotiation happens on the way
//! out with [`accepts`]. A client that sends no `Accept` at all is treated as
//! accepting anything — old clients do that, and refusing them would break pulls
//! that work against Docker Hub directly.
//!
//! Key decision for acceptance: one rule on both sides, so the edge and the origin
//! never disagree about the same bytes. The bounded read stays at each side's I/O
//! (it must stop early without buffering more than [`MAX_MANIFEST_BYTES`]); the
//! decision is here. Bytes are verified with the algorithm of the digest they are
//! expected to have (sha256 or sha512): the requested digest if the request named
//! one, else the sender's `Docker-Content-Digest`; a mismatch is never kept. With
//! neither, the manifest is known by its sha256. The media type is the
//! `Content-Type` when that names a manifest type, else sniffed from the body,
//! else OCI manifest (the OCI spec allows a manifest without `mediaType`).

use std::fmt;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::digest::Digest;

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

/// The largest manifest accepted, in bytes (4 MiB: Distribution's limit and
/// the distribution spec's recommendation).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// A manifest body that may be kept and served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The body's digest: in the algorithm of the digest it was checked
    /// against, else sha256.
    pub digest: Digest,
    /// The media type to store and serve as `Content-Type`.
    pub media_type: MediaType,
}

/// Which claim about a manifest's digest its bytes failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestClaim {
    /// The digest the request named.
    Requested,
    /// The sender's `Docker-Content-Digest` header.
    Header,
}

impl fmt::Display for DigestClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DigestClaim::Requested => "requested digest",
            DigestClaim::Header => "Docker-Content-Digest header",
        })
    }
}

/// Why fetched manifest bytes are refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The body (or its declared length) is above [`MAX_MANIFEST_BYTES`].
    #[error(
        "manifest is {size} bytes; manifests above 4 MiB ({MAX_MANIFEST_BYTES} bytes) are not accepted"
    )]
    TooLarge {
        /// The body's (or declared) length in bytes.
        size: u64,
    },
    /// The bytes do not hash to the digest they should have.
    #[error("manifest bytes hash to {got}, not the {claim} {expected}; not cached, not served")]
    DigestMismatch {
        /// The digest the bytes should have.
        expected: Digest,
        /// What they hash to, in the same algorithm.
        got: Digest,
        /// Where `expected` came from.
        claim: DigestClaim,
    },
}

/// Refuses a manifest length above [`MAX_MANIFEST_BYTES`]: for a declared
/// `Content-Length`, before reading the body.
pub fn check_manifest_size(len: u64) -> Result<(), ManifestError> {
    if len > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge { size: len });
    }
    Ok(())
}

/// Whether a fetched manifest may be kept and served, and as what.
///
/// * `body` — the bytes as received (already bounded by the reader);
/// * `content_type` — the response's `Content-Type`, if any;
/// * `want` — the digest the request named (a pull by digest);
/// * `header_digest` — the sender's parsed `Docker-Content-Digest`, if any.
///
/// `want` wins over `header_digest`: a pull by digest must get those bytes,
/// whatever the sender claims. See the module docs for the media-type rule.
pub fn accept_manifest(
    body: &[u8],
    content_type: Option<&str>,
    want: Option<&Digest>,
    header_digest: Option<&Digest>,
) -> Result<Accepted, ManifestError> {
    check_manifest_size(body.len() as u64)?;
    let expected = match (want, header_digest) {
        (Some(d), _) => Some((d, DigestClaim::Requested)),
        (None, Some(d)) => Some((d, DigestClaim::Header)),
        (None, None) => None,
    };
    let digest = match expected {
        Some((expected, claim)) => {
            let mut verifier = expected.verifier();
            verifier.update(body);
            let got = verifier.finish();
            if &got != expected {
                return Err(ManifestError::DigestMismatch {
                    expected: expected.clone(),
                    got,
                    claim,
                });
            }
            got
        }
        None => Digest::sha256_of(body),
    };
    let media_type = manifest_media_type(content_type, body);
    Ok(Accepted { digest, media_type })
}

/// A manifest's media type: `content_type` when it names one of the four
/// manifest types, else sniffed with [`detect`], else OCI manifest. Also for
/// manifests read back from the object store.
pub fn manifest_media_type(content_type: Option<&str>, body: &[u8]) -> MediaType {
    match content_type.map(MediaType::parse) {
        Some(m) if m.is_manifest_type() => m,
        _ => detect(body).unwrap_or(MediaType::OciManifest),
    }
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

    fn sha512_of(bytes: &[u8]) -> Digest {
        let mut v = crate::digest::DigestVerifier::new(crate::DigestAlgorithm::Sha512);
        v.update(bytes);
        v.finish()
    }

    #[test]
    fn accept_manifest_table() {
        let oci = br#"{"schemaVersion":2,"config":{},"layers":[]}"#.as_slice();
        let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[]}"#.as_slice();
        let index = br#"{"schemaVersion":2,"manifests":[]}"#.as_slice();
        let schema1 = br#"{"schemaVersion":1,"name":"x","tag":"1","fsLayers":[]}"#.as_slice();
        let other = b"other bytes".as_slice();
        let big = vec![b' '; MAX_MANIFEST_BYTES as usize + 1];
        let at_limit = vec![b' '; MAX_MANIFEST_BYTES as usize];
        let s256 = Digest::sha256_of;
        let wrong = s256(other);
        type Want = Result<(Digest, MediaType), ManifestError>;
        let mismatch = |expected: &Digest, got: Digest, claim| -> Want {
            Err(ManifestError::DigestMismatch {
                expected: expected.clone(),
                got,
                claim,
            })
        };
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &str,
            &[u8],
            Option<&str>,
            Option<Digest>,
            Option<Digest>,
            Want,
        )> = vec![
            (
                "no claims: sha256, media from content type",
                docker,
                Some(DOCKER_MANIFEST),
                None,
                None,
                Ok((s256(docker), DockerManifest)),
            ),
            (
                "requested digest matches",
                oci,
                Some(OCI_MANIFEST),
                Some(s256(oci)),
                None,
                Ok((s256(oci), OciManifest)),
            ),
            (
                "header digest matches",
                index,
                Some(OCI_INDEX),
                None,
                Some(s256(index)),
                Ok((s256(index), OciIndex)),
            ),
            (
                "requested digest mismatch",
                oci,
                Some(OCI_MANIFEST),
                Some(wrong.clone()),
                None,
                mismatch(&wrong, s256(oci), DigestClaim::Requested),
            ),
            (
                "header digest mismatch",
                oci,
                Some(OCI_MANIFEST),
                None,
                Some(wrong.clone()),
                mismatch(&wrong, s256(oci), DigestClaim::Header),
            ),
            (
                "requested wins over a wrong header",
                oci,
                Some(OCI_MANIFEST),
                Some(s256(oci)),
                Some(wrong.clone()),
                Ok((s256(oci), OciManifest)),
            ),
            (
                "requested checked even when the header agrees with the bytes",
                oci,
                None,
                Some(wrong.clone()),
                Some(s256(oci)),
                mismatch(&wrong, s256(oci), DigestClaim::Requested),
            ),
            (
                "sha512 requested: verified and kept in sha512",
                oci,
                Some(OCI_MANIFEST),
                Some(sha512_of(oci)),
                None,
                Ok((sha512_of(oci), OciManifest)),
            ),
            (
                "sha512 header mismatch",
                oci,
                Some(OCI_MANIFEST),
                None,
                Some(sha512_of(other)),
                mismatch(&sha512_of(other), sha512_of(oci), DigestClaim::Header),
            ),
            (
                "no content type: sniffed",
                index,
                None,
                None,
                None,
                Ok((s256(index), OciIndex)),
            ),
            (
                "empty content type: sniffed",
                docker,
                Some(""),
                None,
                None,
                Ok((s256(docker), DockerManifest)),
            ),
            (
                "content type with parameters",
                oci,
                Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
                None,
                None,
                Ok((s256(oci), OciManifest)),
            ),
            (
                "non-manifest content type: sniffed",
                index,
                Some("application/json"),
                None,
                None,
                Ok((s256(index), OciIndex)),
            ),
            (
                "content type wins over the body",
                docker,
                Some(OCI_INDEX),
                None,
                None,
                Ok((s256(docker), OciIndex)),
            ),
            (
                "unsniffable: OCI manifest",
                other,
                Some("text/plain"),
                None,
                None,
                Ok((s256(other), OciManifest)),
            ),
            (
                "schema1 under its own type: OCI manifest fallback",
                schema1,
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
                None,
                None,
                Ok((s256(schema1), OciManifest)),
            ),
            (
                "exactly 4 MiB",
                &at_limit,
                None,
                None,
                None,
                Ok((s256(&at_limit), OciManifest)),
            ),
            (
                "over 4 MiB, before any digest check",
                &big,
                Some(OCI_MANIFEST),
                Some(wrong.clone()),
                None,
                Err(ManifestError::TooLarge {
                    size: MAX_MANIFEST_BYTES + 1,
                }),
            ),
        ];
        for (what, body, ct, want, header, expected) in cases {
            let got = accept_manifest(body, ct, want.as_ref(), header.as_ref())
                .map(|a| (a.digest, a.media_type));
            assert_eq!(got, expected, "{what}");
        }
    }

    #[test]
    fn manifest_size_and_errors_are_actionable() {
        assert!(check_manifest_size(MAX_MANIFEST_BYTES).is_ok());
        let e = check_manifest_size(MAX_MANIFEST_BYTES + 1).unwrap_err();
        assert!(e.to_string().contains("above 4 MiB"), "{e}");
        let oci = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        let wrong = Digest::sha256_of(b"x");
        let e = accept_manifest(oci, None, None, Some(&wrong)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&wrong.to_string()) && msg.contains("Docker-Content-Digest"),
            "{msg}"
        );
    }
}
