//! Requests from the edge to the region's origin.
//!
//! The edge always asks with the **canonical** name (`prefix/upstream-repo`,
//! no `?ns=`), so the origin resolves exactly the rule the edge resolved, and
//! with a short-lived token of its own (`sub = "wharf-edge"`) for that name
//! (and the rule, when private): the origin verifies it with the shared key,
//! like any client's. Every request has a timeout; a timeout or a connection
//! error is [`Error::OriginUnreachable`], which callers turn into stale serving
//! where the freshness policy allows it.

use std::time::Duration;

use futures_util::future::{Either, select};
use wharf_core::token::{Access, Claims, issue};
use wharf_core::{ErrorCode, RepositoryName};
use worker::{AbortController, Delay, Fetch, Headers, Method, Request, RequestInit, Response};

use crate::config::Config;
use crate::error::Error;

/// `User-Agent` of the edge's requests.
pub const USER_AGENT: &str = concat!("wharf-edge/", env!("CARGO_PKG_VERSION"));

/// A bearer token for the edge's own request for `name`.
pub fn edge_token(
    config: &Config,
    name: &RepositoryName,
    private_rule: Option<&str>,
    now: u64,
) -> String {
    issue(
        &config.key,
        &Claims {
            iss: config.global_host.clone(),
            sub: "wharf-edge".into(),
            aud: config.global_host.clone(),
            exp: now + 60,
            nbf: now,
            iat: now,
            access: vec![Access {
                resource_type: "repository".into(),
                name: name.as_str().to_owned(),
                actions: vec!["pull".into()],
            }],
            private_rules: private_rule.map(|p| vec![p.to_owned()]).unwrap_or_default(),
        },
    )
}

/// Sends `method url` with `headers`, giving up after `timeout`.
pub async fn send(
    region: &str,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response, Error> {
    let unreachable = |cause: String| Error::OriginUnreachable {
        region: region.to_owned(),
        cause,
    };
    let h = Headers::new();
    for (k, v) in headers {
        h.set(k, v)
            .map_err(|e| unreachable(format!("header {k}: {e}")))?;
    }
    let _ = h.set("User-Agent", USER_AGENT);
    let mut init = RequestInit::new();
    init.with_method(method).with_headers(h);
    let request =
        Request::new_with_init(url, &init).map_err(|e| unreachable(format!("{url}: {e}")))?;
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(request);
    let sending = fetch.send_with_signal(&signal);
    let delay = Delay::from(timeout);
    futures_util::pin_mut!(sending, delay);
    match select(sending, delay).await {
        Either::Left((Ok(response), _)) => Ok(response),
        Either::Left((Err(e), _)) => Err(unreachable(format!("{url}: {e}"))),
        Either::Right(_) => {
            controller.abort();
            Err(unreachable(format!("{url}: no answer within {timeout:?}")))
        }
    }
}

/// Turns a non-success origin response into [`Error::Origin`], keeping its
/// OCI code and message (or `UNAVAILABLE` when the body is not an OCI error).
pub async fn error_from(mut response: Response, region: &str) -> Error {
    let status = response.status_code();
    let body = response.bytes().await.unwrap_or_default();
    if status == 401 {
        // Passing a 401 on would send the client back to the edge's /token in
        // a loop: this is the operator's problem, not the client's.
        return Error::Origin {
            status: 503,
            code: ErrorCode::Unavailable,
            message: format!(
                "the origin of region `{region}` refused the edge's token: WHARF_TOKEN_KEY must be the origin's token key"
            ),
        };
    }
    match wharf_core::error::parse_error_body(&body) {
        Some((code, message)) => Error::Origin {
            status,
            code: ErrorCode::parse(&code).unwrap_or(ErrorCode::Unknown),
            message: if message.is_empty() {
                format!("origin of region `{region}`: {code}")
            } else {
                message
            },
        },
        None => Error::Origin {
            status: if status >= 500 { 503 } else { status },
            code: if status >= 500 {
                ErrorCode::Unavailable
            } else {
                ErrorCode::Unknown
            },
            message: format!("origin of region `{region}` answered HTTP {status}"),
        },
    }
}
