//! A disk's partitions: a GPT (read here: its header and entries checked by their CRCs, the
//! backup header used when the primary is bad), else an MBR with its extended partition's
//! logical ones (`mbrman`, which refuses a chain of EBRs that loops), else the whole disk as one
//! file system. Partitions are named `p1`, `p2`... as Linux numbers them (an MBR's logical
//! partitions from `p5`), and by their GPT name where they have one.
//!
//! `gpt` (the crate) reads through a device it also writes to; the GPT's few structures are
//! read here instead, every field bounded by the disk's size.

use crate::disk::{DiskRead, Piece, Slice};
use crate::{Error, Result};
use std::sync::Arc;

/// Bytes of a sector (the only size VM disks use).
const SECTOR: u64 = 512;
/// The most GPT entries read (the usual table has 128).
const MAX_GPT_ENTRIES: u32 = 1024;

/// How a disk is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// A GUID partition table.
    Gpt,
    /// A master boot record.
    Mbr,
    /// No partition table: the whole disk.
    None,
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// `p1`, `p2`... (`disk` for a disk without a partition table).
    pub name: String,
    /// The GPT partition's name, if it has one.
    pub label: Option<String>,
    /// Its type: an MBR type byte (`0x83`) or a GPT type GUID, and what it is known as.
    pub kind: String,
    /// Its first byte on the disk.
    pub start: u64,
    /// Its length in bytes.
    pub size: u64,
    /// Where its bytes lie on the disk: one piece for a partition; a logical volume's extents
    /// may lie in several.
    pub pieces: Vec<Piece>,
}

impl Partition {
    /// A partition of `size` bytes at `start`.
    #[must_use]
    pub fn at(name: String, label: Option<String>, kind: String, start: u64, size: u64) -> Self {
        Self {
            name,
            label,
            kind,
            start,
            size,
            pieces: vec![Piece {
                at: 0,
                disk: start,
                len: size,
            }],
        }
    }
}

/// The partitions of `disk`.
///
/// # Errors
/// A table whose entries point past the disk, a GPT whose both headers are bad while its
/// protective MBR says there is one, the disk's read errors.
pub fn partitions(disk: &Arc<dyn DiskRead>) -> Result<(Scheme, Vec<Partition>)> {
    let mut mbr = [0u8; 512];
    if disk.size() < 512 {
        return Ok((Scheme::None, whole(disk)));
    }
    disk.read_at(0, &mut mbr)?;
    if mbr[510..512] != [0x55, 0xAA] {
        return Ok((Scheme::None, whole(disk)));
    }
    // A protective MBR (type 0xEE in its first entry) says the disk is GPT.
    if mbr[446 + 4] == 0xEE {
        return Ok((Scheme::Gpt, gpt(disk)?));
    }
    // A FAT or NTFS boot sector ends with 55 AA too: an MBR's entries have a boot flag of 0 or
    // 0x80 each.
    if (0..4).any(|k| !matches!(mbr[446 + 16 * k], 0 | 0x80)) {
        return Ok((Scheme::None, whole(disk)));
    }
    Ok((Scheme::Mbr, mbr_partitions(disk)?))
}

fn whole(disk: &Arc<dyn DiskRead>) -> Vec<Partition> {
    vec![Partition::at(
        "disk".into(),
        None,
        "whole disk".into(),
        0,
        disk.size(),
    )]
}

