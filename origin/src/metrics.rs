//! Every metric the origin exports, by name, in one place.
//!
//! Call sites use these functions rather than the `metrics` macros so that a
//! metric's name and labels are spelled exactly once (the names are a stable
//! interface, see `shared/INTERFACES.md`). Labels are bounded sets: request
//! kinds, results, rule prefixes, HTTP methods and status codes — never raw
//! paths or repository names.

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered, by `kind` (manifest, blob, tags, referrers, base) and
/// `result` (hit, miss, stale, revalidated, error).
pub const REQUESTS: &str = "wharf_requests_total";
/// Requests sent to upstream registries, by `registry`, `method`, `status`
/// (HTTP status, or `error` when no response arrived).
pub const UPSTREAM_REQUESTS: &str = "wharf_upstream_requests_total";
/// Body bytes read from upstream registries, by `registry`.
pub const UPSTREAM_BYTES: &str = "wharf_upstream_bytes_total";
/// Body bytes sent to clients, by `source` (store, upstream, peer, replica).
pub const SERVED_BYTES: &str = "wharf_served_bytes_total";
/// Blobs or manifests whose bytes did not match their digest, by `registry`.
pub const INTEGRITY_FAILURES: &str = "wharf_integrity_failures_total";
/// Stale tags served because the upstream failed, by `registry`.
pub const STALE_SERVED: &str = "wharf_stale_served_total";
/// Seconds from the first upstream byte request to the blob being committed
/// to the store, by `registry` and `outcome` (committed, failed).
pub const HYDRATION_SECONDS: &str = "wharf_hydration_duration_seconds";
/// Hydrations currently in flight.
pub const HYDRATIONS_IN_FLIGHT: &str = "wharf_hydrations_in_flight";
/// Clients that joined an in-flight hydration instead of fetching upstream.
pub const COALESCED: &str = "wharf_coalesced_requests_total";
/// Digests held for one repository and asked for through another, by
/// `result`: `confirmed` (the repository's upstream has it: linked and
/// served) or `refused` (it does not: not served).
pub const LINK_CHECKS: &str = "wharf_link_checks_total";
/// Remaining upstream rate-limit budget last reported, by `registry`.
pub const RATELIMIT_REMAINING: &str = "wharf_upstream_ratelimit_remaining";
/// Cold blobs passed through (streamed, verified, not stored), by `reason`
/// (disk, hydrations, upstream, spool).
pub const PASSTHROUGH: &str = "wharf_passthrough_total";
/// Free bytes on a watched filesystem, by `dir` (spool, store).
pub const DISK_FREE: &str = "wharf_disk_free_bytes";
/// Each upstream's circuit, by `registry`: 0 closed, 1 half-open, 2 open.
pub const UPSTREAM_CIRCUIT: &str = "wharf_upstream_circuit_state";
/// Times an upstream's circuit opened, by `registry`.
pub const UPSTREAM_CIRCUIT_OPENED: &str = "wharf_upstream_circuit_opened_total";
/// Requests not sent because the upstream's circuit was open, by `registry`.
pub const UPSTREAM_CIRCUIT_REFUSED: &str = "wharf_upstream_circuit_refused_total";
/// Retention passes, by `mode` (run, dry_run) and `result` (ok, busy:
/// another replica holds the lease, failed).
pub const GC_RUNS: &str = "wharf_gc_runs_total";
/// Seconds one retention pass took.
pub const GC_SECONDS: &str = "wharf_gc_duration_seconds";
/// Images evicted, by `rule` and `reason` (expired, quota, purged).
pub const EVICTED_IMAGES: &str = "wharf_evicted_images_total";
/// Bytes the evicted images alone held, by `rule` (deleted one grace
/// window later, with the objects).
pub const EVICTED_BYTES: &str = "wharf_evicted_bytes_total";
/// Objects deleted by the sweep, by `kind` (blob, manifest, link, tag).
pub const GC_DELETED_OBJECTS: &str = "wharf_gc_deleted_objects_total";
/// Blob and manifest bytes deleted by the sweep.
pub const GC_DELETED_BYTES: &str = "wharf_gc_deleted_bytes_total";
/// Unreferenced objects waiting out the grace window before deletion.
pub const GC_CANDIDATES: &str = "wharf_gc_candidates";
/// Bytes the kept images of each rule hold in the store, by `rule` (a
/// blob two rules share counts for both), as of the last pass.
pub const STORE_BYTES: &str = "wharf_store_bytes";
/// Last-pull records, by `result` (written: a link rewritten at a flush;
/// dropped: more distinct images pulled between two flushes than are kept).
pub const PULL_RECORDS: &str = "wharf_pull_records_total";
/// Stale tags served without asking the upstream because its rate-limit
/// budget was at the rule's reserve, by `registry`.
pub const REVALIDATIONS_POSTPONED: &str = "wharf_revalidations_postponed_total";
/// Requests open to each upstream now, by `registry` (0 for rules without
/// `max_connections`: they are not counted).
pub const UPSTREAM_CONNECTIONS: &str = "wharf_upstream_connections";
/// Requests that found every connection to their upstream in use and
/// waited, by `registry`.
pub const UPSTREAM_CONNECTION_WAITS: &str = "wharf_upstream_connection_waits_total";
/// Hot tags revalidated ahead of their clients, by `registry` and `result`
/// (unchanged, moved, failed, postponed: the budget was at its reserve).
pub const HOT_REVALIDATIONS: &str = "wharf_hot_tag_revalidations_total";
/// Tag-change prefetches, by `registry` and `result` (warmed: the new
/// manifest and the blobs of the platforms pulled before are stored;
/// manifest_only: none of its platforms was pulled before; failed; budget:
/// not started, the rate-limit budget could not pay for it).
pub const PREFETCHES: &str = "wharf_prefetches_total";
/// Blob bytes hydrated by tag-change prefetches, by `registry`.
pub const PREFETCHED_BYTES: &str = "wharf_prefetched_bytes_total";
/// Webhook events, by `result`: queued (written to the outbox), delivered,
/// failed (one delivery attempt), dropped (the writer was behind), lost
/// (not written), expired (older than `events.max_age`).
pub const EVENTS: &str = "wharf_events_total";
/// Events in the outbox now.
pub const OUTBOX: &str = "wharf_events_outbox";
/// Age of the oldest event in the outbox (0 when empty).
pub const OUTBOX_OLDEST: &str = "wharf_events_oldest_age_seconds";

