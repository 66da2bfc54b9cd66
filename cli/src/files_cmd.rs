//! `cairn ls` and `cairn cat`: files inside a point, read in place (the `cairn-files` crate).

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};
use cairn_files::{DiskFiles, Entry, EntryKind};
use cairn_restore::{PointDisk, SharedStore};
use cairn_store::{RecoveryPoint, StoreRead};
use clap::Args;
use serde_json::json;

use crate::store_cmd::StoreArg;
use crate::table::{Align, Table};
use crate::words::human_bytes;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cairn ls web01/xvda@latest                    # the partition table, each file system named\n  \
    cairn ls -l web01/xvda@latest:p2/etc          # a folder of partition 2\n  \
    cairn ls --json 'web01/xvda@2026-11-22T02:00:00Z:rootfs/var/log'   # by GPT name\n\n\
    POINT is any point name `restore` takes; after the last ':' comes a volume (p1, p2..., a\n\
    GPT name, `disk` for a disk without a partition table, an LVM volume as VG-LV or by its\n\
    name) and a path in it. Only the chunks the file system reads are read from the store.\n\
    ext2/3/4, FAT12/16/32 and NTFS are read.")]
pub struct LsArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// POINT[:PARTITION[/PATH]].
    pub what: String,
    /// Long listing: mode, owner, group, size, modification time, link target.
    #[arg(short, long)]
    pub long: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cairn cat web01/xvda@latest:p2/etc/hostname\n  \
    cairn cat web01/xvda@latest:rootfs/var/log/syslog | grep error")]
pub struct CatArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// POINT:PARTITION/PATH of a file.
    pub what: String,
}

/// The point a `POINT[:PARTITION/PATH]` names, and the rest: the whole text when it names a
/// point, else split at the last ':' whose left side does (a point's time holds ':' too).
fn point_and_path(store: &dyn StoreRead, what: &str) -> Result<(RecoveryPoint, Option<String>)> {
    let points = store.points()?;
    let tz = store.config().tz();
    let resolve = |spec: &str| cairn_store::select::resolve(&points, spec, tz);
    let whole = match resolve(what) {
        Ok(p) => return Ok((p, None)),
        Err(e) => e,
    };
    for (i, _) in what.rmatch_indices(':') {
        if let Ok(p) = resolve(&what[..i]) {
            return Ok((p, Some(what[i + 1..].to_owned())));
        }
    }
    Err(anyhow::anyhow!(
        "{what}: no point is named by it, nor by what comes before any ':' in it ({whole})"
    ))
}

/// A point opened for its files: its volumes, its disk (which counts what it read), the point,
/// and the path asked for after its name.
pub(crate) struct Opened {
    pub files: DiskFiles,
    pub disk: Arc<PointDisk>,
    pub point: RecoveryPoint,
    pub path: Option<String>,
}

/// A point's files, in a store folder or through a server, with the store's key.
pub(crate) fn open(a: &StoreArg, what: &str) -> Result<Opened> {
    let store: SharedStore = match a.reader()? {
        crate::store_cmd::Reader::Local(s) => {
            s.keys()?;
            Arc::new(*s)
        }
        crate::store_cmd::Reader::Remote(r) => {
            r.keys()?;
            r
        }
    };
    let (point, path) = point_and_path(&*store, what)?;
    let disk = Arc::new(PointDisk::new(Arc::clone(&store), point.clone())?);
    let files = DiskFiles::open(
        Arc::clone(&disk) as Arc<dyn cairn_files::DiskRead>,
        format!("point {}", point.short_id()),
    )
    .with_context(|| format!("reading the partitions of point {}", point.short_id()))?;
    Ok(Opened {
        files,
        disk,
        point,
        path,
    })
}

