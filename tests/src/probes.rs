//! Probes of who may pull what (issue 12): send a request an anonymous or
//! differently-entitled client could send, record what came back and what
//! the upstreams saw, and report **every** leak at once.
//!
//! * [`Outcome`] is one answer, read whole: status, OCI error code, where a
//!   redirect points, and the sha256 of the body (so a probe can tell "served
//!   the private bytes" from "served something").
//! * [`Probes`] collects one row per probe (printed as a Markdown table, the
//!   "before/after" record of the fix) and every failed expectation; at the
//!   end [`Probes::finish`] prints the table and fails the test with the whole
//!   list, not just the first leak.
//! * [`Upstreams`] is the scene both the origin and the edge probes run in:
//!   a public and a private Distribution upstream with their images, and the
//!   origin's rules over them.

use std::fmt::Write as _;

use anyhow::Result;

use crate::images::SharedLayer;
use crate::upstream::Counts;
use crate::{ImageSpec, PushedImage, TestDir, Upstream, UpstreamAuth};

/// B's own (upstream) credentials, known only to the origin's private rules.
pub const B_USER: (&str, &str) = ("corp", "corp-upstream-password");
/// The public rule (→ A).
pub const PUBLIC_PREFIX: &str = "up";
/// The private rule nested under it on purpose (→ B).
pub const PRIVATE_PREFIX: &str = "up/acme";

/// Two real Distribution upstreams: A (public, anonymous) and B (private:
/// token auth, credentials only in the origin's rules), with the images the
/// probes ask for. Fields drop in declaration order.
pub struct Upstreams {
    /// The public upstream.
    pub a: Upstream,
    /// The private upstream.
    pub b: Upstream,
    /// B `app:v1` (`up/acme/app:v1`, `priv/app:v1`): layers [shared, private-only…].
    pub private: PushedImage,
    /// B `app:v2`: never pulled, so its blobs are cold.
    pub cold: PushedImage,
    /// A `pub:v1`.
    pub public: PushedImage,
    /// A `pub2:v1`: layers [shared].
    pub pub2: PushedImage,
    /// The layer in both `acme/app:v1` (B) and `pub2:v1` (A).
    pub shared: String,
}

impl Upstreams {
    /// Starts both upstreams under `dir` and pushes the images; the private
    /// and public images' own layers have these content sizes.
    pub async fn start(
        dir: &TestDir,
        private_layers: &[u64],
        public_layers: &[u64],
    ) -> Result<Self> {
        let a = Upstream::start_in(dir, "upstream-a", UpstreamAuth::Anonymous).await?;
        let users = vec![(B_USER.0.to_owned(), B_USER.1.to_owned())];
        let b = Upstream::start_in(dir, "upstream-b", UpstreamAuth::Token { users }).await?;
        let shared = SharedLayer::generate(&dir.sub("layers"), 20_000).await?;
        let private = ImageSpec::docker(private_layers)
            .push_with_shared(&b, "app", "v1", &[&shared])
            .await?;
        let cold = ImageSpec::docker(&[3000, 3100, 3200, 3300])
            .push(&b, "app", "v2")
            .await?;
        let public = ImageSpec::docker(public_layers)
            .push(&a, "pub", "v1")
            .await?;
        let pub2 = ImageSpec::docker(&[])
            .push_with_shared(&a, "pub2", "v1", &[&shared])
            .await?;
        Ok(Upstreams {
            a,
            b,
            private,
            cold,
            public,
            pub2,
            shared: shared.digest().to_owned(),
        })
    }

    /// The origin's `[[rule]]` tables: `up` → A (public), `up/acme` → B
    /// (private), `priv` → B (private).
    pub fn rules_toml(&self) -> String {
        let (au, bu) = (self.a.url(), self.b.url());
        let (bn, bp) = B_USER;
        format!(
            r#"
[[rule]]
prefix = "{PUBLIC_PREFIX}"
upstream = "{au}"

[[rule]]
prefix = "{PRIVATE_PREFIX}"
upstream = "{bu}"
username = "{bn}"
password = "{bp}"
private = true

[[rule]]
prefix = "priv"
upstream = "{bu}"
username = "{bn}"
password = "{bp}"
private = true
"#
        )
    }
}

/// One answer to a probe.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// HTTP status.
    pub status: u16,
    /// `errors[0].code` when the body is an OCI error.
    pub code: Option<String>,
    /// `Location` of a redirect.
    pub location: Option<String>,
    /// Body length.
    pub len: usize,
    /// `sha256:…` of the body.
    pub body_digest: String,
    /// The start of the body, for the table.
    pub excerpt: String,
}

impl Outcome {
    /// Reads a response whole (probes only ever get small bodies, or the one
    /// blob a leaking probe is served).
    pub async fn read(resp: reqwest::Response) -> Outcome {
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.bytes().await.unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let code = v["errors"][0]["code"].as_str().map(str::to_owned);
        let text = String::from_utf8_lossy(&body[..body.len().min(160)]).into_owned();
        Outcome {
            status,
            code,
            location,
            len: body.len(),
            body_digest: crate::sha256_digest(&body),
            excerpt: text.replace(['\n', '|'], " "),
        }
    }

    /// A transport error, as an outcome (status 0).
    pub fn failed(e: &reqwest::Error) -> Outcome {
        Outcome {
            status: 0,
            code: None,
            location: None,
            len: 0,
            body_digest: String::new(),
            excerpt: format!("request failed: {e}"),
        }
    }

