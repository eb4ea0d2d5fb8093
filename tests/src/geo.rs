//! Three regions on loopback: the production shape of issue 5 in one test.
//!
//! * `eu` (Frankfurt, continent EU) with **two origin replicas**, `us`
//!   (Virginia, NA) and `ap` (Singapore, AS) with one each;
//! * every region's bucket on one **3-node, 3-zone Garage cluster**
//!   (`infra/garage/cluster.sh`), each region talking to its own zone's node;
//! * the **edge** under `wrangler dev` with the same region list, the
//!   test-only location header, and fast health thresholds;
//! * one Distribution upstream behind the counting proxy.
//!
//! The region list is written once ([`GeoStack::regions_json`]) and given to
//! every origin (`[[regions]]`) and to the edge (`WHARF_REGIONS`), as in
//! production (`infra/regions.toml`).
//!
//! Fields drop in declaration order: edge, origins, Garage, upstream, directory.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use crate::edge::{Edge, EdgeOpts, EdgeRegion, EdgeRule, GLOBAL_HOST, TOKEN_KEY};
use crate::garage::Garage;
use crate::{Origin, OriginOpts, RULE_PREFIX, TestDir, Upstream, UpstreamAuth, free_port};

/// The test-only header that tells the edge where the client is.
pub const LOCATION_HEADER: &str = "X-Wharf-Test-Location";

/// One region of the stack.
pub struct GeoRegion {
    /// `eu`, `us`, `ap`.
    pub name: &'static str,
    /// The continent its clients are on.
    pub continent: &'static str,
    /// Its origin replicas.
    pub replicas: Vec<Origin>,
    /// Its bucket on the Garage cluster.
    pub bucket: String,
    /// The S3 endpoint its origins use (its zone's Garage node).
    pub s3_endpoint: String,
}

impl GeoRegion {
    /// Sum of a metric over the region's replicas (replicas that are down count 0).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut sum = 0.0;
        for r in &self.replicas {
            sum += r.metric(name, labels).await.unwrap_or(0.0);
        }
        sum
    }
}

/// Options of a [`GeoStack`].
#[derive(Clone, Debug, Default)]
pub struct GeoOpts {
    /// Start the edge (tests of the origins alone skip it).
    pub edge: bool,
    /// `replicate = true` on the rule.
    pub replicate: bool,
    /// A region whose origins report themselves degraded (a free-space
    /// floor no disk meets: `[limits] min_free_mib`).
    pub degraded: Option<&'static str>,
    /// Appended to every origin's configuration file (e.g. `[admin]`).
    pub origin_toml: String,
}

/// The running three-region stack.
pub struct GeoStack {
    /// The edge, when started.
    pub edge: Option<Edge>,
    /// `eu`, `us`, `ap`, in list order.
    pub regions: Vec<GeoRegion>,
    /// The object store.
    pub garage: Garage,
    /// The upstream registry.
    pub upstream: Upstream,
    /// The region list, as JSON (the origins' `[[regions]]`, the edge's `WHARF_REGIONS`).
    pub regions_json: serde_json::Value,
    /// The test directory.
    pub dir: TestDir,
}

/// Static description of the three regions: name, continent, lat, lon, replicas.
const REGIONS: [(&str, &str, f64, f64, usize); 3] = [
    ("eu", "EU", 50.1, 8.7, 2),
    ("us", "NA", 39.0, -77.5, 1),
    ("ap", "AS", 1.35, 103.8, 1),
];

