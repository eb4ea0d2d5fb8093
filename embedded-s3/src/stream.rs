//! Moving bytes between HTTP bodies and files without holding whole objects
//! in memory.
//!
//! Both directions hand the file side to one `spawn_blocking` thread and talk
//! to it through a small bounded channel, so network and disk overlap and
//! memory per request is bounded (a few MiB) whatever the object size.
//! Uploads are hashed (CRC-64/NVME for the ETag) on a second thread so
//! hashing overlaps the disk writes, and a third thread starts writeback
//! early so the final fsync does not stall on the whole object.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use s3s::dto::StreamingBlob;
use s3s::stream::{ByteStream, RemainingLength};
use s3s::{S3Error, S3ErrorCode, S3Result, s3_error};
use tokio::sync::mpsc;

use crate::store::TempFile;

/// Uploads reach the file thread (and the kernel) in blocks of this size.
const BLOCK: usize = 1 << 20;
/// Read size for downloads.
const READ_CHUNK: u64 = 1 << 20;
/// Bytes written between background fdatasyncs of an upload.
const SYNC_EVERY: u64 = 64 << 20;
/// Chunks in flight between the network task and a file thread.
const DEPTH: usize = 8;

/// A fully written staging file, positioned at the end of the data.
#[derive(Debug)]
pub struct Staged {
    pub tmp: TempFile,
    pub file: File,
    pub len: u64,
    /// CRC-64/NVME of the data (the ETag's basis).
    pub crc64: u64,
    /// MD5, only computed when asked for (Content-MD5 verification).
    pub md5: Option<[u8; 16]>,
}

fn internal(e: impl std::fmt::Display) -> S3Error {
    S3Error::with_message(S3ErrorCode::InternalError, e.to_string())
}

/// Streams `body` into a new staging file while computing its CRC-64/NVME
/// (and its MD5 when `want_md5`, i.e. the client sent `Content-MD5`).
pub async fn stage_body(
    tmp: TempFile,
    mut body: StreamingBlob,
    want_md5: bool,
) -> S3Result<Staged> {
    let path = tmp.path().to_owned();
    let (file_tx, mut file_rx) = mpsc::channel::<Bytes>(DEPTH);
    let (hash_tx, mut hash_rx) = mpsc::channel::<Bytes>(DEPTH);
    let writer = tokio::task::spawn_blocking(move || -> io::Result<(File, u64)> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        // Start writeback while the body is still arriving, so the fsync
        // before publishing has little left to flush: once the upload passes
        // SYNC_EVERY, a helper thread fdatasyncs a second handle each time
        // another SYNC_EVERY bytes were written.
        let mut syncer: Option<(std::sync::mpsc::SyncSender<()>, std::thread::JoinHandle<()>)> =
            None;
        let mut len = 0u64;
        let mut unsynced = 0u64;
        let res = (|| {
            while let Some(block) = file_rx.blocking_recv() {
                file.write_all(&block)?;
                len += block.len() as u64;
                unsynced += block.len() as u64;
                if unsynced >= SYNC_EVERY {
                    unsynced = 0;
                    if syncer.is_none() {
                        let handle = file.try_clone()?;
                        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
                        let thread = std::thread::spawn(move || {
                            while rx.recv().is_ok() {
                                let _ = handle.sync_data();
                            }
                        });
                        syncer = Some((tx, thread));
                    }
                    if let Some((tx, _)) = &syncer {
                        let _ = tx.try_send(()); // still syncing: the next round catches up
                    }
                }
            }
            Ok::<_, io::Error>(())
        })();
        if let Some((tx, thread)) = syncer.take() {
            drop(tx);
            let _ = thread.join();
        }
        res.map(|()| (file, len))
    });
    let hasher = tokio::task::spawn_blocking(move || {
        let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
        let mut md5 = want_md5.then(Md5::new);
        while let Some(block) = hash_rx.blocking_recv() {
            crc.update(&block);
            if let Some(md5) = &mut md5 {
                md5.update(&block);
            }
        }
        let md5: Option<[u8; 16]> = md5.map(|m| m.finalize().into());
        (crc.finalize(), md5)
    });

    // Network chunks are often a few KiB; coalesce them into 1 MiB blocks so
    // the file and hash threads are woken once per MiB, not per chunk.
    let mut pending = BytesMut::new();
    let mut body_error = None;
    loop {
        let block = match body.next().await {
            Some(Ok(chunk)) => {
                if pending.is_empty() && chunk.len() >= BLOCK {
                    chunk
                } else {
                    if pending.capacity() == 0 {
                        pending.reserve(BLOCK);
                    }
                    pending.extend_from_slice(&chunk);
                    if pending.len() < BLOCK {
                        continue;
                    }
                    pending.split().freeze()
                }
            }
            Some(Err(e)) => {
                body_error = Some(e);
                break;
            }
            None if pending.is_empty() => break,
            None => pending.split().freeze(),
        };
        // A send fails only if a thread stopped early (I/O error): stop
        // reading, the writer's result says why.
        if hash_tx.send(block.clone()).await.is_err() || file_tx.send(block).await.is_err() {
            break;
        }
    }
    drop(file_tx);
    drop(hash_tx);
    let written = writer.await.map_err(internal)?;
    let (crc64, md5) = hasher.await.map_err(internal)?;
    if let Some(e) = body_error {
        // s3s reports signature/chunk errors as S3Errors inside the stream.
        return Err(match e.downcast::<S3Error>() {
            Ok(s3) => *s3,
            Err(e) => s3_error!(IncompleteBody, "request body: {e}"),
        });
    }
    let (file, len) = written.map_err(internal)?;
    Ok(Staged {
        tmp,
        file,
        len,
        crc64,
        md5,
    })
}

/// A response body that reads `len` bytes of `file` from `start` on a
/// blocking thread.
pub struct FileBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    remaining: u64,
}

impl FileBody {
    pub fn spawn(mut file: File, start: u64, len: u64) -> Self {
        let (tx, rx) = mpsc::channel(DEPTH / 2);
        tokio::task::spawn_blocking(move || {
            let mut left = len;
            if let Err(e) = file.seek(SeekFrom::Start(start)) {
                let _ = tx.blocking_send(Err(e));
                return;
            }
            while left > 0 {
                let n = left.min(READ_CHUNK);
                // `read_to_end` into reserved capacity reads straight into the
                // buffer without zeroing it first.
                let mut buf = Vec::with_capacity(n as usize);
                let res = (&mut file).take(n).read_to_end(&mut buf);
                let msg = match res {
                    Ok(got) if got as u64 == n => Ok(Bytes::from(buf)),
                    Ok(_) => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "object shrank",
                    )),
                    Err(e) => Err(e),
                };
                let failed = msg.is_err();
                if tx.blocking_send(msg).is_err() || failed {
                    return; // client went away, or we reported the error
                }
                left -= n;
            }
        });
        Self { rx, remaining: len }
    }

    pub fn into_blob(self) -> StreamingBlob {
        StreamingBlob::new(self)
    }
}

impl Stream for FileBody {
    type Item = Result<Bytes, s3s::StdError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.remaining = self.remaining.saturating_sub(chunk.len() as u64);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(Some(Err(Box::new(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file reader stopped",
            ))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, None)
    }
}

impl ByteStream for FileBody {
    fn remaining_length(&self) -> RemainingLength {
        match usize::try_from(self.remaining) {
            Ok(n) => RemainingLength::new_exact(n),
            Err(_) => RemainingLength::unknown(),
        }
    }
}
