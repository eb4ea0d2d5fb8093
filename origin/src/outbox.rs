//! Webhooks that are not lost: every event ([`crate::events`]) is written
//! to an outbox directory before it counts as queued, and delivered from
//! there as a CloudEvents 1.0 JSON `POST`, signed, retried with backoff,
//! and removed only once the receiver answered `2xx`. The outbox survives
//! a restart (Distribution keeps its queue in memory and loses it).
//!
//! * **Never blocking a pull**: [`Outbox::queue`] hands the event to a
//!   writer thread through a bounded channel and returns; when the channel
//!   is full the event is dropped and counted (`wharf_events_total{result
//!   ="dropped"}`).
//! * **Durable**: the writer writes each event to a temporary file, syncs
//!   it and renames it into place; a delivery task sends the files oldest
//!   first. A crash after the receiver's `2xx` and before the removal sends
//!   that event again, with the same `id`: receivers deduplicate on the id
//!   (also in `Idempotency-Key`), which makes delivery exactly-once for
//!   them.
//! * **Signed**: `X-Wharf-Signature: sha256=<hex HMAC-SHA256 of the body>`
//!   with the configured secret.
//! * **One process per outbox**: the directory's `.lock` is held (`flock`)
//!   while the origin runs.
//! * Events older than `max_age` (7 days by default) are given up, counted.
//!
//! Event types: `dev.wharf.hydration.completed`, `dev.wharf.hydration.failed`,
//! `dev.wharf.image.evicted`, `dev.wharf.tag.moved`, `dev.wharf.tag.prefetched`,
//! `dev.wharf.region.health_changed`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::Notify;

use crate::events::{Event, now_ms};
use crate::metrics;

/// Events waiting for the writer thread; past this they are dropped.
const CHANNEL: usize = 10_000;

/// `[events]`, validated.
#[derive(Clone, Debug)]
pub struct OutboxSettings {
    /// Where events are `POST`ed.
    pub webhook: String,
    /// The HMAC key of `X-Wharf-Signature`.
    pub secret: String,
    /// The outbox directory.
    pub dir: PathBuf,
    /// The first retry's delay (doubled per attempt)...
    pub retry_min: Duration,
    /// ...up to this.
    pub retry_max: Duration,
    /// Events older than this are given up.
    pub max_age: Duration,
    /// `source` of the events (`wharf://<region>/<replica>`).
    pub source: String,
}

/// A CloudEvents 1.0 envelope (structured JSON mode).
#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: String,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    datacontenttype: &'static str,
    data: &'a Event,
}

/// The CloudEvents `type` of an event.
pub fn event_type(event: &Event) -> &'static str {
    match event {
        Event::Hydration { ok: true, .. } => "dev.wharf.hydration.completed",
        Event::Hydration { ok: false, .. } => "dev.wharf.hydration.failed",
        Event::Eviction { .. } => "dev.wharf.image.evicted",
        Event::TagMoved { .. } => "dev.wharf.tag.moved",
        Event::TagPrefetched { .. } => "dev.wharf.tag.prefetched",
        Event::RegionHealth { .. } => "dev.wharf.region.health_changed",
    }
}

/// The HMAC-SHA256 signature header's value for `body`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The outbox of this process.
pub struct Outbox {
    tx: SyncSender<Vec<u8>>,
    source: String,
}

impl Outbox {
    /// Claims `settings.dir` (its lock), starts the writer thread and the
    /// delivery task. Events already in the directory (left by a previous
    /// run) are delivered first.
    pub fn start(settings: OutboxSettings) -> std::io::Result<Arc<Outbox>> {
        std::fs::create_dir_all(&settings.dir)?;
        let lock = std::fs::File::create(settings.dir.join(".lock"))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| {
                std::io::Error::other(format!(
                    "the outbox {} is in use by another running origin; give each origin its own `events.outbox_dir`",
                    settings.dir.display()
                ))
            },
        )?;
        let (tx, rx) = sync_channel::<Vec<u8>>(CHANNEL);
        let wake = Arc::new(Notify::new());
        let dir = settings.dir.clone();
        let writer_wake = wake.clone();
        std::thread::Builder::new()
            .name("wharf-outbox-writer".into())
            .spawn(move || {
                // Held for the life of the process.
                let _lock = lock;
                let mut seq = 0u64;
                while let Ok(body) = rx.recv() {
                    seq += 1;
                    match write_event(&dir, seq, &body) {
                        Ok(()) => writer_wake.notify_one(),
                        Err(e) => {
                            tracing::error!(error = %e, "event not written to the outbox; it is lost");
                            metrics::events("lost", 1);
                        }
                    }
                }
            })?;
        tokio::spawn(deliver(settings.clone(), wake));
        Ok(Arc::new(Outbox {
            tx,
            source: settings.source,
        }))
    }

    /// Queues `event` (see the module doc: never blocks).
    pub fn queue(&self, event: &Event) {
        let envelope = CloudEvent {
            specversion: "1.0",
            id: uuid::Uuid::new_v4().to_string(),
            source: &self.source,
            kind: event_type(event),
            time: wharf_core::utc::UtcDateTime::from_unix(now_ms() / 1000).rfc3339(),
            datacontenttype: "application/json",
            data: event,
        };
        let Ok(body) = serde_json::to_vec(&envelope) else {
            return;
        };
        match self.tx.try_send(body) {
            Ok(()) => metrics::events("queued", 1),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                tracing::warn!("outbox writer behind; event dropped");
                metrics::events("dropped", 1);
            }
        }
    }
}

