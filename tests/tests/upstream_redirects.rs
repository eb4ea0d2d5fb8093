//! Upstream blob redirects (Docker Hub sends blobs to a CDN) are followed,
//! and the credentials for the registry are never sent to the other host.

use wharf_tests::cdn::Cdn;
use wharf_tests::{Fault, ImageSpec, OriginOpts, Stack, UpstreamAuth};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirects_are_followed_without_forwarding_credentials() {
    let users = vec![("alice".to_owned(), "s3cret-pw".to_owned())];
    let opts = OriginOpts {
        config_toml: Some(
            "[[rule]]\nprefix = \"private\"\nupstream = \"{upstream}\"\nusername = \"alice\"\npassword = \"s3cret-pw\"\n"
                .to_owned(),
        ),
        ..OriginOpts::default()
    };
    let s = Stack::start_with("upstream-redirects", UpstreamAuth::Token { users }, opts)
        .await
        .unwrap();
    let img = ImageSpec::oci(&[300_000, 2000])
        .push(&s.upstream, "corp/app", "v1")
        .await
        .unwrap();
    let cdn = Cdn::start(
        s.upstream.push_url(),
        s.upstream.push_authorization("corp/app"),
    )
    .await
    .unwrap();
    s.upstream.set_fault(Fault::RedirectBlobs(cdn.url()));

    let pulled = wharf_tests::clients::pull_with_reqwest(&s.base(), "private/corp/app", "v1")
        .await
        .unwrap();
    assert_eq!(pulled.digest, img.manifest_digest);
    assert_eq!(pulled.blobs, img.blobs());

    let seen = cdn.authorizations();
    assert_eq!(
        seen.len(),
        img.blobs().len(),
        "every blob came from the CDN: {seen:?}"
    );
    assert!(
        seen.iter().all(Option::is_none),
        "credentials leaked to the CDN: {seen:?}"
    );
}
