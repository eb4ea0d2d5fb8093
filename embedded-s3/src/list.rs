//! ListObjects over the key-mirroring directory tree, in S3 key order,
//! without reading the whole bucket.
//!
//! Siblings are visited sorted by `segment` (objects) and `segment + "/"`
//! (directories): every key under directory `d` starts with `d/`, and no
//! sibling object name contains `/`, so this visit order is exactly the
//! byte order of the full keys. The walk starts at the directory named by the
//! prefix's complete segments, skips subtrees that lie entirely before the
//! cursor, collapses subtrees that fall inside one common prefix without
//! descending, and stops after `max + 1` entries.

use std::fs;
use std::io;
use std::path::Path;

use crate::layout::{Layout, OBJECT_SUFFIX, decode_segment};
use crate::store::{ObjectMeta, open_object};

/// What to list.
#[derive(Debug)]
pub struct ListQuery<'a> {
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    /// Return only entries strictly after this key / common prefix.
    pub cursor: Option<&'a str>,
    pub max: usize,
}

/// One listing entry.
#[derive(Debug)]
pub enum Item {
    Object { key: String, meta: ObjectMeta },
    Prefix(String),
}

impl Item {
    /// The key or common prefix, as used for continuation.
    pub fn name(&self) -> &str {
        match self {
            Item::Object { key, .. } => key,
            Item::Prefix(p) => p,
        }
    }
}

/// Lists up to `q.max` entries; the flag says whether more follow.
pub fn list(layout: &Layout, bucket: &str, q: &ListQuery<'_>) -> io::Result<(Vec<Item>, bool)> {
    let mut walker = Walker { q, out: Vec::new() };
    if q.max > 0 {
        let dir_prefix = match q.prefix.rfind('/') {
            Some(i) => &q.prefix[..=i],
            None => "",
        };
        if let Some(dir) = layout.prefix_dir(bucket, dir_prefix) {
            walker.walk(&dir, dir_prefix)?;
        }
    }
    let mut out = walker.out;
    let truncated = out.len() > q.max;
    out.truncate(q.max);
    Ok((out, truncated))
}

struct Walker<'q, 'a> {
    q: &'q ListQuery<'a>,
    out: Vec<Item>,
}

enum Child {
    Object(String),
    Dir(String),
}

impl Walker<'_, '_> {
    fn full(&self) -> bool {
        self.out.len() > self.q.max
    }

    fn after_cursor(&self, name: &str) -> bool {
        self.q.cursor.is_none_or(|c| name > c)
    }

    /// The common prefix `key` rolls up into, if any.
    fn common_prefix<'k>(&self, key: &'k str) -> Option<&'k str> {
        let d = self.q.delimiter.filter(|d| !d.is_empty())?;
        let rest = key.get(self.q.prefix.len()..)?;
        let i = rest.find(d)?;
        Some(&key[..self.q.prefix.len() + i + d.len()])
    }

    fn push_prefix(&mut self, cp: &str) {
        let dup = matches!(self.out.last(), Some(Item::Prefix(p)) if p == cp);
        if !dup && self.after_cursor(cp) {
            self.out.push(Item::Prefix(cp.to_owned()));
        }
    }

    fn walk(&mut self, dir: &Path, key_prefix: &str) -> io::Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut children = Vec::new();
        for entry in entries {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if let Some(stem) = name.strip_suffix(OBJECT_SUFFIX) {
                if let Some(seg) = decode_segment(stem) {
                    children.push((seg, Child::Object(name)));
                }
            } else if entry.file_type()?.is_dir()
                && let Some(seg) = decode_segment(&name)
            {
                children.push((format!("{seg}/"), Child::Dir(name)));
            }
        }
        children.sort_unstable_by(|a, b| a.0.cmp(&b.0));

        for (sort_key, child) in children {
            if self.full() {
                break;
            }
            let full = format!("{key_prefix}{sort_key}");
            match child {
                Child::Object(name) => self.visit_object(&dir.join(name), &full)?,
                Child::Dir(name) => self.visit_dir(&dir.join(name), &full)?,
            }
        }
        Ok(())
    }

    fn visit_object(&mut self, path: &Path, key: &str) -> io::Result<()> {
        if !key.starts_with(self.q.prefix) {
            return Ok(());
        }
        if let Some(cp) = self.common_prefix(key) {
            self.push_prefix(cp);
            return Ok(());
        }
        if !self.after_cursor(key) {
            return Ok(());
        }
        match open_object(path) {
            Ok(Some((_, meta))) => self.out.push(Item::Object {
                key: key.to_owned(),
                meta,
            }),
            Ok(None) => {} // deleted while listing
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "skipping unreadable object")
            }
        }
        Ok(())
    }

    fn visit_dir(&mut self, path: &Path, dkey: &str) -> io::Result<()> {
        let prefix = self.q.prefix;
        if !(dkey.starts_with(prefix) || prefix.starts_with(dkey)) {
            return Ok(());
        }
        if let Some(c) = self.q.cursor
            && c >= dkey
            && !c.starts_with(dkey)
        {
            return Ok(()); // every key in here sorts before the cursor
        }
        if dkey.starts_with(prefix)
            && let Some(cp) = self.common_prefix(dkey)
        {
            // All keys below share `cp`, which ends inside `dkey`. Emit it
            // only if the subtree holds at least one object.
            if has_object(path)? {
                let cp = cp.to_owned();
                self.push_prefix(&cp);
            }
            return Ok(());
        }
        self.walk(path, dkey)
    }
}

fn has_object(dir: &Path) -> io::Result<bool> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(OBJECT_SUFFIX) {
            return Ok(true);
        }
        if entry.file_type()?.is_dir() && has_object(&entry.path())? {
            return Ok(true);
        }
    }
    Ok(false)
}
