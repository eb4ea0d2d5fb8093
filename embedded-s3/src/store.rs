//! The object file format and the blocking filesystem steps that make writes
//! atomic. Everything here runs on `spawn_blocking` threads.
//!
//! # One file per object
//!
//! An object is one file: `[data][meta JSON][u64 LE json length][8-byte magic]`.
//! Metadata (ETag, size, Content-Type, `x-amz-meta-*`, Last-Modified) travels
//! in the same inode as the bytes, so a single `rename` publishes both and no
//! reader can ever pair new data with old metadata — not even when two PUTs
//! of one key race (a separate sidecar would need a per-key lock for that). A
//! reader that opened the file keeps a consistent snapshot even if the key is
//! overwritten meanwhile. Multipart parts use the same format.
//!
//! # Crash consistency
//!
//! Bytes are staged in `root/.wharf-tmp/` (same filesystem), the trailer is
//! appended, the file is `fdatasync`ed, then `rename`d over the destination
//! (or hard-linked for `If-None-Match: *`, which fails atomically if the key
//! exists) and the directory is fsynced. A crash leaves either the old object,
//! the new one, or a stray staging file that the next start deletes.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"WHARFS3\x01";
const FOOTER_LEN: u64 = 16;
/// Upper bound for the JSON trailer; user metadata is limited to 2 KiB by S3.
const MAX_META_LEN: u64 = 1 << 20;

/// Representation headers and user metadata, stored as given on upload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// `x-amz-meta-*` without the prefix.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// The trailer of an object or part file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Unquoted ETag (format: see `backend::ETAG_PREFIX`).
    pub etag: String,
    /// Data length (the file minus the trailer).
    pub size: u64,
    /// Unix time in milliseconds when the object was committed.
    pub last_modified_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts_count: Option<i32>,
    #[serde(flatten)]
    pub headers: Headers,
}

/// What `upload.json` holds for an in-progress multipart upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadMeta {
    pub key: String,
    pub initiated_ms: i64,
    #[serde(flatten)]
    pub headers: Headers,
}

pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn corrupt(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {why}", path.display()),
    )
}

/// Opens an object or part file and reads its trailer; `Ok(None)` if absent.
pub fn open_object(path: &Path) -> io::Result<Option<(File, ObjectMeta)>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = read_trailer(&file, path)?;
    Ok(Some((file, meta)))
}

fn read_trailer(file: &File, path: &Path) -> io::Result<ObjectMeta> {
    let len = file.metadata()?.len();
    if len < FOOTER_LEN {
        return Err(corrupt(path, "shorter than the trailer"));
    }
    let mut footer = [0u8; FOOTER_LEN as usize];
    file.read_exact_at(&mut footer, len - FOOTER_LEN)?;
    if &footer[8..] != MAGIC {
        return Err(corrupt(path, "bad trailer magic"));
    }
    let mut json_len = [0u8; 8];
    json_len.copy_from_slice(&footer[..8]);
    let json_len = u64::from_le_bytes(json_len);
    if json_len > MAX_META_LEN || json_len > len - FOOTER_LEN {
        return Err(corrupt(path, "bad trailer length"));
    }
    let data_len = len - FOOTER_LEN - json_len;
    let mut json = vec![0u8; json_len as usize];
    file.read_exact_at(&mut json, data_len)?;
    let meta: ObjectMeta =
        serde_json::from_slice(&json).map_err(|e| corrupt(path, &e.to_string()))?;
    if meta.size != data_len {
        return Err(corrupt(path, "trailer size does not match data"));
    }
    Ok(meta)
}

/// A staging file that is deleted on drop unless it was published.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path, armed: true }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn create(&self) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// How [`publish`] puts a staged file in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Replace whatever is there; create missing parent directories.
    Replace,
    /// Fail with `AlreadyExists` if the destination exists (`If-None-Match: *`).
    CreateNew,
    /// Replace, but never create parents: a missing parent means the
    /// container (a multipart upload) is gone, reported as `NotFound`.
    ReplaceInExisting,
}

/// Appends the trailer to `file` (positioned at the end of the data), syncs
/// it, and atomically publishes it at `dest`.
pub fn publish(
    tmp: TempFile,
    mut file: File,
    meta: &ObjectMeta,
    dest: &Path,
    place: Place,
) -> io::Result<()> {
    let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
    let mut footer = Vec::with_capacity(json.len() + FOOTER_LEN as usize);
    footer.extend_from_slice(&json);
    footer.extend_from_slice(&(json.len() as u64).to_le_bytes());
    footer.extend_from_slice(MAGIC);
    file.write_all(&footer)?;
    file.sync_data()?;
    drop(file);
    place_file(tmp, dest, place)
}

fn place_file(mut tmp: TempFile, dest: &Path, place: Place) -> io::Result<()> {
    // A concurrent delete may prune the (empty) parent between our
    // `create_dir_all` and `rename`; retry a few times.
    for attempt in 0..8 {
        let res = match place {
            Place::CreateNew => fs::hard_link(tmp.path(), dest),
            Place::Replace | Place::ReplaceInExisting => fs::rename(tmp.path(), dest),
        };
        match res {
            Ok(()) => {
                if place != Place::CreateNew {
                    tmp.armed = false;
                }
                // The staging name (if still linked) is removed by `tmp`'s drop.
                if let Some(parent) = dest.parent() {
                    File::open(parent)?.sync_all()?;
                }
                return Ok(());
            }
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    && place != Place::ReplaceInExisting
                    && attempt < 7 =>
            {
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent)?;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "could not create the destination directory",
    ))
}

/// Removes an object file and prunes now-empty directories up to `stop`.
/// Returns whether the object existed.
pub fn remove_object(path: &Path, stop: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == stop || !d.starts_with(stop) || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64) -> ObjectMeta {
        ObjectMeta {
            etag: "abc".into(),
            size,
            last_modified_ms: 1,
            parts_count: None,
            headers: Headers {
                content_type: Some("text/plain".into()),
                metadata: [("k".to_owned(), "v".to_owned())].into(),
                ..Headers::default()
            },
        }
    }

    #[test]
    fn publish_then_open_round_trips_and_create_new_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a/b/obj");
        for place in [Place::Replace, Place::CreateNew] {
            let tmp = TempFile::new(dir.path().join("stage"));
            let mut f = tmp.create().unwrap();
            f.write_all(b"hello").unwrap();
            let res = publish(tmp, f, &meta(5), &dest, place);
            if place == Place::CreateNew {
                assert_eq!(res.unwrap_err().kind(), io::ErrorKind::AlreadyExists);
            } else {
                res.unwrap();
            }
            assert!(!dir.path().join("stage").exists());
        }
        let (_, m) = open_object(&dest).unwrap().unwrap();
        assert_eq!(m, meta(5));
        assert!(remove_object(&dest, dir.path()).unwrap());
        assert!(!dir.path().join("a").exists());
    }

    #[test]
    fn garbage_is_reported_not_panicked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        for junk in [&b""[..], b"short", &[0xff; 64]] {
            fs::write(&p, junk).unwrap();
            assert!(open_object(&p).is_err());
        }
        assert!(open_object(&dir.path().join("missing")).unwrap().is_none());
    }
}
