//! Opening a request's source: detect raw or VHD, choose how to read it (whole, or as a delta on
//! a parent point), and say what the point will record of it.

use std::fs::File;
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use cairn_store::{RecoveryPoint, RefLookup, SourceInfo, SourceKind, StoreRead, Walk};
use cairn_vhd::{Chain, DiskType, Vhd};

use crate::parent::choose_parent;
use crate::source::ChunkSource;
use crate::source::raw::{RawSource, SparseFileSource};
use crate::source::vhd::{Blocks, ChainBlocks, FileVhd, ParentRefs, SparseBlocks, VhdChunks};
use crate::stream::{self, Input, Spool, Stream};
use crate::{Error, Format, KeyMode, Request, Result};

/// A source ready to read.
pub(crate) struct Opened<'s> {
    /// What the point records of the source.
    pub(crate) info: SourceInfo,
    /// The chunks.
    pub(crate) src: Box<dyn ChunkSource + 's>,
    /// The disk's size, when known before reading (not for a raw stream).
    pub(crate) size: Option<u64>,
    /// The point a delta is applied to; `None` for a full read (a key backup).
    pub(crate) parent: Option<RecoveryPoint>,
    /// A spooled copy of stdin, removed when dropped.
    pub(crate) _spool: Option<Spool>,
    /// For a raw stream: set once read when it turned out to be a fixed VHD (its footer, at
    /// the end, was not stored).
    pub(crate) fixed_vhd: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Whether `path` is a named pipe or a character device: a stream, not a seekable file.
fn is_stream(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo() || m.file_type().is_char_device())
}

/// Opens `req.source` for a store of chunk size `chunk`; `input` is the stream to read when
/// the source is not a file (`-`).
pub(crate) fn open<'s>(
    store: &'s dyn StoreRead,
    req: &Request,
    input: Option<Input>,
    chunk: u32,
) -> Result<Opened<'s>> {
    let mut shown = req.source.display().to_string();
    if input.is_none()
        && let Some(uri) = req.source.to_str().filter(|s| cairn_nbd::is_nbd_uri(s))
    {
        return open_nbd(store, req, uri, chunk);
    }
    let mut input = input;
    if input.is_none()
        && let Some(url) = req.source.to_str().filter(|s| crate::http::is_http_url(s))
    {
        let (body, url_shown) = crate::http::open(url, &req.http)?;
        shown = url_shown;
        input = Some(body);
    }
    if req.changed_blocks.is_some() {
        return Err(Error::Refused(format!(
            "{shown}: --dirty-bitmap and --changed-blocks apply to NBD sources (nbd://...); a \
             differencing VHD says itself what changed"
        )));
    }
    let opened = match stream_input(req, input)? {
        Some(input) => open_stream(store, req, input, &shown, chunk)?,
        None => open_file(store, req, &req.source, &shown, chunk)?,
    };
    if opened.parent.is_none()
        && let Some(p) = &req.parent
    {
        return Err(Error::Refused(format!(
            "{shown}: --parent {} applies what changed to a point, but this source is a \
             {} read whole; drop --parent",
            p.short_id(),
            opened.info.kind
        )));
    }
    Ok(opened)
}

/// The stream to read: the one given, stdin for `-` (never a terminal), or a named pipe or
/// character device (it cannot seek: read as a stream, as stdin); `None` for a file.
fn stream_input(req: &Request, input: Option<Input>) -> Result<Option<Input>> {
    Ok(match input {
        Some(i) => Some(i),
        None if req.source == Path::new("-") => {
            if std::io::stdin().is_terminal() {
                return Err(Error::Refused(
                    "stdin is a terminal: pipe the disk in (`... | cairn backup --vm VM \
                     xvda=-`) or give its path"
                        .into(),
                ));
            }
            Some(Box::new(std::io::stdin()) as Input)
        }
        None if is_stream(&req.source) => {
            let f = std::fs::File::open(&req.source).map_err(|e| Error::Io {
                path: req.source.clone(),
                offset: 0,
                what: "opening",
                source: e,
            })?;
            Some(Box::new(f) as Input)
        }
        None => None,
    })
}

