//! Regions: where each one is, which is nearest a client, whether each is
//! healthy, and which replica of a region owns a key.
//!
//! * [`RegionSpec`] — one entry of the region list (`infra/regions.toml`,
//!   `WHARF_REGIONS` in `wrangler.toml`, the origins' `[[region]]`): name,
//!   origin replicas, object store, and location (continents, countries,
//!   coordinates). The same type deserialises all three, so they cannot drift.
//! * [`Location`] + [`rank`] — nearest-first order of the regions for a
//!   client (the Worker's `request.cf`) or for a region (an origin ordering
//!   its peers).
//! * [`Health`] + [`HealthPolicy`] — a per-region state machine with
//!   hysteresis: `fail_after` consecutive failures mark a region down,
//!   `recover_after` consecutive successes bring it back, so one slow probe
//!   does not flap a region. Data older than `stale_after` is ignored
//!   (**fail open**: no or stale health data means "route normally").
//! * [`route`] — the first routable region in rank order.
//! * [`plan`] — the whole routing decision of one request at the edge, given
//!   the hostname, the client's location and the health records: which
//!   regions to try in which order, whether to fail over, whether a pinned
//!   region must refuse, which records to re-probe; [`Plan::attempts`]
//!   flattens it into (region, replica) tries for a key. The edge has one
//!   loop over it, and tests may compute the same plan.
//! * [`rendezvous`] — highest-random-weight order of replicas for a key
//!   (a blob digest): every replica and every edge location computes the same
//!   owner from the same list, with no coordination, and removing one replica
//!   only moves the keys it owned.
//!
//! Pure: time is an argument (unix milliseconds), nothing here does I/O.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// One or several strings: `origin = "https://a"` or `origins = ["https://a", "https://b"]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// One region of the deployment, as written in the region list.
///
/// `origin` (one URL) and `origins` (replicas) are both accepted;
/// [`RegionSpec::origins`] returns the list either way.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    /// Short name, also the regional hostname's first label (`eu` → `eu.<global>`).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origins: Option<Vec<String>>,
    /// S3 endpoint of the region's bucket, as the origins reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
    /// S3 endpoint clients reach (presigned URLs); defaults to `s3_endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_s3_endpoint: Option<String>,
    /// The region's bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// SigV4 signing region of the store (`garage` for Garage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_region: Option<String>,
    /// `path` or `virtual` addressing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addressing: Option<String>,
    /// Continent codes (Cloudflare's `cf.continent`: `AF AN AS EU NA OC SA`) served by this region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub continents: Vec<String>,
    /// ISO 3166-1 alpha-2 country codes served by this region (stronger than continents).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<String>,
    /// Latitude of the region, degrees (with `lon`: nearest by distance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    /// Longitude of the region, degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
}

/// A region list that is not usable, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("region list: {0}")]
pub struct RegionError(pub String);

impl RegionSpec {
    /// A region named `name` with one origin and nothing else (tests, simple setups).
    pub fn new(name: &str, origin: &str) -> Self {
        Self {
            name: name.to_owned(),
            origin: Some(OneOrMany::One(origin.to_owned())),
            origins: None,
            s3_endpoint: None,
            public_s3_endpoint: None,
            bucket: None,
            s3_region: None,
            addressing: None,
            continents: Vec::new(),
            countries: Vec::new(),
            lat: None,
            lon: None,
        }
    }

    /// The origin replicas' base URLs (without trailing `/`).
    pub fn origins(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.origin {
            Some(OneOrMany::One(o)) => out.push(o.clone()),
            Some(OneOrMany::Many(v)) => out.extend(v.iter().cloned()),
            None => {}
        }
        if let Some(v) = &self.origins {
            out.extend(v.iter().cloned());
        }
        out.into_iter()
            .map(|o| o.trim_end_matches('/').to_owned())
            .collect()
    }

    /// Sets the origin replicas.
    pub fn set_origins(&mut self, origins: Vec<String>) {
        self.origin = None;
        self.origins = Some(origins);
    }

