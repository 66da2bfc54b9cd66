//! Reading one VHD file: [`Vhd`] opens and validates the footer, header and BAT of a fixed,
//! dynamic or differencing disk over any `Read + Seek`, and reads its blocks and sector bitmaps.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::io::{Read, Seek, SeekFrom};

use crate::error::{Error, Result};
use crate::format::{
    BAT_UNALLOCATED, DEFAULT_BLOCK_SIZE, DiskType, FOOTER_SIZE, Footer, HEADER_SIZE, Header,
    OLD_FOOTER_SIZE, PLATFORM_MACX, PLATFORM_W2KU, PLATFORM_W2RU, PLATFORM_WI2K, PLATFORM_WI2R,
    ParentLocator, SECTOR_SIZE,
};

/// An open, validated VHD file.
///
/// Opening checks everything that the content depends on: footer cookie, checksum and version;
/// for sparse disks the footer copy at offset 0, the header's cookie, checksum, version and
/// block size, the BAT's size and place, and that every allocated block lies inside the file
/// and overlaps neither another block nor the metadata. What is odd but harmless is kept in
/// [`Vhd::warnings`].
#[derive(Debug)]
pub struct Vhd<R> {
    inner: R,
    file_len: u64,
    footer_offset: u64,
    footer: Footer,
    header: Option<Header>,
    bat: Vec<u32>,
    warnings: Vec<String>,
}

/// Where a block of a sparse disk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// Not in this file: zeros for a dynamic disk, the parent's data for a differencing one.
    Unallocated,
    /// In this file: the sector bitmap starts at `offset`, the data follows it.
    Allocated {
        /// Absolute byte offset of the block's sector bitmap.
        offset: u64,
    },
}

