//! Reaching a store (its folder, or a server with a token), the selection flags every command
//! shares, and the commands on the store itself: init and repair.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cairn_store::point::VmKey;
use cairn_store::select::Filter;
use cairn_store::{OpenMode, RecoveryPoint, Store};
use chrono::Utc;
use clap::Args;
use serde_json::json;

use crate::values::parse_size;
use crate::words::{count, human_bytes};

/// `--store STORE`, or `CAIRN_STORE`.
#[derive(Debug, Args)]
pub struct StoreArg {
    /// The store: a folder, or https://HOST:PORT of a `cairn serve` (backup, list, report,
    /// restore, verify, diff, ls, cat, find, extract, mount, check-boot, forget, protect,
    /// unprotect, prune, gc and policy work through a server).
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
        Ok(match self.connect_locked(store)? {
            Some(mut remote) => {
                crate::key_cmd::unlock_remote(&mut remote)?;
                Some(std::sync::Arc::new(remote))
            }
            None => None,
        })
    }

    /// As [`ServerArgs::connect`], the store not given its key (the caller gives the one it
    /// needs).
    pub fn connect_locked(&self, store: &Path) -> Result<Option<cairn_remote::Remote>> {
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
        Ok(Some(cairn_remote::Remote::connect(&url, &opts)?))
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
pub fn local_only(store: &Path) -> Result<()> {
    if cairn_remote::is_remote(&store.to_string_lossy()) {
        bail!(
            "{}: this command works on a store folder; through a server, backup, list, report, \
             restore, verify, diff, ls, cat, find, extract, mount, check-boot, forget, protect, \
             unprotect, prune, gc and policy work (run \
             this one on the server's machine: readers such as standby and serve-nbd run beside \
             the server, writers such as repair with it stopped)",
            store.display()
        );
    }
    Ok(())
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
    /// Encrypt the store: chunk ids keyed and data sealed with a new master key (or the one
    /// of --key-file, when that file exists), kept in a key file under a passphrase
    /// (CAIRN_PASSPHRASE, --passphrase-fd, or asked twice). The key file goes to --key-file,
    /// else ~/.config/cairn/keys/STORE_ID.json.
    #[arg(long)]
    pub encrypt: bool,
    #[command(flatten)]
    pub kdf: crate::key_cmd::KdfArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cairn repair --store /backups/store --rebuild-index\n  \
                  cairn repair --store /var/lib/cairn/store --rebuild-index --packs s3://backups/cairn \\\n      \
                  --s3-endpoint https://s3.example   # a new machine: the store made from the bucket\n  \
                  cairn repair --store /backups/store --rebuild-config   # cairn.toml lost or garbled\n\n\
                  A pack the rebuild cannot read whole is quarantined: `cairn gc` keeps it until\n\
                  `cairn gc --drop-quarantined`."
)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["rebuild_index", "rebuild_config"])))]
pub struct RepairArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The store's bucket: when the store's folder is missing or empty (a new machine), it is
    /// made from the bucket's copy of the config, then its index from the bucket alone.
    #[command(flatten)]
    pub packs: PacksArgs,
    /// Rebuild the RocksDB index from the packs and root files (the old one is kept aside).
    #[arg(long)]
    pub rebuild_index: bool,
    /// Write a lost or garbled cairn.toml again: from the copy every writer keeps in the
    /// index, else from the root files and packs (a new store id, --timezone or UTC).
    #[arg(long, conflicts_with = "rebuild_index")]
    pub rebuild_config: bool,
    /// With --rebuild-config, when the index holds no copy: the store's time zone.
    #[arg(long, value_name = "ZONE", requires = "rebuild_config")]
    pub timezone: Option<String>,
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
    let key = if a.encrypt {
        refuse_a_taken_folder(&a.store)?;
        let (key, path, made) = crate::key_cmd::key_for_new_store(&config.store_id, &a.kdf)?;
        config = config.encrypted(&key);
        Some((path, made))
    } else {
        None
    };
    if let Err(e) = Store::init_with(&a.store, config) {
        if let Some((path, true)) = &key {
            // The key of a store that was not made opens nothing.
            let _ = std::fs::remove_file(path);
        }
        return Err(e.into());
    }
    let mut store = Store::open(&a.store, OpenMode::Write { wait: false })?;
    store.set_timezone(&zone)?;
    let cfg = store.config();
    let fingerprint = cfg.encryption.as_ref().map(|e| e.key_fingerprint.clone());
    let key_file = key.as_ref().map(|(p, _)| p.display().to_string());
    if a.json {
        crate::print_json(
            &json!({ "store": a.store.display().to_string(), "store_id": cfg.store_id, "chunk_size": cfg.chunk_size, "format_version": cfg.format_version, "mode": "0700", "timezone": cfg.timezone, "packs": store.packs_shown(), "encrypted": fingerprint.is_some(), "key_fingerprint": fingerprint, "key_file": key_file }),
        )?;
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
        if let (Some(fp), Some((path, made))) = (&fingerprint, &key) {
            println!(
                "encrypted with key {fp}, {} {}: without it and its passphrase no point \
                 restores. Keep a copy away from the store (`cairn key export --paper`) and add a \
                 recovery key (`cairn key new-recovery`, `cairn key add-recovery`)",
                if *made { "written to" } else { "from" },
                path.display()
            );
        }
    }
    Ok(0)
}

