//! Pass-through: a blob streamed from the upstream to one client, verified
//! on the way and never stored — what a cold request gets when the origin
//! may not hydrate it (the spool's disk is nearly full, or the hydration
//! limits are reached; see `crate::limits`).
//!
//! The bytes go from the upstream response to the client with one chunk held
//! back: the last chunk is released only after the whole body matched the
//! digest (and the announced length), so a client never receives a complete
//! body that is wrong — a mismatch ends the response with an error and the
//! connection is reset, exactly as for a hydration. Memory is one chunk, and
//! nothing touches the disk.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use wharf_core::{Digest, DigestVerifier};

/// Why a pass-through body failed.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The upstream's body broke off.
    #[error("upstream body failed after {after} bytes: {cause}")]
    Body {
        /// Bytes received before the failure.
        after: u64,
        /// What the transport said.
        cause: String,
    },
    /// The body did not hash to its digest, or had the wrong length.
    #[error("upstream sent {got} ({len} bytes) for {want}; nothing was served as complete")]
    Mismatch {
        /// The digest asked for.
        want: Digest,
        /// What the bytes hashed to.
        got: Digest,
        /// Bytes received.
        len: u64,
    },
}

/// `body` checked against `digest` (and `len`, when announced) while it
/// streams; the final chunk is held back until the check passed.
pub fn verified<S, E>(
    body: S,
    digest: Digest,
    len: Option<u64>,
) -> impl Stream<Item = Result<Bytes, PassError>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display,
{
    struct State<S> {
        body: std::pin::Pin<Box<S>>,
        hasher: Option<DigestVerifier>,
        held: Option<Bytes>,
        read: u64,
        digest: Digest,
        len: Option<u64>,
    }
    let state = State {
        body: Box::pin(body),
        hasher: Some(DigestVerifier::new(digest.algorithm())),
        held: None,
        read: 0,
        digest,
        len,
    };
    futures::stream::unfold(state, |mut s| async move {
        let hasher = s.hasher.as_mut()?;
        loop {
            match s.body.next().await {
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => {
                    hasher.update(&chunk);
                    s.read += chunk.len() as u64;
                    // Release the previous chunk, hold this one.
                    if let Some(previous) = s.held.replace(chunk) {
                        return Some((Ok(previous), s));
                    }
                }
                Some(Err(e)) => {
                    let err = PassError::Body {
                        after: s.read,
                        cause: e.to_string(),
                    };
                    s.hasher = None;
                    return Some((Err(err), s));
                }
                None => {
                    let got = s.hasher.take()?.finish();
                    let len_ok = s.len.is_none_or(|l| l == s.read);
                    if got != s.digest || !len_ok {
                        let err = PassError::Mismatch {
                            want: s.digest.clone(),
                            got,
                            len: s.read,
                        };
                        return Some((Err(err), s));
                    }
                    return s.held.take().map(|last| (Ok(last), s));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(bytes: &[u8]) -> Digest {
        let mut v = DigestVerifier::new(wharf_core::DigestAlgorithm::Sha256);
        v.update(bytes);
        v.finish()
    }

    async fn run(
        chunks: Vec<Result<&'static [u8], &'static str>>,
        digest: Digest,
        len: Option<u64>,
    ) -> Vec<Result<Vec<u8>, String>> {
        let body = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| c.map(Bytes::from_static).map_err(str::to_owned)),
        );
        verified(body, digest, len)
            .map(|r| r.map(|b| b.to_vec()).map_err(|e| e.to_string()))
            .collect()
            .await
    }

    #[tokio::test]
    async fn a_matching_body_is_passed_on_whole_and_in_order() {
        let d = digest_of(b"hello world");
        let out = run(
            vec![Ok(b"hello"), Ok(b""), Ok(b" "), Ok(b"world")],
            d,
            Some(11),
        )
        .await;
        let bytes: Vec<u8> = out.into_iter().flat_map(|r| r.unwrap()).collect();
        assert_eq!(bytes, b"hello world");
    }

    #[tokio::test]
    async fn a_wrong_body_never_delivers_its_last_chunk() {
        let d = digest_of(b"hello world");
        let out = run(vec![Ok(b"hello"), Ok(b" "), Ok(b"WORLD")], d.clone(), None).await;
        assert_eq!(out[0].as_deref(), Ok(&b"hello"[..]));
        assert_eq!(out[1].as_deref(), Ok(&b" "[..]));
        assert!(
            out[2]
                .as_ref()
                .unwrap_err()
                .contains("nothing was served as complete")
        );
        assert_eq!(out.len(), 3, "nothing after the error");
        // The right bytes but a different announced length: refused too.
        let out = run(vec![Ok(b"hello world")], d.clone(), Some(12)).await;
        assert!(out[0].is_err());
        // A body that breaks off: an error, and the held chunk stays held.
        let out = run(vec![Ok(b"hello"), Ok(b" "), Err("reset")], d, None).await;
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].as_deref(), Ok(&b"hello"[..]));
        assert!(out[1].as_ref().unwrap_err().contains("reset"));
    }

    #[tokio::test]
    async fn an_empty_blob_verifies() {
        let out = run(vec![], digest_of(b""), Some(0)).await;
        assert!(out.is_empty());
        let out = run(vec![], digest_of(b"x"), None).await;
        assert!(out[0].is_err());
    }
}
