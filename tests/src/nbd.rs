//! NBD servers for tests, each started on a unix socket in a temporary folder and stopped when
//! dropped: qemu-nbd (through the shared `nbd_serve.sh` recipe, or directly when a test needs
//! several connections), nbdkit, and `cairn serve-nbd`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{TestStore, cairn_bin, make_raw, ok, read, shared_dir};

/// A running NBD server.
pub struct Server {
    child: Option<Child>,
    pid: Option<u32>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// The URI of export `name`.
    #[must_use]
    pub fn uri(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.socket.display())
    }

    /// The `nbds+unix://` URI of export `name` (TLS).
    #[must_use]
    pub fn tls_uri(&self, name: &str) -> String {
        format!("nbds+unix:///{name}?socket={}", self.socket.display())
    }

    /// The socket.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The server's process, while it runs.
    #[must_use]
    pub fn process_id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id).or(self.pid)
    }

    /// Whether the server holds open a file under `dir` that is unlinked (an overlay).
    #[must_use]
    pub fn holds_unlinked_file_in(&self, dir: &Path) -> bool {
        let Some(pid) = self.process_id() else {
            return false;
        };
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|t| {
                        let t = t.to_string_lossy();
                        t.starts_with(&*dir.to_string_lossy()) && t.ends_with(" (deleted)")
                    })
                })
            })
            .unwrap_or(false)
    }

    /// Stops the server now (kill -9).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until something listens on `socket` (bounded).
fn wait_for(socket: &Path, child: &mut Option<Child>) {
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if let Some(c) = child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!("the NBD server exited before listening: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nothing listens on {} after 20 s",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `FILE` served read-only as export `disk` by the shared recipe `nbd_serve.sh` (qemu-nbd, one
/// client at a time), with the qcow2 dirty bitmaps `bitmaps` as metadata contexts.
#[must_use]
pub fn nbd_serve(file: &Path, format: &str, bitmaps: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nbd.sock");
    let out = ok(Command::new("bash")
        .arg(shared_dir().join("peers/nbd_serve.sh"))
        .arg(file)
        .arg(format)
        .arg(format!("unix:{}", socket.display()))
        .args(bitmaps));
    let pid = out
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("nbd_serve.sh printed {out:?}, not PID URI"));
    Server {
        child: None,
        pid: Some(pid),
        socket,
        _dir: dir,
    }
}

/// Runs `program ARGS` in the foreground, the socket path (in a new temporary folder) put in
/// by `args(socket)`, until something listens on it.
fn foreground(
    program: &str,
    what: &str,
    quiet: bool,
    args: impl FnOnce(&Path) -> Vec<std::ffi::OsString>,
) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nbd.sock");
    let mut c = Command::new(program);
    c.args(args(&socket)).stdout(Stdio::null());
    if quiet {
        c.stderr(Stdio::null());
    }
    let child = c.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut child = Some(child);
    wait_for(&socket, &mut child);
    Server {
        child,
        pid: None,
        socket,
        _dir: dir,
    }
}

fn os(parts: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<std::ffi::OsString> {
    parts.iter().map(|p| p.as_ref().to_owned()).collect()
}

/// `FILE` served read-only as export `disk` by qemu-nbd to up to `shared` clients at once.
#[must_use]
pub fn qemu_nbd_shared(file: &Path, format: &str, shared: u32) -> Server {
    let shared = shared.to_string();
    foreground(
        "qemu-nbd",
        "qemu-nbd (qemu-utils, installed by scripts/setup.sh)",
        false,
        |socket| {
            os(&[
                &"-r", &"-t", &"-x", &"disk", &"-f", &format, &"-e", &shared, &"-k", &socket, &file,
            ])
        },
    )
}

/// `FILE` served writable as export `disk` by qemu-nbd (persistent, one client at a time): a
/// disaster-recovery host's disk that a standby keeps current.
#[must_use]
pub fn qemu_nbd_writable(file: &Path, format: &str) -> Server {
    foreground(
        "qemu-nbd",
        "qemu-nbd (qemu-utils, installed by scripts/setup.sh)",
        false,
        |socket| {
            os(&[
                &"-t",
                &"-x",
                &"disk",
                &"-f",
                &format,
                &"--cache=none",
                &"-k",
                &socket,
                &file,
            ])
        },
    )
}

/// `nbdkit ARGS` (plugin, filters, parameters) on a unix socket, in the foreground.
#[must_use]
pub fn nbdkit(args: &[&str]) -> Server {
    foreground(
        "nbdkit",
        "nbdkit (installed by scripts/setup.sh)",
        false,
        |socket| {
            let mut v = os(&[&"-f", &"-U", &socket]);
            v.extend(args.iter().map(std::ffi::OsString::from));
            v
        },
    )
}

/// `cairn serve-nbd --socket ... ARGS` on `store` (its log on stderr dropped).
#[must_use]
pub fn serve_nbd(store: &Path, args: &[&str]) -> Server {
    let bin = cairn_bin();
    foreground(
        bin.to_str().expect("utf-8 path"),
        "cairn serve-nbd",
        true,
        |socket| {
            let mut v = os(&[&"serve-nbd", &"--store", &store, &"--socket", &socket]);
            v.extend(args.iter().map(std::ffi::OsString::from));
            v
        },
    )
}

/// As [`serve_nbd`], for an encrypted store: its key file `key`, the passphrase
/// [`crate::PASSPHRASE`] handed on file descriptor 3 (`--passphrase-fd 3`), as an admin's
/// service would.
#[must_use]
pub fn serve_nbd_keyed(store: &Path, key: &Path, args: &[&str]) -> Server {
    let pass = key.with_extension("pass");
    std::fs::write(&pass, format!("{}\n", crate::PASSPHRASE)).expect("passphrase file");
    let script = r#"exec 3<"$1" && exec "$2" serve-nbd --store "$3" --socket "$0" --key-file "$4" --passphrase-fd 3 "${@:5}""#;
    foreground("bash", "cairn serve-nbd", true, |socket| {
        let mut v = os(&[&"-c", &script, &socket, &pass, &cairn_bin(), &store, &key]);
        v.extend(args.iter().map(std::ffi::OsString::from));
        v
    })
}

/// `nbdinfo --map --json URI [CONTEXT]`: `(offset, length, type)` of each extent.
#[must_use]
pub fn map(uri: &str, context: Option<&str>) -> Vec<(u64, u64, u64)> {
    let mut c = Command::new("nbdinfo");
    match context {
        Some(ctx) => c.arg(format!("--map={ctx}")),
        None => c.arg("--map"),
    };
    let out = ok(c.arg("--json").arg(uri));
    let v: serde_json::Value = serde_json::from_str(&out).expect("nbdinfo JSON");
    v.as_array()
        .expect("extents")
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().expect("offset"),
                e["length"].as_u64().expect("length"),
                e["type"].as_u64().expect("type"),
            )
        })
        .collect()
}

/// A 32 MiB raw disk with holes, and the changed-block-tracking fixture on it (a qcow2 with
/// the dirty bitmap `inc1`, `expected.raw`, `dirty.json`).
pub fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let base = dir.join("base.raw");
    make_raw(&base, 32 << 20, 3);
    let cbt = dir.join("cbt");
    ok(Command::new("bash")
        .arg(shared_dir().join("peers/qcow2_cbt_fixture.sh"))
        .arg(&base)
        .arg(&cbt)
        .arg("7"));
    (base, cbt)
}

/// The bytes of `point` restored as a raw image into `dir`.
pub fn restored(store: &TestStore, point: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("{point}.raw"));
    store.restore(point, &out, "raw");
    read(&out)
}
