//! Repository names, tags and manifest references (OCI distribution-spec grammar).
//!
//! Owns [`RepositoryName`], [`Tag`], [`Reference`] and [`ReferenceError`].
//!
//! Key decision: the grammars are checked by small hand-written state machines
//! instead of the `regex` crate, which would cost far more in the wasm bundle than
//! the ~40 lines here, and which could not say *what* is wrong. Every error names the
//! offending input, the position, and the grammar it breaks, because these messages
//! end up in `NAME_INVALID` bodies that users read.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, DigestError, excerpt};

/// Maximum total length of a repository name, per the distribution spec.
pub const MAX_NAME_LEN: usize = 255;
/// Maximum length of a tag, per the distribution spec.
pub const MAX_TAG_LEN: usize = 128;

const NAME_GRAMMAR: &str = "components `[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*` separated by `/`";
const TAG_GRAMMAR: &str = "`[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`";

/// Why a repository name, tag or reference is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The repository name is empty.
    #[error("repository name is empty; expected {NAME_GRAMMAR}")]
    NameEmpty,
    /// The repository name is longer than [`MAX_NAME_LEN`].
    #[error("repository name is {len} characters long; the maximum is 255")]
    NameTooLong {
        /// The actual length.
        len: usize,
    },
    /// A leading, trailing or doubled `/`.
    #[error(
        "repository name `{name}` has an empty path component (leading, trailing or double `/`); expected {NAME_GRAMMAR}"
    )]
    NameEmptyComponent {
        /// The offending name (possibly shortened).
        name: String,
    },
    /// A character outside `[a-z0-9._/-]`.
    #[error(
        "repository name `{name}` has `{ch}` at position {index}{hint}; expected {NAME_GRAMMAR}"
    )]
    NameInvalidChar {
        /// The offending name (possibly shortened).
        name: String,
        /// The first bad character.
        ch: char,
        /// Its byte position.
        index: usize,
        /// Extra advice (for uppercase letters), possibly empty.
        hint: &'static str,
    },
    /// A component starting or ending with a separator, or a separator run other than
    /// `.`, `_`, `__` or `-+`.
    #[error(
        "repository name `{name}` has a misplaced separator at position {index} (components start and end with [a-z0-9]; separators are `.`, `_`, `__` or dashes); expected {NAME_GRAMMAR}"
    )]
    NameInvalidSeparator {
        /// The offending name (possibly shortened).
        name: String,
        /// Byte position of the offending separator character.
        index: usize,
    },
    /// The tag is empty.
    #[error("tag is empty; expected {TAG_GRAMMAR}")]
    TagEmpty,
    /// The tag is longer than [`MAX_TAG_LEN`].
    #[error("tag is {len} characters long; the maximum is 128; expected {TAG_GRAMMAR}")]
    TagTooLong {
        /// The actual length.
        len: usize,
    },
    /// A character not allowed at this position of a tag.
    #[error("tag `{tag}` has `{ch}` at position {index}; expected {TAG_GRAMMAR}")]
    TagInvalidChar {
        /// The offending tag (possibly shortened).
        tag: String,
        /// The first bad character.
        ch: char,
        /// Its byte position.
        index: usize,
    },
    /// A reference containing `:` that is not a valid digest.
    #[error("reference is not a valid digest: {0}")]
    Digest(#[from] DigestError),
}

/// A validated repository name such as `library/alpine` or `ghcr.io/owner/img`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepositoryName(String);

#[derive(Clone, Copy, PartialEq)]
enum NameState {
    /// At the start of a component: need `[a-z0-9]`.
    Start,
    /// After an alphanumeric: anything goes.
    Alnum,
    /// After `.`: need `[a-z0-9]`.
    Dot,
    /// After one `_`: need `[a-z0-9]` or a second `_`.
    Underscore1,
    /// After `__`: need `[a-z0-9]`.
    Underscore2,
    /// After one or more `-`: need `[a-z0-9]` or another `-`.
    Dashes,
}