/// A stream: raw, a VHD read in one pass, or spooled (a VHD whose layout needs seeks) and
/// read as a file.
fn open_stream<'s>(
    store: &'s dyn StoreRead,
    req: &Request,
    input: Input,
    shown: &str,
    chunk: u32,
) -> Result<Opened<'s>> {
    Ok(match stream::open(input, shown, req, &req.spool_dir)? {
        Stream::Raw(reader) => {
            let fixed = std::sync::Arc::clone(&reader.fixed);
            let src = Box::new(RawSource::new(reader, shown.to_owned().into(), chunk));
            let mut o = full(SourceKind::Raw, shown, None, None, src);
            o.fixed_vhd = Some(fixed);
            o
        }
        Stream::Vhd(vhd) => {
            let info = SourceInfo {
                kind: vhd_kind(vhd.footer().disk_type),
                vhd_uuid: Some(vhd.footer().uuid.to_string()),
                path: shown.to_owned(),
            };
            let size = vhd.disk_size();
            if vhd.footer().disk_type != DiskType::Differencing {
                let blocks = SparseBlocks::new(*vhd, shown.to_owned().into());
                let src = Box::new(VhdChunks::new(blocks, chunk, None));
                return Ok(whole(info, Some(size), src));
            }
            if req.key == KeyMode::Forced {
                return Err(Error::Refused(
                    "a key backup reads the whole disk, and a differencing VHD on stdin comes \
                     without its parents: give the VHD's path (its parents beside it) or back \
                     up the full disk"
                        .into(),
                ));
            }
            let want = vhd.header().parent_uuid.to_string();
            let parent = choose_parent(store, req, shown, &want, size)?;
            let blocks = SparseBlocks::new(*vhd, shown.to_owned().into());
            delta(store, info, size, &parent, blocks, chunk)?
        }
        Stream::Spooled(spool) => {
            let mut opened = open_file(store, req, &spool.0, shown, chunk)?;
            opened._spool = Some(spool);
            opened
        }
    })
}

/// How a point names a VHD of this type as its source.
fn vhd_kind(t: DiskType) -> SourceKind {
    match t {
        DiskType::Fixed => SourceKind::VhdFixed,
        DiskType::Dynamic => SourceKind::VhdDynamic,
        DiskType::Differencing => SourceKind::VhdDifferencing,
    }
}

/// A full read.
fn full<'s>(
    kind: SourceKind,
    path: &str,
    vhd_uuid: Option<String>,
    size: Option<u64>,
    src: Box<dyn ChunkSource + 's>,
) -> Opened<'s> {
    let info = SourceInfo {
        kind,
        vhd_uuid,
        path: path.into(),
    };
    whole(info, size, src)
}

/// A full read of a source described by `info`.
fn whole<'s>(info: SourceInfo, size: Option<u64>, src: Box<dyn ChunkSource + 's>) -> Opened<'s> {
    Opened {
        info,
        src,
        size,
        parent: None,
        _spool: None,
        fixed_vhd: None,
    }
}

/// A delta applied to `parent`.
fn delta<'s, B: Blocks + 's>(
    store: &'s dyn StoreRead,
    info: SourceInfo,
    size: u64,
    parent: &RecoveryPoint,
    blocks: B,
    chunk: u32,
) -> Result<Opened<'s>> {
    let refs = RefLookup::new(Walk::new(store, parent)?);
    let parent_refs = ParentRefs { refs };
    Ok(Opened {
        info,
        src: Box::new(VhdChunks::new(blocks, chunk, Some(parent_refs))),
        size: Some(size),
        parent: Some(parent.clone()),
        _spool: None,
        fixed_vhd: None,
    })
}

