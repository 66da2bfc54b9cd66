//! `cairn serve` and `cairn token`: the store as an HTTPS service, and who may use it.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_server::token::{Lookups, Role, Tokens, parse_duration};
use clap::{Args, Subcommand};

use crate::table::{Align, Table};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cairn serve /srv/cairn --listen 127.0.0.1:8443\n  \
    cairn serve /srv/cairn --listen 0.0.0.0:8443 --tls-cert host.pem --tls-key host.key\n\n\
    On a host:\n  \
    export CAIRN_TOKEN=$(cat host1.token)\n  \
    cairn backup --store https://backup.example:8443 --fingerprint AA:BB:... --vm web01 xvda=disk.vhd\n\n\
    Without --tls-cert the server makes a self-signed certificate once (kept in STORE/tls/)\n\
    and prints its SHA-256 fingerprint: clients pin it with --fingerprint (or trust\n\
    STORE/tls/cert.pem with --server-ca). The server holds the store's write lock: local\n\
    writers (backup, prune, gc) are refused while it runs; use the API (cairn forget/gc/prune\n\
    --store https://...) with an admin token instead. SIGTERM or Ctrl-C stops it gracefully.\n\
    The API is documented in docs/api.md.")]
pub struct ServeArgs {
    /// The store folder (or --store, or CAIRN_STORE).
    #[arg(value_name = "STORE")]
    pub store: Option<PathBuf>,
    /// The store folder, as every other command takes it.
    #[arg(
        long = "store",
        env = "CAIRN_STORE",
        value_name = "STORE",
        hide_env_values = true
    )]
    pub store_flag: Option<PathBuf>,
    /// The address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    pub listen: std::net::SocketAddr,
    /// The certificate chain to present (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Backup sessions open at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_sessions: usize,
    /// A session without a request for this many seconds is dropped (its chunks are not kept).
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub idle_timeout: u64,
    /// Largest request body, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 32)]
    pub max_body: usize,
    /// Print the address, fingerprint and certificate as one JSON object when listening.
    #[arg(long)]
    pub json: bool,
    /// Also run this job file's schedule (each job as `cairn job run` would, one at a time; a
    /// run missed while the server was down runs once when it starts). The server holds the
    /// store's write lock: jobs that write to this store name it by the server's URL.
    #[arg(long, value_name = "FILE")]
    pub jobs: Option<PathBuf>,
}

/// The store `serve` serves: the folder given as argument, else --store or CAIRN_STORE; a
/// server's URL is no folder to serve.
fn served_store(a: &ServeArgs) -> Result<PathBuf> {
    let store = match (&a.store, &a.store_flag) {
        (Some(p), Some(f))
            if p != f && std::env::var_os("CAIRN_STORE").as_deref() != Some(f.as_os_str()) =>
        {
            crate::usage!(
                "two stores given: {} and --store {}; give one",
                p.display(),
                f.display()
            )
        }
        (Some(p), _) | (None, Some(p)) => p.clone(),
        (None, None) => {
            crate::usage!("give the store folder: cairn serve STORE, --store STORE or CAIRN_STORE")
        }
    };
    if store.to_string_lossy().starts_with("https://") {
        crate::usage!(
            "{} is a server: `cairn serve` serves a store folder on this machine",
            store.display()
        );
    }
    Ok(store)
}