fn read_at<R: Read + Seek>(
    r: &mut R,
    offset: u64,
    buf: &mut [u8],
    what: &'static str,
) -> Result<()> {
    r.seek(SeekFrom::Start(offset))
        .map_err(Error::io(offset, what))?;
    r.read_exact(buf).map_err(Error::io(offset, what))
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

impl<R: Read + Seek> Vhd<R> {
    /// Opens and validates a VHD.
    ///
    /// # Errors
    /// Any structural problem, as [`Error`] with the offset and found/expected values; a file
    /// too short for what its metadata describes is [`Error::Truncated`].
    pub fn open(mut inner: R) -> Result<Self> {
        let file_len = inner
            .seek(SeekFrom::End(0))
            .map_err(Error::io(0, "seeking to the end"))?;
        if file_len < OLD_FOOTER_SIZE as u64 {
            return Err(Error::Truncated {
                offset: 0,
                what: "a VHD footer".into(),
                needed: FOOTER_SIZE as u64,
                file_len,
            });
        }
        let (footer, footer_offset) = Self::read_footer(&mut inner, file_len)?;
        let mut vhd = Self {
            inner,
            file_len,
            footer_offset,
            footer,
            header: None,
            bat: Vec::new(),
            warnings: Vec::new(),
        };
        if vhd.footer.features & crate::format::FEATURE_RESERVED == 0 {
            vhd.warnings.push(format!(
                "footer at offset {footer_offset}: features {:#x} lack the reserved bit 0x2",
                vhd.footer.features
            ));
        }
        if vhd.footer.disk_type.is_sparse() {
            vhd.open_sparse()?;
        } else if footer_offset < vhd.footer.current_size {
            return Err(Error::Truncated {
                offset: 0,
                what: format!(
                    "the data of a fixed disk of {} bytes",
                    vhd.footer.current_size
                ),
                needed: vhd.footer.current_size.saturating_add(FOOTER_SIZE as u64),
                file_len,
            });
        } else if footer_offset > vhd.footer.current_size {
            vhd.warnings.push(format!(
                "fixed disk of {} bytes has {} extra bytes before its footer",
                vhd.footer.current_size,
                footer_offset.saturating_sub(vhd.footer.current_size)
            ));
        }
        Ok(vhd)
    }

    fn read_footer(inner: &mut R, file_len: u64) -> Result<(Footer, u64)> {
        let mut buf = [0u8; FOOTER_SIZE];
        let mut end_error = None;
        if file_len >= FOOTER_SIZE as u64 {
            let at = file_len.saturating_sub(FOOTER_SIZE as u64);
            read_at(inner, at, &mut buf, "reading the footer")?;
            match Footer::decode(&buf, at) {
                Ok(f) => return Ok((f, at)),
                Err(e) => end_error = Some(e),
            }
        }
        // Virtual PC 2004 wrote a 511-byte footer.
        let at = file_len.saturating_sub(OLD_FOOTER_SIZE as u64);
        read_at(inner, at, &mut buf[..OLD_FOOTER_SIZE], "reading the footer")?;
        if let Ok(f) = Footer::decode(&buf[..OLD_FOOTER_SIZE], at) {
            return Ok((f, at));
        }
        let end_error = end_error.unwrap_or(Error::Truncated {
            offset: 0,
            what: "a VHD footer".into(),
            needed: FOOTER_SIZE as u64,
            file_len,
        });
        // A sparse disk whose copy at offset 0 is good but whose end is not was cut short.
        if file_len >= FOOTER_SIZE as u64 {
            read_at(inner, 0, &mut buf, "reading the footer copy")?;
            if let Ok(copy) = Footer::decode(&buf, 0)
                && copy.disk_type.is_sparse()
            {
                return Err(Error::Invalid {
                    offset: file_len.saturating_sub(FOOTER_SIZE as u64),
                    what: format!(
                        "no valid footer at the end of the file ({end_error}); the copy at \
                         offset 0 describes a {} disk of {} bytes: the file is truncated or \
                         its end is damaged",
                        copy.disk_type.name(),
                        copy.current_size
                    ),
                });
            }
        }
        Err(end_error)
    }

    fn open_sparse(&mut self) -> Result<()> {
        self.check_footer_copy()?;
        let header = self.read_header()?;
        let bat = self.read_bat(&header)?;
        self.check_blocks(&header, &bat)?;
        if self.footer.disk_type == DiskType::Differencing {
            self.check_locators(&header);
        }
        self.header = Some(header);
        self.bat = bat;
        Ok(())
    }

    /// The copy of the footer at offset 0: a copy that differs or does not decode is a warning.
    fn check_footer_copy(&mut self) -> Result<()> {
        let mut buf = [0u8; FOOTER_SIZE];
        read_at(&mut self.inner, 0, &mut buf, "reading the footer copy")?;
        match Footer::decode(&buf, 0) {
            Ok(copy) if copy == self.footer => {}
            Ok(_) => self
                .warnings
                .push("footer copy at offset 0 differs from the footer at the end".into()),
            Err(e) => {
                let e = e.of_footer_copy();
                self.warnings.push(format!("footer copy is not valid: {e}"));
            }
        }
        Ok(())
    }

    /// The dynamic disk header, inside the file, with a BAT large enough for the disk.
    fn read_header(&mut self) -> Result<Header> {
        let hoff = self.footer.data_offset;
        if hoff
            .checked_add(HEADER_SIZE as u64)
            .is_none_or(|e| e > self.footer_offset)
        {
            return Err(Error::Truncated {
                offset: hoff,
                what: "the dynamic disk header".into(),
                needed: HEADER_SIZE as u64,
                file_len: self.file_len,
            });
        }
        let mut hbuf = [0u8; HEADER_SIZE];
        read_at(
            &mut self.inner,
            hoff,
            &mut hbuf,
            "reading the dynamic disk header",
        )?;
        let header = Header::decode(&hbuf, hoff)?;
        let bs = u64::from(header.block_size);
        let needed = self.footer.current_size.div_ceil(bs);
        if u64::from(header.max_table_entries) < needed {
            return Err(Error::Invalid {
                offset: hoff.saturating_add(28),
                what: format!(
                    "max table entries is {}, but a disk of {} bytes in blocks of {} needs {}",
                    header.max_table_entries, self.footer.current_size, bs, needed
                ),
            });
        }
        Ok(header)
    }

    /// Where the header lies and where the BAT lies (`start..end` each).
    fn metadata(&self, header: &Header) -> ((u64, u64), (u64, u64)) {
        let hoff = self.footer.data_offset;
        let toff = header.table_offset;
        let tend = toff.saturating_add(u64::from(header.max_table_entries) * 4);
        (
            (hoff, hoff.saturating_add(HEADER_SIZE as u64)),
            (toff, tend),
        )
    }

    /// The BAT, inside the file and clear of the header and the footer copy.
    fn read_bat(&mut self, header: &Header) -> Result<Vec<u32>> {
        let ((hoff, hend), (toff, tend)) = self.metadata(header);
        let tlen = u64::from(header.max_table_entries) * 4;
        if tend > self.footer_offset {
            return Err(Error::Truncated {
                offset: toff,
                what: format!("a BAT of {} entries", header.max_table_entries),
                needed: tlen,
                file_len: self.file_len,
            });
        }
        if overlaps((toff, tend), (hoff, hend)) || toff < FOOTER_SIZE as u64 {
            return Err(Error::Invalid {
                offset: hoff.saturating_add(16),
                what: format!("BAT at {toff}..{tend} overlaps the header or the footer copy"),
            });
        }
        let mut raw = vec![0u8; tlen as usize];
        read_at(&mut self.inner, toff, &mut raw, "reading the BAT")?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| <[u8; 4]>::try_from(c).map_or(BAT_UNALLOCATED, u32::from_be_bytes))
            .collect())
    }

    /// Every allocated block inside the file, clear of the metadata and of each other.
    fn check_blocks(&self, header: &Header, bat: &[u32]) -> Result<()> {
        let end = self.footer_offset;
        let ((hoff, hend), (toff, tend)) = self.metadata(header);
        let span = header
            .bitmap_size()
            .saturating_add(u64::from(header.block_size));
        let meta = [(0, FOOTER_SIZE as u64), (hoff, hend), (toff, tend)];
        let mut blocks: Vec<(u64, u64, usize)> = Vec::new();
        for (i, &sector) in bat.iter().enumerate() {
            if sector == BAT_UNALLOCATED {
                continue;
            }
            let entry_at = toff.saturating_add((i as u64).saturating_mul(4));
            let start = u64::from(sector) * SECTOR_SIZE;
            let stop = start.saturating_add(span);
            if stop > end {
                return Err(Error::Invalid {
                    offset: entry_at,
                    what: format!(
                        "BAT entry {i} puts the block at bytes {start}..{stop}, past the footer at \
                         {end} (file truncated or entry corrupt)"
                    ),
                });
            }
            if let Some(m) = meta.iter().find(|m| overlaps((start, stop), **m)) {
                return Err(Error::Invalid {
                    offset: entry_at,
                    what: format!(
                        "BAT entry {i} puts the block at bytes {start}..{stop}, over metadata at \
                         {}..{}",
                        m.0, m.1
                    ),
                });
            }
            blocks.push((start, stop, i));
        }
        blocks.sort_unstable();
        for w in blocks.windows(2) {
            if let [prev, next] = w
                && next.0 < prev.1
            {
                return Err(Error::Invalid {
                    offset: toff.saturating_add((next.2 as u64).saturating_mul(4)),
                    what: format!(
                        "BAT entry {} puts the block at bytes {}..{}, overlapping block {} at {}..{}",
                        next.2, next.0, next.1, prev.2, prev.0, prev.1
                    ),
                });
            }
        }
        Ok(())
    }

    /// Parent locators must point inside the file (a warning otherwise).
    fn check_locators(&mut self, header: &Header) {
        for (i, loc) in header.locators.iter().enumerate() {
            if loc.platform_code == 0 {
                continue;
            }
            let stop = loc.data_offset.saturating_add(u64::from(loc.data_length));
            if stop > self.footer_offset {
                self.warnings.push(format!(
                    "parent locator {i} ({}) points at bytes {}..{stop}, past the footer",
                    loc.platform_name(),
                    loc.data_offset
                ));
            }
        }
    }

    /// Reads the sector bitmap of block `index`, or `None` when the block is not allocated (or
    /// the disk is fixed). Bit order: the most significant bit of byte 0 is the block's sector 0.
    ///
    /// # Errors
    /// An I/O error, or an index past the BAT.
    pub fn read_bitmap(&mut self, index: u32) -> Result<Option<Vec<u8>>> {
        let BlockState::Allocated { offset } = self.block_state(index)? else {
            return Ok(None);
        };
        let Some(h) = &self.header else {
            return Ok(None);
        };
        let mut bitmap = vec![0u8; (u64::from(h.block_size) / SECTOR_SIZE).div_ceil(8) as usize];
        read_at(
            &mut self.inner,
            offset,
            &mut bitmap,
            "reading a sector bitmap",
        )?;
        Ok(Some(bitmap))
    }

    /// Reads `buf.len()` bytes of the data of block `index`, starting `at` bytes into the block.
    /// For a fixed disk the "blocks" are [`Vhd::block_size`] slices of the data, and bytes past
    /// the disk's size read as zeros. Returns `false` (buffer untouched) for an unallocated block.
    ///
    /// # Errors
    /// An I/O error, an index past the BAT, or a range past the block's end.
    pub fn read_block_data(&mut self, index: u32, at: u64, buf: &mut [u8]) -> Result<bool> {
        let bs = u64::from(self.block_size());
        if at.saturating_add(buf.len() as u64) > bs {
            return Err(Error::Usage(format!(
                "read of {} bytes at {at} runs past a block of {bs} bytes",
                buf.len()
            )));
        }
        match self.block_state(index)? {
            BlockState::Unallocated => Ok(false),
            BlockState::Allocated { offset } => {
                let (data_start, limit) = match &self.header {
                    Some(h) => (offset.saturating_add(h.bitmap_size()), u64::MAX),
                    None => (offset, self.footer.current_size),
                };
                let start = data_start.saturating_add(at);
                let avail = limit.saturating_sub(start).min(buf.len() as u64) as usize;
                let (head, tail) = buf.split_at_mut(avail);
                read_at(&mut self.inner, start, head, "reading block data")?;
                tail.fill(0);
                Ok(true)
            }
        }
    }

    /// Where block `index` is stored. Every block of a fixed disk is "allocated" at its place
    /// in the data.
    ///
    /// # Errors
    /// [`Error::Usage`] for an index past the BAT (or past the end of a fixed disk).
    pub fn block_state(&self, index: u32) -> Result<BlockState> {
        if self.header.is_none() {
            if index >= self.block_count() {
                return Err(Error::Usage(format!(
                    "block {index} is past the end of the disk"
                )));
            }
            return Ok(BlockState::Allocated {
                offset: u64::from(index).saturating_mul(u64::from(DEFAULT_BLOCK_SIZE)),
            });
        }
        match self.bat.get(index as usize) {
            None => Err(Error::Usage(format!(
                "block {index} is past the BAT's {} entries",
                self.bat.len()
            ))),
            Some(&BAT_UNALLOCATED) => Ok(BlockState::Unallocated),
            Some(&s) => Ok(BlockState::Allocated {
                offset: u64::from(s) * SECTOR_SIZE,
            }),
        }
    }

    /// Reads the path stored by parent locator `i`, decoded per its platform code; `None` for
    /// an empty entry or a platform whose data is not a path (`Mac ` aliases).
    ///
    /// # Errors
    /// An I/O error, or a locator pointing outside the file.
    pub fn read_parent_locator(&mut self, i: usize) -> Result<Option<String>> {
        let Some(loc) = self
            .header
            .as_ref()
            .and_then(|h| h.locators.get(i))
            .copied()
        else {
            return Ok(None);
        };
        decode_locator(&mut self.inner, &loc, self.footer_offset)
    }
}

