//! The one authorisation decision for a pull request, shared by the edge and
//! the origin: a blob ticket (`?wharf-ticket=`) or a bearer token, checked
//! against the repository, the rule's privacy and the clock.
//!
//! Owns [`PullCheck`], [`check`], [`Grant`] and [`PullAuthError`].
//!
//! Key decisions:
//! * A ticket is only accepted on a blob request, for exactly the rule, name
//!   and digest it binds, and never with `?ns=`; when one is present it
//!   decides alone (a bad ticket is not retried as a token, so a refused
//!   ticket says why).
//! * A token must grant `pull` on the name in the request path, and, when the
//!   resolved rule is private, carry that rule in `wharf_rules` (see
//!   [`crate::token`] for why the name alone is not enough).
//! * Errors carry what the `WWW-Authenticate` challenge needs
//!   ([`PullAuthError::challenge`]), so both deployables answer identically.

use crate::digest::Digest;
use crate::error::ErrorCode;
use crate::reference::RepositoryName;
use crate::ticket::{self, TicketError, TicketRule};
use crate::token::{Claims, Scope, SigningKey, TokenError, bearer_challenge, parse_bearer, verify};

/// What a pull request is checked against.
#[derive(Clone, Copy, Debug)]
pub struct PullCheck<'a> {
    /// The token and ticket key.
    pub key: &'a SigningKey,
    /// The token service/audience: the global hostname.
    pub service: &'a str,
    /// Now, unix seconds.
    pub now_secs: u64,
    /// The repository name in the request path.
    pub name: &'a RepositoryName,
    /// The digest, for blob requests (the only ones a ticket may authorise).
    pub blob: Option<&'a Digest>,
    /// The rule the name resolved to.
    pub rule: TicketRule<'a>,
    /// Whether the request carries `?ns=`.
    pub with_ns: bool,
}

/// Why a pull request was allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// A valid bearer token, with its claims.
    Token(Claims),
    /// A valid blob ticket.
    Ticket,
}

/// Why a pull request is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PullAuthError {
    /// Neither a bearer token nor (on a blob) a ticket.
    #[error("authentication required: get a token from the realm in the WWW-Authenticate header")]
    Missing,
    /// A refused bearer token.
    #[error(transparent)]
    Token(TokenError),
    /// A refused ticket.
    #[error(transparent)]
    Ticket(TicketError),
}

impl PullAuthError {
    /// `UNAUTHORIZED` (401), or `DENIED` (403) for a forged ticket.
    pub fn code(&self) -> ErrorCode {
        match self {
            PullAuthError::Missing => ErrorCode::Unauthorized,
            PullAuthError::Token(e) => e.code(),
            PullAuthError::Ticket(e) => e.code(),
        }
    }

    /// The `WWW-Authenticate` value for a 401 (`None` for a 403): the realm is
    /// the token endpoint the client should use.
    pub fn challenge(&self, realm: &str, service: &str, name: &RepositoryName) -> Option<String> {
        let scope = Scope::pull(name);
        let error = match self {
            PullAuthError::Missing => None,
            PullAuthError::Token(e) => Some(e.challenge_error()),
            PullAuthError::Ticket(TicketError::Expired { .. }) => Some("invalid_token"),
            PullAuthError::Ticket(_) => return None,
        };
        Some(bearer_challenge(realm, service, Some(&scope), error))
    }
}

