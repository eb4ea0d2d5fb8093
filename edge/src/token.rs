//! `/v2/`, `/token`, and the bearer check every other route makes.
//!
//! * `/v2/` answers `401` with `Bearer realm="<scheme>://<host the client
//!   used>/token",service="<global host>"` unless a valid token is presented.
//!   The realm follows the hostname, the service never changes: a token from
//!   `eu.<global>` works on `<global>` and at every origin (ACR's regional
//!   endpoints behave the same).
//! * `/token` (GET with optional Basic auth, or containerd's OAuth2 POST form)
//!   grants `pull` on each requested repository whose rule is public, and on
//!   private rules only to a user allowed to pull them. Like Docker Hub, a scope
//!   that is not granted is left out of the token rather than failing the token
//!   request; the registry request then answers `401` with
//!   `error="insufficient_scope"`. Wrong credentials fail at once (`401`);
//!   after repeated failures from one client or for one user, attempts are
//!   refused with `429` and `Retry-After` before the password is checked
//!   ([`crate::signin`]).

use wharf_core::pull_auth::{Grant, PullAuthError, PullCheck, check};
use wharf_core::ticket::TicketRule;
use wharf_core::token::{
    Access, Claims, Scope, bearer_challenge, issue, parse_basic, parse_bearer, verify_unscoped,
};
use wharf_core::urlencode::decode_query_component;
use wharf_core::utc::UtcDateTime;
use wharf_core::{RepositoryName, Resolved, TokenResponse};
use worker::{Method, Request, Response};

use crate::config::User;
use crate::ctx::Ctx;
use crate::error::Error;
use crate::http::response;
use crate::signin;

/// Largest `/token` POST body read (an OAuth2 form is a few hundred bytes).
const MAX_FORM_BYTES: usize = 16 * 1024;

fn challenge(ctx: &Ctx<'_>, scope: Option<&Scope>, error: Option<&str>) -> String {
    bearer_challenge(&ctx.realm(), &ctx.config.global_host, scope, error)
}

/// `GET /v2/`: `200 {}` with a valid token, else the challenge.
pub fn base(ctx: &Ctx<'_>) -> Result<Response, Error> {
    let Some(token) = ctx
        .header("Authorization")
        .and_then(|h| parse_bearer(&h).map(str::to_owned))
    else {
        return Err(Error::Unauthenticated {
            challenge: challenge(ctx, None, None),
        });
    };
    verify_unscoped(
        &ctx.config.key,
        &token,
        &ctx.config.global_host,
        ctx.now_secs(),
    )
    .map_err(|source| Error::Token {
        challenge: challenge(ctx, None, Some(source.challenge_error())),
        source,
    })?;
    Ok(response(
        200,
        &[("Content-Type", "application/json")],
        b"{}".to_vec(),
    ))
}

/// Checks the request's bearer token for `pull` on `name` (as the client
/// spelled it) and, when `resolved` is a private rule, that the bearer
/// authenticated for that rule — the same decision the origin makes
/// ([`wharf_core::pull_auth`]). The edge accepts no tickets: it issues them.
pub fn authorize(
    ctx: &Ctx<'_>,
    name: &RepositoryName,
    resolved: &Resolved,
) -> Result<Claims, Error> {
    let req = PullCheck {
        key: &ctx.config.key,
        service: &ctx.config.global_host,
        now_secs: ctx.now_secs(),
        name,
        blob: None,
        rule: TicketRule {
            prefix: &resolved.prefix,
            private: ctx.config.rule(resolved.rule).private,
        },
        with_ns: false,
    };
    match check(&req, ctx.header("Authorization").as_deref(), None) {
        Ok(Grant::Token(claims)) => Ok(claims),
        Ok(Grant::Ticket) => Err(Error::Runtime(
            "a ticket was accepted without a blob".into(),
        )),
        Err(e) => {
            let challenge = e
                .challenge(&ctx.realm(), &ctx.config.global_host, name)
                .unwrap_or_default();
            Err(match e {
                PullAuthError::Token(source) => Error::Token { source, challenge },
                _ => Error::Unauthenticated { challenge },
            })
        }
    }
}

/// The parameters of a token request, from a query string or a form body.
#[derive(Default, Debug)]
struct Params {
    scopes: Vec<String>,
    grant_type: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

fn parse_params(raw: &str) -> Params {
    let mut p = Params::default();
    for pair in raw.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode_query_component(v);
        match decode_query_component(k).as_str() {
            // OAuth2 forms separate scopes with spaces; Docker repeats `scope`.
            "scope" => p
                .scopes
                .extend(v.split(' ').filter(|s| !s.is_empty()).map(str::to_owned)),
            "grant_type" => p.grant_type = Some(v),
            "username" => p.username = Some(v),
            "password" => p.password = Some(v),
            _ => {}
        }
    }
    p
}

