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
use wharf_core::pull_auth::{self, PullCheck};
use wharf_core::ticket::TicketRule;
use wharf_core::token::{self, SigningKey};
use wharf_core::{ApiRequest, RepositoryName};

use crate::error::Error;

pub use wharf_core::pull_auth::Grant;

/// Token checking for one origin. The decision itself is the core's
/// (`wharf_core::pull_auth`), the same one the edge makes.
#[derive(Clone, Debug)]
pub struct Auth {
    key: SigningKey,
    service: String,
    realm: String,
}

/// Now, unix seconds, for tokens, tickets and forwarded-request signatures
/// (0 if the clock is before 1970).
pub(crate) fn now_secs() -> u64 {
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

    /// `/v2/`: any valid token.
    pub fn check_base(&self, headers: &HeaderMap) -> Result<(), Error> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(token::parse_bearer);
        let result = match bearer {
            None => Err(None),
            Some(t) => token::verify_unscoped(&self.key, t, &self.service, now_secs())
                .map(drop)
                .map_err(Some),
        };
        result.map_err(|e| Error::Unauthorized {
            challenge: token::bearer_challenge(&self.realm, &self.service, None, e.as_ref().map(|e| e.challenge_error())),
            reason: match e {
                None => "authentication required: get a token from the realm in the WWW-Authenticate header".into(),
                Some(e) => format!("token refused: {e}"),
            },
        })
    }

    /// A request for `name`, resolved to `rule` (`with_ns`: through
    /// `?ns=`): its token or blob ticket.
    pub fn check(
        &self,
        request: &ApiRequest,
        name: &RepositoryName,
        rule: TicketRule<'_>,
        with_ns: bool,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Grant, Error> {
        let blob = match request {
            ApiRequest::Blob { digest, .. } => Some(digest),
            _ => None,
        };
        let check = PullCheck {
            key: &self.key,
            service: &self.service,
            now_secs: now_secs(),
            name,
            blob,
            rule,
            with_ns,
        };
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        pull_auth::check(&check, authorization, query).map_err(|e| {
            match e.challenge(&self.realm, &self.service, name) {
                Some(challenge) => Error::Unauthorized {
                    challenge,
                    reason: e.to_string(),
                },
                None => Error::Denied(format!("{e}; ask the edge again")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use wharf_core::ticket;
    use wharf_core::token::{Access, Claims};
    use wharf_core::{Digest, Reference};

    fn key() -> SigningKey {
        SigningKey::new(vec![7u8; 32]).unwrap()
    }

    fn auth() -> Auth {
        Auth::new(
            key(),
            "wharf.test".into(),
            "https://wharf.test/token".into(),
        )
    }

    fn token(name: &str, exp_in: i64, rules: &[&str]) -> String {
        let now = now_secs();
        token::issue(
            &key(),
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

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    fn check(
        req: &ApiRequest,
        private: Option<&str>,
        query: Option<&str>,
        h: &HeaderMap,
    ) -> Result<Grant, Error> {
        let rule = TicketRule {
            prefix: private.unwrap_or("docker.io"),
            private: private.is_some(),
        };
        auth().check(req, req.name().unwrap(), rule, false, query, h)
    }

    fn manifest(name: &str) -> ApiRequest {
        ApiRequest::Manifest {
            name: RepositoryName::parse(name).unwrap(),
            reference: Reference::parse("latest").unwrap(),
        }
    }

    #[test]
    fn tokens_are_checked_for_the_repository_and_expiry() {
        let req = manifest("docker.io/library/alpine");
        assert!(
            check(
                &req,
                None,
                None,
                &headers(&token("docker.io/library/alpine", 300, &[]))
            )
            .is_ok()
        );
        for h in [
            HeaderMap::new(),
            headers(&token("docker.io/library/nginx", 300, &[])),
            headers(&token("docker.io/library/alpine", -3600, &[])),
            headers("not.a.jwt"),
        ] {
            let err = check(&req, None, None, &h).unwrap_err();
            let Error::Unauthorized { challenge, .. } = &err else {
                panic!("{err}")
            };
            assert!(
                challenge.contains("realm=\"https://wharf.test/token\""),
                "{challenge}"
            );
        }
    }

    #[test]
    fn base_endpoint_needs_any_valid_token() {
        assert!(auth().check_base(&headers(&token("x/y", 300, &[]))).is_ok());
        assert!(matches!(
            auth().check_base(&HeaderMap::new()),
            Err(Error::Unauthorized { .. })
        ));
    }

    #[test]
    fn blob_tickets_stand_in_for_tokens() {
        let name = RepositoryName::parse("docker.io/library/alpine").unwrap();
        let digest = Digest::sha256_of(b"layer");
        let rule = TicketRule {
            prefix: "docker.io",
            private: false,
        };
        let t = ticket::issue(&key(), rule, &name, &digest, now_secs() + 60);
        let req = ApiRequest::Blob {
            name: name.clone(),
            digest,
        };
        let query = format!("{}={t}", ticket::QUERY_PARAM);
        assert!(matches!(
            check(&req, None, Some(&query), &HeaderMap::new()),
            Ok(Grant::Ticket)
        ));
        let other = ApiRequest::Blob {
            name,
            digest: Digest::sha256_of(b"other"),
        };
        assert!(check(&other, None, Some(&query), &HeaderMap::new()).is_err());
    }

    #[test]
    fn private_rules_need_the_rule_in_the_token() {
        let req = manifest("private/app");
        assert!(
            check(
                &req,
                Some("private"),
                None,
                &headers(&token("private/app", 300, &[]))
            )
            .is_err()
        );
        assert!(
            check(
                &req,
                Some("private"),
                None,
                &headers(&token("private/app", 300, &["private"]))
            )
            .is_ok()
        );
    }
}
