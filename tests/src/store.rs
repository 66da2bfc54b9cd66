//! A store under test: made in a temporary folder, driven through the `cairn` binary.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cairn_bin;
use crate::{assert_same_content, cairn, id, json, ok, run};

/// A store in a temporary folder, driven through the `cairn` binary.
pub struct TestStore {
    dir: tempfile::TempDir,
    /// An encrypted store's key file (beside the store), which [`TestStore::cmd`] passes.
    key: Option<PathBuf>,
}

/// The passphrase of the test stores' key files.
pub const PASSPHRASE: &str = "correct horse battery staple";

/// Key files of the tests: Argon2id at 1 MiB and one pass (the tests' speed; the default is
/// 64 MiB and three passes).
pub const LIGHT_KDF: [&str; 4] = ["--kdf-memory", "1M", "--kdf-passes", "1"];

impl TestStore {
    /// Backs up `raws` as one disk of `vm`, a day apart from 2026-11-01; the point ids.
    #[must_use]
    pub fn daily_backups(&self, vm: &str, raws: &[PathBuf]) -> Vec<String> {
        raws.iter()
            .enumerate()
            .map(|(d, r)| {
                let time = format!("2026-11-{:02}T02:00:00Z", d + 1);
                id(&self.backup(vm, &time, "xvda", r, &[]))
            })
            .collect()
    }

    /// `cairn gc --json EXTRA...`, which must succeed: its report.
    pub fn gc(&self, extra: &[&str]) -> serde_json::Value {
        let mut c = self.cmd(&["gc", "--json"]);
        c.args(extra);
        json(&ok(&mut c))
    }

    /// `cairn verify --json EXTRA...`: whether it passed, and its report.
    #[must_use]
    pub fn verify(&self, extra: &[&str]) -> (bool, serde_json::Value) {
        let mut c = self.cmd(&["verify", "--json"]);
        c.args(extra);
        let out = run(&mut c);
        (
            out.status.success(),
            json(&String::from_utf8_lossy(&out.stdout)),
        )
    }

    /// Restores `point` as a raw image in `work` and checks it holds what `want` holds.
    pub fn restore_matches(&self, point: &str, want: &Path, work: &Path) {
        let out = work.join(format!("restored-{point}.raw"));
        self.restore(point, &out, "raw");
        assert_same_content(&out, want, true);
        std::fs::remove_file(out).expect("remove");
    }