    /// The region's own location (its first continent and country, its coordinates).
    pub fn location(&self) -> Location {
        Location {
            continent: self.continents.first().cloned(),
            country: self.countries.first().cloned(),
            coords: self.lat.zip(self.lon),
        }
    }

    /// The endpoint presigned URLs use.
    pub fn public_endpoint(&self) -> Option<&str> {
        self.public_s3_endpoint
            .as_deref()
            .or(self.s3_endpoint.as_deref())
    }
}

/// Checks a region list: at least one region, unique DNS-label names, at
/// least one origin each, coordinates in range and given in pairs.
pub fn validate(regions: &[RegionSpec]) -> Result<(), RegionError> {
    if regions.is_empty() {
        return Err(RegionError("no regions; give at least one".into()));
    }
    for (i, r) in regions.iter().enumerate() {
        let label_ok = !r.name.is_empty()
            && r.name.len() <= 63
            && r.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !r.name.starts_with('-')
            && !r.name.ends_with('-');
        if !label_ok {
            return Err(RegionError(format!(
                "region name {:?} must be a lowercase DNS label (a-z, 0-9, '-'), as it is the regional hostname's first label",
                r.name
            )));
        }
        if regions[..i].iter().any(|o| o.name == r.name) {
            return Err(RegionError(format!("region {:?} is listed twice", r.name)));
        }
        let origins = r.origins();
        if origins.is_empty() {
            return Err(RegionError(format!(
                "region {:?} has no origin; set origin = \"https://…\" or origins = [\"https://…\", …]",
                r.name
            )));
        }
        for o in &origins {
            if !(o.starts_with("http://") || o.starts_with("https://")) {
                return Err(RegionError(format!(
                    "region {:?}: origin {o:?} must be an http:// or https:// URL",
                    r.name
                )));
            }
        }
        match (r.lat, r.lon) {
            (Some(lat), Some(lon)) => {
                if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                    return Err(RegionError(format!(
                        "region {:?}: lat must be in [-90, 90] and lon in [-180, 180], got {lat}, {lon}",
                        r.name
                    )));
                }
            }
            (None, None) => {}
            _ => {
                return Err(RegionError(format!(
                    "region {:?}: give both lat and lon, or neither",
                    r.name
                )));
            }
        }
    }
    Ok(())
}

/// Where a client (or a region) is. Every part is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Location {
    /// Continent code (`EU`, `NA`, …).
    pub continent: Option<String>,
    /// Country code (`DE`, `US`, …).
    pub country: Option<String>,
    /// Latitude and longitude, degrees.
    pub coords: Option<(f64, f64)>,
}

impl Location {
    /// Parses the test override syntax `CONTINENT[/COUNTRY][@LAT,LON]`
    /// (`EU`, `EU/DE`, `AS/JP@35.6,139.7`, `@1.3,103.8`). `None` when malformed.
    pub fn parse(s: &str) -> Option<Location> {
        let s = s.trim();
        let (codes, coords) = match s.split_once('@') {
            Some((c, xy)) => {
                let (lat, lon) = xy.split_once(',')?;
                let lat: f64 = lat.trim().parse().ok()?;
                let lon: f64 = lon.trim().parse().ok()?;
                if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                    return None;
                }
                (c, Some((lat, lon)))
            }
            None => (s, None),
        };
        let code = |x: &str| -> Option<Option<String>> {
            let x = x.trim();
            if x.is_empty() {
                return Some(None);
            }
            (x.len() == 2 && x.bytes().all(|b| b.is_ascii_alphabetic()))
                .then(|| Some(x.to_ascii_uppercase()))
        };
        let (continent, country) = match codes.split_once('/') {
            Some((a, b)) => (code(a)?, code(b)?),
            None => (code(codes)?, None),
        };
        Some(Location {
            continent,
            country,
            coords,
        })
    }
}

/// Great-circle distance in kilometres (haversine).
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

