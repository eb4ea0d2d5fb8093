//! Prewarming (`wharf warm`): jobs that fetch every manifest and blob of
//! some images ahead of a rollout, so the first pull is a warm pull.
//!
//! A job is started, polled and cancelled through the admin API
//! (`/admin/jobs`). It runs in this process, detached from the request that
//! started it, through the same paths a pull takes: the rules resolve each
//! name, [`Manifests`](crate::manifests::Manifests) fetch (and link) the
//! manifests, and every blob joins or starts its hydration
//! ([`Blobs`](crate::hydrate::Blobs)) — so a warm and a pull of the same
//! blob share one upstream fetch, and what is stored is verified.
//!
//! * An index is warmed for the platforms asked for (all by default).
//! * A warm counts as a pull for retention.
//! * Past the download bounds (`[limits]`) a job waits for room rather than
//!   pass blobs through: passing through would store nothing.
//! * Resumable: a job's state lives in this process, but what it stored
//!   stays; warming the same images again skips every blob already stored.
//! * Cancelling stops the job between blobs; a hydration already running
//!   completes (hydrations outlive whoever started them).
//!
//! Kept in memory: the last [`KEPT_JOBS`] jobs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use wharf_core::access::{Reference as Ref, platform_matches, platforms, references};
use wharf_core::{Digest, ImageRef, Reference};

pub use wharf_core::admin::{BlobProgress, ImageProgress, JobProgress, JobState, WarmRequest};

use crate::hydrate::{BlobSource, Phase};
use crate::state::{AppState, Target};

/// Jobs remembered (running ones are never dropped).
pub const KEPT_JOBS: usize = 100;

/// Blobs of one job hydrated at once.
const CONCURRENCY: usize = 4;

/// How long a job waits before asking again for room to hydrate.
const ROOM_WAIT: Duration = Duration::from_millis(500);

/// One job.
pub struct Job {
    progress: Mutex<JobProgress>,
    cancel: CancellationToken,
    /// Cancelled once the job has ended, however it ended.
    ended: CancellationToken,
}

