//! LVM2 logical volumes: the physical volumes among a disk's partitions (or the whole disk),
//! their volume groups' metadata, and each linear logical volume as a volume of the disk
//! (named as device-mapper names it: `VG-LV`, a `-` inside a name doubled).
//!
//! Read here (no crate reads LVM2), from LVM's own on-disk layout:
//! - the **label** (`LABELONE`, in one of the first four sectors, its CRC checked) and the PV
//!   header after it: the PV's UUID and its metadata areas;
//! - each metadata area's **header** (its CRC and magic checked) and its newest **metadata
//!   text** (a circular buffer: the text may wrap to the area's start; its CRC checked);
//! - the text itself, LVM's configuration language, parsed into sections and values
//!   ([`Config`]); every size bounded by the area it lies in.
//!
//! A logical volume is read when every segment is linear (`striped` over one stripe) and lies
//! on a physical volume of this disk; a striped, RAID, thin, cache or snapshot volume, or one
//! on another disk, is listed with why it is not read. LVM's CRC is CRC-32 from a start value
//! of `0xf597a6cf` with no final inversion.

use std::collections::HashMap;

use crate::disk::Piece;
use crate::{Partition, Result, Slice};

/// The label's first bytes.
const LABEL_ID: &[u8; 8] = b"LABELONE";
/// The label's type, for LVM2 physical volumes.
const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
/// A metadata area header's magic.
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
/// The CRC's start value.
const INITIAL_CRC: u32 = 0xf597_a6cf;
/// Bytes of a sector.
const SECTOR: u64 = 512;
/// The longest metadata text read (LVM's own default area is 1 MiB).
const MAX_TEXT: u64 = 16 << 20;
/// Nesting of sections read at most.
const MAX_DEPTH: usize = 32;

/// LVM's CRC of `data`.
fn crc(data: &[u8]) -> u32 {
    // crc32fast resumes from a finished CRC (inverted state); LVM's runs from a raw state and
    // is not inverted at the end.
    let mut h = crc32fast::Hasher::new_with_initial(!INITIAL_CRC);
    h.update(data);
    !h.finalize()
}

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// What went wrong reading a physical volume, said with where.
fn bad(what: &str, why: impl std::fmt::Display) -> crate::Error {
    crate::Error::Table {
        what: what.to_owned(),
        why: why.to_string(),
    }
}

/// A physical volume found on the disk.
#[derive(Debug, Clone)]
pub struct PhysicalVolume {
    /// Its UUID, without dashes.
    pub uuid: String,
    /// The volume (partition) that holds it, by name.
    pub on: String,
    /// The newest metadata text of its volume group.
    pub text: String,
}