/// `GET`/`POST /token`.
pub async fn handle(
    ctx: &Ctx<'_>,
    mut req: Request,
    query: Option<&str>,
) -> Result<Response, Error> {
    let mut params = parse_params(query.unwrap_or(""));
    let mut credentials = ctx.header("Authorization").and_then(|h| parse_basic(&h));
    let oauth = req.method() == Method::Post;
    if oauth {
        let body = req.text().await?;
        if body.len() > MAX_FORM_BYTES {
            return Err(Error::TokenRequest(format!(
                "token request body is larger than {MAX_FORM_BYTES} bytes"
            )));
        }
        let form = parse_params(&body);
        params.scopes.extend(form.scopes);
        match form.grant_type.as_deref() {
            Some("password") => {
                if let (Some(u), Some(p)) = (form.username, form.password) {
                    credentials = Some((u, p));
                }
            }
            // Wharf issues no refresh tokens, so it can accept none.
            Some(other) => {
                return Err(Error::TokenRequest(format!(
                    "grant_type `{other}` is not supported; use `password` or GET /token with Basic auth"
                )));
            }
            None => {}
        }
    } else if req.method() != Method::Get {
        return Err(Error::TokenRequest(format!(
            "method {} is not supported on /token",
            req.method()
        )));
    }

    let user: Option<(String, &User)> = match &credentials {
        None => None,
        Some((name, password)) => Some((name.clone(), signin::sign_in(ctx, name, password).await?)),
    };

    let (access, private_rules) = grant(ctx, user.as_ref().map(|(_, u)| *u), &params.scopes);
    let now = ctx.now_secs();
    let ttl = ctx.config.token_ttl.as_secs();
    let claims = Claims {
        iss: wharf_core::region::hostname(&ctx.host),
        sub: user.as_ref().map(|(n, _)| n.clone()).unwrap_or_default(),
        aud: ctx.config.global_host.clone(),
        exp: now + ttl,
        nbf: now,
        iat: now,
        access,
        private_rules,
    };
    tracing::info!(
        sub = %claims.sub,
        requested = params.scopes.len(),
        granted = claims.access.len(),
        "token issued"
    );
    let token = issue(&ctx.config.key, &claims);
    let body = TokenResponse {
        token: (!oauth).then(|| token.clone()),
        access_token: Some(token),
        expires_in: Some(ttl),
        issued_at: Some(UtcDateTime::from_unix(now).rfc3339()),
    };
    let json = serde_json::to_vec(&body).map_err(|e| Error::Runtime(e.to_string()))?;
    Ok(response(
        200,
        &[
            ("Content-Type", "application/json"),
            ("Cache-Control", "no-store"),
        ],
        json,
    ))
}

/// The `access` entries and private rule prefixes to grant.
fn grant(ctx: &Ctx<'_>, user: Option<&User>, scopes: &[String]) -> (Vec<Access>, Vec<String>) {
    let mut access: Vec<Access> = Vec::new();
    for raw in scopes {
        let Ok(scope) = Scope::parse(raw) else {
            continue;
        };
        if scope.resource_type != "repository"
            || !scope.actions.iter().any(|a| a == "pull" || a == "*")
        {
            continue;
        }
        let Ok(name) = RepositoryName::parse(&scope.name) else {
            continue;
        };
        if let Ok(resolved) = ctx.config.rules.resolve(&name, None) {
            let private = ctx.config.rule(resolved.rule).private;
            if private && !user.is_some_and(|u| u.may_pull(&resolved.prefix)) {
                continue;
            }
        }
        // A name no rule serves is granted anyway: the registry request then
        // fails with NAME_UNKNOWN, which tells the user what is wrong.
        if !access.iter().any(|a| a.name == scope.name) {
            access.push(Access {
                resource_type: "repository".into(),
                name: scope.name,
                actions: vec!["pull".into()],
            });
        }
    }
    let private_rules = match user {
        Some(u) => ctx
            .config
            .private_prefixes()
            .filter(|p| u.may_pull(p))
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    };
    (access, private_rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_request_parameters() {
        let p = parse_params(
            "service=wharf&scope=repository%3Aa%2Fb%3Apull&scope=repository:c:pull+repository:d:pull&grant_type=password&username=al%2Bice&password=p%26w",
        );
        assert_eq!(
            p.scopes,
            [
                "repository:a/b:pull",
                "repository:c:pull",
                "repository:d:pull"
            ]
        );
        assert_eq!(p.grant_type.as_deref(), Some("password"));
        assert_eq!(p.username.as_deref(), Some("al+ice"));
        assert_eq!(p.password.as_deref(), Some("p&w"));
        assert!(parse_params("").scopes.is_empty());
    }
}