impl RepositoryName {
    /// Validates `s` against the distribution-spec name grammar.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        validate_name(s)?;
        Ok(RepositoryName(s.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated path components (never empty).
    pub fn components(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// The number of path components.
    pub fn component_count(&self) -> usize {
        self.components().count()
    }
}

fn validate_name(s: &str) -> Result<(), ReferenceError> {
    use NameState::*;
    if s.is_empty() {
        return Err(ReferenceError::NameEmpty);
    }
    if s.len() > MAX_NAME_LEN {
        return Err(ReferenceError::NameTooLong { len: s.len() });
    }
    let sep_err = |index| ReferenceError::NameInvalidSeparator {
        name: excerpt(s),
        index,
    };
    let mut state = Start;
    for (index, ch) in s.char_indices() {
        state = match (state, ch) {
            (_, 'a'..='z' | '0'..='9') => Alnum,
            (Alnum, '/') => Start,
            (Start, '/') => {
                return Err(ReferenceError::NameEmptyComponent { name: excerpt(s) });
            }
            (_, '/') => return Err(sep_err(index - 1)),
            (Alnum, '.') => Dot,
            (Alnum, '_') => Underscore1,
            (Underscore1, '_') => Underscore2,
            (Alnum | Dashes, '-') => Dashes,
            (_, '.' | '_' | '-') => return Err(sep_err(index)),
            (_, ch) => {
                return Err(ReferenceError::NameInvalidChar {
                    name: excerpt(s),
                    ch,
                    index,
                    hint: if ch.is_ascii_uppercase() {
                        " (repository names must be lowercase)"
                    } else {
                        ""
                    },
                });
            }
        };
    }
    match state {
        Alnum => Ok(()),
        Start => Err(ReferenceError::NameEmptyComponent { name: excerpt(s) }),
        _ => Err(sep_err(s.len() - 1)),
    }
}

/// A validated tag such as `latest` or `v1.2.3-alpine`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tag(String);

impl Tag {
    /// Validates `s` against `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::TagEmpty);
        }
        for (index, ch) in s.char_indices() {
            let ok =
                ch.is_ascii_alphanumeric() || ch == '_' || (index > 0 && matches!(ch, '.' | '-'));
            if !ok {
                return Err(ReferenceError::TagInvalidChar {
                    tag: excerpt(s),
                    ch,
                    index,
                });
            }
        }
        // All ASCII now, so bytes == characters.
        if s.len() > MAX_TAG_LEN {
            return Err(ReferenceError::TagTooLong { len: s.len() });
        }
        Ok(Tag(s.to_owned()))
    }

    /// The tag as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What follows `/manifests/`: a tag (mutable) or a digest (immutable).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Reference {
    /// A tag; its target may change, so it is subject to the freshness policy.
    Tag(Tag),
    /// A digest; the content is immutable and cacheable forever.
    Digest(Digest),
}

impl Reference {
    /// A string containing `:` is parsed as a digest (tags cannot contain `:`),
    /// anything else as a tag.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.contains(':') {
            Ok(Reference::Digest(Digest::parse(s)?))
        } else {
            Ok(Reference::Tag(Tag::parse(s)?))
        }
    }

    /// True for a digest reference.
    pub fn is_digest(&self) -> bool {
        matches!(self, Reference::Digest(_))
    }

    /// The digest, if this is a digest reference.
    pub fn as_digest(&self) -> Option<&Digest> {
        match self {
            Reference::Digest(d) => Some(d),
            Reference::Tag(_) => None,
        }
    }

    /// The tag, if this is a tag reference.
    pub fn as_tag(&self) -> Option<&Tag> {
        match self {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        }
    }
}

/// An image as people write it: `name`, `name:tag` or `name@digest` (a
/// bare name means `:latest`, as `docker pull` does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// The repository.
    pub name: RepositoryName,
    /// The tag or digest.
    pub reference: Reference,
}

