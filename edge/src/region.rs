//! Which region serves a request: the hostname decides whether it is pinned,
//! the client's location and the regions' health decide where the global
//! hostname goes.
//!
//! * `<region>.<global>` is **pinned** to that region and never fails over
//!   (as ACR's regional endpoints: determinism over magic); when its region
//!   is down it answers `503` naming the region.
//! * `<global>` — and any other host (`*.workers.dev`, `127.0.0.1:8787` under
//!   `wrangler dev`) — goes to the nearest **routable** region
//!   (`wharf_core::region::rank` over continent, country and coordinates from
//!   `request.cf`), and on to the next ones in that order if a request to
//!   its origin fails.
//!
//! Pure: host, location and health are arguments, so this is unit-tested;
//! the health records themselves live in [`crate::health`].

use wharf_core::region::{Health, Location, rank, route};

use crate::config::Config;

/// The host without a port, lowercase, without a trailing dot.
pub fn hostname(host: &str) -> String {
    let h = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// How a hostname maps to regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// The global hostname (or any unknown host): nearest healthy region.
    Global,
    /// A regional hostname: this region (index into `Config::regions`) only.
    Regional(usize),
}

/// Classifies `host`.
pub fn pin(config: &Config, host: &str) -> Pin {
    let name = hostname(host);
    if let Some(label) = name
        .strip_suffix(config.global_host.as_str())
        .and_then(|s| s.strip_suffix('.'))
        && let Some(i) = config.regions.iter().position(|r| r.name == label)
    {
        return Pin::Regional(i);
    }
    Pin::Global
}

/// Regions to try for a request on the global hostname, in order: the
/// routable ones nearest first; when none is routable, the nearest (fail
/// open). `health[i]` is region `i`'s record, if any.
pub fn candidates(
    config: &Config,
    at: &Location,
    health: &[Option<Health>],
    now_ms: u64,
) -> Vec<usize> {
    let ranked = rank(&config.specs, at);
    let healthy: Vec<usize> = ranked
        .iter()
        .copied()
        .filter(|&i| {
            health
                .get(i)
                .copied()
                .flatten()
                .is_none_or(|h| h.routable(now_ms, &config.health))
        })
        .collect();
    if healthy.is_empty() {
        route(&ranked, |_| None, now_ms, &config.health)
            .into_iter()
            .collect()
    } else {
        healthy
    }
}

/// Whether region `i` may serve (pinned hostnames: no failover, but fail open).
pub fn routable(config: &Config, health: &[Option<Health>], i: usize, now_ms: u64) -> bool {
    health
        .get(i)
        .copied()
        .flatten()
        .is_none_or(|h| h.routable(now_ms, &config.health))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Map};
    use std::collections::HashMap;

    fn config() -> Config {
        Config::parse(&Map(HashMap::from([
            ("WHARF_GLOBAL_HOST", "wharf.example.com".to_owned()),
            (
                "WHARF_REGIONS",
                r#"[{"name":"eu","origin":"https://eu","continents":["EU","AF"],"lat":50.1,"lon":8.7},
                    {"name":"us","origins":["https://us1","https://us2"],"continents":["NA","SA"],"lat":39.0,"lon":-77.5},
                    {"name":"ap","origin":"https://ap","continents":["AS","OC"],"lat":1.35,"lon":103.8}]"#
                    .to_owned(),
            ),
            (
                "WHARF_RULES",
                r#"[{"prefix":"docker.io","upstream":"https://registry-1.docker.io"}]"#.to_owned(),
            ),
            ("WHARF_TOKEN_KEY", "k".repeat(32)),
        ])))
        .unwrap()
    }

    #[test]
    fn hosts_are_pinned_or_global() {
        let c = config();
        let cases = [
            ("wharf.example.com", Pin::Global),
            ("WHARF.example.com.:443", Pin::Global),
            ("us.wharf.example.com", Pin::Regional(1)),
            ("ap.wharf.example.com:8443", Pin::Regional(2)),
            ("xx.wharf.example.com", Pin::Global), // unknown label: served as global
            ("127.0.0.1:8787", Pin::Global),
            ("[::1]:8787", Pin::Global),
            ("evilwharf.example.com", Pin::Global),
        ];
        for (host, want) in cases {
            assert_eq!(pin(&c, host), want, "{host}");
        }
        assert_eq!(hostname("[::1]:8787"), "::1");
        assert_eq!(hostname("Host"), "host");
    }

    #[test]
    fn the_global_hostname_goes_to_the_nearest_healthy_region() {
        let c = config();
        let p = c.health;
        let down = Health::unknown()
            .observe(false, 1000, &p)
            .observe(false, 1000, &p);
        let up = Health::unknown().observe(true, 1000, &p);
        let at = |s: &str| Location::parse(s).unwrap();
        let none = [None, None, None];
        assert_eq!(candidates(&c, &at("NA"), &none, 2000), vec![1, 0, 2]);
        assert_eq!(candidates(&c, &at("AS"), &none, 2000), vec![2, 0, 1]);
        assert_eq!(candidates(&c, &at(""), &none, 2000), vec![0, 1, 2]);
        // ap down: Asian clients go to eu, then us.
        let h = [Some(up), Some(up), Some(down)];
        assert_eq!(candidates(&c, &at("AS"), &h, 2000), vec![0, 1]);
        // Everything down: the nearest anyway (fail open).
        let h = [Some(down), Some(down), Some(down)];
        assert_eq!(candidates(&c, &at("AS"), &h, 2000), vec![2]);
        // Stale records are ignored (fail open).
        let h = [None, None, Some(down)];
        let later = 1000 + p.stale_after_ms + 1;
        assert_eq!(candidates(&c, &at("AS"), &h, later)[0], 2);
        assert!(!routable(&c, &[None, None, Some(down)], 2, 2000));
        assert!(routable(&c, &[None, None, None], 2, 2000));
    }

    #[test]
    fn replicas_are_tried_in_rendezvous_order() {
        let c = config();
        let us = &c.regions[1];
        let a = us.origins_for("sha256:aaaa");
        assert_eq!(a.len(), 2);
        assert_eq!(a, us.origins_for("sha256:aaaa"));
        assert!(a.contains(&"https://us1") && a.contains(&"https://us2"));
    }
}
