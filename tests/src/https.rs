//! A local HTTPS server for HTTP(S) sources (`tests/scripts/https_serve.py`, 127.0.0.1, ports
//! the kernel picks).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::repo_root;

/// The test's HTTPS server; stopped when dropped (its stdin closes).
pub struct Https {
    child: Child,
    main: u16,
}

impl Https {
    /// Serves the files of `dir` over HTTPS with `cert` and `key`, basic authentication as
    /// `user` (`NAME:PASSWORD`).
    #[must_use]
    pub fn start(cert: &Path, key: &Path, dir: &Path, user: &str) -> Self {
        let mut child = Command::new("python3")
            .arg(repo_root().join("tests/scripts/https_serve.py"))
            .arg(cert)
            .arg(key)
            .arg(dir)
            .args(["--user", user])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ports");
        let main = line
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the server printed {line:?}"));
        Self { child, main }
    }

    /// Its port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.main
    }

    /// The URL of `path` on it.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/{path}", self.main)
    }
}

impl Drop for Https {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
