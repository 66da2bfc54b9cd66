//! `cairn restore`: a point written as a raw image, one VHD or a VHD chain, to a file, a block
//! device or stdout.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cairn_restore::OutputFormat;
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::progress;
use crate::store_cmd::StoreArg;
use crate::words::human_bytes;

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
    cairn restore 3f2a9c1b07de - | qemu-img convert -f raw -O qcow2 /dev/stdin web01.qcow2\n  \
    cairn restore --changed-only --force web01/xvda@latest /dev/vg0/web01   (only what differs)\n\n\
    A file is written under a temporary name and renamed into place when the restore has\n\
    succeeded; an existing file is kept unless --force. A chain goes into a new or empty folder.\n\
    Block devices and pipes are written in place; binary data is never written to a terminal.\n\
    --changed-only writes in place onto a file or device that exists, only where it differs."
)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The point: an id (a unique prefix, or the UUID of a VHD cairn restored), VM/DISK@latest,
    /// VM/DISK@latest~N (N before the latest), VM/DISK@DATE or VM/DISK@DATETIME (the newest
    /// point at or before it; a date or time without a zone is in the store's time zone, as
    /// `list` shows times). VM is the name, the --vm-uuid, or POOL:NAME when two VMs of one
    /// name live in different pools.
    pub point: String,
    /// Where to write: a file, `-` for stdout, or a folder for vhd-chain.
    pub out: PathBuf,
    /// The output format. By default from the output's name: `.vhd` is a VHD, anything else
    /// raw; a name of another image format (`.qcow2`, `.vmdk`, `.vhdx`, `.vdi`) is refused, as
    /// is a `.vhd` name with `--format raw`.
    #[arg(long, value_enum)]
    pub format: Option<RestoreFormat>,
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
    /// Restore onto an existing disk (a file or block device holding an older or damaged copy):
    /// read it, hash it chunk by chunk, and write only the chunks that differ from the point,
    /// in place (with --force). Says how much it read and wrote; an interrupted run is
    /// finished by running it again.
    #[arg(long, conflicts_with_all = ["base", "from", "ignore_errors"])]
    pub changed_only: bool,
    /// Check everything the restore would check (the point, the output's rules, a device's
    /// size) and say what it would write, writing nothing; with --changed-only, read and
    /// compare the target and say how much would be written.
    #[arg(long)]
    pub dry_run: bool,
    /// Print a JSON summary (on stderr when the data goes to stdout).
    #[arg(long)]
    pub json: bool,
}

/// The format to write `out` in: `given`, or from the name. A name that says another format
/// than the one written is refused: `web01.vhd` holding a raw image (or `.qcow2` holding
/// anything cairn writes) imports as garbage.
fn format_for(out: &Path, given: Option<RestoreFormat>) -> Result<RestoreFormat> {
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let foreign = ["qcow2", "qcow", "vmdk", "vhdx", "vdi"].contains(&ext.as_str());
    match (given, ext.as_str()) {
        (Some(RestoreFormat::VhdChain), _) => Ok(RestoreFormat::VhdChain),
        _ if foreign => crate::usage!(
            "{}: cairn writes raw images and VHDs, not .{ext}: restore to stdout and convert \
             (`cairn restore POINT - | qemu-img convert -f raw -O {} /dev/stdin {}`)",
            out.display(),
            if ext == "qcow" { "qcow2" } else { ext.as_str() },
            out.display()
        ),
        (Some(RestoreFormat::Raw), "vhd") => crate::usage!(
            "{}: a .vhd name for a raw image imports as garbage: drop --format raw (a .vhd name \
             is written as a VHD) or give a .raw or .img name",
            out.display()
        ),
        (Some(f), _) => Ok(f),
        (None, "vhd") => Ok(RestoreFormat::Vhd),
        (None, _) => Ok(RestoreFormat::Raw),
    }
}

pub fn restore(a: &RestoreArgs) -> Result<i32> {
    crate::remove_partials_when_interrupted();
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
    let format = match format_for(&a.out, a.format)? {
        RestoreFormat::Raw => OutputFormat::Raw,
        RestoreFormat::Vhd => OutputFormat::Vhd,
        RestoreFormat::VhdChain => OutputFormat::VhdChain,
    };
    if matches!(format, OutputFormat::VhdChain) && to_stdout {
        crate::usage!("--format vhd-chain writes a folder, not stdout");
    }
    let job = Job {
        a,
        store,
        point: &point,
        tz: store.config().tz(),
    };
    if a.changed_only {
        if !matches!(format, OutputFormat::Raw) || to_stdout {
            crate::usage!(
                "--changed-only writes a raw disk in place onto a file or block device that \
                 exists (not a VHD, a chain or stdout)"
            );
        }
        return job.changed_only();
    }
    if a.dry_run {
        return job.dry_run(format, base.is_some());
    }
    let opts = cairn_restore::Options {
        format,
        base: base.as_ref(),
        chain_from: from.as_ref(),
        ignore_errors: a.ignore_errors,
        force: a.force,
    };
    job.whole(&opts, to_stdout)
}