/// Reads the LVM2 label and newest metadata of `part` (a volume whose first bytes say
/// `LABELONE`); `None` when it holds no label.
///
/// # Errors
/// A label, metadata area or text whose checksum or bounds are wrong, named with its offset.
pub fn physical_volume(name: &str, part: &Slice) -> Result<Option<PhysicalVolume>> {
    let mut head = vec![0u8; (4 * SECTOR).min(part.len()) as usize];
    part.read_at(0, &mut head)?;
    let Some((k, label)) = head
        .chunks(SECTOR as usize)
        .enumerate()
        .find(|(_, s)| s.starts_with(LABEL_ID))
    else {
        return Ok(None);
    };
    let here = format!("{name}: LVM label at byte {}", k as u64 * SECTOR);
    if label.len() < SECTOR as usize || le64(label, 8) != k as u64 {
        return Err(bad(&here, "its sector number is not where it lies"));
    }
    if crc(&label[20..]) != le32(label, 16) {
        return Err(bad(&here, "its CRC does not match"));
    }
    if label.get(24..32) != Some(LABEL_TYPE.as_slice()) {
        return Err(bad(&here, "not an LVM2 label"));
    }
    let pv = le32(label, 20) as usize;
    if !(32..=SECTOR as usize - 48).contains(&pv) {
        return Err(bad(&here, format!("its PV header at {pv} lies outside it")));
    }
    let uuid = String::from_utf8_lossy(&label[pv..pv + 32]).into_owned();
    // Data areas, then metadata areas: (offset, size) pairs, each list ended by zeros.
    let mut at = pv + 40;
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        loop {
            let (off, size) = (le64(label, at), le64(label, at + 8));
            at += 16;
            if off == 0 && size == 0 {
                break;
            }
            if at + 16 > SECTOR as usize {
                return Err(bad(&here, "its area lists run past its sector"));
            }
            list.push((off, size));
        }
    }
    let mut newest: Option<(i64, String)> = None;
    let mut first_error = None;
    for &(off, size) in &lists[1] {
        match metadata_text(name, part, off, size) {
            Ok(text) => {
                let seqno = Config::parse(&text)
                    .ok()
                    .and_then(|c| c.sections().next().and_then(|(_, vg)| vg.int("seqno")))
                    .unwrap_or(0);
                if newest.as_ref().is_none_or(|(s, _)| seqno > *s) {
                    newest = Some((seqno, text));
                }
            }
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    match (newest, first_error) {
        (Some((_, text)), _) => Ok(Some(PhysicalVolume {
            uuid,
            on: name.to_owned(),
            text,
        })),
        (None, Some(e)) => Err(e),
        (None, None) => Err(bad(&here, "no metadata area")),
    }
}

/// The newest metadata text of the area of `size` bytes at `off` of `part`.
fn metadata_text(name: &str, part: &Slice, off: u64, size: u64) -> Result<String> {
    let here = format!("{name}: LVM metadata area at byte {off}");
    if size < 2 * SECTOR || off.checked_add(size).is_none_or(|e| e > part.len()) {
        return Err(bad(
            &here,
            format!("its {size} bytes lie outside the volume"),
        ));
    }
    let mut h = [0u8; SECTOR as usize];
    part.read_at(off, &mut h)?;
    if crc(&h[4..]) != le32(&h, 0) {
        return Err(bad(&here, "its header's CRC does not match"));
    }
    if &h[4..20] != MDA_MAGIC || le32(&h, 20) != 1 || le64(&h, 24) != off || le64(&h, 32) != size {
        return Err(bad(&here, "its header is not an LVM2 metadata area's"));
    }
    // The first location: the committed metadata (offset from the area's start).
    let (text_at, len, sum) = (le64(&h, 40), le64(&h, 48), le32(&h, 56));
    let ring = size - SECTOR;
    if len == 0 || len > ring.min(MAX_TEXT) || !(SECTOR..size).contains(&text_at) {
        return Err(bad(
            &here,
            format!("its text of {len} bytes at {text_at} lies outside it"),
        ));
    }
    let mut text = vec![0u8; len as usize];
    let first = len.min(size - text_at) as usize;
    part.read_at(off + text_at, &mut text[..first])?;
    // The rest wrapped to the ring's start, just after the header.
    part.read_at(off + SECTOR, &mut text[first..])?;
    if crc(&text) != sum {
        return Err(bad(&here, "its text's CRC does not match"));
    }
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    String::from_utf8(text[..end].to_vec()).map_err(|_| bad(&here, "its text is not UTF-8"))
}

/// A value of LVM's configuration language.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A number.
    Int(i64),
    /// A string.
    Str(String),
    /// A list of values.
    List(Vec<Value>),
    /// A section of named values.
    Section(Config),
}

/// A section: its entries in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    entries: Vec<(String, Value)>,
}

