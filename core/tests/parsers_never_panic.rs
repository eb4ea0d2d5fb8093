//! Every parser of untrusted input in the core, under generated input
//! (issue 14, "Property tests"): it never panics, and what it refuses is an
//! OCI error with a client-error status (4xx), never a server error.
//!
//! CI runs 1,000 cases per property; the long run is
//! `WHARF_PROPTEST_CASES=100000 cargo test -p wharf-core --release --test parsers_never_panic`.
//!
//! Inputs mix arbitrary Unicode with strings drawn from each grammar's own
//! alphabet, so that generated input reaches past the first character check.

use proptest::prelude::*;
use wharf_core::media::{MediaType, accept_manifest, accepts};
use wharf_core::range::{RangeOutcome, parse_range};
use wharf_core::token::{self, Scope, SigningKey};
use wharf_core::{Digest, ErrorCode, Reference, RepositoryName, api, auth, ticket};

fn cases() -> u32 {
    std::env::var("WHARF_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A refusal a client caused: 4xx.
fn client_error(code: ErrorCode) -> Result<(), TestCaseError> {
    let status = code.status();
    prop_assert!(
        (400..500).contains(&status),
        "{code:?} answers {status}, not a client error"
    );
    Ok(())
}

/// Arbitrary text, or text of the registry path alphabet.
fn text(alphabet: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), alphabet]
}

const PATHISH: &str = "[a-zA-Z0-9._/:@+=%-]{0,120}";
const DIGESTISH: &str = "(sha256|sha512|SHA256|md5)?:?[0-9a-fA-Fg+=]{0,130}";
const RANGEISH: &str = "(bytes|BYTES|items)?=?[0-9, -]{0,40}";
const ACCEPTISH: &str = "[a-z./+*;=, 0-9qQ-]{0,160}";
const TOKENISH: &str = "[A-Za-z0-9_=.-]{0,200}";

proptest! {
    #![proptest_config(config())]

    #[test]
    fn request_lines_parse_or_get_a_client_error(
        method in prop_oneof![Just("GET".to_owned()), Just("HEAD".to_owned()), "[A-Z]{0,8}"],
        path in prop_oneof![text(PATHISH), PATHISH.prop_map(|p| format!("/v2/{p}"))],
        query in proptest::option::of(text("[a-z=&%0-9.-]{0,60}")),
    ) {
        if let Err(e) = api::parse_request(&method, &path, query.as_deref()) {
            client_error(e.code())?;
        }
    }

    #[test]
    fn names_references_and_digests_parse_or_refuse_and_round_trip(
        s in text(PATHISH),
        d in text(DIGESTISH),
    ) {
        if let Ok(name) = RepositoryName::parse(&s) {
            prop_assert_eq!(RepositoryName::parse(name.as_str()).ok(), Some(name.clone()));
        }
        if let Ok(reference) = Reference::parse(&s) {
            prop_assert_eq!(Reference::parse(&reference.to_string()).ok(), Some(reference));
        }
        if let Ok(digest) = Digest::parse(&d) {
            prop_assert_eq!(Digest::parse(&digest.to_string()).ok(), Some(digest));
        }
    }

    #[test]
    fn ranges_are_within_the_blob_or_refused(
        header in text(RANGEISH),
        len in prop_oneof![Just(0u64), 1u64..1 << 20, Just(u64::MAX)],
    ) {
        if let Ok(RangeOutcome::Partial(r)) = parse_range(&header, len) {
            prop_assert!(r.start <= r.end_inclusive && r.end_inclusive < len, "{r:?} of {len}");
        }
    }

    #[test]
    fn accept_headers_and_manifest_bodies_never_panic(
        accept in proptest::collection::vec(text(ACCEPTISH), 0..4),
        media in text(ACCEPTISH),
        body in prop_oneof![
            any::<Vec<u8>>(),
            text(r#"[{}\[\]":, a-zA-Z0-9.+/]{0,200}"#).prop_map(String::into_bytes),
        ],
        content_type in proptest::option::of(text(ACCEPTISH)),
    ) {
        let headers: Vec<&str> = accept.iter().map(String::as_str).collect();
        let _ = accepts(&headers, &MediaType::parse(&media));
        // A refused manifest is the upstream's fault, answered 503 by
        // both deployables: only that it returns is checked here.
        let _ = accept_manifest(&body, content_type.as_deref(), None, None);
    }

    #[test]
    fn tokens_and_credentials_are_refused_with_a_client_error(
        t in text(TOKENISH),
        header in text("(Bearer|Basic|bearer)? ?[A-Za-z0-9+/=:._-]{0,120}"),
        scope in text("[a-z]{0,12}:?[a-z0-9/._-]{0,40}:?[a-z,*]{0,20}"),
        now in any::<u64>(),
    ) {
        let key = SigningKey::new(b"parsers-never-panic-test-key-0123456789".to_vec()).unwrap();
        if let Err(e) = token::verify_unscoped(&key, &t, "wharf.test", now) {
            client_error(e.code())?;
        }
        let _ = token::parse_bearer(&header);
        let _ = token::parse_basic(&header);
        if let Err(e) = Scope::parse(&scope) {
            client_error(e.code())?;
        }
    }

    #[test]
    fn tickets_are_refused_with_a_client_error(
        t in text("[0-9]{0,12}\\.?[A-Za-z0-9_-]{0,60}"),
        now in any::<u64>(),
        private in any::<bool>(),
    ) {
        let key = SigningKey::new(b"parsers-never-panic-test-key-0123456789".to_vec()).unwrap();
        let name = RepositoryName::parse("up/team/app").unwrap();
        let digest = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        let rule = ticket::TicketRule { prefix: "up", private };
        if let Err(e) = ticket::verify(&key, &t, rule, &name, &digest, now) {
            client_error(e.code())?;
        }
    }

    #[test]
    fn upstream_challenges_and_error_bodies_never_panic(
        header in text(r#"(Bearer|Basic)? ?[a-z]{0,8}="?[a-zA-Z0-9:/.,_ "=-]{0,120}"?"#),
        body in any::<Vec<u8>>(),
    ) {
        let _ = auth::parse_www_authenticate(&header);
        let _ = wharf_core::error::parse_error_body(&body);
    }
}
