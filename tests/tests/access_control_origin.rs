//! Who may pull what, through the origin alone (issue 12, "the leaks to
//! close").
//!
//! Two real Distribution upstreams: A (public, anonymous) and B (private:
//! token auth, credentials only in the origin's rule). One origin with a
//! token key and three rules: `up` → A (public), `up/acme` → B (private,
//! nested under the public prefix on purpose) and `priv` → B (private). The
//! tests mint tokens and tickets with the shared key, as the edge does.
//!
//! Images: `app:v1` on B, i.e. `up/acme/app:v1` (a layer shared with A's
//! `pub2:v1`, a layer only B has), `app:v2` on B (never pulled: cold private
//! blobs), `pub:v1` and `pub2:v1` on A.
//!
//! Every probe is evaluated and recorded ([`Probes`]); a test fails at the
//! end with the list of every probe that leaked, and prints the table
//! (probe → status today) either way.

use std::path::Path;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue};
use wharf_core::token::SigningKey;
use wharf_core::{Digest, RepositoryName, ticket};
use wharf_tests::clients::{fetch_blob, get_manifest};
use wharf_tests::images::ALL_MANIFEST_TYPES;
use wharf_tests::probes::{
    Outcome, PRIVATE_PREFIX, PUBLIC_PREFIX, Probes, Upstreams, short_digest,
};
use wharf_tests::{Fault, Kind, Origin, OriginOpts, TestDir, http_client, wait_until};

const KEY: &str = "access-control-origin-test-key-0123456789";
const SERVICE: &str = "wharf.test";

fn key() -> SigningKey {
    wharf_tests::tokens::key(KEY)
}

/// A token as the edge issues it: `pull` on `names`, and the private rules
/// the user signed in for.
fn token(names: &[&str], private_rules: &[&str]) -> String {
    wharf_tests::tokens::pull_token(KEY, SERVICE, names, private_rules, 300)
}

/// Every ticket of this file is minted here, as the edge mints it for a
/// redirect to `/v2/<name>/blobs/<digest>` after resolving the request to
/// the rule `rule` (private or not). Today's `ticket::issue` binds only
/// name, digest and expiry; once it also binds the rule, pass `rule` and
/// `private` on (a one-line change).
fn mint_ticket(name: &str, digest: &str, rule: &str, private: bool) -> String {
    ticket::issue(
        &key(),
        ticket::TicketRule {
            prefix: rule,
            private,
        },
        &RepositoryName::parse(name).unwrap(),
        &Digest::parse(digest).unwrap(),
        wharf_tests::tokens::now() + 60,
    )
}

/// Fields drop in declaration order: origin, upstreams, then the directory.
struct Fixture {
    origin: Origin,
    up: Upstreams,
    _dir: TestDir,
}

impl std::ops::Deref for Fixture {
    type Target = Upstreams;
    fn deref(&self) -> &Upstreams {
        &self.up
    }
}

impl Fixture {
    /// The private image's own layers have these content sizes.
    async fn start(name: &str, private_layers: &[u64]) -> Fixture {
        let dir = TestDir::new(name).unwrap();
        let up = Upstreams::start(&dir, private_layers, &[4000, 4100])
            .await
            .unwrap();
        let config = format!(
            "[auth]\ntoken_key = \"{KEY}\"\nservice = \"{SERVICE}\"\n{}",
            up.rules_toml()
        );
        let origin = Origin::start(
            &dir,
            OriginOpts {
                config_toml: Some(config),
                ..OriginOpts::default()
            },
        )
        .await
        .unwrap();
        Fixture {
            origin,
            up,
            _dir: dir,
        }
    }

    /// The private image's first private-only layer.
    fn private_layer(&self) -> &str {
        &self.private.layer_digests[1]
    }

    fn reset(&self) {
        self.a.reset_counts();
        self.b.reset_counts();
    }