impl Job {
    fn with<R>(&self, f: impl FnOnce(&mut JobProgress) -> R) -> R {
        f(&mut self.progress.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A copy of its progress.
    pub fn progress(&self) -> JobProgress {
        self.with(|p| p.clone())
    }

    /// Waits until the job has ended (done, failed or cancelled).
    pub async fn ended(&self) {
        self.ended.cancelled().await
    }

    fn blob(&self, digest: &Digest, f: impl FnOnce(&mut BlobProgress)) {
        let digest = digest.to_string();
        self.with(|p| {
            if let Some(b) = p.blobs.iter_mut().find(|b| b.digest == digest) {
                f(b);
            }
            p.bytes_done = p.blobs.iter().map(|b| b.done).sum();
        });
    }
}

/// The jobs of this process.
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<BTreeMap<String, Arc<Job>>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Jobs {
    fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts warming `request` with `state`'s services; returns the job.
    pub fn start(&self, state: AppState, request: WarmRequest) -> Arc<Job> {
        // Ids sort by start time: the map's order is the jobs' age.
        let id = format!(
            "{:013x}-{}",
            now_ms(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let job = Arc::new(Job {
            progress: Mutex::new(JobProgress {
                id: id.clone(),
                state: JobState::Running,
                images: request
                    .images
                    .iter()
                    .map(|i| ImageProgress {
                        image: i.clone(),
                        digest: None,
                        platforms: Vec::new(),
                        error: None,
                    })
                    .collect(),
                request,
                blobs: Vec::new(),
                bytes_total: 0,
                bytes_done: 0,
                started_ms: now_ms(),
                finished_ms: None,
            }),
            cancel: CancellationToken::new(),
            ended: CancellationToken::new(),
        });
        {
            let mut jobs = self.jobs();
            jobs.insert(id, job.clone());
            // Forget the oldest finished ones.
            while jobs.len() > KEPT_JOBS {
                let Some(old) = jobs
                    .iter()
                    .find(|(_, j)| j.with(|p| p.state != JobState::Running))
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                jobs.remove(&old);
            }
        }
        tokio::spawn(run(job.clone(), state));
        job
    }

    /// The job `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs().get(id).cloned()
    }

    /// Every job remembered, oldest first.
    pub fn list(&self) -> Vec<JobProgress> {
        self.jobs().values().map(|j| j.progress()).collect()
    }

    /// Cancels the job `id`; its progress, or `None` if unknown.
    pub fn cancel(&self, id: &str) -> Option<JobProgress> {
        let job = self.get(id)?;
        job.cancel.cancel();
        Some(job.progress())
    }
}

async fn run(job: Arc<Job>, state: AppState) {
    // Ended however the task ends, a panic included.
    let _ended = job.ended.clone().drop_guard();
    let images = job.with(|p| p.request.images.clone());
    let mut failed = false;
    for (i, image) in images.iter().enumerate() {
        if job.cancel.is_cancelled() {
            break;
        }
        if let Err(e) = warm_image(&job, &state, i, image).await {
            tracing::warn!(job = %job.with(|p| p.id.clone()), image, error = %e, "warm: image not warmed");
            job.with(|p| p.images[i].error = Some(e));
            failed = true;
        }
    }
    let blobs_failed = job.with(|p| p.blobs.iter().any(|b| b.state == "failed"));
    job.with(|p| {
        p.finished_ms = Some(now_ms());
        p.state = if job.cancel.is_cancelled() {
            JobState::Cancelled
        } else if failed || blobs_failed {
            JobState::Failed
        } else {
            JobState::Done
        };
        tracing::info!(job = %p.id, state = ?p.state, bytes = p.bytes_done, blobs = p.blobs.len(), "warm finished");
    });
}

async fn warm_image(job: &Arc<Job>, state: &AppState, i: usize, image: &str) -> Result<(), String> {
    let image = ImageRef::parse(image).map_err(|e| format!("{image}: {e}"))?;
    let target = state
        .resolve(&image.name, None)
        .map_err(|e| e.public_message())?;
    let request = target.manifest_request();
    let (top, _) = match &image.reference {
        Reference::Tag(t) => state.manifests.by_tag(&request, t, None).await,
        Reference::Digest(d) => state.manifests.by_digest(&request, d).await,
    }
    .map_err(|e| e.public_message())?;
    state.retention.pulls.record(&target.canonical, &top.digest);
    let wanted = job.with(|p| p.request.platforms.clone());
    let children: Vec<(Digest, String)> = platforms(&top.body)
        .into_iter()
        .filter_map(|(d, p)| Some((d, p?)))
        .filter(|(_, p)| wanted.is_empty() || wanted.iter().any(|w| platform_matches(w, p)))
        .collect();
    let mut manifests = vec![top.clone()];
    if !children.is_empty() {
        manifests.clear();
        for (digest, _) in &children {
            let (child, _) = state
                .manifests
                .by_digest(&request, digest)
                .await
                .map_err(|e| e.public_message())?;
            manifests.push(child);
        }
    } else if !platforms(&top.body).is_empty() {
        return Err(format!(
            "{image}: the index has none of the platforms asked for ({})",
            wanted.join(", ")
        ));
    }
    job.with(|p| {
        p.images[i].digest = Some(top.digest.to_string());
        p.images[i].platforms = children.iter().map(|(_, p)| p.clone()).collect();
    });
    // Each blob once per job, with the size its manifest gives.
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    let mut seen: BTreeSet<Digest> = job.with(|p| {
        p.blobs
            .iter()
            .filter_map(|b| Digest::parse(&b.digest).ok())
            .collect()
    });
    for m in &manifests {
        let sizes = descriptor_sizes(&m.body);
        for r in references(&m.body) {
            if let Ref::Blob(d) = r
                && seen.insert(d.clone())
            {
                let size = sizes.get(&d.to_string()).copied().unwrap_or(0);
                blobs.push((d, size));
            }
        }
    }
    job.with(|p| {
        for (d, size) in &blobs {
            p.blobs.push(BlobProgress {
                digest: d.to_string(),
                size: *size,
                done: 0,
                state: "queued".into(),
                error: None,
            });
            p.bytes_total += size;
        }
    });
    let failures: Vec<String> = futures::stream::iter(blobs)
        .map(|(digest, _)| {
            let (job, state, target) = (job.clone(), state.clone(), target.clone());
            async move {
                let result = warm_blob(&job, &state, &target, &digest).await;
                if let Err(e) = &result {
                    job.blob(&digest, |b| {
                        b.state = "failed".into();
                        b.error = Some(e.clone());
                    });
                }
                result.err()
            }
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(std::future::ready)
        .collect()
        .await;
    match failures.first() {
        Some(first) => Err(format!("{} blob(s) not warmed: {first}", failures.len())),
        None => Ok(()),
    }
}

/// `digest → size` of a manifest's config and layers.
fn descriptor_sizes(body: &[u8]) -> BTreeMap<String, u64> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return BTreeMap::new();
    };
    std::iter::once(&v["config"])
        .chain(v["layers"].as_array().into_iter().flatten())
        .chain(v["blobs"].as_array().into_iter().flatten())
        .filter_map(|d| Some((d["digest"].as_str()?.to_owned(), d["size"].as_u64()?)))
        .collect()
}

/// Hydrates one blob (or finds it stored), following its progress.
async fn warm_blob(
    job: &Job,
    state: &AppState,
    target: &Target,
    digest: &Digest,
) -> Result<(), String> {
    loop {
        if job.cancel.is_cancelled() {
            return Ok(());
        }
        if let Some(meta) = state.blobs.lookup(digest).await {
            job.blob(digest, |b| {
                // Found before this job fetched it, or after its hydration.
                b.state = if b.state == "queued" {
                    "stored"
                } else {
                    "done"
                }
                .into();
                b.done = meta.len;
            });
            return Ok(());
        }
        // The manifest just fetched through this name linked its blobs.
        let request = target.blob_request(digest.clone(), true);
        if !state.blobs.has_room(&request) {
            tokio::select! {
                _ = job.cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(ROOM_WAIT) => continue,
            }
        }
        let hydration = match state.blobs.open(request, None).await {
            Ok(BlobSource::Hydrating { hydration, .. }) => hydration,
            // Stored meanwhile: the lookup above says so next time round.
            Ok(BlobSource::Store(_)) => continue,
            // Room went to another request in between: wait (dropping the
            // body cancels the pass-through).
            Ok(BlobSource::PassThrough { .. }) => {
                tokio::time::sleep(ROOM_WAIT).await;
                continue;
            }
            Err(e) => return Err(e.public_message()),
        };
        job.blob(digest, |b| b.state = "hydrating".into());
        let mut rx = hydration.watch();
        loop {
            let progress = rx.borrow_and_update().clone();
            job.blob(digest, |b| b.done = progress.written);
            match progress.phase {
                Phase::Committed | Phase::InStore(_) => {
                    job.blob(digest, |b| {
                        b.state = "done".into();
                        b.done = b.size.max(progress.written);
                    });
                    return Ok(());
                }
                Phase::Failed(e) => return Err(e.public_message()),
                Phase::Connecting | Phase::Streaming | Phase::Verified => {}
            }
            // The leader dropping its sender ends the flight: look again.
            if rx.changed().await.is_err() {
                break;
            }
        }
    }
}