fn decode_locator<R: Read + Seek>(
    r: &mut R,
    loc: &ParentLocator,
    end: u64,
) -> Result<Option<String>> {
    if loc.platform_code == 0 || loc.data_length == 0 {
        return Ok(None);
    }
    let stop = loc.data_offset.saturating_add(u64::from(loc.data_length));
    if stop > end || loc.data_length > 64 * 1024 {
        return Err(Error::Invalid {
            offset: loc.data_offset,
            what: format!(
                "parent locator {} of {} bytes at {} lies outside the file",
                loc.platform_name(),
                loc.data_length,
                loc.data_offset
            ),
        });
    }
    let mut raw = vec![0u8; loc.data_length as usize];
    read_at(r, loc.data_offset, &mut raw, "reading a parent locator")?;
    let text = match loc.platform_code {
        PLATFORM_W2RU | PLATFORM_W2KU => {
            let units: Vec<u16> = raw
                .chunks_exact(2)
                .map(|c| <[u8; 2]>::try_from(c).map_or(0, u16::from_le_bytes))
                .collect();
            String::from_utf16_lossy(&units)
        }
        PLATFORM_WI2R | PLATFORM_WI2K | PLATFORM_MACX => String::from_utf8_lossy(&raw).into_owned(),
        _ => return Ok(None),
    };
    Ok(Some(text.trim_end_matches('\0').to_owned()))
}

