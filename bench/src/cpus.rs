//! Keeping the measured clients, the upstream and the caches off each
//! other's CPUs.
//!
//! A registry cache runs on its own machine; its clients run on theirs, and
//! the upstream (Docker Hub, GHCR) on a third. On one small machine, every
//! CPU cycle the cache spends (hashing, spooling) is taken from whatever
//! shares its CPU: from the client, a client-bound pull then measures CPU
//! contention rather than the cache's path; from the upstream, the upstream
//! serves the cache more slowly than it serves a direct pull, which cannot
//! happen in production either. With at least two CPUs the bench therefore
//! splits them by role, the same for every system measured:
//!
//! * the timed clients (skopeo, curl, the edge's request timer) on the
//!   first CPU;
//! * the upstream registry on the second when there are three or more CPUs,
//!   else on the clients' CPU: a direct pull and a pull through a cache both
//!   make the upstream serve every byte once, so sharing the client's CPU
//!   costs both the same, while sharing the caches' CPU would charge the
//!   cache for the upstream's work;
//! * everything else — both caches, the counting proxies (one in every
//!   system's path), the edge — on the rest.
//!
//! Measured on 2 vCPUs (bench item 2, cold 1 GiB pull ÷ direct): with the
//! upstream beside the caches, 1.04–1.30× over six runs, the origin's ~2.3 s
//! of CPU per pull competing with the upstream's serving; with the upstream
//! beside the client, 1.02–1.06× over three runs. `--shared-cpus` turns the
//! split off.

use std::io;
use std::path::Path;

/// Which CPUs the clients, the upstream and the servers run on.
#[derive(Clone, Debug)]
pub struct CpuSplit {
    /// `None`: no split, everything shares every CPU.
    client: Option<Vec<usize>>,
    /// The upstream registry's CPUs (with a split).
    upstream: Vec<usize>,
    servers: Vec<usize>,
    taskset: std::path::PathBuf,
}

impl CpuSplit {
    /// Splits the CPUs this process may run on (the first for clients, the
    /// rest for servers) and moves this process, and so every server it
    /// starts from now on, to the servers' CPUs. Call before any thread is
    /// spawned: threads inherit the affinity of the thread that creates
    /// them. No split with fewer than two CPUs or when `shared` is set.
    pub fn apply(shared: bool) -> anyhow::Result<CpuSplit> {
        let all = allowed()?;
        if shared || all.len() < 2 {
            return Ok(CpuSplit {
                client: None,
                upstream: all.clone(),
                servers: all,
                taskset: "taskset".into(),
            });
        }
        let taskset = wharf_tests::require_tool("taskset", "util-linux")?;
        let (client, rest) = all.split_at(1);
        let (upstream, servers) = if rest.len() >= 2 {
            rest.split_at(1)
        } else {
            (client, rest)
        };
        pin_self(servers)?;
        Ok(CpuSplit {
            client: Some(client.to_vec()),
            upstream: upstream.to_vec(),
            servers: servers.to_vec(),
            taskset,
        })
    }

    /// Moves the running upstream registry (process `pid`, every thread of
    /// it) to the upstream's CPUs; threads it creates later inherit them.
    pub fn pin_upstream(&self, pid: u32) -> anyhow::Result<()> {
        if self.client.is_none() {
            return Ok(());
        }
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|e| anyhow::anyhow!("listing the threads of the upstream ({pid}): {e}"))?;
        for task in tasks {
            let tid: libc::pid_t = match task?.file_name().to_str().and_then(|t| t.parse().ok()) {
                Some(tid) => tid,
                None => continue,
            };
            // A thread that exited meanwhile is not an error.
            match pin(tid, &self.upstream) {
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                r => r.map_err(|e| anyhow::anyhow!("pinning upstream thread {tid}: {e}"))?,
            }
        }
        Ok(())
    }

    /// `bin args…` as a client command: under `taskset` on the clients' CPU
    /// when the CPUs are split.
    pub fn client_command(
        &self,
        bin: &Path,
        args: Vec<String>,
    ) -> (std::path::PathBuf, Vec<String>) {
        match &self.client {
            None => (bin.to_owned(), args),
            Some(cpus) => {
                let mut argv = vec!["-c".to_owned(), list(cpus), bin.display().to_string()];
                argv.extend(args);
                (self.taskset.clone(), argv)
            }
        }
    }

    /// Runs `task` to completion on a thread of its own, on the clients'
    /// CPU when the CPUs are split (for timed clients that live in the
    /// bench process, such as the edge's request timer).
    pub async fn on_client<F, Fut, T>(&self, task: F) -> anyhow::Result<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
        T: Send + 'static,
    {
        let client = self.client.clone();
        let thread = std::thread::Builder::new()
            .name("bench-client".into())
            .spawn(move || -> anyhow::Result<T> {
                if let Some(cpus) = &client {
                    pin_self(cpus)?;
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                Ok(runtime.block_on(task()))
            })?;
        tokio::task::spawn_blocking(move || {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
        })
        .await?
    }

    /// One line for the results' machine description.
    pub fn describe(&self) -> String {
        match &self.client {
            None => format!(
                "shared: clients and servers on CPUs {}",
                list(&self.servers)
            ),
            Some(client) => format!(
                "split: timed clients (skopeo, curl) on CPU {}, the upstream registry on CPU {}, the caches, counting proxies and edge on CPU {}",
                list(client),
                list(&self.upstream),
                list(&self.servers)
            ),
        }
    }
}

fn list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The CPUs this process may run on.
fn allowed() -> io::Result<Vec<usize>> {
    // SAFETY: `set` is a plain bit set that sched_getaffinity fills in; its
    // size is passed along.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect())
    }
}

/// Restricts the calling thread (and the threads and processes it creates
/// afterwards) to `cpus`.
fn pin_self(cpus: &[usize]) -> io::Result<()> {
    pin(0, cpus)
}

/// Restricts thread `tid` (0: the calling thread) to `cpus`.
fn pin(tid: libc::pid_t, cpus: &[usize]) -> io::Result<()> {
    // SAFETY: as in `allowed`; CPU_SET only writes bits inside `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
