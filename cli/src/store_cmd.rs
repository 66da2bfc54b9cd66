//! The store commands: init, backup, restore, list, report, repair.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cairn_ingest::{Format, KeyMode, Request};
use cairn_restore::OutputFormat;
use cairn_store::point::{VmKey, check_name};
use cairn_store::select::Filter;
use cairn_store::{Labels, OpenMode, RecoveryPoint, Store};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::progress;
use crate::words::{count, human_bytes};

/// `--store STORE`, or `CAIRN_STORE`.
#[derive(Debug, Args)]
pub struct StoreArg {
    /// The store: a folder, or https://HOST:PORT of a `cairn serve` (backup, list, report,
    /// restore, verify, diff, forget, protect, unprotect, prune, gc and policy work through a
    /// server).
    #[arg(long, env = "CAIRN_STORE")]
    pub store: PathBuf,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// How to reach an HTTPS or nbds:// disk (a backup's source, a standby's target).
#[derive(Debug, Args, Clone, Default)]
pub struct HttpArgs {
    /// The user for HTTP(S) disks (basic authentication; the password comes from
    /// CAIRN_HTTP_PASSWORD, or both from the URL's user-info).
    #[arg(long, value_name = "USER")]
    pub http_user: Option<String>,
    /// Trust the certificates of this PEM file for HTTPS disks (besides the system's) and
    /// nbds:// ones (instead of the system's): a host's certificate (XAPI's
    /// VDI.get_nbd_info gives it), or the pool's CA.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Trust any certificate of HTTPS disks (no check: anyone on the path can read and change
    /// the disk). Prefer --ca-file. (nbds:// ones are always checked.)
    #[arg(long)]
    pub insecure: bool,
}

impl HttpArgs {
    /// The options of `cairn-http` (the password from CAIRN_HTTP_PASSWORD).
    pub fn options(&self) -> cairn_http::HttpOptions {
        cairn_http::HttpOptions {
            user: self.http_user.clone(),
            password: std::env::var("CAIRN_HTTP_PASSWORD").ok(),
            ca_file: self.ca_file.clone(),
            insecure: self.insecure,
        }
    }
}

/// How to reach a store behind `cairn serve`: its token and its certificate's check.
#[derive(Debug, Args, Clone, Default)]
pub struct ServerArgs {
    /// A remote store's token, read from this file (else from CAIRN_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// A remote store's certificate must have this SHA-256 fingerprint (what `cairn serve`
    /// prints).
    #[arg(long, value_name = "SHA256", env = "CAIRN_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// Check a remote store's certificate against this CA file (PEM) instead of the
    /// system's roots.
    #[arg(long, value_name = "FILE", env = "CAIRN_SERVER_CA")]
    pub server_ca: Option<PathBuf>,
}

impl StoreArg {
    /// The server, when the store is `https://...`.
    pub fn remote(&self) -> Result<Option<std::sync::Arc<cairn_remote::Remote>>> {
        self.server.connect(&self.store)
    }

