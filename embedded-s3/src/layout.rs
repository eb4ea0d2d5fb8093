//! On-disk layout: where buckets, objects, uploads and staging files live, and
//! how an S3 key becomes a path.
//!
//! ```text
//! root/.lock                                  flock: one server per root
//! root/.wharf-tmp/<uuid>                      staging files (wiped at start)
//! root/<bucket>/objects/<seg>/<seg>/<leaf>%obj one file per object
//! root/<bucket>/uploads/<upload-id>/upload.json
//! root/<bucket>/uploads/<upload-id>/part-00001
//! ```
//!
//! Bucket names can never start with `.`, so `.lock` and `.wharf-tmp` cannot
//! collide with a bucket.
//!
//! # Key encoding
//!
//! A key is split on `/` and every segment is encoded separately: bytes in
//! `[A-Za-z0-9_-]` and `.` (except as the first byte) are kept, everything else
//! becomes `%XX` (upper-case hex); an empty segment becomes `%_`. The last
//! segment gets the suffix `%obj`. Consequences:
//!
//! * no segment is ever `.`, `..`, empty or hidden, and no encoded segment
//!   contains `/`, so no key can name a path outside its bucket;
//! * the encoder only emits `%` followed by two hex digits or `_`, so `%obj`
//!   marks object files unambiguously: key `a` (`a%obj`) and key `a/b`
//!   (directory `a`) never collide;
//! * the mapping is injective and reversible (listing decodes names).
//!
//! Limits: a key is at most 1024 bytes (S3's limit) and every encoded
//! segment, suffix included, must fit in 255 bytes (the filesystem name limit),
//! otherwise the request fails with `KeyTooLongError`.

use std::path::{Path, PathBuf};

/// Suffix of object data files.
pub const OBJECT_SUFFIX: &str = "%obj";
/// Name of the staging directory under the root.
pub const TMP_DIR: &str = ".wharf-tmp";
/// Name of the lock file under the root.
pub const LOCK_FILE: &str = ".lock";
/// Per-upload metadata file.
pub const UPLOAD_META: &str = "upload.json";

const MAX_KEY_LEN: usize = 1024;
const MAX_NAME_LEN: usize = 255;

/// Why a key cannot be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// Empty key.
    Empty,
    /// Longer than 1024 bytes, or a segment longer than the filesystem allows.
    TooLong,
}

/// Encodes one key segment (see module docs).
pub fn encode_segment(seg: &str) -> String {
    if seg.is_empty() {
        return "%_".to_owned();
    }
    let mut out = String::with_capacity(seg.len());
    for (i, b) in seg.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
        if keep {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push_str(&format!("{b:02X}"));
        }
    }
    out
}

/// Reverses [`encode_segment`]; `None` for names this server did not write.
pub fn decode_segment(name: &str) -> Option<String> {
    if name == "%_" {
        return Some(String::new());
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
            {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Paths under one root.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }

    /// A fresh staging path (same filesystem as every object, so `rename` is atomic).
    pub fn tmp_path(&self) -> PathBuf {
        self.tmp_dir()
            .join(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.join(bucket)
    }

    /// A bucket exists iff this directory exists.
    pub fn objects_dir(&self, bucket: &str) -> PathBuf {
        self.bucket_dir(bucket).join("objects")
    }

    pub fn uploads_dir(&self, bucket: &str) -> PathBuf {
        self.bucket_dir(bucket).join("uploads")
    }

    pub fn upload_dir(&self, bucket: &str, upload_id: &str) -> PathBuf {
        self.uploads_dir(bucket).join(upload_id)
    }

    pub fn part_path(&self, bucket: &str, upload_id: &str, part: i32) -> PathBuf {
        self.upload_dir(bucket, upload_id)
            .join(format!("part-{part:05}"))
    }

    /// The data file of `key` in `bucket`.
    pub fn object_path(&self, bucket: &str, key: &str) -> Result<PathBuf, KeyError> {
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong);
        }
        let mut path = self.objects_dir(bucket);
        let mut segs = key.split('/').peekable();
        while let Some(seg) = segs.next() {
            let mut name = encode_segment(seg);
            if segs.peek().is_none() {
                name.push_str(OBJECT_SUFFIX);
            }
            if name.len() > MAX_NAME_LEN {
                return Err(KeyError::TooLong);
            }
            path.push(name);
        }
        Ok(path)
    }

    /// The directory holding keys that start with `dir_prefix` (which is empty
    /// or ends in `/`), or `None` if such a directory cannot exist.
    pub fn prefix_dir(&self, bucket: &str, dir_prefix: &str) -> Option<PathBuf> {
        let mut path = self.objects_dir(bucket);
        if dir_prefix.is_empty() {
            return Some(path);
        }
        let inner = dir_prefix.strip_suffix('/')?;
        for seg in inner.split('/') {
            let name = encode_segment(seg);
            if name.len() > MAX_NAME_LEN {
                return None;
            }
            path.push(name);
        }
        Some(path)
    }
}

/// Is `name` a bucket name this server accepts (S3 rules, simplified)?
/// Checked even though s3s validates too: the name becomes a directory.
pub fn valid_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_and_never_escape() {
        for seg in [
            "",
            ".",
            "..",
            "...",
            "a",
            ".hidden",
            "a.b",
            "sha256:abc",
            "x%obj",
            "%_",
            "é/ü",
            "a b",
            "~",
            "\0",
        ] {
            let enc = encode_segment(seg);
            assert!(!enc.contains('/'), "{seg:?} -> {enc}");
            assert!(!enc.is_empty() && !enc.starts_with('.'), "{seg:?} -> {enc}");
            assert_eq!(
                decode_segment(&enc).as_deref(),
                Some(seg),
                "{seg:?} -> {enc}"
            );
        }
    }

    #[test]
    fn key_and_directory_of_same_prefix_do_not_collide() {
        let l = Layout::new(PathBuf::from("/r"));
        let a = l.object_path("b", "a").unwrap();
        let ab = l.object_path("b", "a/b").unwrap();
        assert_eq!(a, PathBuf::from("/r/b/objects/a%obj"));
        assert_eq!(ab, PathBuf::from("/r/b/objects/a/b%obj"));
        let dots = l.object_path("b", "../../etc/passwd").unwrap();
        assert!(dots.starts_with("/r/b/objects/"));
        assert!(dots.components().all(|c| c.as_os_str() != ".."));
    }

    #[test]
    fn limits() {
        let l = Layout::new(PathBuf::from("/r"));
        assert_eq!(l.object_path("b", ""), Err(KeyError::Empty));
        assert_eq!(
            l.object_path("b", &"a".repeat(1025)),
            Err(KeyError::TooLong)
        );
        assert_eq!(l.object_path("b", &"a".repeat(300)), Err(KeyError::TooLong));
        assert!(
            l.object_path("b", &format!("{}/{}", "a".repeat(200), "b".repeat(200)))
                .is_ok()
        );
    }

    #[test]
    fn bucket_names() {
        assert!(valid_bucket_name("wharf-blobs"));
        for bad in [
            "",
            "ab",
            ".x",
            "A-b",
            "a/b",
            "a..b",
            "tmp-",
            &"a".repeat(64),
        ] {
            assert!(!valid_bucket_name(bad), "{bad}");
        }
    }
}
