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

/// `(met, targets)`.
pub fn score(rows: &[Row]) -> (usize, usize) {
    let targets = rows.iter().filter(|r| r.verdict.is_target()).count();
    let met = rows.iter().filter(|r| r.verdict == Verdict::Pass).count();
    (met, targets)
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
        assert_eq!(score(&rows), (1, 4));
        let t = table(&rows);
        assert_eq!(t.lines().count(), 7);
        assert!(t.contains("error: boom line 2"), "{t}");
        assert!(t.contains("**pending** (x)"));
    }
}
