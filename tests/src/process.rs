//! Child processes that never outlive their test.
//!
//! [`Daemon`] is a long-running child (registry, origin, dockerd, containerd):
//! it runs in its own process group with `PR_SET_PDEATHSIG = SIGKILL`, logs to
//! a file in the test directory, and is stopped on drop (SIGTERM to the group,
//! a grace period, then SIGKILL and `wait`). A test that panics still drops
//! its daemons (and prints the tail of their logs); a test binary that is
//! killed outright takes them with it through the death signal.
//!
//! [`run_tool`] runs a short-lived client command (docker, skopeo, ctr,
//! podman) with a timeout and returns an error carrying its stderr.
//!
//! Why the death signal is set in `pre_exec`: it fires when the *thread* that
//! forked exits. Daemons are therefore spawned from the test's own thread or
//! a runtime worker (both live as long as the test), never from a
//! `spawn_blocking` thread, which the runtime retires when idle.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Makes the child die with its parent and lead its own process group.
fn contain(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A long-running child process tied to a test.
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    grace: Duration,
}

impl Daemon {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    ///
    /// `grace` is how long [`Daemon::stop`] waits after SIGTERM before it
    /// sends SIGKILL to the whole process group.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path, grace: Duration) -> Result<Daemon> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        contain(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {:?}", cmd.get_program()))?;
        Ok(Daemon {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
            grace,
        })
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Sends `signal` to the process group.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain syscall; the group id is our child's pid.
            unsafe {
                libc::kill(-(pid as i32), signal);
            }
        }
    }

    /// SIGTERM, wait up to the grace period, then SIGKILL; reaps the child.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            self.kill_group(child.id());
            return Some(status);
        }
        let pgid = child.id() as i32;
        // SAFETY: plain syscall on our own child's process group.
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < self.grace {
            if let Ok(Some(status)) = child.try_wait() {
                self.kill_group(child.id());
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "[{}] did not stop within {:?} of SIGTERM: killing",
            self.name, self.grace
        );
        self.kill_group(child.id());
        let _ = child.kill();
        child.wait().ok()
    }

    fn kill_group(&self, pid: u32) {
        // SAFETY: plain syscall; leftovers of the group (helpers the daemon
        // started) must not outlive the test.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        self.stop();
        if panicking {
            eprintln!(
                "----- [{}] last lines of {} -----\n{}\n----- end of {} -----",
                self.name,
                self.log.display(),
                self.log_tail(40),
                self.name
            );
        }
    }
}

/// The last `lines` lines of a file (reads at most its last 64 KiB).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut s = String::new();
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_ok() {
        s = String::from_utf8_lossy(&buf).into_owned();
    }
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The environment every client tool gets: any request not to loopback goes
/// to a closed loopback port, so nothing (say, a fallback to Docker Hub)
/// ever leaves the machine.
pub fn sealed_env() -> Vec<(&'static str, String)> {
    let dead = "http://127.0.0.1:9".to_owned();
    // 127.0.0.2 is the stand-in CDN (see `cdn`): another host, still loopback.
    let local = "127.0.0.1,127.0.0.2,localhost,::1".to_owned();
    vec![
        ("HTTP_PROXY", dead.clone()),
        ("HTTPS_PROXY", dead.clone()),
        ("http_proxy", dead.clone()),
        ("https_proxy", dead),
        ("NO_PROXY", local.clone()),
        ("no_proxy", local),
    ]
}

/// The output of a finished tool.
#[derive(Debug)]
pub struct ToolOutput {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs a client tool to completion (killed after `timeout`), with
/// [`sealed_env`] and the extra `env`. A non-zero exit is an error that
/// carries the command line, stdout and stderr.
pub async fn run_tool(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<ToolOutput> {
    let mut std_cmd = Command::new(program);
    std_cmd.args(args);
    for (k, v) in sealed_env() {
        std_cmd.env(k, v);
    }
    for (k, v) in env {
        std_cmd.env(k, v);
    }
    std_cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    contain(&mut std_cmd);
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.kill_on_drop(true);
    let line = format!("{} {}", program.display(), args.join(" "));
    let child = cmd.spawn().with_context(|| format!("spawning `{line}`"))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out.with_context(|| format!("waiting for `{line}`"))?,
        Err(_) => bail!("`{line}` did not finish within {timeout:?}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}):\n--- stderr ---\n{}\n--- stdout ---\n{}",
            out.status,
            stderr.trim_end(),
            stdout.trim_end()
        );
    }
    Ok(ToolOutput { stdout, stderr })
}
