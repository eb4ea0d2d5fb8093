//! The origin's one typed configuration, from a TOML file, the environment
//! and flags (in increasing precedence), validated before anything starts.
//!
//! Every validation error names the setting and what would be accepted, so an
//! operator can fix the file without reading the source.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use wharf_core::token::SigningKey;
use wharf_core::{CacheRules, FreshnessPolicy, RuleSpec};

use crate::store::S3Settings;
use crate::store::embedded::EmbeddedSettings;
use crate::upstream::{Credentials, Timeouts};

/// Command-line flags. Each also reads an environment variable.
#[derive(Parser, Debug, Default)]
#[command(
    name = "wharf-origin",
    version,
    about = "Wharf's regional origin: a pull-through registry cache"
)]
pub struct Cli {
    /// TOML configuration file (flags and environment override it).
    #[arg(long, env = "WHARF_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve the registry API, metrics and health on.
    #[arg(long, env = "WHARF_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Keep objects in an S3 server embedded in this process, under DIR.
    #[arg(long, env = "WHARF_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Use an external S3-compatible store at URL instead of --data.
    #[arg(long, env = "WHARF_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Bucket in the object store.
    #[arg(long, env = "WHARF_BUCKET")]
    pub bucket: Option<String>,
    /// Signing region of the external store.
    #[arg(long, env = "AWS_REGION")]
    pub s3_region: Option<String>,
    /// Pull repositories under PREFIX/ through from the registry at URL
    /// (repeatable), e.g. `docker.io=https://registry-1.docker.io`.
    #[arg(long = "rule", value_name = "PREFIX=URL")]
    pub rules: Vec<String>,
    /// How long a tag is served without asking the upstream (e.g. 5m, 30s).
    #[arg(long, env = "WHARF_TAG_TTL", value_parser = humantime::parse_duration)]
    pub tag_ttl: Option<Duration>,
    /// How long past its TTL a tag may be served when the upstream fails.
    #[arg(long, env = "WHARF_STALE_IF_ERROR", value_parser = humantime::parse_duration)]
    pub stale_if_error: Option<Duration>,
    /// Directory for in-flight downloads (default: DATA/spool or the temp dir).
    #[arg(long, env = "WHARF_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
}

