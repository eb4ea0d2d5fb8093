//! The results file: the machine, the table, the summary line and how to
//! read them, written to `bench/results/latest.md` (and a per-variant copy).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::Variant;

pub(crate) fn markdown(
    v: &Variant,
    origin_bin: &Path,
    machine: &[(String, String)],
    table: &str,
    summary: &str,
    took: Duration,
) -> String {
    let command = if v.name == "full" {
        "cargo run --release -p wharf-bench"
    } else {
        "cargo run -p wharf-bench -- --short"
    };
    let mut md = format!(
        "# Wharf benchmark — {} variant\n\n`{command}` (took {:.0} s; origin binary `{}`)\n\n",
        v.name,
        took.as_secs_f64(),
        origin_bin.display()
    );
    md.push_str("| machine | |\n|---|---|\n");
    for (k, val) in machine {
        md.push_str(&format!("| {k} | {} |\n", val.replace('|', "\\|")));
    }
    md.push('\n');
    md.push_str(table);
    md.push('\n');
    md.push_str(summary);
    md.push_str("\n\n");
    md.push_str(METHOD);
    md
}

pub(crate) const METHOD: &str = "\
How to read it:

* All three systems run in the same process tree on the same generated
  images: the upstream is Distribution (`docker-registry`) with filesystem
  storage; Wharf, the Distribution proxy (`proxy.remoteurl`) and direct pulls
  each reach it through a counting proxy of their own (same extra hop for all).
* Times are wall clock of real clients: skopeo (`copy docker://… dir:` on
  tmpfs) for pull times; the harness's verifying reqwest puller (every blob
  hashed) for herds; `curl -o /dev/null` for throughput.
* RSS is `VmHWM` from `/proc/<pid>/status`, reset (`clear_refs` = 5) right
  before the herd; CPU is `utime + stime` from `/proc/<pid>/stat`. Wharf's
  figures include its embedded object store (same process).
* Item 6 targets are ours (the issue names no number): a cached blob through
  the origin at ≥ 0.80 × a plain download from its store, the origin's sha256
  (the `sha2` crate, measured in the bench binary, same crate and profile)
  at ≥ 0.90 × the faster of `sha256sum` and `openssl dgst -sha256` (coreutils
  may not use the CPU's SHA extensions; OpenSSL does).
* Pending rows (the edge) count as targets not met.
";

pub(crate) fn write(out: &Path, variant: &str, md: &str) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, md).with_context(|| format!("writing {}", out.display()))?;
    let copy = out.with_file_name(format!("latest-{variant}.md"));
    std::fs::write(&copy, md).with_context(|| format!("writing {}", copy.display()))?;
    Ok(())
}
