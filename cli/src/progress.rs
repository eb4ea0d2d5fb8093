//! Following warm jobs: polls each origin's job until it finishes, with a
//! progress bar per blob and one for each job's bytes (with bytes/s).
//! `indicatif` hides the bars when stderr is not a terminal; Ctrl-C stops
//! following, not the job (it runs in the origin).

use std::collections::HashMap;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use wharf_core::admin::{JobProgress, JobState};
use wharf_core::status::short_digest;

use crate::POLL;
use crate::admin::{Admin, Failure};

struct Bars {
    multi: MultiProgress,
    overall: Vec<ProgressBar>,
    blobs: HashMap<(usize, String), ProgressBar>,
}

impl Bars {
    fn new(jobs: &[(&Admin, JobProgress)], shown: bool) -> Bars {
        let target = if shown {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let style = ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let overall = jobs
            .iter()
            .map(|(admin, job)| {
                let bar = multi.add(ProgressBar::new(job.bytes_total.max(1)));
                bar.set_style(style.clone());
                bar.set_prefix(admin.label().to_owned());
                bar.set_message(format!("job {}", job.id));
                bar
            })
            .collect();
        Bars {
            multi,
            overall,
            blobs: HashMap::new(),
        }
    }

    fn update(&mut self, i: usize, job: &JobProgress) {
        let bar = &self.overall[i];
        bar.set_length(job.bytes_total.max(1));
        bar.set_position(job.bytes_done);
        let style =
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        for blob in &job.blobs {
            let key = (i, blob.digest.clone());
            let b = self.blobs.entry(key).or_insert_with(|| {
                let b = self.multi.add(ProgressBar::new(blob.size.max(1)));
                b.set_style(style.clone());
                b.set_prefix(short_digest(&blob.digest));
                b
            });
            b.set_position(blob.done.min(blob.size.max(1)));
            b.set_message(blob.state.clone());
            if matches!(blob.state.as_str(), "done" | "stored" | "failed") && !b.is_finished() {
                b.finish();
            }
        }
        if job.state != JobState::Running {
            bar.finish_with_message(format!("job {} {:?}", job.id, job.state).to_lowercase());
        }
    }
}

/// Polls every job until each has finished; returns their last progress.
pub async fn follow(
    jobs: &[(&Admin, JobProgress)],
    bars: bool,
) -> Result<Vec<JobProgress>, Failure> {
    let mut shown = Bars::new(jobs, bars);
    let mut latest: Vec<JobProgress> = jobs.iter().map(|(_, j)| j.clone()).collect();
    let polling = async {
        loop {
            for (i, (admin, _)) in jobs.iter().enumerate() {
                if latest[i].state == JobState::Running {
                    latest[i] = admin.job(&latest[i].id).await?;
                }
                shown.update(i, &latest[i]);
            }
            if latest.iter().all(|j| j.state != JobState::Running) {
                return Ok::<_, Failure>(());
            }
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::select! {
        done = polling => {
            done?;
            Ok(latest)
        }
        _ = tokio::signal::ctrl_c() => {
            let hints: Vec<String> = jobs
                .iter()
                .map(|(a, j)| format!("wharf --origin {} jobs {} --follow", a.url(), j.id))
                .collect();
            Err(Failure::Refused(format!(
                "stopped following; the job goes on in the origin: {}",
                hints.join("; ")
            )))
        }
    }
}