pub fn ls(a: &LsArgs) -> Result<i32> {
    let Opened {
        files, point, path, ..
    } = open(&a.store, &a.what)?;
    let Some(path) = path.filter(|p| !p.is_empty()) else {
        return show_partitions(&files, &point, a.json);
    };
    let (part, inner) = files.resolve(&path)?;
    let fs = files.open_fs(part)?;
    let entry = fs.entry(&inner)?;
    let entries = if entry.kind == EntryKind::Dir {
        fs.list(&inner)?
    } else {
        vec![entry]
    };
    if a.json {
        crate::print_json(
            &entries
                .iter()
                .map(cairn_files::shown::entry_json)
                .collect::<Vec<_>>(),
        )?;
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    if !a.long {
        for e in &entries {
            writeln!(out, "{}", e.name)?;
        }
        return Ok(0);
    }
    let mut table = Table::new(&[
        ("MODE", Align::Left),
        ("UID", Align::Right),
        ("GID", Align::Right),
        ("SIZE", Align::Right),
        ("MODIFIED", Align::Left),
        ("NAME", Align::Left),
    ]);
    for e in &entries {
        let name = match &e.link {
            Some(t) => format!("{} -> {t}", e.name),
            None => e.name.clone(),
        };
        table.row([
            e.mode_string(),
            e.uid.to_string(),
            e.gid.to_string(),
            e.size.to_string(),
            mtime(e.mtime),
            name,
        ]);
    }
    drop(out);
    table.print();
    Ok(0)
}

fn show_partitions(files: &DiskFiles, point: &RecoveryPoint, json: bool) -> Result<i32> {
    if json {
        let mut table = cairn_files::shown::partitions_json(files)?;
        table["point"] = json!(point.id);
        crate::print_json(&table)?;
        return Ok(0);
    }
    let mut rows = Vec::new();
    for p in files.partitions() {
        rows.push((p, files.detect(p)?));
    }
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("LABEL", Align::Left),
        ("START", Align::Right),
        ("SIZE", Align::Right),
        ("FILESYSTEM", Align::Left),
        ("TYPE", Align::Left),
    ]);
    for (p, fs) in &rows {
        table.row([
            p.name.clone(),
            p.label.clone().unwrap_or_default(),
            p.start.to_string(),
            human_bytes(p.size),
            format!(
                "{}{}",
                fs.name(),
                if fs.readable() { "" } else { " (not read)" }
            ),
            p.kind.clone(),
        ]);
    }
    println!(
        "point {} ({}/{}): {:?} partition table",
        point.short_id(),
        point.vm,
        point.disk,
        files.scheme()
    );
    table.print();
    Ok(0)
}