    /// The store to read: the folder, or the server.
    pub fn reader(&self) -> Result<Reader> {
        Ok(match self.remote()? {
            Some(r) => Reader::Remote(r),
            None => Reader::Local(Box::new(open_read(&self.store)?)),
        })
    }
}

impl ServerArgs {
    /// The server at `store`, when it is `https://...`.
    pub fn connect(&self, store: &Path) -> Result<Option<std::sync::Arc<cairn_remote::Remote>>> {
        let url = store.to_string_lossy();
        if !cairn_remote::is_remote(&url) {
            return Ok(None);
        }
        let token = match &self.token_file {
            Some(f) => std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file {}", f.display()))?,
            None => std::env::var("CAIRN_TOKEN").unwrap_or_default(),
        };
        let opts = cairn_remote::Options {
            token: token.trim().to_owned(),
            tls: cairn_remote::TlsOptions {
                ca_file: self.server_ca.clone(),
                fingerprint: self.fingerprint.clone(),
            },
        };
        Ok(Some(std::sync::Arc::new(cairn_remote::Remote::connect(
            &url, &opts,
        )?)))
    }
}

/// A store read here or through a server.
pub enum Reader {
    /// A folder.
    Local(Box<Store>),
    /// A server.
    Remote(std::sync::Arc<cairn_remote::Remote>),
}

impl Reader {
    pub fn get(&self) -> &dyn cairn_store::StoreRead {
        match self {
            Reader::Local(s) => &**s,
            Reader::Remote(r) => &**r,
        }
    }
}

/// Refuses a server's URL where a command needs the store's folder.
fn local_only(store: &Path) -> Result<()> {
    if cairn_remote::is_remote(&store.to_string_lossy()) {
        bail!(
            "{}: this command works on a store folder; through a server, backup, list, report, \
             restore, verify, diff, forget, protect, unprotect, prune, gc and policy work (run \
             this one on the server's machine: readers such as standby and serve-nbd run beside \
             the server, writers such as repair with it stopped)",
            store.display()
        );
    }
    Ok(())
}

/// A time as cairn shows it everywhere, human and JSON: RFC 3339 with seconds, in the store's
/// time zone (`Z` for UTC, else its offset then).
pub fn show_time(t: &DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Checks the form of `--time` as the command line is read (a usage error, exit status 2); it
/// is read in the store's zone once the store is open.
fn time_syntax(s: &str) -> Result<String, String> {
    parse_time(s, Tz::UTC)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// Parses `--time`: RFC 3339 (`2026-11-22T02:00:00Z`, `...+02:00`), a date and time without a
/// zone (in the store's zone `tz`), or a date (its midnight there).
pub fn parse_time(s: &str, tz: Tz) -> Result<DateTime<Utc>> {
    use cairn_store::select::{When, day_start, parse_when};
    match parse_when(s, tz) {
        Some(When::Instant(t)) => return Ok(t),
        Some(When::Day(d)) => {
            if let Some(t) = day_start(d, tz) {
                return Ok(t);
            }
        }
        None => {}
    }
    bail!(
        "--time {s:?} is not a time: give RFC 3339 (2026-11-22T02:00:00Z or with an offset), a \
         date and time without a zone (2026-11-22T02:00:00, in the store's time zone {tz}; one \
         that the clocks skip is refused) or a date (2026-11-22)"
    )
}

/// Parses sizes like `256K`, `1M`, `2MiB`, `65536`.
pub fn parse_size(s: &str) -> Result<u32, String> {
    u32::try_from(parse_bytes(s)?).map_err(|_| format!("{s} is too large"))
}

/// Parses byte counts like `100G`, `2TiB`, `1048576` (K, M, G, T are powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.trim_end_matches('B').trim_end_matches('I');
    let (num, mul) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 256K, 1M, 100G)"))?;
    n.checked_mul(mul)
        .ok_or_else(|| format!("{s} is too large"))
}

/// Where a store's packs live when not in the store's folder: an S3-compatible bucket.
#[derive(Debug, Args, Clone, Default)]
pub struct PacksArgs {
    /// Keep the packs, root files and a copy of the config in this bucket and prefix
    /// (s3://BUCKET/PREFIX; credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY). The
    /// store's folder keeps its config and index, which can be rebuilt from the bucket alone.
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    pub packs: Option<String>,
    /// The bucket's S3 endpoint (https://s3.example; plain http only on this machine). Default:
    /// AWS's.
    #[arg(long, value_name = "URL", requires = "packs")]
    pub s3_endpoint: Option<String>,
    /// The bucket's region (default: AWS_REGION, else us-east-1; Garage's is "garage").
    #[arg(long, value_name = "REGION", requires = "packs")]
    pub s3_region: Option<String>,
}

impl PacksArgs {
    /// The bucket given, if any.
    pub fn config(&self) -> Option<cairn_store::config::PacksConfig> {
        self.packs
            .as_ref()
            .map(|url| cairn_store::config::PacksConfig {
                url: url.trim_end_matches('/').to_owned(),
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone(),
            })
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cairn init /backups/store --chunk-size 256K --timezone Europe/Paris\n  \
                  AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... cairn init /var/lib/cairn/store \\\n      \
                  --packs s3://backups/cairn --s3-endpoint https://s3.example --s3-region garage"
)]
pub struct InitArgs {
    /// The folder to create the store in (missing or empty).
    pub store: PathBuf,
    #[command(flatten)]
    pub packs: PacksArgs,
    /// Chunk size: a power of two from 64K to 2M.
    #[arg(long, value_parser = parse_size, default_value = "256K")]
    pub chunk_size: u32,
    /// The store's time zone (an IANA name): times are shown in it, read in it when written
    /// without a zone, and retention counts its days in it. By default this machine's (TZ, or
    /// /etc/localtime); change it later with `cairn policy timezone`.
    #[arg(long, value_name = "ZONE")]
    pub timezone: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SourceFormat {
    /// Detect from the content.
    Auto,
    /// A raw image.
    Raw,
    /// A VHD (fixed, dynamic or differencing).
    Vhd,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cairn backup --store /backups/store --vm web01 xvda=web01-xvda.vhd\n  \
    cairn backup --vm web01 --time 2026-11-22T02:00:00Z xvda=delta.vhd xvdb=data.raw\n  \
    cairn backup --vm pve-101 --dirty-bitmap backup-inc scsi0=nbd://pve1:10809/drive-scsi0\n  \
    cairn backup --vm web01 --changed-blocks cbt.b64 xvda='nbd://xcp1/VDI-UUID%3Fsession_id%3D...'\n  \
    CAIRN_HTTP_PASSWORD=... cairn backup --vm web01 --http-user root --ca-file pool-ca.pem \\\n    \
    xvda='https://xcp1/export_raw_vdi?vdi=VDI-UUID&format=vhd&base=SNAP-UUID'\n  \
    curl -s https://xo/export/web01.vhd | cairn backup --vm web01 xvda=-"
)]
pub struct BackupArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The VM's name.
    #[arg(long)]
    pub vm: String,
    /// The VM's identity in its hypervisor (the XAPI VM UUID, the Proxmox VMID): a VM's
    /// history follows it (two VMs of one name stay apart; a renamed VM keeps its history).
    #[arg(long, value_name = "ID")]
    pub vm_uuid: Option<String>,
    /// The pool or cluster the VM belongs to (part of its identity: a Proxmox VMID is unique
    /// only within its cluster).
    #[arg(long)]
    pub pool: Option<String>,
    /// The host the VM ran on (a label: VMs move between the hosts of a pool).
    #[arg(long)]
    pub host: Option<String>,
    /// A tag (repeatable): shown by list and report, and a filter for list, report, verify
    /// and prune.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// A note kept with the points of this run.
    #[arg(long)]
    pub note: Option<String>,
    /// The time the backup stands for: RFC 3339, a date and time without a zone (the store's
    /// time zone) or a date; now by default. A time in the future is refused unless --force.
    #[arg(long, value_parser = time_syntax)]
    pub time: Option<String>,
    /// Apply differencing VHDs to this point (id prefix or VM/DISK@latest) instead of the disk's
    /// latest; skips the parent UUID check.
    #[arg(long)]
    pub parent: Option<String>,
    /// How to read the sources.
    #[arg(long, value_enum, default_value_t = SourceFormat::Auto)]
    pub format: SourceFormat,
    /// Wait for another writer instead of failing.
    #[arg(long)]
    pub wait: bool,
    /// A key backup: read the whole disk even from a differencing VHD (through its parent
    /// files), storing fresh copies of chunks that verify marked bad or missing.
    #[arg(long)]
    pub key: bool,
    /// The size the disk must have (e.g. 100G): a raw stream that ends elsewhere is refused.
    #[arg(long, value_parser = parse_bytes)]
    pub size: Option<u64>,
    /// Accept a raw stream shorter than the disk's previous point (the disk shrank).
    #[arg(long)]
    pub allow_resize: bool,
    /// Read a source as told even when it looks like another format (a VHD with --format raw,
    /// a raw disk that starts like a qcow2, VHDX, VMDK or VDI image); accept a --time in the
    /// future.
    #[arg(long)]
    pub force: bool,
    /// Layout policy: a backup that reads the whole disk may store again up to this percent of
    /// the disk's data, taken from packs its latest point barely uses, so that restores of late
    /// generations read from few packs (the old copies become garbage for `cairn gc`); 0 never.
    #[arg(long, value_name = "PCT", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub rewrite: u32,
    /// Connections to an NBD server (reads spread over them when the server allows several).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub nbd_connections: u32,
    /// Read only the blocks an NBD server's dirty bitmap marks (`qemu:dirty-bitmap:NAME`, as
    /// qemu-nbd -B NAME and Proxmox export it); the rest is the disk's latest point (or
    /// --parent). A key backup (--key, or due by policy) reads the whole disk instead.
    #[arg(long, value_name = "NAME", conflicts_with = "changed_blocks")]
    pub dirty_bitmap: Option<String>,
    /// Read only the blocks this file marks changed since the disk's latest point (or
    /// --parent): the base64 bitmap of XCP-ng's VDI.list_changed_blocks (one bit per 64 KiB,
    /// most significant bit first), or lines of `OFFSET LENGTH` in bytes. For NBD sources.
    #[arg(long, value_name = "FILE")]
    pub changed_blocks: Option<PathBuf>,
    #[command(flatten)]
    pub http: HttpArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// DISK=SOURCE: a disk name and a path, `-` for stdin, an NBD URI
    /// (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH) or an HTTP(S) URL that
    /// streams a VHD or a raw disk (XAPI's export_raw_vdi). A disk whose name starts with
    /// `[NOBAK]` is skipped, as Xen Orchestra does.
    #[arg(required = true, value_name = "DISK=SOURCE")]
    pub disks: Vec<String>,
}