pub fn serve(a: &ServeArgs) -> Result<i32> {
    let store = served_store(a)?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    // Read and checked now; run once the server listens.
    let schedule = std::sync::Mutex::new(match &a.jobs {
        Some(file) => Some(crate::job_cmd::Schedule::read(file)?),
        None => None,
    });
    let config = cairn_server::Config {
        store: store.clone(),
        listen: a.listen,
        tls: a.tls_cert.clone().zip(a.tls_key.clone()),
        limits: cairn_server::Limits {
            body_bytes: a.max_body.max(1) << 20,
            sessions: a.max_sessions.max(1),
            idle: Duration::from_secs(a.idle_timeout.max(1)),
            ..cairn_server::Limits::default()
        },
    };
    let json = a.json;
    cairn_server::serve(&config, &|s| {
        if let Some(schedule) = schedule.lock().ok().and_then(|mut s| s.take()) {
            schedule.start();
        }
        let mut out = std::io::stdout().lock();
        if json {
            let _ = writeln!(
                out,
                "{}",
                serde_json::json!({
                    "url": format!("https://{}", s.addr),
                    "fingerprint": s.fingerprint,
                    "certificate": s.cert,
                    "self_signed": s.self_signed,
                })
            );
        } else {
            let _ = writeln!(
                out,
                "serving {} at https://{}",
                config.store.display(),
                s.addr
            );
            let _ = writeln!(
                out,
                "certificate {}{}",
                s.cert.display(),
                if s.self_signed { " (self-signed)" } else { "" }
            );
            let _ = writeln!(out, "fingerprint {}", s.fingerprint);
        }
        let _ = out.flush();
    })
    .with_context(|| format!("cairn serve {}", store.display()))?;
    Ok(0)
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; its secret is printed once and kept nowhere.
    Create(TokenCreateArgs),
    /// List tokens (never their secrets).
    List(TokenListArgs),
    /// Revoke a token by id or name: it is refused from the next request on.
    Revoke(TokenRevokeArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cairn token create --store /srv/cairn --name host1 --role backup --vm 'web-*' > host1.token\n  \
    cairn token create --store /srv/cairn --name auditor --role restore --expires 30d\n  \
    cairn token create --store /srv/cairn --name dmz-host --role backup --lookups own\n\n\
    The secret (cairn_<id>_<hex>) goes to stdout once; the store keeps only its hash. Give it\n\
    to the host as CAIRN_TOKEN or --token-file.")]
pub struct TokenCreateArgs {
    /// The store folder (on the server).
    #[arg(long, env = "CAIRN_STORE")]
    pub store: PathBuf,
    /// A name for it (the host that will hold it, say).
    #[arg(long)]
    pub name: String,
    /// backup (append only: new points of its VMs), restore (read its VMs), admin (the whole
    /// store: an admin token takes no --vm glob).
    #[arg(long, value_parser = ["backup", "restore", "admin"])]
    pub role: String,
    /// The VMs it reaches: a glob (`*` any run, `?` one character).
    #[arg(long, value_name = "GLOB", default_value = "*")]
    pub vm: String,
    /// It stops working after this long (90m, 12h, 30d, 8w, 1y).
    #[arg(long, value_name = "DURATION")]
    pub expires: Option<String>,
    /// For a backup token: which chunks its "which of these do you have" questions see. `all`
    /// (a clone of another VM's template sends only its own data; the token can tell whether
    /// the store holds a block it knows); `own`: only the latest points of the disks it backs
    /// up (nothing is told of other VMs; blocks shared with them are sent again, stored once).
    #[arg(long, value_parser = ["all", "own"], default_value = "all")]
    pub lookups: String,
    /// Write the secret into this new file, readable by its owner only (0600), instead of
    /// printing it; an existing file is refused before the token is made.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print the token (and its secret, unless --output) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cairn token list --store /srv/cairn\n  cairn token list --store /srv/cairn --json"
)]
pub struct TokenListArgs {
    /// The store folder (on the server).
    #[arg(long, env = "CAIRN_STORE")]
    pub store: PathBuf,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cairn token revoke --store /srv/cairn host1\n  cairn token revoke --store /srv/cairn 3f2a9c1b\n  \
    cairn token revoke --store /srv/cairn id:3f2a9c1b\n\n\
    A word that is one token's id and another's name is refused: say id:ID or name:NAME."
)]
pub struct TokenRevokeArgs {
    /// The store folder (on the server).
    #[arg(long, env = "CAIRN_STORE")]
    pub store: PathBuf,
    /// The token's id or name (id:ID, name:NAME when a word could be either).
    pub token: String,
}

