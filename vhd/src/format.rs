//! The on-disk structures of a VHD: footer, dynamic disk header, parent locators and geometry.
//!
//! Every constant is taken from the Microsoft "Virtual Hard Disk Image Format Specification"
//! v1.0 (2006) and is frozen: changing one changes the format. All integers are big-endian.
//! The on-disk layout is kept apart from the domain types: [`Footer::decode`] and
//! [`Header::decode`] validate while they parse, and `encode` always writes a correct checksum.
//!
//! One file for the whole specification (over 600 lines): the structures refer to each other's
//! constants and checksum, and reading them beside the spec's sections, in its order, is how
//! they are checked (cloud-hypervisor's `block` crate keeps each format in one module too).

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use uuid::Uuid;

use crate::error::{Error, Structure};

/// Bytes in a sector; every VHD offset and size is a multiple of it (spec §"Hard Disk Footer").
pub const SECTOR_SIZE: u64 = 512;
/// Size of the hard disk footer (spec: "Hard Disk Footer Format", 512 bytes).
pub const FOOTER_SIZE: usize = 512;
/// Size of the footer that Virtual PC 2004 and older wrote (the spec notes 511 bytes).
pub const OLD_FOOTER_SIZE: usize = 511;
/// Size of the dynamic disk header (spec: "Dynamic Disk Header Format", 1024 bytes).
pub const HEADER_SIZE: usize = 1024;
/// Footer cookie, "conectix".
pub const FOOTER_COOKIE: [u8; 8] = *b"conectix";
/// Dynamic disk header cookie, "cxsparse".
pub const HEADER_COOKIE: [u8; 8] = *b"cxsparse";
/// Footer feature bit "reserved": the spec says it must always be set.
pub const FEATURE_RESERVED: u32 = 0x0000_0002;
/// Footer feature bit "temporary": a candidate for deletion on shutdown.
pub const FEATURE_TEMPORARY: u32 = 0x0000_0001;
/// The file format version the spec defines (major 1, minor 0).
pub const FILE_FORMAT_VERSION: u32 = 0x0001_0000;
/// The dynamic header version the spec defines (major 1, minor 0).
pub const HEADER_VERSION: u32 = 0x0001_0000;
/// Footer data offset of a fixed disk: there is no next structure.
pub const NO_DATA_OFFSET: u64 = u64::MAX;
/// BAT entry of a block that is not allocated.
pub const BAT_UNALLOCATED: u32 = 0xFFFF_FFFF;
/// The default block size of dynamic and differencing disks (2 MiB).
pub const DEFAULT_BLOCK_SIZE: u32 = 0x0020_0000;
/// Smallest block size accepted: one sector.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size accepted. The spec allows any power of two; real tools use 512 KiB
/// (Hyper-V small), 2 MiB (everyone) and rarely more. 256 MiB keeps one block in memory sane.
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Seconds from the Unix epoch to 2000-01-01 00:00:00 UTC, the VHD time origin.
pub const VHD_EPOCH_UNIX: i64 = 946_684_800;
/// Largest disk the CHS geometry can describe: 65535 cylinders × 16 heads × 255 sectors.
pub const MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;
/// The largest disk a VHD holds for the hypervisors that read them (Hyper-V, XAPI and qemu
/// refuse larger ones): 2040 GiB.
pub const MAX_DISK_SIZE: u64 = 2040 << 30;
/// Size of the parent unicode name field, in bytes (256 UTF-16 code units).
pub const PARENT_NAME_SIZE: usize = 512;
/// Number of parent locator entries in the header.
pub const PARENT_LOCATOR_COUNT: usize = 8;

/// Creator application that cairn writes. Not `vpc ` or `qemu`, so that qemu sizes our disks by
/// the footer's current size (as vhd-lib and libvhdi do) instead of by CHS geometry.
pub const CAIRN_CREATOR: [u8; 4] = *b"crn ";
/// Creator host OS "Wi2k": what Xen Orchestra and most writers put there.
pub const HOST_OS_WINDOWS: [u8; 4] = *b"Wi2k";