/// Whether a key backup of a disk is due under an interval of `n`: every n-th backup is one.
fn key_due(points: &[RecoveryPoint], vm: &VmKey, disk: &str, n: u32) -> bool {
    if n == 0 {
        return false;
    }
    let mut mine: Vec<&RecoveryPoint> = points
        .iter()
        .filter(|p| p.disk == disk && &p.vm_key() == vm)
        .collect();
    mine.sort_by_key(|p| (p.time, p.committed));
    match mine.iter().rposition(|p| p.stats.key) {
        None => true,
        Some(i) => (mine.len() - 1 - i) as u64 + 1 >= u64::from(n),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RestoreFormat {
    /// A sparse raw image.
    Raw,
    /// One dynamic VHD (or with --base one differencing VHD).
    Vhd,
    /// A folder with a key VHD and a differencing VHD per later point.
    VhdChain,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cairn restore --store /backups/store web01/xvda@latest web01.raw\n  \
    cairn restore 3f2a9c1b07de web01.vhd --format vhd\n  \
    cairn restore web01/xvda@latest chain/ --format vhd-chain\n  \
    cairn restore 3f2a9c1b07de - | qemu-img convert -f raw -O qcow2 /dev/stdin web01.qcow2\n\n\
    A file is written under a temporary name and renamed into place when the restore has\n\
    succeeded; an existing file is kept unless --force. A chain goes into a new or empty folder.\n\
    Block devices and pipes are written in place; binary data is never written to a terminal."
)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The point: an id (a unique prefix, or the UUID of a VHD cairn restored), VM/DISK@latest,
    /// VM/DISK@latest~N (N before the latest), VM/DISK@DATE or VM/DISK@DATETIME (the newest
    /// point at or before it; UTC unless a zone is given).
    pub point: String,
    /// Where to write: a file, `-` for stdout, or a folder for vhd-chain.
    pub out: PathBuf,
    /// The output format.
    #[arg(long, value_enum, default_value_t = RestoreFormat::Raw)]
    pub format: RestoreFormat,
    /// With --format vhd: write a differencing VHD of what changed since this point. Its
    /// parent is the base's VHD as the first file of a chain restored from it, in the same
    /// folder (`cairn restore BASE DIR --format vhd-chain --from BASE`).
    #[arg(long)]
    pub base: Option<String>,
    /// Write zeros where chunks are bad or missing, list those ranges, and exit with status 3
    /// (instead of stopping at the first one).
    #[arg(long)]
    pub ignore_errors: bool,
    /// With --format vhd-chain: the chain's first point (by default the newest key backup at
    /// or before the point).
    #[arg(long)]
    pub from: Option<String>,
    /// Replace an existing file (once the restore has succeeded), or write a chain into a
    /// folder that is not empty.
    #[arg(long)]
    pub force: bool,
    /// Print a JSON summary (on stderr when the data goes to stdout).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cairn list --store /backups/store --vm web01\n  \
    cairn list --pool prod --tag monthly --last 1 --json"
)]
pub struct ListArgs {
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub select: Selection,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cairn report --store /backups/store --json | jq .vms\n  \
    cairn report --pool prod --since 7d\n  \
    cairn report --store /backups/store --html /var/www/backups.html\n\n\
    Shared and unique bytes are counted over the whole store; the filters choose the rows.\n\
    --html writes one self-contained page (no network): savings, growth and when the disk\n\
    fills, the last verify, VMs ranked by what deleting them frees, and per VM a chart and\n\
    its newest points (every point with --vm). The JSON is docs/report-json.md."
)]
pub struct ReportArgs {
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub select: Selection,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Write the report as an HTML page to FILE (replaced atomically), instead of the text
    /// (with --json, the JSON the page is drawn from is printed too).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cairn repair --store /backups/store --rebuild-index\n  \
                  cairn repair --store /var/lib/cairn/store --rebuild-index --packs s3://backups/cairn \\\n      \
                  --s3-endpoint https://s3.example   # a new machine: the store made from the bucket"
)]
pub struct RepairArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The store's bucket: when the store's folder is missing or empty (a new machine), it is
    /// made from the bucket's copy of the config, then its index from the bucket alone.
    #[command(flatten)]
    pub packs: PacksArgs,
    /// Rebuild the RocksDB index from the packs and root files (the old one is kept aside).
    #[arg(long, required = true)]
    pub rebuild_index: bool,
    /// Wait for another writer instead of failing.
    #[arg(long)]
    pub wait: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn init(a: &InitArgs) -> Result<i32> {
    let zone = a
        .timezone
        .clone()
        .unwrap_or_else(cairn_store::config::local_timezone);
    // Checked before anything is created.
    cairn_store::config::parse_timezone(&zone)?;
    let mut config = cairn_store::StoreConfig::new(a.chunk_size)?;
    config.packs = a.packs.config();
    Store::init_with(&a.store, config)?;
    let mut store = Store::open(&a.store, OpenMode::Write { wait: false })?;
    store.set_timezone(&zone)?;
    let cfg = store.config();
    if a.json {
        println!(
            "{}",
            json!({ "store": a.store.display().to_string(), "store_id": cfg.store_id, "chunk_size": cfg.chunk_size, "format_version": cfg.format_version, "mode": "0700", "timezone": cfg.timezone, "packs": store.packs_shown() })
        );
    } else {
        println!(
            "created store {} (id {}, chunk size {}, time zone {}), private to its owner (folder \
             0700, files 0600)",
            a.store.display(),
            cfg.store_id,
            human_bytes(u64::from(cfg.chunk_size)),
            cfg.timezone
        );
        if store.bucket().is_some() {
            println!("packs and root files in {}", store.packs_shown());
        }
    }
    Ok(0)
}

