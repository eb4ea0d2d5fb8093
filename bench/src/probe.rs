//! Measuring instruments: process resources from `/proc`, timed skopeo
//! copies, `curl` downloads, and sha256 throughput (`sha256sum` beside the
//! `sha2` crate the origin hashes with).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sha2::Digest as _;
use wharf_tests::process::run_tool;
use wharf_tests::require_tool;

use crate::cpus::CpuSplit;

const GIB: f64 = (1u64 << 30) as f64;

// ---------------------------------------------------------------------------
// /proc

/// Resource counters of one process.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    /// utime + stime of all threads, seconds.
    pub cpu_secs: f64,
    /// Peak resident set since start or the last [`reset_peak_rss`], bytes.
    pub hwm: u64,
    /// Current resident set, bytes.
    pub rss: u64,
}

/// What `/proc/<pid>/stat` says about a process.
struct Stat {
    comm: String,
    ppid: u32,
    /// utime + stime of all threads, seconds.
    cpu_secs: f64,
}

/// Parses one `/proc/<pid>/stat` line (proc(5)): the command name is in
/// parentheses (and may hold spaces); after it, ppid is field 4, utime 14
/// and stime 15.
fn parse_stat(stat: &str) -> Option<Stat> {
    let (head, after) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(Stat {
        comm,
        ppid: u32::try_from(num(1)?).ok()?,
        cpu_secs: (num(11)? + num(12)?) as f64 / tck,
    })
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let stat = parse_stat(&stat).with_context(|| format!("malformed /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(ProcSample {
        cpu_secs: stat.cpu_secs,
        hwm: kib("VmHWM:")? * 1024,
        rss: kib("VmRSS:")? * 1024,
    })
}

/// Longest [`quiet`] waits for the servers to go idle.
const QUIET_LIMIT: Duration = Duration::from_secs(15);

/// Waits until the processes `pids` together use at most 2 % of a CPU
/// over half a second (one 10 ms tick of `/proc/<pid>/stat`), at most
/// [`QUIET_LIMIT`], so that a measured run does not share its CPU with a neighbour
/// still finishing the last one (Distribution's proxy stays busy for
/// seconds after a load ends). Says so on stderr when the wait was long or
/// in vain (`what` names the item).
pub async fn quiet(pids: &[u32], what: &str) -> Result<()> {
    const STEP: Duration = Duration::from_millis(500);
    let cpu = || -> Result<f64> { pids.iter().map(|&p| Ok(sample(p)?.cpu_secs)).sum() };
    let start = Instant::now();
    let mut last = cpu()?;
    while start.elapsed() < QUIET_LIMIT {
        tokio::time::sleep(STEP).await;
        let now = cpu()?;
        if now - last <= 0.02 * STEP.as_secs_f64() + 1e-9 {
            if start.elapsed() > 2 * STEP {
                eprintln!(
                    "[bench] {what}: waited {:.1} s for the servers to go idle",
                    start.elapsed().as_secs_f64()
                );
            }
            return Ok(());
        }
        last = now;
    }
    eprintln!(
        "[bench] {what}: the servers were still busy after {QUIET_LIMIT:?}; measuring anyway"
    );
    Ok(())
}

/// CPU seconds (utime + stime) of `root` and each of its descendants, with
/// their command names, from `/proc/<pid>/stat`.
pub fn tree_cpu(root: u32) -> Result<Vec<(String, f64)>> {
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // The process may exit while we look.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(stat) = parse_stat(&stat) {
            procs.push((pid, stat));
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            procs
                .iter()
                .filter(|(pid, s)| s.ppid == parent && *pid != parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    let found: Vec<_> = procs
        .into_iter()
        .filter(|(pid, _)| tree.contains(pid))
        .map(|(_, s)| (s.comm, s.cpu_secs))
        .collect();
    ensure!(!found.is_empty(), "process {root} is not running");
    Ok(found)
}

/// Resets a process's peak RSS (`VmHWM`) to its current RSS
/// (`echo 5 > /proc/<pid>/clear_refs`, Linux ≥ 4.0), so a phase's peak is
/// its own and not an earlier phase's.
pub fn reset_peak_rss(pid: u32) -> Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of {pid} (/proc/{pid}/clear_refs)"))
}

// ---------------------------------------------------------------------------
// skopeo

/// skopeo copying into `dir:` destinations on tmpfs (`/dev/shm` when it has
/// room, the temp dir otherwise), so the destination disk is not what is
/// measured. Each copy is removed after it is checked.
pub struct Skopeo {
    bin: PathBuf,
    cpus: CpuSplit,
    scratch: tempfile::TempDir,
    copies: u32,
}