pub fn cat(a: &CatArgs) -> Result<i32> {
    let Opened {
        files, point, path, ..
    } = open(&a.store, &a.what)?;
    let Some(path) = path else {
        crate::usage!(
            "{}: name a file inside point {} (POINT:PARTITION/PATH)",
            a.what,
            point.short_id()
        );
    };
    let (part, inner) = files.resolve(&path)?;
    let fs = files.open_fs(part)?;
    let entry = fs.entry(&inner)?;
    if entry.kind == EntryKind::Dir {
        crate::usage!("{path} is a folder: `cairn ls` lists it");
    }
    let mut reader = fs.open_file(&inner)?;
    let mut out = std::io::stdout().lock();
    std::io::copy(&mut reader, &mut out).with_context(|| format!("reading {path}"))?;
    out.flush()?;
    Ok(0)
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cairn extract web01/xvda@latest:p2/etc/nginx ./nginx-conf\n  \
    cairn extract --force 'web01/xvda@2026-11-22:rootfs/home/alice/report.odt' /tmp/report.odt\n\n\
    A file, or a folder with everything under it: modes, modification times, symlinks (as\n\
    symlinks, never followed), owners when run as root, holes of sparse files, hard links (a\n\
    file with several names is written once and linked). DEST must not exist unless --force. No name in the image writes outside\n\
    DEST: `..`, `/` in names and symlinks on the way are refused.")]
pub struct ExtractArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// POINT:PARTITION/PATH of a file or folder.
    pub what: String,
    /// Where it goes (a new file or folder).
    pub dest: std::path::PathBuf,
    /// Write into an existing DEST: replace files there, fill folders.
    #[arg(long)]
    pub force: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn extract(a: &ExtractArgs) -> Result<i32> {
    let Opened {
        files,
        disk,
        point,
        path,
    } = open(&a.store, &a.what)?;
    let Some(path) = path else {
        crate::usage!(
            "{}: name a file or folder inside point {} (POINT:PARTITION/PATH)",
            a.what,
            point.short_id()
        );
    };
    let (part, inner) = files.resolve(&path)?;
    let fs = files.open_fs(part)?;
    let started = std::time::Instant::now();
    let bar = crate::progress::spinner("extract");
    let done = cairn_files::extract(&*fs, &inner, &a.dest, a.force, &|d| {
        bar.set_message(format!("{} files, {}", d.files, human_bytes(d.bytes)));
    })
    .with_context(|| {
        format!(
            "extracting {path} of point {} into {}",
            point.short_id(),
            a.dest.display()
        )
    })?;
    bar.finish_and_clear();
    if a.json {
        crate::print_json(&json!({
            "point": point.id, "path": path, "dest": a.dest.display().to_string(),
            "files": done.files, "dirs": done.dirs, "symlinks": done.symlinks,
            "hard_links": done.hard_links,
            "skipped": done.skipped, "bytes": done.bytes,
            "bytes_read_from_store": disk.bytes_read(),
            "seconds": started.elapsed().as_secs_f64(),
        }))?;
    } else {
        println!(
            "extracted {path} of point {} into {}: {} files ({}), {} folders, {} symlinks{}{} in \
             {:.1}s",
            point.short_id(),
            a.dest.display(),
            done.files,
            human_bytes(done.bytes),
            done.dirs,
            done.symlinks,
            if done.hard_links > 0 {
                format!(", {}", crate::words::count(done.hard_links, "hard link"))
            } else {
                String::new()
            },
            if done.skipped > 0 {
                format!(", {} devices, fifos or sockets left out", done.skipped)
            } else {
                String::new()
            },
            started.elapsed().as_secs_f64()
        );
    }
    Ok(0)
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cairn find web01/xvda@latest '*.conf'                  # every readable partition\n  \
    cairn find web01/xvda@latest:p2/var/log 'syslog*' --newer 2026-11-20\n  \
    cairn find --json --type d web01/xvda@latest:rootfs/home '*'\n\n\
    PATTERN is a glob on names (`*`, `?`), as `find -name`. Paths are printed as `ls`, `cat`\n\
    and `extract` take them after the point.")]
pub struct FindArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// POINT[:PARTITION[/PATH]]: where to look (every partition cairn reads, by default).
    pub what: String,
    /// A glob on names.
    pub pattern: String,
    /// Only entries modified after this time (2026-11-22, 2026-11-22T02:00, RFC 3339; UTC
    /// unless a zone is given).
    #[arg(long, value_name = "TIME")]
    pub newer: Option<String>,
    /// Only files (f), folders (d) or symlinks (l).
    #[arg(long = "type", value_name = "f|d|l", value_parser = ["f", "d", "l"])]
    pub kind: Option<String>,
    /// Print JSON (one array of entries, each with its path).
    #[arg(long)]
    pub json: bool,
}

pub fn find(a: &FindArgs) -> Result<i32> {
    let Opened {
        files, point, path, ..
    } = open(&a.store, &a.what)?;
    let newer = a
        .newer
        .as_deref()
        .map(|t| crate::values::parse_time(t, chrono_tz::Tz::UTC))
        .transpose()?
        .map(|t| t.timestamp());
    let kind = a.kind.as_deref().map(|k| match k {
        "d" => EntryKind::Dir,
        "l" => EntryKind::Symlink,
        _ => EntryKind::File,
    });
    let matches = |e: &Entry| {
        cairn_store::select::glob_match(&a.pattern, &e.name)
            && newer.is_none_or(|t| e.mtime > t)
            && kind.is_none_or(|k| e.kind == k)
    };
    // Where to look: the path given, or the root of every partition cairn reads.
    let starts: Vec<(cairn_files::Partition, String)> = match path.filter(|p| !p.is_empty()) {
        Some(p) => {
            let (part, inner) = files.resolve(&p)?;
            vec![(part.clone(), inner)]
        }
        None => files
            .partitions()
            .iter()
            .filter(|p| files.detect(p).is_ok_and(|k| k.readable()))
            .map(|p| (p.clone(), "/".to_owned()))
            .collect(),
    };
    let mut out = std::io::stdout().lock();
    let mut found = Vec::new();
    for (part, inner) in &starts {
        let fs = files.open_fs(part)?;
        cairn_files::find(&*fs, inner, &matches, &mut |p, e| {
            let shown = format!("{}{p}", part.name);
            if a.json {
                let mut j = cairn_files::shown::entry_json(e);
                j["path"] = json!(shown);
                found.push(j);
            } else {
                writeln!(out, "{shown}").map_err(|e| cairn_files::Error::Fs {
                    path: shown.clone(),
                    why: e.to_string(),
                })?;
            }
            Ok(())
        })
        .with_context(|| {
            format!(
                "searching {}{inner} of point {}",
                part.name,
                point.short_id()
            )
        })?;
    }
    if a.json {
        drop(out);
        crate::print_json(&found)?;
    }
    Ok(0)
}

/// Seconds since 1970 as UTC.
fn mtime(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| secs.to_string())
}