impl Config {
    /// Parses `text`.
    ///
    /// # Errors
    /// Text that is not LVM's configuration language, named with its line.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let tokens = tokens(text)?;
        let mut at = 0;
        let c = section(&tokens, &mut at, 0)?;
        if let Some((line, t)) = tokens.get(at) {
            return Err(format!(
                "line {line}: {t:?} where nothing more was expected"
            ));
        }
        Ok(c)
    }

    /// The value named `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The number named `key`.
    #[must_use]
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The string named `key`.
    #[must_use]
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The section named `key`.
    #[must_use]
    pub fn section(&self, key: &str) -> Option<&Config> {
        match self.get(key)? {
            Value::Section(c) => Some(c),
            _ => None,
        }
    }

    /// Its sections, by name.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Config)> {
        self.entries.iter().filter_map(|(k, v)| match v {
            Value::Section(c) => Some((k.as_str(), c)),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Int(i64),
    Punct(char),
}

fn tokens(text: &str) -> std::result::Result<Vec<(usize, Token)>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => while chars.next_if(|&c| c != '\n').is_some() {},
            '{' | '}' | '[' | ']' | '=' | ',' => out.push((line, Token::Punct(c))),
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("line {line}: a string never ends")),
                        Some('"') => break,
                        Some('\\') => s.extend(chars.next()),
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            s.push(c);
                        }
                    }
                }
                out.push((line, Token::Str(s)));
            }
            c if c.is_ascii_digit() || c == '-' => {
                let mut s = String::from(c);
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    s.push(d);
                }
                // A float (LVM writes none in VG metadata) reads as its whole part.
                if chars.next_if_eq(&'.').is_some() {
                    while chars.next_if(char::is_ascii_digit).is_some() {}
                }
                let n = s
                    .parse()
                    .map_err(|_| format!("line {line}: {s:?} is not a number"))?;
                out.push((line, Token::Int(n)));
            }
            c if c.is_alphanumeric() || c == '_' || c == '.' || c == '+' => {
                let mut s = String::from(c);
                while let Some(d) = chars.next_if(|&d| d.is_alphanumeric() || "_.+-".contains(d)) {
                    s.push(d);
                }
                out.push((line, Token::Word(s)));
            }
            other => return Err(format!("line {line}: unexpected {other:?}")),
        }
    }
    Ok(out)
}

/// Entries up to a `}` (or the end, at depth 0).
fn section(
    t: &[(usize, Token)],
    at: &mut usize,
    depth: usize,
) -> std::result::Result<Config, String> {
    if depth > MAX_DEPTH {
        return Err("sections nested too deep".into());
    }
    let mut c = Config::default();
    loop {
        let Some((line, tok)) = t.get(*at) else {
            return if depth == 0 {
                Ok(c)
            } else {
                Err("a section never ends".into())
            };
        };
        let line = *line;
        *at += 1;
        let key = match tok {
            Token::Punct('}') if depth > 0 => return Ok(c),
            Token::Word(w) | Token::Str(w) => w.clone(),
            other => return Err(format!("line {line}: {other:?} where a name was expected")),
        };
        match t.get(*at).map(|(_, t)| t) {
            Some(Token::Punct('{')) => {
                *at += 1;
                let inner = section(t, at, depth + 1)?;
                c.entries.push((key, Value::Section(inner)));
            }
            Some(Token::Punct('=')) => {
                *at += 1;
                let v = value(t, at, line)?;
                c.entries.push((key, v));
            }
            _ => {
                return Err(format!(
                    "line {line}: {key:?} is followed by neither = nor {{"
                ));
            }
        }
    }
}

fn value(t: &[(usize, Token)], at: &mut usize, line: usize) -> std::result::Result<Value, String> {
    let tok = t.get(*at).map(|(_, t)| t.clone());
    *at += 1;
    match tok {
        Some(Token::Int(n)) => Ok(Value::Int(n)),
        Some(Token::Str(s) | Token::Word(s)) => Ok(Value::Str(s)),
        Some(Token::Punct('[')) => {
            let mut items = Vec::new();
            loop {
                match t.get(*at).map(|(_, t)| t) {
                    Some(Token::Punct(']')) => {
                        *at += 1;
                        return Ok(Value::List(items));
                    }
                    Some(Token::Punct(',')) => *at += 1,
                    Some(_) => items.push(value(t, at, line)?),
                    None => return Err(format!("line {line}: a list never ends")),
                }
            }
        }
        other => Err(format!("line {line}: {other:?} where a value was expected")),
    }
}

/// A logical volume found: as a volume of the disk, or why it is not read.
pub type Found = std::result::Result<Partition, (String, String)>;

