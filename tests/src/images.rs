//! Test images made in-process and pushed to the upstream registry.
//!
//! A layer is a gzip tar holding one file of random bytes; its `diff_id` (the
//! sha256 of the uncompressed tar, which dockerd and containerd check when
//! they unpack) and its digest are computed while it is written. Layers go to
//! a temporary file, never to memory, so a 1 GiB layer costs no more RAM than
//! a 1 KiB one, and are streamed to the registry with the monolithic upload
//! (`POST /blobs/uploads/`, then `PUT <location>?digest=`).
//!
//! Random content makes every image unique, so tests never see each other's
//! blobs even in a shared cache. Pushes go to a [`PushTarget`]: for an
//! [`Upstream`] that is [`Upstream::push_url`], around the counting proxy;
//! [`PlainRegistry`] is any anonymous plain-HTTP registry (what `wharf-seed`
//! and the benchmark push to).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, Digest, HistoryBuilder, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
};
use rand::{RngCore as _, SeedableRng as _};
use sha2::{Digest as _, Sha256};

use crate::sha256_digest;
use crate::upstream::Upstream;

/// A registry that generated images can be pushed to, over plain HTTP.
pub trait PushTarget {
    /// Base URL pushes go to, `http://host:port`.
    fn push_url(&self) -> String;
    /// The `Authorization` header value for pushing to `repo`, if the
    /// registry needs one.
    fn push_authorization(&self, repo: &str) -> Option<String>;
    /// A scratch directory for layers while they are generated and pushed.
    fn work_dir(&self) -> PathBuf;
}

impl PushTarget for Upstream {
    fn push_url(&self) -> String {
        Upstream::push_url(self)
    }
    fn push_authorization(&self, repo: &str) -> Option<String> {
        Upstream::push_authorization(self, repo)
    }
    fn work_dir(&self) -> PathBuf {
        self.dir().join("seed")
    }
}

/// Any registry that accepts anonymous pushes over plain HTTP.
#[derive(Clone, Debug)]
pub struct PlainRegistry {
    /// `http://host:port`.
    pub url: String,
    /// Scratch directory for generated layers.
    pub work_dir: PathBuf,
}

impl PushTarget for PlainRegistry {
    fn push_url(&self) -> String {
        self.url.trim_end_matches('/').to_owned()
    }
    fn push_authorization(&self, _repo: &str) -> Option<String> {
        None
    }
    fn work_dir(&self) -> PathBuf {
        self.work_dir.clone()
    }
}

/// Docker image manifest (schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Every manifest media type, for `Accept` headers.
pub const ALL_MANIFEST_TYPES: [&str; 4] = [
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
];

/// Manifest flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Docker schema 2 manifests and manifest lists.
    Docker,
    /// OCI manifests and indexes.
    Oci,
}

impl Format {
    fn manifest(self) -> &'static str {
        match self {
            Format::Docker => DOCKER_MANIFEST,
            Format::Oci => OCI_MANIFEST,
        }
    }
    fn index(self) -> &'static str {
        match self {
            Format::Docker => DOCKER_MANIFEST_LIST,
            Format::Oci => OCI_INDEX,
        }
    }
    fn config(self) -> MediaType {
        match self {
            Format::Docker => MediaType::Other(DOCKER_CONFIG.into()),
            Format::Oci => MediaType::ImageConfig,
        }
    }
    fn layer(self) -> MediaType {
        match self {
            Format::Docker => MediaType::Other(DOCKER_LAYER.into()),
            Format::Oci => MediaType::ImageLayerGzip,
        }
    }
    fn media_type(s: &str) -> MediaType {
        match s {
            OCI_MANIFEST => MediaType::ImageManifest,
            OCI_INDEX => MediaType::ImageIndex,
            other => MediaType::Other(other.into()),
        }
    }
}

/// What image to make: one layer per entry, each holding a file of that many
/// random bytes.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// Bytes of random content per layer.
    pub layers: Vec<u64>,
    /// Manifest flavour.
    pub format: Format,
}

/// An image as pushed.
#[derive(Clone, Debug)]
pub struct PushedImage {
    /// Repository it was pushed to.
    pub repo: String,
    /// `sha256:…` of the manifest bytes.
    pub manifest_digest: String,
    /// The manifest's media type.
    pub manifest_media_type: String,
    /// The manifest bytes exactly as pushed.
    pub manifest: Bytes,
    /// Config blob digest.
    pub config_digest: String,
    /// Config blob size.
    pub config_size: u64,
    /// Layer digests, in order.
    pub layer_digests: Vec<String>,
    /// Layer sizes (compressed), in order.
    pub layer_sizes: Vec<u64>,
    /// Config plus layer sizes.
    pub total_size: u64,
    /// `linux/<arch>`.
    pub platform: String,
}

