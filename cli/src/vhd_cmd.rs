//! `cairn vhd`: the VHD library on the command line.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use cairn_vhd::format::{VHD_EPOCH_UNIX, fourcc};
use cairn_vhd::{
    Chain, DiskSpec, DiskType, ParentSpec, Vhd, vhd_timestamp, write_fixed, write_sparse,
};
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use crate::new_file::NewFile;
use crate::progress;
use crate::words::human_bytes;

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
        VhdCommand::Info { file, json } => info(&file, json),
        VhdCommand::Check { file, json } => check(&file, json),
        VhdCommand::ToRaw { top, out, force } => to_raw(&top, &out, force),
        VhdCommand::FromRaw {
            input,
            out,
            parent,
            kind,
            block_size,
            uuid,
            force,
        } => from_raw(
            &input,
            &out,
            parent.as_deref(),
            FromRawOptions {
                kind,
                block_size,
                uuid,
                force,
            },
        ),
    }
}

/// Opens a file for reading, refusing what is not a regular file or block device.
fn open_file(path: &Path) -> std::io::Result<File> {
    let f = File::open(path)?;
    if f.metadata()?.is_dir() {
        return Err(std::io::Error::other("is a directory, not a VHD file"));
    }
    Ok(f)
}

fn open_vhd(path: &Path) -> Result<Vhd<File>> {
    let f = open_file(path).with_context(|| format!("cannot open {}", path.display()))?;
    Vhd::open(f).map_err(|e| named_format(path, e.in_file(path).into()))
}

/// Opens a VHD and its parents.
fn open_chain(path: &Path) -> Result<Chain<File>> {
    Chain::open(path, open_file).map_err(|e| named_format(path, e.into()))
}