/// Builds the Prometheus recorder, installs it as the process's recorder and
/// returns the handle `/metrics` renders from.
///
/// The `metrics` facade keeps one recorder per process; only the binary's
/// `main` calls this, so the library itself holds no global state.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let buckets = [
        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(HYDRATION_SECONDS.to_owned()), &buckets)?
        .set_buckets_for_metric(Matcher::Full(REPLICATION_LAG.to_owned()), &buckets)?
        .set_buckets_for_metric(Matcher::Full(GC_SECONDS.to_owned()), &buckets)?
        .install_recorder()?;
    Ok(handle)
}

/// Counts one upstream confirmation of an unlinked digest.
pub fn link_check(result: &'static str) {
    counter!(LINK_CHECKS, "result" => result).increment(1);
}

/// Counts one answered request.
pub fn request(kind: &'static str, result: &'static str) {
    counter!(REQUESTS, "kind" => kind, "result" => result).increment(1);
}

/// Counts one upstream request and its outcome.
pub fn upstream_request(registry: &str, method: &str, status: &str) {
    counter!(UPSTREAM_REQUESTS, "registry" => registry.to_owned(), "method" => method.to_owned(), "status" => status.to_owned())
        .increment(1);
}

/// Adds body bytes read from an upstream.
pub fn upstream_bytes(registry: &str, n: u64) {
    counter!(UPSTREAM_BYTES, "registry" => registry.to_owned()).increment(n);
}

/// Adds body bytes sent to a client.
pub fn served_bytes(source: &'static str, n: u64) {
    counter!(SERVED_BYTES, "source" => source).increment(n);
}

/// Counts one digest mismatch or truncation.
pub fn integrity_failure(registry: &str) {
    counter!(INTEGRITY_FAILURES, "registry" => registry.to_owned()).increment(1);
}