impl PushedImage {
    /// Every blob (config first, then layers) with its size.
    pub fn blobs(&self) -> Vec<(String, u64)> {
        std::iter::once((self.config_digest.clone(), self.config_size))
            .chain(
                self.layer_digests
                    .iter()
                    .cloned()
                    .zip(self.layer_sizes.iter().copied()),
            )
            .collect()
    }
}

/// A multi-platform index as pushed.
#[derive(Clone, Debug)]
pub struct PushedIndex {
    /// Repository it was pushed to.
    pub repo: String,
    /// `sha256:…` of the index bytes.
    pub digest: String,
    /// OCI index or Docker manifest list.
    pub media_type: String,
    /// The index bytes exactly as pushed.
    pub manifest: Bytes,
    /// The platform images (linux/amd64, then linux/arm64).
    pub children: Vec<PushedImage>,
}

impl PushedIndex {
    /// The child for `linux/<arch>`.
    pub fn child(&self, arch: &str) -> &PushedImage {
        let want = format!("linux/{arch}");
        self.children
            .iter()
            .find(|c| c.platform == want)
            .expect("no such platform in the index")
    }
}

impl ImageSpec {
    /// A Docker-format image with these layer content sizes.
    pub fn docker(layers: &[u64]) -> ImageSpec {
        ImageSpec {
            layers: layers.to_vec(),
            format: Format::Docker,
        }
    }

    /// An OCI-format image with these layer content sizes.
    pub fn oci(layers: &[u64]) -> ImageSpec {
        ImageSpec {
            layers: layers.to_vec(),
            format: Format::Oci,
        }
    }

    /// Generates a linux/amd64 image and pushes it as `repo:tag`.
    pub async fn push<R: PushTarget + ?Sized>(
        &self,
        upstream: &R,
        repo: &str,
        tag: &str,
    ) -> Result<PushedImage> {
        self.push_with_shared(upstream, repo, tag, &[]).await
    }

    /// Like [`ImageSpec::push`], but the image's first layers are `shared`
    /// (the very same bytes, so the same digests, in every image and on
    /// every registry they are pushed to), followed by this spec's random
    /// layers.
    pub async fn push_with_shared<R: PushTarget + ?Sized>(
        &self,
        upstream: &R,
        repo: &str,
        tag: &str,
        shared: &[&SharedLayer],
    ) -> Result<PushedImage> {
        let image = self
            .push_platform_with(upstream, repo, "amd64", shared)
            .await?;
        put_manifest(
            upstream,
            repo,
            tag,
            &image.manifest_media_type,
            &image.manifest,
        )
        .await?;
        Ok(image)
    }

    /// Generates a linux/amd64 and a linux/arm64 image (each with these
    /// layers, different content) and pushes an index of the two as
    /// `repo:tag` (children by digest).
    pub async fn push_index<R: PushTarget + ?Sized>(
        &self,
        upstream: &R,
        repo: &str,
        tag: &str,
    ) -> Result<PushedIndex> {
        let mut children = Vec::new();
        let mut descriptors = Vec::new();
        for arch in ["amd64", "arm64"] {
            let child = self.push_platform(upstream, repo, arch).await?;
            put_manifest(
                upstream,
                repo,
                &child.manifest_digest,
                &child.manifest_media_type,
                &child.manifest,
            )
            .await?;
            let mut d = Descriptor::new(
                Format::media_type(&child.manifest_media_type),
                child.manifest.len() as u64,
                parse_digest(&child.manifest_digest)?,
            );
            d.set_platform(Some(
                PlatformBuilder::default()
                    .architecture(Arch::from(arch))
                    .os(Os::from("linux"))
                    .build()?,
            ));
            descriptors.push(d);
            children.push(child);
        }
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(Format::media_type(self.format.index()))
            .manifests(descriptors)
            .build()?;
        let bytes = Bytes::from(serde_json::to_vec_pretty(&index)?);
        let digest = put_manifest(upstream, repo, tag, self.format.index(), &bytes).await?;
        Ok(PushedIndex {
            repo: repo.to_owned(),
            digest,
            media_type: self.format.index().to_owned(),
            manifest: bytes,
            children,
        })
    }

    /// Pushes the layers and config of one platform image and returns its
    /// manifest (not yet pushed).
    async fn push_platform<R: PushTarget + ?Sized>(
        &self,
        upstream: &R,
        repo: &str,
        arch: &str,
    ) -> Result<PushedImage> {
        self.push_platform_with(upstream, repo, arch, &[]).await
    }

