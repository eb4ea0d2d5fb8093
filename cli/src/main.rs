//! `wharf`: the operators' command, a client of the origins' admin API
//! (`/admin/…`, see `origin/src/handlers/admin.rs`).
//!
//! ```text
//! wharf [--origin URL]… [--regions FILE (--region R | --all-regions)] [--output text|json] COMMAND
//!   warm IMAGE… [--platform P]… [--detach]   hydrate images ahead of a rollout (a job)
//!   jobs [ID] [--cancel]                      list jobs, show one, cancel one
//!   status                                    each region: health, circuits, hit ratio, savings, storage
//!   purge IMAGE                               remove an image now (its bytes go at the next GC)
//!   gc [--dry-run]                            one retention pass now
//! ```
//!
//! The token is `WHARF_ADMIN_TOKEN` (or `--token`). Exit status: 0 done,
//! 1 the operation failed (a job failed, the origin refused), 2 bad usage
//! or configuration, 3 an origin could not be reached.
//!
//! # Layout
//! - `main.rs`: flags, which origins, dispatch, exit codes.
//! - `admin.rs`: the HTTP client of the admin API and its errors.
//! - `progress.rs`: `wharf warm`'s progress bars.
//! - `render.rs`: text output.

mod admin;
mod progress;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use wharf_core::ImageRef;
use wharf_core::admin::{JobState, PurgeRequest, WarmRequest};

use crate::admin::{Admin, Failure};

/// Command-line flags.
#[derive(Parser, Debug)]
#[command(
    name = "wharf",
    version,
    about = "Operate Wharf origins: warm, jobs, status, purge, gc"
)]
struct Cli {
    /// An origin's base URL (repeat for several regions).
    #[arg(
        long = "origin",
        env = "WHARF_ORIGIN",
        value_delimiter = ',',
        global = true
    )]
    origins: Vec<String>,
    /// The region list (`infra/regions.toml`): pick origins by region.
    #[arg(long, env = "WHARF_REGIONS_FILE", global = true)]
    regions: Option<PathBuf>,
    /// With `--regions`: this region's origin.
    #[arg(long, global = true, conflicts_with = "all_regions")]
    region: Option<String>,
    /// With `--regions`: every region's origin.
    #[arg(long, global = true)]
    all_regions: bool,
    /// The admin API's token.
    #[arg(long, env = "WHARF_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Text for people, JSON for scripts.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Hydrate every manifest and blob of IMAGEs (`name:tag`, `name@digest`).
    Warm {
        /// Images, as clients pull them from the origin.
        #[arg(required = true)]
        images: Vec<String>,
        /// Warm only these platforms of an index (`linux/arm64`).
        #[arg(long = "platform")]
        platforms: Vec<String>,
        /// Every platform of an index (the default).
        #[arg(long, conflicts_with = "platforms")]
        all_platforms: bool,
        /// Print the job id and return; `wharf jobs ID` follows it.
        #[arg(long)]
        detach: bool,
    },
    /// List the jobs, or show (or cancel) one.
    Jobs {
        /// A job id.
        id: Option<String>,
        /// Cancel the job.
        #[arg(long, requires = "id")]
        cancel: bool,
        /// Follow the job until it finishes.
        #[arg(long, requires = "id")]
        follow: bool,
    },
    /// Each region: health, circuits, hit ratio, bytes and requests saved,
    /// budgets, storage per rule, replication backlog.
    Status,
    /// Remove an image (`name:tag` or `name@digest`) from the region now.
    Purge {
        /// The image.
        image: String,
    },
    /// Run a retention pass now.
    Gc {
        /// List what would be evicted and deleted; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wharf: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("wharf: {failure}");
            failure.exit_code()
        }
    }
}

/// The origins the flags name, with their region's name when known.
fn origins(cli: &Cli) -> Result<Vec<(Option<String>, String)>, Failure> {
    let mut out: Vec<(Option<String>, String)> = cli
        .origins
        .iter()
        .map(|o| (None, o.trim_end_matches('/').to_owned()))
        .collect();
    if let Some(path) = &cli.regions {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::Usage(format!("--regions {}: {e}", path.display())))?;
        #[derive(serde::Deserialize)]
        struct File {
            regions: Vec<wharf_core::region::RegionSpec>,
        }
        let file: File = toml::from_str(&text)
            .map_err(|e| Failure::Usage(format!("--regions {}: {e}", path.display())))?;
        let chosen: Vec<_> = file
            .regions
            .iter()
            .filter(|r| cli.all_regions || cli.region.as_deref() == Some(r.name.as_str()))
            .collect();
        if chosen.is_empty() {
            let names: Vec<_> = file.regions.iter().map(|r| r.name.as_str()).collect();
            return Err(Failure::Usage(format!(
                "--regions: pass --region NAME ({}) or --all-regions",
                names.join(", ")
            )));
        }
        for r in chosen {
            let origin = r.origins().into_iter().next().ok_or_else(|| {
                Failure::Usage(format!(
                    "region {} lists no origin in {}",
                    r.name,
                    path.display()
                ))
            })?;
            out.push((
                Some(r.name.clone()),
                origin.trim_end_matches('/').to_owned(),
            ));
        }
    } else if cli.region.is_some() || cli.all_regions {
        return Err(Failure::Usage(
            "--region and --all-regions pick from the region list: pass --regions infra/regions.toml".into(),
        ));
    }
    if out.is_empty() {
        out.push((None, "http://127.0.0.1:5000".into()));
    }
    Ok(out)
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let token = cli.token.clone().ok_or_else(|| {
        Failure::Usage(
            "no admin token: set WHARF_ADMIN_TOKEN (the origin's [admin] token) or pass --token"
                .into(),
        )
    })?;
    let admins: Vec<Admin> = origins(&cli)?
        .into_iter()
        .map(|(region, url)| Admin::new(region, url, &token))
        .collect::<Result<_, _>>()?;
    let json = cli.output == Output::Json;
    match cli.command {
        Command::Warm {
            images,
            platforms,
            all_platforms: _,
            detach,
        } => warm(&admins, WarmRequest { images, platforms }, detach, json).await,
        Command::Jobs { id, cancel, follow } => match id {
            None => list_jobs(&admins, json).await,
            Some(id) => job(&admins[0], &id, cancel, follow, json).await,
        },
        Command::Status => status(&admins, json).await,
        Command::Purge { image } => purge(&admins, &image, json).await,
        Command::Gc { dry_run } => gc(&admins, dry_run, json).await,
    }
}

