//! The pure parts of the upstream token dance (Docker token auth spec).
//!
//! Owns [`Challenge`] and [`parse_www_authenticate`] (what the upstream's `401`
//! asks for), [`pull_scope`] and [`token_request_query`] (what to send to the token
//! realm) and [`TokenResponse`] (what comes back).
//!
//! Key decision: `WWW-Authenticate` is parsed with the full RFC 7235/9110
//! auth-param grammar — quoted strings with `\` escapes, commas inside quotes
//! (`scope="repository:a/b:pull,push"`), several challenges in one header — by a
//! byte-level scanner that never panics, rather than the `split(',')` that breaks
//! on exactly the scopes registries send.

use serde::{Deserialize, Serialize};

use crate::reference::RepositoryName;
use crate::urlencode::encode_component;

/// One challenge: a scheme and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The auth scheme as sent, e.g. `Bearer` or `Basic` (compare case-insensitively).
    pub scheme: String,
    /// Parameters in order, names as sent. A `token68` (rare in challenges) is kept
    /// as a parameter with an empty name.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The first parameter with this name (case-insensitive).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `realm` parameter: the token endpoint for Bearer.
    pub fn realm(&self) -> Option<&str> {
        self.param("realm")
    }

    /// The `service` parameter.
    pub fn service(&self) -> Option<&str> {
        self.param("service")
    }

    /// The `scope` parameter.
    pub fn scope(&self) -> Option<&str> {
        self.param("scope")
    }

    /// True for the `Bearer` scheme (case-insensitive).
    pub fn is_bearer(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("bearer")
    }

    /// True for the `Basic` scheme (case-insensitive).
    pub fn is_basic(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("basic")
    }
}

/// A malformed `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The header holds no challenge.
    #[error(
        "WWW-Authenticate header is empty; expected e.g. `Bearer realm=\"https://auth.example/token\",service=\"registry\"`"
    )]
    Empty,
    /// A character where a token (scheme or parameter name) was expected.
    #[error(
        "WWW-Authenticate header has unexpected `{ch}` at position {index}; expected a scheme or parameter name"
    )]
    UnexpectedChar {
        /// The character.
        ch: char,
        /// Its byte position.
        index: usize,
    },
    /// A parameter with `=` but no value.
    #[error(
        "WWW-Authenticate parameter `{name}` has no value; expected a token or a quoted string"
    )]
    MissingValue {
        /// The parameter name.
        name: String,
    },
    /// A quoted string without its closing `"`.
    #[error("WWW-Authenticate parameter `{name}` has an unterminated quoted string")]
    UnterminatedQuote {
        /// The parameter name.
        name: String,
    },
    /// Something other than `,` after a parameter.
    #[error(
        "WWW-Authenticate header has `{ch}` at position {index} after a parameter; expected `,`"
    )]
    ExpectedComma {
        /// The character.
        ch: char,
        /// Its byte position.
        index: usize,
    },
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

struct Scanner<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn skip_ws_and_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.pos += 1;
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        // Only ASCII bytes are consumed, so both ends are char boundaries.
        &self.s[start..self.pos]
    }

    fn unexpected(&self) -> AuthError {
        let ch = self.s[self.pos..].chars().next().unwrap_or('\0');
        AuthError::UnexpectedChar {
            ch,
            index: self.pos,
        }
    }

    /// After `"`: reads to the closing quote, resolving `\` escapes.
    fn quoted(&mut self, name: &str) -> Result<String, AuthError> {
        let mut out = String::new();
        let mut chars = self.s[self.pos..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, escaped)) => out.push(escaped),
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err(AuthError::UnterminatedQuote {
            name: name.to_owned(),
        })
    }
}

