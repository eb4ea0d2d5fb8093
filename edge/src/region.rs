//! Which region serves a request, from the hostname the client used.
//!
//! * `<region>.<global>` is pinned to that region and never fails over (as
//!   ACR's regional endpoints: determinism over magic).
//! * `<global>` picks the region whose `continents` contain Cloudflare's
//!   `cf.continent` for the client, else the first (default) region.
//! * Any other host (`*.workers.dev`, `127.0.0.1:8787` under `wrangler dev`)
//!   is served by the default region.
//!
//! Pure: the caller passes the host and continent, so this is unit-tested.
//! Health-aware failover on the global hostname is not done here yet.

use crate::config::{Config, Region};

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

/// The region for a request to `host` from `continent`.
pub fn select<'a>(config: &'a Config, host: &str, continent: Option<&str>) -> &'a Region {
    let name = hostname(host);
    let default = &config.regions[0];
    if name == config.global_host {
        return continent
            .and_then(|c| {
                config
                    .regions
                    .iter()
                    .find(|r| r.continents.iter().any(|x| x.eq_ignore_ascii_case(c)))
            })
            .unwrap_or(default);
    }
    if let Some(label) = name
        .strip_suffix(config.global_host.as_str())
        .and_then(|s| s.strip_suffix('.'))
        && let Some(region) = config.regions.iter().find(|r| r.name == label)
    {
        return region;
    }
    default
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use wharf_core::token::SigningKey;
    use wharf_core::{CacheRules, RuleSpec};

    fn region(name: &str, continents: &[&str]) -> Region {
        Region {
            name: name.into(),
            origin: format!("https://{name}-origin"),
            s3: None,
            continents: continents.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn config() -> Config {
        Config {
            global_host: "wharf.example.com".into(),
            regions: vec![
                region("eu", &["EU"]),
                region("us", &["NA", "SA"]),
                region("ap", &["AS", "OC"]),
            ],
            rules: CacheRules::new(vec![RuleSpec {
                prefix: "docker.io".into(),
                upstream: "https://registry-1.docker.io".into(),
            }])
            .unwrap(),
            rule_opts: vec![],
            key: SigningKey::new(vec![0u8; 32]).unwrap(),
            users: Default::default(),
            token_ttl: Duration::from_secs(300),
            ticket_ttl: Duration::from_secs(60),
            presign_ttl: Duration::from_secs(600),
            presence_ttl: Duration::from_secs(3600),
            origin_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn hosts_map_to_regions() {
        let c = config();
        let cases = [
            ("wharf.example.com", Some("NA"), "us"),
            ("WHARF.example.com.", Some("AS"), "ap"),
            ("wharf.example.com:443", Some("AF"), "eu"), // no region for Africa: default
            ("wharf.example.com", None, "eu"),
            ("us.wharf.example.com", Some("EU"), "us"), // regional: pinned, whatever the client's location
            ("ap.wharf.example.com:8443", None, "ap"),
            ("xx.wharf.example.com", Some("NA"), "eu"), // unknown region label: default
            ("127.0.0.1:8787", Some("NA"), "eu"),
            ("[::1]:8787", None, "eu"),
            ("evilwharf.example.com", Some("NA"), "eu"),
        ];
        for (host, continent, want) in cases {
            assert_eq!(
                select(&c, host, continent).name,
                want,
                "{host} {continent:?}"
            );
        }
        assert_eq!(hostname("[::1]:8787"), "::1");
        assert_eq!(hostname("Host"), "host");
    }
}
