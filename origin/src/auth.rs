//! Who may pull: the edge's bearer tokens and blob tickets, checked with the
//! key the edge signs them with.
//!
//! Without a configured key the origin is open (the standalone, private-
//! network deployment). With one (`auth.token_key` or `WHARF_TOKEN_KEY`),
//! every `/v2/` request needs either
//!
//! * `Authorization: Bearer <token>` — a token from the edge's `/token` (on
//!   any hostname: tokens are interchangeable, as in ACR's regional
//!   endpoints) granting `repository:<name>:pull` for the name in the path,
//!   or
//! * `?wharf-ticket=<ticket>` on a blob request — the short-lived ticket the
//!   edge puts in the redirect it answers a blob miss with.
//!
//! A missing or bad token gets `401` with a `Bearer` challenge whose realm is
//! the edge's token endpoint, so a client that talks to the origin directly
//! still completes the token dance. Private rules additionally need the rule
//! bound in the token (`Claims::allows_rule`), because `?ns=` can make the
//! same repository name resolve to another rule.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use wharf_core::token::{self, Claims, Scope, SigningKey};
use wharf_core::{ApiMethod, ApiRequest, ticket};

use crate::error::Error;

/// Token checking for one origin.
#[derive(Clone, Debug)]
pub struct Auth {
    key: SigningKey,
    service: String,
    realm: String,
}

/// What a request proved.
#[derive(Debug)]
pub enum Grant {
    /// A verified token.
    Token(Claims),
    /// A verified blob ticket (the edge already authorised the pull).
    Ticket,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Auth {
    /// Checks tokens signed with `key` for `service` (the global hostname);
    /// clients without one are sent to `realm`.
    pub fn new(key: SigningKey, service: String, realm: String) -> Self {
        Self {
            key,
            service,
            realm,
        }
    }

    /// Verifies the credentials of `request`.
    pub fn check(
        &self,
        method: ApiMethod,
        request: &ApiRequest,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Grant, Error> {
        let now = now_secs();
        if let ApiRequest::Blob { name, digest } = request
            && let Some(t) = ticket::from_query(query)
        {
            let _ = method;
            return ticket::verify(&self.key, &t, name, digest, now)
                .map(|()| Grant::Ticket)
                .map_err(|e| {
                    Error::Denied(format!("blob ticket refused: {e}; ask the edge again"))
                });
        }
        let scope = request.name().map(Scope::pull);
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(token::parse_bearer);
        let Some(bearer) = bearer else {
            return Err(self.challenge(scope.as_ref(), None, "a bearer token is required".into()));
        };
        let verified = match &scope {
            Some(scope) => token::verify(&self.key, bearer, &self.service, now, scope),
            None => token::verify_unscoped(&self.key, bearer, &self.service, now),
        };
        verified.map(Grant::Token).map_err(|e| {
            let error = e.challenge_error();
            self.challenge(scope.as_ref(), Some(error), format!("token refused: {e}"))
        })
    }

    /// Checks that `grant` may use the private rule `prefix`.
    pub fn check_private_rule(&self, grant: &Grant, prefix: &str) -> Result<(), Error> {
        match grant {
            Grant::Ticket => Ok(()),
            Grant::Token(claims) if claims.allows_rule(prefix) => Ok(()),
            Grant::Token(_) => Err(Error::Denied(format!(
                "repositories under {prefix}/ need a token issued after signing in; run `docker login` against the edge"
            ))),
        }
    }

    fn challenge(&self, scope: Option<&Scope>, error: Option<&str>, reason: String) -> Error {
        Error::Unauthorized {
            challenge: token::bearer_challenge(&self.realm, &self.service, scope, error),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use wharf_core::token::Access;
    use wharf_core::{Digest, RepositoryName};

    fn auth() -> Auth {
        Auth::new(
            SigningKey::new(vec![7u8; 32]).unwrap(),
            "wharf.test".into(),
            "https://wharf.test/token".into(),
        )
    }

    fn token(name: &str, exp_in: i64, rules: &[&str]) -> String {
        let now = now_secs();
        token::issue(
            &SigningKey::new(vec![7u8; 32]).unwrap(),
            &Claims {
                iss: "wharf.test".into(),
                sub: String::new(),
                aud: "wharf.test".into(),
                exp: (now as i64 + exp_in) as u64,
                nbf: now - 1,
                iat: now - 1,
                access: vec![Access {
                    resource_type: "repository".into(),
                    name: name.into(),
                    actions: vec!["pull".into()],
                }],
                private_rules: rules.iter().map(|r| r.to_string()).collect(),
            },
        )
    }

    fn manifest(name: &str) -> ApiRequest {
        ApiRequest::Manifest {
            name: RepositoryName::parse(name).unwrap(),
            reference: wharf_core::Reference::parse("latest").unwrap(),
        }
    }

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    #[test]
    fn tokens_are_checked_for_the_repository_and_expiry() {
        let a = auth();
        let req = manifest("docker.io/library/alpine");
        assert!(
            a.check(
                ApiMethod::Get,
                &req,
                None,
                &headers(&token("docker.io/library/alpine", 300, &[]))
            )
            .is_ok()
        );
        let cases = [
            (HeaderMap::new(), "bearer token is required"),
            (
                headers(&token("docker.io/library/nginx", 300, &[])),
                "token refused",
            ),
            (
                headers(&token("docker.io/library/alpine", -3600, &[])),
                "token refused",
            ),
            (headers("not.a.jwt"), "token refused"),
        ];
        for (h, want) in cases {
            let err = a.check(ApiMethod::Get, &req, None, &h).unwrap_err();
            assert!(matches!(&err, Error::Unauthorized { .. }), "{err}");
            assert!(err.to_string().contains(want), "{err}");
        }
    }

    #[test]
    fn blob_tickets_stand_in_for_tokens() {
        let a = auth();
        let name = RepositoryName::parse("docker.io/library/alpine").unwrap();
        let digest = Digest::sha256_of(b"layer");
        let t = ticket::issue(
            &SigningKey::new(vec![7u8; 32]).unwrap(),
            &name,
            &digest,
            now_secs() + 60,
        );
        let req = ApiRequest::Blob {
            name: name.clone(),
            digest: digest.clone(),
        };
        let query = format!("{}={t}", ticket::QUERY_PARAM);
        assert!(matches!(
            a.check(ApiMethod::Get, &req, Some(&query), &HeaderMap::new()),
            Ok(Grant::Ticket)
        ));
        let other = ApiRequest::Blob {
            name,
            digest: Digest::sha256_of(b"other"),
        };
        assert!(matches!(
            a.check(ApiMethod::Get, &other, Some(&query), &HeaderMap::new()),
            Err(Error::Denied(_))
        ));
    }

    #[test]
    fn private_rules_need_the_rule_in_the_token() {
        let a = auth();
        let req = manifest("private/app");
        let open = a
            .check(
                ApiMethod::Get,
                &req,
                None,
                &headers(&token("private/app", 300, &[])),
            )
            .unwrap();
        assert!(a.check_private_rule(&open, "private").is_err());
        let signed_in = a
            .check(
                ApiMethod::Get,
                &req,
                None,
                &headers(&token("private/app", 300, &["private"])),
            )
            .unwrap();
        assert!(a.check_private_rule(&signed_in, "private").is_ok());
    }
}