/// Parses a `WWW-Authenticate` header value into its challenges, in order.
pub fn parse_www_authenticate(header: &str) -> Result<Vec<Challenge>, AuthError> {
    let mut sc = Scanner { s: header, pos: 0 };
    let mut challenges: Vec<Challenge> = Vec::new();
    sc.skip_ws_and_commas();
    while sc.peek().is_some() {
        let scheme = sc.take_while(is_tchar);
        if scheme.is_empty() {
            return Err(sc.unexpected());
        }
        let mut ch = Challenge {
            scheme: scheme.to_owned(),
            params: Vec::new(),
        };
        sc.skip_ws();
        // token68 directly after the scheme: `Basic dXNlcg==`.
        let save = sc.pos;
        let t68 = sc.take_while(is_token68_char);
        if !t68.is_empty() {
            let eqs = sc.take_while(|b| b == b'=');
            sc.skip_ws();
            if matches!(sc.peek(), None | Some(b',')) {
                ch.params.push((String::new(), format!("{t68}{eqs}")));
                challenges.push(ch);
                sc.skip_ws_and_commas();
                continue;
            }
        }
        sc.pos = save;
        // auth-params until the next scheme or the end.
        loop {
            sc.skip_ws_and_commas();
            let start = sc.pos;
            let name = sc.take_while(is_tchar);
            if name.is_empty() {
                if sc.peek().is_some() {
                    return Err(sc.unexpected());
                }
                break;
            }
            sc.skip_ws();
            if sc.peek() != Some(b'=') {
                // Not `name=`: `name` is the next challenge's scheme.
                sc.pos = start;
                break;
            }
            sc.pos += 1;
            sc.skip_ws();
            let value = if sc.peek() == Some(b'"') {
                sc.pos += 1;
                sc.quoted(name)?
            } else {
                let v = sc.take_while(is_tchar);
                if v.is_empty() {
                    return Err(AuthError::MissingValue {
                        name: name.to_owned(),
                    });
                }
                v.to_owned()
            };
            ch.params.push((name.to_owned(), value));
            sc.skip_ws();
            match sc.peek() {
                None | Some(b',') => {}
                Some(_) => {
                    let c = sc.s[sc.pos..].chars().next().unwrap_or('\0');
                    return Err(AuthError::ExpectedComma {
                        ch: c,
                        index: sc.pos,
                    });
                }
            }
        }
        challenges.push(ch);
    }
    if challenges.is_empty() {
        return Err(AuthError::Empty);
    }
    Ok(challenges)
}

/// The token scope for pulling `repo`: `repository:<name>:pull`.
pub fn pull_scope(repo: &RepositoryName) -> String {
    format!("repository:{repo}:pull")
}

/// The token request query string, `service=…&scope=…` (form-urlencoded; `service`
/// omitted when `None`). Append it to the realm after `?`, or `&` if the realm
/// already has a query — [`token_request_url`] does that.
pub fn token_request_query(service: Option<&str>, scope: &str) -> String {
    match service {
        Some(service) => format!(
            "service={}&scope={}",
            encode_component(service),
            encode_component(scope)
        ),
        None => format!("scope={}", encode_component(scope)),
    }
}

/// `realm` plus [`token_request_query`], joined with `?` or `&` as needed.
pub fn token_request_url(realm: &str, service: Option<&str>, scope: &str) -> String {
    let sep = if realm.contains('?') { '&' } else { '?' };
    format!("{realm}{sep}{}", token_request_query(service, scope))
}

/// The token endpoint's JSON answer. Docker Hub sends both `token` and
/// `access_token`; some registries send only one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The bearer token (Docker spelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The bearer token (OAuth2 spelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// Lifetime in seconds, as sent (any JSON number is accepted: negative
    /// reads as 0, fractions are cut, too large reads as `u64::MAX`; anything
    /// else as absent). Use [`TokenResponse::lifetime_secs`], which clamps it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_seconds"
    )]
    pub expires_in: Option<u64>,
    /// RFC 3339 issue time, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
}

