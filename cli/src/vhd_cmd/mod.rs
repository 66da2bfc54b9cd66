//! `cairn vhd`: the VHD library on the command line, one module per subcommand group:
//! [`info`] (info, check), [`to_raw`], [`from_raw`].

mod from_raw;
mod info;
mod to_raw;

use anyhow::{Context, Result};
use cairn_vhd::format::VHD_EPOCH_UNIX;
use cairn_vhd::{Chain, Vhd};
use clap::{Subcommand, ValueEnum};
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub enum VhdCommand {
    /// Show a VHD's footer, header, BAT summary and chain.
    #[command(
        after_help = "Example:\n  cairn vhd info disk.vhd\n  cairn vhd info --json delta.vhd | jq .chain"
    )]
    Info {
        /// The VHD file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Validate a VHD, or a differencing VHD and all its parents. Exit 0 only when all is well.
    #[command(after_help = "Example:\n  cairn vhd check backups/20261122.vhd && echo chain ok")]
    Check {
        /// The VHD file (the newest of a chain).
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the content of a VHD or a chain as a sparse raw image, honouring sector bitmaps.
    #[command(
        name = "to-raw",
        after_help = "Example:\n  cairn vhd to-raw delta.vhd disk.raw\n  cairn vhd to-raw disk.vhd - | sha256sum"
    )]
    ToRaw {
        /// The VHD file (the newest of a chain), or `-` for a dynamic or fixed VHD on stdin.
        top: PathBuf,
        /// The raw image to write (holes for zeros), or `-` for stdout. Never a file of the
        /// chain; an existing file only with --force. Written under a temporary name, renamed
        /// when whole.
        out: PathBuf,
        /// Replace an existing output file (or write onto a block device).
        #[arg(long)]
        force: bool,
    },
    /// Make a dynamic or fixed VHD of a raw image, or with --parent a differencing VHD holding
    /// only the blocks that differ from the parent (whole blocks, as Xen Orchestra expects).
    #[command(
        name = "from-raw",
        after_help = "Example:\n  cairn vhd from-raw day0.raw base.vhd\n  cairn vhd from-raw day1.raw day1.vhd --parent base.vhd"
    )]
    FromRaw {
        /// The raw image.
        input: PathBuf,
        /// The VHD to write, or `-` for stdout. Never the input or a file of the parent's chain;
        /// an existing file only with --force. Written under a temporary name, renamed when
        /// whole.
        out: PathBuf,
        /// Write a differencing VHD on top of this VHD (or chain).
        #[arg(long)]
        parent: Option<PathBuf>,
        /// Kind of VHD to write without --parent.
        #[arg(long = "type", value_enum, default_value_t = VhdType::Dynamic)]
        kind: VhdType,
        /// Block size of a dynamic VHD (a power of two, as 2M or 2097152; 2 MiB is what
        /// everyone reads).
        #[arg(long, default_value = "2M", value_parser = crate::values::parse_size)]
        block_size: u32,
        /// UUID of the new VHD (random if not given).
        #[arg(long)]
        uuid: Option<uuid::Uuid>,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VhdType {
    /// Sparse: zero blocks are not stored.
    Dynamic,
    /// The whole disk, then a footer.
    Fixed,
}

/// Runs a `cairn vhd` command; returns the exit code.
pub fn run(cmd: VhdCommand) -> Result<i32> {
    crate::remove_partials_when_interrupted();
    match cmd {
        VhdCommand::Info { file, json } => info::info(&file, json),
        VhdCommand::Check { file, json } => info::check(&file, json),
        VhdCommand::ToRaw { top, out, force } => to_raw::to_raw(&top, &out, force),
        VhdCommand::FromRaw {
            input,
            out,
            parent,
            kind,
            block_size,
            uuid,
            force,
        } => from_raw::from_raw(
            &input,
            &out,
            parent.as_deref(),
            from_raw::FromRawOptions {
                kind,
                block_size,
                uuid,
                force,
            },
        ),
    }
}

/// Opens a file for reading, refusing what is not a regular file or block device.
pub(super) fn open_file(path: &Path) -> std::io::Result<File> {
    let f = File::open(path)?;
    if f.metadata()?.is_dir() {
        return Err(std::io::Error::other("is a directory, not a VHD file"));
    }
    Ok(f)
}

pub(super) fn open_vhd(path: &Path) -> Result<Vhd<File>> {
    let f = open_file(path).with_context(|| format!("cannot open {}", path.display()))?;
    Vhd::open(f).map_err(|e| named_format(path, e.in_file(path).into()))
}

/// Opens a VHD and its parents.
pub(super) fn open_chain(path: &Path) -> Result<Chain<File>> {
    Chain::open(path, open_file).map_err(|e| named_format(path, e.into()))
}

/// `err`, or, when `path` is an image of another format, that: what the file is.
pub(super) fn named_format(path: &Path, err: anyhow::Error) -> anyhow::Error {
    let mut head = [0u8; 72];
    let n = File::open(path)
        .and_then(|f| std::os::unix::fs::FileExt::read_at(&f, &mut head, 0))
        .unwrap_or(0);
    match cairn_ingest::foreign_format(&head[..n]) {
        Some(what) => anyhow::anyhow!(
            "{} is {what}, not a VHD (`qemu-img info` reads it; `qemu-img convert -O vpc` makes \
             a VHD of it)",
            path.display()
        ),
        None => err,
    }
}

pub(super) fn vhd_time(ts: u32) -> String {
    chrono::DateTime::from_timestamp(VHD_EPOCH_UNIX + i64::from(ts), 0).map_or_else(
        || ts.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}
