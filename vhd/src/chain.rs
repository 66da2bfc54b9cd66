//! A VHD chain: a disk and its parents, read as one disk.
//!
//! Parents are found the way Xen Orchestra's vhd-lib finds them, by the header's parent
//! unicode name relative to the child's folder, then through the parent locators (`W2ru`,
//! `W2ku`, `MacX`, `Wi2r`, `Wi2k`). Each child's parent UUID must equal its parent's footer UUID.
//! The chain does no I/O of its own: the caller passes a function that opens a path.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{DiskType, SECTOR_SIZE};
use crate::reader::{BlockState, Vhd};

/// Deepest chain accepted (protects against a loop of parent names).
pub const MAX_CHAIN_DEPTH: usize = 1024;

/// One file of a chain.
#[derive(Debug)]
pub struct Level<R> {
    /// The path it was opened from.
    pub path: PathBuf,
    /// The open file.
    pub vhd: Vhd<R>,
}

/// A disk and its parents, newest first. A dynamic or fixed disk is a chain of one.
#[derive(Debug)]
pub struct Chain<R> {
    levels: Vec<Level<R>>,
}

/// Candidate paths of the parent of a differencing disk at `child`, in the order they are tried.
///
/// # Errors
/// An I/O error reading a parent locator.
pub fn parent_candidates<R: Read + Seek>(child: &Path, vhd: &mut Vhd<R>) -> Result<Vec<PathBuf>> {
    let dir = child.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut out = Vec::new();
    let mut push = |p: PathBuf| {
        let p = normalize(&p);
        if !p.as_os_str().is_empty() && !out.contains(&p) {
            out.push(p);
        }
    };
    if let Some(h) = vhd.header() {
        let name = h.parent_name.replace('\\', "/");
        if !name.is_empty() {
            push(dir.join(&name));
        }
    }
    for i in 0..crate::format::PARENT_LOCATOR_COUNT {
        let Some(path) = vhd.read_parent_locator(i)? else {
            continue;
        };
        let path = path
            .strip_prefix("file://")
            .unwrap_or(&path)
            .replace('\\', "/");
        let path = path.strip_prefix("./").unwrap_or(&path);
        // A Windows drive path ("C:/...") means nothing here.
        if path.len() > 1 && path.as_bytes()[1] == b':' {
            continue;
        }
        push(dir.join(path));
    }
    Ok(out)
}

/// Resolves `.` and `..` lexically, as Node's `path.resolve` does for vhd-lib.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

impl<R: Read + Seek> Chain<R> {
    /// Opens `top` and every parent it names, with `open` turning a path into a reader.
    ///
    /// # Errors
    /// The first error of any file, wrapped with that file's path; [`Error::ParentNotFound`]
    /// when no candidate path of a parent opens; [`Error::ParentUuidMismatch`] when a parent's
    /// UUID is not the one its child names.
    pub fn open(top: &Path, mut open: impl FnMut(&Path) -> std::io::Result<R>) -> Result<Self> {
        let open_one =
            |path: &Path, open: &mut dyn FnMut(&Path) -> std::io::Result<R>| -> Result<Vhd<R>> {
                let r = open(path).map_err(|e| Error::Open { source: e }.in_file(path))?;
                Vhd::open(r).map_err(|e| e.in_file(path))
            };
        let mut levels = vec![Level {
            path: top.to_path_buf(),
            vhd: open_one(top, &mut open)?,
        }];
        loop {
            if levels.len() >= MAX_CHAIN_DEPTH {
                return Err(Error::ChainTooDeep(MAX_CHAIN_DEPTH));
            }
            let Some(child) = levels.last_mut() else {
                break;
            };
            if child.vhd.disk_type() != DiskType::Differencing {
                break;
            }
            let child_path = child.path.clone();
            let candidates = parent_candidates(&child_path, &mut child.vhd)
                .map_err(|e| e.in_file(&child_path))?;
            let (name, want) = match child.vhd.header() {
                Some(h) => (h.parent_name.clone(), h.parent_uuid),
                None => break,
            };
            let mut found = None;
            for c in &candidates {
                match open(c) {
                    Ok(r) => {
                        found = Some((c.clone(), Vhd::open(r).map_err(|e| e.in_file(c))?));
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::Open { source: e }.in_file(c)),
                }
            }
            let Some((path, vhd)) = found else {
                return Err(Error::ParentNotFound {
                    name,
                    tried: candidates,
                }
                .in_file(&child_path));
            };
            if vhd.footer().uuid != want {
                return Err(Error::ParentUuidMismatch {
                    offset: child_offset_of_parent_uuid(&levels),
                    parent: path,
                    found: vhd.footer().uuid,
                    expected: want,
                }
                .in_file(&child_path));
            }
            levels.push(Level { path, vhd });
        }
        Ok(Self { levels })
    }

