//! The one verify loop every blob copy goes through: stream → hash →
//! [`Sink`] → verify → commit (or abort). A hydration (upstream or peer
//! region → spool file → store) and eager replication (this region's store
//! → a peer's) both call [`copy`]; what differs is only the sink.
//!
//! Key decisions:
//! - A sink is write / commit / abort and nothing it wrote is visible until
//!   [`Sink::commit`], which [`copy`]'s callers call only after the length
//!   and digest matched (Distribution's `FileWriter`, `STYLE.md` §1, §4).
//! - The body is hashed as it arrives, before the sink sees it: the verdict
//!   never depends on reading back what was written.
//! - Memory is the sink's business and stays flat: the loop holds one chunk.

use std::io;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use wharf_core::Digest;

/// Where a verified copy's bytes go: invisible until committed.
pub trait Sink {
    /// The sink's own failure.
    type Error;

    /// Takes the next chunk of the body.
    fn write(&mut self, chunk: Bytes) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Makes the `len` bytes written visible (called only once they
    /// verified).
    fn commit(self, len: u64) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Discards what was written; nothing becomes visible.
    fn abort(self) -> impl Future<Output = ()> + Send;
}

/// Why a copy was not committed.
#[derive(Debug)]
pub enum CopyError<E> {
    /// The body failed after `at` bytes.
    Body {
        /// Bytes received before the failure.
        at: u64,
        /// What failed.
        source: io::Error,
    },
    /// The sink failed.
    Sink(E),
    /// The bytes are not the blob: a wrong length (`total` announced) or a
    /// wrong digest. `got` says which.
    Mismatch {
        /// `N of M bytes`, or the digest the bytes hashed to.
        got: String,
    },
}

/// Copies `body` into `sink`, hashing it on the way; commits the sink only
/// when the bytes are `total` long (when announced) and hash to `want`,
/// else aborts it. Returns the length committed.
pub async fn copy<S: Sink>(
    body: impl Stream<Item = io::Result<Bytes>>,
    want: &Digest,
    total: Option<u64>,
    mut sink: S,
) -> Result<u64, CopyError<S::Error>> {
    let mut body = std::pin::pin!(body);
    let mut verifier = want.verifier();
    let mut len = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(source) => {
                sink.abort().await;
                return Err(CopyError::Body { at: len, source });
            }
        };
        verifier.update(&chunk);
        len += chunk.len() as u64;
        if let Err(e) = sink.write(chunk).await {
            sink.abort().await;
            return Err(CopyError::Sink(e));
        }
    }
    let got = verifier.finish();
    let mismatch = match total {
        Some(total) if total != len => Some(format!("{len} of {total} bytes")),
        _ if &got != want => Some(format!("{got} ({len} bytes)")),
        _ => None,
    };
    if let Some(got) = mismatch {
        sink.abort().await;
        return Err(CopyError::Mismatch { got });
    }
    sink.commit(len).await.map_err(CopyError::Sink)?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what happened to it.
    #[derive(Default)]
    struct Recorder {
        written: Vec<u8>,
        outcome: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    }

    impl Sink for Recorder {
        type Error = ();

        async fn write(&mut self, chunk: Bytes) -> Result<(), ()> {
            self.written.extend_from_slice(&chunk);
            Ok(())
        }

        async fn commit(self, len: u64) -> Result<(), ()> {
            assert_eq!(len, self.written.len() as u64);
            *self.outcome.lock().unwrap() = Some("committed".into());
            Ok(())
        }

        async fn abort(self) {
            *self.outcome.lock().unwrap() = Some("aborted".into());
        }
    }

    fn body(parts: &[&'static [u8]], fail: bool) -> impl Stream<Item = io::Result<Bytes>> {
        let mut items: Vec<io::Result<Bytes>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        if fail {
            items.push(Err(io::Error::other("reset")));
        }
        futures::stream::iter(items)
    }

    type Case = (&'static [&'static [u8]], Option<u64>, bool, &'static str);

    #[tokio::test]
    async fn only_a_body_of_the_right_digest_and_length_is_committed() {
        let want = Digest::sha256_of(b"hello world");
        // (body parts, announced length, body fails at its end, outcome)
        let cases: [Case; 6] = [
            (&[b"hello ", b"world"], Some(11), false, "committed"),
            (&[b"hello world"], None, false, "committed"),
            (&[b"hello worle"], Some(11), false, "aborted"),
            (&[b"hello"], Some(11), false, "aborted"),
            (&[b"hello"], None, false, "aborted"),
            (&[b"hello"], Some(11), true, "aborted"),
        ];
        for (parts, total, fail, expected) in cases {
            let sink = Recorder::default();
            let outcome = sink.outcome.clone();
            let result = copy(body(parts, fail), &want, total, sink).await;
            assert_eq!(
                outcome.lock().unwrap().as_deref(),
                Some(expected),
                "{parts:?}"
            );
            match (expected, result) {
                ("committed", Ok(len)) => assert_eq!(len, 11),
                ("aborted", Err(CopyError::Body { at, .. })) => assert!(fail && at == 5),
                ("aborted", Err(CopyError::Mismatch { .. })) => assert!(!fail),
                (_, other) => panic!("{parts:?}: {:?}", other.map_err(|_| ())),
            }
        }
    }
}
