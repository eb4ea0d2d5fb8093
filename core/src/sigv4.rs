//! AWS Signature Version 4 query-string presigning of S3 object URLs (`GET`
//! and `HEAD`), so the edge can answer a blob request with a `307` to the
//! regional bucket without a subrequest and without an AWS SDK.
//!
//! Owns [`S3Endpoint`] (a parsed, normalised endpoint URL), [`Addressing`],
//! [`Credentials`], [`PresignRequest`], [`presign`] and [`SigV4Error`].
//!
//! Key decisions:
//! * Pure: the signing time is the caller's `now_unix_secs` (no clock), and
//!   the result is a plain `String` URL.
//! * Only the `host` header is signed and the payload is `UNSIGNED-PAYLOAD`,
//!   as the AWS SDKs presign: any HTTP client that follows a redirect sends
//!   `Host`, nothing else can be relied on.
//! * Object keys are encoded per S3's `UriEncode(key, encodeSlash = false)`:
//!   every byte but `A-Z a-z 0-9 - . _ ~` percent-encoded, `/` kept. S3 does
//!   not normalise paths, so the canonical URI is exactly the sent path.
//! * The endpoint's default port (`:80` for http, `:443` for https) is dropped
//!   from the signed `host`, because clients drop it from the `Host` header.

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

use crate::api::ApiMethod;
use crate::urlencode::encode_component;
use crate::utc::UtcDateTime;

/// The longest validity SigV4 allows for a presigned URL: 7 days.
pub const MAX_EXPIRES_SECS: u64 = 7 * 24 * 60 * 60;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Why a URL cannot be presigned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// The endpoint is not an `http(s)://host[:port][/prefix]` URL.
    #[error(
        "S3 endpoint `{endpoint}` is invalid: {reason} (expected e.g. `https://s3.eu-central-1.amazonaws.com` or `http://127.0.0.1:9000`)"
    )]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The bucket name is not a valid S3 bucket name.
    #[error("bucket `{0}` is invalid: expected 3 to 63 characters of a-z, 0-9, `.` and `-`")]
    InvalidBucket(String),
    /// The object key is empty or longer than 1024 bytes.
    #[error("object key must be 1 to 1024 bytes long (got {0} bytes)")]
    InvalidKey(usize),
    /// The region is empty or contains characters that break the credential scope.
    #[error("signing region `{0}` is invalid: expected e.g. `us-east-1`")]
    InvalidRegion(String),
    /// The access key is empty or contains control characters.
    #[error("S3 access key is empty or contains control characters")]
    InvalidAccessKey,
    /// The validity is 0 or beyond [`MAX_EXPIRES_SECS`].
    #[error("presigned URL validity must be 1 to 604800 seconds (got {0})")]
    InvalidExpiry(u64),
}

/// Path-style (`https://endpoint/bucket/key`) or virtual-hosted
/// (`https://bucket.endpoint/key`) addressing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Addressing {
    /// `https://endpoint/bucket/key`: works with every S3-compatible server,
    /// IP addresses and dotted bucket names; the default.
    #[default]
    Path,
    /// `https://bucket.endpoint/key`: what AWS prefers for new buckets.
    VirtualHosted,
}

/// A parsed endpoint: scheme, authority (lowercase, default port dropped) and
/// an optional path prefix (no trailing `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Endpoint {
    scheme: &'static str,
    authority: String,
    prefix: String,
}

