//! Helpers for cairn's end-to-end tests: the `cairn` binary, the shared workload and peer tools.
//!
//! Tests find `../shared` beside the repository and the peer tools that `scripts/setup.sh`
//! installs. When either is missing, the helpers panic with a message saying what to run: a
//! test that needs a peer never passes without it.
//!
//! The store under test is [`store`] (re-exported here); disks of the workload and what
//! damages them are [`disks`]; scratch file systems for full-disk tests are [`scratch`].

pub mod boot;
pub mod damage;
pub mod disks;
pub mod garage;
pub mod https;
pub mod images;
pub mod leaks;
pub mod nbd;
pub mod s3;
pub mod scratch;
pub mod serve;
pub mod store;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::process::{Command, Output};

pub use disks::{
    assert_same_content, corrupt_a_data_chunk, corrupt_a_data_chunk_in, forge_a_data_chunk_in,
    gen_disk, make_raw, modify_raw, read, series, small_disk, vhd_and_delta, vhdi_to_raw,
    xo_chain3,
};
pub use scratch::{LoopDevice, Tmpfs};
pub use store::{LIGHT_KDF, PASSPHRASE, TestStore};

/// The repository's root folder. Read from `CARGO_MANIFEST_DIR` at run time (cargo sets it for
/// the package under test): the target folder is shared between clones at other paths, and a
/// path baked in at compile time may name another clone.
#[must_use]
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// The `shared/` folder beside the repository (or `$CAIRN_SHARED`).
///
/// # Panics
/// When it is missing: the tests need its workload generator and peer recipes.
#[must_use]
pub fn shared_dir() -> PathBuf {
    let dir = std::env::var_os("CAIRN_SHARED")
        .map_or_else(|| repo_root().join("../shared"), PathBuf::from);
    assert!(
        dir.join("peers").is_dir() && dir.join("workload").is_dir(),
        "the shared folder is missing at {} (it holds workload/gen_disk.py and peers/): put \
         shared/ beside the repository or set CAIRN_SHARED",
        dir.display()
    );
    dir
}

/// Where `scripts/setup.sh` installs the peer tools.
///
/// # Panics
/// When they are not installed.
#[must_use]
pub fn peers_dir() -> PathBuf {
    let cache = std::env::var_os("CAIRN_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/cairn"),
        PathBuf::from,
    );
    let dir = cache.join("peers");
    assert!(
        dir.join(".installed").is_file(),
        "peer tools are not installed in {}: run scripts/setup.sh",
        dir.display()
    );
    dir
}

/// The `cairn` binary built beside this test executable.
///
/// # Panics
/// When it has not been built (`cargo test --workspace` builds it).
#[must_use]
pub fn cairn_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("cairn");
    assert!(
        bin.is_file(),
        "{} is missing: build it with cargo build --workspace --bins",
        bin.display()
    );
    bin
}

/// Runs a command and returns its output, panicking with its stderr if it could not start.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{cmd:?} panicked:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `cond` holds (asked every 10 ms, for up to 60 s), instead of sleeping a guessed
/// time: a test's outcome never depends on how fast the machine is. Panics naming `what`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "waited a minute for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// What a failed command said: its standard error, then its standard output (under `--json`
/// an error is a JSON document there).
#[must_use]
pub fn error_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}

/// `cairn ARGS...`.
pub fn cairn<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(cairn_bin());
    c.args(args);
    c
}

/// `node SHARED/peers/SCRIPT ARGS...` with vhd-lib on the module path.
pub fn node<I, S>(script: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new("node");
    c.arg(shared_dir().join("peers").join(script))
        .args(args)
        .env("NODE_PATH", peers_dir().join("xo/node_modules"));
    c
}

/// `python3 SHARED/peers/SCRIPT ARGS...` (the machine's python: the scripts use the standard
/// library only).
pub fn python<I, S>(script: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new("python3");
    c.arg(shared_dir().join("peers").join(script)).args(args);
    c
}

/// Parses a command's stdout as JSON.
#[must_use]
pub fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The unsigned number under `key`; a missing key or another type fails the test (an
/// `Option` comparison would pass when the key is missing).
#[must_use]
pub fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number under \"{key}\" in {v}"))
}

/// The number under `key`, as a float; missing fails the test.
#[must_use]
pub fn float(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number under \"{key}\" in {v}"))
}

/// A CA (`ca.pem`) and a certificate for 127.0.0.1 and localhost signed by it
/// (`server.pem`, `server.key`), made with openssl in `dir`: `(ca, cert, key)`.
#[must_use]
pub fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca_key, ca, key, csr, cert) = (
        dir.join("ca.key"),
        dir.join("ca.pem"),
        dir.join("server.key"),
        dir.join("server.csr"),
        dir.join("server.pem"),
    );
    let ext = dir.join("ext.cnf");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write");
    let openssl = |args: &[&OsStr]| ok(Command::new("openssl").args(args).stderr(Stdio::null()));
    let s = OsStr::new;
    openssl(&[
        s("req"),
        s("-x509"),
        s("-newkey"),
        s("rsa:2048"),
        s("-nodes"),
        s("-days"),
        s("2"),
        s("-subj"),
        s("/CN=cairn test CA"),
        s("-keyout"),
        ca_key.as_os_str(),
        s("-out"),
        ca.as_os_str(),
    ]);
    openssl(&[
        s("req"),
        s("-newkey"),
        s("rsa:2048"),
        s("-nodes"),
        s("-subj"),
        s("/CN=127.0.0.1"),
        s("-keyout"),
        key.as_os_str(),
        s("-out"),
        csr.as_os_str(),
    ]);
    openssl(&[
        s("x509"),
        s("-req"),
        s("-in"),
        csr.as_os_str(),
        s("-CA"),
        ca.as_os_str(),
        s("-CAkey"),
        ca_key.as_os_str(),
        s("-CAcreateserial"),
        s("-days"),
        s("2"),
        s("-extfile"),
        ext.as_os_str(),
        s("-out"),
        cert.as_os_str(),
    ]);
    (ca, cert, key)
}

/// A point's id from its JSON.
#[must_use]
pub fn id(v: &serde_json::Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

/// Every file under `dir`, recursively, in no set order.
///
/// # Panics
/// When a folder under it (or `dir` itself) cannot be read: an empty list always means no file.
#[must_use]
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display()));
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Bytes of every file under `dir`.
#[must_use]
pub fn dir_size(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

/// The error of a refused command (under `--json` it is the JSON on standard output), which
/// must hold each of `words`.
pub fn refused(out: &Output, words: &[&str]) -> String {
    let err = error_text(out);
    assert!(!out.status.success(), "accepted: {err}");
    for w in words {
        assert!(err.contains(w), "{w:?} missing from: {err}");
    }
    err
}