// Field offsets inside the footer (spec: "Hard Disk Footer Format").
const F_COOKIE: usize = 0;
const F_FEATURES: usize = 8;
const F_VERSION: usize = 12;
const F_DATA_OFFSET: usize = 16;
const F_TIMESTAMP: usize = 24;
const F_CREATOR_APP: usize = 28;
const F_CREATOR_VERSION: usize = 32;
const F_CREATOR_OS: usize = 36;
const F_ORIGINAL_SIZE: usize = 40;
const F_CURRENT_SIZE: usize = 48;
const F_GEOMETRY: usize = 56;
const F_DISK_TYPE: usize = 60;
const F_CHECKSUM: usize = 64;
const F_UUID: usize = 68;
const F_SAVED_STATE: usize = 84;

// Field offsets inside the dynamic disk header (spec: "Dynamic Disk Header Format").
const H_COOKIE: usize = 0;
const H_DATA_OFFSET: usize = 8;
const H_TABLE_OFFSET: usize = 16;
const H_VERSION: usize = 24;
const H_MAX_ENTRIES: usize = 28;
const H_BLOCK_SIZE: usize = 32;
const H_CHECKSUM: usize = 36;
const H_PARENT_UUID: usize = 40;
const H_PARENT_TIMESTAMP: usize = 56;
const H_PARENT_NAME: usize = 64;
const H_LOCATORS: usize = 576;
const LOCATOR_SIZE: usize = 24;

const _: () = assert!(H_PARENT_NAME + PARENT_NAME_SIZE == H_LOCATORS);
const _: () = assert!(H_LOCATORS + PARENT_LOCATOR_COUNT * LOCATOR_SIZE == 768);
const _: () = assert!(F_SAVED_STATE + 1 + 427 == FOOTER_SIZE);

/// The disk type field of the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskType {
    /// Type 2: the data, then the footer.
    Fixed,
    /// Type 3: sparse, blocks allocated on write, unallocated blocks read as zeros.
    Dynamic,
    /// Type 4: sparse, unallocated blocks and clear sector bits read from the parent.
    Differencing,
}

impl DiskType {
    /// The on-disk code (spec: 2, 3, 4).
    #[must_use]
    pub fn code(self) -> u32 {
        match self {
            Self::Fixed => 2,
            Self::Dynamic => 3,
            Self::Differencing => 4,
        }
    }

    /// The type for an on-disk code; `None` for 0 (none), 1, 5, 6 (reserved) and anything else.
    #[must_use]
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            2 => Some(Self::Fixed),
            3 => Some(Self::Dynamic),
            4 => Some(Self::Differencing),
            _ => None,
        }
    }

    /// Lower-case name, as `cairn vhd info` prints it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::Dynamic => "dynamic",
            Self::Differencing => "differencing",
        }
    }

    /// Whether the disk has a dynamic header, a BAT and blocks.
    #[must_use]
    pub fn is_sparse(self) -> bool {
        !matches!(self, Self::Fixed)
    }
}

/// Cylinder/head/sector geometry (footer offset 56).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors_per_track: u8,
}

impl Geometry {
    /// The geometry the spec's appendix computes for a disk of `size` bytes (rounding down).
    #[must_use]
    #[expect(
        clippy::arithmetic_side_effects,
        reason = "the spec's algorithm: divisors are the constants 17, 31, 63, 255 or a head \
                  count of at least 4, and sectors are capped at MAX_CHS_SECTORS"
    )]
    pub fn for_size(size: u64) -> Self {
        let sectors = (size / SECTOR_SIZE).min(MAX_CHS_SECTORS);
        let (spt, heads, cth);
        if sectors >= 65535 * 16 * 63 {
            spt = 255;
            heads = 16;
            cth = sectors / spt;
        } else {
            let mut s = 17;
            let mut c = sectors / s;
            let mut h = c.div_ceil(1024).max(4);
            if c >= h * 1024 || h > 16 {
                s = 31;
                h = 16;
                c = sectors / s;
            }
            if c >= h * 1024 {
                s = 63;
                h = 16;
                c = sectors / s;
            }
            spt = s;
            heads = h;
            cth = c;
        }
        Self {
            cylinders: (cth / heads).min(u64::from(u16::MAX)) as u16,
            heads: heads as u8,
            sectors_per_track: spt as u8,
        }
    }

    /// Bytes that the geometry addresses: C × H × S × 512.
    #[must_use]
    #[expect(
        clippy::arithmetic_side_effects,
        reason = "at most 65535 × 255 × 255 × 512, far below u64::MAX"
    )]
    pub fn size(self) -> u64 {
        u64::from(self.cylinders)
            * u64::from(self.heads)
            * u64::from(self.sectors_per_track)
            * SECTOR_SIZE
    }
}

