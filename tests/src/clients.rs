//! Real registry clients, each isolated in the test's directory.
//!
//! * [`Dockerd`] — its own dockerd (vfs storage, no bridge, no iptables, its
//!   own data root, exec root, pid file, socket and `daemon.json`), which in
//!   turn starts its own containerd. Loopback registries are plain-HTTP for
//!   dockerd by default (127.0.0.0/8 is an implicit insecure registry).
//! * [`Containerd`] — its own containerd (root, state, socket, config with
//!   CRI disabled), driven with `ctr --plain-http`; images unpack into the
//!   `native` snapshotter (overlayfs may be unavailable in a sandbox).
//! * [`Podman`] — its own storage (`--root`/`--runroot`, vfs), its own
//!   `containers.conf`, `registries.conf` and `storage.conf`, file locks
//!   instead of the machine-wide SHM lock segment.
//! * [`Skopeo`] — copies to a `dir:` destination, which keeps manifests
//!   byte for byte (an `oci:` layout would convert Docker manifests to OCI and
//!   change their digests); the digest is the sha256 of `manifest.json`.
//! * [`pull_with_reqwest`] — a plain-HTTP puller that verifies every digest
//!   while streaming, for herds of concurrent clients.
//!
//! Every tool runs with `HTTP(S)_PROXY` set to a closed loopback port
//! ([`crate::process::sealed_env`]), so even a client's fallback to Docker
//! Hub stays on this machine. Socket paths go in a short directory under
//! `/tmp` because unix socket paths are limited to 108 bytes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};

use crate::images::{ALL_MANIFEST_TYPES, DOCKER_MANIFEST_LIST, OCI_INDEX};
use crate::process::{Daemon, run_tool};
use crate::{TestDir, require_tool, sha256_digest, wait_until};

const PULL_TIMEOUT: Duration = Duration::from_secs(300);

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

/// A short directory for unix sockets, removed on drop.
fn socket_dir(prefix: &str) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp")?)
}