/// Region indices, nearest first, for a client at `at`.
///
/// Order: a region listing the client's country, then one listing its
/// continent, then the rest; within each class by distance when both sides
/// have coordinates, then in list order (the first region is the default).
pub fn rank(regions: &[RegionSpec], at: &Location) -> Vec<usize> {
    let class = |r: &RegionSpec| -> u8 {
        let has = |list: &[String], v: &Option<String>| {
            v.as_ref()
                .is_some_and(|v| list.iter().any(|x| x.eq_ignore_ascii_case(v)))
        };
        if has(&r.countries, &at.country) {
            0
        } else if has(&r.continents, &at.continent) {
            1
        } else {
            2
        }
    };
    let dist = |r: &RegionSpec| -> f64 {
        match (at.coords, r.lat.zip(r.lon)) {
            (Some(a), Some(b)) => distance_km(a, b),
            _ => f64::INFINITY,
        }
    };
    let mut idx: Vec<usize> = (0..regions.len()).collect();
    idx.sort_by(|&a, &b| {
        let (ra, rb) = (&regions[a], &regions[b]);
        class(ra)
            .cmp(&class(rb))
            .then(dist(ra).total_cmp(&dist(rb)))
            .then(a.cmp(&b))
    });
    idx
}

/// The other regions, nearest first, for the region named `me` (an origin
/// ordering its peers); empty when `me` is not in the list.
pub fn peers(regions: &[RegionSpec], me: &str) -> Vec<usize> {
    let Some(own) = regions.iter().find(|r| r.name == me) else {
        return Vec::new();
    };
    rank(regions, &own.location())
        .into_iter()
        .filter(|&i| regions[i].name != me)
        .collect()
}

/// Thresholds of the health state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failures that mark an up region down.
    pub fail_after: u32,
    /// Consecutive successes that bring a down region back.
    pub recover_after: u32,
    /// Health data older than this (ms) is ignored: fail open.
    pub stale_after_ms: u64,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            fail_after: 2,
            recover_after: 2,
            stale_after_ms: 5 * 60 * 1000,
        }
    }
}

/// What is known about one region's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Routable (hysteresis applied).
    pub up: bool,
    /// Consecutive failed observations.
    pub fails: u32,
    /// Consecutive successful observations.
    pub oks: u32,
    /// When the last observation was made (unix ms).
    pub updated_ms: u64,
    /// When `up` last changed (unix ms).
    pub changed_ms: u64,
    /// The last probe found the region ready but degraded (its origin's
    /// `/readyz` said so: disk pressure, an upstream failing): still
    /// routable, but the global hostname prefers regions that are not.
    /// Records written before this field existed read as not degraded.
    #[serde(default)]
    pub degraded: bool,
}

impl Health {
    /// A region never observed: up.
    pub fn unknown() -> Self {
        Self {
            up: true,
            fails: 0,
            oks: 0,
            updated_ms: 0,
            changed_ms: 0,
            degraded: false,
        }
    }

    /// The state after one observation (`ok` = the probe or request succeeded).
    #[must_use]
    pub fn observe(self, ok: bool, now_ms: u64, policy: &HealthPolicy) -> Self {
        let mut h = self;
        if ok {
            h.oks = h.oks.saturating_add(1);
            h.fails = 0;
            if !h.up && h.oks >= policy.recover_after.max(1) {
                h.up = true;
                h.changed_ms = now_ms;
            }
        } else {
            h.fails = h.fails.saturating_add(1);
            h.oks = 0;
            if h.up && h.fails >= policy.fail_after.max(1) {
                h.up = false;
                h.changed_ms = now_ms;
            }
        }
        h.updated_ms = now_ms;
        h
    }

    /// True if the region may be routed to: up, or the data is stale (fail open).
    pub fn routable(&self, now_ms: u64, policy: &HealthPolicy) -> bool {
        self.up || self.is_stale(now_ms, policy)
    }

    /// True if the region is up but its last probe found it degraded, and
    /// the record is not stale.
    pub fn is_degraded(&self, now_ms: u64, policy: &HealthPolicy) -> bool {
        self.up && self.degraded && !self.is_stale(now_ms, policy)
    }

