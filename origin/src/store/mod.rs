//! The object store: every byte the origin keeps lives in one S3 bucket.
//!
//! There is one implementation, over `aws-sdk-s3`, for every deployment: the
//! default `--data DIR` starts an S3 server inside this process
//! ([`embedded`]) and points the same client at it, so the local demo, the
//! tests and production (Garage, AWS S3, R2) run the same code path and
//! presigned URLs work everywhere.
//!
//! # Layout
//!
//! Blobs and manifests are content-addressed (one copy per digest, whatever
//! the number of repositories); small records say which repository refers to
//! what. Repository names never contain `_`-led components, so `/_/` can
//! separate a repository from what follows without ambiguity.
//!
//! | key | what |
//! |---|---|
//! | `blobs/sha256/<hex>` | blob bytes, written only after verification |
//! | `manifests/sha256/<hex>` | manifest bytes, byte-exact, `Content-Type` = media type |
//! | `tags/<repo>/_/<tag>` | JSON [`crate::manifests::TagRecord`] |
//! | `links/<repo>/_/blobs/sha256/<hex>` | empty: `<repo>` refers to this blob |
//!
//! Visibility: a blob is uploaded with one `PutObject` (small) or a multipart
//! upload completed only after the digest matched; an aborted hydration aborts
//! its multipart upload, and uploads orphaned by a crash are aborted at start.

pub mod embedded;
mod s3;

pub use s3::{MultipartUpload, ObjectMeta, S3Settings, Store, StoreError};

use wharf_core::{Digest, RepositoryName, Tag};

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
    format!("links/{}/_/blobs/{}/{}", repo.as_str(), digest.algorithm().as_str(), digest.hex())
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
        assert_eq!(
            blob_link_key(&repo, &d),
            format!("links/docker.io/library/alpine/_/blobs/sha256/{}", d.hex())
        );
    }
}
