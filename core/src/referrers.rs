//! The referrers API's fallback (distribution spec, "Referrers Tag Schema"):
//! an upstream that predates `GET /v2/<name>/referrers/<digest>` answers 404,
//! and the referrers of a manifest are then the image index stored under the
//! tag `<alg>-<hex>`; when that does not exist either, the answer is an empty
//! index.
//!
//! Key decision: the fallback index holds every referrer, so an
//! `artifactType` filter is applied here, as the referrers API would, and
//! the response says so (`OCI-Filters-Applied`); a body that is not a JSON
//! object is passed through unfiltered rather than refused, as the upstream
//! is the authority on its own index.

use crate::Digest;

/// The media type of a referrers answer.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The answer when neither the referrers API nor the fallback tag exists.
pub const EMPTY_INDEX: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;

/// The fallback tag under which `subject`'s referrers index is stored.
pub fn fallback_tag(subject: &Digest) -> String {
    format!("{}-{}", subject.algorithm().as_str(), subject.hex())
}

/// `index` with only the descriptors whose `artifactType` is `wanted`, or
/// `None` when `index` is not a JSON object (pass it through as it is).
pub fn filter_by_artifact_type(index: &[u8], wanted: &str) -> Option<Vec<u8>> {
    let serde_json::Value::Object(mut index) = serde_json::from_slice(index).ok()? else {
        return None;
    };
    if let Some(serde_json::Value::Array(list)) = index.get_mut("manifests") {
        list.retain(|m| m.get("artifactType").and_then(|t| t.as_str()) == Some(wanted));
    }
    serde_json::to_vec(&index).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_tag_is_algorithm_dash_hex() {
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(fallback_tag(&d), format!("sha256-{}", "ab".repeat(32)));
    }

    #[test]
    fn filtering_keeps_only_the_wanted_artifact_type() {
        let index = br#"{"schemaVersion":2,"manifests":[
            {"artifactType":"application/sbom","digest":"sha256:1"},
            {"artifactType":"application/sig","digest":"sha256:2"},
            {"digest":"sha256:3"}]}"#;
        let cases: &[(&[u8], &str, Option<&str>)] = &[
            (
                index,
                "application/sbom",
                Some(
                    r#"{"manifests":[{"artifactType":"application/sbom","digest":"sha256:1"}],"schemaVersion":2}"#,
                ),
            ),
            (index, "none", Some(r#"{"manifests":[],"schemaVersion":2}"#)),
            (
                br#"{"schemaVersion":2}"#,
                "x",
                Some(r#"{"schemaVersion":2}"#),
            ),
            (b"[1,2]", "x", None),
            (b"not json", "x", None),
            (
                EMPTY_INDEX,
                "x",
                Some(
                    r#"{"manifests":[],"mediaType":"application/vnd.oci.image.index.v1+json","schemaVersion":2}"#,
                ),
            ),
        ];
        for (body, wanted, want) in cases {
            let got = filter_by_artifact_type(body, wanted);
            let got = got.as_deref().map(|b| std::str::from_utf8(b).unwrap());
            assert_eq!(got, *want, "{wanted}");
        }
    }
}