    /// [`ImageSpec::push_platform`] with `shared` layers in front.
    async fn push_platform_with<R: PushTarget + ?Sized>(
        &self,
        upstream: &R,
        repo: &str,
        arch: &str,
        shared: &[&SharedLayer],
    ) -> Result<PushedImage> {
        let work = upstream.work_dir();
        std::fs::create_dir_all(&work)?;
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_digests = Vec::new();
        let mut layer_sizes = Vec::new();
        for layer in shared {
            let l = &layer.0;
            push_blob(upstream, repo, &l.digest, BlobBody::File(&l.path, l.size)).await?;
            layer_descs.push(Descriptor::new(
                self.format.layer(),
                l.size,
                parse_digest(&l.digest)?,
            ));
            diff_ids.push(l.diff_id.clone());
            layer_digests.push(l.digest.clone());
            layer_sizes.push(l.size);
        }
        for &content in &self.layers {
            let dir = work.clone();
            let layer = tokio::task::spawn_blocking(move || make_layer(&dir, content)).await??;
            push_blob(
                upstream,
                repo,
                &layer.digest,
                BlobBody::File(&layer.path, layer.size),
            )
            .await?;
            let _ = std::fs::remove_file(&layer.path);
            layer_descs.push(Descriptor::new(
                self.format.layer(),
                layer.size,
                parse_digest(&layer.digest)?,
            ));
            diff_ids.push(layer.diff_id);
            layer_digests.push(layer.digest);
            layer_sizes.push(layer.size);
        }

        let history = (0..shared.len() + self.layers.len())
            .map(|i| {
                HistoryBuilder::default()
                    .created("2024-01-01T00:00:00Z")
                    .created_by(format!("wharf-tests: random layer {i}"))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let config = ImageConfigurationBuilder::default()
            .created("2024-01-01T00:00:00Z")
            .architecture(Arch::from(arch))
            .os(Os::from("linux"))
            .config(
                ConfigBuilder::default()
                    .cmd(vec!["/bin/true".to_owned()])
                    .env(vec![format!(
                        "WHARF_TEST_NONCE={}",
                        hex::encode(rand::random::<[u8; 8]>())
                    )])
                    .build()?,
            )
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(diff_ids)
                    .build()?,
            )
            .history(history)
            .build()?;
        let config_bytes = Bytes::from(serde_json::to_vec(&config)?);
        let config_digest = sha256_digest(&config_bytes);
        push_blob(
            upstream,
            repo,
            &config_digest,
            BlobBody::Bytes(config_bytes.clone()),
        )
        .await?;

        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(Format::media_type(self.format.manifest()))
            .config(Descriptor::new(
                self.format.config(),
                config_bytes.len() as u64,
                parse_digest(&config_digest)?,
            ))
            .layers(layer_descs)
            .build()?;
        let manifest = Bytes::from(serde_json::to_vec_pretty(&manifest)?);
        let config_size = config_bytes.len() as u64;
        Ok(PushedImage {
            repo: repo.to_owned(),
            manifest_digest: sha256_digest(&manifest),
            manifest_media_type: self.format.manifest().to_owned(),
            manifest,
            config_digest,
            config_size,
            total_size: config_size + layer_sizes.iter().sum::<u64>(),
            layer_digests,
            layer_sizes,
            platform: format!("linux/{arch}"),
        })
    }
}

/// A generated layer kept on disk (removed on drop) so that several images,
/// on several registries, can carry the very same bytes: a layer shared by a
/// public and a private image, as happens when both build on one base.
pub struct SharedLayer(Layer);

impl SharedLayer {
    /// A random gzip tar layer holding `content` random bytes, written under
    /// `dir`.
    pub async fn generate(dir: &Path, content: u64) -> Result<SharedLayer> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.to_owned();
        let layer = tokio::task::spawn_blocking(move || make_layer(&dir, content)).await??;
        Ok(SharedLayer(layer))
    }

    /// `sha256:…` of the compressed layer.
    pub fn digest(&self) -> &str {
        &self.0.digest
    }

    /// Compressed size.
    pub fn size(&self) -> u64 {
        self.0.size
    }
}

impl Drop for SharedLayer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0.path);
    }
}

fn parse_digest(d: &str) -> Result<Digest> {
    d.parse::<Digest>()
        .with_context(|| format!("parsing digest {d}"))
}

/// A generated layer on disk.
struct Layer {
    path: PathBuf,
    digest: String,
    diff_id: String,
    size: u64,
}

/// Counts and hashes what passes through.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashWriter<W> {
    fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }
    fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.len,
        )
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `remaining` random bytes.
struct RandomReader {
    rng: rand::rngs::SmallRng,
    remaining: u64,
}

impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining) as usize;
        self.rng.fill_bytes(&mut buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Writes a gzip tar with one file of `content` random bytes to a new file
/// under `dir`, computing digest and diff_id on the way.
fn make_layer(dir: &Path, content: u64) -> Result<Layer> {
    let name = hex::encode(rand::random::<[u8; 8]>());
    let path = dir.join(format!("layer-{name}.tar.gz"));
    let file = BufWriter::with_capacity(1 << 20, File::create(&path)?);
    // Random bytes do not compress: the fastest level costs least CPU.
    let gz = GzEncoder::new(HashWriter::new(file), Compression::fast());
    let mut tar = tar::Builder::new(HashWriter::new(gz));
    let mut header = tar::Header::new_gnu();
    header.set_path(format!("wharf-{name}.bin"))?;
    header.set_size(content);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
    tar.append(
        &header,
        RandomReader {
            rng,
            remaining: content,
        },
    )?;
    let tar_out = tar.into_inner()?;
    let (gz, diff_id, _) = tar_out.finish();
    let compressed = gz.finish()?;
    let (mut file, digest, size) = compressed.finish();
    file.flush()?;
    Ok(Layer {
        path,
        digest,
        diff_id,
        size,
    })
}

enum BlobBody<'a> {
    Bytes(Bytes),
    File(&'a Path, u64),
}

fn authorize<R: PushTarget + ?Sized>(
    req: reqwest::RequestBuilder,
    upstream: &R,
    repo: &str,
) -> reqwest::RequestBuilder {
    match upstream.push_authorization(repo) {
        Some(auth) => req.header(reqwest::header::AUTHORIZATION, auth),
        None => req,
    }
}

async fn push_blob<R: PushTarget + ?Sized>(
    upstream: &R,
    repo: &str,
    digest: &str,
    body: BlobBody<'_>,
) -> Result<()> {
    let client = crate::http_client();
    let base = upstream.push_url();
    let head = authorize(
        client.head(format!("{base}/v2/{repo}/blobs/{digest}")),
        upstream,
        repo,
    )
    .send()
    .await?;
    if head.status().is_success() {
        return Ok(());
    }
    let start = authorize(
        client.post(format!("{base}/v2/{repo}/blobs/uploads/")),
        upstream,
        repo,
    )
    .send()
    .await?;
    if start.status() != reqwest::StatusCode::ACCEPTED {
        bail!(
            "starting an upload to {repo}: {} {}",
            start.status(),
            start.text().await?
        );
    }
    let location = start
        .headers()
        .get(reqwest::header::LOCATION)
        .context("upload start without Location")?
        .to_str()?
        .to_owned();
    let mut url = reqwest::Url::parse(&base)?.join(&location)?;
    url.query_pairs_mut().append_pair("digest", digest);
    let (body, len) = match body {
        BlobBody::Bytes(b) => {
            let len = b.len() as u64;
            (reqwest::Body::from(b), len)
        }
        BlobBody::File(path, len) => (reqwest::Body::from(tokio::fs::File::open(path).await?), len),
    };
    let put = authorize(client.put(url), upstream, repo)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, len)
        .body(body)
        .send()
        .await?;
    if put.status() != reqwest::StatusCode::CREATED {
        bail!(
            "uploading {digest} to {repo}: {} {}",
            put.status(),
            put.text().await?
        );
    }
    Ok(())
}

/// Pushes manifest bytes as `repo:reference` (a tag or a digest) and
/// returns their digest, checked against what the registry computed.
pub async fn put_manifest<R: PushTarget + ?Sized>(
    upstream: &R,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &Bytes,
) -> Result<String> {
    let url = format!("{}/v2/{repo}/manifests/{reference}", upstream.push_url());
    let resp = authorize(crate::http_client().put(url), upstream, repo)
        .header(reqwest::header::CONTENT_TYPE, media_type)
        .body(bytes.clone())
        .send()
        .await?;
    let status = resp.status();
    let header = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if status != reqwest::StatusCode::CREATED {
        bail!(
            "pushing manifest {repo}:{reference}: {status} {}",
            resp.text().await?
        );
    }
    let digest = sha256_digest(bytes);
    ensure!(
        header.as_deref() == Some(digest.as_str()),
        "registry computed digest {header:?} for {repo}:{reference}, we computed {digest}"
    );
    Ok(digest)
}

/// Points another tag at an already pushed image (moves the tag if it
/// existed).
pub async fn retag<R: PushTarget + ?Sized>(
    upstream: &R,
    image: &PushedImage,
    tag: &str,
) -> Result<()> {
    put_manifest(
        upstream,
        &image.repo,
        tag,
        &image.manifest_media_type,
        &image.manifest,
    )
    .await?;
    Ok(())
}