impl S3Endpoint {
    /// Parses `http(s)://host[:port][/prefix]`.
    pub fn parse(endpoint: &str) -> Result<S3Endpoint, SigV4Error> {
        let bad = |reason| SigV4Error::InvalidEndpoint {
            endpoint: crate::digest::excerpt(endpoint),
            reason,
        };
        let (scheme, rest) = if let Some(rest) = strip_prefix_ci(endpoint, "https://") {
            ("https", rest)
        } else if let Some(rest) = strip_prefix_ci(endpoint, "http://") {
            ("http", rest)
        } else {
            return Err(bad("it must start with http:// or https://"));
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(bad("it has no host"));
        }
        if !authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        {
            return Err(bad(
                "the host may only contain letters, digits, `.`, `-`, `:` and `[]`",
            ));
        }
        if prefix
            .bytes()
            .any(|b| b.is_ascii_control() || matches!(b, b' ' | b'?' | b'#'))
        {
            return Err(bad("the path may not contain spaces, `?` or `#`"));
        }
        let mut authority = authority.to_ascii_lowercase();
        let default_port = if scheme == "https" { ":443" } else { ":80" };
        if authority.ends_with(default_port) && !authority.ends_with(']') {
            authority.truncate(authority.len() - default_port.len());
        }
        if authority.is_empty() || authority.starts_with(':') {
            return Err(bad("it has no host"));
        }
        Ok(S3Endpoint {
            scheme,
            authority,
            prefix: prefix.to_owned(),
        })
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &str {
        self.scheme
    }

    /// `host[:port]`, lowercase, without the scheme's default port.
    pub fn authority(&self) -> &str {
        &self.authority
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// An access key pair (and optional session token). `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Session token of temporary credentials (`X-Amz-Security-Token`).
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Everything one presigned URL depends on.
#[derive(Clone, Debug)]
pub struct PresignRequest<'a> {
    /// `GET` (download) or `HEAD` (existence and size).
    pub method: ApiMethod,
    /// The store's endpoint.
    pub endpoint: &'a S3Endpoint,
    /// Path-style or virtual-hosted.
    pub addressing: Addressing,
    /// Bucket name.
    pub bucket: &'a str,
    /// Object key (unencoded), e.g. `blobs/sha256/<hex>`.
    pub key: &'a str,
    /// Signing region, e.g. `us-east-1`.
    pub region: &'a str,
    /// Who signs.
    pub credentials: &'a Credentials,
    /// Signing time, unix seconds.
    pub now_unix_secs: u64,
    /// Validity in seconds, 1 to [`MAX_EXPIRES_SECS`].
    pub expires_in_secs: u64,
}

fn valid_bucket(bucket: &str) -> bool {
    (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
}

/// S3's `UriEncode(key, encodeSlash = false)`.
fn encode_key(key: &str) -> String {
    key.split('/')
        .map(encode_component)
        .collect::<Vec<_>>()
        .join("/")
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The SigV4 signing key: `HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`.
pub fn signing_key(secret_key: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac(format!("AWS4{secret_key}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// Returns the presigned URL for `req`.
pub fn presign(req: &PresignRequest<'_>) -> Result<String, SigV4Error> {
    if !valid_bucket(req.bucket) {
        return Err(SigV4Error::InvalidBucket(crate::digest::excerpt(
            req.bucket,
        )));
    }
    if req.key.is_empty() || req.key.len() > 1024 {
        return Err(SigV4Error::InvalidKey(req.key.len()));
    }
    if req.region.is_empty()
        || !req
            .region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        return Err(SigV4Error::InvalidRegion(crate::digest::excerpt(
            req.region,
        )));
    }
    let creds = req.credentials;
    if creds.access_key.is_empty() || creds.access_key.bytes().any(|b| b.is_ascii_control()) {
        return Err(SigV4Error::InvalidAccessKey);
    }
    if req.expires_in_secs == 0 || req.expires_in_secs > MAX_EXPIRES_SECS {
        return Err(SigV4Error::InvalidExpiry(req.expires_in_secs));
    }

    let ep = req.endpoint;
    let (host, path) = match req.addressing {
        Addressing::Path => (
            ep.authority.clone(),
            format!("{}/{}/{}", ep.prefix, req.bucket, encode_key(req.key)),
        ),
        Addressing::VirtualHosted => (
            format!("{}.{}", req.bucket, ep.authority),
            format!("{}/{}", ep.prefix, encode_key(req.key)),
        ),
    };

    let t = UtcDateTime::from_unix(req.now_unix_secs);
    let (date, datetime) = (t.amz_date(), t.amz_datetime());
    let scope = format!("{date}/{}/s3/aws4_request", req.region);
    let mut query = vec![
        ("X-Amz-Algorithm", ALGORITHM.to_owned()),
        (
            "X-Amz-Credential",
            encode_component(&format!("{}/{scope}", creds.access_key)),
        ),
        ("X-Amz-Date", datetime.clone()),
        ("X-Amz-Expires", req.expires_in_secs.to_string()),
        ("X-Amz-SignedHeaders", "host".to_owned()),
    ];
    if let Some(token) = &creds.session_token {
        query.push(("X-Amz-Security-Token", encode_component(token)));
    }
    // Canonical query: sorted by (encoded) name; all names are unreserved.
    query.sort_by(|a, b| a.0.cmp(b.0));
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");

    let canonical_request = format!(
        "{method}\n{path}\n{canonical_query}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD",
        method = req.method.as_str(),
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{datetime}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let key = signing_key(&creds.secret_key, &date, req.region, "s3");
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    Ok(format!(
        "{scheme}://{host}{path}?{canonical_query}&X-Amz-Signature={signature}",
        scheme = ep.scheme
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn example_creds() -> Credentials {
        Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    /// AWS S3 documentation, "Authenticating Requests: Using Query Parameters
    /// (AWS Signature Version 4)", example presigned URL.
    #[test]
    fn aws_published_presigned_url_example() {
        let endpoint = S3Endpoint::parse("https://s3.amazonaws.com").unwrap();
        let creds = example_creds();
        let url = presign(&PresignRequest {
            method: ApiMethod::Get,
            endpoint: &endpoint,
            addressing: Addressing::VirtualHosted,
            bucket: "examplebucket",
            key: "test.txt",
            region: "us-east-1",
            credentials: &creds,
            now_unix_secs: 1_369_353_600, // 20130524T000000Z
            expires_in_secs: 86_400,
        })
        .unwrap();
        assert_eq!(
            url,
            "https://examplebucket.s3.amazonaws.com/test.txt\
             ?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
             &X-Amz-Date=20130524T000000Z\
             &X-Amz-Expires=86400\
             &X-Amz-SignedHeaders=host\
             &X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    /// AWS General Reference, "Examples of how to derive a signing key for
    /// Signature Version 4".
    #[test]
    fn aws_published_signing_key_example() {
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20120215",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex::encode(key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    #[test]
    fn path_style_keys_methods_and_tokens() {
        let endpoint = S3Endpoint::parse("HTTP://127.0.0.1:9000/").unwrap();
        assert_eq!(endpoint.authority(), "127.0.0.1:9000");
        let creds = example_creds();
        let base = PresignRequest {
            method: ApiMethod::Get,
            endpoint: &endpoint,
            addressing: Addressing::Path,
            bucket: "wharf",
            key: "blobs/sha256/ab cd+é",
            region: "us-east-1",
            credentials: &creds,
            now_unix_secs: 1_369_353_600,
            expires_in_secs: 600,
        };
        let get = presign(&base).unwrap();
        assert!(
            get.starts_with(
                "http://127.0.0.1:9000/wharf/blobs/sha256/ab%20cd%2B%C3%A9?X-Amz-Algorithm="
            ),
            "{get}"
        );
        let head = presign(&PresignRequest {
            method: ApiMethod::Head,
            ..base.clone()
        })
        .unwrap();
        assert_ne!(get, head, "the method is signed");
        let temporary = Credentials {
            session_token: Some("tok/en=".into()),
            ..example_creds()
        };
        let with_token = presign(&PresignRequest {
            credentials: &temporary,
            ..base
        })
        .unwrap();
        assert!(
            with_token.contains("&X-Amz-Security-Token=tok%2Fen%3D&X-Amz-SignedHeaders=host&"),
            "{with_token}"
        );
    }

    #[test]
    fn endpoint_table() {
        let ok = [
            ("https://s3.amazonaws.com", "https", "s3.amazonaws.com", ""),
            ("https://S3.Example.com:443", "https", "s3.example.com", ""),
            ("http://minio:80/", "http", "minio", ""),
            ("http://[::1]:9000/s3/", "http", "[::1]:9000", "/s3"),
            ("https://garage:3900", "https", "garage:3900", ""),
        ];
        for (input, scheme, authority, prefix) in ok {
            let e = S3Endpoint::parse(input).unwrap();
            assert_eq!(
                (e.scheme(), e.authority(), e.prefix.as_str()),
                (scheme, authority, prefix)
            );
        }
        for bad in [
            "",
            "s3.amazonaws.com",
            "ftp://x",
            "https://",
            "https://u@h",
            "http://:80",
            "https://h/a b",
        ] {
            assert!(S3Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_requests_are_errors() {
        let endpoint = S3Endpoint::parse("http://127.0.0.1:9000").unwrap();
        let creds = example_creds();
        let base = PresignRequest {
            method: ApiMethod::Get,
            endpoint: &endpoint,
            addressing: Addressing::Path,
            bucket: "wharf",
            key: "k",
            region: "us-east-1",
            credentials: &creds,
            now_unix_secs: 0,
            expires_in_secs: 60,
        };
        assert!(presign(&base).is_ok());
        let cases = [
            PresignRequest {
                bucket: "Wharf",
                ..base.clone()
            },
            PresignRequest {
                key: "",
                ..base.clone()
            },
            PresignRequest {
                region: "us/east",
                ..base.clone()
            },
            PresignRequest {
                expires_in_secs: 0,
                ..base.clone()
            },
            PresignRequest {
                expires_in_secs: MAX_EXPIRES_SECS + 1,
                ..base.clone()
            },
        ];
        for case in cases {
            assert!(presign(&case).is_err(), "{case:?}");
        }
        let secret = format!("{creds:?}");
        assert!(!secret.contains("EXAMPLEKEY"), "{secret}");
    }

    proptest! {
        #[test]
        fn presign_never_panics(
            endpoint in "\\PC{0,40}",
            bucket in "\\PC{0,70}",
            key in "\\PC{0,80}",
            region in "\\PC{0,20}",
            access in "\\PC{0,30}",
            secret in "\\PC{0,50}",
            now in any::<u64>(),
            expires in any::<u64>(),
            vhost in any::<bool>(),
        ) {
            if let Ok(ep) = S3Endpoint::parse(&endpoint) {
                let creds = Credentials { access_key: access, secret_key: secret, session_token: None };
                let _ = presign(&PresignRequest {
                    method: ApiMethod::Head,
                    endpoint: &ep,
                    addressing: if vhost { Addressing::VirtualHosted } else { Addressing::Path },
                    bucket: &bucket,
                    key: &key,
                    region: &region,
                    credentials: &creds,
                    now_unix_secs: now,
                    expires_in_secs: expires,
                });
            }
        }

        #[test]
        fn valid_requests_always_sign(key in "[a-z0-9/._ -]{1,100}", now in 0u64..10_000_000_000) {
            let ep = S3Endpoint::parse("http://127.0.0.1:9000").unwrap();
            let creds = example_creds();
            let url = presign(&PresignRequest {
                method: ApiMethod::Get,
                endpoint: &ep,
                addressing: Addressing::Path,
                bucket: "wharf",
                key: &key,
                region: "us-east-1",
                credentials: &creds,
                now_unix_secs: now,
                expires_in_secs: 300,
            }).unwrap();
            prop_assert!(url.starts_with("http://127.0.0.1:9000/wharf/"));
            prop_assert_eq!(url.matches("X-Amz-Signature=").count(), 1);
        }
    }
}
