//! Region health at the edge: records, probes, and where they are kept.
//!
//! A region's record is the core's [`Health`] state machine (hysteresis:
//! `WHARF_HEALTH_FAIL_AFTER` consecutive failures mark it down,
//! `WHARF_HEALTH_RECOVER_AFTER` successes bring it back). Observations come
//! from:
//!
//! * the cron trigger ([`probe_all`]): every origin replica's deep `/readyz`
//!   (a region is up when one replica is ready);
//! * live traffic: a request whose origin could not be reached records a
//!   failure ([`record`]);
//! * requests themselves: when a region's record is older than
//!   `WHARF_HEALTH_PROBE_INTERVAL`, the request probes it in `wait_until`
//!   ([`refresh`]), so detection takes seconds even though crons run at most
//!   once a minute.
//!
//! Records live in this location's Cache API (visible at once here) and in
//! KV under `health/<region>` (every location, eventually; written by the
//! cron and whenever a region changes state). Reads take the newer of the
//! two; this isolate remembers them for a few seconds ([`crate::memo`]:
//! its own observations at once), and reads the regions it does not
//! remember concurrently. No record, or
//! one older than `WHARF_HEALTH_STALE_AFTER`, means "route normally" (fail
//! open).

use serde::{Deserialize, Serialize};
use wharf_core::region::Health;
use worker::{Cache, KvStore, Method};

use crate::config::{Config, Region};
use crate::http::response;
use crate::store::CACHE_ORIGIN;
use crate::{memo, origin};

#[derive(Serialize, Deserialize)]
struct Stored {
    health: Health,
}

fn cache_url(region: &str) -> String {
    format!("{CACHE_ORIGIN}/health/{region}")
}

fn kv_key(region: &str) -> String {
    format!("health/{region}")
}

/// Every region's record (same order as `config.regions`): as this isolate
/// remembers them ([`memo`], a few seconds), else read.
///
/// The regions not remembered are read concurrently: a request waits for
/// the slowest read, not for the sum of them.
pub async fn load(kv: Option<&KvStore>, config: &Config, now_ms: u64) -> Vec<Option<Health>> {
    let mut records: Vec<Option<Option<Health>>> = config
        .regions
        .iter()
        .map(|r| memo::health(&r.name, now_ms))
        .collect();
    let missing: Vec<usize> = (0..records.len())
        .filter(|&i| records[i].is_none())
        .collect();
    if !missing.is_empty() {
        let reads = missing
            .iter()
            .map(|&i| load_one(kv, config, &config.regions[i].name, now_ms));
        let read = futures_util::future::join_all(reads).await;
        for (i, h) in missing.into_iter().zip(read) {
            memo::remember_health(&config.regions[i].name, h, now_ms);
            records[i] = Some(h);
        }
    }
    records.into_iter().map(Option::flatten).collect()
}

async fn load_one(
    kv: Option<&KvStore>,
    config: &Config,
    region: &str,
    now_ms: u64,
) -> Option<Health> {
    let local = match Cache::default()
        .get(cache_url(region).as_str(), false)
        .await
    {
        Ok(Some(mut r)) => r
            .text()
            .await
            .ok()
            .and_then(|t| serde_json::from_str::<Stored>(&t).ok())
            .map(|s| s.health),
        _ => None,
    };
    // A local record not yet due for a probe is enough; otherwise ask KV too
    // (the cron's and other locations' observations).
    let interval_ms = config.probe_interval.as_millis() as u64;
    if local.is_some() && !Health::due(local.as_ref(), now_ms, interval_ms) {
        return local;
    }
    let global = match kv {
        Some(kv) => match kv.get(&kv_key(region)).text().await {
            Ok(Some(t)) => serde_json::from_str::<Stored>(&t).ok().map(|s| s.health),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(region, error = %e, "KV read of a health record failed");
                None
            }
        },
        None => None,
    };
    match (local, global) {
        (Some(a), Some(b)) => Some(a.newest(b)),
        (a, b) => a.or(b),
    }
}

/// Records one observation of region `idx` and stores the new record
/// (KV too when `global` or when the region changed state). Returns it.
/// `degraded` is a probe's finding; `None` (a live request's failure)
/// keeps the last one.
pub async fn record(
    kv: Option<&KvStore>,
    config: &Config,
    idx: usize,
    ok: bool,
    degraded: Option<bool>,
    now_ms: u64,
    global: bool,
) -> Option<Health> {
    let region = &config.regions.get(idx)?.name;
    let before = load_one(kv, config, region, now_ms).await;
    let mut after = before
        .unwrap_or_else(Health::unknown)
        .observe(ok, now_ms, &config.health);
    if let Some(d) = degraded {
        after.degraded = d;
    }
    memo::remember_health(region, Some(after), now_ms);
    let body = serde_json::to_string(&Stored { health: after }).ok()?;
    let keep = (config.health.stale_after_ms / 1000).max(1);
    let cache_control = format!("public, max-age={keep}");
    let r = response(
        200,
        &[
            ("Content-Type", "application/json"),
            ("Cache-Control", &cache_control),
        ],
        body.clone().into_bytes(),
    );
    if let Err(e) = Cache::default().put(cache_url(region).as_str(), r).await {
        tracing::warn!(region, error = %e, "Cache API write of a health record failed");
    }
    let changed = before.is_none_or(|b| b.up != after.up || b.degraded != after.degraded);
    if changed {
        tracing::warn!(
            region,
            up = after.up,
            degraded = after.degraded,
            fails = after.fails,
            "region health changed"
        );
    }
    if (global || changed)
        && let Some(kv) = kv
    {
        let put = kv
            .put(&kv_key(region), body)
            .map(|p| p.expiration_ttl(keep.max(60)));
        if let Ok(p) = put
            && let Err(e) = p.execute().await
        {
            tracing::warn!(region, error = %e, "KV write of a health record failed");
        }
    }
    Some(after)
}

/// Probes one region: `GET /readyz` on its replicas until one is ready.
/// `None` when none is; else whether the ready one says it is degraded
/// (`"status": "degraded"`: disk pressure, an upstream failing).
pub async fn probe(config: &Config, region: &Region) -> Option<bool> {
    for base in &region.origins {
        let url = format!("{base}/readyz");
        match origin::send(&region.name, Method::Get, &url, &[], config.probe_timeout).await {
            Ok(mut r) if r.status_code() == 200 => {
                let body = r.text().await.unwrap_or_default();
                let status = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["status"].as_str().map(str::to_owned));
                return Some(status.as_deref() == Some("degraded"));
            }
            Ok(r) => {
                tracing::info!(region = %region.name, origin = %base, status = r.status_code(), "origin not ready")
            }
            Err(e) => {
                tracing::info!(region = %region.name, origin = %base, error = %e, "origin probe failed")
            }
        }
    }
    None
}

/// The cron trigger: probe every region and store the results everywhere.
pub async fn probe_all(kv: Option<&KvStore>, config: &Config, now_ms: u64) {
    for (i, r) in config.regions.iter().enumerate() {
        let seen = probe(config, r).await;
        record(kv, config, i, seen.is_some(), seen, now_ms, true).await;
    }
}

/// Probes `regions` and records the results (run in `wait_until`).
pub async fn refresh(
    kv: Option<KvStore>,
    config: std::rc::Rc<Config>,
    regions: Vec<usize>,
    now_ms: u64,
) {
    for i in regions {
        if let Some(r) = config.regions.get(i) {
            let seen = probe(&config, r).await;
            record(kv.as_ref(), &config, i, seen.is_some(), seen, now_ms, false).await;
        }
    }
}