    /// A chain of one disk with no parent to look up (a dynamic or fixed VHD, or a
    /// differencing VHD whose own sectors are all that is wanted: the parent reads as zeros).
    #[must_use]
    pub fn single(path: PathBuf, vhd: Vhd<R>) -> Self {
        Self {
            levels: vec![Level { path, vhd }],
        }
    }

    /// The files, newest first.
    #[must_use]
    pub fn levels(&self) -> &[Level<R>] {
        &self.levels
    }

    /// The newest file.
    #[must_use]
    pub fn top(&self) -> &Vhd<R> {
        &self.levels[0].vhd
    }

    /// The disk's size: the newest file's current size.
    #[must_use]
    pub fn disk_size(&self) -> u64 {
        self.top().disk_size()
    }

    /// Block size of the newest file, the unit of [`Chain::read_block`].
    #[must_use]
    pub fn block_size(&self) -> u32 {
        self.top().block_size()
    }

    /// Number of blocks of [`Chain::block_size`] covering the disk.
    #[must_use]
    pub fn block_count(&self) -> u32 {
        self.top().block_count()
    }

    /// Whether any file of the chain stores data for block `index` of the newest file's block
    /// size. `false` means the block reads as zeros without reading anything.
    ///
    /// # Errors
    /// An index past the end.
    pub fn block_present(&self, index: u32) -> Result<bool> {
        let bs = u64::from(self.block_size());
        self.range_present(u64::from(index) * bs, bs)
    }

