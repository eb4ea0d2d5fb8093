//! The result table: one [`Row`] per figure, rendered as Markdown, and the
//! count of targets met.

/// Whether a row meets its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A target, met.
    Pass,
    /// A target, missed.
    Fail,
    /// A figure reported beside the targets, not a target itself.
    Info,
    /// A "not slower than" target where the two figures differ by less than
    /// the run's resolution (the reason says how much): they cannot be told
    /// apart here, so the target is not missed. Counts as met, and the
    /// summary line says how many such ties there are.
    Tie(String),
    /// A target that cannot be measured yet; counts as not met.
    Pending(String),
    /// The measurement itself failed; counts as not met.
    Error,
}

impl Verdict {
    /// Pass when `ok`, fail otherwise.
    pub fn of(ok: bool) -> Verdict {
        if ok { Verdict::Pass } else { Verdict::Fail }
    }

    fn is_target(&self) -> bool {
        !matches!(self, Verdict::Info)
    }

    fn cell(&self) -> String {
        match self {
            Verdict::Pass => "pass".into(),
            Verdict::Tie(why) => format!("pass (tie: {why})"),
            Verdict::Fail => "**FAIL**".into(),
            Verdict::Info => "info".into(),
            Verdict::Pending(why) => format!("**pending** ({why})"),
            Verdict::Error => "**ERROR**".into(),
        }
    }
}

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// Issue item (`1`, `2`, `3a`, …).
    pub item: String,
    /// What is measured.
    pub metric: String,
    /// Wharf's figure.
    pub wharf: String,
    /// Distribution proxy's figure.
    pub dist: String,
    /// Pulling straight from the upstream (or the physical limit).
    pub direct: String,
    /// The ratio the target is about.
    pub ratio: String,
    /// The target.
    pub target: String,
    /// Met or not.
    pub verdict: Verdict,
}

impl Row {
    /// A row with every cell given.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        item: &str,
        metric: impl Into<String>,
        wharf: impl Into<String>,
        dist: impl Into<String>,
        direct: impl Into<String>,
        ratio: impl Into<String>,
        target: impl Into<String>,
        verdict: Verdict,
    ) -> Row {
        Row {
            item: item.into(),
            metric: metric.into(),
            wharf: wharf.into(),
            dist: dist.into(),
            direct: direct.into(),
            ratio: ratio.into(),
            target: target.into(),
            verdict,
        }
    }

    /// A figure reported beside the targets (no ratio, no target).
    pub fn info(
        item: &str,
        metric: impl Into<String>,
        wharf: impl Into<String>,
        dist: impl Into<String>,
        direct: impl Into<String>,
    ) -> Row {
        Row::new(
            item,
            metric,
            wharf,
            dist,
            direct,
            "—",
            "reported",
            Verdict::Info,
        )
    }

    /// A target whose measurement failed.
    pub fn error(item: &str, metric: &str, target: &str, err: &anyhow::Error) -> Row {
        let mut msg = format!("{err:#}").replace(['\n', '|'], " ");
        if msg.len() > 300 {
            let mut cut = 300;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
            msg.push('…');
        }
        Row::new(
            item,
            metric,
            format!("error: {msg}"),
            "",
            "",
            "",
            target,
            Verdict::Error,
        )
    }
}

/// Targets met, ties among them, and targets in all.
pub fn score(rows: &[Row]) -> (usize, usize, usize) {
    let targets = rows.iter().filter(|r| r.verdict.is_target()).count();
    let ties = rows
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Tie(_)))
        .count();
    let met = rows.iter().filter(|r| r.verdict == Verdict::Pass).count() + ties;
    (met, ties, targets)
}

/// Repeated timings of one system; the best is its figure.
#[derive(Clone, Debug, Default)]
pub struct Timings(Vec<std::time::Duration>);

impl Timings {
    /// Adds one timing.
    pub fn push(&mut self, t: std::time::Duration) {
        self.0.push(t);
    }

    /// The fastest (`Duration::MAX` when empty).
    pub fn best(&self) -> std::time::Duration {
        self.0
            .iter()
            .copied()
            .min()
            .unwrap_or(std::time::Duration::MAX)
    }

