//! Who may pull what, through the edge under `wrangler dev` (issue 12, "the
//! leaks to close"): the same probe classes as `access_control_origin.rs`,
//! with tokens from the edge's own `/token` (the real token dance).
//!
//! Two real Distribution upstreams: A (public, anonymous) and B (private:
//! token auth, credentials only in the origin's rules). Rules, at the edge
//! and at the origin: `up` → A (public), `up/acme` → B (private, nested under
//! the public prefix on purpose), `priv` → B (private). The edge's user
//! (`edge::USER`) may pull the private rules.
//!
//! Two regions on the one origin (as in `EdgeStack`): `eu` presigns store
//! URLs for blobs in the store (the global hostname routes there), `us` has
//! no store, so every blob goes to the origin with a ticket; a probe picks
//! one with the `Host` header. A `307` from the edge is judged by where it
//! points: a presigned store URL for a blob the client may not read is the
//! leak itself; a redirect to the origin is followed and must end in an OCI
//! 401/403/404.
//!
//! Every probe is evaluated and recorded ([`Probes`]); a test fails at the end
//! with the list of every probe that leaked, and prints the table either way.

use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue};
use wharf_core::ticket;
use wharf_tests::clients::{fetch_blob, get_manifest};
use wharf_tests::edge::{
    BUCKET, Edge, EdgeOpts, EdgeRegion, EdgeRule, GLOBAL_HOST, S3_ACCESS_KEY,
    S3_READ_ONLY_ACCESS_KEY, S3_READ_ONLY_SECRET_KEY, S3_SECRET_KEY, TOKEN_KEY, USER,
};
use wharf_tests::images::ALL_MANIFEST_TYPES;
use wharf_tests::probes::{Outcome, PRIVATE_PREFIX, PUBLIC_PREFIX, Probes, Upstreams};
use wharf_tests::upstream::{Proxy, fetch_token};
use wharf_tests::{Origin, OriginOpts, TestDir, free_port, no_redirect_client};

/// Pinned to the region without a store: blobs go to the origin with a ticket.
const US: &str = "us.wharf.test";

/// Fields drop in declaration order: edge, origin proxy, origin, upstreams,
/// then the directory.
struct Fixture {
    edge: Edge,
    _origin_proxy: Proxy,
    origin: Origin,
    up: Upstreams,
    /// `http://localhost:PORT`: where presigned URLs point.
    s3_endpoint: String,
    _dir: TestDir,
}

impl std::ops::Deref for Fixture {
    type Target = Upstreams;
    fn deref(&self) -> &Upstreams {
        &self.up
    }
}