    fn is_stale(&self, now_ms: u64, policy: &HealthPolicy) -> bool {
        now_ms.saturating_sub(self.updated_ms) > policy.stale_after_ms
    }

    /// The newer of two reports about the same region.
    #[must_use]
    pub fn newest(self, other: Self) -> Self {
        if other.updated_ms > self.updated_ms {
            other
        } else {
            self
        }
    }
}

/// The first routable region of `ranked` (see [`rank`]); when none is
/// routable, the nearest one (fail open: a wrong "all down" must not stop
/// the service). `None` only for an empty list.
pub fn route(
    ranked: &[usize],
    health: impl Fn(usize) -> Option<Health>,
    now_ms: u64,
    policy: &HealthPolicy,
) -> Option<usize> {
    ranked
        .iter()
        .copied()
        .find(|&i| health(i).is_none_or(|h| h.routable(now_ms, policy)))
        .or_else(|| ranked.first().copied())
}

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
    /// A regional hostname, `<region>.<global>`: this region (an index into
    /// the region list) only.
    Regional(usize),
}

/// Classifies `host` (as the client sent it, port and case included).
pub fn pin(regions: &[RegionSpec], global_host: &str, host: &str) -> Pin {
    let name = hostname(host);
    if let Some(label) = name
        .strip_suffix(global_host)
        .and_then(|s| s.strip_suffix('.'))
        && let Some(i) = regions.iter().position(|r| r.name == label)
    {
        return Pin::Regional(i);
    }
    Pin::Global
}

impl Health {
    /// Whether `record` is due for a new probe: missing, or last observed
    /// `interval_ms` or more ago. The same test says whether a location's
    /// own record is recent enough to skip the global copy.
    pub fn due(record: Option<&Health>, now_ms: u64, interval_ms: u64) -> bool {
        record.is_none_or(|h| now_ms.saturating_sub(h.updated_ms) >= interval_ms)
    }
}

/// What the edge's routing decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// The region list (the edge's order; the first is the default).
    pub regions: &'a [RegionSpec],
    /// The global hostname.
    pub global_host: &'a str,
    /// The host the client used (`host[:port]`).
    pub host: &'a str,
    /// Where the client is.
    pub at: &'a Location,
    /// Region `i`'s health record, if any (index as in `regions`; missing
    /// entries count as no record).
    pub health: &'a [Option<Health>],
    /// Thresholds, and when records go stale.
    pub policy: &'a HealthPolicy,
    /// How old a record may be before a request re-probes its region.
    pub probe_interval_ms: u64,
    /// Now, unix milliseconds.
    pub now_ms: u64,
}

/// Where one request goes: the result of [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Regions to try, in order. Never empty for a non-empty region list.
    pub regions: Vec<usize>,
    /// `true` on the global hostname: a region whose origin cannot be
    /// reached hands the request to the next one. `false` on a pinned
    /// hostname: the request fails naming the region.
    pub failover: bool,
    /// A pinned region whose record says down: refuse (`503` naming it, with
    /// the global hostname as the way out) before trying it.
    pub refuse: Option<usize>,
    /// Regions of the plan whose record is missing or older than the probe
    /// interval: the request re-probes them in the background.
    pub probe: Vec<usize>,
}

/// One try of a request: a region and one of its origin replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Index into the region list.
    pub region: usize,
    /// Index into that region's replicas.
    pub replica: usize,
    /// The region's last replica: if this try fails too, the region failed.
    pub last_in_region: bool,
}

