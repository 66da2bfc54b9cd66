//! `cairn backup`: the disks of one VM backed up in one run, from files, block devices, stdin,
//! NBD exports or HTTP(S) streams, into a store folder or through a server.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cairn_ingest::{Format, KeyMode, Request};
use cairn_store::Labels;
use cairn_store::point::{VmKey, check_name};
use chrono::Utc;
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::list_cmd::point_json;
use crate::progress;
use crate::store_cmd::{HttpArgs, StoreArg, open_write};
use crate::values::{parse_bytes, parse_time, show_time, time_syntax};
use crate::words::human_bytes;

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
    /// The VM was renamed: its --vm-uuid (within its --pool) belongs to another VM name in the
    /// store, and this backup takes it over (without it, such a backup is refused: a host
    /// cannot pass its disk off as another VM's). Through a server, an admin token only.
    #[arg(long)]
    pub adopt: bool,
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
    /// Read the sources, cut, hash and compress them as a backup does, and ask the store
    /// which chunks it lacks, but store nothing: says what the backup would read and store
    /// (and send, through a server). Takes no write lock.
    #[arg(long)]
    pub dry_run: bool,
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

pub fn backup(a: &BackupArgs) -> Result<i32> {
    let jobs = disk_jobs(a)?;
    check_sources(&jobs)?;
    let labels = labels(a)?;
    let remote = a.store.remote()?;
    crate::say_what_an_interrupted_backup_left(remote.is_none().then(|| a.store.store.clone()));
    let local = match &remote {
        Some(_) => None,
        None if a.dry_run => Some(crate::store_cmd::open_read(&a.store.store)?),
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
    let tz = store.config().tz();
    let common = Common {
        parent: a.parent.as_deref().map(|p| store.resolve(p)).transpose()?,
        time: backup_time(a, tz)?,
        spool: match &local {
            Some(s) => s.spool_dir(),
            None => std::env::temp_dir(),
        },
        run: (jobs.len() > 1).then(|| uuid::Uuid::new_v4().simple().to_string()),
        labels,
    };
    // A policy set for the VM's UUID wins over one set for its name. (A server's policies
    // are its own: a backup token does not read them; its session says the interval.)
    let policies = match &local {
        Some(s) => s.policies()?,
        None => Default::default(),
    };
    let mut interval = cairn_store::policy::key_interval(&policies, &a.vm, a.vm_uuid.as_deref());
    let existing = store.points()?;
    let vm_key = VmKey::of(&a.vm, &common.labels);
    let run_started = Utc::now();
    let mut run = match (&local, &remote) {
        (Some(s), _) => local_run(a, s)?,
        (None, Some(r)) => {
            let (run, server_interval) = remote_run(a, r, &jobs)?;
            interval = server_interval;
            run
        }
        (None, None) => bail!("no store"),
    };
    let mut due_disks = Vec::new();
    let mut sent: HashMap<String, u64> = HashMap::new();
    for (disk, src) in &jobs {
        let due = cairn_store::policy::key_due(&existing, &vm_key, disk, interval);
        let req = request(a, disk, src, due, &common);
        let staged = add_disk(&mut run, &req, a, jobs.len())?;
        if due && !staged.stats.key {
            due_disks.push(disk.clone());
        }
        // Through a server: what crossed the wire for this disk (the point says what the
        // store appended).
        if remote.is_some() {
            sent.insert(disk.clone(), staged.stats.new_stored_bytes);
        }
    }
    let points = commit(run, a)?;
    for disk in due_disks {
        crate::say!(
            "note: a key backup of {}/{disk} was due (every {interval}), but the source is a \
             differencing VHD whose parents cannot be opened; this backup read only what changed",
            a.vm
        );
    }
    if a.json {
        print_points_json(a, &points, &sent, tz)?;
    } else {
        print_points(a, &points, &sent, tz, run_started);
    }
    Ok(0)
}

/// The disks to back up, as DISK=SOURCE pairs checked (a `[NOBAK]` disk skipped, said).
fn disk_jobs(a: &BackupArgs) -> Result<Vec<(String, PathBuf)>> {
    let mut jobs = Vec::new();
    for d in &a.disks {
        let (disk, src) = d
            .split_once('=')
            .with_context(|| format!("{d:?}: expected DISK=SOURCE, e.g. xvda=disk.vhd"))?;
        if let Some(rest) = disk.strip_prefix("[NOBAK]") {
            crate::say!(
                "skipping disk {:?} of VM {}: its name starts with [NOBAK]",
                rest.trim_start(),
                a.vm
            );
            continue;
        }
        if let Err(e) = cairn_store::point::check_point_name("disk", disk) {
            crate::usage!("{e}");
        }
        jobs.push((disk.to_owned(), PathBuf::from(src)));
    }
    if let Err(e) = cairn_store::point::check_point_name("VM", &a.vm) {
        crate::usage!("{e}");
    }
    if jobs.iter().filter(|(_, s)| s == Path::new("-")).count() > 1 {
        bail!("only one disk can be read from stdin");
    }
    Ok(jobs)
}

/// The time the points stand for: --time, or now. A few minutes of clock skew between hosts
/// are fine; a time further ahead is a mistake (a typo in the year) that would make the point
/// @latest for a long time: refused without --force.
fn backup_time(a: &BackupArgs, tz: chrono_tz::Tz) -> Result<chrono::DateTime<Utc>> {
    let time = match &a.time {
        Some(t) => parse_time(t, tz)?,
        None => Utc::now(),
    };
    if time > Utc::now() + chrono::Duration::minutes(5) && !a.force {
        bail!(
            "--time {} is in the future; pass --force to back up under it anyway",
            show_time(&time, tz)
        );
    }
    Ok(time)
}

/// A run into a store folder: a session, or (--dry-run) a count against what the store holds.
fn local_run<'s>(a: &BackupArgs, s: &'s cairn_store::Store) -> Result<cairn_ingest::Run<'s>> {
    if a.dry_run {
        let cfg = s.config();
        let dry = cairn_ingest::DryRun::new(
            std::sync::Arc::new(s.held_filter()?),
            s.keys()?.clone(),
            cfg.zstd_level,
            cfg.chunk_size,
        )
        .with_overhead(cairn_store::pack::FRAME_HEADER_SIZE);
        return Ok(cairn_ingest::Run::over(s, Box::new(dry)));
    }
    let mut session = s.session()?;
    if a.adopt {
        session.allow_adopt();
    }
    Ok(cairn_ingest::Run::over(s, Box::new(session)))
}