/// `err`, or, when `path` is an image of another format, that: what the file is.
fn named_format(path: &Path, err: anyhow::Error) -> anyhow::Error {
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

fn vhd_time(ts: u32) -> String {
    chrono::DateTime::from_timestamp(VHD_EPOCH_UNIX + i64::from(ts), 0).map_or_else(
        || ts.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

fn describe(path: &Path, vhd: &mut Vhd<File>) -> Result<serde_json::Value> {
    let f = vhd.footer().clone();
    let mut v = json!({
        "file": path.display().to_string(),
        "file_length": vhd.file_len(),
        "type": f.disk_type.name(),
        "size": f.current_size,
        "original_size": f.original_size,
        "qemu_size": f.qemu_size(),
        "uuid": f.uuid.to_string(),
        "timestamp": f.timestamp,
        "time": vhd_time(f.timestamp),
        "creator_application": fourcc(f.creator_app),
        "creator_version": format!("{:#010x}", f.creator_version),
        "creator_host_os": fourcc(f.creator_host_os),
        "geometry": { "cylinders": f.geometry.cylinders, "heads": f.geometry.heads, "sectors_per_track": f.geometry.sectors_per_track },
        "features": f.features,
        "version": format!("{:#010x}", f.version),
        "saved_state": f.saved_state,
        "footer_checksum": format!("{:#010x}", f.checksum),
        "warnings": vhd.warnings(),
    });
    if let Some(h) = vhd.header().cloned() {
        let allocated = vhd.allocated_blocks();
        let mut locators = Vec::new();
        for (i, loc) in h
            .locators
            .iter()
            .enumerate()
            .filter(|(_, l)| l.platform_code != 0)
        {
            let path = vhd
                .read_parent_locator(i)
                .unwrap_or_else(|e| Some(format!("<unreadable: {e}>")));
            locators.push(json!({
                "platform": loc.platform_name(), "data_offset": loc.data_offset,
                "data_length": loc.data_length, "data_space": loc.data_space, "path": path,
            }));
        }
        v["header"] = json!({
            "table_offset": h.table_offset,
            "max_table_entries": h.max_table_entries,
            "block_size": h.block_size,
            "version": format!("{:#010x}", h.version),
            "checksum": format!("{:#010x}", h.checksum),
            "blocks": vhd.block_count(),
            "allocated_blocks": allocated,
            "allocated_bytes": u64::from(allocated) * u64::from(h.block_size),
        });
        if f.disk_type == DiskType::Differencing {
            v["header"]["parent"] = json!({
                "name": h.parent_name, "uuid": h.parent_uuid.to_string(),
                "timestamp": h.parent_timestamp, "time": vhd_time(h.parent_timestamp),
                "locators": locators,
            });
        }
    }
    Ok(v)
}

fn info(path: &Path, as_json: bool) -> Result<i32> {
    let mut vhd = open_vhd(path)?;
    let mut v = describe(path, &mut vhd)?;
    let chain = match open_chain(path) {
        Ok(c) => json!({ "ok": true, "files": c.levels().iter().map(|l| json!({
            "file": l.path.display().to_string(), "type": l.vhd.disk_type().name(),
            "uuid": l.vhd.footer().uuid.to_string(), "size": l.vhd.disk_size(),
        })).collect::<Vec<_>>() }),
        Err(e) => json!({ "ok": false, "error": e.to_string() }),
    };
    v["chain"] = chain;
    if as_json {
        crate::print_json(&v)?;
        return Ok(0);
    }
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    println!(
        "file:        {} ({} bytes)",
        path.display(),
        v["file_length"]
    );
    println!("type:        {}", s("type"));
    let size = vhd.disk_size();
    print!("size:        {} bytes ({})", size, human_bytes(size));
    if vhd.footer().qemu_size() != size {
        print!(
            " [qemu reads {} bytes by CHS geometry]",
            vhd.footer().qemu_size()
        );
    }
    println!();
    println!("uuid:        {}", s("uuid"));
    println!("created:     {}", s("time"));
    println!(
        "creator:     \"{}\" version {} on \"{}\"",
        s("creator_application"),
        s("creator_version"),
        s("creator_host_os")
    );
    let g = vhd.footer().geometry;
    println!(
        "geometry:    {}/{}/{} (C/H/S, {} bytes)",
        g.cylinders,
        g.heads,
        g.sectors_per_track,
        g.size()
    );
    println!(
        "features:    {:#x}, saved state: {}",
        vhd.footer().features,
        if vhd.footer().saved_state {
            "yes"
        } else {
            "no"
        }
    );
    if let Some(h) = vhd.header() {
        print_sparse(&vhd, h, &v);
    }
    for w in vhd.warnings() {
        println!("warning:     {w}");
    }
    print_chain(&v["chain"]);
    Ok(0)
}

/// The block size, BAT and parent of a dynamic or differencing VHD (`v`: its description).
fn print_sparse(vhd: &Vhd<File>, h: &cairn_vhd::Header, v: &serde_json::Value) {
    let alloc = vhd.allocated_blocks();
    println!(
        "block size:  {} ({})",
        h.block_size,
        human_bytes(u64::from(h.block_size))
    );
    println!(
        "BAT:         at offset {}, {} entries, {} of {} blocks allocated ({})",
        h.table_offset,
        h.max_table_entries,
        alloc,
        vhd.block_count(),
        human_bytes(u64::from(alloc) * u64::from(h.block_size))
    );
    if vhd.disk_type() == DiskType::Differencing {
        let p = &v["header"]["parent"];
        println!(
            "parent:      \"{}\" uuid {} time {}",
            h.parent_name,
            h.parent_uuid,
            p["time"].as_str().unwrap_or_default()
        );
        for l in p["locators"].as_array().into_iter().flatten() {
            println!(
                "  locator:   {} at {} ({} bytes): {}",
                l["platform"].as_str().unwrap_or_default(),
                l["data_offset"],
                l["data_length"],
                l["path"]
            );
        }
    }
}

/// The chain of files the VHD reads through, or why it is broken.
fn print_chain(chain: &serde_json::Value) {
    if chain["ok"] == true {
        let files: Vec<String> = chain["files"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                format!(
                    "{} ({})",
                    f["file"].as_str().unwrap_or_default(),
                    f["type"].as_str().unwrap_or_default()
                )
            })
            .collect();
        println!("chain:       {}", files.join(" -> "));
    } else {
        println!(
            "chain:       broken: {}",
            chain["error"].as_str().unwrap_or_default()
        );
    }
}

fn check(path: &Path, as_json: bool) -> Result<i32> {
    let mut chain = match open_chain(path) {
        Ok(c) => c,
        Err(e) => {
            if as_json {
                crate::print_json(&json!({ "ok": false, "error": e.to_string() }))?;
                return Ok(1);
            }
            return Err(e.context(format!("{} is not a valid VHD chain", path.display())));
        }
    };
    let mut problems = Vec::new();
    let mut files = Vec::new();
    let n = chain.levels().len();
    for (i, level) in chain.levels().iter().enumerate() {
        for w in level.vhd.warnings() {
            problems.push(format!("{}: {w}", level.path.display()));
        }
        if i + 1 < n {
            let parent = &chain.levels()[i + 1];
            if parent.vhd.disk_size() != level.vhd.disk_size() {
                problems.push(format!(
                    "{}: disk size {} differs from its parent {} ({} bytes)",
                    level.path.display(),
                    level.vhd.disk_size(),
                    parent.path.display(),
                    parent.vhd.disk_size()
                ));
            }
        }
        files.push(
            json!({ "file": level.path.display().to_string(), "type": level.vhd.disk_type().name(),
            "size": level.vhd.disk_size(), "allocated_blocks": level.vhd.allocated_blocks() }),
        );
    }
    // Every allocated block's bitmap and data must be readable (the BAT was checked on open).
    for i in 0..chain.block_count() {
        if let Err(e) = chain.read_block(i, &mut vec![0u8; chain.block_size() as usize]) {
            problems.push(e.to_string());
            break;
        }
    }
    let ok = problems.is_empty();
    if as_json {
        crate::print_json(&json!({ "ok": ok, "files": files, "problems": problems }))?;
    } else {
        for f in &files {
            println!(
                "{} {} ({}, {} bytes)",
                if ok { "ok " } else { "   " },
                f["file"].as_str().unwrap_or_default(),
                f["type"].as_str().unwrap_or_default(),
                f["size"]
            );
        }
        for p in &problems {
            eprintln!("problem: {p}");
        }
    }
    Ok(if ok { 0 } else { 1 })
}

/// A VHD on stdin: read in one pass when its layout allows, else spooled to a temporary file
/// (removed after) and read from there. A differencing VHD on stdin has no parents to read.
fn to_raw_from_stdin(out: &Path, force: bool) -> Result<i32> {
    use cairn_vhd::{BlockState, DiskType, StreamOpen, StreamVhd};
    let spool_and_convert = |consumed: &[u8], mut rest: Box<dyn Read>| -> Result<i32> {
        let mut spool = tempfile::NamedTempFile::new().context("creating a spool file")?;
        spool.write_all(consumed).context("spooling stdin")?;
        std::io::copy(&mut rest, &mut spool).context("spooling stdin")?;
        to_raw(spool.path(), out, force)
    };
    let mut stdin = std::io::stdin().lock();
    let mut head = Vec::with_capacity(512);
    (&mut stdin)
        .take(512)
        .read_to_end(&mut head)
        .context("reading stdin")?;
    if !head.starts_with(b"conectix") {
        // A fixed VHD keeps its only footer at the end.
        return spool_and_convert(&head, Box::new(stdin));
    }
    let input: Box<dyn Read> = Box::new(std::io::Cursor::new(head).chain(stdin));
    let mut vhd = match StreamVhd::open(std::io::BufReader::with_capacity(1 << 20, input))
        .map_err(|e| anyhow::Error::new(e.in_file("-")))?
    {
        StreamOpen::OnePass(v) => v,
        StreamOpen::NeedsSeek {
            consumed, reader, ..
        } => return spool_and_convert(&consumed, Box::new(reader)),
    };
    if vhd.footer().disk_type == DiskType::Differencing {
        bail!("-: a differencing VHD on stdin comes without its parents; give its path instead");
    }
    let size = vhd.disk_size();
    let bs = u64::from(vhd.block_size());
    let bar = progress::bytes(size, "to-raw");
    let mut buf = vec![0u8; bs as usize];
    let mut sink = open_raw_sink(out, &[], force)?;
    let to_stdout = out == Path::new("-");
    for i in 0..vhd.block_count() {
        let start = u64::from(i) * bs;
        let len = (size - start).min(bs) as usize;
        let present = vhd.block_state(i)? != BlockState::Unallocated;
        buf.fill(0);
        if present {
            vhd.read_block_data(i, 0, &mut buf)?;
        }
        if present && !cairn_store::chunk::is_zero(&buf[..len]) || to_stdout {
            sink.seek(SeekFrom::Start(start))
                .with_context(|| format!("seeking {} to {start}", out.display()))?;
            sink.write_all(&buf[..len])
                .with_context(|| format!("writing {} at offset {start}", out.display()))?;
        }
        bar.inc(len as u64);
    }
    vhd.finish()
        .map_err(|e| anyhow::Error::new(e.in_file("-")))?;
    sink.finish(size)
        .with_context(|| format!("finishing {}", out.display()))?;
    bar.finish_and_clear();
    Ok(0)
}

fn open_raw_sink(out: &Path, inputs: &[&Path], force: bool) -> Result<Box<dyn WriteSeek>> {
    Ok(if out == Path::new("-") {
        Box::new(StdoutSink(BufWriter::with_capacity(
            1 << 20,
            std::io::stdout().lock(),
        )))
    } else {
        Box::new(RawFile(Some(NewFile::create(out, inputs, force)?)))
    })
}

fn to_raw(top: &Path, out: &Path, force: bool) -> Result<i32> {
    if top == Path::new("-") {
        return to_raw_from_stdin(out, force);
    }
    let mut chain = open_chain(top)?;
    let size = chain.disk_size();
    let bs = u64::from(chain.block_size());
    let bar = progress::bytes(size, "to-raw");
    let mut buf = vec![0u8; bs as usize];
    let to_stdout = out == Path::new("-");
    let files: Vec<PathBuf> = chain.levels().iter().map(|l| l.path.clone()).collect();
    let inputs: Vec<&Path> = std::iter::once(top)
        .chain(files.iter().map(PathBuf::as_path))
        .collect();
    let mut sink = open_raw_sink(out, &inputs, force)?;
    for i in 0..chain.block_count() {
        let start = u64::from(i) * bs;
        let len = (size - start).min(bs) as usize;
        let present = chain.block_present(i)?;
        if present {
            chain.read_block(i, &mut buf)?;
        }
        if present && !cairn_store::chunk::is_zero(&buf[..len]) || to_stdout {
            if !present {
                buf.fill(0);
            }
            sink.seek(SeekFrom::Start(start))
                .with_context(|| format!("seeking {} to {start}", out.display()))?;
            sink.write_all(&buf[..len])
                .with_context(|| format!("writing {} at offset {start}", out.display()))?;
        }
        bar.inc(len as u64);
    }
    sink.finish(size)
        .with_context(|| format!("finishing {}", out.display()))?;
    bar.finish_and_clear();
    Ok(0)
}

trait WriteSeek: Write + Seek {
    fn finish(&mut self, size: u64) -> std::io::Result<()>;
}

/// A raw image written to a new file (see [`NewFile`]): sized, synced and renamed into place
/// by `finish`.
struct RawFile(Option<NewFile>);

impl RawFile {
    fn file(&mut self) -> std::io::Result<&mut File> {
        self.0
            .as_mut()
            .map(NewFile::file)
            .ok_or_else(|| std::io::Error::other("the file is finished"))
    }
}

impl Write for RawFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file()?.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file()?.flush()
    }
}

