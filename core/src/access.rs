//! Who may read a content-addressed object through a repository: the one
//! decision the origin and the edge take before serving a digest.
//!
//! Owns [`Held`], [`DigestAccess`], [`digest_access`], [`Reference`] and
//! [`references`] (what a manifest refers to), and [`platforms`] (an
//! index's platform manifests, for prewarming chosen platforms).
//!
//! A request reaches this decision after the rest of the access path, which
//! lives beside it in the core and is taken the same way by both deployables:
//!
//! 1. [`crate::rules`] resolves the name (and `?ns=`) to one rule and a
//!    canonical name that belongs to that rule alone (aliases are refused);
//! 2. [`crate::pull_auth`] checks the token (pull on the name, the private
//!    rule granted) or the ticket (bound to rule, privacy, name and digest);
//! 3. here: the digest is served for the canonical name only if that name
//!    is linked to it ([`crate::keys::blob_link_key`],
//!    [`crate::keys::manifest_link_key`]) or its own upstream confirms it.
//!
//! Key decisions:
//! * Bytes are stored once per digest, but **links are per repository**. A
//!   digest held in the store (or being downloaded) for one repository is
//!   not thereby readable through another: otherwise anyone who knows a
//!   private layer's digest could read it through any public name.
//! * A link is written only when the repository's own upstream served the
//!   digest (a fetch through that name), confirmed it (`HEAD` answered 200),
//!   or listed it in a manifest it served for that name ([`references`]: a
//!   registry accepts a manifest only when its blobs are in the repository).
//!   Made-up names therefore never create links: the upstream said 404.
//! * An unlinked digest that is held locally costs one upstream `HEAD`, once;
//!   afterwards it is linked. The upstream's refusal, or failure, refuses the
//!   request (fail closed): warm content of the repository itself is linked
//!   and keeps flowing when the upstream is down.
//! * A download joined by a request for the same canonical name needs no
//!   confirmation: that download's own upstream answer decides for both.

use serde::Deserialize;

use crate::digest::Digest;

/// What this region holds of a digest's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// Verified and in the store.
    Stored,
    /// Being downloaded for the repository with this request's canonical name.
    InFlightSameName,
    /// Being downloaded for another repository.
    InFlightOtherName,
    /// Neither.
    Absent,
}

/// How a request for a digest through a repository is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestAccess {
    /// From what is held, without asking the upstream.
    Serve,
    /// Only after the repository's upstream confirms the digest (one `HEAD`:
    /// 200 writes the link, then serve what is held; 404 refuses).
    Confirm,
    /// Fetch through the repository's own upstream (which confirms it).
    Fetch,
}

/// The decision for a digest requested through a repository that is
/// `linked` (or not) to it, given what is `held`.
pub fn digest_access(linked: bool, held: Held) -> DigestAccess {
    match (linked, held) {
        (_, Held::InFlightSameName) => DigestAccess::Serve,
        (true, Held::Stored | Held::InFlightOtherName) => DigestAccess::Serve,
        (false, Held::Stored | Held::InFlightOtherName) => DigestAccess::Confirm,
        (_, Held::Absent) => DigestAccess::Fetch,
    }
}

/// A digest a manifest refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    /// A blob: the config or a layer of an image manifest.
    Blob(Digest),
    /// A manifest: a child of an index, or a referrer's subject.
    Manifest(Digest),
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

#[derive(Deserialize)]
struct Body {
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    blobs: Vec<Descriptor>,
}

/// The digests a manifest body refers to (config, layers, an index's child
/// manifests, an artifact's blobs), skipping descriptors whose digest does
/// not parse. Not JSON, or not an object: none.
///
/// The `subject` of a referrer is not included: a referrer names its
/// subject, the subject does not contain it, and an upstream serving a
/// referrer says nothing about whether it serves the subject.
pub fn references(body: &[u8]) -> Vec<Reference> {
    let Ok(body) = serde_json::from_slice::<Body>(body) else {
        return Vec::new();
    };
    let blobs = body
        .config
        .into_iter()
        .chain(body.layers)
        .chain(body.blobs)
        .filter_map(|d| Digest::parse(&d.digest).ok())
        .map(Reference::Blob);
    let manifests = body
        .manifests
        .into_iter()
        .filter_map(|d| Digest::parse(&d.digest).ok())
        .map(Reference::Manifest);
    blobs.chain(manifests).collect()
}

