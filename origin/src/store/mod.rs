//! The object store: every byte the origin keeps lives in one S3 bucket.
//!
//! There is one implementation, over `aws-sdk-s3`, for every deployment: the
//! default `--data DIR` starts an S3 server inside this process
//! ([`embedded`]) and points the same client at it, so the local demo, the
//! tests and production (Garage, AWS S3, R2) run the same code path and
//! presigned URLs work everywhere.
//!
//! The key layout is the core's (`wharf_core::keys`), shared with the edge.
//!
//! Visibility: a blob is uploaded with one `PutObject` (small) or a multipart
//! upload completed only after the digest matched; an aborted hydration aborts
//! its multipart upload, and uploads orphaned by a crash are aborted at start.

pub mod embedded;
mod error;
mod s3;

pub use error::{Error, ErrorKind};
pub use s3::{BodyStream, MultipartUpload, ObjectMeta, S3Settings, Store};

pub use wharf_core::keys::{blob_key, blob_link_key, manifest_key, manifest_link_key, tag_key};