/// The logical volumes of the volume groups whose physical volumes are `pvs`: each a volume
/// of the disk (its pieces on the volumes `volumes` names), or its name and why it is not
/// read.
#[must_use]
pub fn logical_volumes(pvs: &[PhysicalVolume], volumes: &[Partition]) -> Vec<Found> {
    // One metadata text per volume group: the newest of its PVs'.
    let mut groups: HashMap<String, (i64, Config)> = HashMap::new();
    for pv in pvs {
        let Ok(config) = Config::parse(&pv.text) else {
            continue;
        };
        let Some((name, vg)) = config.sections().next() else {
            continue;
        };
        let seqno = vg.int("seqno").unwrap_or(0);
        if groups.get(name).is_none_or(|(s, _)| seqno > *s) {
            groups.insert(name.to_owned(), (seqno, vg.clone()));
        }
    }
    let mut names: Vec<&String> = groups.keys().collect();
    names.sort();
    let mut out = Vec::new();
    for vg_name in names {
        let vg = &groups[vg_name].1;
        let Some(lvs) = vg.section("logical_volumes") else {
            continue;
        };
        for (lv_name, lv) in lvs.sections() {
            let name = format!(
                "{}-{}",
                vg_name.replace('-', "--"),
                lv_name.replace('-', "--")
            );
            out.push(
                linear(vg, lv, pvs, volumes)
                    .map(|pieces| {
                        let size = pieces.last().map_or(0, |p| p.at + p.len);
                        let start = pieces.first().map_or(0, |p| p.disk);
                        Partition {
                            name: name.clone(),
                            label: Some(lv_name.to_owned()),
                            kind: format!("LVM2 logical volume of {vg_name}"),
                            start,
                            size,
                            pieces,
                        }
                    })
                    .map_err(|why| (name, why)),
            );
        }
    }
    out
}

