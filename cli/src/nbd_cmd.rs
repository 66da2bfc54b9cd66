//! `cairn serve-nbd`: points served over NBD for instant restore (boot a VM from a backup,
//! copy a point with `nbdcopy` or `qemu-img convert`, mount it for file-level restore).

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_nbd::server::{self, Config};
use cairn_nbd::{Stream, Uri};
use cairn_restore::PointExports;
use clap::Args;

use crate::store_cmd::{StoreArg, open_read};
use crate::values::show_time;
use crate::words::human_bytes;

/// The bound on a client's handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cairn serve-nbd --store /backups/store web01/xvda@latest\n  \
    qemu-img convert -f raw -O qcow2 nbd://127.0.0.1:10809/web01/xvda@latest web01.qcow2\n  \
    cairn serve-nbd --socket /run/cairn.sock --writable 3f2a9c1b07de\n  \
    cairn serve-nbd --listen 0.0.0.0:10809 --tls-cert host.pem --tls-key host.key \\\n      \
    --tls-client-ca clients-ca.pem\n  \
    nbdinfo 'nbds://10.0.0.5:10809/web01/xvda@latest?tls-certificates=/etc/pki/cairn-client'\n  \
    qemu-system-x86_64 -m 2G -drive file=nbd+unix:///3f2a9c1b07de?socket=/run/cairn.sock,format=raw\n\n\
    Every point given (all points, with none given) is an export named by its id, its short\n\
    id, VM/DISK@TIME and the name it was given by (web01/xvda@latest). Reads are checked chunk\n\
    by chunk: a bad or missing chunk is an I/O error for that range, never wrong bytes. With\n\
    --writable each client gets a copy-on-write overlay dropped when it disconnects: the backup\n\
    stays untouched. While the server runs, gc keeps the packs its exports read (the next gc\n\
    after it stops frees them).\n\n\
    Who may read: on a unix socket or 127.0.0.1, whoever can reach it on this machine. On any\n\
    other address, only clients presenting a certificate signed by --tls-client-ca (qemu's\n\
    tls-creds-x509 with verify-peer, libnbd's tls-certificates=DIR); listening there without\n\
    it is refused unless --no-auth says anyone who reaches the port may read every export.\n\
    A handshake must end within 30 s, a client that sends nothing for --idle-timeout is\n\
    dropped, and one address holds at most --max-clients-per-address slots.")]
pub struct ServeNbdArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The TCP address to listen on (loopback unless given otherwise: NBD has no
    /// authentication here, so expose it only to trusted hosts).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:10809",
        conflicts_with = "socket"
    )]
    pub listen: String,
    /// Listen on a unix socket instead.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Require TLS (NBD_OPT_STARTTLS) with this certificate chain (PEM); clients connect with
    /// nbds:// URIs.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require a client certificate signed by this CA (PEM): only its holders read.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve a non-loopback address without client certificates: anyone who reaches the port
    /// reads every export (a warning is printed).
    #[arg(long)]
    pub no_auth: bool,
    /// Drop a client that sends no request for this long once it chose an export (90m, 12h;
    /// 0: never, for a VM booted from an export that may sit idle).
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_idle)]
    pub idle_timeout: Duration,
    /// Clients one TCP address may hold at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub max_clients_per_address: usize,
    /// Give each client a copy-on-write overlay (a VM can boot and write; the store never
    /// changes).
    #[arg(long)]
    pub writable: bool,
    /// With --writable: the bytes all clients' overlays may hold together (64G by default); a
    /// write past it fails with ENOSPC, saying so.
    #[arg(long, value_name = "BYTES", value_parser = crate::values::parse_bytes)]
    pub overlay_limit: Option<u64>,
    /// Clients served at once (more are turned away).
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_clients: usize,
    /// Print the exports as JSON (one object per line) before serving.
    #[arg(long)]
    pub json: bool,
    /// Points to export (ids, VM/DISK@latest, ...); all points when none is given.
    #[arg(value_name = "POINT")]
    pub points: Vec<String>,
}

/// `--idle-timeout`: a duration (`0` never).
fn parse_idle(s: &str) -> std::result::Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    crate::values::parse_duration(s)?
        .to_std()
        .map_err(|_| format!("{s:?}: a duration above zero"))
}

