//! `cairn vhd from-raw`: a raw image as a fixed, dynamic or differencing VHD.

use super::{VhdType, open_chain};
use crate::new_file::NewFile;
use crate::progress;
use anyhow::{Context, Result, bail};
use cairn_vhd::{Chain, DiskSpec, ParentSpec, vhd_timestamp, write_fixed, write_sparse};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

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
pub(super) struct FromRawOptions {
    pub(super) kind: VhdType,
    pub(super) block_size: u32,
    pub(super) uuid: Option<uuid::Uuid>,
    pub(super) force: bool,
}

/// Refuses an input that is an image of a format other than raw (a VHD, qcow2...): its
/// container bytes would be made the disk.
pub(super) fn check_raw(input: &Path, raw: &mut File, size: u64) -> Result<()> {
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

pub(super) fn from_raw(
    input: &Path,
    out: &Path,
    parent: Option<&Path>,
    o: FromRawOptions,
) -> Result<i32> {
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
    let spec = disk_spec(size, block_size, uuid, parent_chain.as_ref());
    let block_size = spec.block_size;
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

/// The new disk: a differencing VHD takes its parent's block size.
fn disk_spec(
    size: u64,
    block_size: u32,
    uuid: Option<uuid::Uuid>,
    parent: Option<&Chain<File>>,
) -> DiskSpec {
    let block_size = match parent {
        Some(c) if c.top().disk_type().is_sparse() => c.block_size(),
        _ => block_size,
    };
    DiskSpec {
        size,
        block_size,
        uuid: uuid.unwrap_or_else(uuid::Uuid::new_v4),
        timestamp: vhd_timestamp(chrono::Utc::now().timestamp()),
    }
}

/// Every file the output must not overwrite: the input, the parent and its chain.
pub(super) fn inputs_of(
    input: &Path,
    parent: Option<&Path>,
    chain: Option<&Chain<File>>,
) -> Vec<PathBuf> {
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
pub(super) fn open_raw(input: &Path) -> Result<(File, u64)> {
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
pub(super) fn read_block(
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
pub(super) fn allocated_blocks(
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
pub(super) fn parent_spec(
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
