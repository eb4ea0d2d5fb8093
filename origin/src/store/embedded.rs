//! The default object store: an S3 server embedded in the origin process.
//!
//! `--data DIR` starts `wharf-embedded-s3` on a loopback port with a random
//! key pair (or the configured one) and hands the origin ordinary
//! [`S3Settings`] for it. The origin also reads and commits blobs on disk
//! directly ([`wharf_embedded_s3::LocalBucket`], through
//! [`super::Store::with_local`]): same files, same atomic publish, no
//! loopback HTTP or second copy of the bytes. Presigned URLs and other
//! processes still use the S3 API.
//!
//! A second, read-only key pair (`[embedded] read_only_access_key` /
//! `read_only_secret_key`) is what the edge presigns with: it can only GET
//! and HEAD objects.

use std::net::SocketAddr;
use std::path::PathBuf;

use rand::distr::{Alphanumeric, SampleString};
use wharf_embedded_s3::{DEFAULT_HEADER_READ_TIMEOUT, EmbeddedConfig, EmbeddedS3, KeyPair};

use super::S3Settings;

/// Settings for the embedded store.
#[derive(Clone, Debug)]
pub struct EmbeddedSettings {
    /// Directory holding the buckets.
    pub data: PathBuf,
    /// Where the S3 server listens (`127.0.0.1:0` picks a port).
    pub listen: SocketAddr,
    /// Access key; random when not configured.
    pub access_key: Option<String>,
    /// Secret key; random when not configured.
    pub secret_key: Option<String>,
    /// The read-only key pair for presigning, when configured.
    pub read_only: Option<KeyPair>,
    /// Bucket name.
    pub bucket: String,
    /// Multipart part size for the origin's uploads.
    pub part_size: u64,
}

/// The store's root directory under `--data`.
pub fn root(settings: &EmbeddedSettings) -> PathBuf {
    settings.data.join("s3")
}

/// Starts the embedded server; returns it (to shut down later) and the
/// settings the origin's S3 client uses.
pub async fn start(settings: &EmbeddedSettings) -> anyhow::Result<(EmbeddedS3, S3Settings)> {
    let access_key = settings
        .access_key
        .clone()
        .unwrap_or_else(|| format!("WHARF{}", Alphanumeric.sample_string(&mut rand::rng(), 15)));
    let secret_key = settings
        .secret_key
        .clone()
        .unwrap_or_else(|| Alphanumeric.sample_string(&mut rand::rng(), 40));
    let region = "us-east-1".to_owned();
    let server = EmbeddedS3::start(EmbeddedConfig {
        root: root(settings),
        listen: settings.listen,
        access_key: access_key.clone(),
        secret_key: secret_key.clone(),
        region: region.clone(),
        buckets: vec![settings.bucket.clone()],
        read_only: settings.read_only.clone(),
        header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "starting the embedded object store under {}: {e}",
            settings.data.display()
        )
    })?;
    let s3 = S3Settings {
        endpoint: server.endpoint(),
        bucket: settings.bucket.clone(),
        region,
        access_key,
        secret_key,
        part_size: settings.part_size,
    };
    Ok((server, s3))
}