impl ImageRef {
    /// Parses `name[:tag|@digest]`; a `:` in the last path segment starts
    /// the tag (a registry port is not part of a cache's repository names).
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        let (name, reference) = match s.split_once('@') {
            Some((name, digest)) => (name, Reference::Digest(Digest::parse(digest)?)),
            None => {
                let last = s.rfind('/').map_or(0, |i| i + 1);
                match s[last..].find(':') {
                    Some(i) => (
                        &s[..last + i],
                        Reference::Tag(Tag::parse(&s[last + i + 1..])?),
                    ),
                    None => (s, Reference::Tag(Tag::parse("latest")?)),
                }
            }
        };
        Ok(ImageRef {
            name: RepositoryName::parse(name)?,
            reference,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}:{t}", self.name),
            Reference::Digest(d) => write!(f, "{}@{d}", self.name),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

impl From<Tag> for Reference {
    fn from(t: Tag) -> Self {
        Reference::Tag(t)
    }
}

impl From<Digest> for Reference {
    fn from(d: Digest) -> Self {
        Reference::Digest(d)
    }
}

/// Display, FromStr and the serde string conversions for a string newtype.
macro_rules! string_newtype {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
    };
}
string_newtype!(RepositoryName);
string_newtype!(Tag);

/// FromStr and TryFrom<String> via `parse`.
macro_rules! parse_impls {
    ($t:ident) => {
        impl FromStr for $t {
            type Err = ReferenceError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $t::parse(s)
            }
        }
        impl TryFrom<String> for $t {
            type Error = ReferenceError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                $t::parse(&s)
            }
        }
    };
}
parse_impls!(RepositoryName);
parse_impls!(Tag);
parse_impls!(Reference);

