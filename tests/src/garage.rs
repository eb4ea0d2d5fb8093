//! A 3-node, 3-zone Garage cluster on loopback, started per test with
//! `infra/garage/cluster.sh` (the same script documents and scripts the
//! real layout), on free ports, stopped on drop.
//!
//! The binary: `$GARAGE_BIN`, the cache that `scripts/install-garage.sh`
//! fills (`$WHARF_TOOLS`, `$CARGO_TARGET_DIR/wharf-tools` or
//! `~/.cache/wharf-tools`, then `garage/bin/garage`), or `garage` on `PATH`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::TestDir;
use crate::edge::workspace_root;

/// Nodes in the cluster (one per zone).
pub const NODES: usize = 3;

/// A running cluster.
pub struct Garage {
    dir: PathBuf,
    script: PathBuf,
    env: HashMap<String, String>,
}

/// Where the garage binary is, or an install hint.
pub fn garage_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("GARAGE_BIN") {
        return Ok(PathBuf::from(p));
    }
    // The caches scripts/install-garage.sh fills, in its order.
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(t) = std::env::var_os("WHARF_TOOLS") {
        candidates.push(PathBuf::from(t).join("garage/bin/garage"));
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("wharf-tools/garage/bin/garage"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(h).join(".cache/wharf-tools/garage/bin/garage"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("garage")));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .context("garage not found: run scripts/install-garage.sh (builds garage 2.5.0 into ~/.cache/wharf-tools) or set GARAGE_BIN")
}

impl Garage {
    /// Starts the cluster with `buckets` (≥ 3 characters each) and one key
    /// allowed on all of them.
    pub async fn start(dir: &TestDir, buckets: &[&str]) -> Result<Garage> {
        let bin = garage_bin()?;
        let script = workspace_root().join("infra/garage/cluster.sh");
        let gdir = dir.sub("garage");
        // Ports P..P+22: node N uses P+10(N-1) (RPC), +1 (S3), +2 (admin).
        let mut last_err = String::new();
        for _ in 0..5 {
            let base = free_port_block(23);
            let out = Command::new("bash")
                .arg(&script)
                .arg("start")
                .arg(&gdir)
                .args(["--base-port", &base.to_string()])
                .args(["--buckets", &buckets.join(",")])
                .env("GARAGE_BIN", &bin)
                .output()
                .context("running infra/garage/cluster.sh")?;
            if out.status.success() {
                let text = std::fs::read_to_string(gdir.join("env"))?;
                let env = text
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                return Ok(Garage {
                    dir: gdir,
                    script,
                    env,
                });
            }
            last_err = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let _ = Command::new("bash")
                .arg(&script)
                .arg("stop")
                .arg(&gdir)
                .output();
            let _ = std::fs::remove_dir_all(&gdir);
            std::fs::create_dir_all(&gdir)?;
        }
        bail!("the Garage cluster did not start:\n{last_err}")
    }

    /// Node `i`'s S3 endpoint (`i` from 0), `http://127.0.0.1:PORT`.
    pub fn s3_endpoint(&self, i: usize) -> String {
        self.env
            .get(&format!("GARAGE_S3_ENDPOINT_{}", i + 1))
            .cloned()
            .unwrap_or_default()
    }

    /// The access key id and secret.
    pub fn credentials(&self) -> (String, String) {
        (
            self.env["AWS_ACCESS_KEY_ID"].clone(),
            self.env["AWS_SECRET_ACCESS_KEY"].clone(),
        )
    }

    /// The read-only key (GET/HEAD objects) the edge presigns with.
    pub fn read_only_credentials(&self) -> (String, String) {
        (
            self.env["WHARF_S3_ACCESS_KEY"].clone(),
            self.env["WHARF_S3_SECRET_KEY"].clone(),
        )
    }

    /// `AWS_*` variables for a process using the cluster.
    pub fn env(&self) -> Vec<(String, String)> {
        let (ak, sk) = self.credentials();
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ak),
            ("AWS_SECRET_ACCESS_KEY".into(), sk),
            ("AWS_REGION".into(), "garage".into()),
        ]
    }

    /// Kills node `i` (from 0) with SIGKILL.
    pub fn kill_node(&self, i: usize) -> Result<()> {
        self.script_cmd("kill-node", Some(i + 1))
    }

    /// Starts node `i` (from 0) again.
    pub fn start_node(&self, i: usize) -> Result<()> {
        self.script_cmd("start-node", Some(i + 1))
    }

    fn script_cmd(&self, cmd: &str, node: Option<usize>) -> Result<()> {
        let mut c = Command::new("bash");
        c.arg(&self.script).arg(cmd).arg(&self.dir);
        if let Some(n) = node {
            c.arg(n.to_string());
        }
        if let Ok(bin) = garage_bin() {
            c.env("GARAGE_BIN", bin);
        }
        let out = c.output()?;
        if !out.status.success() {
            bail!("cluster.sh {cmd}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.script_cmd("stop", None);
    }
}

/// The first port of `n` consecutive ports that were all free a moment ago.
fn free_port_block(n: u16) -> u16 {
    use std::net::TcpListener;
    for _ in 0..200 {
        let start = crate::free_port();
        if start > u16::MAX - n {
            continue;
        }
        let all_free = (start..start + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return start;
        }
    }
    crate::free_port()
}