impl Skopeo {
    /// Finds skopeo and makes the scratch directory, which must hold
    /// `largest` bytes.
    pub fn new(largest: u64, cpus: &CpuSplit) -> Result<Skopeo> {
        let bin = require_tool("skopeo", "skopeo")?;
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() && free_bytes(shm).unwrap_or(0) > largest * 2 {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        };
        let scratch = tempfile::Builder::new()
            .prefix("wharf-bench-skopeo-")
            .tempdir_in(&base)?;
        std::fs::write(
            scratch.path().join("registries.conf"),
            "unqualified-search-registries = []\n",
        )?;
        Ok(Skopeo {
            bin,
            cpus: cpus.clone(),
            scratch,
            copies: 0,
        })
    }

    /// Where copies land.
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// `skopeo copy docker://<reference> dir:<scratch>`, timed; checks the
    /// manifest's digest, then deletes the copy.
    pub async fn timed_copy(&mut self, reference: &str, manifest_digest: &str) -> Result<Duration> {
        self.copies += 1;
        let dest = self.scratch.path().join(format!("copy-{}", self.copies));
        let args: Vec<String> = [
            "--insecure-policy",
            "--registries-conf",
            &self
                .scratch
                .path()
                .join("registries.conf")
                .display()
                .to_string(),
            "copy",
            "--src-tls-verify=false",
            "--retry-times",
            "0",
            "--src-no-creds",
            &format!("docker://{reference}"),
            &format!("dir:{}", dest.display()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let env = vec![(
            "TMPDIR".to_owned(),
            self.scratch.path().display().to_string(),
        )];
        let start = Instant::now();
        let (bin, args) = self.cpus.client_command(&self.bin, args);
        run_tool(&bin, &args, &env, Duration::from_secs(1800)).await?;
        let took = start.elapsed();
        let manifest = std::fs::read(dest.join("manifest.json"))
            .with_context(|| format!("reading {}/manifest.json", dest.display()))?;
        let got = wharf_tests::sha256_digest(&manifest);
        let _ = std::fs::remove_dir_all(&dest);
        ensure!(
            got == manifest_digest,
            "skopeo copied {reference} with manifest {got}, expected {manifest_digest}"
        );
        Ok(took)
    }
}

fn free_bytes(path: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is a
    // valid NUL-terminated string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    ensure!(rc == 0, "statvfs {}", path.display());
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

// ---------------------------------------------------------------------------
// curl

/// Downloads `url` with `curl -o /dev/null` `runs` times; returns the best
/// throughput in bytes per second. Each download must be a 200 of exactly
/// `size` bytes.
pub async fn curl_throughput(url: &str, size: u64, runs: usize, cpus: &CpuSplit) -> Result<f64> {
    let curl = require_tool("curl", "curl")?;
    let mut best = 0f64;
    for _ in 0..runs {
        let args: Vec<String> = [
            "-sS",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download} %{time_total}",
            url,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (bin, args) = cpus.client_command(&curl, args);
        let out = run_tool(&bin, &args, &[], Duration::from_secs(600)).await?;
        let mut it = out.stdout.split_whitespace();
        let (code, got, secs) = (it.next(), it.next(), it.next());
        let code: u16 = code.unwrap_or("").parse().unwrap_or(0);
        let got: u64 = got.unwrap_or("").parse().unwrap_or(0);
        let secs: f64 = secs.unwrap_or("").parse().unwrap_or(0.0);
        ensure!(
            code == 200 && got == size,
            "curl {}: HTTP {code}, {got} of {size} bytes",
            redact(url)
        );
        best = best.max(size as f64 / secs.max(1e-6));
    }
    Ok(best)
}

/// A URL without its query (presigned URLs carry a signature there).
pub fn redact(url: &str) -> &str {
    url.split_once('?').map_or(url, |(u, _)| u)
}

// ---------------------------------------------------------------------------
// sha256

/// `sha256sum <file>`, best of `runs`: bytes per second. Checks the output.
pub async fn sha256sum_throughput(file: &Path, hex: &str, runs: usize) -> Result<f64> {
    let tool = require_tool("sha256sum", "coreutils")?;
    tool_hash_throughput(&tool, &[], file, hex, runs).await
}

/// `openssl dgst -sha256 -r <file>` (OpenSSL uses the CPU's SHA extensions
/// where coreutils may not), best of `runs`: bytes per second.
pub async fn openssl_throughput(file: &Path, hex: &str, runs: usize) -> Result<f64> {
    let tool = require_tool("openssl", "openssl")?;
    tool_hash_throughput(&tool, &["dgst", "-sha256", "-r"], file, hex, runs).await
}

async fn tool_hash_throughput(
    tool: &Path,
    args: &[&str],
    file: &Path,
    hex: &str,
    runs: usize,
) -> Result<f64> {
    let size = std::fs::metadata(file)?.len();
    let mut argv: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    argv.push(file.display().to_string());
    let mut best = 0f64;
    for _ in 0..runs {
        let start = Instant::now();
        let out = run_tool(tool, &argv, &[], Duration::from_secs(600)).await?;
        let secs = start.elapsed().as_secs_f64();
        ensure!(
            out.stdout.starts_with(hex),
            "{} printed {:?}, expected {hex}",
            tool.display(),
            out.stdout.trim()
        );
        best = best.max(size as f64 / secs);
    }
    Ok(best)
}

/// The `sha2` crate (what the origin verifies blobs with, same version and
/// build profile as this binary) over `file` in 512 KiB reads, best of
/// `runs`: bytes per second.
pub async fn sha2_throughput(file: &Path, hex: &str, runs: usize) -> Result<f64> {
    let file = file.to_owned();
    let hex = hex.to_owned();
    tokio::task::spawn_blocking(move || -> Result<f64> {
        let size = std::fs::metadata(&file)?.len();
        let mut buf = vec![0u8; 512 * 1024];
        let mut best = 0f64;
        for _ in 0..runs {
            let start = Instant::now();
            let mut f = std::fs::File::open(&file)?;
            let mut h = sha2::Sha256::new();
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            let got = hex::encode(h.finalize());
            let secs = start.elapsed().as_secs_f64();
            if got != hex {
                bail!("sha2 computed {got} for {}, expected {hex}", file.display());
            }
            best = best.max(size as f64 / secs);
        }
        Ok(best)
    })
    .await?
}

// ---------------------------------------------------------------------------
// Formatting

/// `1.23 GB/s` (decimal: what `curl` and disks report).
pub fn gbps(bytes_per_sec: f64) -> String {
    format!("{:.2} GB/s", bytes_per_sec / 1e9)
}

/// `12.3 s`, or `850 ms` below a second.
pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

/// `64 MiB`, `1 GiB`, `512 KiB`.
pub fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= GIB && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else if b >= GIB {
        format!("{:.2} GiB", b / GIB)
    } else if bytes >= 1 << 20 {
        let mib = b / (1u64 << 20) as f64;
        if bytes.is_multiple_of(1 << 20) {
            format!("{mib:.0} MiB")
        } else {
            format!("{mib:.1} MiB")
        }
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

/// The machine: CPU count and model, kernel, and whether the CPU has SHA
/// extensions (what sha256 throughput depends on most).
pub fn machine_info() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let sha_ni = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| l.split_whitespace().any(|f| f == "sha_ni"));
    let cmd = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| format!("{:.1} GiB", kib as f64 / (1u64 << 20) as f64))
        .unwrap_or_default();
    vec![
        (
            "date".into(),
            cmd("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
        ),
        (
            "nproc".into(),
            // All CPUs, not this process's share (the bench pins itself).
            cmd("nproc", &["--all"]),
        ),
        (
            "CPU".into(),
            format!(
                "{model}{}",
                if sha_ni {
                    " (SHA extensions: yes)"
                } else {
                    " (SHA extensions: no)"
                }
            ),
        ),
        ("memory".into(), mem),
        ("kernel".into(), cmd("uname", &["-sr"])),
        (
            "load average at start".into(),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        (
            "upstream / peer".into(),
            cmd("docker-registry", &["--version"]),
        ),
        ("skopeo".into(), cmd("skopeo", &["--version"])),
        (
            "curl".into(),
            cmd("curl", &["--version"])
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_with_spaces_and_parentheses_in_the_name() {
        // SAFETY: sysconf has no preconditions.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let line = "42 (tokio (rt) worker) S 7 42 42 0 -1 4194560 10 0 0 0 300 200 0 0 20 0 4 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.comm, "tokio (rt) worker");
        assert_eq!(s.ppid, 7);
        assert!((s.cpu_secs - 500.0 / tck).abs() < 1e-9);
        assert!(parse_stat("42 (short) S 7").is_none());
    }
}