/// A client socket.
enum Conn {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

pub fn serve_nbd(a: &ServeNbdArgs) -> Result<i32> {
    let store = Arc::new(open_read(&a.store.store)?);
    let tz = store.config().tz();
    // Each point with the spec it was given by (`web01/xvda@latest` names its export too).
    let points: Vec<(cairn_store::RecoveryPoint, Option<String>)> = if a.points.is_empty() {
        store.points()?.into_iter().map(|p| (p, None)).collect()
    } else {
        a.points
            .iter()
            .map(|s| store.resolve(s).map(|p| (p, Some(s.clone()))))
            .collect::<std::result::Result<Vec<_>, _>>()?
    };
    if points.is_empty() {
        bail!("the store has no point to serve");
    }
    check_exposure(a)?;
    let tls = tls_config(a)?;
    let (exports, shown) = exports(a, &store, points, tz)?;
    let mut base = listen_uri(a, tls.is_some())?;
    let accept = listen(a, &mut base)?;
    say_exports(a, &base, &shown)?;
    let limits = ClientLimits {
        total: a.max_clients,
        per_address: a.max_clients_per_address.max(1),
        idle: (!a.idle_timeout.is_zero()).then_some(a.idle_timeout),
    };
    serve_loop(accept, exports, &limits, tls)
}

/// An export as the start-up lines show it: its name, short id, id and size.
type Shown = (String, String, cairn_store::PointId, u64);

/// Accepts the next client: its socket and a name for the log.
type Accept = Box<dyn FnMut() -> std::io::Result<(Conn, String)>>;

/// The TLS configuration of --tls-cert, --tls-key and --tls-client-ca, when given.
fn tls_config(a: &ServeNbdArgs) -> Result<Option<Arc<cairn_nbd::tls::ServerConfig>>> {
    Ok(match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => {
            let cert = std::fs::read(c).with_context(|| format!("reading {}", c.display()))?;
            let key = std::fs::read(k).with_context(|| format!("reading {}", k.display()))?;
            let clients = a
                .tls_client_ca
                .as_ref()
                .map(|f| std::fs::read(f).with_context(|| format!("reading {}", f.display())))
                .transpose()?;
            Some(
                cairn_nbd::tls::server_config(&cert, &key, clients.as_deref())
                    .context("--tls-cert/--tls-key/--tls-client-ca")?,
            )
        }
        _ => None,
    })
}

/// Each point as an export, named by its VM, disk and time, its id and short id, and the spec
/// it was given by.
fn exports(
    a: &ServeNbdArgs,
    store: &Arc<cairn_store::Store>,
    points: Vec<(cairn_store::RecoveryPoint, Option<String>)>,
    tz: chrono_tz::Tz,
) -> Result<(PointExports, Vec<Shown>)> {
    let mut exports = PointExports::new(Arc::clone(store), a.writable);
    if let Some(limit) = a.overlay_limit {
        exports.limit_overlays(limit);
    }
    let mut shown = Vec::new();
    for (p, spec) in points {
        let name = format!("{}/{}@{}", p.vm, p.disk, show_time(&p.time, tz));
        let mut names = vec![name.clone(), p.id.to_string(), p.short_id().to_owned()];
        if let Some(s) = spec
            && !names.contains(&s)
        {
            names.push(s);
        }
        let description = format!(
            "{} of VM {}, disk {}, {}",
            human_bytes(p.size),
            p.vm,
            p.disk,
            show_time(&p.time, tz)
        );
        shown.push((name, p.short_id().to_owned(), p.id.clone(), p.size));
        exports
            .add(p, names, description)
            .context("exporting a point")?;
    }
    Ok((exports, shown))
}

/// The URI clients reach the server by (its export left empty).
fn listen_uri(a: &ServeNbdArgs, tls: bool) -> Result<Uri> {
    Ok(match &a.socket {
        Some(path) => Uri {
            address: cairn_nbd::Address::Unix(path.clone()),
            export: String::new(),
            tls,
        },
        None => {
            let (host, port) = a
                .listen
                .rsplit_once(':')
                .with_context(|| format!("--listen {}: expected HOST:PORT", a.listen))?;
            Uri {
                address: cairn_nbd::Address::Tcp {
                    host: host.trim_matches(['[', ']']).to_owned(),
                    port: port
                        .parse()
                        .with_context(|| format!("--listen {}: bad port", a.listen))?,
                },
                export: String::new(),
                tls,
            }
        }
    })
}

