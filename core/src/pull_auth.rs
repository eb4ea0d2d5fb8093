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
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000;
    const SERVICE: &str = "wharf.example.com";

    fn key() -> SigningKey {
        SigningKey::new(vec![9u8; 32]).unwrap()
    }

    fn name(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    fn token(repo: &str, rules: &[&str]) -> String {
        token_for(&[repo], rules)
    }

    /// A token granting pull on each of `repos`, and the private `rules`.
    fn token_for(repos: &[&str], rules: &[&str]) -> String {
        issue(
            &key(),
            &Claims {
                iss: SERVICE.into(),
                sub: "u".into(),
                aud: SERVICE.into(),
                exp: NOW + 60,
                nbf: NOW,
                iat: NOW,
                access: repos
                    .iter()
                    .map(|repo| Access {
                        resource_type: "repository".into(),
                        name: (*repo).into(),
                        actions: vec!["pull".into()],
                    })
                    .collect(),
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

    /// The rules of the property test: a public rule with a private rule
    /// nested under it, twice (once on the Docker Hub prefix, whose bare-name
    /// fallback and `library/` make more names land on it).
    const RULES: [(&str, &str, bool); 4] = [
        ("up", "http://127.0.0.1:5000", false),
        ("up/acme", "http://127.0.0.1:5001", true),
        ("docker.io", "https://registry-1.docker.io", false),
        ("docker.io/myorg", "http://127.0.0.1:5002", true),
    ];
    /// `host[:port]` of each rule's upstream, as `?ns=` names it.
    const AUTHORITIES: [&str; 4] = [
        "127.0.0.1:5000",
        "127.0.0.1:5001",
        "registry-1.docker.io",
        "127.0.0.1:5002",
    ];

    /// The rule whose prefix is the longest whole-component prefix of
    /// `name`, and the rest of the name.
    fn model_owner(name: &str) -> Option<(usize, &str)> {
        let mut best: Option<(usize, &str)> = None;
        for (i, (prefix, _, _)) in RULES.iter().enumerate() {
            let rest = if name == *prefix {
                ""
            } else if let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) {
                rest
            } else {
                continue;
            };
            if best.is_none_or(|(b, _)| prefix.len() > RULES[b].0.len()) {
                best = Some((i, rest));
            }
        }
        best
    }

    /// The resolution, written out from the README rather than from
    /// `rules.rs`: Some((rule, canonical)) when the name resolves and its
    /// canonical name is its own rule's, None otherwise (no rule, a bare
    /// prefix, or an alias of another rule's name).
    fn model_resolve(name: &str, ns: Option<&str>) -> Option<(usize, String)> {
        let ns = ns.map(str::trim).filter(|s| !s.is_empty());
        let (rule, repo) = match ns {
            Some(ns) => {
                let rule = RULES
                    .iter()
                    .position(|r| r.0 == ns)
                    .or_else(|| AUTHORITIES.iter().position(|a| *a == ns))?;
                (rule, name)
            }
            None => match model_owner(name) {
                Some((_, "")) => return None,
                Some(found) => found,
                None => (2, name),
            },
        };
        let hub = RULES[rule].0 == "docker.io" || AUTHORITIES[rule] == "registry-1.docker.io";
        let repo = if hub && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo.to_owned()
        };
        let canonical = format!("{}/{repo}", RULES[rule].0);
        (model_owner(&canonical).map(|(owner, _)| owner) == Some(rule)).then_some((rule, canonical))
    }

    fn arb_name() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            proptest::sample::select(vec!["up", "acme", "app", "library", "docker.io", "myorg"]),
            1..5,
        )
        .prop_map(|parts| parts.join("/"))
    }

    fn arb_ns() -> impl Strategy<Value = Option<&'static str>> {
        proptest::option::of(proptest::sample::select(vec![
            "up",
            "up/acme",
            "acme",
            "docker.io",
            "docker.io/myorg",
            "127.0.0.1:5000",
            "127.0.0.1:5001",
            "127.0.0.1:5002",
            "registry-1.docker.io",
            "127.0.0.1:9",
            " ",
        ]))
    }

    /// Something a ticket or token is issued for: the request's own value
    /// (`None`) or a random one, so that both exact matches and replays
    /// elsewhere are frequent.
    fn own_or<T: std::fmt::Debug + Clone>(
        other: impl Strategy<Value = T>,
    ) -> impl Strategy<Value = Option<T>> {
        proptest::option::weighted(0.5, other)
    }

    /// A ticket: (rule index or the request's resolved rule, private flag or
    /// the rule's, name or the path's, digest index or the request's, expiry
    /// offset from now).
    type TicketSpec = (
        Option<usize>,
        Option<bool>,
        Option<String>,
        Option<usize>,
        i64,
    );

    fn arb_ticket() -> impl Strategy<Value = Option<TicketSpec>> {
        proptest::option::of((
            own_or(0..RULES.len()),
            own_or(any::<bool>()),
            own_or(arb_name()),
            own_or(0..2usize),
            proptest::sample::select(vec![
                30i64,
                -(crate::token::LEEWAY_SECS as i64) - 1,
                2 * ticket::MAX_LIFETIME_SECS as i64,
            ]),
        ))
    }

    /// A token: repository names it grants pull on (each the path's own
    /// name or another), and private rules (indices into [`RULES`]).
    fn arb_token() -> impl Strategy<Value = Option<(Vec<Option<String>>, Vec<usize>)>> {
        proptest::option::of((
            proptest::collection::vec(own_or(arb_name()), 0..3),
            proptest::collection::vec(0..RULES.len(), 0..3),
        ))
    }

    proptest! {
        /// The whole decision a pull request goes through (resolution, then
        /// ticket or token) against a model of it: allowed iff the name
        /// resolves without aliasing another rule's names, and either (on a
        /// blob with a ticket) the ticket binds exactly the resolved rule and
        /// its privacy, the path's name and the digest, unexpired, with no
        /// `?ns=`; or (no ticket, or not a blob) a token grants pull on the
        /// path's name and, on a private rule, that rule.
        #[test]
        fn pull_decision_matches_the_model(
            name in arb_name(),
            ns in arb_ns(),
            blob in proptest::option::of(0..2usize),
            ticket_spec in arb_ticket(),
            token_spec in arb_token(),
        ) {
            let k = key();
            let rules = crate::rules::CacheRules::new(
                RULES
                    .iter()
                    .map(|(prefix, upstream, _)| crate::rules::RuleSpec::new(*prefix, *upstream))
                    .collect(),
            )
            .unwrap();
            let digests = [Digest::sha256_of(b"one"), Digest::sha256_of(b"two")];
            let path = RepositoryName::parse(&name).unwrap();
            let resolved = rules.resolve(&path, ns);
            let expected_resolution = model_resolve(&name, ns);
            prop_assert_eq!(
                resolved.as_ref().ok().map(|r| (r.rule, r.canonical.to_string())),
                expected_resolution.clone(),
                "resolution of {} ?ns={:?}: {:?}", name, ns, resolved
            );
            // Refused resolutions are not an authorisation question; an
            // alias is refused as DENIED, the rest as unknown names.
            let Ok(resolved) = resolved else {
                let e = resolved.unwrap_err();
                let aliased = matches!(e, crate::rules::RuleError::Aliased { .. });
                prop_assert_eq!(e.code() == ErrorCode::Denied, aliased);
                return Ok(());
            };
            let rule_private = RULES[resolved.rule].2;
            let rule = TicketRule { prefix: &resolved.prefix, private: rule_private };

            let query = ticket_spec.as_ref().map(|(t_rule, t_private, t_name, t_digest, exp)| {
                let t_rule = t_rule.unwrap_or(resolved.rule);
                let t_name = RepositoryName::parse(t_name.as_deref().unwrap_or(&name)).unwrap();
                let t_digest = &digests[t_digest.or(blob).unwrap_or(0)];
                let t = ticket::issue(
                    &k,
                    TicketRule {
                        prefix: RULES[t_rule].0,
                        private: t_private.unwrap_or(RULES[t_rule].2),
                    },
                    &t_name,
                    t_digest,
                    NOW.saturating_add_signed(*exp),
                );
                format!("wharf-ticket={t}")
            });
            let authorization = token_spec.as_ref().map(|(repos, granted)| {
                let repos: Vec<&str> = repos.iter().map(|r| r.as_deref().unwrap_or(&name)).collect();
                let granted: Vec<&str> = granted.iter().map(|&i| RULES[i].0).collect();
                format!("Bearer {}", token_for(&repos, &granted))
            });
            let req = PullCheck {
                key: &k,
                service: SERVICE,
                now_secs: NOW,
                name: &path,
                blob: blob.map(|i| &digests[i]),
                rule,
                with_ns: ns.is_some(),
            };
            let got = check(&req, authorization.as_deref(), query.as_deref());

            let expected = match (blob, &ticket_spec) {
                (Some(b), Some((t_rule, t_private, t_name, t_digest, exp))) => {
                    let t_rule = t_rule.unwrap_or(resolved.rule);
                    ns.is_none()
                        && RULES[t_rule].0 == resolved.prefix
                        && t_private.unwrap_or(RULES[t_rule].2) == rule_private
                        && t_name.as_deref().unwrap_or(&name) == name
                        && t_digest.unwrap_or(b) == b
                        && *exp == 30
                }
                _ => token_spec.as_ref().is_some_and(|(repos, granted)| {
                    repos.iter().any(|r| r.as_deref().unwrap_or(&name) == name)
                        && (!rule_private || granted.iter().any(|&i| RULES[i].0 == resolved.prefix))
                }),
            };
            prop_assert_eq!(got.is_ok(), expected, "{:?}", got);
            if let Ok(grant) = got {
                prop_assert_eq!(matches!(grant, Grant::Ticket), blob.is_some() && ticket_spec.is_some());
            }
        }
    }
}