    /// How far the best would move had its luckiest run not happened: the
    /// second best over the best, minus one (0 with fewer than 2 runs).
    pub fn resolution(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort();
        match v.as_slice() {
            [best, second, ..] => second.as_secs_f64() / best.as_secs_f64().max(1e-9) - 1.0,
            _ => 0.0,
        }
    }
}

/// The verdict of "`ratio` ≤ `target`" between two sets of timings: a pass,
/// a tie when the excess is within the worse resolution of the sets
/// compared (`sets`), or a fail.
pub fn at_most(ratio: f64, target: f64, sets: &[&Timings]) -> Verdict {
    if ratio <= target {
        return Verdict::Pass;
    }
    let resolution = sets.iter().map(|t| t.resolution()).fold(0.0, f64::max);
    if ratio / target - 1.0 <= resolution {
        Verdict::Tie(format!(
            "{:+.1}% is within the run's resolution of {:.1}%, the spread between the best two rounds",
            (ratio / target - 1.0) * 100.0,
            resolution * 100.0
        ))
    } else {
        Verdict::Fail
    }
}

/// The Markdown table.
pub fn table(rows: &[Row]) -> String {
    let esc = |s: &str| s.replace('|', "\\|");
    let mut out = String::from(
        "| # | metric | Wharf | Distribution proxy | direct | ratio | target | result |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            esc(&r.item),
            esc(&r.metric),
            esc(&r.wharf),
            esc(&r.dist),
            esc(&r.direct),
            esc(&r.ratio),
            esc(&r.target),
            r.verdict.cell()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_targets_but_not_information_rows() {
        let rows = vec![
            Row::new("1", "a", "", "", "", "", "", Verdict::Pass),
            Row::new("1", "b", "", "", "", "", "", Verdict::Info),
            Row::new("2", "c", "", "", "", "", "", Verdict::Fail),
            Row::new("7", "d", "", "", "", "", "", Verdict::Pending("x".into())),
            Row::error("5", "e", "t", &anyhow::anyhow!("boom\nline|2")),
        ];
        assert_eq!(score(&rows), (1, 0, 4));
        let t = table(&rows);
        assert_eq!(t.lines().count(), 7);
        assert!(t.contains("error: boom line 2"), "{t}");
        assert!(t.contains("**pending** (x)"));
    }

    fn timings(ms: &[u64]) -> Timings {
        let mut t = Timings::default();
        for &m in ms {
            t.push(std::time::Duration::from_millis(m));
        }
        t
    }

    #[test]
    fn resolution_is_the_gap_between_the_best_two_runs() {
        assert_eq!(timings(&[]).best(), std::time::Duration::MAX);
        assert_eq!(timings(&[1000]).resolution(), 0.0);
        let t = timings(&[1100, 1000, 1020]);
        assert_eq!(t.best(), std::time::Duration::from_millis(1000));
        assert!((t.resolution() - 0.02).abs() < 1e-9);
    }

    #[test]
    fn at_most_passes_ties_within_the_resolution_and_fails_beyond() {
        let tight = timings(&[1000, 1001]);
        let loose = timings(&[1000, 1020]);
        assert_eq!(at_most(0.99, 1.0, &[&tight]), Verdict::Pass);
        assert_eq!(at_most(1.0, 1.0, &[&tight]), Verdict::Pass);
        assert!(matches!(
            at_most(1.015, 1.0, &[&tight, &loose]),
            Verdict::Tie(_)
        ));
        assert_eq!(at_most(1.015, 1.0, &[&tight]), Verdict::Fail);
        assert_eq!(at_most(1.03, 1.0, &[&tight, &loose]), Verdict::Fail);
        let rows = vec![
            Row::new(
                "3a",
                "a",
                "",
                "",
                "",
                "",
                "",
                at_most(1.015, 1.0, &[&loose]),
            ),
            Row::new("3b", "b", "", "", "", "", "", Verdict::Fail),
        ];
        assert_eq!(score(&rows), (1, 1, 2));
        assert!(table(&rows).contains("pass (tie: +1.5% is within"));
    }
}