    /// The root file of point `point` (its id) in the store's `points/` folder.
    #[must_use]
    pub fn root_file(&self, point: &str) -> PathBuf {
        let mut stack = vec![self.path().join("points")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("points").flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.to_string_lossy().ends_with(&format!("-{point}.json")) {
                    return p;
                }
            }
        }
        panic!("no root file for {point}");
    }

    /// A new store with this chunk size.
    #[must_use]
    pub fn new(chunk: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // UTC, whatever this machine's zone: tests give times in UTC.
        ok(cairn(["init", "--timezone", "UTC", "--chunk-size", chunk])
            .arg(dir.path().join("store")));
        Self { dir, key: None }
    }

    /// A new encrypted store with this chunk size, its key file beside it (`key.json`,
    /// sealed under [`PASSPHRASE`]).
    #[must_use]
    pub fn encrypted(chunk: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key.json");
        ok(cairn([
            "init",
            "--encrypt",
            "--timezone",
            "UTC",
            "--chunk-size",
            chunk,
        ])
        .args(LIGHT_KDF)
        .arg("--key-file")
        .arg(&key)
        .env("CAIRN_PASSPHRASE", PASSPHRASE)
        .env("CAIRN_KEYS_DIR", dir.path().join("keys"))
        .arg(dir.path().join("store")));
        Self {
            dir,
            key: Some(key),
        }
    }

    /// The key file of an encrypted store.
    ///
    /// # Panics
    /// For an unencrypted store.
    #[must_use]
    pub fn key_file(&self) -> PathBuf {
        self.key.clone().expect("an encrypted store")
    }

    /// A `cairn` command on this store given no key (nor passphrase, nor a key file kept under
    /// the store's id).
    #[must_use]
    pub fn keyless(&self, args: &[&str]) -> Command {
        let mut c = self.cmd(args);
        c.env_remove("CAIRN_KEY_FILE")
            .env_remove("CAIRN_PASSPHRASE");
        c
    }

    /// A copy of this store (`cp -a`) in a folder of its own: one fixture, damaged many ways.
    #[must_use]
    pub fn copy(&self) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        ok(Command::new("cp")
            .arg("-a")
            .arg(self.path())
            .arg(dir.path().join("store")));
        let key = self.key.as_ref().map(|k| {
            let copy = dir.path().join("key.json");
            std::fs::copy(k, &copy).expect("copy the key file");
            copy
        });
        Self { dir, key }
    }

    /// The store's folder.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// A `cairn` command on this store.
    #[must_use]
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = cairn(args);
        // Never the key files of whoever runs the tests.
        c.env("CAIRN_STORE", self.path())
            .env("CAIRN_KEYS_DIR", self.dir.path().join("keys"));
        if let Some(k) = &self.key {
            c.env("CAIRN_KEY_FILE", k)
                .env("CAIRN_PASSPHRASE", PASSPHRASE);
        }
        c
    }

    /// Backs up `src` as `disk` of `vm` at `time`; returns the point's JSON.
    pub fn backup(
        &self,
        vm: &str,
        time: &str,
        disk: &str,
        src: &Path,
        extra: &[&str],
    ) -> serde_json::Value {
        let mut c = self.cmd(&["backup", "--json", "--vm", vm, "--time", time]);
        c.args(extra).arg(format!("{disk}={}", src.display()));
        json(&ok(&mut c))[0].clone()
    }

    /// Restores a point, replacing `out` if a test restored there before (`--force`).
    pub fn restore(&self, point: &str, out: &Path, format: &str) {
        ok(self
            .cmd(&["restore", "--force", point, "--format", format])
            .arg(out));
    }

    /// Runs `cairn ARGS` on this store under `strace`, killed with SIGKILL on entering the
    /// `when`-th call (over all threads) of `syscalls` (comma-separated; strace counts each
    /// system call of the list on its own). Returns how it ended: killed by signal 9 when the
    /// call was reached, else the command's own exit.
    pub fn killed_at(
        &self,
        syscalls: &str,
        when: u32,
        args: &[&OsStr],
    ) -> std::process::ExitStatus {
        self.killed_at_path(syscalls, when, None, args)
    }

    /// As [`TestStore::killed_at`], counting only the calls on `path` (strace `-P`: a file or
    /// folder, given absolute, that exists when the command starts).
    pub fn killed_at_path(
        &self,
        syscalls: &str,
        when: u32,
        path: Option<&Path>,
        args: &[&OsStr],
    ) -> std::process::ExitStatus {
        let mut c = Command::new("strace");
        if let Some(p) = path {
            c.arg("-P").arg(p);
        }
        c.args(["-f", "-qq", "-o", "/dev/null", "-e"])
            .arg(format!("trace={syscalls}"))
            .arg("-e")
            .arg(format!("inject={syscalls}:signal=SIGKILL:when={when}"))
            .arg(cairn_bin())
            .args(args)
            .env("CAIRN_STORE", self.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run strace (installed by scripts/setup.sh)")
    }

    /// Runs `cairn ARGS --store STORE` with a pseudo-terminal as its stdin and stdout (through
    /// util-linux `script`); returns its status and what reached the terminal.
    pub fn on_a_terminal(&self, args: &str) -> (std::process::ExitStatus, String) {
        let cmdline = format!(
            "{} {args} --store {}",
            cairn_bin().display(),
            self.path().display()
        );
        let out = Command::new("script")
            .args(["-qec", &cmdline, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("script (util-linux)");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// `cairn list --json`.
    #[must_use]
    pub fn list(&self) -> Vec<serde_json::Value> {
        json(&ok(&mut self.cmd(&["list", "--json"])))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every file under `packs/`.
    #[must_use]
    pub fn pack_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.path().join("packs")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("packs").flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path());
                }
            }
        }
        out.sort();
        out
    }
}