/// Writes one event durably: temporary file, sync, rename.
fn write_event(dir: &Path, seq: u64, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    // Sorts by time, then by order of writing within this process.
    let name = format!("{:016x}-{seq:010}.json", now_ms());
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(&name))?;
    // The rename itself survives a crash once the directory is synced.
    std::fs::File::open(dir)?.sync_all()
}

/// The events waiting in `dir`, oldest first.
fn pending(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

/// When the file `path` was queued (unix ms, from its name).
fn queued_ms(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    u64::from_str_radix(name.split('-').next()?, 16).ok()
}

async fn deliver(settings: OutboxSettings, wake: Arc<Notify>) {
    let http = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook client not built; events stay in the outbox");
            return;
        }
    };
    // Per file: attempts so far and when the next may go.
    let mut retry: HashMap<PathBuf, (u32, Instant)> = HashMap::new();
    loop {
        let files = pending(&settings.dir);
        metrics::outbox(files.len(), files.first().and_then(|p| queued_ms(p)));
        let now = Instant::now();
        let mut next_wake: Option<Instant> = None;
        for path in files {
            if let Some((_, at)) = retry.get(&path)
                && *at > now
            {
                next_wake = Some(next_wake.map_or(*at, |n| n.min(*at)));
                continue;
            }
            if queued_ms(&path)
                .is_some_and(|q| now_ms().saturating_sub(q) > settings.max_age.as_millis() as u64)
            {
                tracing::error!(file = %path.display(), "event older than events.max_age; given up");
                metrics::events("expired", 1);
                let _ = std::fs::remove_file(&path);
                retry.remove(&path);
                continue;
            }
            let Ok(body) = std::fs::read(&path) else {
                continue;
            };
            let id = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let sent = http
                .post(&settings.webhook)
                .header("Content-Type", "application/cloudevents+json")
                .header("Idempotency-Key", &id)
                .header("X-Wharf-Signature", signature(&settings.secret, &body))
                .body(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    let _ = std::fs::remove_file(&path);
                    retry.remove(&path);
                    metrics::events("delivered", 1);
                }
                failed => {
                    let why = match failed {
                        Ok(r) => format!("answered {}", r.status()),
                        Err(e) => e.to_string(),
                    };
                    let attempts = retry.get(&path).map_or(0, |(a, _)| *a) + 1;
                    let delay = settings
                        .retry_min
                        .saturating_mul(1 << attempts.min(16).saturating_sub(1))
                        .min(settings.retry_max);
                    tracing::warn!(
                        id,
                        attempts,
                        ?delay,
                        error = why,
                        "webhook delivery failed; retrying"
                    );
                    metrics::events("failed", 1);
                    let at = Instant::now() + delay;
                    retry.insert(path, (attempts, at));
                    next_wake = Some(next_wake.map_or(at, |n| n.min(at)));
                    // The receiver is down: the rest would fail the same
                    // way; wait for this one's retry.
                    break;
                }
            }
        }
        let left = pending(&settings.dir);
        metrics::outbox(left.len(), left.first().and_then(|p| queued_ms(p)));
        let sleep = next_wake.map_or(Duration::from_secs(60), |at| {
            at.saturating_duration_since(Instant::now())
        });
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn events_are_written_durably_and_read_back_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        write_event(dir.path(), 2, b"{\"id\":\"b\"}").unwrap();
        std::thread::sleep(Duration::from_millis(2));
        write_event(dir.path(), 3, b"{\"id\":\"c\"}").unwrap();
        std::fs::write(dir.path().join(".half-written.json.tmp"), b"{").unwrap();
        let files = pending(dir.path());
        assert_eq!(files.len(), 2, "temporary files are not events");
        assert!(files[0] < files[1]);
        assert_eq!(std::fs::read(&files[0]).unwrap(), b"{\"id\":\"b\"}");
        assert!(queued_ms(&files[0]).unwrap() <= queued_ms(&files[1]).unwrap());
    }
}
