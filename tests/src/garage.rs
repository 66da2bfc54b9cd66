//! A Garage cluster for tests (S3-compatible, distributed): three nodes on 127.0.0.1, each on
//! ports the test picks free, replication factor 3, one bucket and one key; stopped (kill -9)
//! when dropped. Garage is built by scripts/setup.sh into `~/.cache/cairn/garage`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running cluster.
pub struct Garage {
    nodes: Vec<Node>,
    /// The S3 endpoint of node 1 (`http://127.0.0.1:PORT`).
    pub endpoint: String,
    /// The S3 endpoints of every node.
    pub endpoints: Vec<String>,
    /// The bucket.
    pub bucket: String,
    /// The key's id.
    pub key_id: String,
    /// Its secret.
    pub secret: String,
    _dir: tempfile::TempDir,
}

struct Node {
    child: Option<Child>,
    config: PathBuf,
}

/// The Garage binary setup built.
///
/// # Panics
/// When it is missing.
#[must_use]
pub fn garage_bin() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    let p = std::env::var("CAIRN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(&home).join(".cache/cairn"))
        .join("garage/bin/garage");
    assert!(
        p.exists(),
        "{} is missing: scripts/setup.sh builds Garage (cargo install garage)",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn garage(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(garage_bin())
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .expect("garage runs")
}

fn garage_ok(config: &Path, args: &[&str]) -> String {
    let o = garage(config, args);
    assert!(
        o.status.success(),
        "garage {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl Garage {
    /// Starts three nodes and makes bucket `cairn` and a key that may read and write it.
    ///
    /// # Panics
    /// When the cluster does not come up in 60 s.
    #[must_use]
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) % 256))
            .collect();
        let mut nodes = Vec::new();
        let mut endpoints = Vec::new();
        for i in 1..=3 {
            let d = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(d.join("meta")).expect("mkdir");
            std::fs::create_dir_all(d.join("data")).expect("mkdir");
            let (rpc, s3, admin) = (free_port(), free_port(), free_port());
            let config = d.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{m}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
                     replication_factor = 3\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                     root_domain = \".s3.garage.localhost\"\n\
                     [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
                    m = d.join("meta").display(),
                    data = d.join("data").display(),
                ),
            )
            .expect("config");
            endpoints.push(format!("http://127.0.0.1:{s3}"));
            let mut node = Node {
                child: None,
                config,
            };
            node.start(&d);
            nodes.push(node);
        }
        // Every node answers, then they meet, then the layout: one zone each.
        let start = Instant::now();
        let ids: Vec<String> = nodes
            .iter()
            .map(|n| {
                loop {
                    let o = garage(&n.config, &["node", "id", "-q"]);
                    if o.status.success() {
                        break String::from_utf8_lossy(&o.stdout).trim().to_owned();
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(60),
                        "garage does not answer"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
            .collect();
        // `node id` answers from the node's files: a node may not listen yet when it does
        // (seen once in CI: connection refused). Asked again until it does, within the bound.
        let first = &nodes[0].config;
        for id in &ids[1..] {
            loop {
                let o = garage(first, &["node", "connect", id]);
                if o.status.success() {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "garage node connect {id}: {}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        for (i, id) in ids.iter().enumerate() {
            let short = id.split('@').next().unwrap_or(id);
            garage_ok(
                first,
                &[
                    "layout",
                    "assign",
                    "-z",
                    &format!("z{}", i + 1),
                    "-c",
                    "1G",
                    short,
                ],
            );
        }
        garage_ok(first, &["layout", "apply", "--version", "1"]);
        garage_ok(first, &["bucket", "create", "cairn"]);
        let key = garage_ok(first, &["key", "create", "cairn-key"]);
        garage_ok(
            first,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                "cairn",
                "--key",
                "cairn-key",
            ],
        );
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                .unwrap_or_else(|| panic!("no {name} in {key}"))
        };
        let (key_id, secret) = (field("Key ID:"), field("Secret key:"));
        let g = Self {
            nodes,
            endpoint: endpoints[0].clone(),
            endpoints,
            bucket: "cairn".into(),
            key_id,
            secret,
            _dir: dir,
        };
        g.wait_ready();
        g
    }

    /// Waits until the bucket takes a request (the layout is applied on every node).
    fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            let o = Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &self.endpoint,
                ])
                .output()
                .expect("curl");
            let code = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            if code != "000" && code != "503" {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the cluster is not ready"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops node `i` (0-based) with kill -9.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again, on its ports (which another cluster starting meanwhile may have
    /// taken: restart only in a test that starts no other cluster).
    pub fn restart(&mut self, i: usize) {
        let dir = self.nodes[i]
            .config
            .parent()
            .expect("node folder")
            .to_path_buf();
        self.nodes[i].start(&dir);
    }

    /// The environment a cairn command needs to reach the bucket.
    #[must_use]
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", "garage".into()),
        ]
    }
}

impl Node {
    fn start(&mut self, dir: &Path) {
        let log = std::fs::File::create(dir.join("log")).expect("log");
        let child = Command::new(garage_bin())
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("garage server starts");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}