fn mbr_partitions(disk: &Arc<dyn DiskRead>) -> Result<Vec<Partition>> {
    // A used entry starting at LBA 0 lies on the MBR itself: refused here, as mbrman 0.6
    // panics on a table whose used entries all start there (found by the fuzz target).
    let mut mbr = [0u8; 512];
    disk.read_at(0, &mut mbr)?;
    for k in 0..4 {
        let e = &mbr[446 + 16 * k..462 + 16 * k];
        let start = u32::from_le_bytes([e[8], e[9], e[10], e[11]]);
        if e[4] != 0 && start == 0 {
            return Err(Error::Table {
                what: format!("MBR entry {}", k + 1),
                why: "it starts at LBA 0, on the table itself".into(),
            });
        }
    }
    let mut reader = Slice::new(Arc::clone(disk), 0, disk.size());
    let mbr = mbrman::MBR::read_from(&mut reader, SECTOR as u32).map_err(|e| Error::Table {
        what: "MBR".into(),
        why: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (i, p) in mbr.iter() {
        if p.is_unused() || matches!(p.sys, 0x05 | 0x0f | 0x85) {
            continue;
        }
        let start = u64::from(p.starting_lba) * SECTOR;
        let size = u64::from(p.sectors) * SECTOR;
        check_inside(&**disk, &format!("p{i}"), start, size)?;
        out.push(Partition::at(
            format!("p{i}"),
            None,
            format!("{:#04x} {}", p.sys, mbr_type(p.sys)),
            start,
            size,
        ));
    }
    Ok(out)
}

fn mbr_type(sys: u8) -> &'static str {
    match sys {
        0x01 | 0x04 | 0x06 | 0x0b | 0x0c | 0x0e => "FAT",
        0x07 => "NTFS/exFAT",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8e => "Linux LVM",
        0xef => "EFI system",
        0xfd => "Linux RAID",
        _ => "",
    }
}

fn check_inside(disk: &dyn DiskRead, name: &str, start: u64, size: u64) -> Result<()> {
    if start.checked_add(size).is_none_or(|e| e > disk.size()) {
        return Err(Error::Table {
            what: name.into(),
            why: format!(
                "bytes {start}..{} lie past the disk's end ({} bytes)",
                start.saturating_add(size),
                disk.size()
            ),
        });
    }
    Ok(())
}

/// The partitions of a GPT disk: from the primary header at LBA 1, else the backup at the
/// disk's last sector.
fn gpt(disk: &Arc<dyn DiskRead>) -> Result<Vec<Partition>> {
    let last = disk.size() / SECTOR - 1;
    match gpt_at(disk, 1) {
        Ok(p) => Ok(p),
        Err(primary) => gpt_at(disk, last).map_err(|_| primary),
    }
}

fn gpt_at(disk: &Arc<dyn DiskRead>, lba: u64) -> Result<Vec<Partition>> {
    let bad = |why: String| Error::Table {
        what: format!("GPT header at LBA {lba}"),
        why,
    };
    let mut h = [0u8; 512];
    disk.read_at(lba * SECTOR, &mut h)?;
    if &h[0..8] != b"EFI PART" {
        return Err(bad("no \"EFI PART\" signature".into()));
    }
    let size = u32::from_le_bytes(h[12..16].try_into().unwrap_or_default()) as usize;
    if !(92..=512).contains(&size) {
        return Err(bad(format!("a header size of {size}")));
    }
    let stored = u32::from_le_bytes(h[16..20].try_into().unwrap_or_default());
    let mut copy = h[..size].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != stored {
        return Err(bad("its CRC does not match".into()));
    }
    let le64 = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap_or_default());
    let le32 = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().unwrap_or_default());
    let (entries_lba, count, entry_size, entries_crc) = (le64(72), le32(80), le32(84), le32(88));
    if count > MAX_GPT_ENTRIES || !(128..=4096).contains(&entry_size) || entry_size % 8 != 0 {
        return Err(bad(format!("{count} entries of {entry_size} bytes")));
    }
    let table_len = u64::from(count) * u64::from(entry_size);
    let table_at = entries_lba
        .checked_mul(SECTOR)
        .filter(|&a| a.checked_add(table_len).is_some_and(|e| e <= disk.size()))
        .ok_or_else(|| {
            bad(format!(
                "its entries at LBA {entries_lba} lie past the disk"
            ))
        })?;
    let mut table = vec![0u8; table_len as usize];
    disk.read_at(table_at, &mut table)?;
    if crc32fast::hash(&table) != entries_crc {
        return Err(bad("its entries' CRC does not match".into()));
    }
    let mut out = Vec::new();
    for (k, e) in table.chunks(entry_size as usize).enumerate() {
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let first = u64::from_le_bytes(e[32..40].try_into().unwrap_or_default());
        let last = u64::from_le_bytes(e[40..48].try_into().unwrap_or_default());
        let name = format!("p{}", k + 1);
        if last < first {
            return Err(Error::Table {
                what: name,
                why: format!("it ends (LBA {last}) before it starts (LBA {first})"),
            });
        }
        let (start, size) = (first * SECTOR, (last - first + 1) * SECTOR);
        check_inside(&**disk, &name, start, size)?;
        let label: String = char::decode_utf16(
            e[56..128]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0),
        )
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
        out.push(Partition::at(
            name,
            (!label.is_empty()).then_some(label),
            gpt_type(&e[0..16]),
            start,
            size,
        ));
    }
    Ok(out)
}

/// A GPT type GUID as text, with what it is known as.
fn gpt_type(g: &[u8]) -> String {
    let guid = format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        g[8],
        g[9],
        g[10..16]
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
    );
    let known = match guid.as_str() {
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI system",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "Microsoft reserved",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        _ => "",
    };
    format!("{guid} {known}").trim_end().to_owned()
}
