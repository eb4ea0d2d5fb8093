//! The spool file of a flight and what reads it: the leader appends the
//! received chunks ([`append`]) and keeps the newest in memory ([`Window`]);
//! clients follow with [`spool_stream`], from the window when they keep up,
//! else from the file.

use std::collections::VecDeque;
use std::io;
use std::io::{Read, Seek, Write};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::watch;

use super::{Hydration, Phase, Progress};
use crate::store;
use crate::verify;

/// The leader writes the spool file in batches of this many bytes.
const BATCH: usize = 512 * 1024;
/// Readers read the spool file this many bytes at a time.
const READ_CHUNK: usize = 256 * 1024;
/// The newest bytes of a flight kept in memory for readers that keep up.
const WINDOW: u64 = 2 * 1024 * 1024;

/// The newest received chunks of a flight, in memory: the bytes
/// `[start, start + len)` of the blob, at most about [`WINDOW`] of them.
/// Chunks enter after they are in the spool file, so everything before
/// `start` can be read from the file.
#[derive(Default)]
pub(super) struct Window {
    start: u64,
    len: u64,
    chunks: VecDeque<Bytes>,
}

impl Window {
    /// Appends the chunk that follows the window's last byte, dropping the
    /// oldest chunks beyond [`WINDOW`] bytes.
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len() as u64;
        self.chunks.push_back(chunk);
        while self.len > WINDOW {
            let Some(old) = self.chunks.pop_front() else {
                break;
            };
            self.start += old.len() as u64;
            self.len -= old.len() as u64;
        }
    }

    /// Up to `max` bytes at `pos` (never across a chunk boundary), without
    /// copying, if the window holds `pos`.
    fn slice(&self, pos: u64, max: usize) -> Option<Bytes> {
        let mut offset = pos.checked_sub(self.start)?;
        for chunk in &self.chunks {
            let len = chunk.len() as u64;
            if offset < len {
                let from = offset as usize;
                let to = from + max.min(chunk.len() - from);
                return Some(chunk.slice(from..to));
            }
            offset -= len;
        }
        None
    }
}

/// The leader's side of the spool: the [`verify::Sink`] its copy loop
/// writes to. Chunks are appended in batches of [`BATCH`] bytes, each one
/// published to the followers (`written`); commit appends the rest and marks
/// the flight [`Phase::Verified`]. Abort does nothing: the leader marks the
/// flight failed with the reason.
pub(super) struct SpoolWriter<'a> {
    file: Arc<std::fs::File>,
    hydration: &'a Hydration,
    tx: &'a watch::Sender<Progress>,
    /// The chunks received since the last write, written together.
    batch: Batch,
    written: u64,
}

impl<'a> SpoolWriter<'a> {
    /// Creates the flight's spool file.
    pub(super) async fn create(
        hydration: &'a Hydration,
        tx: &'a watch::Sender<Progress>,
    ) -> io::Result<Self> {
        let path = hydration.spool.clone();
        let file = blocking(move || std::fs::File::create(path)).await?;
        Ok(Self {
            file: Arc::new(file),
            hydration,
            tx,
            batch: Batch::default(),
            written: 0,
        })
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.batch.len > 0 {
            self.written =
                append(&self.file, self.hydration, &mut self.batch, self.written).await?;
            let written = self.written;
            self.tx.send_modify(|p| p.written = written);
        }
        Ok(())
    }
}

impl verify::Sink for SpoolWriter<'_> {
    type Error = io::Error;

    async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        self.batch.push(chunk);
        if self.batch.len >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn commit(mut self, _len: u64) -> io::Result<()> {
        self.flush().await?;
        self.tx.send_modify(|p| p.phase = Phase::Verified);
        Ok(())
    }

    async fn abort(self) {}
}

/// Received chunks not yet in the spool file. They are written as they
/// came (one `writev`) and then kept in the window as they are: no copy
/// into a buffer of our own. A window of chunks pins at most the window plus
/// one receive buffer of the HTTP client, since consecutive chunks share
/// their buffers.
#[derive(Default)]
struct Batch {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Batch {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push(chunk);
    }
}