impl GeoStack {
    /// Starts Garage, the upstream, four origins and (optionally) the edge.
    pub async fn start(name: &str, opts: GeoOpts) -> Result<GeoStack> {
        let dir = TestDir::new(name)?;
        let upstream = Upstream::start(&dir, UpstreamAuth::Anonymous).await?;
        let buckets: Vec<String> = REGIONS.iter().map(|r| format!("wharf-{}", r.0)).collect();
        let bucket_refs: Vec<&str> = buckets.iter().map(String::as_str).collect();
        let garage = Garage::start(&dir, &bucket_refs)
            .await
            .context("starting the Garage cluster")?;

        // Ports first: every origin's config lists every replica.
        let ports: Vec<Vec<u16>> = REGIONS
            .iter()
            .map(|r| (0..r.4).map(|_| free_port()).collect())
            .collect();
        let mut list = Vec::new();
        for (i, (name, continent, lat, lon, _)) in REGIONS.iter().enumerate() {
            let origins: Vec<String> = ports[i]
                .iter()
                .map(|p| format!("http://127.0.0.1:{p}"))
                .collect();
            let endpoint = garage.s3_endpoint(i);
            list.push(json!({
                "name": name,
                "origins": origins,
                "s3_endpoint": endpoint,
                // `localhost` in presigned URLs: Go clients then drop the
                // edge's Authorization header on the redirect, as between
                // real hostnames.
                "public_s3_endpoint": endpoint.replace("127.0.0.1", "localhost"),
                "bucket": buckets[i],
                "s3_region": "garage",
                "continents": [continent],
                "lat": lat,
                "lon": lon,
            }));
        }
        let regions_json = serde_json::Value::Array(list.clone());
        let regions_toml = regions_toml(&list);

        let mut regions = Vec::new();
        for (i, (name, continent, ..)) in REGIONS.iter().enumerate() {
            let mut replicas = Vec::new();
            for (j, port) in ports[i].iter().enumerate() {
                let advertise = format!("http://127.0.0.1:{port}");
                let config = format!(
                    "region = \"{name}\"\nadvertise = \"{advertise}\"\n\
                     [s3]\nendpoint = \"{endpoint}\"\nbucket = \"{bucket}\"\nregion = \"garage\"\n\
                     [auth]\ntoken_key = \"{TOKEN_KEY}\"\nservice = \"{GLOBAL_HOST}\"\n\
                     [[rule]]\nprefix = \"{RULE_PREFIX}\"\nupstream = \"{up}\"\nreplicate = {replicate}\n\
                     {regions_toml}{limits}\n{extra}",
                    extra = opts.origin_toml,
                    limits = if opts.degraded == Some(*name) {
                        "\n[limits]\nmin_free_mib = 1000000000000\n"
                    } else {
                        ""
                    },
                    endpoint = garage.s3_endpoint(i),
                    bucket = buckets[i],
                    up = upstream.url(),
                    replicate = opts.replicate,
                );
                let origin = Origin::start(
                    &dir,
                    OriginOpts {
                        name: Some(format!("{name}-{}", j + 1)),
                        port: Some(*port),
                        config_toml: Some(config),
                        env: garage.env(),
                        external_store: true,
                        ..OriginOpts::default()
                    },
                )
                .await
                .with_context(|| format!("starting origin {name}-{}", j + 1))?;
                replicas.push(origin);
            }
            regions.push(GeoRegion {
                name,
                continent,
                replicas,
                bucket: buckets[i].clone(),
                s3_endpoint: garage.s3_endpoint(i),
            });
        }

        let edge = if opts.edge {
            let edge_regions = list
                .iter()
                .zip(REGIONS.iter())
                .map(|(r, (name, continent, lat, lon, _))| EdgeRegion {
                    name: (*name).into(),
                    origins: r["origins"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|o| o.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                    s3_endpoint: r["public_s3_endpoint"].as_str().map(str::to_owned),
                    continents: vec![(*continent).into()],
                    lat: Some(*lat),
                    lon: Some(*lon),
                    bucket: r["bucket"].as_str().map(str::to_owned),
                    s3_region: Some("garage".into()),
                })
                .collect();
            // The edge presigns with the read-only key, as in production.
            let (ak, sk) = garage.read_only_credentials();
            Some(
                Edge::start(
                    &dir,
                    &EdgeOpts {
                        regions: edge_regions,
                        rules: vec![EdgeRule {
                            prefix: RULE_PREFIX.into(),
                            upstream: upstream.url(),
                            private: false,
                            deny: Vec::new(),
                        }],
                        tag_ttl: Duration::from_secs(300),
                        stale_if_error: Duration::from_secs(3600),
                        test_location_header: true,
                        health: Some((2, 2, 1)),
                        extra_vars: vec![
                            ("WHARF_S3_ACCESS_KEY".into(), ak),
                            ("WHARF_S3_SECRET_KEY".into(), sk),
                            // Room for a loaded CI machine: a slow `/readyz`
                            // (Garage under every test at once) twice in a
                            // row once failed a geography over. A stopped
                            // origin refuses at once, so failover tests
                            // detect it no later.
                            ("WHARF_HEALTH_PROBE_TIMEOUT".into(), "3s".into()),
                        ],
                    },
                )
                .await?,
            )
        } else {
            None
        };
        Ok(GeoStack {
            edge,
            regions,
            garage,
            upstream,
            regions_json,
            dir,
        })
    }

    /// Writes the region list as `infra/regions.toml` has it (for
    /// `wharf --regions`); returns its path.
    pub fn regions_file(&self) -> Result<std::path::PathBuf> {
        let list = self.regions_json.as_array().cloned().unwrap_or_default();
        let path = self.dir.path().join("regions.toml");
        std::fs::write(&path, regions_toml(&list))?;
        Ok(path)
    }

    /// The region named `name`.
    pub fn region(&self, name: &str) -> &GeoRegion {
        self.regions
            .iter()
            .find(|r| r.name == name)
            .expect("a region of the stack")
    }

    /// The region named `name`, mutably (to stop and restart its origins).
    pub fn region_mut(&mut self, name: &str) -> &mut GeoRegion {
        self.regions
            .iter_mut()
            .find(|r| r.name == name)
            .expect("a region of the stack")
    }

    /// The edge (panics if the stack was started without it).
    pub fn edge(&self) -> &Edge {
        self.edge
            .as_ref()
            .expect("the stack was started with the edge")
    }

    /// `up/<repo>`.
    pub fn repo(&self, repo: &str) -> String {
        format!("{RULE_PREFIX}/{repo}")
    }

    /// A pull token for `repo` (as the edge would issue it), for talking to
    /// the origins directly.
    pub fn token(&self, repo: &str) -> String {
        pull_token(repo)
    }
}

/// A pull token for `repo` signed with [`TOKEN_KEY`] (as the edge would
/// issue it), for talking to origins configured with that key directly.
pub fn pull_token(repo: &str) -> String {
    crate::tokens::pull_token(TOKEN_KEY, GLOBAL_HOST, &[repo], &[], 600)
}

/// `[[regions]]` tables for the origins' TOML from the JSON region list.
fn regions_toml(list: &[serde_json::Value]) -> String {
    let mut out = String::new();
    for r in list {
        out.push_str("\n[[regions]]\n");
        if let Some(obj) = r.as_object() {
            for (k, v) in obj {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
    }
    out
}