    /// `GET` (or `HEAD`) `path` at the origin with `token` (if any).
    async fn send(&self, head: bool, path: &str, token: Option<&str>) -> Outcome {
        let url = format!("{}{path}", self.origin.url());
        let client = http_client();
        let mut req = if head {
            client.head(url)
        } else {
            client.get(url)
        };
        req = req.header(ACCEPT, ALL_MANIFEST_TYPES.join(", "));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Outcome::send(req).await
    }

    /// (a) The signed-in pull: a token granting `up/acme/app` with the
    /// private rule pulls `up/acme/app:v1`, manifest and every blob,
    /// byte-exact; then waits until every blob is in the store.
    async fn signed_in_pull(&self) {
        let t = token(&["up/acme/app"], &[PRIVATE_PREFIX]);
        let client = bearer_client(&t);
        let base = self.origin.url();
        let (bytes, _, _) = get_manifest(&client, &base, "up/acme/app", "v1")
            .await
            .unwrap();
        assert_eq!(
            wharf_tests::sha256_digest(&bytes),
            self.private.manifest_digest,
            "the signed-in pull gets the private manifest byte-exact"
        );
        for (digest, size) in self.private.blobs() {
            fetch_blob(&client, &base, "up/acme/app", &digest, Some(size))
                .await
                .unwrap_or_else(|e| panic!("signed-in pull of blob {digest}: {e:#}"));
        }
        self.origin
            .wait_committed(self.private.blobs().len() as u64)
            .await
            .unwrap();
    }
}

fn bearer_client(token: &str) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// The embedded store's object files under the origin's data directory
/// (`<data>/s3/<bucket>/objects/<key segments>%obj`).
fn objects(data: &Path) -> Vec<String> {
    wharf_tests::files_under(data)
        .into_iter()
        .filter_map(|p| {
            let s = p.to_string_lossy().into_owned();
            s.split_once("/objects/").map(|(_, key)| key.to_owned())
        })
        .collect()
}

/// Objects holding `digest`'s bytes (the key `blobs/sha256/<hex>`).
fn stored_copies(data: &Path, digest: &str) -> usize {
    let hex = digest.trim_start_matches("sha256:");
    objects(data)
        .iter()
        .filter(|k| k.starts_with(&format!("blobs/sha256/{hex}")))
        .count()
}

