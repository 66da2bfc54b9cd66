//! `cairn vhd info` and `cairn vhd check`: what a VHD says of itself, and whether it reads.

use super::{open_chain, open_vhd, vhd_time};
use crate::words::human_bytes;
use anyhow::Result;
use cairn_vhd::format::fourcc;
use cairn_vhd::{DiskType, Vhd};
use serde_json::json;
use std::fs::File;
use std::path::Path;

pub(super) fn describe(path: &Path, vhd: &mut Vhd<File>) -> Result<serde_json::Value> {
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

pub(super) fn info(path: &Path, as_json: bool) -> Result<i32> {
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
pub(super) fn print_sparse(vhd: &Vhd<File>, h: &cairn_vhd::Header, v: &serde_json::Value) {
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
pub(super) fn print_chain(chain: &serde_json::Value) {
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

pub(super) fn check(path: &Path, as_json: bool) -> Result<i32> {
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
