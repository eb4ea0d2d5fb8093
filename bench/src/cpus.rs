//! Keeping the measured clients off the servers' CPUs.
//!
//! A registry cache runs on its own machine; its clients run on theirs. On
//! one small machine, every CPU cycle the cache spends (hashing, spooling)
//! is taken from the client beside it, so a client-bound pull measures CPU
//! contention rather than the cache's path. With at least two CPUs the
//! bench therefore splits them: the timed clients (skopeo, curl) run on the
//! first CPU, everything else — the upstream, both caches, the counting
//! proxies, the edge — on the others. The split is the same for every
//! system measured, and `--shared-cpus` turns it off.

use std::io;
use std::path::Path;

/// Which CPUs the clients and the servers run on.
#[derive(Clone, Debug)]
pub struct CpuSplit {
    /// `None`: no split, everything shares every CPU.
    client: Option<Vec<usize>>,
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
                servers: all,
                taskset: "taskset".into(),
            });
        }
        let taskset = wharf_tests::require_tool("taskset", "util-linux")?;
        let (client, servers) = all.split_at(1);
        pin_self(servers)?;
        Ok(CpuSplit {
            client: Some(client.to_vec()),
            servers: servers.to_vec(),
            taskset,
        })
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
                "split: timed clients (skopeo, curl) on CPU {}, servers (upstream, caches, proxies, edge) on CPU {}",
                list(client),
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
    // SAFETY: as in `allowed`; CPU_SET only writes bits inside `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