/// Which points a command works on (every filter given must match).
#[derive(Debug, Args, Clone, Default)]
pub struct PointFilter {
    /// Only this VM (its name, or its --vm-uuid).
    #[arg(long)]
    pub vm: Option<String>,
    /// Only this disk.
    #[arg(long)]
    pub disk: Option<String>,
    /// Only VMs of this pool.
    #[arg(long)]
    pub pool: Option<String>,
    /// Only points of VMs that ran on this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Only points with this tag (repeatable: every tag given).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

impl PointFilter {
    pub fn filter(&self) -> Filter {
        Filter {
            vm: self.vm.clone(),
            disk: self.disk.clone(),
            pool: self.pool.clone(),
            host: self.host.clone(),
            tags: self.tags.clone(),
        }
    }
}

/// Which points list and report show: a filter, an age, a count per disk.
#[derive(Debug, Args, Clone, Default)]
pub struct Selection {
    #[command(flatten)]
    pub filter: PointFilter,
    /// Only points made in this last stretch of time (90m, 12h, 7d, 2w).
    #[arg(long, value_parser = crate::retention_cmd::parse_duration)]
    pub since: Option<chrono::Duration>,
    /// Only the N newest points of each disk.
    #[arg(long)]
    pub last: Option<usize>,
}

impl Selection {
    /// The points chosen among `points` (sorted oldest first), in their order; fails when the
    /// filter matches nothing.
    pub fn choose(&self, points: &[RecoveryPoint]) -> Result<Vec<RecoveryPoint>> {
        let filter = self.filter.filter();
        filter.check(points).map_err(anyhow::Error::msg)?;
        let since = self.since.map(|d| Utc::now() - d);
        let mut chosen: Vec<RecoveryPoint> = points
            .iter()
            .filter(|p| filter.matches(p))
            .filter(|p| since.is_none_or(|s| p.time >= s))
            .cloned()
            .collect();
        if let Some(n) = self.last {
            // The newest n of each disk.
            let mut seen: HashMap<(VmKey, String), usize> = HashMap::new();
            let mut keep = vec![false; chosen.len()];
            for (i, p) in chosen.iter().enumerate().rev() {
                let c = seen.entry((p.vm_key(), p.disk.clone())).or_default();
                if *c < n {
                    *c += 1;
                    keep[i] = true;
                }
            }
            let mut k = keep.into_iter();
            chosen.retain(|_| k.next().unwrap_or(false));
        }
        Ok(chosen)
    }
}

/// Fails when a filter matches no point of the store, naming what exists (a typo must not read
/// as "nothing to do" or "all well").
pub fn check_filter(store: &Store, filter: &Filter) -> Result<()> {
    if filter.is_empty() {
        return Ok(());
    }
    filter.check(&store.points()?).map_err(anyhow::Error::msg)
}

pub fn open_write(store: &Path, wait: bool) -> Result<Store> {
    local_only(store)?;
    let s = match Store::open(store, OpenMode::Write { wait: false }) {
        Err(cairn_store::Error::Locked { holder, .. }) if wait => {
            eprintln!("waiting for the write lock, held by {holder}");
            Store::open(store, OpenMode::Write { wait: true })?
        }
        other => other?,
    };
    if let Some(stale) = s.stale_lock() {
        eprintln!("note: took over the lock of a writer that did not finish ({stale})");
    }
    warn_about(&s);
    Ok(s)
}

/// Opens a store read-only (beside any writer), saying what it found amiss.
pub fn open_read(store: &Path) -> Result<Store> {
    local_only(store)?;
    let s = Store::open(store, OpenMode::Read)?;
    warn_about(&s);
    Ok(s)
}

/// What the store's open found amiss between its root files and its index, on stderr.
fn warn_about(s: &Store) {
    for w in s.warnings() {
        eprintln!("warning: {w}");
    }
}

fn point_json(p: &RecoveryPoint, tz: Tz) -> serde_json::Value {
    json!({
        "id": p.id, "vm": p.vm, "disk": p.disk, "time": show_time(&p.time, tz), "size": p.size,
        "source": p.source, "parent": p.parent, "logical_bytes": p.stats.logical_bytes,
        "bytes_read": p.stats.bytes_read, "chunks": p.stats.chunks, "new_chunks": p.stats.new_chunks,
        "new_stored_bytes": p.stats.new_stored_bytes, "zero_chunks": p.stats.zero_chunks,
        "parent_chunks": p.stats.parent_chunks, "known_chunks": p.stats.known_chunks,
        "seconds": p.stats.seconds, "key": p.stats.key, "healed_chunks": p.stats.healed_chunks,
        "rewritten_chunks": p.stats.rewritten_chunks,
        "protected": p.protected, "run": p.run, "vm_uuid": p.labels.vm_uuid,
        "pool": p.labels.pool, "host": p.labels.host, "tags": p.labels.tags, "note": p.labels.note,
    })
}

pub fn backup(a: &BackupArgs) -> Result<i32> {
    let mut jobs = Vec::new();
    for d in &a.disks {
        let (disk, src) = d
            .split_once('=')
            .with_context(|| format!("{d:?}: expected DISK=SOURCE, e.g. xvda=disk.vhd"))?;
        if let Some(rest) = disk.strip_prefix("[NOBAK]") {
            eprintln!(
                "skipping disk {:?} of VM {}: its name starts with [NOBAK]",
                rest.trim_start(),
                a.vm
            );
            continue;
        }
        cairn_store::point::check_name("disk", disk).map_err(anyhow::Error::msg)?;
        jobs.push((disk.to_owned(), PathBuf::from(src)));
    }
    cairn_store::point::check_name("VM", &a.vm).map_err(anyhow::Error::msg)?;
    if jobs.iter().filter(|(_, s)| s == Path::new("-")).count() > 1 {
        bail!("only one disk can be read from stdin");
    }
    check_sources(&jobs)?;
    let labels = labels(a)?;
    let remote = a.store.remote()?;
    let local = match &remote {
        Some(_) => None,
        None => Some(
            open_write(&a.store.store, a.wait)
                .with_context(|| format!("backup of {}: nothing was stored", a.vm))?,
        ),
    };
    let store: &dyn cairn_store::StoreRead = match (&local, &remote) {
        (Some(s), _) => s,
        (None, Some(r)) => &**r,
        (None, None) => bail!("no store"),
    };
    let parent = a.parent.as_deref().map(|p| store.resolve(p)).transpose()?;
    let tz = store.config().tz();
    let time = match &a.time {
        Some(t) => parse_time(t, tz)?,
        None => Utc::now(),
    };
    // A few minutes of clock skew between hosts are fine; a time further ahead is a mistake
    // (a typo in the year) that would make the point @latest for a long time.
    if time > Utc::now() + chrono::Duration::minutes(5) && !a.force {
        bail!(
            "--time {} is in the future; pass --force to back up under it anyway",
            show_time(&time, tz)
        );
    }
    // A policy set for the VM's UUID wins over one set for its name. (A server's policies
    // are its own: a backup token does not read them.)
    let policies = match &local {
        Some(s) => s.policies()?,
        None => Default::default(),
    };
    let mut interval = a
        .vm_uuid
        .as_ref()
        .and_then(|u| policies.get(u))
        .or_else(|| policies.get(&a.vm))
        .map_or(0, |p| p.key_interval);
    let existing = store.points()?;
    let run_id = (jobs.len() > 1).then(|| uuid::Uuid::new_v4().simple().to_string());
    let vm_key = VmKey::of(&a.vm, &labels);
    let run_started = Utc::now();
    let mut run = match (&local, &remote) {
        (Some(s), _) => cairn_ingest::Run::new(s)?,
        (None, Some(r)) => {
            let disks: Vec<String> = jobs.iter().map(|(d, _)| d.clone()).collect();
            let wait = a.wait.then_some(std::time::Duration::from_secs(24 * 3600));
            let upload = r
                .upload(&a.vm, a.vm_uuid.as_deref(), &disks, wait)
                .with_context(|| format!("backup of {}: nothing was stored", a.vm))?;
            interval = upload.key_interval();
            cairn_ingest::Run::over(&**r, Box::new(upload))
        }
        (None, None) => bail!("no store"),
    };
    let spool = match &local {
        Some(s) => s.root().join("tmp"),
        None => std::env::temp_dir(),
    };
    let mut due_disks = Vec::new();
    let mut sent: std::collections::HashMap<String, u64> = Default::default();
    for (disk, src) in &jobs {
        let due = key_due(&existing, &vm_key, disk, interval);
        let req = Request {
            vm: a.vm.clone(),
            disk: disk.clone(),
            time,
            source: src.clone(),
            format: match a.format {
                SourceFormat::Auto => Format::Auto,
                SourceFormat::Raw => Format::Raw,
                SourceFormat::Vhd => Format::Vhd,
            },
            parent: parent.clone(),
            spool_dir: spool.clone(),
            key: if a.key {
                KeyMode::Forced
            } else if due {
                KeyMode::Due
            } else {
                KeyMode::No
            },
            run: run_id.clone(),
            labels: labels.clone(),
            expected_size: a.size,
            allow_resize: a.allow_resize,
            force: a.force,
            rewrite_percent: a.rewrite,
            nbd_connections: a.nbd_connections as usize,
            changed_blocks: match (&a.dirty_bitmap, &a.changed_blocks) {
                (Some(name), _) => Some(cairn_ingest::ChangedBlocks::DirtyBitmap(name.clone())),
                (None, Some(file)) => Some(cairn_ingest::ChangedBlocks::File(file.clone())),
                (None, None) => None,
            },
            http: a.http.options(),
        };
        // A raw stream's size is known only at its end: bytes and rate until then.
        let bar = progress::stream(disk);
        let added = run.add(&req, None, &|done, total| {
            if let Some(t) = total {
                progress::set_total(&bar, t);
            }
            bar.set_position(done);
        });
        bar.finish_and_clear();
        let staged = added.map_err(|e| {
            let whole = if jobs.len() > 1 {
                " (the disks of a run are stored together or not at all)"
            } else {
                ""
            };
            anyhow::Error::new(e).context(format!(
                "backup of {}/{disk} from {} failed; nothing was stored{whole}",
                a.vm,
                cairn_ingest::redacted(&src.to_string_lossy())
            ))
        })?;
        if due && !staged.stats.key {
            due_disks.push(disk.clone());
        }
        // Through a server: what crossed the wire for this disk (the point says what the
        // store appended).
        if remote.is_some() {
            sent.insert(disk.clone(), staged.stats.new_stored_bytes);
        }
    }
    let points = run.commit().map_err(|e| {
        let what = if matches!(
            &e,
            cairn_ingest::Error::Store(cairn_store::Error::Unpublished { .. })
        ) {
            format!("backup of {}: committed, not yet listed", a.vm)
        } else {
            format!(
                "publishing the backup of {} failed; nothing was stored",
                a.vm
            )
        };
        anyhow::Error::new(e).context(what)
    })?;
    for disk in due_disks {
        eprintln!(
            "note: a key backup of {}/{disk} was due (every {interval}), but the source is a \
             differencing VHD whose parents cannot be opened; this backup read only what changed",
            a.vm
        );
    }
    if a.json {
        let all: Vec<serde_json::Value> = points
            .iter()
            .map(|p| {
                let mut j = point_json(p, tz);
                if let Some(b) = sent.get(&p.disk) {
                    j["bytes_sent"] = json!(b);
                }
                j
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    for p in &points {
        let s = &p.stats;
        println!(
            "{} {}/{} {}: {} logical, {} read, {}, {} stored{}, {:.1}s ({}/s){}{}",
            p.short_id(),
            p.vm,
            p.disk,
            show_time(&p.time, tz),
            human_bytes(s.logical_bytes),
            human_bytes(s.bytes_read),
            crate::words::count(s.new_chunks, "new chunk"),
            human_bytes(s.new_stored_bytes),
            sent.get(&p.disk)
                .map(|b| format!(" ({} sent)", human_bytes(*b)))
                .unwrap_or_default(),
            s.seconds,
            human_bytes((s.logical_bytes as f64 / s.seconds.max(1e-6)) as u64),
            if s.key { ", key backup" } else { "" },
            if s.healed_chunks > 0 {
                format!(", healed {}", crate::words::count(s.healed_chunks, "chunk"))
            } else {
                String::new()
            }
        );
        if s.rewritten_chunks > 0 {
            println!(
                "  {} stored again from packs this disk barely uses (--rewrite; `cairn gc` \
                 reclaims the old copies)",
                crate::words::count(s.rewritten_chunks, "chunk")
            );
        }
        if p.committed < run_started {
            println!("  (the same point was stored by an earlier run; it is not stored twice)");
        }
    }
    Ok(0)
}

/// The labels a backup gives its points, checked.
fn labels(a: &BackupArgs) -> Result<Labels> {
    let check = |what: &str, v: &Option<String>| -> Result<()> {
        if let Some(v) = v {
            check_name(what, v).map_err(anyhow::Error::msg)?;
        }
        Ok(())
    };
    check("--vm-uuid", &a.vm_uuid)?;
    check("--pool", &a.pool)?;
    check("--host", &a.host)?;
    for t in &a.tags {
        check_name("--tag", t).map_err(anyhow::Error::msg)?;
    }
    if let Some(n) = &a.note
        && (n.chars().count() > 4096 || n.chars().any(|c| c.is_control() && c != '\n'))
    {
        bail!("--note must be at most 4096 characters of text");
    }
    let mut tags = Vec::new();
    for t in &a.tags {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    Ok(Labels {
        vm_uuid: a.vm_uuid.clone(),
        host: a.host.clone(),
        pool: a.pool.clone(),
        tags,
        note: a.note.clone(),
    })
}

/// Checks every source of a run before any is read: each disk named once, each file there and
/// readable. All problems are reported together.
fn check_sources(jobs: &[(String, PathBuf)]) -> Result<()> {
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for (disk, src) in jobs {
        if !seen.insert(disk.as_str()) {
            problems.push(format!("disk {disk:?} is given twice"));
        }
        if src == Path::new("-") {
            continue;
        }
        if src.to_str().is_some_and(cairn_ingest::is_http_url) {
            continue;
        }
        if let Some(u) = src.to_str().filter(|s| cairn_nbd::is_nbd_uri(s)) {
            if let Err(e) = cairn_nbd::Uri::parse(u) {
                problems.push(format!("{disk}={u}: {e}"));
            }
            continue;
        }
        match std::fs::metadata(src) {
            Err(e) => problems.push(format!("{disk}={}: {e}", src.display())),
            Ok(m) if m.is_dir() => {
                problems.push(format!(
                    "{disk}={}: a folder, not a disk image",
                    src.display()
                ));
            }
            // A named pipe is not opened here: opening it would take the writer's only stream.
            Ok(m) if m.file_type().is_fifo() => {}
            Ok(_) => {
                if let Err(e) = std::fs::File::open(src) {
                    problems.push(format!("{disk}={}: {e}", src.display()));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "nothing was backed up; fix the sources first:\n  {}",
            problems.join("\n  ")
        )
    }
}

pub fn restore(a: &RestoreArgs) -> Result<i32> {
    let reader = a.store.reader()?;
    let store = reader.get();
    let point = store.resolve(&a.point)?;
    let base = a.base.as_deref().map(|b| store.resolve(b)).transpose()?;
    let from = a.from.as_deref().map(|b| store.resolve(b)).transpose()?;
    let to_stdout = a.out == Path::new("-");
    if to_stdout && std::io::stdout().is_terminal() {
        bail!(
            "refusing to write a disk image to a terminal: redirect stdout (`> disk.raw`, `| ...`) \
             or give a file name"
        );
    }
    let format = match a.format {
        RestoreFormat::Raw => OutputFormat::Raw,
        RestoreFormat::Vhd => OutputFormat::Vhd,
        RestoreFormat::VhdChain => OutputFormat::VhdChain,
    };
    if matches!(format, OutputFormat::VhdChain) && a.out == Path::new("-") {
        bail!("--format vhd-chain writes a folder, not stdout");
    }
    let bar = progress::bytes(point.size, "restore");
    let started = std::time::Instant::now();
    let opts = cairn_restore::Options {
        format,
        base: base.as_ref(),
        chain_from: from.as_ref(),
        ignore_errors: a.ignore_errors,
        force: a.force,
    };
    let r = cairn_restore::restore(store, &point, &a.out, &opts, &|done| bar.set_position(done))
        .with_context(|| {
            format!(
                "restore of point {} to {} failed",
                point.short_id(),
                a.out.display()
            )
        })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        let summary = serde_json::to_string_pretty(
            &json!({ "point": point.id, "files": r.files, "bytes": r.bytes, "seconds": secs,
                "damaged": r.damaged.iter().map(damaged_json).collect::<Vec<_>>() }),
        )?;
        // Data and JSON never share a stream.
        if to_stdout {
            eprintln!("{summary}");
        } else {
            println!("{summary}");
        }
    } else if !to_stdout {
        for f in &r.files {
            eprintln!("wrote {}", f.display());
        }
        eprintln!(
            "restored {} ({}) in {:.1}s",
            point.short_id(),
            human_bytes(point.size),
            secs
        );
    }
    if !r.damaged.is_empty() {
        for d in &r.damaged {
            eprintln!("{}", damaged_line(d, " written as zeros"));
        }
        eprintln!(
            "restored with {} damaged ranges ({} bytes of zeros)",
            r.damaged.len(),
            r.damaged.iter().map(|d| d.len).sum::<u64>()
        );
        return Ok(3);
    }
    Ok(0)
}

pub fn list(a: &ListArgs) -> Result<i32> {
    let reader = a.store.reader()?;
    let store = reader.get();
    let tz = store.config().tz();
    let points = a.select.choose(&store.points()?)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &points.iter().map(|p| point_json(p, tz)).collect::<Vec<_>>()
            )?
        );
        return Ok(0);
    }
    // Columns as wide as their longest value: long VM names do not break the table.
    let vw = points
        .iter()
        .map(|p| p.vm.chars().count())
        .max()
        .unwrap_or(0)
        .max(2);
    let dw = points
        .iter()
        .map(|p| p.disk.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let sw = points
        .iter()
        .map(|p| p.source.kind.len())
        .max()
        .unwrap_or(0)
        .max(6);
    // Identity, tags and notes get columns when some point has them.
    let extra = |f: fn(&RecoveryPoint) -> String| -> Option<(usize, Vec<String>)> {
        let v: Vec<String> = points.iter().map(f).collect();
        let w = v.iter().map(|x| x.chars().count()).max().unwrap_or(0);
        (w > 0).then_some((w, v))
    };
    let columns = [
        ("POOL", extra(|p| p.labels.pool.clone().unwrap_or_default())),
        ("HOST", extra(|p| p.labels.host.clone().unwrap_or_default())),
        (
            "VM UUID",
            extra(|p| p.labels.vm_uuid.clone().unwrap_or_default()),
        ),
        ("TAGS", extra(|p| p.labels.tags.join(","))),
        (
            "NOTE",
            extra(|p| p.labels.note.clone().unwrap_or_default().replace('\n', " ")),
        ),
    ];
    let columns: Vec<(&str, usize, Vec<String>)> = columns
        .into_iter()
        .filter_map(|(h, c)| c.map(|(w, v)| (h, w.max(h.len()), v)))
        .collect();
    let extra_cells = |i: Option<usize>| -> String {
        columns
            .iter()
            .map(|(h, w, v)| {
                let cell = i.and_then(|i| v.get(i)).map_or(*h, String::as_str);
                format!("  {cell:<w$}")
            })
            .collect()
    };
    let tw = points
        .iter()
        .map(|p| show_time(&p.time, tz).len())
        .max()
        .unwrap_or(0)
        .max(4);
    let header = format!(
        "{:<12}  {:<vw$}  {:<dw$}  {:<tw$}  {:>10}  {:>10}  {:<sw$}  {:<5}  {:<8}{}",
        "ID",
        "VM",
        "DISK",
        "TIME",
        "SIZE",
        "NEW",
        "SOURCE",
        "FLAGS",
        "RUN",
        extra_cells(None)
    );
    println!("{}", header.trim_end());
    // Points sort by time, so the disks of one backup run (one time) are listed together.
    for (i, p) in points.iter().enumerate() {
        let flags = format!(
            "{}{}",
            if p.stats.key { "K" } else { "-" },
            if p.protected { "P" } else { "-" }
        );
        let line = format!(
            "{:<12}  {:<vw$}  {:<dw$}  {:<tw$}  {:>10}  {:>10}  {:<sw$}  {:<5}  {:<8}{}",
            p.short_id(),
            p.vm,
            p.disk,
            show_time(&p.time, tz),
            human_bytes(p.size),
            human_bytes(p.stats.new_stored_bytes),
            p.source.kind,
            flags,
            p.run.as_deref().map_or("", |r| &r[..8.min(r.len())]),
            extra_cells(Some(i))
        );
        println!("{}", line.trim_end());
    }
    println!("flags: K key backup (read the whole disk), P protected");
    if points.is_empty() {
        println!("(no recovery points)");
    }
    Ok(0)
}

pub fn repair(a: &RepairArgs) -> Result<i32> {
    let root = &a.store.store;
    if let Some(packs) = a.packs.config() {
        if root.join(cairn_store::config::CONFIG_FILE).exists() {
            let have = cairn_store::StoreConfig::load(root)?.packs;
            if have.as_ref().map(|p| &p.url) != Some(&packs.url) {
                bail!(
                    "{}: this store's packs are {}, not {}",
                    root.display(),
                    have.map_or_else(|| "in its folder".to_owned(), |p| p.url),
                    packs.url
                );
            }
        } else {
            let cfg = Store::attach(root, &packs)?;
            if !a.json {
                println!(
                    "made {} for store {} from {}",
                    root.display(),
                    cfg.store_id,
                    packs.url
                );
            }
        }
    }
    let r = Store::rebuild_index(root, a.wait)?;
    if a.json {
        println!(
            "{}",
            json!({ "packs": r.packs, "chunks": r.chunks, "points": r.points, "points_left_out": r.points_left_out, "duplicates": r.duplicates, "problems": r.problems })
        );
    } else {
        println!(
            "rebuilt the index: {} packs, {} chunks, {} recovery points",
            r.packs, r.chunks, r.points
        );
        if r.duplicates > 0 {
            println!(
                "{} chunk(s) found twice: the copy that reads back as its id is indexed, the other \
                 is garbage for `cairn gc`",
                r.duplicates
            );
        }
        for p in &r.problems {
            println!("note: {p}");
        }
        if r.points_left_out > 0 {
            println!(
                "{} left out of the index: their root files cannot be read (named above)",
                count(r.points_left_out, "point")
            );
        }
    }
    Ok(0)
}

/// `a` with the fields of `b` added.
pub fn report(a: &ReportArgs) -> Result<i32> {
    let doc = match a.store.remote()? {
        Some(r) => {
            use cairn_store::StoreRead;
            let shown: HashSet<String> = a
                .select
                .choose(&r.points()?)?
                .into_iter()
                .map(|p| p.id)
                .collect();
            cairn_gc::report::keep_rows(r.report()?, &shown)
        }
        None => {
            let store = open_read(&a.store.store)?;
            let tz = store.config().tz();
            let points = store.points()?;
            // Costs are counted over every point (what is shared, what is unique); the
            // selection chooses the rows shown.
            let shown: HashSet<String> = a
                .select
                .choose(&points)?
                .into_iter()
                .map(|p| p.id)
                .collect();
            let costs = cairn_gc::cost::costs(&store, &points)?;
            let extras = cairn_gc::report::Extras::of(store.root());
            // Space no point references: garbage frames (what `cairn gc` can free, with every
            // pack rewritten) and unindexed packs, from gc's own dry run. `None` while a gc
            // runs. The store is closed first: a read-only index opened beside a live writer
            // can miss files the writer's compaction just replaced.
            drop(store);
            let reclaimable =
                cairn_gc::collect(&a.store.store, &cairn_gc::GcOptions::reclaimable(), &|_| {})
                    .ok();
            cairn_gc::report::build(
                &costs,
                &|p| shown.contains(&p.id),
                reclaimable.as_ref(),
                tz,
                &extras,
            )
        }
    };
    let damaged = doc["damaged_points"]
        .as_array()
        .is_some_and(|d| !d.is_empty());
    if let Some(file) = &a.html {
        // Every point of a VM asked for by name; else its newest ones.
        let options = cairn_gc::report::page::PageOptions {
            points_per_vm: if a.select.filter.vm.is_none() {
                cairn_gc::report::page::PageOptions::default().points_per_vm
            } else {
                usize::MAX
            },
            vm_pages: false,
        };
        let page = cairn_gc::report::page::render(&doc, &options);
        cairn_store::write_atomic_mode(file, page.as_bytes(), 0o644)
            .with_context(|| format!("writing the page {}", file.display()))?;
        eprintln!(
            "wrote {} ({})",
            file.display(),
            human_bytes(page.len() as u64)
        );
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if a.html.is_none() {
        render_report(&doc);
    }
    // 3: a partial result.
    Ok(if damaged { 3 } else { 0 })
}

/// `cairn report` for people, from the report document (docs/report-json.md): one row for the
/// store, each VM, its disks and their points.
fn render_report(doc: &serde_json::Value) {
    let list = |k: &str| doc[k].as_array().cloned().unwrap_or_default();
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    // A VM is its UUID (and pool) when it has one, else its name (and pool).
    let key = cairn_gc::report::row_vm_key;
    let vm_name = |v: &serde_json::Value| {
        let mut name = text(v, "vm");
        if let Some(pool) = v["pool"].as_str() {
            name = format!("{name} pool={pool}");
        }
        if let Some(u) = v["vm_uuid"].as_str() {
            name = format!("{name} uuid={u}");
        }
        name
    };
    let point_name = |p: &serde_json::Value| {
        let id = text(p, "id");
        format!("    {} {}", &id[..12.min(id.len())], text(p, "time"))
    };
    let (vms, disks, points) = (list("vms"), list("disks"), list("points"));
    let mut names: Vec<String> = vec!["store".into()];
    names.extend(vms.iter().map(|v| format!("vm {}", vm_name(v))));
    names.extend(disks.iter().map(|d| format!("  disk {}", text(d, "disk"))));
    names.extend(points.iter().map(point_name));
    let nw = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    let row = |name: &str, c: &serde_json::Value| {
        println!(
            "{:<nw$} {:>4} {:>11} {:>11} {:>11} {:>11} {:>6.2}x {:>6.2}x {:>11} {:>11}",
            name,
            n(c, "points"),
            human_bytes(n(c, "logical_bytes")),
            human_bytes(n(c, "allocated_bytes")),
            human_bytes(n(c, "stored_bytes")),
            human_bytes(n(c, "unique_stored_bytes")),
            c["dedup_ratio"].as_f64().unwrap_or(0.0),
            c["compression_ratio"].as_f64().unwrap_or(0.0),
            human_bytes(n(c, "full_backups_bytes")),
            human_bytes(n(c, "xo_vhd_deltas_bytes"))
        );
    };
    println!(
        "{:<nw$} {:>4} {:>11} {:>11} {:>11} {:>11} {:>7} {:>7} {:>11} {:>11}",
        "",
        "PTS",
        "LOGICAL",
        "ALLOCATED",
        "STORED",
        "UNIQUE",
        "DEDUP",
        "COMPR",
        "AS FULLS",
        "AS XO VHDS"
    );
    row("store", &doc["store"]);
    for v in &vms {
        row(&format!("vm {}", vm_name(v)), v);
        for d in disks.iter().filter(|d| key(d) == key(v)) {
            row(&format!("  disk {}", text(d, "disk")), d);
            // A point belongs to its disk by the VM's identity (as `VmKey` says it).
            for p in points
                .iter()
                .filter(|p| text(p, "disk") == text(d, "disk") && key(p) == key(v))
            {
                row(&point_name(p), p);
            }
        }
    }
    match doc["garbage_bytes"].as_u64() {
        Some(g) => println!(
            "unreferenced: {} of garbage in {}, {} in {}; `cairn gc` reclaims them",
            human_bytes(g),
            count(n(doc, "garbage_frames"), "frame"),
            human_bytes(n(doc, "orphan_bytes")),
            count(n(doc, "orphan_packs"), "orphan pack"),
        ),
        None => println!("unreferenced: unknown while a garbage collection runs"),
    }
    for p in list("damaged_points") {
        let id = text(&p, "id");
        println!(
            "damaged: point {} {}/{} {}: {}; its figures leave out what cannot be read \
             (`cairn verify` says what is lost)",
            &id[..12.min(id.len())],
            text(&p, "vm"),
            text(&p, "disk"),
            text(&p, "time"),
            text(&p, "what")
        );
    }
}

/// A damaged range as the JSON of restore and verify shows it.
pub fn damaged_json(d: &cairn_restore::Damaged) -> serde_json::Value {
    json!({"point": d.point, "offset": d.offset, "len": d.len, "what": d.what})
}

/// A damaged range as a line of restore and verify (`how`: what was done with it).
pub fn damaged_line(d: &cairn_restore::Damaged, how: &str) -> String {
    format!(
        "damaged: point {} bytes {}..{}{how}: {}",
        &d.point[..12.min(d.point.len())],
        d.offset,
        d.offset + d.len,
        d.what
    )
}