/// Opens a file (or a spooled stream, shown as `shown`).
fn open_file<'s>(
    store: &'s dyn StoreRead,
    req: &Request,
    path: &Path,
    shown: &str,
    chunk: u32,
) -> Result<Opened<'s>> {
    let io_err = |what: &'static str| {
        let path: PathBuf = path.to_path_buf();
        move |source| Error::Io {
            path,
            offset: 0,
            what,
            source,
        }
    };
    let mut file = File::open(path).map_err(io_err("opening"))?;
    let mut head = Vec::with_capacity(512);
    (&mut file)
        .take(512)
        .read_to_end(&mut head)
        .map_err(io_err("reading"))?;
    let vhd = looks_like_vhd(&mut file).map_err(io_err("reading"))?;
    check_not_foreign(shown, &head, vhd, req)?;
    // A file named as a VHD that is none (a damaged one, random bytes, text, zeros): its bytes
    // would be stored as a raw disk without a word.
    if !vhd
        && req.format == Format::Auto
        && !req.force
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("vhd"))
    {
        return Err(Error::Refused(format!(
            "{shown} is named as a VHD but is none: no VHD footer (cookie \"conectix\") at its \
             end nor a copy at its start; a damaged VHD, or a raw image misnamed: check it with \
             `qemu-img info {shown}`; --format raw stores its bytes as a raw disk"
        )));
    }
    let is_vhd = match req.format {
        Format::Vhd => true,
        Format::Raw => false,
        Format::Auto => vhd,
    };
    if !is_vhd {
        let len = file
            .seek(SeekFrom::End(0))
            .and_then(|l| file.seek(SeekFrom::Start(0)).map(|_| l))
            .map_err(io_err("reading"))?;
        let src = Box::new(SparseFileSource::new(file, path.to_path_buf(), chunk, len));
        return Ok(full(SourceKind::Raw, shown, None, Some(len), src));
    }
    open_vhd_file(store, req, file, path, shown, chunk)
}

/// A VHD file: read whole (fixed, dynamic, or a key backup through its parents), or its blocks
/// applied to the point it differs from.
fn open_vhd_file<'s>(
    store: &'s dyn StoreRead,
    req: &Request,
    file: File,
    path: &Path,
    shown: &str,
    chunk: u32,
) -> Result<Opened<'s>> {
    let vhd = Vhd::open(file).map_err(|e| e.in_file(shown))?;
    let uuid = Some(vhd.footer().uuid.to_string());
    let size = vhd.disk_size();
    let kind = vhd_kind(vhd.disk_type());
    if vhd.disk_type() != DiskType::Differencing {
        let blocks = ChainBlocks::new(Chain::single(path.to_path_buf(), vhd));
        let src = Box::new(VhdChunks::new(blocks, chunk, None));
        return Ok(full(kind, shown, uuid, Some(size), src));
    }
    // A key backup reads the whole disk through the parent VHD files; when one is only due, a
    // delta whose parents are gone applies as usual.
    let chain = match req.key {
        KeyMode::No => None,
        KeyMode::Due => Chain::open(path, |p| File::open(p)).ok(),
        KeyMode::Forced => Some(Chain::open(path, |p| File::open(p)).map_err(|e| {
            Error::Refused(format!(
                "a key backup reads the whole disk through the VHD's parents, and they cannot \
                 be opened: {e}"
            ))
        })?),
    };
    let info = SourceInfo {
        kind,
        vhd_uuid: uuid,
        path: shown.to_owned(),
    };
    if let Some(chain) = chain {
        let blocks = ChainBlocks::new(chain);
        return Ok(whole(
            info,
            Some(size),
            Box::new(VhdChunks::new(blocks, chunk, None)),
        ));
    }
    let want = vhd
        .header()
        .map(|h| h.parent_uuid.to_string())
        .unwrap_or_default();
    let parent = choose_parent(store, req, shown, &want, size)?;
    let blocks = SparseBlocks::new(FileVhd { vhd, read: 0 }, path.to_path_buf());
    delta(store, info, size, &parent, blocks, chunk)
}

/// The disk image formats cairn does not read, by the magic at their start, and how to get
/// their content to cairn.
#[must_use]
pub fn foreign_format(head: &[u8]) -> Option<&'static str> {
    const KNOWN: [(&[u8], &str); 5] = [
        (b"QFI\xfb", "a qcow2 image"),
        (b"vhdxfile", "a VHDX image"),
        (b"KDMV", "a VMDK image (sparse extent)"),
        (b"COWD", "a VMDK image (ESX COWD extent)"),
        (b"# Disk DescriptorFile", "a VMDK descriptor"),
    ];
    /// A VDI's signature, 0xbeda107f little-endian at byte 64 (after a free-text banner).
    const VDI_SIGNATURE: [u8; 4] = [0x7f, 0x10, 0xda, 0xbe];
    if head.get(64..68) == Some(&VDI_SIGNATURE[..]) {
        return Some("a VirtualBox VDI image");
    }
    KNOWN
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|(_, what)| *what)
}

