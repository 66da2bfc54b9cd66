//! The temporary files of outputs being written (`.NAME.cairn-partial-PID`): removed when the
//! process is interrupted ([`remove_all`], from a signal handler's thread), and by the next
//! restore into their folder when the process that wrote them is gone ([`remove_stale`]).
//! Without that, a Ctrl-C left a hidden file as large as the disk that nothing removed.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

static OPEN: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The marker in a temporary file's name, before the writer's process id.
pub const MARKER: &str = ".cairn-partial-";

/// The temporary name `dest` is written under by this process: hidden, beside it.
#[must_use]
pub fn temp_name(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map_or_else(|| "restore".into(), |n| n.to_string_lossy().into_owned());
    dest.with_file_name(format!(".{name}{MARKER}{}", std::process::id()))
}

/// Notes a temporary file being written.
pub fn register(path: &Path) {
    if let Ok(mut open) = OPEN.lock() {
        open.push(path.to_path_buf());
    }
}

/// Forgets a temporary file (renamed into place, or removed).
pub fn unregister(path: &Path) {
    if let Ok(mut open) = OPEN.lock() {
        open.retain(|p| p != path);
    }
}

/// Removes every temporary file this process is writing; returns how many it removed.
pub fn remove_all() -> usize {
    let Ok(mut open) = OPEN.lock() else {
        return 0;
    };
    open.drain(..)
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count()
}

/// Whether `path` is a temporary file whose writer process is gone.
#[must_use]
pub fn is_stale(path: &Path) -> bool {
    let pid = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.starts_with('.'))
        .and_then(|n| n.rsplit_once(MARKER))
        .and_then(|(_, pid)| pid.parse::<u32>().ok());
    pid.is_some_and(|pid| {
        pid != std::process::id()
            && !cairn_store::lock::process_alive(pid)
            && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
    })
}

/// Removes the temporary files in `dir` whose writer process is gone; returns how many.
pub fn remove_stale(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| is_stale(&e.path()) && std::fs::remove_file(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_files_of_dead_writers_go_live_ones_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dead = dir.path().join(".disk.raw.cairn-partial-4194303");
        let mine = dir
            .path()
            .join(format!(".other.raw.cairn-partial-{}", std::process::id()));
        let plain = dir.path().join("disk.raw");
        for p in [&dead, &mine, &plain] {
            std::fs::write(p, b"x").expect("write");
        }
        assert_eq!(remove_stale(dir.path()), 1);
        assert!(!dead.exists() && mine.exists() && plain.exists());
        register(&mine);
        assert_eq!(remove_all(), 1);
        assert!(!mine.exists());
    }
}
