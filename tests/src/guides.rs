//! The README's client guides, as the tests run them: each
//! `<!-- guide: NAME -->` comment marks the fenced block after it, and
//! [`localize`] swaps the example addresses for the test's own (and
//! nothing else), so the tests run exactly what users read.

use anyhow::{Context, Result};

/// The fenced block after `<!-- guide: name -->` in the README.
pub fn guide(name: &str) -> Result<String> {
    let readme = std::fs::read_to_string(crate::edge::workspace_root().join("README.md"))?;
    let marker = format!("<!-- guide: {name} -->");
    let after = readme
        .split_once(&marker)
        .with_context(|| format!("README.md has no {marker}"))?
        .1;
    let fence = after
        .find("```")
        .with_context(|| format!("no code block after {marker}"))?;
    let block = &after[fence + 3..];
    let body = block
        .split_once('\n')
        .with_context(|| format!("unterminated block after {marker}"))?
        .1;
    let end = body
        .find("```")
        .with_context(|| format!("unterminated block after {marker}"))?;
    Ok(body[..end].to_owned())
}

/// The guide's text with the example addresses replaced: the edge
/// (`host:port`), the origin (`host:port`), plain HTTP on loopback, and
/// Docker Hub a closed loopback port (a client that fell back to it fails).
pub fn localize(text: &str, edge: &str, origin: &str) -> String {
    text.replace("https://wharf.example.com", &format!("http://{edge}"))
        .replace("wharf.example.com", edge)
        .replace("origin.example.com:5000", origin)
        .replace("https://registry-1.docker.io", "http://127.0.0.1:9")
        .replace("registry-1.docker.io", "127.0.0.1:9")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guide_the_tests_run_is_in_the_readme() {
        for name in [
            "docker-by-name",
            "docker-regional",
            "docker-daemon-json",
            "docker-mirror-pull",
            "containerd-hosts-toml",
            "kubernetes-image",
            "registries-conf",
            "ci-login",
            "origin-only",
        ] {
            let text = guide(name).unwrap();
            assert!(!text.trim().is_empty(), "{name}");
        }
        assert_eq!(
            localize(
                "server = \"https://registry-1.docker.io\"\n[host.\"https://wharf.example.com\"]\ndocker pull origin.example.com:5000/x",
                "127.0.0.1:8787",
                "127.0.0.1:5000"
            ),
            "server = \"http://127.0.0.1:9\"\n[host.\"http://127.0.0.1:8787\"]\ndocker pull 127.0.0.1:5000/x"
        );
    }
}
