//! Objects as files in a folder: written to a temporary name, synced, renamed.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use super::{ObjectInfo, Objects, check_name};

/// Objects as files under a folder: a put writes a temporary file, syncs it and renames it
/// into place (then syncs the folder), so an object is whole or absent.
#[derive(Debug, Clone)]
pub struct Folder {
    root: PathBuf,
}

impl Folder {
    /// The objects under `root`.
    #[must_use]
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.root.join(name))
    }
}

impl Objects for Folder {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn put_file(&self, name: &str, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(Error::io(path, "reading"))?;
        self.put(name, &bytes)
    }

    fn put(&self, name: &str, bytes: &[u8]) -> Result<()> {
        crate::files::write_atomic_mode(&self.path(name)?, bytes, 0o600)
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let path = self.path(name)?;
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::ObjectMissing {
                    storage: self.describe(),
                    name: name.to_owned(),
                });
            }
            Err(e) => return Err(Error::io(&path, "opening")(e)),
        };
        let size = f
            .metadata()
            .map_err(Error::io(&path, "reading the size of"))?
            .len();
        // A range past the end is said as a bucket says it: what of it is there.
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::Objects {
                storage: self.describe(),
                name: name.to_owned(),
                what: format!(
                    "{} bytes read of the {len} asked at {offset}",
                    size.saturating_sub(offset).min(len)
                ),
            });
        }
        let len = usize::try_from(len).map_err(|_| Error::Usage("a range too large".into()))?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset)
            .map_err(Error::io(&path, "reading a range"))?;
        Ok(buf)
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.path(name)?;
        match std::fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::ObjectMissing {
                storage: self.describe(),
                name: name.to_owned(),
            }),
            Err(e) => Err(Error::io(&path, "reading")(e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&dir, "listing")(e)),
            };
            for e in entries {
                let e = e.map_err(Error::io(&dir, "listing"))?;
                let path = e.path();
                let meta = e.metadata().map_err(Error::io(&path, "reading metadata"))?;
                if meta.is_dir() {
                    stack.push(path);
                    continue;
                }
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let name = rel.to_string_lossy().replace('\\', "/");
                // A temporary file of a put in progress is not an object.
                if name.ends_with(".tmp") || !name.starts_with(prefix) {
                    continue;
                }
                out.push(ObjectInfo {
                    name,
                    size: meta.len(),
                    modified: meta
                        .modified()
                        .map(chrono::DateTime::<chrono::Utc>::from)
                        .unwrap_or_default(),
                });
            }
        }
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, "deleting")(e)),
        }
    }
}