/// The hard disk footer: at the end of every VHD, and copied at offset 0 of sparse ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// Feature flags; [`FEATURE_RESERVED`] is always set by conforming writers.
    pub features: u32,
    /// File format version; major version 1 is the only one defined.
    pub version: u32,
    /// Absolute offset of the dynamic header, or [`NO_DATA_OFFSET`] for a fixed disk.
    pub data_offset: u64,
    /// Creation time in seconds since 2000-01-01 00:00:00 UTC.
    pub timestamp: u32,
    /// Creator application, four bytes (`vpc `, `qemu`, `qem2`, `tap\0`, `xo  `, `win `...).
    pub creator_app: [u8; 4],
    /// Creator application version.
    pub creator_version: u32,
    /// Creator host OS, four bytes (`Wi2k`, `Mac `).
    pub creator_host_os: [u8; 4],
    /// Size of the disk at creation, bytes.
    pub original_size: u64,
    /// Size of the disk now, bytes.
    pub current_size: u64,
    /// CHS geometry.
    pub geometry: Geometry,
    /// Fixed, dynamic or differencing.
    pub disk_type: DiskType,
    /// The checksum as stored (verified equal to the computed one by [`Footer::decode`]).
    pub checksum: u32,
    /// The disk's unique id; a differencing child names it as its parent.
    pub uuid: Uuid,
    /// Saved-state flag (the VM was hibernated).
    pub saved_state: bool,
}

/// One's complement of the byte sum of `bytes`, with the 4 bytes at `checksum_at` taken as zero
/// (the spec's rule for both the footer and the header).
#[must_use]
pub fn checksum(bytes: &[u8], checksum_at: usize) -> u32 {
    let mut sum: u32 = 0;
    for (i, b) in bytes.iter().enumerate() {
        if !(checksum_at..checksum_at.saturating_add(4)).contains(&i) {
            sum = sum.wrapping_add(u32::from(*b));
        }
    }
    !sum
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(arr(b, at))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(arr(b, at))
}

/// The `N` bytes at `at`. Callers pass offsets inside the structure (checked by the const
/// asserts above); a slice too short for them reads as zeros rather than panicking.
fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b.get(at..at.saturating_add(N))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .unwrap_or([0; N])
}