/// The routing decision of one request at the edge.
///
/// * A regional hostname (`<region>.<global>`) is pinned: that region only,
///   no failover (determinism over magic, as ACR's regional endpoints); when
///   its record says down it is refused, but a missing or stale record
///   routes normally (fail open).
/// * Any other host goes to the routable regions, nearest first
///   ([`rank`]), with failover; when none is routable, to the nearest one
///   alone (fail open: a wrong "all down" must not stop the service).
/// * Regions of the plan whose record is [due](Health::due) are re-probed.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let PlanInput {
        regions,
        health,
        policy,
        now_ms,
        ..
    } = *input;
    let record = |i: usize| health.get(i).copied().flatten();
    let routable = |i: usize| record(i).is_none_or(|h| h.routable(now_ms, policy));
    let (order, failover, refuse) = match pin(regions, input.global_host, input.host) {
        Pin::Regional(i) => (vec![i], false, (!routable(i)).then_some(i)),
        Pin::Global => {
            let ranked = rank(regions, input.at);
            let mut healthy: Vec<usize> = ranked.iter().copied().filter(|&i| routable(i)).collect();
            // Degraded regions (disk pressure, an upstream failing) after
            // the others, each group still nearest first: they serve, but
            // another region serves better.
            healthy.sort_by_key(|&i| record(i).is_some_and(|h| h.is_degraded(now_ms, policy)));
            let order = if healthy.is_empty() {
                ranked.first().copied().into_iter().collect()
            } else {
                healthy
            };
            (order, true, None)
        }
    };
    let probe = order
        .iter()
        .copied()
        .filter(|&i| Health::due(record(i).as_ref(), now_ms, input.probe_interval_ms))
        .collect();
    Plan {
        regions: order,
        failover,
        refuse,
        probe,
    }
}

impl Plan {
    /// Every try for `key` (a digest, `repo:reference`, a name), in order:
    /// the plan's regions in turn, each region's replicas in [`rendezvous`]
    /// order, so the replica owning the key is asked first everywhere.
    /// `replicas(i)` lists region `i`'s replicas.
    pub fn attempts<'r, S: AsRef<str> + 'r>(
        &self,
        key: &str,
        replicas: impl Fn(usize) -> &'r [S],
    ) -> Vec<Attempt> {
        let mut out = Vec::new();
        for &region in &self.regions {
            let order = rendezvous(key, replicas(region));
            let n = order.len();
            out.extend(order.into_iter().enumerate().map(|(k, replica)| Attempt {
                region,
                replica,
                last_in_region: k + 1 == n,
            }));
        }
        out
    }
}