impl Seek for RawFile {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file()?.seek(pos)
    }
}

impl WriteSeek for RawFile {
    fn finish(&mut self, size: u64) -> std::io::Result<()> {
        let f = self.file()?;
        if f.metadata()?.is_file() {
            f.set_len(size)?;
        }
        if let Some(done) = self.0.take() {
            done.finish().map_err(std::io::Error::other)?;
        }
        Ok(())
    }
}

/// stdout written strictly in order; seeks are only allowed to the current position.
struct StdoutSink<W: Write>(W);

impl<W: Write> Write for StdoutSink<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> Seek for StdoutSink<W> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        match pos {
            SeekFrom::Start(p) => Ok(p),
            _ => Err(std::io::Error::other("stdout cannot seek")),
        }
    }
}

impl<W: Write> WriteSeek for StdoutSink<W> {
    fn finish(&mut self, _size: u64) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `target` relative to the folder `from_dir`, with `/` separators (both made absolute first).
pub fn relative_path(from_dir: &Path, target: &Path) -> Result<String> {
    let from = std::fs::canonicalize(from_dir)
        .with_context(|| format!("cannot resolve {}", from_dir.display()))?;
    let to = std::fs::canonicalize(target)
        .with_context(|| format!("cannot resolve {}", target.display()))?;
    let a: Vec<Component> = from.components().collect();
    let b: Vec<Component> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = std::iter::repeat_n("..".to_owned(), a.len() - common).collect();
    parts.extend(
        b[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    Ok(parts.join("/"))
}

/// How `from-raw` writes.
struct FromRawOptions {
    kind: VhdType,
    block_size: u32,
    uuid: Option<uuid::Uuid>,
    force: bool,
}

/// Refuses an input that is an image of a format other than raw (a VHD, qcow2...): its
/// container bytes would be made the disk.
fn check_raw(input: &Path, raw: &mut File, size: u64) -> Result<()> {
    let mut head = Vec::with_capacity(512);
    (&mut *raw)
        .take(512)
        .read_to_end(&mut head)
        .with_context(|| format!("reading {}", input.display()))?;
    let mut tail = [0u8; 8];
    let fixed = size >= 512
        && raw.seek(SeekFrom::Start(size - 512)).is_ok()
        && raw.read_exact(&mut tail).is_ok()
        && &tail == b"conectix";
    let what = if head.starts_with(b"conectix") || fixed {
        Some("a VHD")
    } else {
        cairn_ingest::foreign_format(&head)
    };
    if let Some(what) = what {
        bail!(
            "{} is {what}, not a raw image: from-raw would wrap its container bytes as the \
             disk; `cairn vhd to-raw` (for a VHD) or `qemu-img convert -O raw` gives its content",
            input.display()
        );
    }
    raw.seek(SeekFrom::Start(0))
        .with_context(|| format!("reading {}", input.display()))?;
    Ok(())
}

fn from_raw(input: &Path, out: &Path, parent: Option<&Path>, o: FromRawOptions) -> Result<i32> {
    let FromRawOptions {
        kind,
        block_size,
        uuid,
        force,
    } = o;
    let (mut raw, size) = open_raw(input)?;
    if parent.is_some() && kind == VhdType::Fixed {
        crate::usage!(
            "--parent writes a differencing VHD; it cannot be combined with --type fixed"
        );
    }
    let mut parent_chain = parent.map(open_chain).transpose()?;
    let block_size = match &parent_chain {
        Some(c) if c.top().disk_type().is_sparse() => c.block_size(),
        _ => block_size,
    };
    let spec = DiskSpec {
        size,
        block_size,
        uuid: uuid.unwrap_or_else(uuid::Uuid::new_v4),
        timestamp: vhd_timestamp(chrono::Utc::now().timestamp()),
    };
    let bs = u64::from(block_size);
    let to_stdout = out == Path::new("-");
    let inputs = inputs_of(input, parent, parent_chain.as_ref());
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    let mut target = if to_stdout {
        None
    } else {
        Some(NewFile::create(out, &inputs, force)?)
    };
    let sink: Box<dyn Write + '_> = match &mut target {
        Some(t) => Box::new(t.file()),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut sink = BufWriter::with_capacity(1 << 20, sink);
    let passes = if kind == VhdType::Fixed { 1 } else { 2 };
    let bar = progress::bytes(size * passes, "from-raw");
    let step = || bar.inc(bs);
    let written = if kind == VhdType::Fixed {
        write_fixed(&mut sink, &spec, |i, buf| {
            step();
            read_block(&mut raw, size, bs, i, buf)
        })
    } else {
        let allocated = allocated_blocks(input, &raw, size, bs, parent_chain.as_mut(), &step)?;
        let parent_spec = match (&parent_chain, parent) {
            (Some(c), Some(p)) => Some(parent_spec(c, p, out, to_stdout)?),
            _ => None,
        };
        write_sparse(
            &mut sink,
            &spec,
            parent_spec.as_ref(),
            &allocated,
            |i, buf| {
                step();
                read_block(&mut raw, size, bs, i, buf)
            },
        )
    };
    let written = written.map_err(|e| e.in_file(out))?;
    sink.flush()?;
    drop(sink);
    if let Some(t) = target {
        t.finish()?;
    }
    bar.finish_and_clear();
    if !to_stdout {
        crate::say!(
            "wrote {} ({} bytes, disk of {} bytes)",
            out.display(),
            written,
            size
        );
    }
    Ok(0)
}

/// Every file the output must not overwrite: the input, the parent and its chain.
fn inputs_of(input: &Path, parent: Option<&Path>, chain: Option<&Chain<File>>) -> Vec<PathBuf> {
    std::iter::once(input.to_path_buf())
        .chain(parent.map(Path::to_path_buf))
        .chain(
            chain
                .into_iter()
                .flat_map(|c| c.levels().iter().map(|l| l.path.clone())),
        )
        .collect()
}

/// The raw image `input`, checked (not another format, whole sectors), and its size.
fn open_raw(input: &Path) -> Result<(File, u64)> {
    let mut raw = File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
    let size = raw
        .metadata()
        .with_context(|| format!("cannot stat {}", input.display()))?
        .len();
    check_raw(input, &mut raw, size)?;
    if size == 0 || size % 512 != 0 {
        bail!(
            "{}: size {size} bytes is not a positive multiple of 512 (a disk image is whole sectors)",
            input.display()
        );
    }
    Ok((raw, size))
}

/// Reads block `i` (of `bs` bytes) of a raw image of `size` bytes into `buf`, zeros past its
/// end.
fn read_block(
    raw: &mut (impl Read + Seek),
    size: u64,
    bs: u64,
    i: u32,
    buf: &mut [u8],
) -> std::io::Result<()> {
    let start = u64::from(i) * bs;
    let n = (size - start).min(bs) as usize;
    raw.seek(SeekFrom::Start(start))?;
    raw.read_exact(&mut buf[..n])?;
    buf[n..].fill(0);
    Ok(())
}

/// Pass 1 of a sparse VHD: which blocks to store (non-zero, or different from the parent).
/// Blocks in a hole of a sparse raw file are zeros, known without reading them.
fn allocated_blocks(
    input: &Path,
    raw: &File,
    size: u64,
    bs: u64,
    mut parent: Option<&mut Chain<File>>,
    step: &dyn Fn(),
) -> Result<Vec<bool>> {
    let blocks = size.div_ceil(bs) as u32;
    let mut reader = raw;
    let mut buf = vec![0u8; bs as usize];
    let mut pbuf = vec![0u8; bs as usize];
    let mut allocated = Vec::with_capacity(blocks as usize);
    let mut holes = cairn_ingest::Holes::new(raw, size);
    // Whether `buf` holds zeros (set once for a run of holes, not for each of its blocks).
    let mut zeroed = false;
    for i in 0..blocks {
        let start = u64::from(i) * bs;
        let hole = holes.covers(raw, start, (start + bs).min(size));
        if hole {
            if !zeroed {
                buf.fill(0);
                zeroed = true;
            }
        } else {
            zeroed = false;
            read_block(&mut reader, size, bs, i, &mut buf)
                .with_context(|| format!("reading {} at offset {start}", input.display()))?;
        }
        let differs = match &mut parent {
            Some(c) if hole && !c.range_present(start, bs)? => false,
            Some(c) => {
                c.read_at(start, &mut pbuf)?;
                buf != pbuf
            }
            None => !hole && !cairn_store::chunk::is_zero(&buf),
        };
        allocated.push(differs);
        step();
    }
    Ok(allocated)
}

/// The parent locator of a differencing VHD written to `out`: the parent's identity and its
/// path relative to `out`'s folder and absolute.
fn parent_spec(
    chain: &Chain<File>,
    parent: &Path,
    out: &Path,
    to_stdout: bool,
) -> Result<ParentSpec> {
    let out_dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() && !to_stdout => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let f = chain.top().footer();
    Ok(ParentSpec {
        uuid: f.uuid,
        timestamp: f.timestamp,
        relative_path: relative_path(&out_dir, parent)?,
        absolute_path: std::fs::canonicalize(parent)?.display().to_string(),
    })
}