/// Refuses a folder that is not empty before a key is made for a store there.
fn refuse_a_taken_folder(root: &Path) -> Result<()> {
    if std::fs::read_dir(root).is_ok_and(|mut d| d.next().is_some()) {
        bail!("{} exists and is not empty", root.display());
    }
    Ok(())
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
    #[arg(long, value_parser = crate::values::parse_duration)]
    pub since: Option<chrono::Duration>,
    /// Only the N newest points of each disk.
    #[arg(long)]
    pub last: Option<usize>,
}

impl Selection {
    /// The points chosen among `points` (sorted oldest first), in their order; fails when the
    /// filter matches nothing.
    pub fn choose(&self, points: &[RecoveryPoint]) -> Result<Vec<RecoveryPoint>> {
        let keep = self.keeps(points)?;
        let chosen = points.iter().filter(|p| keep(p)).cloned().collect();
        Ok(self.newest_of_each_disk(chosen))
    }

    /// The points of `store` this selection chooses: with a filter, only the points it
    /// selects are read whole (see [`cairn_store::Store::points_matching`]); when none is, every
    /// point is read to say what there is.
    ///
    /// # Errors
    /// As [`Selection::choose`], and the store's.
    pub fn choose_in(&self, store: &dyn cairn_store::StoreRead) -> Result<Vec<RecoveryPoint>> {
        let filter = self.filter.filter();
        let mut points = if filter.is_empty() {
            store.points()?
        } else {
            match store.points_matching(&filter)? {
                some if !some.is_empty() => some,
                _ => store.points()?,
            }
        };
        // The chosen points are kept where they are, not copied (100 000 points held once).
        let keep = self.keeps(&points)?;
        points.retain(|p| keep(p));
        points.shrink_to_fit();
        Ok(self.newest_of_each_disk(points))
    }

    /// Calls `f` with each point of `store` this selection chooses, oldest first, read one at a
    /// time (see [`cairn_store::Store::each_point`]): what a list of 100 000 points holds is
    /// one of them. With `--last`, which are the newest of a disk is known only at the end:
    /// the chosen points are read first ([`Selection::choose_in`]).
    ///
    /// # Errors
    /// As [`Selection::choose_in`], and what `f` returns.
    pub fn each_in(
        &self,
        store: &dyn cairn_store::StoreRead,
        f: &mut dyn FnMut(RecoveryPoint) -> Result<()>,
    ) -> Result<()> {
        if self.last.is_some() {
            return self.choose_in(store)?.into_iter().try_for_each(f);
        }
        let filter = self.filter.filter();
        let since = self.since.map(|d| Utc::now() - d);
        let mut any = false;
        let mut failed = None;
        let walked = store.each_point(&filter, &mut |p| {
            any = true;
            if since.is_none_or(|s| p.time >= s)
                && let Err(e) = f(p)
            {
                failed = Some(e);
                return Err(cairn_store::Error::Point("stopped".into()));
            }
            Ok(())
        });
        if let Some(e) = failed {
            return Err(e);
        }
        walked?;
        if !any && !filter.is_empty() {
            // Nothing matched: what there is, named.
            filter.check(&store.points()?).map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }

    /// Whether a point passes the filter and `--since`; fails when the filter matches none of
    /// `points`, naming what there is.
    fn keeps(&self, points: &[RecoveryPoint]) -> Result<impl Fn(&RecoveryPoint) -> bool + use<>> {
        let filter = self.filter.filter();
        filter.check(points).map_err(anyhow::Error::msg)?;
        let since = self.since.map(|d| Utc::now() - d);
        Ok(move |p: &RecoveryPoint| filter.matches(p) && since.is_none_or(|s| p.time >= s))
    }

    /// With `--last N`, the newest N of each disk of `chosen`; else all of them.
    fn newest_of_each_disk(&self, mut chosen: Vec<RecoveryPoint>) -> Vec<RecoveryPoint> {
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
        chosen
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
            crate::say!("waiting for the write lock, held by {holder}");
            Store::open(store, OpenMode::Write { wait: true })?
        }
        other => other?,
    };
    if let Some(stale) = s.stale_lock() {
        crate::say!("note: took over the lock of a writer that did not finish ({stale})");
    }
    let mut s = s;
    crate::key_cmd::unlock_store(&mut s)?;
    warn_about(&s);
    Ok(s)
}

