//! The admin API, `/admin/…`: operations for the people who run the cache,
//! behind their own bearer token (`WHARF_ADMIN_TOKEN` or `[admin] token`),
//! separate from pull tokens, and absent unless that token is set. The
//! `wharf` command is its client.
//!
//! | request | answer |
//! |---|---|
//! | `GET /admin/status` | this region: health of each dependency (as `/readyz`), the figures of `wharf_core::status`, running jobs |
//! | `POST /admin/jobs` `{"images": […], "platforms": […]}` | `202`, a warm job ([`crate::warm`]) |
//! | `GET /admin/jobs`, `GET /admin/jobs/{id}` | jobs and their progress |
//! | `DELETE /admin/jobs/{id}` | cancels a job |
//! | `POST /admin/purge` `{"image": "name:tag"}` | removes an image now ([`crate::retention`]) |
//! | `POST /admin/gc[?dry_run=true]` | one retention pass now; a dry run lists what would go and changes nothing; `503` + `Retry-After` while another replica holds the lease |
//!
//! Errors are OCI error JSON like everywhere else.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use wharf_core::admin::RegionStatus;
use wharf_core::password::constant_time_eq;
use wharf_core::{ImageRef, ReferenceError};

use crate::error::{Error, Result};
use crate::retention::{PurgeReport, Report};
use crate::state::AppState;
use crate::warm::{JobProgress, JobState, WarmRequest};

/// `?dry_run=`.
#[derive(Deserialize)]
pub struct GcQuery {
    #[serde(default)]
    dry_run: bool,
}

/// `POST /admin/gc`.
pub async fn gc(
    State(state): State<AppState>,
    Query(query): Query<GcQuery>,
    headers: HeaderMap,
) -> Result<Json<Report>> {
    authorize(&state, &headers)?;
    Ok(Json(state.retention.run(query.dry_run).await?))
}

/// `GET /admin/status`.
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<RegionStatus>> {
    authorize(&state, &headers)?;
    Ok(Json(region_status(&state).await))
}

/// This region as its status shows it: health (as `/readyz`), the figures
/// read from this origin's own metrics, running jobs.
pub async fn region_status(state: &AppState) -> RegionStatus {
    let (_, health) = super::health::readiness(state).await;
    let text = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    let running = state
        .jobs
        .list()
        .into_iter()
        .filter(|j| j.state == JobState::Running)
        .count();
    RegionStatus {
        region: state.geo.as_ref().map(|g| g.region.clone()),
        replica: state.geo.as_ref().and_then(|g| g.advertise.clone()),
        health,
        figures: wharf_core::status::summarize(&text),
        jobs_running: running,
    }
}

/// `POST /admin/jobs`.
pub async fn start_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<JobProgress>)> {
    authorize(&state, &headers)?;
    let request: WarmRequest = json_body(
        &body,
        r#"{"images": ["name:tag", …], "platforms": ["linux/amd64", …]}"#,
    )?;
    if request.images.is_empty() {
        return Err(Error::Denied(
            "a warm job needs at least one image (`name:tag` or `name@digest`)".into(),
        ));
    }
    for image in &request.images {
        ImageRef::parse(image).map_err(|e| bad_image(image, e))?;
    }
    let job = state.jobs.start(state.clone(), request);
    Ok((StatusCode::ACCEPTED, Json(job.progress())))
}

/// `GET /admin/jobs`.
pub async fn jobs(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<JobProgress>>> {
    authorize(&state, &headers)?;
    Ok(Json(state.jobs.list()))
}

/// `GET /admin/jobs/{id}`.
pub async fn job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<JobProgress>> {
    authorize(&state, &headers)?;
    let job = state.jobs.get(&id).ok_or_else(|| no_job(&id))?;
    Ok(Json(job.progress()))
}

/// `DELETE /admin/jobs/{id}`.
pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<JobProgress>> {
    authorize(&state, &headers)?;
    Ok(Json(state.jobs.cancel(&id).ok_or_else(|| no_job(&id))?))
}

/// `POST /admin/purge` body.
#[derive(Deserialize)]
pub struct PurgeRequest {
    image: String,
}

/// `POST /admin/purge`.
pub async fn purge(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PurgeReport>> {
    authorize(&state, &headers)?;
    let request: PurgeRequest = json_body(&body, r#"{"image": "name:tag"}"#)?;
    let image = ImageRef::parse(&request.image).map_err(|e| bad_image(&request.image, e))?;
    // The canonical name, as the store keys it.
    let target = state.resolve(&image.name, None)?;
    Ok(Json(
        state
            .retention
            .purge(&target.canonical, &image.reference)
            .await?,
    ))
}

/// The request's JSON body, or an OCI error saying what was expected.
fn json_body<T: for<'de> Deserialize<'de>>(body: &[u8], expected: &str) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::Invalid(format!("the request body is not {expected}: {e}")))
}

fn bad_image(image: &str, e: ReferenceError) -> Error {
    Error::Invalid(format!(
        "image {image:?}: {e}; write `name:tag` or `name@sha256:…` as you would pull it from this origin"
    ))
}

fn no_job(id: &str) -> Error {
    Error::NotFound(format!(
        "no job {id} on this origin (jobs live in the process that runs them; `wharf jobs` lists them)"
    ))
}

/// The request carries the admin token.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<()> {
    let Some(token) = &state.admin_token else {
        return Err(Error::Denied(
            "the admin API is off on this origin: set WHARF_ADMIN_TOKEN (or [admin] token) to turn it on".into(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err(Error::Unauthorized {
            challenge: "Bearer realm=\"wharf-admin\"".into(),
            reason: "the admin API needs `Authorization: Bearer <WHARF_ADMIN_TOKEN>`".into(),
        }),
    }
}