    /// Whether any file of the chain stores data for any byte of `offset..offset + len`,
    /// whatever the block sizes of its files. `false` means the range reads as zeros without
    /// reading anything.
    ///
    /// # Errors
    /// A block state that cannot be read.
    pub fn range_present(&self, offset: u64, len: u64) -> Result<bool> {
        let Some(end) = offset.checked_add(len).filter(|_| len > 0) else {
            return Ok(false);
        };
        for level in &self.levels {
            let v = &level.vhd;
            let lbs = u64::from(v.block_size());
            let first = offset / lbs;
            let last = ((end - 1) / lbs).min(u64::from(v.block_count()).saturating_sub(1));
            for b in first..=last {
                if b >= u64::from(v.block_count()) {
                    break;
                }
                if v.block_state(b as u32)? != BlockState::Unallocated {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Reads block `index` (of the newest file's block size) of the disk's content into `buf`,
    /// which must be exactly one block long. Sector bitmaps of differencing files are honoured:
    /// a set bit reads from that file, a clear bit from its parent. Allocated blocks of dynamic
    /// files are read whole (as qemu, vhd-lib and the spec's readers do). Bytes past the disk's
    /// size read as zeros.
    ///
    /// # Errors
    /// An I/O error, wrapped with the path of the file it happened in.
    pub fn read_block(&mut self, index: u32, buf: &mut [u8]) -> Result<()> {
        let bs = self.block_size() as usize;
        if buf.len() != bs {
            return Err(Error::Usage(format!(
                "buffer of {} bytes for a block of {bs}",
                buf.len()
            )));
        }
        buf.fill(0);
        let sectors = bs / SECTOR_SIZE as usize;
        let first_sector = u64::from(index) * sectors as u64;
        let mut need = vec![true; sectors];
        for level in &mut self.levels {
            fill_from(&mut level.vhd, first_sector, &mut need, buf)
                .map_err(|e| e.in_file(&level.path))?;
            if !need.iter().any(|&n| n) {
                break;
            }
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes of the disk's content at byte `offset`; past the end reads zeros.
    ///
    /// # Errors
    /// As [`Chain::read_block`].
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        // Whole sectors: read just those, straight into `buf` (never a whole block per call).
        if offset.is_multiple_of(SECTOR_SIZE) && (buf.len() as u64).is_multiple_of(SECTOR_SIZE) {
            buf.fill(0);
            let mut need = vec![true; buf.len() / SECTOR_SIZE as usize];
            for level in &mut self.levels {
                fill_from(&mut level.vhd, offset / SECTOR_SIZE, &mut need, buf)
                    .map_err(|e| e.in_file(&level.path))?;
                if !need.iter().any(|&n| n) {
                    break;
                }
            }
            return Ok(());
        }
        let bs = u64::from(self.block_size());
        let mut block = vec![0u8; bs as usize];
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let index = pos / bs;
            let within = (pos % bs) as usize;
            let n = (bs as usize - within).min(buf.len() - done);
            if index >= u64::from(self.block_count()) {
                buf[done..].fill(0);
                break;
            }
            self.read_block(index as u32, &mut block)?;
            buf[done..done + n].copy_from_slice(&block[within..within + n]);
            done += n;
        }
        Ok(())
    }

    /// Turns the chain into a `Read + Seek` over the disk's content.
    #[must_use]
    pub fn into_content_reader(self) -> ContentReader<R> {
        ContentReader {
            chain: self,
            pos: 0,
        }
    }
}

fn child_offset_of_parent_uuid<R>(levels: &[Level<R>]) -> u64 {
    // The parent UUID sits 40 bytes into the header of the last (deepest) level so far.
    levels.last().map_or(0, |l| l.vhd.footer().data_offset + 40)
}

/// Fills the sectors still needed (`need`) of the disk sectors starting at `first_sector` from
/// one file, and clears `need` for each sector this file decides.
fn fill_from<R: Read + Seek>(
    vhd: &mut Vhd<R>,
    first_sector: u64,
    need: &mut [bool],
    buf: &mut [u8],
) -> Result<()> {
    let size_sectors = vhd.disk_size() / SECTOR_SIZE;
    let lsectors = u64::from(vhd.block_size()) / SECTOR_SIZE;
    let kind = vhd.disk_type();
    let mut i = 0usize;
    while i < need.len() {
        let sector = first_sector + i as u64;
        if sector >= size_sectors {
            // Past this file's disk: zeros, whatever lies below.
            need[i..].fill(false);
            break;
        }
        let lblock = sector / lsectors;
        let in_block = (sector % lsectors) as usize;
        let span = ((lsectors as usize - in_block).min(need.len() - i))
            .min((size_sectors - sector) as usize);
        let state = vhd.block_state(lblock as u32)?;
        let bitmap = match (kind, state) {
            (_, BlockState::Unallocated) => {
                if kind != DiskType::Differencing {
                    need[i..i + span].fill(false);
                }
                i += span;
                continue;
            }
            (DiskType::Differencing, BlockState::Allocated { .. }) => {
                vhd.read_bitmap(lblock as u32)?
            }
            _ => None,
        };
        let has = |s: usize| -> bool {
            bitmap.as_ref().is_none_or(|b| {
                b.get(s / 8)
                    .is_some_and(|byte| byte & (0x80 >> (s % 8)) != 0)
            })
        };
        // Read runs of sectors that are needed and held here.
        let mut j = 0usize;
        while j < span {
            if !(need[i + j] && has(in_block + j)) {
                j += 1;
                continue;
            }
            let run_start = j;
            while j < span && need[i + j] && has(in_block + j) {
                j += 1;
            }
            let b0 = (i + run_start) * SECTOR_SIZE as usize;
            let b1 = (i + j) * SECTOR_SIZE as usize;
            vhd.read_block_data(
                lblock as u32,
                (in_block + run_start) as u64 * SECTOR_SIZE,
                &mut buf[b0..b1],
            )?;
            need[i + run_start..i + j].fill(false);
        }
        i += span;
    }
    Ok(())
}

/// The content of a chain as `Read + Seek`: what the hypervisor would see.
#[derive(Debug)]
pub struct ContentReader<R> {
    chain: Chain<R>,
    pos: u64,
}

impl<R: Read + Seek> Read for ContentReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = self.chain.disk_size();
        let n = (size.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.chain
            .read_at(self.pos, &mut buf[..n])
            .map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for ContentReader<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let size = self.chain.disk_size();
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let new = new.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        self.pos = new;
        Ok(new)
    }
}