/// The pieces of logical volume `lv` of `vg`, if every segment is linear and on this disk.
fn linear(
    vg: &Config,
    lv: &Config,
    pvs: &[PhysicalVolume],
    volumes: &[Partition],
) -> std::result::Result<Vec<Piece>, String> {
    let extent = vg
        .int("extent_size")
        .and_then(|n| u64::try_from(n).ok())
        .filter(|&n| n > 0)
        .ok_or("its group's extent size is missing")?
        * SECTOR;
    let physical = vg
        .section("physical_volumes")
        .ok_or("its group lists no physical volume")?;
    let mut segments: Vec<&Config> = lv.sections().map(|(_, s)| s).collect();
    segments.sort_by_key(|s| s.int("start_extent").unwrap_or(i64::MAX));
    let mut pieces = Vec::new();
    let mut next = 0u64;
    for seg in segments {
        let number = |k: &str| {
            seg.int(k)
                .and_then(|n| u64::try_from(n).ok())
                .ok_or(format!("a segment's {k} is missing"))
        };
        let kind = seg.str("type").unwrap_or("?");
        if kind != "striped" || seg.int("stripe_count") != Some(1) {
            return Err(format!(
                "a {kind} volume{} (cairn reads linear volumes)",
                seg.int("stripe_count")
                    .filter(|&n| n > 1)
                    .map(|n| format!(" over {n} stripes"))
                    .unwrap_or_default()
            ));
        }
        let (start, count) = (number("start_extent")?, number("extent_count")?);
        if start != next {
            return Err(format!("its segments leave a gap at extent {next}"));
        }
        let Some(Value::List(stripe)) = seg.get("stripes") else {
            return Err("a segment names no physical volume".into());
        };
        let (Some(Value::Str(pv_name)), Some(Value::Int(pv_extent))) =
            (stripe.first(), stripe.get(1))
        else {
            return Err("a segment's stripe is not a volume and an extent".into());
        };
        let pv = physical
            .section(pv_name)
            .ok_or(format!("its physical volume {pv_name} is not in its group"))?;
        let uuid: String = pv
            .str("id")
            .unwrap_or("")
            .chars()
            .filter(|&c| c != '-')
            .collect();
        let on = pvs
            .iter()
            .find(|p| p.uuid == uuid)
            .ok_or(format!("its physical volume {pv_name} is on another disk"))?;
        let holder = volumes
            .iter()
            .find(|v| v.name == on.on)
            .ok_or(format!("the volume holding {pv_name} is gone"))?;
        let pe_start = pv
            .int("pe_start")
            .and_then(|n| u64::try_from(n).ok())
            .ok_or(format!("{pv_name}'s pe_start is missing"))?
            * SECTOR;
        let first = u64::try_from(*pv_extent).map_err(|_| "a negative extent".to_owned())?;
        let (within, len) = first
            .checked_mul(extent)
            .and_then(|o| o.checked_add(pe_start))
            .zip(count.checked_mul(extent))
            .ok_or("a segment's extents overflow")?;
        if within.checked_add(len).is_none_or(|e| e > holder.size) {
            return Err(format!(
                "a segment's {len} bytes at byte {within} of {} lie past its end",
                holder.name
            ));
        }
        // The holder may itself lie in pieces (a PV on a logical volume is not read: LVM's
        // own default filter skips them too); a partition has one.
        let [base] = holder.pieces.as_slice() else {
            return Err(format!("{} is not one run of the disk", holder.name));
        };
        pieces.push(Piece {
            at: next * extent,
            disk: base.disk + within,
            len,
        });
        next += count;
    }
    if pieces.is_empty() {
        return Err("it has no segment".into());
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvm_text_parses_with_comments_lists_and_nesting() {
        let text = "vg0 {\nid = \"abc-def\"\nseqno = 7 # a comment\nstatus = [\"READ\", \"WRITE\"]\n\
                    logical_volumes {\nroot {\nsegment1 {\nstripes = [\n\"pv0\", 12\n]\n}\n}\n}\n}\n\
                    contents = \"Text Format Volume Group\"\nversion = 1\n";
        let c = Config::parse(text).expect("parses");
        let (name, vg) = c.sections().next().expect("vg");
        assert_eq!(name, "vg0");
        assert_eq!(vg.int("seqno"), Some(7));
        assert_eq!(vg.str("id"), Some("abc-def"));
        let seg = vg
            .section("logical_volumes")
            .and_then(|l| l.section("root"))
            .and_then(|r| r.section("segment1"))
            .expect("segment");
        assert_eq!(
            seg.get("stripes"),
            Some(&Value::List(vec![Value::Str("pv0".into()), Value::Int(12)]))
        );
    }

    #[test]
    fn broken_text_is_an_error_naming_its_line_never_a_panic() {
        for (text, line) in [
            ("vg {\nseqno = 1\n", None),
            ("vg {\nseqno = = 1\n}", Some("line 2")),
            ("vg {\nid = \"never ends\n}", None),
            ("a = [1, 2\n", None),
            ("}", Some("line 1")),
            ("x = 99999999999999999999999", Some("line 1")),
        ] {
            let e = Config::parse(text).expect_err(text);
            if let Some(l) = line {
                assert!(e.contains(l), "{text:?}: {e}");
            }
        }
        let deep = "a {".repeat(100) + &"}".repeat(100);
        assert!(Config::parse(&deep).is_err());
        // Any bytes: an answer, never a panic.
        let mut seed = 7u64;
        for _ in 0..2000 {
            let n = (seed % 64) as usize;
            let s: String = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    b"ab1-{}[]=,\"# \n"[(seed >> 33) as usize % 14] as char
                })
                .collect();
            let _ = Config::parse(&s);
        }
    }

    #[test]
    fn the_crc_is_lvms() {
        // LVM's calc_crc over nothing is its start value; over bytes, CRC-32's table with that
        // start and no final inversion.
        assert_eq!(crc(&[]), INITIAL_CRC);
        let mut raw = INITIAL_CRC;
        for &b in b"LVM2" {
            raw ^= u32::from(b);
            for _ in 0..8 {
                raw = if raw & 1 == 1 {
                    (raw >> 1) ^ 0xEDB8_8320
                } else {
                    raw >> 1
                };
            }
        }
        assert_eq!(crc(b"LVM2"), raw);
    }
}