impl<R> Vhd<R> {
    /// The footer (from the end of the file).
    #[must_use]
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The dynamic disk header; `None` for a fixed disk.
    #[must_use]
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// The block allocation table (sector numbers, [`BAT_UNALLOCATED`] for holes); empty for a
    /// fixed disk.
    #[must_use]
    pub fn bat(&self) -> &[u32] {
        &self.bat
    }

    /// Fixed, dynamic or differencing.
    #[must_use]
    pub fn disk_type(&self) -> DiskType {
        self.footer.disk_type
    }

    /// The disk's size in bytes: the footer's current size.
    #[must_use]
    pub fn disk_size(&self) -> u64 {
        self.footer.current_size
    }

    /// The block size: the header's for sparse disks, 2 MiB (a convenient unit) for fixed ones.
    #[must_use]
    pub fn block_size(&self) -> u32 {
        self.header
            .as_ref()
            .map_or(DEFAULT_BLOCK_SIZE, |h| h.block_size)
    }

    /// Blocks that cover the disk: ceil(size / block size). The BAT may have more entries.
    #[must_use]
    pub fn block_count(&self) -> u32 {
        self.footer
            .current_size
            .div_ceil(u64::from(self.block_size())) as u32
    }

    /// Number of allocated blocks among the first [`Vhd::block_count`] (all of them for fixed).
    #[must_use]
    pub fn allocated_blocks(&self) -> u32 {
        if self.header.is_none() {
            return self.block_count();
        }
        self.bat
            .iter()
            .take(self.block_count() as usize)
            .filter(|&&s| s != BAT_UNALLOCATED)
            .count() as u32
    }

    /// Length of the file in bytes.
    #[must_use]
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Oddities that do not stop reading (a footer copy that differs, a locator out of the
    /// file...). `cairn vhd check` fails on them.
    #[must_use]
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Gives back the underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    #[test]
    fn tiny_and_random_inputs_are_refused_cleanly() {
        for len in [0usize, 10, 511, 512, 1000, 4096] {
            let err = Vhd::open(Cursor::new(vec![0u8; len])).expect_err("zeros are no VHD");
            let text = err.to_string();
            assert!(text.contains("offset"), "{text}");
        }
    }
}
