//! Logging: `tracing` events as JSON lines on the Workers console (Workers
//! Logs and `wrangler tail`/`wrangler dev` show and index them), and a panic
//! hook that logs the panic before the runtime resets the instance.
//!
//! No timestamps (the platform adds them; `SystemTime::now` panics on wasm32)
//! and no env-filter (its regex engine would dominate the bundle): the level
//! is fixed at `INFO`.

use std::io;

use tracing_subscriber::fmt::MakeWriter;

/// Buffers one formatted event and writes it to the console on drop.
#[derive(Default)]
pub struct ConsoleLine(Vec<u8>);

impl io::Write for ConsoleLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleLine {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let line = String::from_utf8_lossy(&self.0);
            worker::console_log!("{}", line.trim_end());
        }
    }
}

struct Console;

impl<'a> MakeWriter<'a> for Console {
    type Writer = ConsoleLine;

    fn make_writer(&'a self) -> ConsoleLine {
        ConsoleLine::default()
    }
}

/// Installs the subscriber and the panic hook (once per isolate).
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .json()
        .without_time()
        .with_max_level(tracing::Level::INFO)
        .with_writer(Console)
        .try_init();
    std::panic::set_hook(Box::new(|info| {
        worker::console_error!(
            "wharf-edge panicked (a bug: every error should be an OCI response): {info}"
        );
    }));
}
