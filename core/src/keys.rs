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
//! | `links/<repo>/_/manifests/sha256/<hex>` | empty: the same for a manifest |
//!
//! Links decide who may read a content-addressed object: a digest is served
//! for `<repo>` only when `<repo>` links it (see [`crate::access`]). They are
//! written only after `<repo>`'s own upstream served or confirmed the digest,
//! so a made-up name never creates one.

use crate::{Digest, RepositoryName, Tag};

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
