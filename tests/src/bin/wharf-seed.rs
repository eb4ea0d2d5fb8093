//! `wharf-seed`: generates a random image and pushes it to a registry.
//!
//! ```text
//! wharf-seed --registry http://127.0.0.1:5001 --repo library/demo --tag latest \
//!            [--layers 3x8MiB] [--format docker|oci] [--index]
//! ```
//!
//! Layers are valid gzip tars of random bytes with true `diff_ids` (the same
//! generator the end-to-end tests use, [`wharf_tests::images`]), so dockerd,
//! containerd and podman can unpack what they pull. The registry must accept
//! anonymous pushes over plain HTTP (a local Distribution). Prints the digest
//! of the pushed manifest (of the index with `--index`) on stdout.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use wharf_tests::images::{Format, ImageSpec, PlainRegistry};

#[derive(Parser, Debug)]
#[command(
    name = "wharf-seed",
    version,
    about = "Push a generated image to a registry"
)]
struct Args {
    /// Registry base URL (plain HTTP, anonymous pushes).
    #[arg(long)]
    registry: String,
    /// Repository to push to, e.g. `library/demo`.
    #[arg(long)]
    repo: String,
    /// Tag to push.
    #[arg(long, default_value = "latest")]
    tag: String,
    /// Layer content sizes: `COUNTxSIZE` (`3x8MiB`) or a comma-separated
    /// list (`1MiB,512KiB,100`); units B, KiB, MiB, GiB (also KB, MB, GB = powers of 1000).
    #[arg(long, default_value = "3x8MiB", value_parser = parse_layers)]
    layers: Layers,
    /// Manifest flavour.
    #[arg(long, value_enum, default_value_t = FormatArg::Docker)]
    format: FormatArg,
    /// Push a linux/amd64 + linux/arm64 index (manifest list) instead of a
    /// single image.
    #[arg(long)]
    index: bool,
    /// Scratch directory for generated layers (default: a temporary one).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// Layer content sizes, in bytes.
#[derive(Clone, Debug)]
struct Layers(Vec<u64>);

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    /// Docker schema 2 manifests / manifest lists.
    Docker,
    /// OCI manifests / indexes.
    Oci,
}

/// `3x8MiB` → three 8 MiB layers; `1MiB,2KiB` → one of each.
fn parse_layers(s: &str) -> Result<Layers, String> {
    parse_layer_list(s).map(Layers)
}

fn parse_layer_list(s: &str) -> Result<Vec<u64>, String> {
    let s = s.trim();
    if let Some((count, size)) = s.split_once(['x', 'X'])
        && !count.is_empty()
        && count.bytes().all(|b| b.is_ascii_digit())
    {
        let count: usize = count
            .parse()
            .map_err(|e| format!("layer count {count:?}: {e}"))?;
        if count == 0 {
            return Err("an image needs at least one layer".into());
        }
        return Ok(vec![parse_size(size)?; count]);
    }
    let sizes = s
        .split(',')
        .map(|p| parse_size(p.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if sizes.is_empty() {
        return Err("an image needs at least one layer".into());
    }
    Ok(sizes)
}

/// `8MiB`, `512KiB`, `1GiB`, `100` (bytes), `10MB` (10⁷).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?}: expected a number followed by B, KiB, MiB or GiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" | "m" => 1 << 20,
        "GiB" | "G" | "g" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "size {s:?}: unknown unit {other:?} (use B, KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !(args.registry.starts_with("http://") || args.registry.starts_with("https://")) {
        bail!("--registry {}: expected http://host:port", args.registry);
    }
    let scratch = match &args.work_dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("wharf-seed-").tempdir()?),
    };
    let work_dir = match (&args.work_dir, &scratch) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.path().to_owned(),
        (None, None) => unreachable!("a scratch directory is made when none is given"),
    };
    let registry = PlainRegistry {
        url: args.registry.clone(),
        work_dir,
    };
    let spec = ImageSpec {
        layers: args.layers.0.clone(),
        format: match args.format {
            FormatArg::Docker => Format::Docker,
            FormatArg::Oci => Format::Oci,
        },
    };
    let total: u64 = args.layers.0.iter().sum();
    eprintln!(
        "wharf-seed: pushing {}:{} ({} layer(s), {:.1} MiB of content{}) to {}",
        args.repo,
        args.tag,
        args.layers.0.len(),
        total as f64 / (1 << 20) as f64,
        if args.index {
            ", linux/amd64 + linux/arm64 index"
        } else {
            ""
        },
        args.registry
    );
    let digest = if args.index {
        spec.push_index(&registry, &args.repo, &args.tag)
            .await
            .with_context(|| format!("pushing an index to {}", args.registry))?
            .digest
    } else {
        spec.push(&registry, &args.repo, &args.tag)
            .await
            .with_context(|| format!("pushing an image to {}", args.registry))?
            .manifest_digest
    };
    println!("{digest}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_layer_lists_and_sizes() {
        assert_eq!(parse_layer_list("3x8MiB").unwrap(), vec![8 << 20; 3]);
        assert_eq!(
            parse_layer_list("1MiB,512KiB,100").unwrap(),
            vec![1 << 20, 512 << 10, 100]
        );
        assert_eq!(parse_layer_list("2x1GiB").unwrap(), vec![1 << 30; 2]);
        assert_eq!(parse_layer_list("10MB").unwrap(), vec![10_000_000]);
        assert!(parse_layer_list("0x1MiB").is_err());
        assert!(parse_layer_list("3xfoo").is_err());
        assert!(parse_layer_list("8 parsecs").is_err());
    }
}
