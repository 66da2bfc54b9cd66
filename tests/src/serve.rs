//! `cairn serve` for tests: started on 127.0.0.1 with a port it picks, stopped (SIGTERM, then
//! kill -9) when dropped; tokens made with `cairn token`; raw requests sent with `curl`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{cairn, json, ok, run};

/// A running `cairn serve`.
pub struct Server {
    child: Option<Child>,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// SHA-256 of its certificate.
    pub fingerprint: String,
    /// Its certificate (the store's own, self-signed).
    pub cert: PathBuf,
    /// Where its log goes.
    pub log: PathBuf,
}

impl Server {
    /// Serves the store at `store`, on the port `port` (0: one the server picks).
    ///
    /// # Panics
    /// When it does not start.
    #[must_use]
    pub fn start(store: &Path, port: u16, extra: &[&str]) -> Self {
        Self::try_start(&[], store, port, extra, &[])
            .unwrap_or_else(|log| panic!("cairn serve did not start: {log}"))
    }

    /// Serves the store at `store` on a port it picks, with `env` set (a bucket's
    /// credentials).
    ///
    /// # Errors
    /// Its log when it did not start.
    pub fn start_env(store: &Path, env: &[(&'static str, String)]) -> Result<Self, String> {
        Self::try_start(&[], store, 0, &[], env)
    }

    /// Serves the store at `store` on `port` (0: it picks) with `extra` arguments and `env` set.
    ///
    /// # Panics
    /// When it does not start.
    #[must_use]
    pub fn start_with(
        store: &Path,
        port: u16,
        extra: &[&str],
        env: &[(&'static str, String)],
    ) -> Self {
        Self::try_start(&[], store, port, extra, env)
            .unwrap_or_else(|log| panic!("cairn serve did not start: {log}"))
    }

    /// Serves the store under `strace`, killed with SIGKILL on entering the `when`-th call
    /// (over all threads) of `syscalls`; `None` (with its log) when it died before listening.
    #[must_use]
    pub fn start_killed_at(store: &Path, syscalls: &str, when: u32) -> Option<Self> {
        let wrapper = strace(syscalls, &format!("signal=SIGKILL:when={when}"));
        Self::try_start(&wrapper, store, 0, &[], &[]).ok()
    }

    /// Serves the store under `strace`, every call of `syscalls` slowed by `micros` on entry
    /// (fsyncs made slow, to widen a race).
    ///
    /// # Panics
    /// When it does not start.
    #[must_use]
    pub fn start_slowed(store: &Path, syscalls: &str, micros: u64) -> Self {
        let wrapper = strace(syscalls, &format!("delay_enter={micros}"));
        Self::try_start(&wrapper, store, 0, &[], &[])
            .unwrap_or_else(|log| panic!("cairn serve did not start: {log}"))
    }

    fn try_start(
        wrapper: &[String],
        store: &Path,
        port: u16,
        extra: &[&str],
        env: &[(&'static str, String)],
    ) -> Result<Self, String> {
        let log = store.with_extension(format!("serve{port}.log"));
        let err = std::fs::File::create(&log).expect("log file");
        let mut cmd = match wrapper.split_first() {
            Some((w, args)) => {
                let mut c = Command::new(w);
                c.args(args).arg(crate::cairn_bin());
                c
            }
            None => Command::new(crate::cairn_bin()),
        };
        let mut child = cmd
            .args(["serve", "--json", "--listen", &format!("127.0.0.1:{port}")])
            .arg(store)
            .args(extra)
            .envs(env.iter().cloned())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("cairn serve starts");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        let _ = BufReader::new(stdout).read_line(&mut line);
        if line.trim().is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::fs::read_to_string(&log).unwrap_or_default());
        }
        let v = json(&line);
        let cert = PathBuf::from(v["certificate"].as_str().expect("certificate"));
        Ok(Self {
            child: Some(child),
            url: v["url"].as_str().expect("url").to_owned(),
            fingerprint: v["fingerprint"].as_str().expect("fingerprint").to_owned(),
            cert: if cert.is_absolute() {
                cert
            } else {
                std::env::current_dir().expect("cwd").join(cert)
            },
            log,
        })
    }

    /// Waits for it to end by itself (killed by its wrapper), at most `secs` seconds; kills it
    /// then.
    pub fn wait_dead(&mut self, secs: u64) {
        if let Some(mut c) = self.child.take() {
            for _ in 0..secs * 10 {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            kill_tree(&mut c);
        }
    }

    /// The port it listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    /// A `cairn ARGS` command on this server's store with `token` (the fingerprint pinned).
    #[must_use]
    pub fn cmd(&self, token: &str, args: &[&str]) -> Command {
        let mut c = cairn(args);
        c.env("CAIRN_STORE", &self.url)
            .env("CAIRN_TOKEN", token)
            .env("CAIRN_FINGERPRINT", &self.fingerprint);
        c
    }

    /// `curl` of `PATH` (under `/api/v1/`) with `token`, the body from `body` when given;
    /// returns the status and the answer.
    #[must_use]
    pub fn curl(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&[u8]>,
    ) -> (u16, Vec<u8>) {
        let mut headers = vec![bearer(token)];
        if body.is_some() {
            headers.push("Content-Type: application/octet-stream".into());
        }
        request(self, method, &format!("/api/v1/{path}"), &headers, body)
    }

    /// Opens a backup session for disk `xvda` of `vm` with `token` through the API; returns
    /// its id.
    ///
    /// # Panics
    /// When the server does not open it.
    #[must_use]
    pub fn open_session(&self, token: &str, vm: &str) -> String {
        let body = format!(r#"{{"vm": "{vm}", "disks": ["xvda"]}}"#);
        let (code, s) = self.curl("POST", "sessions", token, Some(body.as_bytes()));
        assert_eq!(code, 201, "{}", String::from_utf8_lossy(&s));
        json(&String::from_utf8_lossy(&s))["session"]
            .as_str()
            .expect("session")
            .to_owned()
    }

    /// Stops it with SIGTERM and waits (a graceful stop); kill -9 after 30 s. Returns whether
    /// it ended by itself, with status 0.
    pub fn stop(&mut self) -> bool {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            for _ in 0..300 {
                if let Ok(Some(status)) = c.try_wait() {
                    return status.success();
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        false
    }

    /// Kills it with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_tree(&mut c);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `strace` following every thread, injecting `what` (`signal=SIGKILL:when=N`,
/// `delay_enter=MICROS`) into `syscalls`.
fn strace(syscalls: &str, what: &str) -> [String; 9] {
    [
        "strace".to_owned(),
        "-f".into(),
        "-qq".into(),
        "-o".into(),
        "/dev/null".into(),
        "-e".into(),
        format!("trace={syscalls}"),
        "-e".into(),
        format!("inject={syscalls}:{what}"),
    ]
}

/// Makes a token on the store at `store`; returns its secret.
#[must_use]
pub fn token(store: &Path, name: &str, role: &str, vm: &str) -> String {
    let v = json(&ok(cairn([
        "token", "create", "--json", "--name", name, "--role", role, "--vm", vm, "--store",
    ])
    .arg(store)));
    v["secret"].as_str().expect("secret").to_owned()
}

/// Kills a child and its own children (a server under `strace`: killing strace alone would
/// leave the server running, detached).
fn kill_tree(c: &mut Child) {
    let children: Vec<String> = Command::new("pgrep")
        .args(["-P", &c.id().to_string()])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    for pid in &children {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    let _ = c.kill();
    let _ = c.wait();
    // Gone for good (its store lock released) before the caller goes on: a child of strace is
    // not ours to wait for, so /proc is watched (bounded). A dead leader shows as a zombie while
    // its other threads still exit and hold its files: done only when no thread is left but it.
    for pid in &children {
        for _ in 0..200 {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count);
            if state.is_empty() || (state.split_whitespace().nth(2) == Some("Z") && threads <= 1) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// `cairn backup --json --vm VM xvda=DISK` through the server with `tok`: the point.
pub fn backup_json(s: &Server, tok: &str, vm: &str, disk: &Path) -> serde_json::Value {
    json(&ok(s
        .cmd(tok, &["backup", "--json", "--vm", vm])
        .arg(format!("xvda={}", disk.display()))))[0]
        .clone()
}

/// The frame of a plain chunk holding `bytes` (the pack format: header, then the bytes).
pub fn frame_of(bytes: &[u8]) -> Vec<u8> {
    frame_of_kind(bytes, 0)
}

/// The frame of a plain chunk of `kind` (0 data, 1 tree).
pub fn frame_of_kind(bytes: &[u8], kind: u8) -> Vec<u8> {
    let id = blake3::hash(bytes);
    let mut h = vec![0u8; 56];
    h[0..4].copy_from_slice(b"CFRM");
    h[8..40].copy_from_slice(id.as_bytes());
    h[40..44].copy_from_slice(&(bytes.len() as u32).to_be_bytes());
    h[44..48].copy_from_slice(&(bytes.len() as u32).to_be_bytes());
    h[49] = kind;
    let crc = crc32(&h[8..]);
    h[4..8].copy_from_slice(&crc.to_be_bytes());
    h.extend_from_slice(bytes);
    h
}

/// CRC-32 (IEEE) as the pack format uses it.
pub fn crc32(b: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &x in b {
        crc ^= u32::from(x);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A leaf of the tree format (format 2, level 0) naming `chunks`.
pub fn leaf_of(chunks: &[[u8; 32]]) -> Vec<u8> {
    let mut b = b"cairn-tree".to_vec();
    b.extend_from_slice(&[2, 0]);
    b.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for c in chunks {
        b.extend_from_slice(c);
    }
    b
}

/// A point of `size` bytes whose tree is the one leaf `leaf`, as a client commits it.
pub fn one_chunk_point(vm: &str, size: usize, leaf: &[u8]) -> String {
    serde_json::json!({"points": [{
        "id": hex(blake3::hash(vm.as_bytes()).as_bytes())[..32].to_owned(), "vm": vm, "disk": "xvda",
        "time": "2026-12-01T00:00:00Z", "size": size, "chunk_size": 262144,
        "source": {"kind": "raw", "vhd_uuid": null, "path": "x"}, "parent": null, "format": 2,
        "depth": 0, "segments": [hex(blake3::hash(leaf).as_bytes())], "stats": {"logical_bytes": 0, "bytes_read": 0, "chunks": 1, "zero_chunks": 0, "parent_chunks": 0, "known_chunks": 0, "new_chunks": 1, "new_plain_bytes": 0, "new_stored_bytes": 0, "seconds": 0.0},
        "committed": "2026-12-01T00:00:00Z", "protected": false, "run": null, "labels": {}
    }]})
    .to_string()
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A commit refused because it names chunks the store does not hold (4xx, saying so).
pub fn refused_missing(code: u16, answer: &[u8]) {
    let text = String::from_utf8_lossy(answer);
    assert!(
        (code == 400 || code == 409)
            && (text.contains("does not hold") || text.contains("is not in this store")),
        "{code}: {text}"
    );
}

/// A request with full control of its headers: `(status, body)`.
pub fn call(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[String],
    body: Option<&[u8]>,
) -> (u16, String) {
    let (code, answer) = request(server, method, path, headers, body);
    (code, String::from_utf8_lossy(&answer).into_owned())
}

/// `curl` of `path` (from the server's root) with `headers` and `body`: `(status, body)`, the
/// status 0 when no answer came.
fn request(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[String],
    body: Option<&[u8]>,
) -> (u16, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut c = Command::new("curl");
    c.args(["-s", "-X", method, "--max-time", "60", "-o"])
        .arg(&out)
        .args(["-w", "%{http_code}", "--cacert"])
        .arg(&server.cert);
    for h in headers {
        c.args(["-H", h]);
    }
    if let Some(b) = body {
        let f = dir.path().join("body");
        std::fs::write(&f, b).expect("body");
        c.arg("--data-binary").arg(format!("@{}", f.display()));
    }
    c.arg(format!("{}{path}", server.url));
    let o = run(&mut c);
    let code = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (code, std::fs::read(&out).unwrap_or_default())
}

/// A browser's GET of `path` (from the server's root, as given: `--path-as-is`) with
/// `headers`: the status (0 when no answer came), the response's headers and its body.
#[must_use]
pub fn page(server: &Server, path: &str, headers: &[String]) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (body, head) = (dir.path().join("b"), dir.path().join("h"));
    let mut c = Command::new("curl");
    c.args(["-s", "--path-as-is", "--max-time", "60", "-o"])
        .arg(&body)
        .arg("-D")
        .arg(&head)
        .args(["-w", "%{http_code}", "--cacert"])
        .arg(&server.cert);
    for h in headers {
        c.args(["-H", h]);
    }
    c.arg(format!("{}{path}", server.url));
    let o = run(&mut c);
    (
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        std::fs::read_to_string(&head).unwrap_or_default(),
        std::fs::read(&body).unwrap_or_default(),
    )
}

/// The `Authorization` header a browser sends for `user:password` (`Basic`).
#[must_use]
pub fn basic(user_and_password: &str) -> String {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD.encode(user_and_password);
    format!("Authorization: Basic {b}")
}

/// The `Authorization` header of token `tok`.
pub fn bearer(tok: &str) -> String {
    format!("Authorization: Bearer {tok}")
}

/// Every point the server lists to `admin`.
pub fn points_of(server: &Server, admin: &str) -> Vec<serde_json::Value> {
    let listed = json(&ok(&mut server.cmd(admin, &["list", "--json"])));
    listed.as_array().expect("list").clone()
}
