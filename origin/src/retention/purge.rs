//! `wharf purge`: one image out of this region now, the way a retention
//! pass evicts it — its manifest links and the tag records that point at
//! it go at once (and from this process's memory); its bytes follow at the
//! next passes, two-phase, like any evicted image's, so a pull in progress
//! or an edge that remembers a blob is never broken. A later pull fetches
//! it again from the upstream.

use std::collections::{BTreeMap, BTreeSet};

use wharf_core::keys::StoreKey;
use wharf_core::retention::{self, ManifestLink, StoredBlob};
use wharf_core::{Digest, Reference, RepositoryName};

pub use wharf_core::admin::PurgeReport;

use super::Retention;
use crate::manifests::TagRecord;
use crate::metrics;
use crate::store;

impl Retention {
    /// Purges `repo`'s image `reference` (a tag: the image it points at,
    /// and the tag).
    pub async fn purge(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<PurgeReport, store::Error> {
        let mut report = PurgeReport::default();
        let mut tag_keys = BTreeSet::new();
        let digest = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(t) => {
                let key = store::tag_key(repo, t);
                let record = self.read_json::<TagRecord>(&key).await?;
                tag_keys.insert(key);
                record.map(|r| r.digest)
            }
        };
        if let Some(digest) = &digest {
            // The repository's images, to find the one `digest` belongs to
            // (an index, when it is one of its platforms).
            let links: Vec<ManifestLink> = self
                .services
                .store
                .list(&format!("links/{repo}/_/manifests/"))
                .await?
                .into_iter()
                .filter_map(|l| match StoreKey::parse(&l.key) {
                    Some(StoreKey::ManifestLink(repo, digest)) => Some(ManifestLink {
                        repo,
                        digest,
                        written_ms: l.modified_ms,
                    }),
                    _ => None,
                })
                .collect();
            let stored: Vec<StoredBlob> = links
                .iter()
                .map(|l| StoredBlob {
                    digest: l.digest.clone(),
                    written_ms: 0,
                })
                .collect();
            let refs = self.references(&stored).await?;
            let images = retention::images(&links, &refs, &BTreeMap::new(), |_| String::new());
            let image = images.iter().find(|i| i.manifests.contains(digest));
            let (top, manifests): (Digest, Vec<Digest>) = match image {
                Some(i) => (
                    i.key
                        .rsplit_once('@')
                        .and_then(|(_, d)| Digest::parse(d).ok())
                        .unwrap_or_else(|| digest.clone()),
                    i.manifests.clone(),
                ),
                None => (digest.clone(), vec![digest.clone()]),
            };
            let link_keys: Vec<String> = manifests
                .iter()
                .map(|d| store::manifest_link_key(repo, d))
                .collect();
            self.delete_all("link", &link_keys).await;
            for key in &link_keys {
                self.services.links.forget(key);
            }
            let tops = BTreeMap::from([(repo.clone(), BTreeSet::from([top.clone()]))]);
            tag_keys.extend(self.tags_pointing_at(&tops).await?);
            report.digest = Some(top.to_string());
            report.manifests = manifests.iter().map(Digest::to_string).collect();
            let rule = self.rule_of(repo);
            metrics::evicted(&rule, "purged", 0);
            self.services.events.emit(crate::events::Event::Eviction {
                at_ms: crate::events::now_ms(),
                rule,
                repository: repo.to_string(),
                digest: top.to_string(),
                reason: "purged".into(),
                bytes: 0,
            });
        }
        let tag_keys: Vec<String> = tag_keys.into_iter().collect();
        self.delete_all("tag", &tag_keys).await;
        for key in &tag_keys {
            self.services.manifests.forget_remembered(key);
        }
        report.tags = tag_keys
            .iter()
            .filter_map(|k| match StoreKey::parse(k) {
                Some(StoreKey::Tag(_, t)) => Some(t.to_string()),
                _ => None,
            })
            .collect();
        tracing::info!(%repo, %reference, digest = ?report.digest, manifests = report.manifests.len(), tags = report.tags.len(), "purged");
        Ok(report)
    }

    /// The rule `repo` comes through (`""` if none does any more).
    pub(super) fn rule_of(&self, repo: &RepositoryName) -> String {
        self.services
            .rules
            .resolve(repo, None)
            .map(|r| r.prefix)
            .unwrap_or_default()
    }
}