impl TokenResponse {
    /// `token`, else `access_token` (empty strings count as absent).
    pub fn bearer(&self) -> Option<&str> {
        [&self.token, &self.access_token]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .find(|t| !t.is_empty())
    }

    /// `expires_in`, defaulting to and at least 60 seconds, per the Docker token
    /// spec, and at most [`MAX_TOKEN_LIFETIME_SECS`]: the number comes from an
    /// upstream and ends up added to a clock.
    pub fn lifetime_secs(&self) -> u64 {
        self.expires_in
            .unwrap_or(60)
            .clamp(60, MAX_TOKEN_LIFETIME_SECS)
    }
}

/// The longest an upstream token is believed to live (one day).
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 24 * 60 * 60;

/// `expires_in` from any JSON value without failing the whole response.
fn lenient_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    let number = match &value {
        serde_json::Value::Number(n) => n.clone(),
        serde_json::Value::String(s) => match s.trim().parse::<serde_json::Number>() {
            Ok(n) => n,
            Err(_) => return Ok(None),
        },
        _ => return Ok(None),
    };
    Ok(Some(
        match (number.as_u64(), number.as_i64(), number.as_f64()) {
            (Some(n), _, _) => n,
            (None, Some(_), _) => 0,
            // Saturating float-to-int: negative → 0, NaN → 0, huge → u64::MAX.
            (None, None, Some(f)) => f as u64,
            (None, None, None) => u64::MAX,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ch(scheme: &str, params: &[(&str, &str)]) -> Challenge {
        Challenge {
            scheme: scheme.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn parse_table() {
        let cases: Vec<(&str, Result<Vec<Challenge>, &str>)> = vec![
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
                Ok(vec![ch(
                    "Bearer",
                    &[
                        ("realm", "https://auth.docker.io/token"),
                        ("service", "registry.docker.io"),
                        ("scope", "repository:library/alpine:pull"),
                    ],
                )]),
            ),
            (
                r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:a/b:pull,push""#,
                Ok(vec![ch(
                    "Bearer",
                    &[
                        ("realm", "https://ghcr.io/token"),
                        ("service", "ghcr.io"),
                        ("scope", "repository:a/b:pull,push"),
                    ],
                )]),
            ),
            (
                r#"Basic realm="Registry Realm""#,
                Ok(vec![ch("Basic", &[("realm", "Registry Realm")])]),
            ),
            (
                r#"Basic realm="a \"q\" \\ b", Bearer realm=x , error = "insufficient_scope""#,
                Ok(vec![
                    ch("Basic", &[("realm", r#"a "q" \ b"#)]),
                    ch("Bearer", &[("realm", "x"), ("error", "insufficient_scope")]),
                ]),
            ),
            (
                "Negotiate, Bearer",
                Ok(vec![ch("Negotiate", &[]), ch("Bearer", &[])]),
            ),
            (
                "Basic dXNlcjpwYXNz==, Bearer realm=r",
                Ok(vec![
                    ch("Basic", &[("", "dXNlcjpwYXNz==")]),
                    ch("Bearer", &[("realm", "r")]),
                ]),
            ),
            (
                " ,Bearer realm=\"\",, ",
                Ok(vec![ch("Bearer", &[("realm", "")])]),
            ),
            (
                r#"Bearer realm="é""#,
                Ok(vec![ch("Bearer", &[("realm", "é")])]),
            ),
            ("", Err("empty")),
            (" , ", Err("empty")),
            ("\"Bearer\"", Err("unexpected `\"` at position 0")),
            // `realm=` alone is, by the grammar, a token68.
            ("Bearer realm=", Ok(vec![ch("Bearer", &[("", "realm=")])])),
            ("Bearer a=b, realm=", Err("`realm` has no value")),
            ("Bearer realm=\"abc", Err("`realm` has an unterminated")),
            ("Bearer realm=\"abc\\", Err("unterminated")),
            (
                "Bearer realm=\"a\"b",
                Err("`b` at position 16 after a parameter"),
            ),
            ("Bearer realm=a b=c", Err("`b` at position 15")),
            ("Bearer realm=a, =c", Err("unexpected `=`")),
        ];
        for (header, want) in cases {
            match (parse_www_authenticate(header), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{header}"),
                (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{header}: `{e}`"),
                (got, want) => panic!("{header}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn accessors_are_case_insensitive() {
        let c = &parse_www_authenticate(r#"BEARER Realm="r",SERVICE="s",Scope="x""#).unwrap()[0];
        assert!(c.is_bearer() && !c.is_basic());
        assert_eq!(
            (c.realm(), c.service(), c.scope()),
            (Some("r"), Some("s"), Some("x"))
        );
        assert_eq!(c.param("missing"), None);
    }

    #[test]
    fn token_request_table() {
        let repo = RepositoryName::parse("library/alpine").unwrap();
        assert_eq!(pull_scope(&repo), "repository:library/alpine:pull");
        let scope = pull_scope(&repo);
        assert_eq!(
            token_request_query(Some("registry.docker.io"), &scope),
            "service=registry.docker.io&scope=repository%3Alibrary%2Falpine%3Apull"
        );
        assert_eq!(token_request_query(None, "a b"), "scope=a%20b");
        assert_eq!(
            token_request_url("https://auth.docker.io/token", Some("s"), "x"),
            "https://auth.docker.io/token?service=s&scope=x"
        );
        assert_eq!(
            token_request_url("https://t.example/token?a=1", None, "x"),
            "https://t.example/token?a=1&scope=x"
        );
    }

    #[test]
    fn token_response_table() {
        let cases: &[(&str, Option<&str>, u64)] = &[
            (
                r#"{"token":"t","access_token":"a","expires_in":300,"issued_at":"2024-01-01T00:00:00Z"}"#,
                Some("t"),
                300,
            ),
            (r#"{"access_token":"a"}"#, Some("a"), 60),
            (
                r#"{"token":"","access_token":"a","expires_in":10}"#,
                Some("a"),
                60,
            ),
            (r#"{"expires_in":3600,"extra":true}"#, None, 3600),
            // Numbers from an upstream are clamped, never trusted (issue 12).
            (
                r#"{"token":"t","expires_in":18446744073709551615}"#,
                Some("t"),
                86400,
            ),
            (r#"{"token":"t","expires_in":1e300}"#, Some("t"), 86400),
            (
                r#"{"token":"t","expires_in":99999999999999999999999}"#,
                Some("t"),
                86400,
            ),
            (r#"{"token":"t","expires_in":-5}"#, Some("t"), 60),
            (r#"{"token":"t","expires_in":300.7}"#, Some("t"), 300),
            (r#"{"token":"t","expires_in":"600"}"#, Some("t"), 600),
            (r#"{"token":"t","expires_in":"soon"}"#, Some("t"), 60),
            (r#"{"token":"t","expires_in":null}"#, Some("t"), 60),
            (r#"{"token":"t","expires_in":[1]}"#, Some("t"), 60),
        ];
        for (json, bearer, lifetime) in cases {
            let t: TokenResponse = serde_json::from_str(json).unwrap();
            assert_eq!(t.bearer(), *bearer, "{json}");
            assert_eq!(t.lifetime_secs(), *lifetime, "{json}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse_www_authenticate(&s);
        }

        #[test]
        fn quoted_values_round_trip(realm in "\\PC*", scope in "\\PC*") {
            let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
            let header = format!(r#"Bearer realm="{}",scope="{}""#, q(&realm), q(&scope));
            let got = parse_www_authenticate(&header).unwrap();
            prop_assert_eq!(got.len(), 1);
            prop_assert_eq!(got[0].realm(), Some(realm.as_str()));
            prop_assert_eq!(got[0].scope(), Some(scope.as_str()));
        }
    }
}
