//! The admin API's client: one origin, its token, and errors that say what
//! to do.

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wharf_core::admin::{
    GcReport, JobProgress, PurgeReport, PurgeRequest, RegionStatus, WarmRequest,
};

/// Why a command failed, and its exit status.
#[derive(Debug)]
pub enum Failure {
    /// Bad flags or configuration (2).
    Usage(String),
    /// The origin could not be reached (3).
    Unreachable(String),
    /// The origin answered with an error (1).
    Refused(String),
}

impl Failure {
    /// The process's exit status for this failure.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Failure::Refused(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Unreachable(_) => 3,
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(m) | Failure::Unreachable(m) | Failure::Refused(m) => f.write_str(m),
        }
    }
}

/// One origin's admin API.
pub struct Admin {
    region: Option<String>,
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Admin {
    /// A client of the origin at `url` (`region`: its region's name, for
    /// output).
    pub fn new(region: Option<String>, url: String, token: &str) -> Result<Admin, Failure> {
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(Failure::Usage(format!(
                "--origin {url}: expected an http:// or https:// URL"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| Failure::Usage(format!("HTTP client: {e}")))?;
        Ok(Admin {
            region,
            url,
            token: token.to_owned(),
            http,
        })
    }

    /// Its base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its region's name, if known.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// How output names it: the region, else the URL.
    pub fn label(&self) -> &str {
        self.region.as_deref().unwrap_or(&self.url)
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Failure> {
        let url = format!("{}{path}", self.url);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            request = request.json(b);
        }
        let response = request.send().await.map_err(|e| {
            Failure::Unreachable(format!(
                "{} is unreachable ({e}); check --origin and that the origin runs",
                self.url
            ))
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| text.chars().take(200).collect());
            let hint = match status {
                StatusCode::UNAUTHORIZED => " (is WHARF_ADMIN_TOKEN the origin's [admin] token?)",
                StatusCode::NOT_FOUND if message.is_empty() => {
                    " (an origin without the admin API? it needs WHARF_ADMIN_TOKEN set)"
                }
                _ => "",
            };
            return Err(Failure::Refused(format!(
                "{} answered {}: {message}{hint}",
                self.label(),
                status.as_u16()
            )));
        }
        serde_json::from_str(&text).map_err(|e| {
            Failure::Refused(format!(
                "{} answered something this wharf does not read ({e}); are the versions the same?",
                self.label()
            ))
        })
    }

    /// `POST /admin/jobs`.
    pub async fn start_warm(&self, request: &WarmRequest) -> Result<JobProgress, Failure> {
        self.call(Method::POST, "/admin/jobs", Some(request)).await
    }

    /// `GET /admin/jobs/{id}`.
    pub async fn job(&self, id: &str) -> Result<JobProgress, Failure> {
        self.call::<(), _>(Method::GET, &format!("/admin/jobs/{id}"), None)
            .await
    }

    /// `GET /admin/jobs`.
    pub async fn jobs(&self) -> Result<Vec<JobProgress>, Failure> {
        self.call::<(), _>(Method::GET, "/admin/jobs", None).await
    }

    /// `DELETE /admin/jobs/{id}`.
    pub async fn cancel(&self, id: &str) -> Result<JobProgress, Failure> {
        self.call::<(), _>(Method::DELETE, &format!("/admin/jobs/{id}"), None)
            .await
    }

    /// `GET /admin/status`.
    pub async fn status(&self) -> Result<RegionStatus, Failure> {
        self.call::<(), _>(Method::GET, "/admin/status", None).await
    }

    /// `POST /admin/purge`.
    pub async fn purge(&self, request: &PurgeRequest) -> Result<PurgeReport, Failure> {
        self.call(Method::POST, "/admin/purge", Some(request)).await
    }

    /// `POST /admin/gc`.
    pub async fn gc(&self, dry_run: bool) -> Result<GcReport, Failure> {
        let path = format!("/admin/gc?dry_run={dry_run}");
        self.call::<(), _>(Method::POST, &path, None).await
    }
}
