//! Object-store key layout, shared by everything that reads or writes the
//! bucket (the origin writes it; the edge presigns URLs into it).
//!
//! Blobs and manifests are content-addressed (one copy per digest, whatever
//! the number of repositories); small records say which repository refers to
//! what. Repository-name components never start with `_`, so `/_/` separates
//! a repository from what follows without ambiguity.
//!
//! | key | what |
//! |---|---|
//! | `blobs/sha256/<hex>` | blob bytes, written only after verification |
//! | `manifests/sha256/<hex>` | manifest bytes, byte-exact, `Content-Type` = media type |
//! | `tags/<repo>/_/<tag>` | tag record (JSON: digest, media type, fetch time) |
//! | `links/<repo>/_/blobs/sha256/<hex>` | empty: `<repo>`'s upstream served or confirmed this blob |
//! | `links/<repo>/_/manifests/sha256/<hex>` | empty: the same for a manifest; rewritten (batched) when the image is pulled, so its `LastModified` is the last pull |
//! | `gc/lease` | the replica running the collection now, until when (JSON) |
//! | `gc/candidates.json` | unreferenced objects and since when (the sweep's first phase) |
//!
//! Links decide who may read a content-addressed object: a digest is served
//! for `<repo>` only when `<repo>` links it (see [`crate::access`]). They are
//! written only after `<repo>`'s own upstream served or confirmed the digest,
//! so a made-up name never creates one.

use crate::{Digest, RepositoryName, Tag};

/// The collection's lease: which replica runs it, until when.
pub const GC_LEASE_KEY: &str = "gc/lease";

/// The sweep's candidates: objects no kept image referenced, and since when.
pub const GC_CANDIDATES_KEY: &str = "gc/candidates.json";

/// What a key in the bucket is, read back from a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreKey {
    /// `blobs/…`
    Blob(Digest),
    /// `manifests/…`
    Manifest(Digest),
    /// `tags/<repo>/_/<tag>`
    Tag(RepositoryName, Tag),
    /// `links/<repo>/_/blobs/…`
    BlobLink(RepositoryName, Digest),
    /// `links/<repo>/_/manifests/…`
    ManifestLink(RepositoryName, Digest),
}

impl StoreKey {
    /// Parses a key this layout wrote; `None` for anything else (another
    /// tool's objects, the collection's own records, a malformed name).
    pub fn parse(key: &str) -> Option<StoreKey> {
        fn digest(algo_hex: &str) -> Option<Digest> {
            let (algo, hex) = algo_hex.split_once('/')?;
            Digest::parse(&format!("{algo}:{hex}")).ok()
        }
        fn repo(name: &str) -> Option<RepositoryName> {
            RepositoryName::parse(name).ok()
        }
        if let Some(rest) = key.strip_prefix("blobs/") {
            return digest(rest).map(StoreKey::Blob);
        }
        if let Some(rest) = key.strip_prefix("manifests/") {
            return digest(rest).map(StoreKey::Manifest);
        }
        if let Some(rest) = key.strip_prefix("tags/") {
            let (name, tag) = rest.split_once("/_/")?;
            return Some(StoreKey::Tag(repo(name)?, Tag::parse(tag).ok()?));
        }
        let rest = key.strip_prefix("links/")?;
        let (name, what) = rest.split_once("/_/")?;
        if let Some(d) = what.strip_prefix("blobs/") {
            return Some(StoreKey::BlobLink(repo(name)?, digest(d)?));
        }
        let d = what.strip_prefix("manifests/")?;
        Some(StoreKey::ManifestLink(repo(name)?, digest(d)?))
    }

    /// The key this names (the inverse of [`StoreKey::parse`]).
    pub fn key(&self) -> String {
        match self {
            StoreKey::Blob(d) => blob_key(d),
            StoreKey::Manifest(d) => manifest_key(d),
            StoreKey::Tag(r, t) => tag_key(r, t),
            StoreKey::BlobLink(r, d) => blob_link_key(r, d),
            StoreKey::ManifestLink(r, d) => manifest_link_key(r, d),
        }
    }
}

/// Key of a blob's bytes.
pub fn blob_key(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().as_str(), digest.hex())
}

/// Key of a manifest's bytes.
pub fn manifest_key(digest: &Digest) -> String {
    format!("manifests/{}/{}", digest.algorithm().as_str(), digest.hex())
}

/// Key of a tag record.
pub fn tag_key(repo: &RepositoryName, tag: &Tag) -> String {
    format!("tags/{}/_/{}", repo.as_str(), tag.as_str())
}

/// Key of the record that `repo` refers to blob `digest`.
pub fn blob_link_key(repo: &RepositoryName, digest: &Digest) -> String {
    format!(
        "links/{}/_/blobs/{}/{}",
        repo.as_str(),
        digest.algorithm().as_str(),
        digest.hex()
    )
}

/// Key of the record that `repo` refers to manifest `digest`.
pub fn manifest_link_key(repo: &RepositoryName, digest: &Digest) -> String {
    format!(
        "links/{}/_/manifests/{}/{}",
        repo.as_str(),
        digest.algorithm().as_str(),
        digest.hex()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses_back_to_what_wrote_it() {
        let repo = RepositoryName::parse("ghcr.io/acme/_x/app").ok();
        // `_x` is not a valid component: such a name never reaches the store.
        assert_eq!(repo, None);
        let repo = RepositoryName::parse("ghcr.io/acme/app").unwrap();
        let d = Digest::sha256_of(b"x");
        let keys = [
            StoreKey::Blob(d.clone()),
            StoreKey::Manifest(d.clone()),
            StoreKey::Tag(repo.clone(), Tag::parse("v1.2").unwrap()),
            StoreKey::BlobLink(repo.clone(), d.clone()),
            StoreKey::ManifestLink(repo.clone(), d.clone()),
        ];
        for k in keys {
            assert_eq!(StoreKey::parse(&k.key()), Some(k.clone()), "{}", k.key());
        }
        for other in [
            GC_LEASE_KEY,
            GC_CANDIDATES_KEY,
            "blobs/sha256/zz",
            "links/app/_/other/sha256/00",
            "tags/app",
            "",
        ] {
            assert_eq!(StoreKey::parse(other), None, "{other}");
        }
    }

    #[test]
    fn keys_separate_repositories_from_their_contents() {
        let repo = RepositoryName::parse("docker.io/library/alpine").unwrap();
        let tag = Tag::parse("3.20").unwrap();
        let d = Digest::sha256_of(b"x");
        assert_eq!(tag_key(&repo, &tag), "tags/docker.io/library/alpine/_/3.20");
        assert_eq!(blob_key(&d), format!("blobs/sha256/{}", d.hex()));
        assert_eq!(manifest_key(&d), format!("manifests/sha256/{}", d.hex()));
        assert_eq!(
            blob_link_key(&repo, &d),
            format!("links/docker.io/library/alpine/_/blobs/sha256/{}", d.hex())
        );
        assert_eq!(
            manifest_link_key(&repo, &d),
            format!(
                "links/docker.io/library/alpine/_/manifests/sha256/{}",
                d.hex()
            )
        );
    }
}