/// Checks a pull request's `Authorization` header and raw query string.
pub fn check(
    req: &PullCheck<'_>,
    authorization: Option<&str>,
    query: Option<&str>,
) -> Result<Grant, PullAuthError> {
    if let (Some(digest), Some(t)) = (req.blob, ticket::from_query(query)) {
        if req.with_ns {
            return Err(PullAuthError::Ticket(TicketError::WithNamespace));
        }
        ticket::verify(req.key, &t, req.rule, req.name, digest, req.now_secs)
            .map_err(PullAuthError::Ticket)?;
        return Ok(Grant::Ticket);
    }
    let token = authorization
        .and_then(parse_bearer)
        .ok_or(PullAuthError::Missing)?;
    let claims = verify(
        req.key,
        token,
        req.service,
        req.now_secs,
        &Scope::pull(req.name),
    )
    .map_err(PullAuthError::Token)?;
    if req.rule.private && !claims.allows_rule(req.rule.prefix) {
        return Err(PullAuthError::Token(TokenError::PrivateRule {
            name: req.name.to_string(),
            rule: req.rule.prefix.to_owned(),
        }));
    }
    Ok(Grant::Token(claims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{Access, issue};

    const NOW: u64 = 1_700_000_000;
    const SERVICE: &str = "wharf.example.com";

    fn key() -> SigningKey {
        SigningKey::new(vec![9u8; 32]).unwrap()
    }

    fn name(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    fn token(repo: &str, rules: &[&str]) -> String {
        issue(
            &key(),
            &Claims {
                iss: SERVICE.into(),
                sub: "u".into(),
                aud: SERVICE.into(),
                exp: NOW + 60,
                nbf: NOW,
                iat: NOW,
                access: vec![Access {
                    resource_type: "repository".into(),
                    name: repo.into(),
                    actions: vec!["pull".into()],
                }],
                private_rules: rules.iter().map(|r| r.to_string()).collect(),
            },
        )
    }

    #[test]
    fn decisions() {
        let k = key();
        let repo = name("up/app");
        let digest = Digest::sha256_of(b"layer");
        let base = PullCheck {
            key: &k,
            service: SERVICE,
            now_secs: NOW,
            name: &repo,
            blob: None,
            rule: TicketRule {
                prefix: "up",
                private: false,
            },
            with_ns: false,
        };
        let blob = PullCheck {
            blob: Some(&digest),
            ..base
        };
        let private = PullCheck {
            rule: TicketRule {
                prefix: "up",
                private: true,
            },
            ..base
        };
        let good = format!("Bearer {}", token("up/app", &[]));
        let ticket = ticket::issue(&k, base.rule, &repo, &digest, NOW + 30);
        let q = format!("wharf-ticket={ticket}");

        assert!(matches!(
            check(&base, Some(&good), None),
            Ok(Grant::Token(_))
        ));
        assert_eq!(check(&blob, None, Some(&q)), Ok(Grant::Ticket));
        // `?ns=` cannot ride on a ticket.
        let with_ns = PullCheck {
            with_ns: true,
            ..blob
        };
        assert_eq!(
            check(&with_ns, None, Some(&q)),
            Err(PullAuthError::Ticket(TicketError::WithNamespace))
        );
        // Nor is a public rule's ticket valid where the rule is private, or
        // on another rule.
        for rule in [
            TicketRule {
                prefix: "up",
                private: true,
            },
            TicketRule {
                prefix: "up/app",
                private: false,
            },
        ] {
            let elsewhere = PullCheck { rule, ..blob };
            assert_eq!(
                check(&elsewhere, None, Some(&q)),
                Err(PullAuthError::Ticket(TicketError::BadSignature))
            );
        }
        assert_eq!(check(&base, None, None), Err(PullAuthError::Missing));
        // Tickets only count on blobs.
        assert_eq!(check(&base, None, Some(&q)), Err(PullAuthError::Missing));
        // A bad ticket is not retried as a token.
        let other = Digest::sha256_of(b"other");
        let wrong_blob = PullCheck {
            blob: Some(&other),
            ..base
        };
        assert_eq!(
            check(&wrong_blob, Some(&good), Some(&q)),
            Err(PullAuthError::Ticket(TicketError::BadSignature))
        );
        assert!(matches!(
            check(
                &base,
                Some(&format!("Bearer {}", token("up/other", &[]))),
                None
            ),
            Err(PullAuthError::Token(TokenError::InsufficientScope { .. }))
        ));
        assert!(matches!(
            check(&private, Some(&good), None),
            Err(PullAuthError::Token(TokenError::PrivateRule { .. }))
        ));
        let with_rule = format!("Bearer {}", token("up/app", &["up"]));
        assert!(check(&private, Some(&with_rule), None).is_ok());

        let e = check(&wrong_blob, None, Some(&q)).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Denied);
        assert_eq!(e.challenge("https://h/token", SERVICE, &repo), None);
        let e = check(&private, Some(&good), None).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Unauthorized);
        assert_eq!(
            e.challenge("https://h/token", SERVICE, &repo).unwrap(),
            r#"Bearer realm="https://h/token",service="wharf.example.com",scope="repository:up/app:pull",error="insufficient_scope""#
        );
    }
}