impl From<Reference> for String {
    fn from(r: Reference) -> String {
        r.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_as_people_write_them() {
        let d = format!("sha256:{}", "a".repeat(64));
        for (input, name, reference) in [
            ("library/alpine", "library/alpine", "latest"),
            ("up/team/app:v1.2", "up/team/app", "v1.2"),
            (
                &format!("up/team/app@{d}") as &str,
                "up/team/app",
                &d as &str,
            ),
        ] {
            let image = ImageRef::parse(input).unwrap();
            assert_eq!(image.name.as_str(), name, "{input}");
            assert_eq!(image.reference.to_string(), reference, "{input}");
        }
        assert_eq!(
            ImageRef::parse("up/app:v1").unwrap().to_string(),
            "up/app:v1"
        );
        for bad in [
            "",
            "UP/app",
            "up/app:",
            "up/app@sha256:zz",
            "up/app:bad tag",
            ":v1",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
    use proptest::prelude::*;

    #[test]
    fn name_table() {
        let long_ok = format!("{}/{}", "a".repeat(127), "b".repeat(127));
        let too_long = format!("{}/{}", "a".repeat(128), "b".repeat(127));
        let cases: Vec<(&str, Option<&str>)> = vec![
            ("alpine", None),
            ("library/alpine", None),
            ("ghcr.io/owner/img", None),
            ("a.b_c__d-e---f/x0", None),
            ("0", None),
            (&long_ok, None),
            ("", Some("empty")),
            (&too_long, Some("256 characters long")),
            ("/alpine", Some("empty path component")),
            ("library/", Some("empty path component")),
            ("a//b", Some("empty path component")),
            (
                "Alpine",
                Some("`A` at position 0 (repository names must be lowercase)"),
            ),
            ("a b", Some("` ` at position 1")),
            ("a:b", Some("`:` at position 1")),
            ("é", Some("`é` at position 0")),
            (".a", Some("misplaced separator at position 0")),
            ("a.", Some("misplaced separator at position 1")),
            ("a-/b", Some("misplaced separator at position 1")),
            ("a..b", Some("position 2")),
            ("a___b", Some("position 3")),
            ("a._b", Some("position 2")),
            ("a-.b", Some("position 2")),
            ("a_-b", Some("position 2")),
        ];
        for (input, want_err) in cases {
            match (RepositoryName::parse(input), want_err) {
                (Ok(n), None) => assert_eq!(n.as_str(), input),
                (Err(e), Some(msg)) => {
                    let text = e.to_string();
                    assert!(text.contains(msg), "{input}: `{text}` lacks `{msg}`");
                    assert!(
                        text.contains("expected") || text.contains("maximum"),
                        "{text}"
                    );
                }
                (got, want) => panic!("{input:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn name_components() {
        let n = RepositoryName::parse("ghcr.io/owner/img").unwrap();
        assert_eq!(
            n.components().collect::<Vec<_>>(),
            ["ghcr.io", "owner", "img"]
        );
        assert_eq!(n.component_count(), 3);
    }

    #[test]
    fn tag_table() {
        let max = "a".repeat(128);
        let over = "a".repeat(129);
        let cases: Vec<(&str, Option<&str>)> = vec![
            ("latest", None),
            ("V1.2.3-rc_1", None),
            ("_x", None),
            (&max, None),
            ("", Some("empty")),
            (&over, Some("129 characters")),
            (".x", Some("`.` at position 0")),
            ("-x", Some("`-` at position 0")),
            ("a/b", Some("`/` at position 1")),
            ("a+b", Some("`+` at position 1")),
        ];
        for (input, want_err) in cases {
            match (Tag::parse(input), want_err) {
                (Ok(t), None) => assert_eq!(t.as_str(), input),
                (Err(e), Some(msg)) => assert!(e.to_string().contains(msg), "{input}: {e}"),
                (got, want) => panic!("{input:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn reference_splits_on_colon() {
        let d = Digest::sha256_of(b"x").to_string();
        let r = Reference::parse(&d).unwrap();
        assert!(r.is_digest());
        assert_eq!(r.to_string(), d);
        let r = Reference::parse("latest").unwrap();
        assert!(!r.is_digest());
        assert_eq!(r.as_tag().unwrap().as_str(), "latest");
        assert!(matches!(
            Reference::parse("sha256:zz"),
            Err(ReferenceError::Digest(_))
        ));
        assert!(matches!(
            Reference::parse("a b"),
            Err(ReferenceError::TagInvalidChar { .. })
        ));
    }

    #[test]
    fn serde_uses_strings() {
        let n: RepositoryName = serde_json::from_str("\"library/alpine\"").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"library/alpine\"");
        assert!(serde_json::from_str::<RepositoryName>("\"Bad\"").is_err());
        let r: Reference = serde_json::from_str("\"latest\"").unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"latest\"");
        assert!(serde_json::from_str::<Tag>("\"-x\"").is_err());
    }

    const COMPONENT: &str = "[a-z0-9]{1,4}((\\.|_|__|-{1,3})[a-z0-9]{1,4}){0,3}";

    proptest! {
        #[test]
        fn name_parse_never_panics(s in "\\PC*") {
            let _ = RepositoryName::parse(&s);
            let _ = Tag::parse(&s);
            let _ = Reference::parse(&s);
        }

        #[test]
        fn generated_names_round_trip(parts in proptest::collection::vec(COMPONENT, 1..6)) {
            let s = parts.join("/");
            let n = RepositoryName::parse(&s).unwrap();
            prop_assert_eq!(n.to_string(), s.clone());
            prop_assert_eq!(n.components().count(), parts.len());
            prop_assert_eq!(s.parse::<RepositoryName>().unwrap(), n);
        }

        #[test]
        fn generated_tags_round_trip(s in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}") {
            let t = Tag::parse(&s).unwrap();
            prop_assert_eq!(t.to_string(), s.clone());
            prop_assert_eq!(Reference::parse(&s).unwrap(), Reference::Tag(t));
        }

        #[test]
        fn uppercase_names_are_rejected(s in "[a-z]{0,5}[A-Z][a-z]{0,5}") {
            prop_assert!(RepositoryName::parse(&s).is_err());
        }
    }
}