/// A run through a server: an upload session, with the key interval the server's policy sets.
/// A dry run asks the session what the server lacks; dropped at the end, it publishes nothing.
fn remote_run<'r>(
    a: &BackupArgs,
    r: &'r std::sync::Arc<cairn_remote::Remote>,
    jobs: &[(String, PathBuf)],
) -> Result<(cairn_ingest::Run<'r>, u32)> {
    let disks: Vec<String> = jobs.iter().map(|(d, _)| d.clone()).collect();
    let wait = a.wait.then_some(std::time::Duration::from_secs(24 * 3600));
    let upload = r
        .upload(&a.vm, a.vm_uuid.as_deref(), &disks, wait, a.adopt)
        .with_context(|| format!("backup of {}: nothing was stored", a.vm))?;
    let interval = upload.key_interval();
    if !a.dry_run {
        return Ok((cairn_ingest::Run::over(&**r, Box::new(upload)), interval));
    }
    let cfg = cairn_store::StoreRead::config(&**r);
    let dry = cairn_ingest::DryRun::new(
        cairn_store::StoreWrite::filter(&upload),
        r.keys()?.clone(),
        cfg.zstd_level,
        cfg.chunk_size,
    )
    .keeping(Box::new(upload));
    Ok((cairn_ingest::Run::over(&**r, Box::new(dry)), interval))
}

/// What every disk of a run shares.
struct Common {
    parent: Option<cairn_store::RecoveryPoint>,
    time: chrono::DateTime<Utc>,
    spool: PathBuf,
    run: Option<String>,
    labels: Labels,
}

