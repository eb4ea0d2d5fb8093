//! `GET /status`: the page people look at — this region and its
//! dependencies, hit ratio, bytes and requests saved, each upstream's
//! rate-limit budget and circuit, storage per rule, recent hydrations and
//! evictions, running warm jobs.
//!
//! Plain HTML with inline CSS and SVG: no script, no external asset, one
//! column on a phone and a grid on a desk; it refreshes itself every 10 s.
//! It shows what `/metrics` and `/readyz` already publish (rules, digests,
//! counts — never repository names), so it is as public as they are. The
//! figures are the core's reading of this origin's own metrics
//! (`wharf_core::status`), the same as `wharf status` shows.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use wharf_core::status::{Summary, human_bytes, short_digest};
use wharf_core::utc::UtcDateTime;

use wharf_core::admin::RegionStatus;

use crate::events::{self, Event};
use crate::state::AppState;
use crate::warm::JobState;

/// `GET /status`.
pub async fn page(State(state): State<AppState>) -> Response {
    let RegionStatus {
        region,
        health,
        figures,
        ..
    } = super::admin::region_status(&state).await;
    let mut html = String::with_capacity(16 * 1024);
    head(&mut html, region.as_deref(), &health);
    cards(&mut html, &figures);
    dependencies(&mut html, &health, &figures);
    hydrations(&mut html, &state.events.hydrations());
    evictions(&mut html, &state.events.evictions());
    jobs(&mut html, &state);
    let now = UtcDateTime::from_unix(events::now_ms() / 1000).rfc3339();
    let _ = write!(
        html,
        "<footer>As of {now} · refreshes every 10 s · <a href=\"/metrics\">metrics</a> · <a href=\"/readyz\">readyz</a></footer></main></body></html>"
    );
    let mut response = html.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
*{box-sizing:border-box}body{margin:0;font:15px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:#f4f6f8;color:#1b2530}\
main{max-width:1100px;margin:0 auto;padding:12px}header{display:flex;align-items:center;justify-content:space-between;gap:8px;flex-wrap:wrap}\
h1{font-size:22px;margin:8px 0}h1 small{font-weight:400;color:#5b6b7b}h2{font-size:15px;margin:0 0 8px;color:#3a4a5a;text-transform:uppercase;letter-spacing:.04em}\
.badge{padding:4px 12px;border-radius:999px;font-weight:600;color:#fff}.ok{background:#1f9d55}.degraded{background:#d98e04}.down{background:#c53030}\
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(230px,1fr));gap:12px;margin:12px 0}\
.card,section{background:#fff;border-radius:10px;padding:14px;box-shadow:0 1px 2px rgba(0,0,0,.08)}section{margin:12px 0;overflow-x:auto}\
.big{font-size:28px;font-weight:700;margin:2px 0}.muted{color:#5b6b7b;margin:0}.row{display:flex;align-items:center;gap:12px}\
table{width:100%;border-collapse:collapse}td,th{text-align:left;padding:6px 8px;border-bottom:1px solid #e6eaee;white-space:nowrap}th{color:#5b6b7b;font-weight:600}\
.good{color:#1f9d55;font-weight:600}.bad{color:#c53030;font-weight:600}.warn{color:#d98e04;font-weight:600}code{font-size:13px}\
footer{color:#5b6b7b;font-size:13px;margin:16px 0}a{color:#2b6cb0}";

fn head(html: &mut String, region: Option<&str>, health: &serde_json::Value) {
    let status = health["status"].as_str().unwrap_or("down");
    let title = match region {
        Some(r) => format!("Wharf · {}", esc(r)),
        None => "Wharf".to_owned(),
    };
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"10\"><title>{title}</title><style>{STYLE}</style></head>\
         <body><main><header><h1>Wharf <small>{}</small></h1>\
         <span class=\"badge {cls}\" id=\"status\">{label}</span></header>",
        match region {
            Some(r) => format!("region {}", esc(r)),
            None => "single region".into(),
        },
        cls = match status {
            "ok" => "ok",
            "degraded" => "degraded",
            _ => "down",
        },
        label = esc(status),
    );
}

/// A ring (hit ratio) as inline SVG.
fn donut(ratio: Option<f64>) -> String {
    let r = ratio.unwrap_or(0.0).clamp(0.0, 1.0);
    let c = 2.0 * std::f64::consts::PI * 26.0;
    format!(
        "<svg width=\"64\" height=\"64\" viewBox=\"0 0 64 64\" role=\"img\" aria-label=\"hit ratio\">\
         <circle cx=\"32\" cy=\"32\" r=\"26\" fill=\"none\" stroke=\"#e6eaee\" stroke-width=\"10\"/>\
         <circle cx=\"32\" cy=\"32\" r=\"26\" fill=\"none\" stroke=\"#1f9d55\" stroke-width=\"10\" \
         stroke-dasharray=\"{:.1} {:.1}\" transform=\"rotate(-90 32 32)\"/></svg>",
        r * c,
        c
    )
}

/// A horizontal bar (`fraction` full) as inline SVG.
fn bar(fraction: f64, color: &str) -> String {
    let w = (fraction.clamp(0.0, 1.0) * 120.0).round();
    format!(
        "<svg width=\"120\" height=\"10\" role=\"img\"><rect width=\"120\" height=\"10\" rx=\"5\" fill=\"#e6eaee\"/>\
         <rect width=\"{w}\" height=\"10\" rx=\"5\" fill=\"{color}\"/></svg>"
    )
}

fn cards(html: &mut String, f: &Summary) {
    let ratio = f
        .hit_ratio
        .map_or_else(|| "–".to_owned(), |r| format!("{:.1}%", r * 100.0));
    let storage: String = if f.store_bytes.is_empty() {
        "<p class=\"muted\">no retention pass yet</p>".into()
    } else {
        f.store_bytes
            .iter()
            .map(|(rule, b)| format!("<p class=\"muted\">{} · {}</p>", esc(rule), human_bytes(*b)))
            .collect()
    };
    let total: f64 = f.store_bytes.values().sum();
    let _ = write!(
        html,
        "<div class=\"cards\">\
         <div class=\"card\"><h2>Hit ratio</h2><div class=\"row\">{donut}<div><p class=\"big\" id=\"hit-ratio\">{ratio}</p>\
         <p class=\"muted\">{hits:.0} of {requests:.0} answers from the cache</p></div></div></div>\
         <div class=\"card\"><h2>Saved</h2><p class=\"big\" id=\"bytes-saved\">{saved}</p>\
         <p class=\"muted\">served from the cache · {hits:.0} upstream requests saved</p></div>\
         <div class=\"card\"><h2>Upstream traffic</h2><p class=\"big\">{up_bytes}</p>\
         <p class=\"muted\">{up_requests:.0} requests · {fetching} served while fetching</p></div>\
         <div class=\"card\"><h2>Storage</h2><p class=\"big\">{total}</p>{storage}</div>\
         </div>",
        donut = donut(f.hit_ratio),
        hits = f.hits,
        requests = f.requests,
        saved = human_bytes(f.bytes_from_cache),
        up_bytes = human_bytes(f.upstream_bytes),
        up_requests = f.upstream_requests,
        fetching = human_bytes(f.bytes_from_upstream),
        total = human_bytes(total),
    );
}

fn dependencies(html: &mut String, health: &serde_json::Value, f: &Summary) {
    let checks = &health["checks"];
    html.push_str("<section><h2>Region and dependencies</h2><table><tr><th>what</th><th>state</th><th>detail</th></tr>");
    let ok = |v: &serde_json::Value| v["ok"].as_bool() == Some(true);
    let store = &checks["store"];
    let _ = write!(
        html,
        "<tr><td>object store</td><td class=\"{}\">{}</td><td>{}</td></tr>",
        if ok(store) { "good" } else { "bad" },
        if ok(store) { "ok" } else { "down" },
        match store["latency_ms"].as_u64() {
            Some(ms) => format!("{ms} ms"),
            None => esc(store["error"].as_str().unwrap_or("")),
        }
    );
    if let Some(peers) = checks["peer_regions"].as_object() {
        for (name, p) in peers {
            let _ = write!(
                html,
                "<tr><td>region {} (peer store)</td><td class=\"{}\">{}</td><td></td></tr>",
                esc(name),
                if ok(p) { "good" } else { "bad" },
                if ok(p) { "ok" } else { "down" }
            );
        }
    }
    if let Some(ups) = checks["upstreams"].as_object() {
        for (name, u) in ups {
            let circuit = u["circuit"].as_str().unwrap_or("closed");
            let (cls, state) = match (u["ok"].as_bool(), circuit) {
                (_, "open") => ("bad", "circuit open"),
                (_, "half-open") => ("warn", "probing"),
                (Some(false), _) => ("bad", "failing"),
                (Some(true), _) => ("good", "ok"),
                (None, _) => ("muted", "not used yet"),
            };
            let budget = match f.ratelimit_remaining.get(name) {
                Some(r) => format!("{} rate limit remaining {r:.0}", bar(*r / 100.0, "#2b6cb0")),
                None => "no rate-limit headers".into(),
            };
            let _ = write!(
                html,
                "<tr><td>upstream {}</td><td class=\"{cls}\">{state}</td><td>{budget}</td></tr>",
                esc(name)
            );
        }
    }
    if let Some(disks) = checks["disk"].as_object() {
        for (name, d) in disks {
            let low = d["ok"].as_bool() == Some(false);
            let _ = write!(
                html,
                "<tr><td>disk ({})</td><td class=\"{}\">{}</td><td>{} free</td></tr>",
                esc(name),
                if low { "bad" } else { "good" },
                if low { "low" } else { "ok" },
                d["free_bytes"]
                    .as_f64()
                    .map_or_else(|| "?".into(), human_bytes)
            );
        }
    }
    let _ = write!(
        html,
        "<tr><td>replication</td><td>{:.0} waiting</td><td>{:.0} downloads in flight</td></tr></table></section>",
        f.replication_backlog, f.hydrations_in_flight
    );
}

fn ago(at_ms: u64) -> String {
    let secs = events::now_ms().saturating_sub(at_ms) / 1000;
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        _ => format!("{} h ago", secs / 3600),
    }
}

fn hydrations(html: &mut String, recent: &[Event]) {
    html.push_str("<section id=\"hydrations\"><h2>Recent hydrations</h2>");
    if recent.is_empty() {
        html.push_str("<p class=\"muted\">none yet</p></section>");
        return;
    }
    html.push_str("<table><tr><th>when</th><th>rule</th><th>blob</th><th>size</th><th>time</th><th>result</th></tr>");
    for e in recent {
        if let Event::Hydration {
            at_ms,
            rule,
            digest,
            size,
            duration_ms,
            ok,
            ..
        } = e
        {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{duration_ms} ms</td><td class=\"{}\">{}</td></tr>",
                ago(*at_ms),
                esc(rule),
                esc(&short_digest(digest)),
                human_bytes(*size as f64),
                if *ok { "good" } else { "bad" },
                if *ok { "stored" } else { "failed" }
            );
        }
    }
    html.push_str("</table></section>");
}

fn evictions(html: &mut String, recent: &[Event]) {
    html.push_str("<section id=\"evictions\"><h2>Recent evictions</h2>");
    if recent.is_empty() {
        html.push_str("<p class=\"muted\">none yet</p></section>");
        return;
    }
    html.push_str(
        "<table><tr><th>when</th><th>rule</th><th>image</th><th>why</th><th>bytes</th></tr>",
    );
    for e in recent {
        if let Event::Eviction {
            at_ms,
            rule,
            digest,
            reason,
            bytes,
            ..
        } = e
        {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                ago(*at_ms),
                esc(rule),
                esc(&short_digest(digest)),
                esc(reason),
                human_bytes(*bytes as f64)
            );
        }
    }
    html.push_str("</table></section>");
}

fn jobs(html: &mut String, state: &AppState) {
    let jobs: Vec<_> = state
        .jobs
        .list()
        .into_iter()
        .rev()
        .filter(|j| {
            j.state == JobState::Running
                || j.finished_ms
                    .is_some_and(|f| events::now_ms().saturating_sub(f) < 3_600_000)
        })
        .take(10)
        .collect();
    html.push_str("<section id=\"jobs\"><h2>Warm jobs</h2>");
    if jobs.is_empty() {
        html.push_str("<p class=\"muted\">none in the last hour</p></section>");
        return;
    }
    html.push_str("<table><tr><th>job</th><th>state</th><th>progress</th><th>blobs</th></tr>");
    for j in jobs {
        let fraction = if j.bytes_total == 0 {
            1.0
        } else {
            j.bytes_done as f64 / j.bytes_total as f64
        };
        let (cls, label) = match j.state {
            JobState::Running => ("warn", "running"),
            JobState::Done => ("good", "done"),
            JobState::Failed => ("bad", "failed"),
            JobState::Cancelled => ("muted", "cancelled"),
        };
        let _ = write!(
            html,
            "<tr><td><code>{}</code></td><td class=\"{cls}\">{label}</td><td>{} {} of {}</td><td>{}</td></tr>",
            esc(&j.id),
            bar(fraction, "#1f9d55"),
            human_bytes(j.bytes_done as f64),
            human_bytes(j.bytes_total as f64),
            j.blobs.len()
        );
    }
    html.push_str("</table></section>");
}
