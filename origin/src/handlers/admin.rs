//! The admin API, `/admin/…`: operations for the people who run the cache,
//! behind their own bearer token (`WHARF_ADMIN_TOKEN` or `[admin] token`),
//! separate from pull tokens, and absent unless that token is set.
//!
//! * `POST /admin/gc[?dry_run=true]` — one retention pass now
//!   ([`crate::retention`]); answers its [`Report`](crate::retention::Report)
//!   as JSON. A dry run lists what would be evicted and deleted and changes
//!   nothing. `503` with `Retry-After` while another replica holds the
//!   lease.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use serde::Deserialize;
use wharf_core::password::constant_time_eq;

use crate::error::{Error, Result};
use crate::retention::Report;
use crate::state::AppState;

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