/// The repository part of a reference (`host/a/b:tag` → `host/a/b`).
fn repo_of(reference: &str) -> &str {
    let no_digest = reference.split('@').next().unwrap_or(reference);
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

// ---------------------------------------------------------------------------
// dockerd

/// A private dockerd.
pub struct Dockerd {
    daemon: Daemon,
    data_root: PathBuf,
    sock: PathBuf,
    docker: PathBuf,
    client_config: PathBuf,
    _sockets: tempfile::TempDir,
}

impl Dockerd {
    /// Starts dockerd under `<test dir>/dockerd`, with
    /// `--registry-mirror <mirror>` when given, and waits for its API.
    pub async fn start(dir: &TestDir, mirror: Option<&str>) -> Result<Dockerd> {
        Dockerd::start_with(dir, "{}", mirror).await
    }

    /// Like [`Dockerd::start`], with `daemon_json` as `/etc/docker/daemon.json`.
    pub async fn start_with(
        dir: &TestDir,
        daemon_json: &str,
        mirror: Option<&str>,
    ) -> Result<Dockerd> {
        Dockerd::launch(dir, daemon_json, mirror, None).await
    }

    /// Like [`Dockerd::start_with`], with dockerd's registry traffic to
    /// hosts other than loopback sent through the HTTP proxy `proxy` (a
    /// test proxy that answers for made-up hostnames such as regional
    /// ones, so nothing leaves the machine).
    pub async fn start_behind_proxy(
        dir: &TestDir,
        daemon_json: &str,
        proxy: &str,
    ) -> Result<Dockerd> {
        Dockerd::launch(dir, daemon_json, None, Some(proxy)).await
    }

    async fn launch(
        dir: &TestDir,
        daemon_json: &str,
        mirror: Option<&str>,
        proxy: Option<&str>,
    ) -> Result<Dockerd> {
        let dockerd = require_tool("dockerd", "docker.io")?;
        let docker = require_tool("docker", "docker.io (or docker-cli)")?;
        require_tool("containerd", "containerd")?;
        let base = dir.sub("dockerd");
        let sockets = socket_dir("wd")?;
        let sock = sockets.path().join("docker.sock");
        let exec_root = sockets.path().join("exec");
        let config = base.join("daemon.json");
        std::fs::write(&config, daemon_json)?;
        let client_config = base.join("client");
        std::fs::create_dir_all(&client_config)?;
        let data_root = base.join("data");

        let mut cmd = Command::new(dockerd);
        cmd.args([
            "--storage-driver=vfs",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--userland-proxy=false",
            "--exec-opt=native.cgroupdriver=cgroupfs",
        ])
        .arg("--config-file")
        .arg(&config)
        .arg("--data-root")
        .arg(&data_root)
        .arg("--exec-root")
        .arg(&exec_root)
        .arg("--pidfile")
        .arg(base.join("dockerd.pid"))
        .arg("-H")
        .arg(format!("unix://{}", sock.display()));
        if let Some(m) = mirror {
            cmd.arg("--registry-mirror").arg(m);
        }
        for (k, v) in crate::process::sealed_env() {
            cmd.env(k, v);
        }
        if let Some(p) = proxy {
            for k in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"] {
                cmd.env(k, p);
            }
        }
        // dockerd bind-mounts its data root; in a private mount namespace
        // such mounts vanish with it even when it is SIGKILLed.
        // SAFETY: unshare and mount are async-signal-safe syscalls.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let root = c"/";
                let none = c"none";
                if libc::mount(
                    none.as_ptr(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut daemon = Daemon::spawn(
            "dockerd",
            cmd,
            &base.join("dockerd.log"),
            Duration::from_secs(15),
        )?;

        let host = format!("unix://{}", sock.display());
        let env = vec![(
            "DOCKER_CONFIG".to_owned(),
            client_config.display().to_string(),
        )];
        let mut exited = None;
        let ready = wait_until("dockerd to answer", Duration::from_secs(60), || {
            exited = exited.or(daemon.exited());
            let dead = exited;
            let (docker, host, env) = (docker.clone(), host.clone(), env.clone());
            async move {
                if let Some(status) = dead {
                    bail!("dockerd exited: {status}");
                }
                if !std::path::Path::new(host.trim_start_matches("unix://")).exists() {
                    return Ok(false);
                }
                let a = args(&["-H", &host, "version", "--format", "{{.Server.Version}}"]);
                Ok(run_tool(&docker, &a, &env, Duration::from_secs(10))
                    .await
                    .is_ok())
            }
        })
        .await;
        if let Err(e) = ready {
            bail!(
                "{e:#}\n----- dockerd.log (tail) -----\n{}",
                daemon.log_tail(30)
            );
        }
        Ok(Dockerd {
            daemon,
            data_root,
            sock,
            docker,
            client_config,
            _sockets: sockets,
        })
    }

    async fn docker(&self, a: &[&str]) -> Result<String> {
        let mut full = args(&["-H", &format!("unix://{}", self.sock.display())]);
        full.extend(args(a));
        let env = vec![(
            "DOCKER_CONFIG".to_owned(),
            self.client_config.display().to_string(),
        )];
        let out = run_tool(&self.docker, &full, &env, PULL_TIMEOUT)
            .await
            .map_err(|e| self.with_log(e))?;
        Ok(out.stdout)
    }

    /// `e` with the tail of dockerd's log (what a failed client command
    /// cannot say).
    fn with_log(&self, e: anyhow::Error) -> anyhow::Error {
        anyhow::anyhow!(
            "{e:#}\n----- dockerd.log (tail) -----\n{}",
            self.daemon.log_tail(15)
        )
    }

    /// `docker pull <reference>`; returns the repo digest dockerd recorded
    /// (`sha256:…`, the digest of the manifest or index the tag resolved to).
    pub async fn pull(&self, reference: &str) -> Result<String> {
        self.docker(&["pull", "--quiet", reference]).await?;
        let digests = self.repo_digests(reference).await?;
        let want = repo_of(reference);
        let pick = digests
            .iter()
            .find(|d| d.split('@').next() == Some(want))
            .or(if digests.len() == 1 {
                digests.first()
            } else {
                None
            })
            .with_context(|| format!("no RepoDigest for {want} in {digests:?}"))?;
        Ok(pick
            .split('@')
            .nth(1)
            .context("RepoDigest without @")?
            .to_owned())
    }

    /// Runs `script` with `sh`, its `docker` talking to this dockerd (and
    /// its client configuration), with `env` — a README guide as written.
    pub async fn sh(&self, script: &str, env: &[(&str, &str)]) -> Result<String> {
        let sh = require_tool("sh", "dash")?;
        let mut all = vec![
            (
                "DOCKER_HOST".to_owned(),
                format!("unix://{}", self.sock.display()),
            ),
            (
                "DOCKER_CONFIG".to_owned(),
                self.client_config.display().to_string(),
            ),
            ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
        ];
        all.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let out = run_tool(&sh, &args(&["-c", script]), &all, PULL_TIMEOUT)
            .await
            .map_err(|e| self.with_log(e))?;
        Ok(out.stdout)
    }

    /// The repo digests dockerd recorded for `reference`.
    pub async fn repo_digests(&self, reference: &str) -> Result<Vec<String>> {
        let out = self
            .docker(&[
                "image",
                "inspect",
                "--format",
                "{{json .RepoDigests}}",
                reference,
            ])
            .await?;
        serde_json::from_str(out.trim()).with_context(|| format!("parsing RepoDigests {out:?}"))
    }

    /// `docker image rm` (to pull again).
    pub async fn remove(&self, reference: &str) -> Result<()> {
        self.docker(&["image", "rm", "--force", reference])
            .await
            .map(drop)
    }

    /// dockerd's log.
    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.daemon.stop();
        // dockerd bind-mounts its data root onto itself and only undoes that
        // on a clean exit; a lazy unmount makes sure the directory can go.
        if let Ok(path) = std::ffi::CString::new(self.data_root.as_os_str().as_encoded_bytes()) {
            // SAFETY: plain syscall on a path we own; failure (not mounted)
            // is expected and ignored.
            unsafe {
                libc::umount2(path.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// containerd

/// A private containerd, driven with `ctr`.
pub struct Containerd {
    daemon: Daemon,
    sock: PathBuf,
    ctr: PathBuf,
    base: PathBuf,
    _sockets: tempfile::TempDir,
}

/// The containerd namespace the tests use.
const CTR_NAMESPACE: &str = "wharf-tests";

impl Containerd {
    /// Starts containerd under `<test dir>/containerd` (CRI disabled).
    pub async fn start(dir: &TestDir) -> Result<Containerd> {
        let containerd = require_tool("containerd", "containerd")?;
        let ctr = require_tool("ctr", "containerd")?;
        let base = dir.sub("containerd");
        let sockets = socket_dir("wc")?;
        let sock = sockets.path().join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""
"#,
            root = base.join("root").display(),
            state = sockets.path().join("state").display(),
            sock = sock.display(),
        );
        let config_path = base.join("config.toml");
        std::fs::write(&config_path, config)?;
        let mut cmd = Command::new(containerd);
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--log-level")
            .arg("info");
        for (k, v) in crate::process::sealed_env() {
            cmd.env(k, v);
        }
        let mut daemon = Daemon::spawn(
            "containerd",
            cmd,
            &base.join("containerd.log"),
            Duration::from_secs(10),
        )?;
        let a = args(&["-a", &sock.display().to_string(), "version"]);
        let mut exited = None;
        let ready = wait_until("containerd to answer", Duration::from_secs(30), || {
            exited = exited.or(daemon.exited());
            let dead = exited;
            let (ctr, a, sock) = (ctr.clone(), a.clone(), sock.clone());
            async move {
                if let Some(status) = dead {
                    bail!("containerd exited: {status}");
                }
                if !sock.exists() {
                    return Ok(false);
                }
                Ok(run_tool(&ctr, &a, &[], Duration::from_secs(10))
                    .await
                    .is_ok())
            }
        })
        .await;
        if let Err(e) = ready {
            bail!(
                "{e:#}\n----- containerd.log (tail) -----\n{}",
                daemon.log_tail(30)
            );
        }
        Ok(Containerd {
            daemon,
            sock,
            ctr,
            base,
            _sockets: sockets,
        })
    }

    async fn ctr(&self, a: &[String]) -> Result<String> {
        let mut full = args(&["-a", &self.sock.display().to_string(), "-n", CTR_NAMESPACE]);
        full.extend(a.iter().cloned());
        let out = run_tool(&self.ctr, &full, &[], PULL_TIMEOUT)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "{e:#}\n----- containerd.log (tail) -----\n{}",
                    self.daemon.log_tail(15)
                )
            })?;
        Ok(out.stdout)
    }

    /// `ctr images pull --plain-http <reference>` (a full reference:
    /// `host/repo:tag`); returns the digest the image record points at (the
    /// index for a multi-platform tag).
    pub async fn pull(&self, reference: &str) -> Result<String> {
        self.ctr(&args(&[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "native",
            reference,
        ]))
        .await?;
        self.digest_of(reference).await
    }

    /// Pulls a Docker Hub name (`docker.io/library/x:tag`) with a
    /// `hosts.toml` that sends `docker.io` to `mirror` (`http://host:port`),
    /// the way Kubernetes nodes are set up. containerd then adds
    /// `?ns=docker.io` to every request. The fallback `server` is a closed
    /// loopback port, so only the mirror can answer.
    pub async fn pull_via_mirror(&self, reference: &str, mirror: &str) -> Result<String> {
        let hosts = self.base.join("certs.d");
        let docker_io = hosts.join("docker.io");
        std::fs::create_dir_all(&docker_io)?;
        std::fs::write(
            docker_io.join("hosts.toml"),
            format!(
                "server = \"http://127.0.0.1:9\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
            ),
        )?;
        self.pull_with_hosts_dir(&hosts, reference).await
    }

    /// `ctr images pull` of `reference` with `hosts_toml` as the
    /// `hosts.toml` of `registry` (e.g. `docker.io`) — a README guide as
    /// written.
    pub async fn pull_with_hosts_toml(
        &self,
        registry: &str,
        hosts_toml: &str,
        reference: &str,
    ) -> Result<String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let hosts = self.base.join(format!(
            "certs.d-guide-{}",
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let dir = hosts.join(registry);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("hosts.toml"), hosts_toml)?;
        self.pull_with_hosts_dir(&hosts, reference).await
    }

    /// `ctr images pull` of `reference` (`host:port/repo:tag`, plain HTTP)
    /// with a `hosts.toml` that adds `headers` to every request to that
    /// host — how a node sends a fixed header (here the edge's test-only
    /// location override) with every pull.
    pub async fn pull_with_headers(
        &self,
        reference: &str,
        headers: &[(&str, &str)],
    ) -> Result<String> {
        let host = reference
            .split('/')
            .next()
            .context("a reference starts with host:port")?;
        static N: AtomicU32 = AtomicU32::new(0);
        let hosts = self
            .base
            .join(format!("certs.d-{}", N.fetch_add(1, Ordering::Relaxed)));
        let dir = hosts.join(host);
        std::fs::create_dir_all(&dir)?;
        let mut toml = format!(
            "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n  [host.\"http://{host}\".header]\n"
        );
        for (k, v) in headers {
            toml.push_str(&format!("    {k} = [{v:?}]\n"));
        }
        std::fs::write(dir.join("hosts.toml"), toml)?;
        self.pull_with_hosts_dir(&hosts, reference).await
    }

    /// Removes the image record (so the next pull fetches again).
    pub async fn remove(&self, reference: &str) -> Result<()> {
        self.ctr(&args(&["images", "rm", reference])).await?;
        Ok(())
    }

    async fn pull_with_hosts_dir(&self, hosts: &Path, reference: &str) -> Result<String> {
        self.ctr(&args(&[
            "images",
            "pull",
            "--hosts-dir",
            &hosts.display().to_string(),
            "--snapshotter",
            "native",
            reference,
        ]))
        .await?;
        self.digest_of(reference).await
    }

    async fn digest_of(&self, reference: &str) -> Result<String> {
        let out = self.ctr(&args(&["images", "ls"])).await?;
        for line in out.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.first() == Some(&reference) && cols.len() >= 3 {
                return Ok(cols[2].to_owned());
            }
        }
        bail!("`ctr images ls` does not list {reference}:\n{out}")
    }

    /// containerd's log.
    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

// ---------------------------------------------------------------------------
// podman

/// Podman with private storage and configuration.
pub struct Podman {
    podman: PathBuf,
    base: PathBuf,
    /// podman refuses a runroot longer than 50 bytes: it lives under /tmp.
    runroot: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Podman {
    /// Prepares podman's storage and configuration under `<test dir>/podman`.
    pub fn new(dir: &TestDir) -> Result<Podman> {
        let podman = require_tool("podman", "podman")?;
        let base = dir.sub("podman");
        let runroot = socket_dir("wp")?;
        for d in ["root", "tmp"] {
            std::fs::create_dir_all(base.join(d))?;
        }
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            base.join("root").display(),
            runroot.path().display()
        );
        std::fs::write(base.join("storage.conf"), storage)?;
        let containers = format!(
            "[engine]\nlock_type = \"file\"\nevents_logger = \"none\"\ncgroup_manager = \"cgroupfs\"\ntmp_dir = \"{}\"\n",
            base.join("tmp").display()
        );
        std::fs::write(base.join("containers.conf"), containers)?;
        std::fs::write(
            base.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )?;
        // REGISTRY_AUTH_FILE must exist: podman stats it.
        std::fs::write(base.join("auth.json"), r#"{"auths":{}}"#)?;
        std::fs::write(
            base.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )?;
        let env = vec![
            (
                "CONTAINERS_STORAGE_CONF".to_owned(),
                base.join("storage.conf").display().to_string(),
            ),
            (
                "CONTAINERS_CONF".to_owned(),
                base.join("containers.conf").display().to_string(),
            ),
            (
                "CONTAINERS_REGISTRIES_CONF".to_owned(),
                base.join("registries.conf").display().to_string(),
            ),
            (
                "REGISTRY_AUTH_FILE".to_owned(),
                base.join("auth.json").display().to_string(),
            ),
            ("TMPDIR".to_owned(), base.join("tmp").display().to_string()),
        ];
        Ok(Podman {
            podman,
            base,
            runroot,
            env,
        })
    }

    async fn podman(&self, a: &[&str]) -> Result<String> {
        let mut full = vec![
            "--root".to_owned(),
            self.base.join("root").display().to_string(),
            "--runroot".to_owned(),
            self.runroot.path().display().to_string(),
            "--storage-driver".to_owned(),
            "vfs".to_owned(),
            "--tmpdir".to_owned(),
            self.base.join("tmp").display().to_string(),
            "--events-backend".to_owned(),
            "none".to_owned(),
            "--cgroup-manager".to_owned(),
            "cgroupfs".to_owned(),
        ];
        full.extend(args(a));
        Ok(run_tool(&self.podman, &full, &self.env, PULL_TIMEOUT)
            .await?
            .stdout)
    }

    /// Replaces `registries.conf` (a README guide as written).
    pub fn set_registries_conf(&self, content: &str) -> Result<()> {
        std::fs::write(self.base.join("registries.conf"), content)?;
        Ok(())
    }

    /// `podman pull --tls-verify=false <reference>`; returns the image's
    /// `Digest` (for a multi-platform tag: the index digest).
    pub async fn pull(&self, reference: &str) -> Result<String> {
        let policy = self.base.join("policy.json").display().to_string();
        self.podman(&[
            "pull",
            "--tls-verify=false",
            "--signature-policy",
            &policy,
            reference,
        ])
        .await?;
        let out = self
            .podman(&["image", "inspect", "--format", "{{.Digest}}", reference])
            .await?;
        Ok(out.trim().to_owned())
    }
}

// ---------------------------------------------------------------------------
// skopeo

/// Options for [`Skopeo::copy`].
#[derive(Clone, Debug, Default)]
pub struct CopyOpts {
    /// `--all`: copy every platform of an index (and keep the index).
    pub all: bool,
    /// `--src-creds user:password`.
    pub creds: Option<(String, String)>,
}

/// skopeo, copying from a plain-HTTP registry to a `dir:` destination.
pub struct Skopeo {
    skopeo: PathBuf,
    base: PathBuf,
    copies: AtomicU32,
}

impl Skopeo {
    /// Prepares skopeo's configuration under `<test dir>/skopeo`.
    pub fn new(dir: &TestDir) -> Result<Skopeo> {
        let skopeo = require_tool("skopeo", "skopeo")?;
        let base = dir.sub("skopeo");
        std::fs::write(
            base.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )?;
        Ok(Skopeo {
            skopeo,
            base,
            copies: AtomicU32::new(0),
        })
    }

    /// `skopeo copy docker://<reference> dir:<new dir>`; returns the digest
    /// of the copied (top-level) manifest.
    pub async fn copy(&self, reference: &str, opts: &CopyOpts) -> Result<String> {
        Ok(self.copy_to_dir(reference, opts).await?.0)
    }

    /// Like [`Skopeo::copy`], also returning the destination directory.
    pub async fn copy_to_dir(&self, reference: &str, opts: &CopyOpts) -> Result<(String, PathBuf)> {
        let n = self.copies.fetch_add(1, Ordering::SeqCst);
        let dest = self.base.join(format!("copy-{n}"));
        let mut a = vec![
            "--insecure-policy".to_owned(),
            "--registries-conf".to_owned(),
            self.base.join("registries.conf").display().to_string(),
            "copy".to_owned(),
            "--src-tls-verify=false".to_owned(),
            "--retry-times".to_owned(),
            "0".to_owned(),
        ];
        if opts.all {
            a.push("--all".to_owned());
        }
        match &opts.creds {
            Some((u, p)) => {
                a.push("--src-creds".to_owned());
                a.push(format!("{u}:{p}"));
            }
            None => a.push("--src-no-creds".to_owned()),
        }
        a.push(format!("docker://{reference}"));
        a.push(format!("dir:{}", dest.display()));
        let env = vec![("TMPDIR".to_owned(), self.base.display().to_string())];
        run_tool(&self.skopeo, &a, &env, PULL_TIMEOUT).await?;
        let manifest = std::fs::read(dest.join("manifest.json"))
            .with_context(|| format!("reading {}/manifest.json", dest.display()))?;
        Ok((sha256_digest(&manifest), dest))
    }
}

// ---------------------------------------------------------------------------
// reqwest

/// What [`pull_with_reqwest`] fetched.
#[derive(Clone, Debug)]
pub struct PulledImage {
    /// Digest of the manifest the reference resolved to (the index, for a
    /// multi-platform tag).
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// The platform manifest's digest (equal to `digest` for a single image).
    pub image_digest: String,
    /// Every blob fetched and verified (config first), with its size.
    pub blobs: Vec<(String, u64)>,
    /// Headers of the first manifest response.
    pub headers: reqwest::header::HeaderMap,
}

/// An OCI error response, parsed.
#[derive(Clone, Debug)]
pub struct OciError {
    /// HTTP status.
    pub status: u16,
    /// `errors[0].code`.
    pub code: String,
    /// `errors[0].message`.
    pub message: String,
    /// The raw body.
    pub body: String,
}

impl std::fmt::Display for OciError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTP {} {}: {} (body: {})",
            self.status, self.code, self.message, self.body
        )
    }
}

