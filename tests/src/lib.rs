//! The end-to-end test harness: a real upstream registry, real clients and the
//! real `wharf-origin` binary, each started per test on loopback.
//!
//! # Layout
//!
//! * [`upstream`] — Distribution (`docker-registry serve`) on a free port,
//!   optionally behind an in-process Docker token server, always behind an
//!   in-process counting and fault-injecting HTTP proxy whose URL is what the
//!   origin is configured with.
//! * [`images`] — generated images (random gzip tar layers, configs with true
//!   `diff_ids`, Docker or OCI manifests, multi-arch indexes) pushed over the
//!   registry HTTP API straight to the registry (pushes are never counted).
//! * [`origin`] — spawns the `wharf-origin` binary with flags and an optional
//!   config file, waits for `/healthz` and `/readyz`, reads `/metrics`.
//! * [`clients`] — dockerd, containerd/`ctr`, podman, skopeo, each isolated in
//!   the test's directory, plus a verifying plain-HTTP puller for herd tests.
//! * [`process`] — child processes that die with the test, however it ends.
//! * [`probes`] — access-control probes that report every leak at once.
//! * [`hostile`] — a hostile upstream (redirects to loopback, huge bodies,
//!   absurd numbers), optionally inside a network namespace of its own.
//! * [`Stack`] — upstream + origin with one rule, the common case.
//!
//! # Decisions
//!
//! * Nothing is mocked: every registry, daemon and client is the real program a
//!   user would run, and a missing one fails the test with an install hint.
//! * Every test gets its own directory under `$TMPDIR/wharf-tests/`, removed on
//!   success and kept (path printed) on failure, and its own ports, taken from
//!   `127.0.0.1:0`; nothing is shared between tests, so they run in parallel.
//! * All traffic stays on 127.0.0.1: clients get `HTTP(S)_PROXY` pointed at a
//!   closed loopback port so that a fallback to Docker Hub can never leave the
//!   machine.

pub mod cdn;
pub mod clients;
pub mod edge;
pub mod garage;
pub mod geo;
pub mod guides;
pub mod hostile;
pub mod images;
pub mod origin;
pub mod probes;
pub mod process;
pub mod tokens;
pub mod upstream;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use clients::{PulledImage, pull_with_reqwest};
pub use images::{Format, ImageSpec, PushedImage, PushedIndex};
pub use origin::{Origin, OriginOpts, SharedBucket};
pub use upstream::{Counts, Fault, Kind, Upstream, UpstreamAuth};

/// The rule prefix [`Stack`] configures: `<origin>/up/<repo>` pulls `<repo>`
/// from the stack's upstream.
pub const RULE_PREFIX: &str = "up";

/// In [`OriginOpts`] given to [`Stack::start_with`], this text (in a rule's
/// URL or in `config_toml`) is replaced by the stack's upstream URL.
pub const UPSTREAM_URL: &str = "{upstream}";

/// A per-test directory: removed when the test passes, kept and printed when
/// it fails (or always with `WHARF_KEEP_TEST_DIRS=1`) so that logs and data
/// can be inspected.
pub struct TestDir {
    path: PathBuf,
    name: String,
}

