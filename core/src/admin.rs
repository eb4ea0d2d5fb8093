//! The admin API's documents: what the origin answers on `/admin/…` and
//! what the `wharf` command reads, defined once for both.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What to warm.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WarmRequest {
    /// `name[:tag|@digest]`, names as clients pull them from this origin.
    pub images: Vec<String>,
    /// `os/arch[/variant]` of an index to warm; empty: every platform.
    #[serde(default)]
    pub platforms: Vec<String>,
}

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Working.
    Running,
    /// Every image warmed.
    Done,
    /// Finished, with at least one image that could not be warmed.
    Failed,
    /// Cancelled.
    Cancelled,
}

/// One image of a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageProgress {
    /// As asked.
    pub image: String,
    /// The manifest (an index's digest for an index).
    pub digest: Option<String>,
    /// The platforms warmed (empty for a single-platform image).
    pub platforms: Vec<String>,
    /// Why it could not be warmed.
    pub error: Option<String>,
}

/// One blob of a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlobProgress {
    /// Its digest.
    pub digest: String,
    /// Its size, as the manifest says.
    pub size: u64,
    /// Bytes fetched (all of them once stored).
    pub done: u64,
    /// `queued`, `hydrating`, `stored` (already there), `done`, `failed`.
    pub state: String,
    /// Why it failed.
    pub error: Option<String>,
}

/// A job as the admin API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobProgress {
    /// Its id.
    pub id: String,
    /// Where it stands.
    pub state: JobState,
    /// What was asked.
    pub request: WarmRequest,
    /// Per image.
    pub images: Vec<ImageProgress>,
    /// Per blob, in the order they were found.
    pub blobs: Vec<BlobProgress>,
    /// Sum of the blobs' sizes.
    pub bytes_total: u64,
    /// Bytes fetched or found stored so far.
    pub bytes_done: u64,
    /// Unix ms.
    pub started_ms: u64,
    /// Unix ms, once finished.
    pub finished_ms: Option<u64>,
}

/// `POST /admin/purge`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PurgeRequest {
    /// `name:tag` or `name@digest`.
    pub image: String,
}

/// What a purge removed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PurgeReport {
    /// The image's top manifest, when the region held it.
    pub digest: Option<String>,
    /// Manifest links removed (the image and its platform manifests).
    pub manifests: Vec<String>,
    /// Tag records removed.
    pub tags: Vec<String>,
}

/// What one pass did (or, dry, would do).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GcReport {
    /// Nothing was written or deleted.
    pub dry_run: bool,
    /// Images found (repository + top manifest).
    pub images: usize,
    /// Images evicted, in eviction order.
    pub evicted: Vec<Evicted>,
    /// Objects now waiting out the grace window.
    pub candidates: usize,
    /// Blob and manifest objects deleted (dry: that would be deleted now).
    pub deleted: Vec<String>,
    /// Their bytes.
    pub deleted_bytes: u64,
    /// Repository links deleted (of evicted images and of candidates).
    pub links_deleted: usize,
    /// Tag records deleted (pointing at evicted images).
    pub tags_deleted: usize,
    /// Bytes each rule's kept images hold.
    pub store_bytes: BTreeMap<String, u64>,
    /// How long the pass took.
    pub duration_ms: u64,
}

/// One evicted image.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Evicted {
    /// `<repository>@<manifest digest>`.
    pub image: String,
    /// Its rule.
    pub rule: String,
    /// `expired` or `quota`.
    pub reason: String,
    /// Bytes no kept image shares.
    pub bytes: u64,
}

/// `GET /admin/status`: one region as its origin sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegionStatus {
    /// The region's name (none for a single-region origin).
    pub region: Option<String>,
    /// The replica that answered.
    pub replica: Option<String>,
    /// `/readyz`'s document: `status` (ok, degraded, down) and `checks`
    /// (store, upstreams with their circuits and budgets, peer regions,
    /// disk).
    pub health: serde_json::Value,
    /// The figures read from its metrics.
    pub figures: crate::status::Summary,
    /// Warm jobs running.
    pub jobs_running: usize,
}