/// Repository-link records (`links/<repo>/_/…`) for `repo`.
fn link_records(data: &Path, repo: &str) -> Vec<String> {
    objects(data)
        .into_iter()
        .filter(|k| k.starts_with(&format!("links/{repo}/_/")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_in_user_pulls_a_private_image_through_the_origin() {
    let f = Fixture::start("acl-origin-signed-in", &[6000]).await;
    f.signed_in_pull().await;
    // Without the private rule in the token, the same name is refused.
    let mut p = Probes::new("origin: signed-in pull (a)");
    let no_rule = token(&["up/acme/app"], &[]);
    let path = "/v2/up/acme/app/manifests/v1";
    f.reset();
    let o = f.send(false, path, Some(&no_rule)).await;
    p.refused(
        "GET up/acme/app:v1, token without the private rule",
        &o,
        false,
    );
    p.upstream_at_most("B", &f.b.counts(), 0);
    let o = f.send(false, path, None).await;
    p.refused("GET up/acme/app:v1, no token", &o, false);
    p.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_alias_of_a_private_name_is_refused_at_the_origin() {
    let f = Fixture::start("acl-origin-ns", &[6000]).await;
    f.signed_in_pull().await;
    // An anonymous-but-valid token: the edge grants `acme/app` to anyone,
    // since no rule's prefix matches it.
    let anon = token(&["acme/app"], &[]);
    let md = &f.private.manifest_digest;
    let layer = f.private_layer();
    let cold = &f.cold.layer_digests[0];
    let b_host = f.b.host();
    let probes: Vec<(String, String, bool)> = vec![
        (
            "GET acme/app/manifests/v1?ns=up (tag cached by the signed-in pull)".into(),
            "/v2/acme/app/manifests/v1?ns=up".into(),
            false,
        ),
        (
            "HEAD acme/app/manifests/v1?ns=up".into(),
            "/v2/acme/app/manifests/v1?ns=up".into(),
            true,
        ),
        (
            "GET acme/app/manifests/<private manifest digest>?ns=up".into(),
            format!("/v2/acme/app/manifests/{md}?ns=up"),
            false,
        ),
        (
            "GET acme/app/blobs/<private layer, stored>?ns=up".into(),
            format!("/v2/acme/app/blobs/{layer}?ns=up"),
            false,
        ),
        (
            "HEAD acme/app/blobs/<private layer, stored>?ns=up".into(),
            format!("/v2/acme/app/blobs/{layer}?ns=up"),
            true,
        ),
        (
            "GET acme/app/blobs/<private layer, cold>?ns=up".into(),
            format!("/v2/acme/app/blobs/{cold}?ns=up"),
            false,
        ),
        (
            "GET acme/app/manifests/v1?ns=<B host:port>".into(),
            format!("/v2/acme/app/manifests/v1?ns={b_host}"),
            false,
        ),
        (
            "GET acme/app/blobs/<private layer, stored>?ns=<B host:port>".into(),
            format!("/v2/acme/app/blobs/{layer}?ns={b_host}"),
            false,
        ),
        (
            "GET acme/app/tags/list?ns=up".into(),
            "/v2/acme/app/tags/list?ns=up".into(),
            false,
        ),
        (
            "GET acme/app/tags/list?ns=<B host:port>".into(),
            format!("/v2/acme/app/tags/list?ns={b_host}"),
            false,
        ),
        (
            "GET acme/app/referrers/<private manifest digest>?ns=up".into(),
            format!("/v2/acme/app/referrers/{md}?ns=up"),
            false,
        ),
    ];
    let mut p = Probes::new("origin: ?ns= aliasing (b)");
    for (probe, path, head) in probes {
        f.reset();
        let o = f.send(head, &path, Some(&anon)).await;
        p.refused(&probe, &o, head);
        // `?ns=up` aliases the private rule's names: the resolution itself
        // is refused, before any token or store check, as at the edge.
        // (`?ns=<B host:port>` resolves to `up/acme` itself: the token lacks
        // that private rule.)
        if path.ends_with("?ns=up") {
            p.expect(
                o.status == 403 && (head || o.code.as_deref() == Some("DENIED")),
                || "not the aliasing refusal (403 DENIED)".into(),
            );
        }
        if o.served(md) || o.served(layer) {
            p.fail("served the private bytes".into());
        }
        p.upstream_at_most("B (private upstream)", &f.b.counts(), 0);
    }
    p.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_digests_are_not_served_through_other_repositories_at_the_origin() {
    let f = Fixture::start("acl-origin-digests", &[6000]).await;
    f.signed_in_pull().await;
    let other = token(&["up/other"], &[]);
    let md = &f.private.manifest_digest;
    let layer = f.private_layer().to_owned();
    let config = f.private.config_digest.clone();
    let mut p = Probes::new("origin: digests through another repository (c)");
    let probes: Vec<(String, String, bool, &str)> = vec![
        (
            "GET up/other/blobs/<private layer>".into(),
            format!("/v2/up/other/blobs/{layer}"),
            false,
            "BLOB_UNKNOWN",
        ),
        (
            "HEAD up/other/blobs/<private layer>".into(),
            format!("/v2/up/other/blobs/{layer}"),
            true,
            "",
        ),
        (
            "GET up/other/blobs/<private config>".into(),
            format!("/v2/up/other/blobs/{config}"),
            false,
            "BLOB_UNKNOWN",
        ),
        (
            "GET up/other/blobs/<shared layer> (A has it, but not in `other`)".into(),
            format!("/v2/up/other/blobs/{}", f.shared),
            false,
            "BLOB_UNKNOWN",
        ),
        (
            "GET up/other/manifests/<private manifest digest>".into(),
            format!("/v2/up/other/manifests/{md}"),
            false,
            "MANIFEST_UNKNOWN",
        ),
        (
            "HEAD up/other/manifests/<private manifest digest>".into(),
            format!("/v2/up/other/manifests/{md}"),
            true,
            "",
        ),
    ];
    for (probe, path, head, code) in probes {
        f.reset();
        let o = f.send(head, &path, Some(&other)).await;
        p.refused(&probe, &o, head);
        if !head && o.is_oci_refusal(false) {
            p.expect(o.status == 404 && o.code.as_deref() == Some(code), || {
                format!("expected 404 {code}, got {}", o.summary())
            });
        }
        p.upstream_at_most("B (private upstream)", &f.b.counts(), 0);
        p.upstream_at_most("A (one confirmation per probe)", &f.a.counts(), 1);
    }

    // A public repository on A that really holds the shared layer gets it:
    // A confirms (at most one request, never a second GET of the bytes) and
    // the bytes stay stored once.
    let pub2 = token(&["up/pub2"], &[]);
    let client = bearer_client(&pub2);
    let base = f.origin.url();
    get_manifest(&client, &base, "up/pub2", "v1").await.unwrap();
    f.reset();
    let o = f
        .send(
            false,
            &format!("/v2/up/pub2/blobs/{}", f.shared),
            Some(&pub2),
        )
        .await;
    p.record(
        "GET up/pub2/blobs/<shared layer> (A has it in pub2)",
        o.summary(),
    );
    p.expect(o.served(&f.shared), || {
        format!("the shared layer was not served: {}", o.summary())
    });
    let a = f.a.counts();
    p.expect(a.get("GET", Kind::Blob) == 0, || {
        format!("A was asked for the bytes again:\n{a}")
    });
    p.upstream_at_most("A", &a, 1);
    p.upstream_at_most("B", &f.b.counts(), 0);
    // The rest of pub2 (its config) hydrates from A; then count copies.
    fetch_blob(
        &client,
        &base,
        "up/pub2",
        &f.pub2.config_digest,
        Some(f.pub2.config_size),
    )
    .await
    .unwrap();
    settle(&f.origin).await;
    let copies = stored_copies(f.origin.data_dir(), &f.shared);
    p.record(
        "store: files holding the shared layer",
        format!("{copies} file(s)"),
    );
    p.expect(copies == 1, || format!("stored {copies} times, want once"));
    // Nothing an upstream did not confirm leaves a record: the made-up
    // repository `up/other` has no link.
    let links = link_records(f.origin.data_dir(), "up/other");
    p.record(
        "store: link records for the made-up name up/other",
        format!("{} record(s)", links.len()),
    );
    p.expect(links.is_empty(), || {
        format!("the probes wrote link records: {links:?}")
    });
    p.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_are_bound_to_their_name_digest_and_rule_at_the_origin() {
    let f = Fixture::start("acl-origin-tickets", &[6000]).await;
    f.signed_in_pull().await;
    let private_layer = f.private_layer().to_owned();
    let pub_stored = f.public.layer_digests[0].clone();
    let pub_cold = f.public.layer_digests[1].clone();
    let (cold0, cold1) = (
        f.cold.layer_digests[0].clone(),
        f.cold.layer_digests[1].clone(),
    );
    let b_host = f.b.host();
    let q = ticket::QUERY_PARAM;
    let mut p = Probes::new("origin: tickets (d)");

    // Control: a public ticket for its own name and digest works.
    let t_pub = mint_ticket("up/pub", &pub_stored, PUBLIC_PREFIX, false);
    f.reset();
    let o = f
        .send(
            false,
            &format!("/v2/up/pub/blobs/{pub_stored}?{q}={t_pub}"),
            None,
        )
        .await;
    p.record("ticket up/pub@D on up/pub@D (control)", o.summary());
    p.expect(o.served(&pub_stored), || {
        format!("a valid ticket was not honoured: {}", o.summary())
    });

    let refusals: Vec<(&str, String)> = vec![
        (
            "ticket up/pub@D replayed on up/acme/app@D (other name, private rule)",
            format!("/v2/up/acme/app/blobs/{pub_stored}?{q}={t_pub}"),
        ),
        (
            "ticket up/pub@D replayed on up/acme/app@<private layer>",
            format!("/v2/up/acme/app/blobs/{private_layer}?{q}={t_pub}"),
        ),
        (
            "ticket up/pub@D used on up/pub@<private layer> (other digest)",
            format!("/v2/up/pub/blobs/{private_layer}?{q}={t_pub}"),
        ),
        (
            "ticket up/pub@D used on up/pub@<other public layer> (other digest)",
            format!("/v2/up/pub/blobs/{pub_cold}?{q}={t_pub}"),
        ),
    ];
    for (probe, path) in refusals {
        f.reset();
        let o = f.send(false, &path, None).await;
        p.refused(probe, &o, false);
        p.expect(matches!(o.status, 401 | 403), || {
            format!("expected 403 DENIED, got {}", o.summary())
        });
        p.upstream_at_most("B", &f.b.counts(), 0);
    }

    // What the edge mints today for `acme/app/blobs/<d>?ns=up`: the canonical
    // name `up/acme/app` on the PUBLIC rule `up`. At the origin that name
    // resolves to the private rule `up/acme`: the ticket must not open it.
    for (probe, digest) in [
        (
            "ticket up/acme/app@<cold private layer> issued on public rule `up`",
            cold0.clone(),
        ),
        (
            "ticket up/acme/app@<stored private layer> issued on public rule `up`",
            private_layer.clone(),
        ),
    ] {
        let t = mint_ticket("up/acme/app", &digest, PUBLIC_PREFIX, false);
        f.reset();
        let o = f
            .send(
                false,
                &format!("/v2/up/acme/app/blobs/{digest}?{q}={t}"),
                None,
            )
            .await;
        p.refused(probe, &o, false);
        p.expect(!o.served(&digest), || "served the private bytes".into());
        p.upstream_at_most("B (private upstream)", &f.b.counts(), 0);
    }

    // `ns` on a ticketed request must not change the rule: refused, or served
    // as the ticket's own rule (never a request to the other rule's upstream).
    let t_cold = mint_ticket("up/pub", &pub_cold, PUBLIC_PREFIX, false);
    for ns in [b_host.as_str(), "up", PRIVATE_PREFIX] {
        f.reset();
        let o = f
            .send(
                false,
                &format!("/v2/up/pub/blobs/{pub_cold}?{q}={t_cold}&ns={ns}"),
                None,
            )
            .await;
        p.record(
            &format!("public ticket up/pub@<cold public layer> + &ns={ns}"),
            o.summary(),
        );
        p.expect(o.is_oci_refusal(false) || o.served(&pub_cold), || {
            format!("neither refused nor the ticket's blob: {}", o.summary())
        });
        p.upstream_at_most("B (another rule's upstream)", &f.b.counts(), 0);
    }
    let t_priv = mint_ticket("up/acme/app", &cold1, PRIVATE_PREFIX, true);
    f.reset();
    let o = f
        .send(
            false,
            &format!("/v2/up/acme/app/blobs/{cold1}?{q}={t_priv}&ns=up"),
            None,
        )
        .await;
    p.record(
        "private ticket up/acme/app@<cold private layer> + &ns=up",
        o.summary(),
    );
    p.expect(o.is_oci_refusal(false) || o.served(&cold1), || {
        format!("neither refused nor the ticket's blob: {}", o.summary())
    });
    p.upstream_at_most("A (another rule's upstream)", &f.a.counts(), 0);
    f.reset();
    let o = f
        .send(
            false,
            &format!("/v2/priv/app/blobs/{cold1}?{q}={t_priv}"),
            None,
        )
        .await;
    p.refused(
        "private ticket up/acme/app@D replayed on priv/app@D (other private rule)",
        &o,
        false,
    );
    p.upstream_at_most("B", &f.b.counts(), 0);
    // Control: the private ticket on its own name and rule works.
    let o = f
        .send(
            false,
            &format!("/v2/up/acme/app/blobs/{cold1}?{q}={t_priv}"),
            None,
        )
        .await;
    p.record(
        "private ticket on its own name and rule (control)",
        o.summary(),
    );
    p.expect(o.served(&cold1), || {
        format!("a valid private ticket was not honoured: {}", o.summary())
    });
    p.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_requests_do_not_join_a_private_download_in_flight() {
    // One big private layer, served by B at 2 MiB/s: its download is in
    // flight for about four seconds.
    let f = Fixture::start("acl-origin-inflight", &[8 << 20]).await;
    let big = f.private_layer().to_owned();
    let big_size = f.private.layer_sizes[1];
    let t = token(&["up/acme/app"], &[PRIVATE_PREFIX]);
    let client = bearer_client(&t);
    let base = f.origin.url();
    get_manifest(&client, &base, "up/acme/app", "v1")
        .await
        .unwrap();
    f.b.set_fault(Fault::SlowBlobs(2 << 20));
    f.reset();
    let pull = {
        let (client, base, big) = (client.clone(), base.clone(), big.clone());
        tokio::spawn(async move {
            fetch_blob(&client, &base, "up/acme/app", &big, Some(big_size)).await
        })
    };
    let origin = &f.origin;
    wait_until(
        "the signed-in download to be in flight",
        Duration::from_secs(20),
        || async { Ok(origin.metric("wharf_hydrations_in_flight", &[]).await? >= 1.0) },
    )
    .await
    .unwrap();

    let mut p = Probes::new("origin: joining a private download in flight (e)");
    let other = token(&["up/other"], &[]);
    let anon = token(&["acme/app"], &[]);
    let probes: Vec<(&str, String, bool, &str)> = vec![
        (
            "GET up/other/blobs/<private layer in flight>",
            format!("/v2/up/other/blobs/{big}"),
            false,
            other.as_str(),
        ),
        (
            "HEAD up/other/blobs/<private layer in flight>",
            format!("/v2/up/other/blobs/{big}"),
            true,
            other.as_str(),
        ),
        (
            "GET acme/app/blobs/<private layer in flight>?ns=up",
            format!("/v2/acme/app/blobs/{big}?ns=up"),
            false,
            anon.as_str(),
        ),
    ];
    // Once B has answered (the flight knows the blob's length, which is
    // what a HEAD would be told) and well before the ~4 s download ends.
    tokio::time::sleep(Duration::from_millis(700)).await;
    // All at once, while the download is in flight (a joined probe streams
    // until the download ends).
    let in_flight = origin
        .metric("wharf_hydrations_in_flight", &[])
        .await
        .unwrap_or(0.0);
    let outcomes = futures::future::join_all(
        probes
            .iter()
            .map(|(_, path, head, token)| f.send(*head, path, Some(token))),
    )
    .await;
    for ((probe, _, head, _), o) in probes.iter().zip(&outcomes) {
        p.refused(
            &format!("{probe} (sent while in flight: {})", in_flight >= 1.0),
            o,
            *head,
        );
        p.expect(!o.served(&big), || {
            "joined and served the private bytes".into()
        });
    }
    let pulled = pull.await.unwrap();
    p.record(
        "the signed-in download itself",
        match &pulled {
            Ok(n) => format!("200 ({n} bytes)"),
            Err(e) => format!("failed: {e:#}"),
        },
    );
    p.expect(pulled.is_ok(), || "the signed-in pull failed".into());
    let b = f.b.counts();
    let gets = b.for_path("GET", Kind::Blob, &big);
    p.record(
        "B: GETs of the big layer",
        format!("{gets} ({})", short_digest(&big)),
    );
    p.expect(gets == 1, || {
        format!("B saw {gets} GETs of the layer, want exactly the signed-in one:\n{b}")
    });
    p.finish();
}

/// Waits until no hydration is in flight.
async fn settle(origin: &Origin) {
    wait_until(
        "origin hydrations to finish",
        Duration::from_secs(30),
        || async { Ok(origin.metric("wharf_hydrations_in_flight", &[]).await? == 0.0) },
    )
    .await
    .unwrap();
}
