//! [`Error`]: an object-store failure — the operation, the key, and the cause
//! as a typed [`ErrorKind`].
//!
//! Only the store module builds one (its fields are private): failures that
//! are not the store's (the spool file, an upstream, a digest mismatch) are
//! variants of the origin's own `crate::error::Error`, so nothing upstream
//! of here has to tell them apart by text.

use std::fmt;
use std::io;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// A boxed cause from the S3 SDK.
type Cause = Box<dyn std::error::Error + Send + Sync>;

/// An object-store failure, with the operation and key it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{op} {key}: {kind}")]
pub struct Error {
    op: &'static str,
    key: String,
    #[source]
    kind: ErrorKind,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// The store answered with an error.
    #[error("{} ({})", message.as_deref().unwrap_or("no message"), code.as_deref().unwrap_or("no code"))]
    Service {
        /// The S3 error code (`NoSuchUpload`, …).
        code: Option<String>,
        /// The store's message.
        message: Option<String>,
    },
    /// The store could not be reached.
    #[error("cannot reach the object store: {0:?}")]
    Unreachable(Cause),
    /// The store did not answer in time.
    #[error("the object store did not answer in time")]
    Timeout,
    /// Any other failure of the SDK (a malformed answer, …).
    #[error("{0:?}")]
    Sdk(Cause),
    /// A file read or written for the store (the embedded store's files,
    /// or a file uploaded from) failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A presigned URL's lifetime the SDK does not accept.
    #[error("{0}")]
    Presign(#[from] aws_sdk_s3::presigning::PresigningConfigError),
    /// A byte range outside the object.
    #[error("range outside the object's {len} bytes")]
    RangeOutside {
        /// The object's length.
        len: u64,
    },
}

impl Error {
    /// A failure of `op` on `key` for `kind`.
    pub(super) fn new(
        op: &'static str,
        key: impl fmt::Display,
        kind: impl Into<ErrorKind>,
    ) -> Self {
        Self {
            op,
            key: key.to_string(),
            kind: kind.into(),
        }
    }

    /// An SDK failure of `op` on `key`.
    pub(super) fn sdk<E>(op: &'static str, key: &str, err: SdkError<E>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let kind = match &err {
            SdkError::ServiceError(e) => ErrorKind::Service {
                code: e.err().code().map(str::to_owned),
                message: e.err().message().map(str::to_owned),
            },
            SdkError::DispatchFailure(_) => ErrorKind::Unreachable(Box::new(err)),
            SdkError::TimeoutError(_) => ErrorKind::Timeout,
            _ => ErrorKind::Sdk(Box::new(err)),
        };
        Self::new(op, key, kind)
    }

    /// The S3 operation (`GetObject`, …).
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The object key (or bucket for bucket operations).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Why it failed.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}