/// An index's platform manifests: each child's digest and platform
/// (`os/architecture[/variant]`, `None` when the entry names none, e.g. an
/// attestation). Empty for anything that is not an index.
pub fn platforms(body: &[u8]) -> Vec<(Digest, Option<String>)> {
    #[derive(Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<Child>,
    }
    #[derive(Deserialize)]
    struct Child {
        digest: String,
        platform: Option<Platform>,
    }
    #[derive(Deserialize)]
    struct Platform {
        os: String,
        architecture: String,
        variant: Option<String>,
    }
    let Ok(index) = serde_json::from_slice::<Index>(body) else {
        return Vec::new();
    };
    index
        .manifests
        .into_iter()
        .filter_map(|c| {
            let platform = c.platform.map(|p| match p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            });
            Some((Digest::parse(&c.digest).ok()?, platform))
        })
        .collect()
}

/// Whether a platform asked for (`linux/arm64`) selects one an index
/// names (`linux/arm64/v8`): equal, or equal but for the variant the
/// request left out.
pub fn platform_matches(wanted: &str, named: &str) -> bool {
    wanted == named
        || named
            .strip_prefix(wanted)
            .is_some_and(|rest| rest.starts_with('/') && wanted.matches('/').count() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_index_names_its_platforms() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = format!("sha256:{}", "c".repeat(64));
        let index = format!(
            r#"{{"manifests":[
                {{"digest":"{a}","platform":{{"os":"linux","architecture":"amd64"}}}},
                {{"digest":"{b}","platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
                {{"digest":"{c}"}},
                {{"digest":"not-a-digest","platform":{{"os":"linux","architecture":"s390x"}}}}
            ]}}"#
        );
        let got = platforms(index.as_bytes());
        let d = |s: &str| Digest::parse(s).unwrap();
        assert_eq!(
            got,
            [
                (d(&a), Some("linux/amd64".to_owned())),
                (d(&b), Some("linux/arm64/v8".to_owned())),
                (d(&c), None),
            ]
        );
        assert!(platforms(b"{\"layers\":[]}").is_empty());
        assert!(platforms(b"not json").is_empty());
        assert!(platform_matches("linux/arm64", "linux/arm64/v8"));
        assert!(platform_matches("linux/arm64/v8", "linux/arm64/v8"));
        assert!(!platform_matches("linux/arm64/v7", "linux/arm64/v8"));
        assert!(!platform_matches("linux/arm", "linux/arm64"));
        assert!(!platform_matches("linux", "linux/amd64"));
    }

    #[test]
    fn digest_access_table() {
        use DigestAccess::*;
        use Held::*;
        let cases = [
            (true, Stored, Serve),
            (false, Stored, Confirm),
            (true, InFlightSameName, Serve),
            (false, InFlightSameName, Serve),
            (true, InFlightOtherName, Serve),
            (false, InFlightOtherName, Confirm),
            (true, Absent, Fetch),
            (false, Absent, Fetch),
        ];
        for (linked, held, want) in cases {
            assert_eq!(digest_access(linked, held), want, "{linked} {held:?}");
        }
    }

    #[test]
    fn references_of_manifests_indexes_and_artifacts() {
        let (c, l1, l2, m) = (
            Digest::sha256_of(b"config"),
            Digest::sha256_of(b"l1"),
            Digest::sha256_of(b"l2"),
            Digest::sha256_of(b"child"),
        );
        let image = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{c}","size":1}},
                "layers":[{{"digest":"{l1}"}},{{"digest":"{l2}"}},{{"digest":"md5:x"}}],
                "subject":{{"digest":"{m}"}}}}"#
        );
        assert_eq!(
            references(image.as_bytes()),
            [
                Reference::Blob(c.clone()),
                Reference::Blob(l1.clone()),
                Reference::Blob(l2.clone())
            ]
        );
        let index = format!(r#"{{"manifests":[{{"digest":"{m}","platform":{{}}}}]}}"#);
        assert_eq!(references(index.as_bytes()), [Reference::Manifest(m)]);
        let artifact = format!(r#"{{"blobs":[{{"digest":"{l1}"}}]}}"#);
        assert_eq!(references(artifact.as_bytes()), [Reference::Blob(l1)]);
        for junk in [&b"not json"[..], b"[]", b"{\"layers\":7}", b""] {
            assert!(references(junk).is_empty());
        }
    }

    proptest! {
        #[test]
        fn references_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = references(&bytes);
        }
    }
}