/// Refuses a source that is not what it would be read as: an image of another format read as a
/// raw disk (its container bytes would be stored as the disk), or a VHD read with
/// `--format raw`. `--force` reads it as told.
pub(crate) fn check_not_foreign(shown: &str, head: &[u8], vhd: bool, req: &Request) -> Result<()> {
    if req.force {
        return Ok(());
    }
    if let Some(what) = foreign_format(head)
        && req.format != Format::Vhd
    {
        return Err(Error::Refused(format!(
            "{shown} is {what}, not a raw disk or a VHD: convert it (`qemu-img convert -O raw \
             {shown} disk.raw`, or `-O vpc` for a VHD) or pipe its content \
             (`qemu-img convert -O raw {shown} /dev/stdout | cairn backup ... DISK=-`); \
             --force reads its bytes as a raw disk"
        )));
    }
    if vhd && req.format == Format::Raw {
        return Err(Error::Refused(format!(
            "{shown} is a VHD: --format raw would store the VHD file itself as the disk; drop \
             --format raw (or pass --force to store the file's bytes)"
        )));
    }
    Ok(())
}

/// Detects what a file is: a VHD when its last 512 bytes or first 8 bytes carry the footer
/// cookie.
fn looks_like_vhd(file: &mut File) -> std::io::Result<bool> {
    let len = file.seek(SeekFrom::End(0))?;
    let mut cookie = [0u8; 8];
    if len >= 512 {
        file.seek(SeekFrom::Start(len - 512))?;
        file.read_exact(&mut cookie)?;
        if &cookie == b"conectix" {
            return Ok(true);
        }
    }
    file.seek(SeekFrom::Start(0))?;
    let n = file.read(&mut cookie)?;
    Ok(n == 8 && &cookie == b"conectix")
}

/// The URI of an export as a point records it: an export name's query (XAPI's
/// `?session_id=...`, a secret) left out.
fn shown_uri(uri: &cairn_nbd::Uri) -> String {
    let mut u = uri.clone();
    if let Some((name, _)) = u.export.split_once('?') {
        u.export = name.to_owned();
    }
    u.to_string()
}

/// An NBD export: read whole (holes skipped), or only what changed since the parent point.
fn open_nbd<'s>(
    store: &'s dyn StoreRead,
    req: &Request,
    text: &str,
    chunk: u32,
) -> Result<Opened<'s>> {
    use crate::source::nbd::{ChangeSource, Changes, NbdSource};
    let uri = cairn_nbd::Uri::parse(text).map_err(|e| Error::Refused(e.to_string()))?;
    let shown = shown_uri(&uri);
    // A key backup (asked for, or due by policy) reads the whole disk: the server has it all.
    let incremental = req.changed_blocks.is_some() && req.key == KeyMode::No;
    let changes = match (&req.changed_blocks, incremental) {
        (Some(crate::ChangedBlocks::DirtyBitmap(name)), true) => {
            Some(ChangeSource::bitmap(name, 0))
        }
        (Some(crate::ChangedBlocks::File(path)), true) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
                path: path.clone(),
                offset: 0,
                what: "reading the changed blocks",
                source: e,
            })?;
            Some(ChangeSource::Known(Changes::parse(
                &text,
                &path.display().to_string(),
            )?))
        }
        _ => None,
    };
    let parent = if incremental {
        Some(crate::parent::latest_or_given(store, req, &shown)?)
    } else {
        None
    };
    let tls = if uri.tls {
        let ca = match &req.http.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| Error::Io {
                path: path.clone(),
                offset: 0,
                what: "reading the CA file",
                source: e,
            })?),
            None => None,
        };
        Some(
            cairn_nbd::tls::client_config(ca.as_deref())
                .map_err(|e| Error::Refused(format!("{shown}: {e}")))?,
        )
    } else {
        None
    };
    let src = NbdSource::open(uri, shown.clone(), req.nbd_connections, chunk, changes, tls)?;
    let size = src.size();
    if let Some(p) = &parent
        && p.size != size
    {
        return Err(Error::Refused(format!(
            "{shown}: the export is {size} bytes but the parent point {} is {} bytes: what \
             changed cannot be applied to it; back up the whole disk (--key)",
            p.short_id(),
            p.size
        )));
    }
    let info = SourceInfo {
        kind: SourceKind::Nbd,
        vhd_uuid: None,
        path: shown,
    };
    Ok(Opened {
        info,
        src: Box::new(src),
        size: Some(size),
        parent,
        _spool: None,
        fixed_vhd: None,
    })
}