fn check_image(image: &str) -> Result<(), Failure> {
    ImageRef::parse(image)
        .map(drop)
        .map_err(|e| Failure::Usage(format!("{image:?}: {e} (write name:tag or name@sha256:…)")))
}

fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// `wharf warm`: one job per origin, followed unless detached.
async fn warm(
    admins: &[Admin],
    request: WarmRequest,
    detach: bool,
    json: bool,
) -> Result<ExitCode, Failure> {
    for image in &request.images {
        check_image(image)?;
    }
    let mut jobs = Vec::new();
    for admin in admins {
        jobs.push((admin, admin.start_warm(&request).await?));
    }
    if detach {
        if json {
            let ids: Vec<_> = jobs
                .iter()
                .map(|(a, j)| serde_json::json!({"origin": a.url(), "region": a.region(), "id": j.id}))
                .collect();
            print_json(&ids);
        } else {
            for (a, j) in &jobs {
                println!(
                    "{} {}  (follow: wharf --origin {} jobs {} --follow)",
                    a.label(),
                    j.id,
                    a.url(),
                    j.id
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let finished = progress::follow(&jobs, !json).await?;
    if json {
        print_json(&finished);
    } else {
        for ((admin, _), job) in jobs.iter().zip(&finished) {
            render::job_summary(admin.label(), job);
        }
    }
    Ok(exit_for(finished.iter().map(|j| j.state)))
}

/// `wharf jobs`.
async fn list_jobs(admins: &[Admin], json: bool) -> Result<ExitCode, Failure> {
    let mut all = Vec::new();
    for admin in admins {
        all.push((admin.label(), admin.jobs().await?));
    }
    if json {
        let v: Vec<_> = all.iter().flat_map(|(_, js)| js).collect();
        print_json(&v);
    } else {
        render::jobs(&all);
    }
    Ok(ExitCode::SUCCESS)
}

/// `wharf jobs ID [--cancel | --follow]`.
async fn job(
    admin: &Admin,
    id: &str,
    cancel: bool,
    follow: bool,
    json: bool,
) -> Result<ExitCode, Failure> {
    let job = if cancel {
        admin.cancel(id).await?
    } else if follow {
        let started = admin.job(id).await?;
        progress::follow(&[(admin, started)], !json)
            .await?
            .remove(0)
    } else {
        admin.job(id).await?
    };
    if json {
        print_json(&job);
    } else {
        render::job_summary(admin.label(), &job);
    }
    Ok(exit_for(std::iter::once(job.state).filter(|_| !cancel)))
}

/// `wharf status`.
async fn status(admins: &[Admin], json: bool) -> Result<ExitCode, Failure> {
    let mut all = Vec::new();
    for admin in admins {
        all.push((admin.label(), admin.status().await?));
    }
    if json {
        let v: Vec<_> = all.iter().map(|(_, s)| s).collect();
        print_json(&v);
    } else {
        render::status(&all);
    }
    Ok(ExitCode::SUCCESS)
}

/// `wharf purge IMAGE`.
async fn purge(admins: &[Admin], image: &str, json: bool) -> Result<ExitCode, Failure> {
    check_image(image)?;
    for admin in admins {
        let report = admin
            .purge(&PurgeRequest {
                image: image.to_owned(),
            })
            .await?;
        if json {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
        } else {
            render::purge(admin.label(), image, &report);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `wharf gc [--dry-run]`.
async fn gc(admins: &[Admin], dry_run: bool, json: bool) -> Result<ExitCode, Failure> {
    for admin in admins {
        let report = admin.gc(dry_run).await?;
        if json {
            print_json(&report);
        } else {
            render::gc(admin.label(), &report);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// 0 when every job is done, else 1.
fn exit_for(states: impl Iterator<Item = JobState>) -> ExitCode {
    let mut ok = true;
    for s in states {
        ok &= s == JobState::Done;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// How often a followed job is polled.
pub const POLL: Duration = Duration::from_millis(250);