/// The ingest request for one disk.
fn request(a: &BackupArgs, disk: &str, src: &Path, due: bool, c: &Common) -> Request {
    Request {
        vm: a.vm.clone(),
        disk: disk.to_owned(),
        time: c.time,
        source: src.to_path_buf(),
        format: match a.format {
            SourceFormat::Auto => Format::Auto,
            SourceFormat::Raw => Format::Raw,
            SourceFormat::Vhd => Format::Vhd,
        },
        parent: c.parent.clone(),
        spool_dir: c.spool.clone(),
        key: if a.key {
            KeyMode::Forced
        } else if due {
            KeyMode::Due
        } else {
            KeyMode::No
        },
        run: c.run.clone(),
        labels: c.labels.clone(),
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
    }
}

/// Reads one disk into the run, with a progress bar (a raw stream's size is known only at its
/// end: bytes and rate until then).
fn add_disk(
    run: &mut cairn_ingest::Run<'_>,
    req: &Request,
    a: &BackupArgs,
    disks: usize,
) -> Result<cairn_store::RecoveryPoint> {
    let bar = progress::stream(&req.disk);
    let added = run.add(req, None, &|done, total| {
        if let Some(t) = total {
            progress::set_total(&bar, t);
        }
        bar.set_position(done);
    });
    bar.finish_and_clear();
    added.cloned().map_err(|e| {
        let whole = if disks > 1 {
            " (the disks of a run are stored together or not at all)"
        } else {
            ""
        };
        anyhow::Error::new(e).context(format!(
            "backup of {}/{} from {} failed; nothing was stored{whole}",
            a.vm,
            req.disk,
            cairn_ingest::redacted(&req.source.to_string_lossy())
        ))
    })
}

/// Publishes the run's points, all or none.
fn commit(run: cairn_ingest::Run<'_>, a: &BackupArgs) -> Result<Vec<cairn_store::RecoveryPoint>> {
    run.commit().map_err(|e| {
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
    })
}

/// The points as `list --json` shows them, with the bytes sent through a server.
fn print_points_json(
    a: &BackupArgs,
    points: &[cairn_store::RecoveryPoint],
    sent: &HashMap<String, u64>,
    tz: chrono_tz::Tz,
) -> Result<()> {
    let all: Vec<serde_json::Value> = points
        .iter()
        .map(|p| {
            let mut j = point_json(p, tz);
            if let Some(b) = sent.get(&p.disk) {
                j["bytes_sent"] = json!(b);
            }
            if a.dry_run {
                j["dry_run"] = json!(true);
            }
            j
        })
        .collect();
    crate::print_json(&all)
}

/// One line per point: what was read, stored and sent, how fast.
fn print_points(
    a: &BackupArgs,
    points: &[cairn_store::RecoveryPoint],
    sent: &HashMap<String, u64>,
    tz: chrono_tz::Tz,
    run_started: chrono::DateTime<Utc>,
) {
    for p in points {
        let s = &p.stats;
        println!(
            "{} {}/{} {}: {} logical, {} read, {}, {} stored{}, {:.1}s ({}/s){}{}",
            if a.dry_run { "dry run:" } else { p.short_id() },
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
        if p.committed < run_started && !a.dry_run {
            println!("  (the same point was stored by an earlier run; it is not stored twice)");
        }
    }
    if a.dry_run {
        println!("dry run: nothing was stored");
    }
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
        crate::usage!("--note must be at most 4096 characters of text");
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
        claimed_time: None,
    })
}

/// Whether a file of `len` bytes ends with a VHD footer (a VHD of Virtual PC 2004 ends with
/// 511 bytes of footer, so its size is no whole number of sectors).
fn has_vhd_footer(path: &Path, len: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let mut tail = [0u8; 512];
    let at = len.saturating_sub(512);
    let n = f.read_at(&mut tail, at).unwrap_or(0);
    tail[..n].windows(8).any(|w| w == b"conectix")
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
            Ok(m) => {
                if let Err(e) = std::fs::File::open(src) {
                    problems.push(format!("{disk}={}: {e}", src.display()));
                }
                // A disk is whole sectors: a file that is not (a text file, a cut copy) is
                // backed up as it is, but said.
                if m.is_file() && m.len() % 512 != 0 && !has_vhd_footer(src, m.len()) {
                    eprintln!(
                        "warning: {disk}={} is {} bytes, not a whole number of 512-byte sectors: \
                         is it a disk image? (backed up as it is)",
                        src.display(),
                        m.len()
                    );
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