impl Fixture {
    async fn start(name: &str) -> Fixture {
        let dir = TestDir::new(name).unwrap();
        let up = Upstreams::start(&dir, &[6000], &[4000, 4100, 4200])
            .await
            .unwrap();
        let s3_port = free_port();
        let (au, bu) = (up.a.url(), up.b.url());
        let config = format!(
            r#"
[embedded]
listen = "127.0.0.1:{s3_port}"
access_key = "{S3_ACCESS_KEY}"
secret_key = "{S3_SECRET_KEY}"
read_only_access_key = "{S3_READ_ONLY_ACCESS_KEY}"
read_only_secret_key = "{S3_READ_ONLY_SECRET_KEY}"
bucket = "{BUCKET}"

[auth]
token_key = "{TOKEN_KEY}"
service = "{GLOBAL_HOST}"
{}"#,
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
        let origin_proxy = Proxy::counting(origin.host().parse().unwrap())
            .await
            .unwrap();
        let s3_endpoint = format!("http://localhost:{s3_port}");
        let rule = |prefix: &str, upstream: &str, private| EdgeRule {
            prefix: prefix.to_owned(),
            upstream: upstream.to_owned(),
            private,
            deny: Vec::new(),
        };
        let edge = Edge::start(
            &dir,
            &EdgeOpts {
                regions: vec![
                    EdgeRegion {
                        s3_endpoint: Some(s3_endpoint.clone()),
                        // `wrangler dev` reports continent NA for every request.
                        ..EdgeRegion::new("eu", &origin_proxy.url(), &["EU", "NA"])
                    },
                    EdgeRegion::new("us", &origin_proxy.url(), &["SA"]),
                ],
                rules: vec![
                    rule(PUBLIC_PREFIX, &au, false),
                    rule(PRIVATE_PREFIX, &bu, true),
                    rule("priv", &bu, true),
                ],
                tag_ttl: Duration::from_secs(300),
                stale_if_error: Duration::from_secs(3600),
                ..EdgeOpts::default()
            },
        )
        .await
        .unwrap();
        Fixture {
            edge,
            _origin_proxy: origin_proxy,
            origin,
            up,
            s3_endpoint,
            _dir: dir,
        }
    }

    /// The private image's private-only layer.
    fn private_layer(&self) -> &str {
        &self.private.layer_digests[1]
    }

    fn reset(&self) {
        self.a.reset_counts();
        self.b.reset_counts();
    }

    /// A token from the edge's `/token` for `repository:<repo>:pull`, as
    /// `creds` (anonymous when `None`).
    async fn token(&self, repo: &str, creds: Option<(&str, &str)>) -> String {
        fetch_token(
            &format!("{}/token", self.edge.url()),
            &format!("repository:{repo}:pull"),
            creds,
        )
        .await
        .unwrap()
    }

    /// `GET`/`HEAD` `path` at the edge as if sent to `host`; redirects are
    /// returned, not followed.
    async fn send(&self, host: &str, head: bool, path: &str, token: Option<&str>) -> Outcome {
        let url = format!("{}{path}", self.edge.url());
        let client = no_redirect_client();
        let mut req = if head {
            client.head(url)
        } else {
            client.get(url)
        };
        req = req
            .header("Host", host)
            .header(ACCEPT, ALL_MANIFEST_TYPES.join(", "));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Outcome::send(req).await
    }

    /// A blob probe: the edge must refuse, or redirect to the origin, which
    /// must refuse; a redirect to a presigned store URL is a leak. Records
    /// one row for the edge's answer and one for the followed redirect.
    #[allow(clippy::too_many_arguments)]
    async fn blob_probe(
        &self,
        p: &mut Probes,
        probe: &str,
        host: &str,
        head: bool,
        path: &str,
        token: &str,
        secret: &str,
    ) {
        self.reset();
        let o = self.send(host, head, path, Some(token)).await;
        match (o.status, o.location.clone()) {
            (301 | 302 | 303 | 307 | 308, Some(location)) => {
                p.record(probe, o.summary());
                if location.starts_with(&self.s3_endpoint) {
                    p.fail(
                        "307 to a presigned store URL for a blob this client may not read".into(),
                    );
                }
                let client = no_redirect_client();
                let req = if head {
                    client.head(&location)
                } else {
                    client.get(&location)
                };
                let followed = Outcome::send(req).await;
                p.refused(
                    &format!("{probe} → following the redirect"),
                    &followed,
                    head,
                );
                if followed.served(secret) {
                    p.fail("served the private bytes".into());
                }
            }
            _ => {
                p.refused(probe, &o, head);
                if o.served(secret) {
                    p.fail("served the private bytes".into());
                }
            }
        }
        p.upstream_at_most("B (private upstream)", &self.b.counts(), 0);
    }

    /// A manifest probe: refused with an OCI error.
    async fn manifest_probe(
        &self,
        p: &mut Probes,
        probe: &str,
        head: bool,
        path: &str,
        token: &str,
    ) {
        self.reset();
        let o = self.send(GLOBAL_HOST, head, path, Some(token)).await;
        p.refused(probe, &o, head);
        if o.served(&self.private.manifest_digest) {
            p.fail("served the private manifest".into());
        }
        p.upstream_at_most("B (private upstream)", &self.b.counts(), 0);
    }

    /// The signed-in pull of `up/acme/app:v1` through the edge (token from
    /// `/token` with the user's credentials; blob redirects followed),
    /// byte-exact; then waits until the origin stored every blob.
    async fn signed_in_pull(&self) {
        let t = self.token("up/acme/app", Some(USER)).await;
        let client = bearer_client(&t);
        let base = self.edge.url();
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

    /// A ticket the edge hands out: the `Location` of its answer to a blob
    /// request on the `us` hostname (no store there: always the origin).
    async fn ticket_url(&self, path: &str, token: &str) -> String {
        let o = self.send(US, false, path, Some(token)).await;
        let location = o.location.clone().unwrap_or_default();
        assert!(
            o.status == 307 && location.contains(&format!("?{}=", ticket::QUERY_PARAM)),
            "the edge did not redirect {path} to the origin with a ticket: {}",
            o.summary()
        );
        location
    }
}

fn bearer_client(token: &str) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    // Redirects are followed (reqwest drops the Authorization header when
    // the host or port changes, as registry clients do).
    reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// `<base>/v2/<name>/blobs/<digest>?wharf-ticket=<t>` → the same URL for
/// another name and digest, same ticket.
fn replay(location: &str, name: &str, digest: &str) -> String {
    let (origin, _) = location.split_once("/v2/").unwrap();
    let t = ticket::from_query(location.split_once('?').map(|(_, q)| q)).unwrap();
    format!(
        "{origin}/v2/{name}/blobs/{digest}?{}={t}",
        ticket::QUERY_PARAM
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_in_user_pulls_a_private_image_through_the_edge() {
    let f = Fixture::start("acl-edge-signed-in").await;
    f.signed_in_pull().await;
    let mut p = Probes::new("edge: signed-in pull");
    // The same name with an anonymous token: the scope is left out.
    let anon = f.token("up/acme/app", None).await;
    f.manifest_probe(
        &mut p,
        "GET up/acme/app/manifests/v1, anonymous token",
        false,
        "/v2/up/acme/app/manifests/v1",
        &anon,
    )
    .await;
    // Warm: the signed-in client is redirected to the store.
    let t = f.token("up/acme/app", Some(USER)).await;
    let o = f
        .send(
            GLOBAL_HOST,
            false,
            &format!("/v2/up/acme/app/blobs/{}", f.private_layer()),
            Some(&t),
        )
        .await;
    p.record(
        "GET up/acme/app/blobs/<private layer>, signed in (warm)",
        o.summary(),
    );
    let to_store = o
        .location
        .as_deref()
        .is_some_and(|l| l.starts_with(&f.s3_endpoint));
    p.expect(o.status == 307 && to_store, || {
        format!(
            "expected a 307 to a presigned URL on {}, got {}",
            f.s3_endpoint,
            o.summary()
        )
    });
    p.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_alias_of_a_private_name_is_refused_at_the_edge() {
    let f = Fixture::start("acl-edge-ns").await;
    f.signed_in_pull().await;
    // The edge grants `acme/app` to anyone: no rule's prefix matches it.
    let anon = f.token("acme/app", None).await;
    let md = f.private.manifest_digest.clone();
    let layer = f.private_layer().to_owned();
    let (cold0, cold1) = (
        f.cold.layer_digests[0].clone(),
        f.cold.layer_digests[1].clone(),
    );
    let b_host = f.b.host();
    let mut p = Probes::new("edge: ?ns= aliasing");
    for (probe, head, path) in [
        (
            "GET acme/app/manifests/v1?ns=up (tag cached by the signed-in pull)",
            false,
            "/v2/acme/app/manifests/v1?ns=up".to_owned(),
        ),
        (
            "HEAD acme/app/manifests/v1?ns=up",
            true,
            "/v2/acme/app/manifests/v1?ns=up".to_owned(),
        ),
        (
            "GET acme/app/manifests/<private manifest digest>?ns=up",
            false,
            format!("/v2/acme/app/manifests/{md}?ns=up"),
        ),
        (
            "GET acme/app/manifests/v1?ns=<B host:port>",
            false,
            format!("/v2/acme/app/manifests/v1?ns={b_host}"),
        ),
    ] {
        f.manifest_probe(&mut p, probe, head, &path, &anon).await;
    }
    for (probe, host, head, path, secret) in [
        (
            "GET acme/app/blobs/<private layer, stored>?ns=up (eu: store)",
            GLOBAL_HOST,
            false,
            format!("/v2/acme/app/blobs/{layer}?ns=up"),
            layer.clone(),
        ),
        (
            "HEAD acme/app/blobs/<private layer, stored>?ns=up (eu: store)",
            GLOBAL_HOST,
            true,
            format!("/v2/acme/app/blobs/{layer}?ns=up"),
            layer.clone(),
        ),
        (
            "GET acme/app/blobs/<private layer, stored>?ns=up (us: ticket)",
            US,
            false,
            format!("/v2/acme/app/blobs/{layer}?ns=up"),
            layer.clone(),
        ),
        (
            "GET acme/app/blobs/<private layer, cold>?ns=up (us: ticket)",
            US,
            false,
            format!("/v2/acme/app/blobs/{cold0}?ns=up"),
            cold0.clone(),
        ),
        (
            "GET acme/app/blobs/<private layer, cold>?ns=up (eu)",
            GLOBAL_HOST,
            false,
            format!("/v2/acme/app/blobs/{cold1}?ns=up"),
            cold1.clone(),
        ),
        (
            "GET acme/app/blobs/<private layer, stored>?ns=<B host:port>",
            GLOBAL_HOST,
            false,
            format!("/v2/acme/app/blobs/{layer}?ns={b_host}"),
            layer.clone(),
        ),
    ] {
        f.blob_probe(&mut p, probe, host, head, &path, &anon, &secret)
            .await;
    }
    p.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_digests_are_not_served_through_other_repositories_at_the_edge() {
    let f = Fixture::start("acl-edge-digests").await;
    f.signed_in_pull().await;
    let other = f.token("up/other", None).await;
    let md = f.private.manifest_digest.clone();
    let layer = f.private_layer().to_owned();
    let config = f.private.config_digest.clone();
    let mut p = Probes::new("edge: digests through another repository");
    for (probe, head, path) in [
        (
            "GET up/other/manifests/<private manifest digest> (edge digest cache)",
            false,
            format!("/v2/up/other/manifests/{md}"),
        ),
        (
            "HEAD up/other/manifests/<private manifest digest>",
            true,
            format!("/v2/up/other/manifests/{md}"),
        ),
    ] {
        f.manifest_probe(&mut p, probe, head, &path, &other).await;
    }
    for (probe, host, head, path, secret) in [
        (
            "GET up/other/blobs/<private layer> (eu: store)",
            GLOBAL_HOST,
            false,
            format!("/v2/up/other/blobs/{layer}"),
            layer.clone(),
        ),
        (
            "HEAD up/other/blobs/<private layer> (eu: store)",
            GLOBAL_HOST,
            true,
            format!("/v2/up/other/blobs/{layer}"),
            layer.clone(),
        ),
        (
            "GET up/other/blobs/<private config> (eu: store)",
            GLOBAL_HOST,
            false,
            format!("/v2/up/other/blobs/{config}"),
            config.clone(),
        ),
        (
            "GET up/other/blobs/<private layer> (us: ticket)",
            US,
            false,
            format!("/v2/up/other/blobs/{layer}"),
            layer.clone(),
        ),
        (
            "GET up/other/blobs/<shared layer> (A has it, not in `other`)",
            GLOBAL_HOST,
            false,
            format!("/v2/up/other/blobs/{}", f.shared),
            f.shared.clone(),
        ),
    ] {
        f.blob_probe(&mut p, probe, host, head, &path, &other, &secret)
            .await;
    }

    // A public repository on A that really holds the shared layer gets it,
    // whichever way the edge sends the client.
    let t = f.token("up/pub2", None).await;
    let client = bearer_client(&t);
    let base = f.edge.url();
    get_manifest(&client, &base, "up/pub2", "v1").await.unwrap();
    f.reset();
    let r = fetch_blob(
        &client,
        &base,
        "up/pub2",
        &f.shared,
        Some(f.pub2.layer_sizes[0]),
    )
    .await;
    p.record(
        "GET up/pub2/blobs/<shared layer> (A has it in pub2), redirects followed",
        match &r {
            Ok(n) => format!("200 ({n} bytes, exact)"),
            Err(e) => format!("{e:#}"),
        },
    );
    p.expect(r.is_ok(), || {
        "the public repository's layer was not served".into()
    });
    let a = f.a.counts();
    p.expect(a.get("GET", wharf_tests::Kind::Blob) == 0, || {
        format!("A was asked for the bytes again:\n{a}")
    });
    p.upstream_at_most("B", &f.b.counts(), 0);
    p.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_from_edge_redirects_do_not_open_other_names_or_rules() {
    let f = Fixture::start("acl-edge-tickets").await;
    f.signed_in_pull().await;
    let layer = f.private_layer().to_owned();
    let pub0 = f.public.layer_digests[0].clone();
    let pub1 = f.public.layer_digests[1].clone();
    let cold2 = f.cold.layer_digests[2].clone();
    let b_host = f.b.host();
    let mut p = Probes::new("edge: tickets from redirects");
    let client = no_redirect_client();

    // A public ticket, legitimately obtained with an anonymous token.
    let anon = f.token("up/pub", None).await;
    let legit = f
        .ticket_url(&format!("/v2/up/pub/blobs/{pub0}"), &anon)
        .await;
    for (probe, url, secret) in [
        (
            "ticket up/pub@D replayed on up/acme/app@D (other name, private rule)",
            replay(&legit, "up/acme/app", &pub0),
            pub0.clone(),
        ),
        (
            "ticket up/pub@D replayed on up/acme/app@<private layer>",
            replay(&legit, "up/acme/app", &layer),
            layer.clone(),
        ),
        (
            "ticket up/pub@D replayed on up/pub@<private layer> (other digest)",
            replay(&legit, "up/pub", &layer),
            layer.clone(),
        ),
        (
            "ticket up/pub@D replayed on priv/app@<private layer> (other rule)",
            replay(&legit, "priv/app", &layer),
            layer.clone(),
        ),
    ] {
        f.reset();
        let o = Outcome::send(client.get(&url)).await;
        p.refused(probe, &o, false);
        p.expect(matches!(o.status, 401 | 403), || {
            format!("expected 403 DENIED, got {}", o.summary())
        });
        p.expect(!o.served(&secret), || "served the bytes".into());
        p.upstream_at_most("B", &f.b.counts(), 0);
    }
    let o = Outcome::send(client.get(&legit)).await;
    p.record("the legitimate public ticket (control)", o.summary());
    p.expect(o.served(&pub0), || {
        format!("a ticket from the edge was not honoured: {}", o.summary())
    });

    // `ns` appended to a legitimate ticketed URL must not move it to another
    // rule (a cold public layer, so a rule change shows as a request to B).
    let legit1 = f
        .ticket_url(&format!("/v2/up/pub/blobs/{pub1}"), &anon)
        .await;
    for ns in [b_host.as_str(), PRIVATE_PREFIX, "priv"] {
        f.reset();
        let o = Outcome::send(client.get(format!("{legit1}&ns={ns}"))).await;
        p.record(
            &format!("public ticket up/pub@<cold layer> + &ns={ns}"),
            o.summary(),
        );
        p.expect(o.is_oci_refusal(false) || o.served(&pub1), || {
            format!("neither refused nor the ticket's blob: {}", o.summary())
        });
        p.upstream_at_most("B (another rule's upstream)", &f.b.counts(), 0);
    }

    // A private ticket, legitimately obtained by the signed-in user.
    let user = f.token("up/acme/app", Some(USER)).await;
    let private = f
        .ticket_url(&format!("/v2/up/acme/app/blobs/{cold2}"), &user)
        .await;
    for (probe, url) in [
        (
            "private ticket up/acme/app@D replayed on up/pub@D (public rule)",
            replay(&private, "up/pub", &cold2),
        ),
        (
            "private ticket up/acme/app@D replayed on priv/app@D (other private rule)",
            replay(&private, "priv/app", &cold2),
        ),
        (
            "private ticket up/acme/app@D replayed on up/acme/other@D (other name)",
            replay(&private, "up/acme/other", &cold2),
        ),
    ] {
        f.reset();
        let o = Outcome::send(client.get(&url)).await;
        p.refused(probe, &o, false);
        p.upstream_at_most("A", &f.a.counts(), 0);
        p.upstream_at_most("B", &f.b.counts(), 0);
    }
    f.reset();
    let o = Outcome::send(client.get(format!("{private}&ns=up"))).await;
    p.record(
        "private ticket up/acme/app@<cold layer> + &ns=up",
        o.summary(),
    );
    p.expect(o.is_oci_refusal(false) || o.served(&cold2), || {
        format!("neither refused nor the ticket's blob: {}", o.summary())
    });
    p.upstream_at_most("A (another rule's upstream)", &f.a.counts(), 0);
    let o = Outcome::send(client.get(&private)).await;
    p.record("the legitimate private ticket (control)", o.summary());
    p.expect(o.served(&cold2), || {
        format!(
            "a private ticket from the edge was not honoured: {}",
            o.summary()
        )
    });
    p.finish();
}