/// Four creator bytes as text, with non-printable bytes escaped (`tap\0` prints as `tap\0`).
#[must_use]
pub fn fourcc(bytes: [u8; 4]) -> String {
    bytes
        .iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

/// Where a structure keeps its cookie, checksum and version, and what they must be.
struct Frame {
    structure: Structure,
    cookie: [u8; 8],
    cookie_at: usize,
    checksum_at: usize,
    version_at: usize,
    version: u32,
}

impl Frame {
    /// The cookie, checksum and major version of the structure in `b` (read at `at`), checked:
    /// its stored checksum and version.
    fn check(&self, b: &[u8], at: u64) -> Result<(u32, u32), Error> {
        let cookie: [u8; 8] = arr(b, self.cookie_at);
        if cookie != self.cookie {
            return Err(Error::BadCookie {
                structure: self.structure,
                offset: at,
                found: cookie,
                expected: self.cookie,
            });
        }
        let stored = be32(b, self.checksum_at);
        let computed = checksum(b, self.checksum_at);
        if stored != computed {
            return Err(Error::ChecksumMismatch {
                structure: self.structure,
                offset: at.saturating_add(self.checksum_at as u64),
                found: stored,
                expected: computed,
            });
        }
        let version = be32(b, self.version_at);
        if version >> 16 != self.version >> 16 {
            return Err(Error::UnsupportedVersion {
                structure: self.structure,
                offset: at.saturating_add(self.version_at as u64),
                found: version,
                expected: self.version,
            });
        }
        Ok((stored, version))
    }
}

/// The footer's frame.
const FOOTER_FRAME: Frame = Frame {
    structure: Structure::Footer,
    cookie: FOOTER_COOKIE,
    cookie_at: F_COOKIE,
    checksum_at: F_CHECKSUM,
    version_at: F_VERSION,
    version: FILE_FORMAT_VERSION,
};

/// The dynamic disk header's frame.
const HEADER_FRAME: Frame = Frame {
    structure: Structure::Header,
    cookie: HEADER_COOKIE,
    cookie_at: H_COOKIE,
    checksum_at: H_CHECKSUM,
    version_at: H_VERSION,
    version: HEADER_VERSION,
};

impl Footer {
    /// A footer for a new disk written by cairn. The caller fills in the data offset of sparse
    /// disks; the checksum is computed by [`Footer::encode`].
    #[must_use]
    pub fn new(disk_type: DiskType, size: u64, uuid: Uuid, timestamp: u32) -> Self {
        Self {
            features: FEATURE_RESERVED,
            version: FILE_FORMAT_VERSION,
            data_offset: if disk_type.is_sparse() {
                FOOTER_SIZE as u64
            } else {
                NO_DATA_OFFSET
            },
            timestamp,
            creator_app: CAIRN_CREATOR,
            creator_version: 0x0001_0000,
            creator_host_os: HOST_OS_WINDOWS,
            original_size: size,
            current_size: size,
            geometry: Geometry::for_size(size),
            disk_type,
            checksum: 0,
            uuid,
            saved_state: false,
        }
    }

    /// Parses and validates a footer read at absolute offset `at` (used in errors).
    ///
    /// `bytes` is 512 bytes, or 511 for a Virtual PC 2004 footer.
    ///
    /// # Errors
    /// A wrong cookie, a checksum that does not match, a major version other than 1, an unknown
    /// disk type, a size that is not a whole number of sectors, or a data offset inconsistent
    /// with the disk type.
    pub fn decode(bytes: &[u8], at: u64) -> Result<Self, Error> {
        let mut buf = [0u8; FOOTER_SIZE];
        for (to, from) in buf.iter_mut().zip(bytes) {
            *to = *from;
        }
        let b = &buf[..];
        let (stored, version) = FOOTER_FRAME.check(b, at)?;
        let type_code = be32(b, F_DISK_TYPE);
        let disk_type = DiskType::from_code(type_code).ok_or_else(|| Error::Invalid {
            offset: at.saturating_add(F_DISK_TYPE as u64),
            what: format!(
                "disk type {type_code} is not fixed (2), dynamic (3) or differencing (4)"
            ),
        })?;
        let current_size = be64(b, F_CURRENT_SIZE);
        if !current_size.is_multiple_of(SECTOR_SIZE) {
            return Err(Error::Invalid {
                offset: at.saturating_add(F_CURRENT_SIZE as u64),
                what: format!("current size {current_size} is not a multiple of 512"),
            });
        }
        let data_offset = be64(b, F_DATA_OFFSET);
        if disk_type.is_sparse()
            && (data_offset == NO_DATA_OFFSET || !data_offset.is_multiple_of(512))
        {
            return Err(Error::Invalid {
                offset: at.saturating_add(F_DATA_OFFSET as u64),
                what: format!(
                    "data offset {data_offset:#x} of a {} disk does not point at a sector",
                    disk_type.name()
                ),
            });
        }
        let g = arr::<4>(b, F_GEOMETRY);
        Ok(Self {
            features: be32(b, F_FEATURES),
            version,
            data_offset,
            timestamp: be32(b, F_TIMESTAMP),
            creator_app: arr(b, F_CREATOR_APP),
            creator_version: be32(b, F_CREATOR_VERSION),
            creator_host_os: arr(b, F_CREATOR_OS),
            original_size: be64(b, F_ORIGINAL_SIZE),
            current_size,
            geometry: Geometry {
                cylinders: u16::from_be_bytes([g[0], g[1]]),
                heads: g[2],
                sectors_per_track: g[3],
            },
            disk_type,
            checksum: stored,
            uuid: Uuid::from_bytes(arr(b, F_UUID)),
            saved_state: arr::<1>(b, F_SAVED_STATE) != [0],
        })
    }

    /// The 512 on-disk bytes, with the checksum computed.
    #[must_use]
    pub fn encode(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[F_COOKIE..F_COOKIE + 8].copy_from_slice(&FOOTER_COOKIE);
        b[F_FEATURES..F_FEATURES + 4].copy_from_slice(&self.features.to_be_bytes());
        b[F_VERSION..F_VERSION + 4].copy_from_slice(&self.version.to_be_bytes());
        b[F_DATA_OFFSET..F_DATA_OFFSET + 8].copy_from_slice(&self.data_offset.to_be_bytes());
        b[F_TIMESTAMP..F_TIMESTAMP + 4].copy_from_slice(&self.timestamp.to_be_bytes());
        b[F_CREATOR_APP..F_CREATOR_APP + 4].copy_from_slice(&self.creator_app);
        b[F_CREATOR_VERSION..F_CREATOR_VERSION + 4]
            .copy_from_slice(&self.creator_version.to_be_bytes());
        b[F_CREATOR_OS..F_CREATOR_OS + 4].copy_from_slice(&self.creator_host_os);
        b[F_ORIGINAL_SIZE..F_ORIGINAL_SIZE + 8].copy_from_slice(&self.original_size.to_be_bytes());
        b[F_CURRENT_SIZE..F_CURRENT_SIZE + 8].copy_from_slice(&self.current_size.to_be_bytes());
        b[F_GEOMETRY..F_GEOMETRY + 2].copy_from_slice(&self.geometry.cylinders.to_be_bytes());
        b[F_GEOMETRY + 2] = self.geometry.heads;
        b[F_GEOMETRY + 3] = self.geometry.sectors_per_track;
        b[F_DISK_TYPE..F_DISK_TYPE + 4].copy_from_slice(&self.disk_type.code().to_be_bytes());
        b[F_UUID..F_UUID + 16].copy_from_slice(self.uuid.as_bytes());
        b[F_SAVED_STATE] = u8::from(self.saved_state);
        let sum = checksum(&b, F_CHECKSUM);
        b[F_CHECKSUM..F_CHECKSUM + 4].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// The size qemu gives this disk: by CHS geometry for creators `vpc ` and `qemu`, by the
    /// current size otherwise. cairn reads `current_size`; `cairn vhd info` shows both.
    #[must_use]
    pub fn qemu_size(&self) -> u64 {
        if &self.creator_app == b"vpc " || &self.creator_app == b"qemu" {
            self.geometry.size()
        } else {
            self.current_size
        }
    }
}

/// A parent locator entry of the dynamic header: where a platform-specific path of the parent
/// is stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParentLocator {
    /// Platform code: 0 none, [`PLATFORM_W2RU`], [`PLATFORM_W2KU`], [`PLATFORM_MACX`]...
    pub platform_code: u32,
    /// Space reserved for the data: sectors per the spec, bytes as some writers put it.
    pub data_space: u32,
    /// Length of the path in bytes.
    pub data_length: u32,
    /// Absolute file offset of the path.
    pub data_offset: u64,
}

/// Platform code `W2ru`: path relative to the child, UTF-16 little-endian.
pub const PLATFORM_W2RU: u32 = u32::from_be_bytes(*b"W2ru");
/// Platform code `W2ku`: absolute path, UTF-16 little-endian.
pub const PLATFORM_W2KU: u32 = u32::from_be_bytes(*b"W2ku");
/// Platform code `Wi2r` (deprecated): relative path, bytes.
pub const PLATFORM_WI2R: u32 = u32::from_be_bytes(*b"Wi2r");
/// Platform code `Wi2k` (deprecated): absolute path, bytes.
pub const PLATFORM_WI2K: u32 = u32::from_be_bytes(*b"Wi2k");
/// Platform code `Mac `: a Mac OS alias blob (not readable here).
pub const PLATFORM_MAC: u32 = u32::from_be_bytes(*b"Mac ");
/// Platform code `MacX`: a file URL, UTF-8.
pub const PLATFORM_MACX: u32 = u32::from_be_bytes(*b"MacX");

impl ParentLocator {
    /// Bytes reserved for the data, reading `data_space` as sectors when that is consistent
    /// with the length and as bytes otherwise (both occur in the wild).
    #[must_use]
    pub fn reserved_bytes(&self) -> u64 {
        let as_sectors = u64::from(self.data_space) * SECTOR_SIZE;
        if u64::from(self.data_space) >= u64::from(self.data_length)
            && self.data_space.is_multiple_of(512)
            && self.data_space != 0
        {
            u64::from(self.data_space)
        } else {
            as_sectors
        }
    }

    /// Four-letter platform code as text.
    #[must_use]
    pub fn platform_name(&self) -> String {
        fourcc(self.platform_code.to_be_bytes())
    }
}

/// The dynamic disk header of a dynamic or differencing VHD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Absolute offset of the block allocation table.
    pub table_offset: u64,
    /// Header version; major 1 is the only one defined.
    pub version: u32,
    /// Entries in the BAT; at least ceil(size / block size).
    pub max_table_entries: u32,
    /// Bytes of data in one block, a power of two.
    pub block_size: u32,
    /// The checksum as stored (verified by [`Header::decode`]).
    pub checksum: u32,
    /// For a differencing disk: the parent footer's UUID.
    pub parent_uuid: Uuid,
    /// For a differencing disk: the parent's modification time, seconds since 2000.
    pub parent_timestamp: u32,
    /// For a differencing disk: the parent's file name (UTF-16 big-endian on disk).
    pub parent_name: String,
    /// The eight parent locator entries.
    pub locators: [ParentLocator; PARENT_LOCATOR_COUNT],
}