impl std::error::Error for OciError {}

impl OciError {
    /// Reads an error response. A body that is not an OCI error is kept
    /// raw, with an empty code.
    pub async fn read(resp: reqwest::Response) -> OciError {
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let e = &v["errors"][0];
        OciError {
            status,
            code: e["code"].as_str().unwrap_or_default().to_owned(),
            message: e["message"].as_str().unwrap_or_default().to_owned(),
            body,
        }
    }
}

/// GETs a manifest by tag or digest, accepting every manifest type. A
/// non-200 answer becomes an [`OciError`] (downcastable from the result).
pub async fn get_manifest(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
) -> Result<(Bytes, String, reqwest::header::HeaderMap)> {
    let resp = client
        .get(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header(reqwest::header::ACCEPT, ALL_MANIFEST_TYPES.join(", "))
        .send()
        .await?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(OciError::read(resp).await.into());
    }
    let headers = resp.headers().clone();
    let media_type = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((resp.bytes().await?, media_type, headers))
}

/// GETs a blob, streaming it through sha256; fails unless it has exactly
/// `size` bytes and the digest its name says.
pub async fn fetch_blob(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    digest: &str,
    size: Option<u64>,
) -> Result<u64> {
    let resp = client
        .get(format!("{base}/v2/{repo}/blobs/{digest}"))
        .send()
        .await?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(OciError::read(resp).await.into());
    }
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("reading blob {digest} after {len} bytes"))?;
        hasher.update(&chunk);
        len += chunk.len() as u64;
    }
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    ensure!(
        got == digest,
        "blob {digest} arrived with digest {got} ({len} bytes)"
    );
    if let Some(size) = size {
        ensure!(
            len == size,
            "blob {digest} arrived with {len} bytes, expected {size}"
        );
    }
    Ok(len)
}