/// Listens on --socket (a stale socket replaced, nothing else removed) or --listen (the port
/// bound written into `base`: `--listen HOST:0` takes a free one).
fn listen(a: &ServeNbdArgs, base: &mut Uri) -> Result<Accept> {
    Ok(match &a.socket {
        Some(path) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("{}: another server is listening there", path.display());
            }
            // Only a stale socket is removed: any other file there is the admin's mistake, and
            // is left alone.
            match std::fs::symlink_metadata(path) {
                Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                    std::fs::remove_file(path)
                        .with_context(|| format!("removing the stale socket {}", path.display()))?;
                }
                Ok(_) => bail!(
                    "{}: a file that is not a socket is there; give another --socket path \
                     (nothing was removed)",
                    path.display()
                ),
                Err(_) => {}
            }
            let l = UnixListener::bind(path)
                .with_context(|| format!("listening on {}", path.display()))?;
            Box::new(move || l.accept().map(|(s, _)| (Conn::Unix(s), "unix".to_owned())))
        }
        None => {
            let l = TcpListener::bind(&a.listen)
                .with_context(|| format!("listening on {}", a.listen))?;
            // The port bound, not the one asked for: `--listen HOST:0` takes a free one.
            if let cairn_nbd::Address::Tcp { port, .. } = &mut base.address {
                *port = l.local_addr().context("the address listened on")?.port();
            }
            Box::new(move || l.accept().map(|(s, peer)| (Conn::Tcp(s), peer.to_string())))
        }
    })
}

/// One line per export (its URI), then what is served and how to stop.
fn say_exports(a: &ServeNbdArgs, base: &Uri, shown: &[Shown]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for (name, short, id, size) in shown {
        let mut u = base.clone();
        u.export = name.clone();
        if a.json {
            let v = serde_json::json!({
                "export": name, "id": id, "short_id": short, "size": size, "uri": u.to_string(),
                "writable": a.writable,
            });
            writeln!(out, "{v}")?;
        } else {
            let mut s = base.clone();
            s.export = short.clone();
            writeln!(out, "{u}  ({}; also {s})", human_bytes(*size))?;
        }
    }
    if !a.json {
        writeln!(
            out,
            "serving {} {}{}on {}; stop with Ctrl-C",
            crate::words::count(shown.len() as u64, "point"),
            if base.tls { "over TLS only, " } else { "" },
            if a.writable {
                "with a copy-on-write overlay per client "
            } else {
                "read-only "
            },
            base.address
        )?;
    }
    out.flush()?;
    drop(out);
    Ok(())
}

/// Refuses to serve a non-loopback TCP address that any client may read, unless --no-auth
/// says so (then warns). Checked before anything listens.
fn check_exposure(a: &ServeNbdArgs) -> Result<()> {
    if a.socket.is_some() {
        return Ok(());
    }
    let host = a
        .listen
        .rsplit_once(':')
        .map_or(a.listen.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback || a.tls_client_ca.is_some() {
        return Ok(());
    }
    if !a.no_auth {
        bail!(
            "--listen {}: anyone who reaches this address would read every export: give \
             --tls-cert, --tls-key and --tls-client-ca (clients present a certificate that CA \
             signed), listen on 127.0.0.1 or a --socket, or say --no-auth",
            a.listen
        );
    }
    eprintln!(
        "serve-nbd: warning: --no-auth: anyone who reaches {} reads every export{}",
        a.listen,
        if a.tls_cert.is_none() {
            ", in the clear"
        } else {
            ""
        }
    );
    Ok(())
}

/// How many clients are served, and for how long one may idle.
struct ClientLimits {
    total: usize,
    per_address: usize,
    idle: Option<Duration>,
}

/// The clients connected now, by address.
#[derive(Default)]
struct Clients {
    by_address: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl Clients {
    /// Takes a slot of `address`, unless it holds `max` already.
    fn take(&self, address: &str, max: usize) -> bool {
        let Ok(mut m) = self.by_address.lock() else {
            return false;
        };
        let n = m.entry(address.to_owned()).or_default();
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, address: &str) {
        if let Ok(mut m) = self.by_address.lock()
            && let Some(n) = m.get_mut(address)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(address);
            }
        }
    }
}