/// Counts one stale tag served under stale-if-error.
pub fn stale_served(registry: &str) {
    counter!(STALE_SERVED, "registry" => registry.to_owned()).increment(1);
}

/// Records how long a hydration took.
pub fn hydration_seconds(registry: &str, outcome: &'static str, secs: f64) {
    histogram!(HYDRATION_SECONDS, "registry" => registry.to_owned(), "outcome" => outcome)
        .record(secs);
}

/// Tracks the number of in-flight hydrations.
pub fn hydrations_in_flight(delta: f64) {
    gauge!(HYDRATIONS_IN_FLIGHT).increment(delta);
}

/// Counts a client that joined an in-flight hydration.
pub fn coalesced(kind: &'static str) {
    counter!(COALESCED, "kind" => kind).increment(1);
}

/// Records the upstream's advertised remaining rate-limit budget.
pub fn ratelimit_remaining(registry: &str, remaining: f64) {
    gauge!(RATELIMIT_REMAINING, "registry" => registry.to_owned()).set(remaining);
}

/// Sets an upstream's circuit state (the core's label).
pub fn circuit_state(registry: &str, state: &str) {
    let value = match state {
        "closed" => 0.0,
        "half_open" => 1.0,
        _ => 2.0,
    };
    gauge!(UPSTREAM_CIRCUIT, "registry" => registry.to_owned()).set(value);
}

/// Counts a cold blob passed through.
pub fn passthrough(reason: &'static str) {
    counter!(PASSTHROUGH, "reason" => reason).increment(1);
}

/// Free bytes on a watched filesystem.
pub fn disk_free(dir: &'static str, bytes: u64) {
    gauge!(DISK_FREE, "dir" => dir).set(bytes as f64);
}

/// Counts an upstream's circuit opening.
pub fn circuit_opened(registry: &str) {
    counter!(UPSTREAM_CIRCUIT_OPENED, "registry" => registry.to_owned()).increment(1);
}

/// Counts a request not sent because the circuit was open.
pub fn circuit_refused(registry: &str) {
    counter!(UPSTREAM_CIRCUIT_REFUSED, "registry" => registry.to_owned()).increment(1);
}

/// Token requests sent to upstream token servers, by `registry` and `status`.
pub const UPSTREAM_TOKEN_REQUESTS: &str = "wharf_upstream_token_requests_total";

/// Counts one token request to an upstream's token server.
pub fn upstream_token_request(registry: &str, status: &str) {
    counter!(UPSTREAM_TOKEN_REQUESTS, "registry" => registry.to_owned(), "status" => status.to_owned())
        .increment(1);
}

/// Redirects, token realms and resolved addresses an upstream pointed at and
/// the rule's egress policy refused, by `registry` and `reason` (scheme,
/// address, credentials, invalid).
pub const UPSTREAM_REFUSED: &str = "wharf_upstream_refused_total";

/// Counts one refused upstream target.
pub fn upstream_refused(registry: &str, reason: &'static str) {
    counter!(UPSTREAM_REFUSED, "registry" => registry.to_owned(), "reason" => reason).increment(1);
}

/// Lookups of a blob or manifest in a peer region's store, by `region` and
/// `result` (hit, miss, error).
pub const PEER_FETCHES: &str = "wharf_peer_fetches_total";
/// Blob misses sent to the owning replica of the region, by `result`
/// (forwarded, owner_down).
pub const FORWARDED: &str = "wharf_forwarded_total";
/// Objects waiting to be replicated to peer regions.
pub const REPLICATION_BACKLOG: &str = "wharf_replication_backlog";
/// Seconds from a replication being queued to it being done, by `region`.
pub const REPLICATION_LAG: &str = "wharf_replication_lag_seconds";
/// Replications to peer regions, by `region` and `result` (copied, present,
/// failed).
pub const REPLICATIONS: &str = "wharf_replications_total";

/// Counts one peer store lookup.
pub fn peer_fetch(region: &str, result: &'static str) {
    counter!(PEER_FETCHES, "region" => region.to_owned(), "result" => result).increment(1);
}