/// Appends `batch` to the spool file (whose length is `at`), then hands its
/// chunks to the flight's window; returns the new spooled length.
async fn append(
    file: &Arc<std::fs::File>,
    hydration: &Hydration,
    batch: &mut Batch,
    at: u64,
) -> io::Result<u64> {
    let chunks = std::mem::take(&mut batch.chunks);
    let len = std::mem::take(&mut batch.len);
    let f = file.clone();
    let chunks = blocking(move || {
        write_all_vectored(&f, &chunks)?;
        Ok(chunks)
    })
    .await?;
    let mut window = lock(&hydration.window);
    for chunk in chunks {
        window.push(chunk);
    }
    Ok(at + len as u64)
}

/// `writev` until every chunk is written (at the file's position: only the
/// leader writes the spool).
fn write_all_vectored(mut file: &std::fs::File, chunks: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = chunks.iter().map(|c| io::IoSlice::new(c)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs blocking file I/O off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

pub(super) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bytes `[start, end)` of a hydrating blob, as they arrive; `end` is
/// the announced length when `None`. Ends with an error if the hydration
/// fails, so the client's connection is reset rather than completed.
pub fn spool_stream(
    hydration: Arc<Hydration>,
    start: u64,
    end: Option<u64>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    struct Reader {
        hydration: Arc<Hydration>,
        rx: watch::Receiver<Progress>,
        file: Option<Arc<std::fs::File>>,
        /// After the commit: the rest, from the store.
        stored: Option<store::BodyStream>,
        pos: u64,
        end: Option<u64>,
    }
    let rx = hydration.progress.clone();
    let reader = Reader {
        hydration,
        rx,
        file: None,
        stored: None,
        pos: start,
        end,
    };
    futures::stream::unfold(reader, |mut r| async move {
        loop {
            if let Some(body) = &mut r.stored {
                return match body.next().await {
                    Some(Ok(bytes)) => {
                        r.pos += bytes.len() as u64;
                        Some((Ok(bytes), r))
                    }
                    Some(Err(e)) => {
                        r.stored = None;
                        r.end = Some(r.pos);
                        Some((Err(e), r))
                    }
                    None => None,
                };
            }
            let progress = r.rx.borrow_and_update().clone();
            let verified = match &progress.phase {
                Phase::Failed(err) => {
                    let e = io::Error::other(format!("blob {} failed: {err}", r.hydration.digest));
                    r.end = Some(r.pos); // end the stream after this error
                    return Some((Err(e), r));
                }
                Phase::Verified => true,
                Phase::Committed => {
                    // The spool file is gone: the rest comes from the store.
                    let end = r.end.unwrap_or(progress.written);
                    if r.pos >= end {
                        return None;
                    }
                    r.file = None;
                    match from_store(&r.hydration, r.pos, end).await {
                        Ok(body) => {
                            r.stored = Some(body);
                            continue;
                        }
                        Err(e) => {
                            r.end = Some(r.pos);
                            return Some((Err(e), r));
                        }
                    }
                }
                _ => false,
            };
            let limit = servable(&progress, verified, r.end);
            if r.pos < limit {
                let want = (limit - r.pos).min(READ_CHUNK as u64) as usize;
                let window = lock(&r.hydration.window).slice(r.pos, want);
                let read = match window {
                    Some(bytes) => Ok(bytes),
                    None => read_at(&mut r.file, &r.hydration.spool, r.pos, want).await,
                };
                return match read {
                    Ok(bytes) if bytes.is_empty() => {
                        let e = io::Error::other("spool file is shorter than announced");
                        r.end = Some(r.pos);
                        Some((Err(e), r))
                    }
                    Ok(bytes) => {
                        r.pos += bytes.len() as u64;
                        Some((Ok(bytes), r))
                    }
                    // Committed and removed between the phase check and
                    // the open: the next round reads from the store.
                    Err(e) if e.kind() == io::ErrorKind::NotFound && r.file.is_none() => {
                        continue;
                    }
                    Err(e) => {
                        r.end = Some(r.pos);
                        Some((Err(e), r))
                    }
                };
            }
            if r.end.is_some_and(|end| r.pos >= end) || (verified && r.pos >= progress.written) {
                return None;
            }
            if r.rx.changed().await.is_err() {
                r.end = Some(r.pos);
                return Some((
                    Err(io::Error::other(
                        "hydration stopped before the blob was complete",
                    )),
                    r,
                ));
            }
        }
    })
}

/// How far a reader of `[.., end)` may read now: what has arrived, less
/// the final byte of the blob — and of a range that ends before the blob
/// does — until the digest is verified, so no response completes from
/// unverified bytes.
fn servable(progress: &Progress, verified: bool, end: Option<u64>) -> u64 {
    let arrived = match progress.total {
        _ if verified => progress.written,
        Some(total) if progress.written < total => progress.written,
        _ => progress.written.saturating_sub(1),
    };
    match end {
        Some(end) if !verified && arrived >= end => end - 1,
        Some(end) => end.min(arrived),
        None => arrived,
    }
}

/// The bytes `[pos, end)` of a committed blob, from the store.
async fn from_store(hydration: &Hydration, pos: u64, end: u64) -> io::Result<store::BodyStream> {
    let key = store::blob_key(&hydration.digest);
    match hydration.store.get_stream(&key, Some((pos, end - 1))).await {
        Ok(Some((_, body))) => Ok(body),
        Ok(None) => Err(io::Error::other("committed blob missing from the store")),
        Err(e) => Err(io::Error::other(e.to_string())),
    }
}

/// At most `want` bytes of the spool file at `pos` (the file may already
/// hold bytes past what the reader is allowed to serve).
async fn read_at(
    file: &mut Option<Arc<std::fs::File>>,
    path: &std::path::Path,
    pos: u64,
    want: usize,
) -> io::Result<Bytes> {
    let f = match file {
        Some(f) => f.clone(),
        None => {
            let path = path.to_owned();
            let f = Arc::new(blocking(move || std::fs::File::open(path)).await?);
            *file = Some(f.clone());
            f
        }
    };
    blocking(move || {
        // `read_to_end` into reserved capacity reads straight into the
        // buffer without zeroing it first.
        let mut buf = Vec::with_capacity(want);
        let mut f = &*f;
        f.seek(io::SeekFrom::Start(pos))?;
        f.take(want as u64).read_to_end(&mut buf)?;
        Ok(Bytes::from(buf))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(byte: u8, len: usize) -> Bytes {
        Bytes::from(vec![byte; len])
    }

    #[test]
    fn the_last_byte_of_the_blob_or_range_waits_for_verification() {
        let at = |written, total| Progress {
            written,
            total,
            phase: Phase::Streaming,
        };
        let cases = [
            // (progress, verified, end) → servable
            (at(50, Some(100)), false, None, 50),
            (at(100, Some(100)), false, None, 99),
            (at(100, Some(100)), true, None, 100),
            (at(40, None), false, None, 39),
            // A range [.., 10): its 10th byte waits too.
            (at(50, Some(100)), false, Some(10), 9),
            (at(50, Some(100)), true, Some(10), 10),
            (at(5, Some(100)), false, Some(10), 5),
            (at(100, Some(100)), false, Some(100), 99),
        ];
        for (progress, verified, end, want) in cases {
            assert_eq!(
                servable(&progress, verified, end),
                want,
                "{progress:?} {verified} {end:?}"
            );
        }
    }

    #[test]
    fn window_serves_what_it_holds_without_crossing_chunks() {
        let mut w = Window::default();
        assert!(w.slice(0, 10).is_none());
        w.push(chunk(1, 100));
        w.push(chunk(2, 50));
        assert_eq!(w.slice(0, 1000).unwrap(), chunk(1, 100));
        assert_eq!(w.slice(90, 1000).unwrap(), chunk(1, 10));
        assert_eq!(w.slice(100, 20).unwrap(), chunk(2, 20));
        assert_eq!(w.slice(149, 20).unwrap(), chunk(2, 1));
        assert!(w.slice(150, 20).is_none());
    }

    #[test]
    fn window_stays_bounded_and_forgets_the_oldest_bytes() {
        let mut w = Window::default();
        let size = (WINDOW / 4) as usize;
        for i in 0..10u8 {
            w.push(chunk(i, size));
            assert!(w.len <= WINDOW);
        }
        // 10 chunks pushed, the last 4 kept: bytes before 6 × size are gone.
        assert_eq!(w.start, 6 * size as u64);
        assert!(w.slice(6 * size as u64 - 1, 1).is_none());
        assert_eq!(w.slice(6 * size as u64, 1).unwrap(), chunk(6, 1));
        assert_eq!(w.slice(10 * size as u64 - 1, 5).unwrap(), chunk(9, 1));
    }

    #[test]
    fn window_drops_a_chunk_larger_than_itself() {
        let mut w = Window::default();
        w.push(chunk(1, WINDOW as usize + 1));
        assert!(w.chunks.is_empty());
        assert_eq!(w.start, WINDOW + 1);
        assert!(w.slice(0, 1).is_none());
    }
}