/// The address part of a peer (`10.0.0.5:51234` -> `10.0.0.5`; `unix` as it is).
fn address_of(peer: &str) -> &str {
    peer.rsplit_once(':').map_or(peer, |(a, _)| a)
}

fn serve_loop(
    mut accept: Accept,
    exports: PointExports,
    limits: &ClientLimits,
    tls: Option<Arc<cairn_nbd::tls::ServerConfig>>,
) -> Result<i32> {
    let exports: &'static PointExports = Box::leak(Box::new(exports));
    let active = Arc::new(AtomicUsize::new(0));
    let clients: &'static Clients = Box::leak(Box::default());
    let next = AtomicU64::new(1);
    let max_clients = limits.total;
    let config = Config {
        // Every client has its own overlay when writable: their writes do not meet.
        multi_conn: exports_read_only(exports),
        tls,
        idle_timeout: limits.idle,
        ..Config::default()
    };
    loop {
        let (conn, peer) = match accept() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("serve-nbd: accepting a client: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let n = next.fetch_add(1, Ordering::Relaxed);
        if active.load(Ordering::SeqCst) >= max_clients {
            eprintln!("serve-nbd: client {n} ({peer}) turned away: {max_clients} clients already");
            continue;
        }
        // Per address over TCP (every client of a unix socket is this machine's).
        let address = matches!(conn, Conn::Tcp(_)).then(|| address_of(&peer).to_owned());
        if let Some(a) = &address
            && !clients.take(a, limits.per_address)
        {
            eprintln!(
                "serve-nbd: client {n} ({peer}) turned away: {} clients from {a} already",
                limits.per_address
            );
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let active = Arc::clone(&active);
        let config = config.clone();
        std::thread::spawn(move || {
            let stream: Box<dyn Stream> = match conn {
                Conn::Tcp(s) => {
                    let _ = s.set_nodelay(true);
                    Box::new(s)
                }
                Conn::Unix(s) => Box::new(s),
            };
            let stream: Box<dyn Stream> = Box::new(Slot {
                stream,
                active,
                clients,
                address,
                deadline: std::sync::Mutex::new(Some(
                    std::time::Instant::now() + HANDSHAKE_TIMEOUT,
                )),
            });
            let log = |line: &str| eprintln!("serve-nbd: client {n} ({peer}): {line}");
            match server::serve(stream, exports, &config, &log) {
                Ok(s) => log(&format!(
                    "done: export {}, {}, {}, {} read",
                    s.export.as_deref().unwrap_or("none"),
                    crate::words::count(s.requests, "request"),
                    crate::words::count(s.errors, "error"),
                    human_bytes(s.bytes_read)
                )),
                Err(e) => log(&format!("ended: {e}")),
            }
        });
    }
}

/// A client's connection, holding one of the server's slots and one of its address's: both
/// are given back as the connection closes, before the client can see the close and connect
/// again. Until the server sets the stream's timeout for the transmission phase, every read
/// and write is bounded by what is left of the handshake's deadline: a client that trickles
/// its handshake a byte at a time is dropped when the deadline passes.
struct Slot {
    stream: Box<dyn Stream>,
    active: Arc<AtomicUsize>,
    clients: &'static Clients,
    /// The TCP address whose slot it holds.
    address: Option<String>,
    deadline: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Slot {
    fn before_io(&self) -> std::io::Result<()> {
        let deadline = self.deadline.lock().map_or(None, |d| *d);
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the handshake took longer than {} s",
                        HANDSHAKE_TIMEOUT.as_secs()
                    ),
                ));
            }
            self.stream.set_timeout(Some(left))?;
        }
        Ok(())
    }
}

impl std::io::Read for Slot {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.before_io()?;
        self.stream.read(buf)
    }
}

impl std::io::Write for Slot {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.before_io()?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

impl Stream for Slot {
    /// The server sets the transmission phase's timeout: the handshake's deadline ends.
    fn set_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        if let Ok(mut d) = self.deadline.lock() {
            *d = None;
        }
        self.stream.set_timeout(timeout)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Before the fields: the stream closes after this.
        if let Some(a) = &self.address {
            self.clients.give_back(a);
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn exports_read_only(e: &PointExports) -> bool {
    !e.writable()
}