/// Pulls `repo:reference` from `base` (`http://host:port`) the way a client
/// does, over plain HTTP: the manifest (for an index, then the linux/amd64
/// child), then the config and every layer, each verified while streaming.
pub async fn pull_with_reqwest(base: &str, repo: &str, reference: &str) -> Result<PulledImage> {
    let client = crate::http_client();
    let (bytes, media_type, headers) = get_manifest(&client, base, repo, reference).await?;
    let digest = sha256_digest(&bytes);
    if reference.starts_with("sha256:") {
        ensure!(
            digest == reference,
            "manifest {reference} arrived with digest {digest}"
        );
    }
    let mut manifest: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("parsing manifest of {repo}:{reference}"))?;
    let mut image_digest = digest.clone();
    if media_type == OCI_INDEX
        || media_type == DOCKER_MANIFEST_LIST
        || manifest.get("manifests").is_some()
    {
        let child = manifest["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["platform"]["architecture"] == "amd64" && m["platform"]["os"] == "linux")
            .and_then(|m| m["digest"].as_str())
            .with_context(|| format!("no linux/amd64 entry in the index of {repo}:{reference}"))?
            .to_owned();
        let (child_bytes, _, _) = get_manifest(&client, base, repo, &child).await?;
        let got = sha256_digest(&child_bytes);
        ensure!(
            got == child,
            "child manifest {child} arrived with digest {got}"
        );
        manifest = serde_json::from_slice(&child_bytes)?;
        image_digest = child;
    }
    let descriptors = std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().into_iter().flatten());
    let mut blobs = Vec::new();
    for d in descriptors {
        let blob = d["digest"].as_str().context("descriptor without digest")?;
        let size = d["size"].as_u64().context("descriptor without size")?;
        fetch_blob(&client, base, repo, blob, Some(size)).await?;
        blobs.push((blob.to_owned(), size));
    }
    Ok(PulledImage {
        digest,
        media_type,
        image_digest,
        blobs,
        headers,
    })
}

/// The OCI error inside an error chain, if there is one.
pub fn oci_error_of(e: &anyhow::Error) -> Option<&OciError> {
    e.chain().find_map(|c| c.downcast_ref::<OciError>())
}

/// Path helper for tests that inspect a skopeo `dir:` copy.
pub fn read_manifest_in(dir: &Path) -> Result<serde_json::Value> {
    Ok(serde_json::from_slice(&std::fs::read(
        dir.join("manifest.json"),
    )?)?)
}