/// Opens a store read-only (beside any writer), saying what it found amiss.
pub fn open_read(store: &Path) -> Result<Store> {
    local_only(store)?;
    let mut s = Store::open(store, OpenMode::Read)?;
    crate::key_cmd::unlock_store(&mut s)?;
    warn_about(&s);
    Ok(s)
}

/// What the store's open found amiss between its root files and its index, on stderr.
fn warn_about(s: &Store) {
    for w in s.warnings() {
        eprintln!("warning: {w}");
    }
}

/// Bytes of the files in `dir` (not below it).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

pub fn repair(a: &RepairArgs) -> Result<i32> {
    let root = &a.store.store;
    if a.rebuild_config {
        return rebuild_config(a);
    }
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
        crate::print_json(
            &json!({ "packs": r.packs, "chunks": r.chunks, "points": r.points, "points_left_out": r.points_left_out, "duplicates": r.duplicates, "recovered": r.recovered, "quarantined": r.quarantined, "problems": r.problems, "old_index": r.old_index }),
        )?;
    } else {
        say_rebuilt(&r);
    }
    Ok(0)
}

/// `repair --rebuild-config`: the store's config written again from its copies.
fn rebuild_config(a: &RepairArgs) -> Result<i32> {
    let root = &a.store.store;
    let (cfg, source) = Store::rebuild_config(root, a.timezone.as_deref())?;
    if a.json {
        crate::print_json(
            &json!({ "store_id": cfg.store_id, "chunk_size": cfg.chunk_size, "timezone": cfg.timezone, "source": source }),
        )?;
    } else {
        println!(
            "wrote {} (store {}, chunk size {}, time zone {}) from {source}",
            root.join(cairn_store::config::CONFIG_FILE).display(),
            cfg.store_id,
            human_bytes(u64::from(cfg.chunk_size)),
            cfg.timezone
        );
    }
    Ok(0)
}

/// What a rebuild of the index did and found, and what to do about it.
fn say_rebuilt(r: &cairn_store::RebuildReport) {
    println!(
        "rebuilt the index: {}, {}, {}",
        crate::words::count(r.packs, "pack"),
        crate::words::count(r.chunks, "chunk"),
        crate::words::count(r.points, "recovery point")
    );
    if r.duplicates > 0 {
        println!(
            "{} found twice: the copy that reads back as its id is indexed, the other is \
             garbage for `cairn gc`",
            crate::words::count(r.duplicates, "chunk")
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
    if let Some(old) = &r.old_index {
        println!(
            "the old index is kept as {} ({}): nothing removes it; remove it once `cairn \
             verify` is clean",
            old.display(),
            human_bytes(dir_bytes(old))
        );
    }
    for q in &r.quarantined {
        println!("quarantined {q}");
    }
    if !r.quarantined.is_empty() {
        println!(
            "quarantined packs hold bytes that could not be read: `cairn gc` keeps them whole \
             (a copy put back, then `cairn repair --rebuild-index`, may bring their chunks \
             back); `cairn verify` names what is missing; `cairn gc --drop-quarantined` lets \
             them go"
        );
    }
}