/// Replica indices for `key`, owner first (rendezvous / highest random
/// weight hashing over sha256(replica ‖ 0 ‖ key)); ties broken by index.
pub fn rendezvous<S: AsRef<str>>(key: &str, replicas: &[S]) -> Vec<usize> {
    let weight = |r: &str| -> u64 {
        let mut h = Sha256::new();
        h.update(r.as_bytes());
        h.update([0u8]);
        h.update(key.as_bytes());
        let d = h.finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        u64::from_be_bytes(b)
    };
    let mut w: Vec<(u64, usize)> = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| (weight(r.as_ref()), i))
        .collect();
    w.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    w.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> Vec<RegionSpec> {
        let toml = r#"[
            {"name":"eu","origin":"https://eu","continents":["EU","AF"],"lat":50.1,"lon":8.7},
            {"name":"us","origins":["https://us1","https://us2/"],"continents":["NA","SA"],"countries":["MX"],"lat":39.0,"lon":-77.5},
            {"name":"ap","origin":"https://ap","continents":["AS","OC"],"lat":1.35,"lon":103.8}
        ]"#;
        serde_json::from_str(toml).unwrap()
    }

    fn names(r: &[RegionSpec], idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&i| r[i].name.clone()).collect()
    }

    #[test]
    fn origins_accept_one_or_many() {
        let r = regions();
        assert_eq!(r[0].origins(), vec!["https://eu"]);
        assert_eq!(r[1].origins(), vec!["https://us1", "https://us2"]);
        validate(&r).unwrap();
    }

    #[test]
    fn validation_names_the_problem() {
        let mut r = regions();
        r[1].name = "eu".into();
        assert!(validate(&r).unwrap_err().0.contains("listed twice"));
        let mut r = regions();
        r[0].name = "EU".into();
        assert!(validate(&r).unwrap_err().0.contains("DNS label"));
        let mut r = regions();
        r[2].set_origins(vec![]);
        assert!(validate(&r).unwrap_err().0.contains("no origin"));
        let mut r = regions();
        r[2].lat = Some(91.0);
        assert!(validate(&r).unwrap_err().0.contains("lat"));
        let mut r = regions();
        r[2].lon = None;
        assert!(validate(&r).unwrap_err().0.contains("both lat and lon"));
        assert!(validate(&[]).is_err());
        let bad: Result<Vec<RegionSpec>, _> =
            serde_json::from_str(r#"[{"name":"x","origin":"https://x","contnents":["EU"]}]"#);
        assert!(bad.is_err(), "unknown fields are refused");
    }

    #[test]
    fn clients_rank_regions_nearest_first() {
        let r = regions();
        let cases = [
            ("EU", vec!["eu", "us", "ap"]),
            ("NA", vec!["us", "eu", "ap"]),
            ("OC", vec!["ap", "eu", "us"]),
            ("", vec!["eu", "us", "ap"]), // nothing known: list order
            ("NA/MX", vec!["us", "eu", "ap"]), // country wins
            ("EU/MX", vec!["us", "eu", "ap"]), // country beats continent
            ("AN@48.8,2.3", vec!["eu", "us", "ap"]), // no match: distance
            ("@35.6,139.7", vec!["ap", "eu", "us"]), // Tokyo: Singapore nearest
            ("EU@35.6,139.7", vec!["eu", "ap", "us"]), // continent class first
            ("AF@-33.9,18.4", vec!["eu", "ap", "us"]), // Cape Town: AF is in eu
            ("SA@-23.5,-46.6", vec!["us", "eu", "ap"]), // São Paulo
        ];
        for (at, want) in cases {
            let loc = Location::parse(at).unwrap_or_else(|| panic!("{at}"));
            assert_eq!(names(&r, &rank(&r, &loc)), want, "{at}");
        }
        assert_eq!(names(&r, &peers(&r, "ap")), vec!["eu", "us"]);
        assert_eq!(names(&r, &peers(&r, "us")), vec!["eu", "ap"]);
        assert!(peers(&r, "xx").is_empty());
    }

    #[test]
    fn location_override_syntax() {
        assert_eq!(
            Location::parse("eu/de@50,8"),
            Some(Location {
                continent: Some("EU".into()),
                country: Some("DE".into()),
                coords: Some((50.0, 8.0))
            })
        );
        for bad in ["EUR", "E1", "EU/DEU", "@91,0", "@1", "@x,y", "EU@1,2,3"] {
            assert_eq!(Location::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn health_has_hysteresis_and_fails_open() {
        let p = HealthPolicy {
            fail_after: 2,
            recover_after: 3,
            stale_after_ms: 10_000,
        };
        let h = Health::unknown().observe(false, 1, &p);
        assert!(h.up, "one failure does not flap");
        let h = h.observe(true, 2, &p).observe(false, 3, &p);
        assert!(h.up, "failures must be consecutive");
        let h = h.observe(false, 4, &p);
        assert!(!h.up);
        assert_eq!(h.changed_ms, 4);
        assert!(!h.routable(5, &p));
        assert!(h.routable(4 + 10_001, &p), "stale data fails open");
        let h = h.observe(true, 6, &p).observe(true, 7, &p);
        assert!(!h.up, "needs three successes");
        let h = h.observe(true, 8, &p);
        assert!(h.up);
        assert_eq!(h.changed_ms, 8);
        assert_eq!(h.newest(Health::unknown()).updated_ms, 8);
        assert_eq!(Health::unknown().newest(h).updated_ms, 8);
    }

    #[test]
    fn route_skips_down_regions_and_fails_open() {
        let p = HealthPolicy::default();
        let down = Health::unknown()
            .observe(false, 100, &p)
            .observe(false, 100, &p);
        let ranked = [0, 1, 2];
        assert_eq!(route(&ranked, |_| None, 200, &p), Some(0));
        assert_eq!(
            route(&ranked, |i| (i == 0).then_some(down), 200, &p),
            Some(1)
        );
        assert_eq!(
            route(&ranked, |i| (i < 2).then_some(down), 200, &p),
            Some(2)
        );
        assert_eq!(
            route(&ranked, |_| Some(down), 200, &p),
            Some(0),
            "all down: nearest"
        );
        assert_eq!(route(&[], |_| None, 0, &p), None);
    }

    #[test]
    fn hosts_are_pinned_or_global() {
        let r = regions();
        let g = "wharf.example.com";
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
            assert_eq!(pin(&r, g, host), want, "{host}");
        }
        assert_eq!(hostname("[::1]:8787"), "::1");
        assert_eq!(hostname("Host"), "host");
    }

    #[test]
    fn plans_route_probe_and_fail_open() {
        let r = regions();
        let p = HealthPolicy::default();
        let interval = 10_000;
        let t = 1_000_000;
        let down = Health::unknown()
            .observe(false, t, &p)
            .observe(false, t, &p);
        let up = Health::unknown().observe(true, t, &p);
        let old_down = Health::unknown()
            .observe(false, t - p.stale_after_ms - 1, &p)
            .observe(false, t - p.stale_after_ms - 1, &p);
        let none = [None, None, None];
        let all_up = [Some(up), Some(up), Some(up)];
        let ap_down = [Some(up), Some(up), Some(down)];
        let all_down = [Some(down), Some(down), Some(down)];
        let ap_stale = [Some(up), Some(up), Some(old_down)];
        let eu_only = [Some(up)];
        let degraded = Health {
            degraded: true,
            ..up
        };
        let ap_degraded = [Some(up), Some(up), Some(degraded)];
        let old_degraded = Health {
            updated_ms: t - p.stale_after_ms - 1,
            ..degraded
        };
        let ap_degraded_stale = [Some(up), Some(up), Some(old_degraded)];
        let g = "wharf.example.com";
        struct Case<'a> {
            host: &'a str,
            at: &'a str,
            health: &'a [Option<Health>],
            now: u64,
            regions: Vec<usize>,
            failover: bool,
            refuse: Option<usize>,
            probe: Vec<usize>,
        }
        let case =
            |host, at, health, now, regions: &[usize], failover, refuse, probe: &[usize]| Case {
                host,
                at,
                health,
                now,
                regions: regions.to_vec(),
                failover,
                refuse,
                probe: probe.to_vec(),
            };
        let cases = [
            // Global hostname: nearest first; no records: probe them all.
            case(g, "NA", &none, t, &[1, 0, 2], true, None, &[1, 0, 2]),
            case(g, "AS", &none, t, &[2, 0, 1], true, None, &[2, 0, 1]),
            case(g, "", &none, t, &[0, 1, 2], true, None, &[0, 1, 2]),
            // Fresh records: nothing to probe; records aged the probe
            // interval: probed again.
            case(g, "AS", &all_up, t + 1, &[2, 0, 1], true, None, &[]),
            case(
                g,
                "AS",
                &all_up,
                t + interval,
                &[2, 0, 1],
                true,
                None,
                &[2, 0, 1],
            ),
            // ap down: Asian clients go to eu, then us; ap is not tried.
            case(g, "AS", &ap_down, t, &[0, 1], true, None, &[]),
            // ap degraded (disk pressure, a failing upstream): still tried,
            // after the healthy ones; a stale degraded flag counts for
            // nothing; a regional hostname stays pinned.
            case(g, "AS", &ap_degraded, t, &[0, 1, 2], true, None, &[]),
            case(g, "EU", &ap_degraded, t, &[0, 1, 2], true, None, &[]),
            case(g, "AS", &ap_degraded_stale, t, &[2, 0, 1], true, None, &[2]),
            case(
                "ap.wharf.example.com",
                "AS",
                &ap_degraded,
                t,
                &[2],
                false,
                None,
                &[],
            ),
            // Everything down: the nearest alone (fail open).
            case(g, "AS", &all_down, t, &[2], true, None, &[]),
            // A record older than stale_after is ignored (fail open).
            case(g, "AS", &ap_stale, t, &[2, 0, 1], true, None, &[2]),
            // Pinned: that region only, no failover, whatever the location.
            case(
                "ap.wharf.example.com",
                "EU",
                &none,
                t,
                &[2],
                false,
                None,
                &[2],
            ),
            case(
                "us.wharf.example.com",
                "AS",
                &ap_down,
                t,
                &[1],
                false,
                None,
                &[],
            ),
            // Pinned and down: refused; stale data: served (fail open).
            case(
                "ap.wharf.example.com",
                "AS",
                &ap_down,
                t,
                &[2],
                false,
                Some(2),
                &[],
            ),
            case(
                "ap.wharf.example.com",
                "AS",
                &ap_stale,
                t,
                &[2],
                false,
                None,
                &[2],
            ),
            // Fewer records than regions: the missing ones count as none.
            case(g, "AS", &eu_only, t, &[2, 0, 1], true, None, &[2, 1]),
        ];
        for (n, c) in cases.iter().enumerate() {
            let at = Location::parse(c.at).unwrap();
            let got = plan(&PlanInput {
                regions: &r,
                global_host: g,
                host: c.host,
                at: &at,
                health: c.health,
                policy: &p,
                probe_interval_ms: interval,
                now_ms: c.now,
            });
            let want = Plan {
                regions: c.regions.clone(),
                failover: c.failover,
                refuse: c.refuse,
                probe: c.probe.clone(),
            };
            assert_eq!(got, want, "case {n}: {} from {:?}", c.host, c.at);
        }
    }

    #[test]
    fn attempts_walk_each_regions_replicas_owner_first() {
        let r = regions();
        let replicas: Vec<Vec<String>> = r.iter().map(RegionSpec::origins).collect();
        let p = Plan {
            regions: vec![1, 0],
            failover: true,
            refuse: None,
            probe: vec![],
        };
        let key = "sha256:aaaa";
        let got = p.attempts(key, |i| replicas[i].as_slice());
        let us = rendezvous(key, &replicas[1]);
        assert_eq!(
            got,
            vec![
                Attempt {
                    region: 1,
                    replica: us[0],
                    last_in_region: false
                },
                Attempt {
                    region: 1,
                    replica: us[1],
                    last_in_region: true
                },
                Attempt {
                    region: 0,
                    replica: 0,
                    last_in_region: true
                },
            ]
        );
        assert_eq!(
            got,
            p.attempts(key, |i| replicas[i].as_slice()),
            "deterministic"
        );
        let empty: Vec<String> = Vec::new();
        assert!(p.attempts(key, |_| empty.as_slice()).is_empty());
    }

    #[test]
    fn rendezvous_is_stable_and_moves_only_the_removed_owner() {
        let nodes = ["http://a", "http://b", "http://c"];
        let mut owned = [0usize; 3];
        for k in 0..3000 {
            let key = format!("sha256:{k:064x}");
            let order = rendezvous(&key, &nodes);
            assert_eq!(order.len(), 3);
            assert_eq!(order, rendezvous(&key, &nodes), "deterministic");
            owned[order[0]] += 1;
            // Remove the owner: the key goes to its second choice, and keys
            // owned by the others do not move.
            let rest: Vec<&str> = order[1..].iter().map(|&i| nodes[i]).collect();
            let rest_sorted: Vec<&str> = nodes
                .iter()
                .copied()
                .filter(|n| *n != nodes[order[0]])
                .collect();
            assert_eq!(rest_sorted[rendezvous(&key, &rest_sorted)[0]], rest[0]);
        }
        for n in owned {
            assert!((800..1200).contains(&n), "balanced: {owned:?}");
        }
        assert!(rendezvous::<&str>("k", &[]).is_empty());
    }
}