    /// Sends `req` and reads the answer.
    pub async fn send(req: reqwest::RequestBuilder) -> Outcome {
        match req.send().await {
            Ok(r) => Outcome::read(r).await,
            Err(e) => Outcome::failed(&e),
        }
    }

    /// 401, 403 or 404, with an OCI error body (`{"errors":[{"code":…}]}`)
    /// unless it answers a `HEAD`.
    pub fn is_oci_refusal(&self, head: bool) -> bool {
        matches!(self.status, 401 | 403 | 404) && (head || self.code.is_some())
    }

    /// True if the body is exactly the blob or manifest `digest`.
    pub fn served(&self, digest: &str) -> bool {
        self.status == 200 && self.body_digest == digest
    }

    /// One line for the table: status, code or what was served.
    pub fn summary(&self) -> String {
        let mut s = self.status.to_string();
        if let Some(code) = &self.code {
            let _ = write!(s, " {code}");
        } else if let Some(loc) = &self.location {
            let _ = write!(s, " → {}", shorten(loc));
        } else if self.status == 200 && self.len > 0 {
            let _ = write!(
                s,
                " ({} bytes, {})",
                self.len,
                short_digest(&self.body_digest)
            );
        } else if self.status == 200 {
            s.push_str(" (empty body)");
        } else if !self.excerpt.is_empty() {
            let _ = write!(s, " {}", self.excerpt);
        }
        s
    }
}

/// `sha256:0123456789ab…`.
pub fn short_digest(d: &str) -> String {
    d.chars().take(19).collect::<String>() + "…"
}

fn shorten(url: &str) -> String {
    // Presigned URLs are long; the host and path say where they point.
    match url.split_once('?') {
        Some((base, query)) => {
            let params: Vec<&str> = query
                .split('&')
                .map(|kv| kv.split('=').next().unwrap_or(kv))
                .collect();
            format!("{base}?{}", params.join("&"))
        }
        None => url.to_owned(),
    }
}

/// The probes of one test.
pub struct Probes {
    test: String,
    rows: Vec<(String, String, Vec<String>)>,
}

impl Probes {
    /// No probe yet.
    pub fn new(test: &str) -> Probes {
        Probes {
            test: test.to_owned(),
            rows: Vec::new(),
        }
    }

    /// Records a probe and what it got; failures are added with
    /// [`Probes::fail`] / the `expect_*` helpers right after.
    pub fn record(&mut self, probe: &str, result: String) {
        self.rows.push((probe.to_owned(), result, Vec::new()));
    }

    /// Adds a failed expectation to the last probe.
    pub fn fail(&mut self, why: String) {
        match self.rows.last_mut() {
            Some(row) => row.2.push(why),
            None => self.rows.push(("(setup)".into(), String::new(), vec![why])),
        }
    }

    /// Fails the last probe unless `ok`.
    pub fn expect(&mut self, ok: bool, why: impl FnOnce() -> String) {
        if !ok {
            self.fail(why());
        }
    }

    /// Records `outcome` for `probe` and expects an OCI refusal
    /// (401/403/404 with an error body).
    pub fn refused(&mut self, probe: &str, outcome: &Outcome, head: bool) {
        self.record(probe, outcome.summary());
        self.expect(outcome.is_oci_refusal(head), || {
            format!(
                "expected an OCI 401/403/404, got {}",
                describe_leak(outcome)
            )
        });
    }

    /// Expects `counts` (what an upstream saw during the probe) to hold at
    /// most `max` requests.
    pub fn upstream_at_most(&mut self, upstream: &str, counts: &Counts, max: u64) {
        let n = counts.total();
        self.expect(n <= max, || {
            format!("{upstream} got {n} request(s), at most {max} allowed:\n{counts}")
        });
    }

    /// The leaks so far (probe: reasons).
    pub fn failures(&self) -> Vec<String> {
        self.rows
            .iter()
            .filter(|r| !r.2.is_empty())
            .map(|r| format!("{}: {}", r.0, r.2.join("; ")))
            .collect()
    }

    /// The table: probe, result, verdict.
    pub fn table(&self) -> String {
        let mut t = format!(
            "### {}\n| probe | result | verdict |\n|---|---|---|\n",
            self.test
        );
        for (probe, result, fails) in &self.rows {
            let verdict = if fails.is_empty() {
                "ok".to_owned()
            } else {
                format!("LEAK: {}", fails.join("; ").replace(['\n', '|'], " "))
            };
            let _ = writeln!(t, "| {probe} | {result} | {verdict} |");
        }
        t
    }

    /// Prints the table and fails with every failed expectation.
    pub fn finish(self) {
        eprintln!("{}", self.table());
        let failures = self.failures();
        assert!(
            failures.is_empty(),
            "{} of {} probe(s) leaked or misbehaved:\n  - {}",
            failures.len(),
            self.rows.len(),
            failures.join("\n  - ")
        );
    }
}

/// What a non-refusal amounted to.
fn describe_leak(o: &Outcome) -> String {
    match (o.status, &o.location) {
        (200, _) => format!(
            "200 with {} bytes ({})",
            o.len,
            short_digest(&o.body_digest)
        ),
        (300..=399, Some(loc)) => format!("{} redirect to {}", o.status, shorten(loc)),
        _ => o.summary(),
    }
}