impl Header {
    /// A header for a new sparse disk written by cairn.
    #[must_use]
    pub fn new(table_offset: u64, max_table_entries: u32, block_size: u32) -> Self {
        Self {
            table_offset,
            version: HEADER_VERSION,
            max_table_entries,
            block_size,
            checksum: 0,
            parent_uuid: Uuid::nil(),
            parent_timestamp: 0,
            parent_name: String::new(),
            locators: [ParentLocator::default(); PARENT_LOCATOR_COUNT],
        }
    }

    /// Parses and validates a header read at absolute offset `at`.
    ///
    /// # Errors
    /// A wrong cookie or checksum, an unknown major version, a block size that is not a power
    /// of two in `[MIN_BLOCK_SIZE, MAX_BLOCK_SIZE]`, or a table offset not on a sector.
    pub fn decode(b: &[u8; HEADER_SIZE], at: u64) -> Result<Self, Error> {
        let (stored, version) = HEADER_FRAME.check(b, at)?;
        let block_size = be32(b, H_BLOCK_SIZE);
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(Error::Invalid {
                offset: at.saturating_add(H_BLOCK_SIZE as u64),
                what: format!(
                    "block size {block_size} is not a power of two between {MIN_BLOCK_SIZE} and \
                     {MAX_BLOCK_SIZE}"
                ),
            });
        }
        let table_offset = be64(b, H_TABLE_OFFSET);
        if !table_offset.is_multiple_of(SECTOR_SIZE) {
            return Err(Error::Invalid {
                offset: at.saturating_add(H_TABLE_OFFSET as u64),
                what: format!("table offset {table_offset:#x} is not on a sector boundary"),
            });
        }
        let units: Vec<u16> = b[H_PARENT_NAME..H_PARENT_NAME + PARENT_NAME_SIZE]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes(arr(c, 0)))
            .take_while(|&u| u != 0)
            .collect();
        let parent_name = String::from_utf16_lossy(&units);
        let mut locators = [ParentLocator::default(); PARENT_LOCATOR_COUNT];
        let entries = b
            .get(H_LOCATORS..)
            .unwrap_or_default()
            .chunks_exact(LOCATOR_SIZE);
        for (loc, e) in locators.iter_mut().zip(entries) {
            *loc = ParentLocator {
                platform_code: be32(e, 0),
                data_space: be32(e, 4),
                data_length: be32(e, 8),
                data_offset: be64(e, 16),
            };
        }
        Ok(Self {
            table_offset,
            version,
            max_table_entries: be32(b, H_MAX_ENTRIES),
            block_size,
            checksum: stored,
            parent_uuid: Uuid::from_bytes(arr(b, H_PARENT_UUID)),
            parent_timestamp: be32(b, H_PARENT_TIMESTAMP),
            parent_name,
            locators,
        })
    }

    /// The 1024 on-disk bytes, with the checksum computed. A parent name longer than 256
    /// UTF-16 code units is cut (the field has no room for more).
    #[must_use]
    #[expect(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        reason = "constant field offsets into a fixed-size array, checked by the const asserts"
    )]
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[H_COOKIE..H_COOKIE + 8].copy_from_slice(&HEADER_COOKIE);
        b[H_DATA_OFFSET..H_DATA_OFFSET + 8].copy_from_slice(&NO_DATA_OFFSET.to_be_bytes());
        b[H_TABLE_OFFSET..H_TABLE_OFFSET + 8].copy_from_slice(&self.table_offset.to_be_bytes());
        b[H_VERSION..H_VERSION + 4].copy_from_slice(&self.version.to_be_bytes());
        b[H_MAX_ENTRIES..H_MAX_ENTRIES + 4].copy_from_slice(&self.max_table_entries.to_be_bytes());
        b[H_BLOCK_SIZE..H_BLOCK_SIZE + 4].copy_from_slice(&self.block_size.to_be_bytes());
        b[H_PARENT_UUID..H_PARENT_UUID + 16].copy_from_slice(self.parent_uuid.as_bytes());
        b[H_PARENT_TIMESTAMP..H_PARENT_TIMESTAMP + 4]
            .copy_from_slice(&self.parent_timestamp.to_be_bytes());
        for (i, unit) in self
            .parent_name
            .encode_utf16()
            .take(PARENT_NAME_SIZE / 2)
            .enumerate()
        {
            let o = H_PARENT_NAME + 2 * i;
            b[o..o + 2].copy_from_slice(&unit.to_be_bytes());
        }
        for (i, loc) in self.locators.iter().enumerate() {
            let o = H_LOCATORS + i * LOCATOR_SIZE;
            b[o..o + 4].copy_from_slice(&loc.platform_code.to_be_bytes());
            b[o + 4..o + 8].copy_from_slice(&loc.data_space.to_be_bytes());
            b[o + 8..o + 12].copy_from_slice(&loc.data_length.to_be_bytes());
            b[o + 16..o + 24].copy_from_slice(&loc.data_offset.to_be_bytes());
        }
        let sum = checksum(&b, H_CHECKSUM);
        b[H_CHECKSUM..H_CHECKSUM + 4].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// Bytes of the sector bitmap in front of each block, padded to whole sectors.
    #[must_use]
    pub fn bitmap_size(&self) -> u64 {
        bitmap_size(self.block_size)
    }
}

