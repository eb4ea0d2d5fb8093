//! Text output for people (`--output json` prints the documents as they
//! are).

use wharf_core::admin::{GcReport, JobProgress, PurgeReport, RegionStatus};

use wharf_core::status::human_bytes as bytes;

/// A finished (or current) job, in a few lines.
pub fn job_summary(origin: &str, job: &JobProgress) {
    let secs = job
        .finished_ms
        .unwrap_or(job.started_ms)
        .saturating_sub(job.started_ms) as f64
        / 1000.0;
    let fetched: u64 = job
        .blobs
        .iter()
        .filter(|b| b.state == "done")
        .map(|b| b.size)
        .sum();
    let already = job.blobs.iter().filter(|b| b.state == "stored").count();
    println!(
        "{origin}: job {} {}: {} image(s), {} blob(s), {} ({} fetched, {already} already stored) in {secs:.1} s{}",
        job.id,
        format!("{:?}", job.state).to_lowercase(),
        job.images.len(),
        job.blobs.len(),
        bytes(job.bytes_done as f64),
        bytes(fetched as f64),
        if secs > 0.0 && fetched > 0 {
            format!(", {}/s", bytes(fetched as f64 / secs))
        } else {
            String::new()
        },
    );
    for image in &job.images {
        let what = match (&image.error, &image.digest) {
            (Some(e), _) => format!("failed: {e}"),
            (None, Some(d)) if image.platforms.is_empty() => d.clone(),
            (None, Some(d)) => format!("{d} ({})", image.platforms.join(", ")),
            (None, None) => "pending".into(),
        };
        println!("  {}  {what}", image.image);
    }
    for blob in job.blobs.iter().filter(|b| b.state == "failed") {
        println!(
            "  blob {} failed: {}",
            blob.digest,
            blob.error.as_deref().unwrap_or("?")
        );
    }
}

/// `wharf jobs`.
pub fn jobs(all: &[(&str, Vec<JobProgress>)]) {
    println!(
        "{:<16} {:<24} {:<10} {:>7} {:>12}  images",
        "origin", "job", "state", "blobs", "bytes"
    );
    for (origin, jobs) in all {
        for j in jobs {
            println!(
                "{:<16} {:<24} {:<10} {:>7} {:>12}  {}",
                origin,
                j.id,
                format!("{:?}", j.state).to_lowercase(),
                j.blobs.len(),
                bytes(j.bytes_done as f64),
                j.request.images.join(" ")
            );
        }
    }
}

/// `wharf status`.
pub fn status(all: &[(&str, RegionStatus)]) {
    for (origin, s) in all {
        let f = &s.figures;
        let health = s.health["status"].as_str().unwrap_or("?");
        println!("{origin}: {health}");
        let store = &s.health["checks"]["store"];
        println!(
            "  store        {}",
            if store["ok"].as_bool() == Some(true) {
                format!("ok ({} ms)", store["latency_ms"])
            } else {
                format!("DOWN: {}", store["error"].as_str().unwrap_or("?"))
            }
        );
        if let Some(ups) = s.health["checks"]["upstreams"].as_object() {
            for (name, u) in ups {
                let budget = f
                    .ratelimit_remaining
                    .get(name)
                    .map(|r| format!(", rate limit remaining {r}"))
                    .unwrap_or_default();
                println!(
                    "  upstream     {name}: {}, circuit {}{budget}",
                    match u["ok"].as_bool() {
                        Some(true) => "ok",
                        Some(false) => "FAILING",
                        None => "not used yet",
                    },
                    u["circuit"].as_str().unwrap_or("closed"),
                );
            }
        }
        if let Some(peers) = s.health["checks"]["peer_regions"].as_object()
            && !peers.is_empty()
        {
            let list: Vec<String> = peers
                .iter()
                .map(|(name, p)| {
                    let ok = if p["ok"].as_bool() == Some(true) {
                        "ok"
                    } else {
                        "DOWN"
                    };
                    format!("{name} {ok}")
                })
                .collect();
            println!("  peer stores  {}", list.join(", "));
        }
        if let Some(disks) = s.health["checks"]["disk"].as_object() {
            for (name, d) in disks {
                let free = d["free_bytes"]
                    .as_f64()
                    .map(bytes)
                    .unwrap_or_else(|| "?".into());
                let ok = if d["ok"].as_bool() == Some(false) {
                    "LOW"
                } else {
                    "ok"
                };
                println!("  disk         {name}: {ok}, {free} free");
            }
        }
        println!(
            "  hit ratio    {} of {} answers",
            f.hit_ratio
                .map(|r| format!("{:.1}%", r * 100.0))
                .unwrap_or_else(|| "-".into()),
            f.requests
        );
        println!(
            "  served       {} from cache, {} while fetching",
            bytes(f.bytes_from_cache),
            bytes(f.bytes_from_upstream)
        );
        println!(
            "  upstream     {} requests, {} read; saved {} requests and {}",
            f.upstream_requests,
            bytes(f.upstream_bytes),
            f.hits,
            bytes(f.bytes_from_cache)
        );
        for (rule, b) in &f.store_bytes {
            println!("  storage      {rule}: {}", bytes(*b));
        }
        println!(
            "  replication  {} waiting; {} downloads in flight; {} warm job(s) running",
            f.replication_backlog, f.hydrations_in_flight, s.jobs_running
        );
    }
}

/// `wharf purge`.
pub fn purge(origin: &str, image: &str, r: &PurgeReport) {
    match &r.digest {
        Some(d) => println!(
            "{origin}: purged {image} ({d}): {} manifest(s), tag(s) {}; its bytes go at the next gc passes",
            r.manifests.len(),
            if r.tags.is_empty() {
                "-".into()
            } else {
                r.tags.join(", ")
            }
        ),
        None => println!("{origin}: {image} was not cached; nothing to purge"),
    }
}

/// `wharf gc`.
pub fn gc(origin: &str, r: &GcReport) {
    let verb = if r.dry_run { "would" } else { "did" };
    println!(
        "{origin}: {} images; {verb} evict {}, {verb} delete {} object(s) ({}); {} waiting out the grace window; {} ms",
        r.images,
        r.evicted.len(),
        r.deleted.len(),
        bytes(r.deleted_bytes as f64),
        r.candidates,
        r.duration_ms
    );
    for e in &r.evicted {
        println!(
            "  evict  {} ({}, {}, {})",
            e.image,
            e.rule,
            e.reason,
            bytes(e.bytes as f64)
        );
    }
    for key in &r.deleted {
        println!("  delete {key}");
    }
}
