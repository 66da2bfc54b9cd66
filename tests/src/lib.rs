//! Helpers for cairn's end-to-end tests: the `cairn` binary, the shared workload and peer tools.
//!
//! Tests find `../shared` beside the repository and the peer tools that `scripts/setup.sh`
//! installs. When either is missing, the helpers panic with a message saying what to run: a
//! test that needs a peer never passes without it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::process::{Command, Output};

pub mod garage;
pub mod nbd;
pub mod s3;
pub mod serve;

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

/// `vhdi_to_raw.py` with the libvhdi that setup installed.
pub fn vhdi_to_raw(top: &Path, out: &Path) -> Command {
    let mut c = Command::new(peers_dir().join("venv/bin/python"));
    c.arg(shared_dir().join("peers/vhdi_to_raw.py"))
        .arg(top)
        .arg(out);
    c
}

/// A deterministic raw disk of `size` bytes made by the shared `make_raw.py`.
pub fn make_raw(out: &Path, size: u64, seed: u32) {
    ok(&mut python(
        "make_raw.py",
        [
            out.as_os_str(),
            OsStr::new(&size.to_string()),
            OsStr::new("--seed"),
            OsStr::new(&seed.to_string()),
        ],
    ));
}

/// A deterministic "next day" of `input` made by the shared `modify_raw.py`.
pub fn modify_raw(input: &Path, out: &Path, seed: u32) {
    ok(&mut python(
        "modify_raw.py",
        [
            input.as_os_str(),
            out.as_os_str(),
            OsStr::new("--seed"),
            OsStr::new(&seed.to_string()),
        ],
    ));
}

/// A dynamic VHD of `base` and a differencing VHD of `next` on it, in `dir` (`base.vhd`,
/// `next.vhd`), made by `cairn vhd from-raw`.
pub fn vhd_and_delta(base: &Path, next: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let (bv, nv) = (dir.join("base.vhd"), dir.join("next.vhd"));
    ok(cairn(["vhd", "from-raw"]).arg(base).arg(&bv));
    ok(cairn(["vhd", "from-raw", "--parent"])
        .arg(&bv)
        .arg(next)
        .arg(&nv));
    (bv, nv)
}

/// Reads a whole file.
#[must_use]
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Asserts that `got` is `want` followed only by zeros (a VHD rounded up to its CHS size), or
/// exactly `want` when `exact`.
pub fn assert_same_content(got: &Path, want: &Path, exact: bool) {
    let (g, w) = (read(got), read(want));
    if exact {
        assert!(
            g.len() == w.len(),
            "{} is {} bytes, {} is {}",
            got.display(),
            g.len(),
            want.display(),
            w.len()
        );
    }
    assert!(
        g.len() >= w.len(),
        "{} is shorter than {}",
        got.display(),
        want.display()
    );
    if let Some(i) = g.iter().zip(&w).position(|(a, b)| a != b) {
        panic!(
            "{} differs from {} first at byte {i}",
            got.display(),
            want.display()
        );
    }
    assert!(
        g[w.len()..].iter().all(|&b| b == 0),
        "{} has non-zero bytes past {}",
        got.display(),
        w.len()
    );
}

/// Day `day` of VM `seed` cloned from `template`, from the shared workload generator.
pub fn gen_disk(out: &Path, size: &str, seed: u32, template: u32, day: u32) {
    let script = shared_dir().join("workload/gen_disk.py");
    ok(Command::new("python3").arg(script).arg(out).args([
        "--size",
        size,
        "--seed",
        &seed.to_string(),
        "--template",
        &template.to_string(),
        "--day",
        &day.to_string(),
    ]));
}

/// `n` days of VM `seed` (built on `template`) of `size`, from the shared workload: one image
/// each, day 0 first.
#[must_use]
pub fn series(dir: &Path, size: &str, seed: u32, template: u32, n: u32) -> Vec<PathBuf> {
    (0..n)
        .map(|d| {
            let p = dir.join(format!("vm{seed}-t{template}-{size}-day{d}.raw"));
            gen_disk(&p, size, seed, template, d);
            p
        })
        .collect()
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

/// A 3-level vhd-lib chain in `dir` written sector by sector (so partially changed blocks get
/// partial bitmaps): `base.vhd` holding `r0`, `delta.vhd` holding `r1`, `delta2.vhd` holding
/// `r2`. Returns what `xo_make_chain.js` reported of the first delta.
pub fn xo_chain3(r0: &Path, r1: &Path, r2: &Path, dir: &Path) -> serde_json::Value {
    let sector = OsStr::new("--granularity=sector");
    let made = ok(&mut node(
        "xo_make_chain.js",
        [r0.as_os_str(), r1.as_os_str(), dir.as_os_str(), sector],
    ));
    let parent = format!("--parent={}", dir.join("delta.vhd").display());
    ok(&mut node(
        "xo_make_chain.js",
        [
            r1.as_os_str(),
            r2.as_os_str(),
            dir.as_os_str(),
            sector,
            OsStr::new(&parent),
            OsStr::new("--name=delta2.vhd"),
        ],
    ));
    json(made.trim())
}

/// A store in a temporary folder, driven through the `cairn` binary.
pub struct TestStore {
    dir: tempfile::TempDir,
}

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
        Self { dir }
    }

    /// A copy of this store (`cp -a`) in a folder of its own: one fixture, damaged many ways.
    #[must_use]
    pub fn copy(&self) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        ok(Command::new("cp")
            .arg("-a")
            .arg(self.path())
            .arg(dir.path().join("store")));
        Self { dir }
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
        c.env("CAIRN_STORE", self.path());
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

/// Flips one byte inside the payload of the first data frame of the biggest pack of `store`;
/// returns the chunk id (hex) of that frame.
///
/// # Panics
/// A store without a data chunk.
#[must_use]
pub fn corrupt_a_data_chunk(store: &TestStore) -> String {
    let packs = store.pack_files();
    let pack = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack");
    corrupt_a_data_chunk_in(pack)
}

/// Flips a byte in the first data chunk of the pack file `pack`; returns the chunk's id.
#[must_use]
pub fn corrupt_a_data_chunk_in(pack: &Path) -> String {
    let mut bytes = read(pack);
    // Pack header 32 bytes; frame header 56: id at 8..40, kind at 49, payload after.
    let mut at = 32usize;
    loop {
        let stored = u32::from_be_bytes(bytes[at + 44..at + 48].try_into().expect("len")) as usize;
        if bytes[at + 49] == 0 {
            let id = bytes[at + 8..at + 40]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>();
            bytes[at + 56 + stored / 2] ^= 0x5a;
            std::fs::write(pack, &bytes).expect("write");
            return id;
        }
        at += 56 + stored;
    }
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

/// A 16 MiB disk of the shared workload (VM `seed` on template 7, day 0) named `name` in `dir`.
#[must_use]
pub fn small_disk(dir: &Path, name: &str, seed: u32) -> PathBuf {
    let p = dir.join(name);
    gen_disk(&p, "16M", seed, 7, 0);
    p
}