/// Bytes of the sector bitmap of a block of `block_size`, padded to whole sectors.
#[must_use]
pub fn bitmap_size(block_size: u32) -> u64 {
    let bits = u64::from(block_size) / SECTOR_SIZE;
    bits.div_ceil(8)
        .div_ceil(SECTOR_SIZE)
        .saturating_mul(SECTOR_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_spec_examples() {
        // qemu's 104861184-byte example rounds down under the spec's formula.
        let g = Geometry::for_size(104_865_792);
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (1004, 12, 17));
        let g = Geometry::for_size(1 << 40);
        assert_eq!(
            (g.cylinders, g.heads, g.sectors_per_track),
            (65535, 16, 255)
        );
    }

    #[test]
    fn footer_round_trips_and_detects_corruption() {
        let f = Footer::new(DiskType::Dynamic, 1 << 30, Uuid::from_u128(7), 12345);
        let bytes = f.encode();
        let back = Footer::decode(&bytes, 0).expect("decode");
        assert_eq!(back.current_size, 1 << 30);
        assert_eq!(back.disk_type, DiskType::Dynamic);
        assert_eq!(back.uuid, Uuid::from_u128(7));
        let mut bad = bytes;
        bad[100] ^= 1;
        let err = Footer::decode(&bad, 4096).expect_err("corrupt footer must fail");
        assert!(err.to_string().contains("checksum"), "{err}");
        assert!(err.to_string().contains("4160"), "{err}");
    }

    #[test]
    fn header_round_trips_parent_name() {
        let mut h = Header::new(1536, 10, DEFAULT_BLOCK_SIZE);
        h.parent_name = "päreñt ☃.vhd".to_owned();
        h.parent_uuid = Uuid::from_u128(99);
        h.locators[0] = ParentLocator {
            platform_code: PLATFORM_W2RU,
            data_space: 512,
            data_length: 20,
            data_offset: 2048,
        };
        let back = Header::decode(&h.encode(), 512).expect("decode");
        assert_eq!(back.parent_name, h.parent_name);
        assert_eq!(back.locators[0], h.locators[0]);
        assert_eq!(back.parent_uuid, h.parent_uuid);
    }

    #[test]
    fn bitmap_sizes() {
        assert_eq!(bitmap_size(2 << 20), 512);
        assert_eq!(bitmap_size(512), 512);
        assert_eq!(bitmap_size(4 << 20), 1024);
    }
}
