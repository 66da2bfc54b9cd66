//! What changed since the parent point: from a file (XCP-ng's `VDI.list_changed_blocks`
//! bitmap in base64, or `offset length` lines), checked against the disk.

use crate::{Error, Result};

/// The granularity of XCP-ng's changed block bitmaps.
pub const CBT_BLOCK: u64 = 64 << 10;

/// What changed since the parent point, known without the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// One bit per `granularity` bytes, most significant bit first (bit 7 of byte 0 is the
    /// first block), as XCP-ng's `VDI.list_changed_blocks` returns it (base64) and as
    /// xapi-project's own reader of it takes it (a `bitstring.BitArray` of the bytes).
    Bitmap {
        /// The bits.
        bits: Vec<u8>,
        /// Bytes per bit.
        granularity: u64,
    },
    /// Changed byte ranges, sorted and merged: `(start, end)`.
    Ranges(Vec<(u64, u64)>),
}

impl Changes {
    /// Reads a changed-blocks file: the base64 text of `VDI.list_changed_blocks` (one bit per
    /// 64 KiB), or lines of `OFFSET LENGTH` in bytes (`#` starts a comment).
    ///
    /// # Errors
    /// A file that is neither, naming the line or the character.
    pub fn parse(text: &str, shown: &str) -> Result<Self> {
        let bad = |what: String| Error::Refused(format!("{shown}: {what}"));
        let looks_like_lines = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .any(|l| l.split_whitespace().count() == 2);
        if looks_like_lines {
            let mut ranges = Vec::new();
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let mut f = line.split_whitespace();
                let (Some(a), Some(b), None) = (f.next(), f.next(), f.next()) else {
                    return Err(bad(format!("line {}: expected OFFSET LENGTH", n + 1)));
                };
                let num = |s: &str| {
                    s.parse::<u64>()
                        .map_err(|_| bad(format!("line {}: {s:?} is not a number of bytes", n + 1)))
                };
                let (off, len) = (num(a)?, num(b)?);
                let end = off
                    .checked_add(len)
                    .ok_or_else(|| bad(format!("line {}: the range overflows", n + 1)))?;
                if len > 0 {
                    ranges.push((off, end));
                }
            }
            ranges.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
            for (a, b) in ranges {
                match merged.last_mut() {
                    Some(last) if a <= last.1 => last.1 = last.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            return Ok(Self::Ranges(merged));
        }
        let bits = decode_base64(text).map_err(bad)?;
        Ok(Self::Bitmap {
            bits,
            granularity: CBT_BLOCK,
        })
    }

    /// Checks that the changes describe a disk of `size` bytes.
    ///
    /// # Errors
    /// A bitmap of another disk's size, ranges past the end.
    pub fn check_size(&self, size: u64, shown: &str) -> Result<()> {
        match self {
            Self::Bitmap { bits, granularity } => {
                let blocks = size.div_ceil(*granularity);
                if bits.len() as u64 != blocks.div_ceil(8) {
                    return Err(Error::Refused(format!(
                        "{shown}: the changed-block bitmap has {} bytes ({} blocks of {} KiB), \
                         but the disk of {size} bytes needs {} bytes: the bitmap of another disk?",
                        bits.len(),
                        bits.len() * 8,
                        granularity >> 10,
                        blocks.div_ceil(8)
                    )));
                }
            }
            Self::Ranges(r) => {
                if let Some(&(a, b)) = r.last()
                    && b > size
                {
                    return Err(Error::Refused(format!(
                        "{shown}: the changed range {a}..{b} passes the disk's end ({size} bytes)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The first byte at or after `at` that changed (`u64::MAX` when none did).
    pub(super) fn next_changed(&self, at: u64) -> u64 {
        match self {
            Self::Ranges(r) => {
                let i = r.partition_point(|&(_, end)| end <= at);
                r.get(i).map_or(u64::MAX, |&(a, _)| a.max(at))
            }
            Self::Bitmap { bits, granularity } => {
                let mut block = at / granularity;
                loop {
                    let byte = (block / 8) as usize;
                    let Some(&b) = bits.get(byte) else {
                        return u64::MAX;
                    };
                    if b == 0 {
                        block = (block / 8 + 1) * 8;
                        continue;
                    }
                    if b & (0x80 >> (block % 8)) != 0 {
                        return (block * granularity).max(at);
                    }
                    block += 1;
                }
            }
        }
    }
}

/// Decodes standard base64 (whitespace ignored, `=` padding optional).
pub(super) fn decode_base64(text: &str) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc = 0u32;
    let mut n = 0;
    let mut ended = false;
    for (i, c) in text.char_indices() {
        let v = match c {
            'A'..='Z' => c as u32 - 'A' as u32,
            'a'..='z' => c as u32 - 'a' as u32 + 26,
            '0'..='9' => c as u32 - '0' as u32 + 52,
            '+' => 62,
            '/' => 63,
            '=' => {
                ended = true;
                continue;
            }
            c if c.is_whitespace() => continue,
            other => {
                return Err(format!(
                    "character {other:?} at {i} is not base64 (nor is the file OFFSET LENGTH lines)"
                ));
            }
        };
        if ended {
            return Err(format!("base64 data after its padding, at {i}"));
        }
        acc = acc << 6 | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((acc >> n) as u8);
            acc &= (1 << n) - 1;
        }
    }
    Ok(out)
}