fn tokens_of(store: &std::path::Path) -> Result<Tokens> {
    cairn_store::StoreConfig::load(store)
        .with_context(|| format!("{} is not a cairn store", store.display()))?;
    Ok(Tokens::of_store(store))
}

pub fn token(c: &TokenCommand) -> Result<i32> {
    match c {
        TokenCommand::Create(a) => token_create(a)?,
        TokenCommand::List(a) => token_list(a)?,
        TokenCommand::Revoke(a) => {
            let t = tokens_of(&a.store)?.revoke(&a.token)?;
            println!("revoked token {} ({})", t.id, t.name);
        }
    }
    Ok(0)
}

/// `token create`: the secret written to --output first (a secret made and then not written
/// anywhere is lost), or printed once.
fn token_create(a: &TokenCreateArgs) -> Result<()> {
    let role = Role::parse(&a.role).map_err(anyhow::Error::msg)?;
    let expires = a
        .expires
        .as_deref()
        .map(parse_duration)
        .transpose()?
        .map(|d| chrono::Utc::now() + d);
    let lookups = Lookups::parse(&a.lookups)?;
    // The file first: a secret made and then not written anywhere is lost.
    let mut file = a
        .output
        .as_ref()
        .map(|path| {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| {
                    format!(
                        "--output {}: cannot make it (an existing file is left as it \
                         is); no token was made",
                        path.display()
                    )
                })
        })
        .transpose()?;
    let (t, secret) = tokens_of(&a.store)?.create(&a.name, role, &a.vm, expires, lookups)?;
    if let (Some(f), Some(path)) = (file.as_mut(), &a.output) {
        writeln!(f, "{secret}")
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing the secret into {}", path.display()))?;
    }
    let shown_secret = a.output.is_none().then_some(secret.as_str());
    if a.json {
        crate::print_json(&serde_json::json!({
            "id": t.id, "name": t.name, "role": t.role, "vms": t.vms,
            "expires": t.expires, "lookups": t.lookups, "secret": shown_secret,
            "secret_file": a.output,
        }))?;
    } else {
        if let Some(s) = shown_secret {
            println!("{s}");
        }
        let said = match &a.output {
            Some(path) => format!("the secret is in {} (0600)", path.display()),
            None => "the secret above is shown once".to_owned(),
        };
        eprintln!(
            "token {} ({}, {} role, VMs {:?}{}): {said}; give it to the host as CAIRN_TOKEN or --token-file",
            t.id,
            t.name,
            t.role.name(),
            t.vms,
            t.expires
                .map(|e| format!(
                    ", expires {}",
                    e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// `token list`: every token, its role, VMs and state.
fn token_list(a: &TokenListArgs) -> Result<()> {
    let all = tokens_of(&a.store)?.load()?;
    if a.json {
        crate::print_json(&all)?;
    } else {
        let now = chrono::Utc::now();
        let mut table = Table::new(&[
            ("ID", Align::Left),
            ("NAME", Align::Left),
            ("ROLE", Align::Left),
            ("VMS", Align::Left),
            ("STATE", Align::Left),
        ]);
        for t in &all {
            let state = match (t.revoked, t.expires) {
                (Some(r), _) => format!(
                    "revoked {}",
                    r.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                (None, Some(e)) if e <= now => format!(
                    "expired {}",
                    e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                (None, Some(e)) => format!(
                    "expires {}",
                    e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                (None, None) => "live".into(),
            };
            table.row([
                t.id.to_string(),
                t.name.clone(),
                t.role.name().to_owned(),
                t.vms.to_string(),
                state,
            ]);
        }
        if all.is_empty() {
            println!("(no tokens: `cairn token create` makes one)");
        } else {
            table.print();
        }
    }
    Ok(())
}