/// One restore: what was asked, of which point, from which store.
struct Job<'a> {
    a: &'a RestoreArgs,
    store: &'a dyn cairn_store::StoreRead,
    point: &'a cairn_store::RecoveryPoint,
    tz: chrono_tz::Tz,
}

impl Job<'_> {
    /// What an error is about: "restore of point P to OUT failed".
    fn failed(&self, to: &str, how: &str) -> String {
        format!(
            "restore of point {} {to} {} {how}",
            self.point.short_id(),
            self.a.out.display()
        )
    }

    /// The point, its disk and its time, as the lines below name it.
    fn named(&self) -> String {
        let p = self.point;
        format!(
            "{} ({}/{} made {}",
            p.short_id(),
            p.vm,
            p.disk,
            crate::values::show_time(&p.time, self.tz)
        )
    }

    /// `--changed-only`: the chunks that differ, written in place.
    fn changed_only(&self) -> Result<i32> {
        let (a, point) = (self.a, self.point);
        let bar = progress::bytes(point.size, "restore");
        let started = std::time::Instant::now();
        let c = cairn_restore::restore_changed(
            self.store,
            point,
            &a.out,
            a.force,
            a.dry_run,
            &|done| bar.set_position(done),
        )
        .with_context(|| self.failed("onto", "failed"))?;
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        if a.json {
            crate::print_json(&json!({
                "point": point.id, "target": a.out, "bytes_read": c.bytes_read,
                "chunks_compared": c.chunks_compared, "chunks_written": c.chunks_written,
                "bytes_written": c.bytes_written, "seconds": secs, "dry_run": a.dry_run,
            }))?;
        } else if a.dry_run {
            println!(
                "dry run: restoring {} onto {} would write {} ({}) of {} compared; nothing \
                 was written",
                point.short_id(),
                a.out.display(),
                crate::words::count(c.chunks_written, "chunk"),
                human_bytes(c.bytes_written),
                crate::words::count(c.chunks_compared, "chunk"),
            );
        } else {
            crate::say!(
                "restored {}) onto {} in {secs:.1}s: read {} and compared {}, wrote {} ({}); the \
                 rest was equal",
                self.named(),
                a.out.display(),
                human_bytes(c.bytes_read),
                crate::words::count(c.chunks_compared, "chunk"),
                crate::words::count(c.chunks_written, "chunk"),
                human_bytes(c.bytes_written)
            );
        }
        Ok(0)
    }

    /// `--dry-run`: what would be written, checked, nothing written.
    fn dry_run(&self, format: OutputFormat, differencing: bool) -> Result<i32> {
        let (a, point) = (self.a, self.point);
        let plan = cairn_restore::check(point, &a.out, format, a.force)
            .with_context(|| self.failed("to", "would fail"))?;
        let format_name = match format {
            OutputFormat::Raw => "a raw image",
            OutputFormat::Vhd if differencing => "a differencing VHD",
            OutputFormat::Vhd => "a dynamic VHD",
            OutputFormat::VhdChain => "a VHD chain",
        };
        if a.json {
            crate::print_json(&json!({
                "dry_run": true, "point": point.id, "out": a.out, "format": format_name,
                "target": plan.to_string(), "disk_bytes": point.size,
            }))?;
        } else {
            println!(
                "dry run: would restore {}, {}) as {format_name} to {} ({plan}); nothing was \
                 written",
                self.named(),
                human_bytes(point.size),
                a.out.display()
            );
        }
        Ok(0)
    }

    /// The whole disk, as a raw image, a VHD or a VHD chain; exit status 3 when damaged ranges
    /// were written as zeros (`--ignore-errors`).
    fn whole(&self, opts: &cairn_restore::Options<'_>, to_stdout: bool) -> Result<i32> {
        let (a, point) = (self.a, self.point);
        let bar = progress::bytes(point.size, "restore");
        let started = std::time::Instant::now();
        let r = cairn_restore::restore(self.store, point, &a.out, opts, &|done| {
            bar.set_position(done);
        })
        .with_context(|| self.failed("to", "failed"))?;
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
                crate::say!("wrote {}", f.display());
            }
            crate::say!(
                "restored {}, {}) in {secs:.1}s",
                self.named(),
                human_bytes(point.size)
            );
        }
        if r.damaged.is_empty() {
            return Ok(0);
        }
        for d in &r.damaged {
            eprintln!("{}", damaged_line(d, " written as zeros"));
        }
        eprintln!(
            "restored with {} damaged ranges ({} bytes of zeros)",
            r.damaged.len(),
            r.damaged.iter().map(|d| d.len).sum::<u64>()
        );
        Ok(3)
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
        cairn_store::point::short_id(&d.point),
        d.offset,
        d.offset + d.len,
        d.what
    )
}
