//! Scratch file systems for tests that fill a disk: a small tmpfs, a loop device.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A small tmpfs mounted for a test (needs root, as the test machines give), unmounted when
/// dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`64m`) at `at`, created if need be.
    #[must_use]
    pub fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).expect("mkdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(at.to_path_buf())
    }

    /// Where it is mounted.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A loop device over a file, detached when dropped (needs root, as the test machines give).
pub struct LoopDevice(String);

impl LoopDevice {
    /// Attaches `backing` to the first free loop device.
    ///
    /// # Panics
    /// `losetup` fails (not root).
    #[must_use]
    pub fn attach(backing: &Path) -> Self {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(backing)
            .output()
            .expect("run losetup");
        assert!(
            out.status.success(),
            "this test attaches a loop device and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The device, `/dev/loopN`.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.0
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}
