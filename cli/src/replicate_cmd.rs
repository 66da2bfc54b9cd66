//! `cairn replicate`: copies of a store's points in another store.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use crate::progress;
use crate::words::{count, human_bytes};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cairn replicate --from /backups/store --to /mnt/usb/store      # an initial seed on a disk\n  \
    cairn replicate --from /backups/store --to /offsite/store --vm 'web*' --json\n  \
    cairn replicate --from /backups/store --to /offsite/store --since 7d --limit-rate 20M\n  \
    CAIRN_TOKEN=$(cat offsite.token) cairn replicate --from /backups/store --to https://offsite:8443 --fingerprint AA:..\n  \
    CAIRN_TOKEN=$(cat site.token) cairn replicate --from https://site:8443 --to /offsite/store --server-ca ca.pem\n\n\
    Copies, oldest first, every point of --from that --to neither holds nor has forgotten\n\
    (each store keeps its own retention: a point pruned on --to is never sent again), with\n\
    its id, time, labels and protection. The chunks --to lacks go first, compressed as stored\n\
    and checked against their ids; each point is published only when all it references is\n\
    durable. A killed run, run again, sends what is still missing. A store folder copied with\n\
    `cp -a` or rsync (no writer running) is a valid store too: a seed to carry offsite.\n\
    --to may be a `cairn serve` (https://HOST:PORT): a backup token for the VMs copied is\n\
    enough (replication only adds); with an admin token the points keep their protection.\n\
    --from may be one too (a restore token is enough). --token-file, --fingerprint and\n\
    --server-ca are for the side that is a server; when both are, --from-token-file,\n\
    --from-fingerprint and --from-server-ca are for --from.\n\n\
    Encrypted stores: between stores sealed alike (unencrypted, or made with one key file)\n\
    chunks travel as stored, sealed, and no key is needed. Into a store sealed otherwise (an\n\
    unencrypted store moved to an encrypted one: `cairn init --encrypt NEW`, then replicate)\n\
    every chunk is read, named and sealed anew: --to's key (--key-file, CAIRN_PASSPHRASE) and,\n\
    for an encrypted --from, --from's (--from-key-file, CAIRN_FROM_PASSPHRASE) are needed, and\n\
    each run reads the points it copies whole (ids change: it cannot be incremental).")]
pub struct ReplicateArgs {
    /// The store to copy from (opened read-only: backups and gc run beside it): a folder, or
    /// https://HOST:PORT of a `cairn serve`.
    #[arg(long, value_name = "STORE")]
    pub from: PathBuf,
    /// The store to copy into (`cairn init` it first; same chunk size): a folder, or
    /// https://HOST:PORT of a `cairn serve`.
    #[arg(long, value_name = "STORE")]
    pub to: PathBuf,
    /// For the side that is a server: its token and the check of its certificate.
    #[command(flatten)]
    pub server: crate::store_cmd::ServerArgs,
    /// When both are servers: --from's token, read from this file.
    #[arg(long, value_name = "FILE")]
    pub from_token_file: Option<PathBuf>,
    /// When both are servers: --from's certificate fingerprint.
    #[arg(long, value_name = "SHA256")]
    pub from_fingerprint: Option<String>,
    /// When both are servers: the CA file --from's certificate is checked against.
    #[arg(long, value_name = "FILE")]
    pub from_server_ca: Option<PathBuf>,
    /// An encrypted --from's key file, for a copy into a store sealed otherwise (default: the
    /// key file kept under its id; its passphrase from CAIRN_FROM_PASSPHRASE or a prompt).
    #[arg(long, value_name = "FILE")]
    pub from_key_file: Option<PathBuf>,
    /// Only VMs whose name or UUID matches this glob (`*`, `?`).
    #[arg(long, value_name = "GLOB")]
    pub vm: Option<String>,
    /// Only this disk.
    #[arg(long)]
    pub disk: Option<String>,
    /// Say what would be copied; copy nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait for another writer of --to instead of failing.
    #[arg(long)]
    pub wait: bool,
    /// Only points made in this last stretch of time (90m, 12h, 7d, 2w).
    #[arg(long, value_name = "DURATION", value_parser = crate::values::parse_duration)]
    pub since: Option<chrono::Duration>,
    /// Send at most this many bytes a second (20M, 512K): a shared uplink stays usable.
    #[arg(long, value_name = "BYTES", value_parser = crate::values::parse_bytes)]
    pub limit_rate: Option<u64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn replicate(a: &ReplicateArgs) -> Result<i32> {
    let bar = progress::spinner("replicate");
    let started = std::time::Instant::now();
    let mut remote = a.server.connect_locked(&a.to)?;
    let from_server = source_server(a, remote.is_some())?;
    let mut source = from_server.connect_locked(&a.from)?;
    let (from_keys, to_keys) = keys(a, source.as_mut(), remote.as_mut())?;
    let remote = remote.map(std::sync::Arc::new);
    let source = source.map(std::sync::Arc::new);
    let dest = match &remote {
        Some(r) => cairn_replicate::Destination::Server(std::sync::Arc::clone(r)),
        None => cairn_replicate::Destination::Folder(&a.to),
    };
    let source = match &source {
        Some(r) => cairn_replicate::Source::Server(std::sync::Arc::clone(r)),
        None => cairn_replicate::Source::Folder(&a.from),
    };
    let report = cairn_replicate::replicate(
        &source,
        &dest,
        &cairn_replicate::Options {
            vm: a.vm.clone(),
            disk: a.disk.clone(),
            dry_run: a.dry_run,
            wait: a.wait,
            from_keys,
            to_keys,
            since: a.since.map(|d| chrono::Utc::now() - d),
            limit_rate: a.limit_rate,
        },
        &|i, n, p| {
            bar.set_message(format!(
                "replicating point {} of {n}: {}/{} {}",
                i + 1,
                p.vm,
                p.disk,
                p.short_id()
            ));
        },
    )
    .with_context(|| {
        format!(
            "replicating {} into {}: the points published before the error stay, the rest \
             is not visible",
            a.from.display(),
            a.to.display()
        )
    })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        crate::print_json(&json!({
            "dry_run": a.dry_run,
            "points": report.points,
            "points_present": report.present,
            "points_forgotten": report.forgotten,
            "chunks_sent": report.chunks,
            "bytes_sent": report.bytes,
            "seconds": secs,
        }))?;
        return Ok(0);
    }
    let verb = if a.dry_run { "would copy" } else { "copied" };
    println!(
        "{verb} {} ({} chunks, {}) in {secs:.1}s; {} there already, {} forgotten there (not sent)",
        count(report.points.len() as u64, "point"),
        report.chunks,
        human_bytes(report.bytes),
        report.present,
        report.forgotten
    );
    Ok(0)
}

/// The keys a copy between stores sealed differently needs (none between stores sealed
/// alike): `--from`'s to read its data, `--to`'s to name and seal it; a server's side is given
/// its key here, a folder's is returned (`(from, to)`) for the replication to open it with.
fn keys(
    a: &ReplicateArgs,
    from_server: Option<&mut cairn_remote::Remote>,
    to_server: Option<&mut cairn_remote::Remote>,
) -> Result<(Option<cairn_store::Keys>, Option<cairn_store::Keys>)> {
    let config = |server: &Option<&mut cairn_remote::Remote>, path: &std::path::Path| match server {
        Some(r) => Ok(cairn_store::StoreRead::config(&**r).clone()),
        None => cairn_store::StoreConfig::load(path),
    };
    let (from_cfg, to_cfg) = (config(&from_server, &a.from)?, config(&to_server, &a.to)?);
    if from_cfg.key_fingerprint() == to_cfg.key_fingerprint() {
        return Ok((None, None));
    }
    let from_keys = crate::key_cmd::replication_keys(
        &from_cfg,
        &a.from.display().to_string(),
        a.from_key_file.as_deref(),
        "CAIRN_FROM_PASSPHRASE",
    )?;
    let to_keys = crate::key_cmd::replication_keys(
        &to_cfg,
        &a.to.display().to_string(),
        crate::key_cmd::given_key_file().as_deref(),
        "CAIRN_PASSPHRASE",
    )?;
    let give = |server: Option<&mut cairn_remote::Remote>, keys: &Option<cairn_store::Keys>| {
        if let (Some(r), Some(cairn_store::Keys::Sealed(k))) = (server, keys) {
            r.unlock(cairn_crypt::MasterKey::clone(k))?;
        }
        anyhow::Ok(())
    };
    let (from_local, to_local) = (from_server.is_none(), to_server.is_none());
    give(from_server, &from_keys)?;
    give(to_server, &to_keys)?;
    Ok((
        from_keys.filter(|_| from_local),
        to_keys.filter(|_| to_local),
    ))
}

/// How to reach `--from`: when `--to` is a server, with `--from`'s own token and certificate
/// check (`--from-token-file`...; a server `--from` needs them), never the destination's;
/// otherwise with the server options given.
fn source_server(a: &ReplicateArgs, to_server: bool) -> Result<crate::store_cmd::ServerArgs> {
    if !to_server {
        return Ok(a.server.clone());
    }
    if cairn_remote::is_remote(&a.from.to_string_lossy()) && a.from_token_file.is_none() {
        anyhow::bail!(
            "--from {} and --to {} are both servers: give --from's token with \
             --from-token-file (and its certificate's check with --from-fingerprint or \
             --from-server-ca)",
            a.from.display(),
            a.to.display()
        );
    }
    Ok(crate::store_cmd::ServerArgs {
        token_file: a.from_token_file.clone(),
        fingerprint: a.from_fingerprint.clone(),
        server_ca: a.from_server_ca.clone(),
    })
}
