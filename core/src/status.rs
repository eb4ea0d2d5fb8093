//! What the people who run a region look at, read from its Prometheus
//! metrics: how much the cache serves, how much upstream traffic it saves,
//! each upstream's budget and circuit, storage per rule, replication.
//!
//! One reading for every place that shows it (the admin API's status, the
//! `wharf status` command, the status page), from the same text `/metrics`
//! exports, so a number on a dashboard and in the CLI cannot disagree.
//! Pure: the caller hands in the text.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One sample: its labels and value.
type Samples = Vec<(BTreeMap<String, String>, f64)>;

/// A region's figures since its origin started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Registry answers (manifests, blobs, tag lists, referrers).
    pub requests: f64,
    /// Of those, answered from the cache without asking the upstream.
    pub hits: f64,
    /// `hits / requests`, when there were requests.
    pub hit_ratio: Option<f64>,
    /// Body bytes sent from the store.
    pub bytes_from_cache: f64,
    /// Body bytes sent while fetching from the upstream (or a peer region).
    pub bytes_from_upstream: f64,
    /// Requests sent to upstreams.
    pub upstream_requests: f64,
    /// Bytes read from upstreams.
    pub upstream_bytes: f64,
    /// Per upstream (rule prefix): last reported rate-limit budget.
    pub ratelimit_remaining: BTreeMap<String, f64>,
    /// Per upstream: `closed`, `half-open` or `open`.
    pub circuits: BTreeMap<String, String>,
    /// Per rule: bytes its kept images hold (as of the last retention pass).
    pub store_bytes: BTreeMap<String, f64>,
    /// Copies waiting for the peer regions.
    pub replication_backlog: f64,
    /// Downloads in flight.
    pub hydrations_in_flight: f64,
    /// Images evicted and bytes deleted by retention.
    pub evicted_images: f64,
    /// Bytes the retention passes deleted.
    pub deleted_bytes: f64,
}

/// Results of `wharf_requests_total` that needed no upstream request.
const HIT_RESULTS: [&str; 3] = ["hit", "stale", "revalidated"];
/// Results that are answers at all (refusals and errors are not).
const ANSWER_RESULTS: [&str; 6] = [
    "hit",
    "stale",
    "revalidated",
    "miss",
    "coalesced",
    "passthrough",
];

/// A byte count for people: `980.9 KiB`, `1.5 GiB`.
pub fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    // Also an empty sum, which is -0.0.
    if n.is_nan() || n <= 0.0 {
        return "0 B".into();
    }
    let mut n = n;
    let mut unit = 0;
    while n >= 1024.0 && unit + 1 < UNITS.len() {
        n /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n:.0} B")
    } else {
        format!("{n:.1} {}", UNITS[unit])
    }
}

/// A digest for people: `sha256:0123456789ab…` → `0123456789ab`.
pub fn short_digest(digest: &str) -> String {
    digest
        .split_once(':')
        .map_or(digest, |(_, h)| h)
        .chars()
        .take(12)
        .collect()
}

/// Reads the figures from Prometheus text (`/metrics`).
pub fn summarize(text: &str) -> Summary {
    let metrics = parse(text);
    let get = |name: &str| metrics.get(name).map(Vec::as_slice).unwrap_or_default();
    let sum_where = |name: &str, label: &str, values: &[&str]| -> f64 {
        get(name)
            .iter()
            .filter(|(l, _)| l.get(label).is_some_and(|v| values.contains(&v.as_str())))
            .map(|(_, v)| v)
            .sum::<f64>()
            // An empty sum is -0.0; shown as "-0".
            + 0.0
    };
    let total = |name: &str| -> f64 { get(name).iter().map(|(_, v)| v).sum::<f64>() + 0.0 };
    let by = |name: &str, label: &str| -> BTreeMap<String, f64> {
        get(name)
            .iter()
            .filter_map(|(l, v)| Some((l.get(label)?.clone(), *v)))
            .collect()
    };
    let requests = sum_where("wharf_requests_total", "result", &ANSWER_RESULTS);
    let hits = sum_where("wharf_requests_total", "result", &HIT_RESULTS);
    Summary {
        requests,
        hits,
        hit_ratio: (requests > 0.0).then(|| hits / requests),
        bytes_from_cache: sum_where("wharf_served_bytes_total", "source", &["store"]),
        bytes_from_upstream: sum_where(
            "wharf_served_bytes_total",
            "source",
            &["upstream", "peer", "replica"],
        ),
        upstream_requests: total("wharf_upstream_requests_total"),
        upstream_bytes: total("wharf_upstream_bytes_total"),
        ratelimit_remaining: by("wharf_upstream_ratelimit_remaining", "registry"),
        circuits: by("wharf_upstream_circuit_state", "registry")
            .into_iter()
            .map(|(r, v)| {
                let state = match v as u8 {
                    0 => "closed",
                    1 => "half-open",
                    _ => "open",
                };
                (r, state.to_owned())
            })
            .collect(),
        store_bytes: by("wharf_store_bytes", "rule"),
        replication_backlog: total("wharf_replication_backlog"),
        hydrations_in_flight: total("wharf_hydrations_in_flight"),
        evicted_images: total("wharf_evicted_images_total"),
        deleted_bytes: total("wharf_gc_deleted_bytes_total"),
    }
}