/// The configuration file's shape. Every field is optional: flags may supply it.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<SocketAddr>,
    data: Option<PathBuf>,
    spool_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    tag_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    stale_if_error: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    tags_list_ttl: Option<Duration>,
    part_size_mib: Option<u64>,
    s3: Option<FileS3>,
    embedded: Option<FileEmbedded>,
    upstream: Option<FileTimeouts>,
    auth: Option<FileAuth>,
    #[serde(default)]
    rule: Vec<FileRule>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    token_key: Option<String>,
    service: Option<String>,
    realm: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileS3 {
    endpoint: Option<String>,
    bucket: Option<String>,
    region: Option<String>,
    access_key: Option<String>,
    secret_key: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileEmbedded {
    listen: Option<SocketAddr>,
    bucket: Option<String>,
    access_key: Option<String>,
    secret_key: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileTimeouts {
    #[serde(default, with = "humantime_serde")]
    connect: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    response: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    idle_read: Option<Duration>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileRule {
    prefix: String,
    upstream: String,
    username: Option<String>,
    password: Option<String>,
    password_env: Option<String>,
    #[serde(default, with = "humantime_serde")]
    tag_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    stale_if_error: Option<Duration>,
    #[serde(default)]
    private: bool,
}

/// Where objects are kept.
#[derive(Clone, Debug)]
pub enum Storage {
    /// The S3 server embedded in this process.
    Embedded(EmbeddedSettings),
    /// An external S3-compatible store.
    S3(S3Settings),
}

/// One cache rule, resolved.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Downstream repository prefix, e.g. `docker.io`.
    pub prefix: String,
    /// Upstream registry base URL.
    pub upstream: String,
    /// Credential set for the upstream.
    pub credentials: Option<Credentials>,
    /// Tag freshness for this rule.
    pub freshness: FreshnessPolicy,
    /// Whether pulls need a token bound to this rule (signed-in users).
    pub private: bool,
}

/// How requests are authenticated when the origin sits behind the edge.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// The key the edge signs tokens and tickets with.
    pub key: SigningKey,
    /// The global hostname (tokens' audience).
    pub service: String,
    /// The edge's token endpoint, for challenges.
    pub realm: String,
}

/// The validated configuration of one origin process.
#[derive(Clone, Debug)]
pub struct Config {
    /// Registry API / metrics / health address.
    pub listen: SocketAddr,
    /// Object store.
    pub storage: Storage,
    /// Directory for in-flight blob downloads.
    pub spool_dir: PathBuf,
    /// Cache rules, in configuration order.
    pub rules: Vec<Rule>,
    /// Timeouts toward upstreams.
    pub upstream_timeouts: Timeouts,
    /// How long shutdown waits for in-flight hydrations before aborting them.
    pub shutdown_grace: Duration,
    /// How long a `tags/list` answer is reused.
    pub tags_list_ttl: Duration,
    /// Token checking; `None` leaves the origin open.
    pub auth: Option<AuthConfig>,
}

const DEFAULT_BUCKET: &str = "wharf";
const DEFAULT_PART_SIZE_MIB: u64 = 16;

impl Config {
    /// Reads the file named by `--config` (if any), applies the environment
    /// and flags, and validates the result.
    pub fn load(cli: Cli) -> anyhow::Result<Config> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => File::default(),
        };
        Self::from_parts(cli, file, |name| std::env::var(name).ok())
    }

    fn from_parts(
        cli: Cli,
        file: File,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Config> {
        let defaults = FreshnessPolicy::default();
        let tag_ttl = cli.tag_ttl.or(file.tag_ttl).unwrap_or(defaults.ttl);
        let stale_if_error = cli
            .stale_if_error
            .or(file.stale_if_error)
            .unwrap_or(defaults.stale_if_error);
        let listen = cli.listen.or(file.listen).ok_or_else(|| {
            anyhow::anyhow!(
                "no listen address: pass --listen 127.0.0.1:5000 or set `listen` in the config file"
            )
        })?;

        let part_size_mib = file.part_size_mib.unwrap_or(DEFAULT_PART_SIZE_MIB);
        if !(5..=1024).contains(&part_size_mib) {
            anyhow::bail!(
                "part_size_mib = {part_size_mib}: S3 multipart parts must be 5 to 1024 MiB"
            );
        }
        let part_size = part_size_mib << 20;

        let data = cli.data.or(file.data);
        let file_s3 = file.s3.unwrap_or_default();
        let s3_endpoint = cli.s3_endpoint.or(file_s3.endpoint);
        let storage = match (&data, s3_endpoint) {
            (Some(_), Some(endpoint)) => anyhow::bail!(
                "both --data and --s3-endpoint ({endpoint}) are set: choose the embedded store (--data DIR) or an external one (--s3-endpoint URL --bucket NAME)"
            ),
            (None, None) => anyhow::bail!(
                "no object store: pass --data DIR for the embedded store, or --s3-endpoint URL --bucket NAME for an external one"
            ),
            (Some(dir), None) => {
                let embedded = file.embedded.unwrap_or_default();
                Storage::Embedded(EmbeddedSettings {
                    data: dir.clone(),
                    listen: embedded
                        .listen
                        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
                    access_key: embedded.access_key,
                    secret_key: embedded.secret_key,
                    bucket: cli
                        .bucket
                        .clone()
                        .or(embedded.bucket)
                        .unwrap_or_else(|| DEFAULT_BUCKET.to_owned()),
                    part_size,
                })
            }
            (None, Some(endpoint)) => {
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    anyhow::bail!("--s3-endpoint {endpoint:?} must be an http:// or https:// URL");
                }
                let bucket = cli.bucket.clone().or(file_s3.bucket).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--s3-endpoint is set but no bucket: pass --bucket NAME or set s3.bucket"
                    )
                })?;
                if bucket.len() < 3 || bucket.len() > 63 {
                    anyhow::bail!("bucket {bucket:?} must be 3 to 63 characters long");
                }
                let access_key = env("AWS_ACCESS_KEY_ID").or(file_s3.access_key).ok_or_else(|| {
                    anyhow::anyhow!("external store needs credentials: set AWS_ACCESS_KEY_ID (or s3.access_key)")
                })?;
                let secret_key = env("AWS_SECRET_ACCESS_KEY").or(file_s3.secret_key).ok_or_else(|| {
                    anyhow::anyhow!("external store needs credentials: set AWS_SECRET_ACCESS_KEY (or s3.secret_key)")
                })?;
                let region = cli
                    .s3_region
                    .or(file_s3.region)
                    .unwrap_or_else(|| "us-east-1".to_owned());
                Storage::S3(S3Settings {
                    endpoint,
                    bucket,
                    region,
                    access_key,
                    secret_key,
                    part_size,
                })
            }
        };

        let spool_dir = cli
            .spool_dir
            .or(file.spool_dir)
            .or_else(|| data.as_ref().map(|d| d.join("spool")))
            .unwrap_or_else(|| std::env::temp_dir().join("wharf-spool"));

        let mut rules = Vec::new();
        for (i, r) in file.rule.into_iter().enumerate() {
            let password = match (r.password, r.password_env) {
                (Some(_), Some(var)) => anyhow::bail!(
                    "rule {} ({}): set either password or password_env ({var}), not both",
                    i + 1,
                    r.prefix
                ),
                (Some(p), None) => Some(p),
                (None, Some(var)) => Some(env(&var).ok_or_else(|| {
                    anyhow::anyhow!(
                        "rule {} ({}): password_env names {var}, which is not set",
                        i + 1,
                        r.prefix
                    )
                })?),
                (None, None) => None,
            };
            let credentials = match (r.username, password) {
                (Some(username), Some(password)) => Some(Credentials { username, password }),
                (None, None) => None,
                _ => anyhow::bail!(
                    "rule {} ({}): a credential set needs both username and password (or password_env)",
                    i + 1,
                    r.prefix
                ),
            };
            rules.push(Rule {
                prefix: r.prefix,
                upstream: r.upstream,
                credentials,
                freshness: FreshnessPolicy {
                    ttl: r.tag_ttl.unwrap_or(tag_ttl),
                    stale_if_error: r.stale_if_error.unwrap_or(stale_if_error),
                },
                private: r.private,
            });
        }
        for flag in &cli.rules {
            let (prefix, upstream) = flag.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("--rule {flag:?}: expected PREFIX=URL, e.g. docker.io=https://registry-1.docker.io")
            })?;
            let rule = Rule {
                prefix: prefix.trim_matches('/').to_owned(),
                upstream: upstream.to_owned(),
                credentials: None,
                freshness: FreshnessPolicy {
                    ttl: tag_ttl,
                    stale_if_error,
                },
                private: false,
            };
            // A flag overrides the file's rule with the same prefix, keeping
            // that rule's credentials.
            match rules.iter_mut().find(|r| r.prefix == rule.prefix) {
                Some(existing) => {
                    existing.upstream = rule.upstream;
                }
                None => rules.push(rule),
            }
        }
        if rules.is_empty() {
            anyhow::bail!(
                "no cache rules: pass --rule PREFIX=URL (e.g. --rule docker.io=https://registry-1.docker.io) or add [[rule]] tables to the config file"
            );
        }
        // The core validates prefixes and URLs with precise messages.
        CacheRules::new(
            rules
                .iter()
                .map(|r| RuleSpec {
                    prefix: r.prefix.clone(),
                    upstream: r.upstream.clone(),
                })
                .collect(),
        )
        .map_err(|e| anyhow::anyhow!("invalid cache rule: {e}"))?;

        let file_auth = file.auth.unwrap_or_default();
        let auth = match env("WHARF_TOKEN_KEY").or(file_auth.token_key) {
            None => {
                if rules.iter().any(|r| r.private) {
                    anyhow::bail!(
                        "a rule is marked private but no token key is set: set WHARF_TOKEN_KEY (or auth.token_key) to the edge's key"
                    );
                }
                None
            }
            Some(key) => {
                let key = SigningKey::new(key.into_bytes())
                    .map_err(|e| anyhow::anyhow!("auth.token_key: {e}"))?;
                let service = file_auth.service.ok_or_else(|| {
                    anyhow::anyhow!("a token key is set but auth.service is not: set it to the global hostname tokens are issued for")
                })?;
                let realm = file_auth
                    .realm
                    .unwrap_or_else(|| format!("https://{service}/token"));
                Some(AuthConfig {
                    key,
                    service,
                    realm,
                })
            }
        };
        let timeouts = file.upstream.unwrap_or_default();
        Ok(Config {
            listen,
            storage,
            spool_dir,
            rules,
            upstream_timeouts: Timeouts {
                connect: timeouts.connect.unwrap_or(Duration::from_secs(10)),
                response: timeouts.response.unwrap_or(Duration::from_secs(30)),
                idle_read: timeouts.idle_read.unwrap_or(Duration::from_secs(60)),
            },
            shutdown_grace: file.shutdown_grace.unwrap_or(Duration::from_secs(30)),
            tags_list_ttl: file.tags_list_ttl.unwrap_or(Duration::from_secs(30)),
            auth,
        })
    }

    /// The cache rules in the core's form.
    pub fn cache_rules(&self) -> CacheRules {
        CacheRules::new(
            self.rules
                .iter()
                .map(|r| RuleSpec {
                    prefix: r.prefix.clone(),
                    upstream: r.upstream.clone(),
                })
                .collect(),
        )
        .expect("rules were validated in Config::load")
    }
}