/// Counts one blob miss handed to (or not reaching) the owning replica.
pub fn forwarded(result: &'static str) {
    counter!(FORWARDED, "result" => result).increment(1);
}

/// Tracks the replication queue.
pub fn replication_backlog(delta: f64) {
    gauge!(REPLICATION_BACKLOG).increment(delta);
}

/// Records one finished replication to `region`.
pub fn replication_done(region: &str, result: &'static str, lag_secs: f64) {
    counter!(REPLICATIONS, "region" => region.to_owned(), "result" => result).increment(1);
    histogram!(REPLICATION_LAG, "region" => region.to_owned()).record(lag_secs);
}

/// Counts one retention pass and how long it took.
pub fn gc_run(mode: &'static str, result: &'static str, secs: f64) {
    counter!(GC_RUNS, "mode" => mode, "result" => result).increment(1);
    histogram!(GC_SECONDS).record(secs);
}

/// Counts one evicted image and the bytes it alone held.
pub fn evicted(rule: &str, reason: &str, bytes: u64) {
    counter!(EVICTED_IMAGES, "rule" => rule.to_owned(), "reason" => reason.to_owned()).increment(1);
    counter!(EVICTED_BYTES, "rule" => rule.to_owned()).increment(bytes);
}

/// Counts objects the sweep deleted (and their bytes, for blobs and
/// manifests).
pub fn gc_deleted(kind: &'static str, objects: u64, bytes: u64) {
    counter!(GC_DELETED_OBJECTS, "kind" => kind).increment(objects);
    counter!(GC_DELETED_BYTES).increment(bytes);
}

/// Sets the number of sweep candidates.
pub fn gc_candidates(n: usize) {
    gauge!(GC_CANDIDATES).set(n as f64);
}

/// Sets the bytes a rule's kept images hold.
pub fn store_bytes(rule: &str, bytes: u64) {
    gauge!(STORE_BYTES, "rule" => rule.to_owned()).set(bytes as f64);
}

/// Counts last-pull records.
pub fn pull_records(result: &'static str, n: u64) {
    counter!(PULL_RECORDS, "result" => result).increment(n);
}