/// Every sample of the text, by metric name. Lines that do not parse are
/// skipped (a reader of someone else's text must not fail on it).
pub fn parse(text: &str) -> BTreeMap<String, Samples> {
    let mut out: BTreeMap<String, Samples> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((name, labels, value)) = sample(line) {
            out.entry(name).or_default().push((labels, value));
        }
    }
    out
}

/// `name{a="b",…} value [timestamp]`.
fn sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            if c == '}' {
                end = Some(i);
                break;
            }
            if c == ',' || c == ' ' {
                continue;
            }
            // A label: key="value" with \" \\ \n escapes.
            let key_start = i;
            let eq = body[key_start..].find('=')? + key_start;
            let key = body[key_start..eq].trim().to_owned();
            while chars.peek().is_some_and(|(j, _)| *j <= eq) {
                chars.next();
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    (_, '"') => break,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, other) => value.push(other),
                }
            }
            labels.insert(key, value);
        }
        &body[end? + 1..]
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name.to_owned(), labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP wharf_requests_total x
# TYPE wharf_requests_total counter
wharf_requests_total{kind="manifest",result="hit"} 30
wharf_requests_total{kind="blob",result="hit"} 50
wharf_requests_total{kind="blob",result="miss"} 15
wharf_requests_total{kind="manifest",result="stale"} 5
wharf_requests_total{kind="manifest",result="denied"} 7
wharf_served_bytes_total{source="store"} 1000
wharf_served_bytes_total{source="upstream"} 250
wharf_upstream_requests_total{registry="docker.io",method="GET",status="200"} 20
wharf_upstream_requests_total{registry="ghcr.io",method="HEAD",status="200"} 3
wharf_upstream_bytes_total{registry="docker.io"} 260
wharf_upstream_ratelimit_remaining{registry="docker.io"} 97
wharf_upstream_circuit_state{registry="docker.io"} 0
wharf_upstream_circuit_state{registry="ghcr.io"} 2
wharf_store_bytes{rule="docker.io"} 123456
wharf_replication_backlog 4
wharf_hydration_duration_seconds_bucket{registry="docker.io",outcome="committed",le="+Inf"} 3
weird{label="with \"quotes\", commas}",other="x"} 1.5 1700000000
not a sample line
"#;

    #[test]
    fn figures_from_prometheus_text() {
        let s = summarize(TEXT);
        assert_eq!(s.requests, 100.0, "denied requests are not answers");
        assert_eq!(s.hits, 85.0);
        assert_eq!(s.hit_ratio, Some(0.85));
        assert_eq!((s.bytes_from_cache, s.bytes_from_upstream), (1000.0, 250.0));
        assert_eq!((s.upstream_requests, s.upstream_bytes), (23.0, 260.0));
        assert_eq!(s.ratelimit_remaining["docker.io"], 97.0);
        assert_eq!(s.circuits["docker.io"], "closed");
        assert_eq!(s.circuits["ghcr.io"], "open");
        assert_eq!(s.store_bytes["docker.io"], 123456.0);
        assert_eq!(s.replication_backlog, 4.0);
        let empty = summarize("");
        assert_eq!(empty.hit_ratio, None);
        assert_eq!(format!("{}", empty.replication_backlog), "0", "not -0");
    }

    #[test]
    fn byte_counts_for_people() {
        assert_eq!(human_bytes(0.0), "0 B");
        assert_eq!(human_bytes(-0.0), "0 B");
        assert_eq!(human_bytes(1023.0), "1023 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
    }

    #[test]
    fn labels_with_escapes_and_infinities_parse() {
        let m = parse(TEXT);
        let (labels, v) = &m["weird"][0];
        assert_eq!(labels["label"], "with \"quotes\", commas}");
        assert_eq!(labels["other"], "x");
        assert_eq!(*v, 1.5);
        let (_, inf) = &m["wharf_hydration_duration_seconds_bucket"][0];
        assert!(inf.is_finite());
        assert_eq!(m.get("not"), None);
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_without_panicking(text in ".{0,400}") {
            let _ = summarize(&text);
        }
    }
}