fn read_file(path: &Path) -> anyhow::Result<File> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["wharf-origin"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    }

    fn load(args: &[&str], file: &str) -> anyhow::Result<Config> {
        let file: File = toml::from_str(file)?;
        Config::from_parts(cli(args), file, |name| {
            (name == "PW").then(|| "from-env".to_owned())
        })
    }

    #[test]
    fn flags_alone_make_a_config() {
        let c = load(
            &[
                "--listen",
                "127.0.0.1:5000",
                "--data",
                "/tmp/w",
                "--rule",
                "docker.io=http://127.0.0.1:5001",
            ],
            "",
        )
        .unwrap();
        assert_eq!(c.rules.len(), 1);
        assert_eq!(c.rules[0].freshness.ttl, Duration::from_secs(300));
        assert!(matches!(c.storage, Storage::Embedded(_)));
        assert_eq!(c.spool_dir, PathBuf::from("/tmp/w/spool"));
    }

    #[test]
    fn file_rules_take_credentials_from_the_environment() {
        let c = load(
            &["--listen", "127.0.0.1:5000", "--data", "/tmp/w", "--tag-ttl", "2s"],
            "[[rule]]\nprefix = \"private\"\nupstream = \"http://127.0.0.1:1\"\nusername = \"u\"\npassword_env = \"PW\"\n",
        )
        .unwrap();
        let creds = c.rules[0].credentials.as_ref().unwrap();
        assert_eq!(creds.password, "from-env");
        assert_eq!(c.rules[0].freshness.ttl, Duration::from_secs(2));
    }

    #[test]
    fn invalid_configs_say_what_to_fix() {
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &["--data", "/d", "--rule", "docker.io=http://x"],
                "",
                "no listen address",
            ),
            (
                &["--listen", "127.0.0.1:1", "--rule", "docker.io=http://x"],
                "",
                "no object store",
            ),
            (
                &["--listen", "127.0.0.1:1", "--data", "/d"],
                "",
                "no cache rules",
            ),
            (
                &[
                    "--listen",
                    "127.0.0.1:1",
                    "--data",
                    "/d",
                    "--rule",
                    "docker.io",
                ],
                "",
                "expected PREFIX=URL",
            ),
            (
                &[
                    "--listen",
                    "127.0.0.1:1",
                    "--data",
                    "/d",
                    "--s3-endpoint",
                    "http://s3",
                    "--rule",
                    "a=http://x",
                ],
                "",
                "both --data and --s3-endpoint",
            ),
            (
                &[
                    "--listen",
                    "127.0.0.1:1",
                    "--data",
                    "/d",
                    "--rule",
                    "a=ftp://x",
                ],
                "",
                "invalid cache rule",
            ),
            (
                &["--listen", "127.0.0.1:1", "--data", "/d"],
                "[[rule]]\nprefix = \"p\"\nupstream = \"http://x\"\nusername = \"u\"\n",
                "needs both username and password",
            ),
            (
                &["--listen", "127.0.0.1:1", "--data", "/d"],
                "[[rule]]\nprefix = \"p\"\nupstream = \"http://x\"\nusername = \"u\"\npassword_env = \"NOPE\"\n",
                "NOPE, which is not set",
            ),
        ];
        for (args, file, want) in cases {
            let err = load(args, file).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{args:?}: {err:?} should contain {want:?}"
            );
        }
    }

    #[test]
    fn the_infra_example_config_is_valid() {
        let file: File = toml::from_str(include_str!("../../infra/origin.example.toml")).unwrap();
        let env = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" | "DOCKERHUB_TOKEN" => {
                Some("x".to_owned())
            }
            "WHARF_TOKEN_KEY" => Some("k".repeat(32)),
            _ => None,
        };
        let c = Config::from_parts(cli(&[]), file, env).unwrap();
        assert_eq!(c.rules.len(), 3);
        assert!(matches!(c.storage, Storage::S3(_)));
        assert_eq!(c.auth.unwrap().realm, "https://wharf.example.com/token");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        assert!(toml::from_str::<File>("lissten = \"127.0.0.1:1\"").is_err());
    }
}