/// Registers, at zero, the series whose first sample waits for an event
/// (a failure, an eviction, a pass-through, a replication), with the label
/// values this configuration will use: dashboards and alerts then find
/// every series from the first scrape, and `rate()` has a starting point.
/// `rules`: the rule prefixes (the `registry` and `rule` labels); `peers`:
/// the peer regions; `replicas`: this region's replica count.
pub fn register(rules: &[String], peers: &[String], replicas: usize) {
    for r in rules {
        let r = r.clone();
        counter!(INTEGRITY_FAILURES, "registry" => r.clone()).increment(0);
        counter!(UPSTREAM_BYTES, "registry" => r.clone()).increment(0);
        counter!(STALE_SERVED, "registry" => r.clone()).increment(0);
        counter!(REVALIDATIONS_POSTPONED, "registry" => r.clone()).increment(0);
        for result in ["unchanged", "moved", "failed", "postponed"] {
            counter!(HOT_REVALIDATIONS, "registry" => r.clone(), "result" => result).increment(0);
        }
        for result in ["warmed", "manifest_only", "failed", "budget"] {
            counter!(PREFETCHES, "registry" => r.clone(), "result" => result).increment(0);
        }
        counter!(PREFETCHED_BYTES, "registry" => r.clone()).increment(0);
        gauge!(UPSTREAM_CONNECTIONS, "registry" => r.clone()).set(0.0);
        counter!(UPSTREAM_CONNECTION_WAITS, "registry" => r.clone()).increment(0);
        gauge!(UPSTREAM_CIRCUIT, "registry" => r.clone()).set(0.0);
        counter!(UPSTREAM_CIRCUIT_OPENED, "registry" => r.clone()).increment(0);
        counter!(UPSTREAM_CIRCUIT_REFUSED, "registry" => r.clone()).increment(0);
        for reason in ["expired", "quota", "purged"] {
            counter!(EVICTED_IMAGES, "rule" => r.clone(), "reason" => reason).increment(0);
        }
        counter!(EVICTED_BYTES, "rule" => r.clone()).increment(0);
        for reason in ["invalid", "scheme", "address", "credentials"] {
            counter!(UPSTREAM_REFUSED, "registry" => r.clone(), "reason" => reason).increment(0);
        }
    }
    for result in ["confirmed", "refused"] {
        counter!(LINK_CHECKS, "result" => result).increment(0);
    }
    for reason in ["disk", "hydrations", "upstream", "spool"] {
        counter!(PASSTHROUGH, "reason" => reason).increment(0);
    }
    for kind in ["manifest", "blob"] {
        counter!(COALESCED, "kind" => kind).increment(0);
    }
    gauge!(HYDRATIONS_IN_FLIGHT).increment(0.0);
    gauge!(REPLICATION_BACKLOG).increment(0.0);
    for mode in ["run", "dry_run"] {
        for result in ["ok", "busy", "failed"] {
            counter!(GC_RUNS, "mode" => mode, "result" => result).increment(0);
        }
    }
    for kind in ["blob", "manifest", "link", "tag"] {
        counter!(GC_DELETED_OBJECTS, "kind" => kind).increment(0);
    }
    counter!(GC_DELETED_BYTES).increment(0);
    gauge!(GC_CANDIDATES).increment(0.0);
    for result in ["written", "dropped"] {
        counter!(PULL_RECORDS, "result" => result).increment(0);
    }
    for result in [
        "queued",
        "delivered",
        "failed",
        "dropped",
        "lost",
        "expired",
    ] {
        counter!(EVENTS, "result" => result).increment(0);
    }
    gauge!(OUTBOX).increment(0.0);
    gauge!(OUTBOX_OLDEST).increment(0.0);
    for p in peers {
        for result in ["hit", "miss", "error"] {
            counter!(PEER_FETCHES, "region" => p.clone(), "result" => result).increment(0);
        }
        for result in ["copied", "present", "failed"] {
            counter!(REPLICATIONS, "region" => p.clone(), "result" => result).increment(0);
        }
    }
    if replicas > 1 {
        for result in ["forwarded", "owner_down"] {
            counter!(FORWARDED, "result" => result).increment(0);
        }
    }
}

/// Counts webhook events.
pub fn events(result: &'static str, n: u64) {
    counter!(EVENTS, "result" => result).increment(n);
}

/// Sets the outbox's size and the age of its oldest event.
pub fn outbox(len: usize, oldest_ms: Option<u64>) {
    gauge!(OUTBOX).set(len as f64);
    let age = oldest_ms.map_or(0.0, |q| {
        crate::events::now_ms().saturating_sub(q) as f64 / 1000.0
    });
    gauge!(OUTBOX_OLDEST).set(age);
}

/// Sets the requests open to an upstream with a connection cap.
pub fn upstream_connections(registry: &str, in_use: usize) {
    gauge!(UPSTREAM_CONNECTIONS, "registry" => registry.to_owned()).set(in_use as f64);
}

/// Counts one request that waited for a connection to its upstream.
pub fn upstream_connection_waits(registry: &str) {
    counter!(UPSTREAM_CONNECTION_WAITS, "registry" => registry.to_owned()).increment(1);
}

/// Counts one revalidation of a hot tag (`result`: unchanged, moved,
/// failed, postponed).
pub fn hot_revalidation(registry: &str, result: &'static str) {
    counter!(HOT_REVALIDATIONS, "registry" => registry.to_owned(), "result" => result).increment(1);
}

/// Counts one tag-change prefetch and the blob bytes it hydrated.
pub fn prefetch(registry: &str, result: &'static str, bytes: u64) {
    counter!(PREFETCHES, "registry" => registry.to_owned(), "result" => result).increment(1);
    counter!(PREFETCHED_BYTES, "registry" => registry.to_owned()).increment(bytes);
}

/// Counts one stale tag served without revalidating (budget at reserve).
pub fn revalidation_postponed(registry: &str) {
    counter!(REVALIDATIONS_POSTPONED, "registry" => registry.to_owned()).increment(1);
}
