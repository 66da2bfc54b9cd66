//! The files `cairn vhd` writes: never one of the command's inputs (or a file of their chain),
//! never an existing file without `--force`, and never seen half written: a regular file is
//! written under a hidden temporary name in its folder (`.NAME.cairn-partial-PID`) and renamed
//! over the destination once whole and synced; a command that fails or is interrupted removes
//! it. A block device given with `--force` is written in place.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// A file being written (see the module doc).
pub struct NewFile {
    file: File,
    /// The temporary name, renamed over `dest` by [`NewFile::finish`]; `None` when written in
    /// place (a device).
    tmp: Option<PathBuf>,
    dest: PathBuf,
}

/// Whether `a` and `b` name the same file (device and inode), when both exist.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

impl NewFile {
    /// Starts writing `dest`. `inputs` are the files the command reads (a chain's every file):
    /// `dest` may be none of them, whatever `force` says.
    ///
    /// # Errors
    /// `dest` is an input, exists without `force`, is a folder; the temporary file cannot be
    /// made.
    pub fn create(dest: &Path, inputs: &[&Path], force: bool) -> Result<Self> {
        if let Some(input) = inputs.iter().find(|i| same_file(dest, i)) {
            bail!(
                "{} is {}, which this command reads: write the output elsewhere",
                dest.display(),
                if same_file(dest, inputs[0]) {
                    "the input".to_owned()
                } else {
                    format!("a file of the input's chain ({})", input.display())
                }
            );
        }
        let meta = std::fs::metadata(dest).ok();
        if meta.as_ref().is_some_and(std::fs::Metadata::is_dir) {
            bail!("{} is a folder: give a file name", dest.display());
        }
        if meta.is_some() && !force {
            bail!(
                "{} exists: nothing was written; pass --force to replace it",
                dest.display()
            );
        }
        if meta.as_ref().is_some_and(|m| !m.is_file()) {
            // A block device (with --force): written in place.
            let file = OpenOptions::new()
                .write(true)
                .open(dest)
                .with_context(|| format!("cannot open {}", dest.display()))?;
            return Ok(Self {
                file,
                tmp: None,
                dest: dest.to_path_buf(),
            });
        }
        if dest.file_name().is_none() {
            bail!("{} names no file", dest.display());
        }
        let tmp = cairn_restore::partials::temp_name(dest);
        if let Some(dir) = dest.parent() {
            cairn_restore::partials::remove_stale(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            });
        }
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        cairn_restore::partials::register(&tmp);
        Ok(Self {
            file,
            tmp: Some(tmp),
            dest: dest.to_path_buf(),
        })
    }

    /// The file to write.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Syncs the file and renames it over the destination.
    ///
    /// # Errors
    /// I/O errors (the temporary file is removed).
    pub fn finish(mut self) -> Result<()> {
        self.file
            .sync_all()
            .with_context(|| format!("syncing {}", self.dest.display()))?;
        if let Some(tmp) = self.tmp.take() {
            cairn_restore::partials::unregister(&tmp);
            if let Err(e) = std::fs::rename(&tmp, &self.dest) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("renaming into {}", self.dest.display()));
            }
            if let Some(dir) = self.dest.parent().filter(|d| !d.as_os_str().is_empty()) {
                let _ = File::open(dir).and_then(|d| d.sync_all());
            }
        }
        Ok(())
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if let Some(tmp) = &self.tmp {
            let _ = std::fs::remove_file(tmp);
            cairn_restore::partials::unregister(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_is_never_overwritten_and_an_existing_file_only_with_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in.raw");
        std::fs::write(&input, b"disk").expect("write");
        let link = dir.path().join("link.raw");
        std::fs::hard_link(&input, &link).expect("link");
        for force in [false, true] {
            assert!(NewFile::create(&input, &[&input], force).is_err());
            assert!(NewFile::create(&link, &[&input], force).is_err());
        }
        let out = dir.path().join("out.vhd");
        std::fs::write(&out, b"old").expect("write");
        assert!(NewFile::create(&out, &[&input], false).is_err());
        let mut f = NewFile::create(&out, &[&input], true).expect("create");
        std::io::Write::write_all(f.file(), b"new").expect("write");
        assert_eq!(
            std::fs::read(&out).expect("read"),
            b"old",
            "seen half written"
        );
        f.finish().expect("finish");
        assert_eq!(std::fs::read(&out).expect("read"), b"new");
        // Dropped unfinished: the destination is untouched and no temporary file stays.
        let f = NewFile::create(&out, &[&input], true).expect("create");
        drop(f);
        assert_eq!(std::fs::read(&out).expect("read"), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 3);
    }
}