impl TestDir {
    /// Creates `$TMPDIR/wharf-tests/<name>-<random>`.
    pub fn new(name: &str) -> Result<TestDir> {
        let base = std::env::temp_dir().join("wharf-tests");
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        let path = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(&base)?
            .keep();
        Ok(TestDir {
            path,
            name: name.to_owned(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A subdirectory, created if missing.
    pub fn sub(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).expect("creating a test subdirectory");
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("WHARF_KEEP_TEST_DIRS").is_some() {
            eprintln!("[{}] keeping {}", self.name, self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for a child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// Polls `check` every 100 ms until it returns `Ok(true)` or `timeout` passes.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            match last_err {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every file under `dir`, recursively (none if it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The object files of blob `hex` in the embedded store under an origin's
/// data directory (`blobs/sha256/<hex>`; not its repository link records).
pub fn blob_objects(data: &Path, hex: &str) -> usize {
    files_under(&data.join("s3"))
        .iter()
        .filter(|p| {
            let p = p.to_string_lossy();
            p.contains("/objects/blobs/sha256/") && p.contains(hex)
        })
        .count()
}

/// The multipart-upload files in the embedded store under an origin's data
/// directory.
pub fn upload_files(data: &Path) -> Vec<PathBuf> {
    files_under(&data.join("s3"))
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "uploads"))
        .collect()
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Checks that an external program is installed, failing with an install hint
/// otherwise (a missing tool must never make a test pass silently).
pub fn require_tool(program: &str, apt_package: &str) -> Result<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    for dir in candidates {
        let p = dir.join(program);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("`{program}` is not installed: run `apt-get install {apt_package}` (as root)")
}

/// A plain reqwest client for talking to loopback services: no proxy (the
/// environment's proxy settings must not apply to 127.0.0.1), no redirects
/// followed silently beyond the default, generous timeouts.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(300))
        .build()
        .expect("building a reqwest client")
}

/// Like [`http_client`], but redirects are returned, not followed (to check
/// where the edge and the origins send clients).
pub fn no_redirect_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("building a reqwest client")
}

/// The usual test stack: one upstream registry (behind the counting proxy) and
/// one origin with the rule `up=<upstream proxy URL>`.
///
/// Fields drop in declaration order: the origin stops before the upstream,
/// and the directory (kept on failure) goes last.
pub struct Stack {
    /// The origin under test.
    pub origin: Origin,
    /// The upstream registry.
    pub upstream: Upstream,
    /// The test's directory.
    pub dir: TestDir,
}

impl Stack {
    /// An anonymous upstream and an origin with the default rule.
    pub async fn start(name: &str) -> Result<Stack> {
        Stack::start_with(name, UpstreamAuth::Anonymous, OriginOpts::default()).await
    }

    /// Like [`Stack::start`], with the given upstream auth and origin options;
    /// the rule `up=<upstream>` is added in front of `opts.rules`, and
    /// [`UPSTREAM_URL`] in `opts` is replaced by the upstream's URL.
    pub async fn start_with(name: &str, auth: UpstreamAuth, mut opts: OriginOpts) -> Result<Stack> {
        let dir = TestDir::new(name)?;
        let upstream = Upstream::start(&dir, auth).await?;
        let url = upstream.url();
        for (_, u) in &mut opts.rules {
            *u = u.replace(UPSTREAM_URL, &url);
        }
        if let Some(toml) = &mut opts.config_toml {
            *toml = toml.replace(UPSTREAM_URL, &url);
        }
        opts.rules.insert(0, (RULE_PREFIX.to_owned(), url));
        let origin = Origin::start(&dir, opts).await?;
        Ok(Stack {
            origin,
            upstream,
            dir,
        })
    }

    /// The origin's `host:port`, as clients spell registry hosts.
    pub fn origin_host(&self) -> String {
        self.origin.host()
    }

    /// `<origin host>/up/<repo>:<tag>`, a reference clients can pull.
    pub fn origin_ref(&self, repo: &str, tag: &str) -> String {
        format!("{}/{RULE_PREFIX}/{repo}:{tag}", self.origin.host())
    }

    /// The origin's base URL, `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        self.origin.url()
    }

    /// `up/<repo>`: the repository name at the origin for an upstream repo.
    pub fn repo(&self, repo: &str) -> String {
        format!("{RULE_PREFIX}/{repo}")
    }

    /// Pulls `repo:reference` from the origin with [`pull_with_reqwest`].
    pub async fn pull(&self, repo: &str, reference: &str) -> Result<PulledImage> {
        pull_with_reqwest(&self.base(), &self.repo(repo), reference).await
    }
}
