//! `wharf-origin`: flags → configuration → [`wharf_origin::run`]; or
//! `wharf-origin hash-password`, which prints a password's stored form for
//! the edge's `WHARF_USERS`.
//!
//! Exit status: 0 after a clean stop, 1 when serving fails, 2 for a
//! configuration error (a placeholder secret included) or bad input.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::Parser;
use rand::RngCore;
use tracing_subscriber::EnvFilter;
use wharf_core::password::{MAX_ITERATIONS, MIN_ITERATIONS, SALT_LEN, StoredPassword};
use wharf_origin::config::{Cli, Command, Config};

fn main() -> ExitCode {
    cap_malloc_arenas();
    let cli = Cli::parse();
    if let Some(Command::HashPassword { iterations }) = cli.command {
        return hash_password(iterations);
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("WHARF_LOG_FORMAT").is_ok_and(|v| v == "json");
    if json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let config = match Config::load(cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("wharf-origin: configuration error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wharf-origin: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wharf-origin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Caps glibc's malloc arenas at one per CPU (at least two) unless the
/// operator set `MALLOC_ARENA_MAX` (glibc reads it itself). By default
/// glibc gives each thread that allocates under contention an arena of its
/// own, up to eight per CPU, and each keeps what it freed: the file threads
/// of many streams at once (tokio's blocking pool) then pin memory the
/// runtime no longer uses. Measured with bench item 5 after item 1's herd
/// (the origin on one CPU): peak RSS 43.7 → 31.6 MiB with two arenas. One
/// per CPU leaves each runtime worker an arena of its own. mimalloc was
/// measured too and kept far more (see the README's bench section).
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = libc::c_int::try_from(cpus.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets an allocator parameter; called first
        // thing in main, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Reads one line (the password) from stdin, prints its stored form.
fn hash_password(iterations: u32) -> ExitCode {
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        eprintln!(
            "wharf-origin hash-password: --iterations {iterations}: expected {MIN_ITERATIONS} to {MAX_ITERATIONS} (the Workers runtime refuses more)"
        );
        return ExitCode::from(2);
    }
    let mut line = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("wharf-origin hash-password: cannot read the password from stdin: {e}");
        return ExitCode::from(2);
    }
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        eprintln!(
            "wharf-origin hash-password: empty password; pipe it in: `printf %s \"$PW\" | wharf-origin hash-password`"
        );
        return ExitCode::from(2);
    }
    let mut salt = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut salt);
    let stored = StoredPassword::new(password.as_bytes(), &salt, iterations);
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{stored}")
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let metrics = wharf_origin::metrics::install()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    wharf_origin::run(listener, config, Some(metrics), shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
