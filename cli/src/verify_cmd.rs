//! `cairn verify`: chunks read and checked against their ids, locally or through a server, and
//! what a bad one damages named.

use std::time::Instant;

use anyhow::Result;
use cairn_gc::VerifyOptions;
use cairn_store::RecoveryPoint;
use chrono::{Duration, Utc};
use clap::Args;
use serde_json::json;

use crate::store_cmd::{PointFilter, StoreArg};
use crate::values::parse_duration;
use crate::words::human_bytes;

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage"))?;
    if (0.0..=100.0).contains(&v) && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{s}: give a percentage above 0 and at most 100"))
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  cairn verify --store /backups/store\n  \
    cairn verify --vm web01 --since 7d --json\n  cairn verify --sample 5\n  \
    cairn verify --since-last   (nightly: what no verify read since it was written)\n  \
    cairn verify --subset 3/7   (day 3 of a week that reads every chunk once)\n  \
    cairn verify --quick        (metadata only)\n\n\
    Exit status: 0 when every chunk checked is well, 1 when any is bad or missing (each is\n\
    listed with the points, VMs, disks and disk offsets it damages, and marked in the index so\n\
    that the next key backup stores a fresh copy), 3 when there was no point to check.")]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub filter: PointFilter,
    /// Read this percentage of the chunks, chosen at random (tree chunks always).
    #[arg(long, value_parser = parse_percent)]
    pub sample: Option<f64>,
    /// Only chunks of points made in this last stretch of time (90m, 12h, 7d, 2w).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Read part N of M of the data chunks (restic's --read-data-subset): runs 1/M to M/M
    /// read every chunk once, the parts fixed by chunk id (tree chunks are read every run).
    #[arg(long, value_parser = parse_subset, value_name = "N/M", conflicts_with = "sample")]
    pub subset: Option<(u32, u32)>,
    /// Read only the chunks no complete verify has read since they were written (what
    /// backups and gc wrote since): a nightly run that stays short.
    #[arg(long)]
    pub since_last: bool,
    /// Metadata only: the catalogue, the packs and the tree chunks, no data chunk (seconds on
    /// any store).
    #[arg(long, conflicts_with_all = ["sample", "subset", "since_last"])]
    pub quick: bool,
    /// An encrypted store: open every sealed chunk read with the store's key (asked before any
    /// work) and check it against its keyed id. Without it, verify checks what it can without
    /// the key: every frame's CRCs (bit rot), lengths, and the tree chunks' structure.
    #[arg(long)]
    pub key: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses `--subset N/M` (1 <= N <= M).
fn parse_subset(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?}: give N/M with 1 <= N <= M, such as 3/7");
    let (n, m) = s.split_once('/').ok_or_else(bad)?;
    let (n, m): (u32, u32) = (
        n.trim().parse().map_err(|_| bad())?,
        m.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || n > m {
        return Err(bad());
    }
    Ok((n, m))
}

pub fn verify(a: &VerifyArgs) -> Result<i32> {
    let filter = a.filter.filter();
    if let Some(r) = a.store.remote()? {
        if a.sample.is_some() || a.since.is_some() || a.subset.is_some() || a.since_last || a.quick
        {
            crate::usage!(
                "--sample, --since, --subset, --since-last and --quick are not taken through a \
                 server yet; verify every point, or run verify on the server's machine"
            );
        }
        return verify_remote(&r, &filter, a.json);
    }
    let (tz, keys) = {
        let store = crate::store_cmd::open_read(&a.store.store)?;
        crate::store_cmd::check_filter(&store, &filter)?;
        (store.config().tz(), store.chunk_keys().cloned())
    };
    let opts = VerifyOptions {
        filter,
        since: a.since.map(|d| Utc::now() - d),
        sample: a.sample.map(|p| p / 100.0),
        subset: a.subset,
        since_last: a.since_last,
        quick: a.quick,
        keys,
    };
    let bar = crate::progress::count(0, "verify");
    let r = cairn_gc::verify(&a.store.store, &opts, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    if a.json {
        crate::print_json(&r)?;
    } else {
        print_report(&r, tz);
    }
    // A store with no point to check is not "all well" to a monitor: 3, a partial result.
    Ok(if !r.clean() {
        1
    } else if r.points_in_scope == 0 {
        3
    } else {
        0
    })
}

/// The text report of a verify: one summary line, then what is wrong and what to do.
fn print_report(r: &cairn_gc::VerifyReport, tz: chrono_tz::Tz) {
    println!("{}", summary(r));
    for c in &r.catalogue {
        println!("index: {c}");
    }
    for p in &r.packs {
        println!("{p}");
    }
    for m in &r.misplaced {
        println!("{m}");
    }
    if r.unknown_but_referenced > 0 {
        println!(
            "{} still referenced under tree chunks that cannot be read: their points \
             cannot reach them until a key backup of the disk stores them again",
            crate::words::count(r.unknown_but_referenced, "chunk")
        );
    }
    print_damage(&r.damaged, tz);
    if r.marks_cleared > 0 {
        println!("{} chunks marked bad before read well now", r.marks_cleared);
    }
    if !r.damaged.is_empty() {
        println!("a key backup of each damaged disk (`cairn backup --key`) stores fresh copies");
    }
    if !r.catalogue.is_empty() {
        println!(
            "the next command that writes to the store settles what it can (publishes root \
             files, writes lost ones again from the index); `cairn repair --rebuild-index` \
             rebuilds the index from the root files"
        );
    }
}

/// The summary line: what was checked, and whether it is well.
fn summary(r: &cairn_gc::VerifyReport) -> String {
    let skipped = if r.chunks_skipped > 0 {
        format!(
            ", {} read whole by an earlier verify skipped",
            crate::words::count(r.chunks_skipped, "chunk")
        )
    } else {
        String::new()
    };
    format!(
        "checked {} of {} ({} read{skipped}) of {} in {:.1}s: {}",
        r.chunks_checked,
        crate::words::count(r.chunks_in_scope, "chunk"),
        human_bytes(r.bytes_read),
        crate::words::count(r.points_in_scope, "point"),
        r.seconds,
        if r.points_in_scope == 0 {
            "no points, nothing checked".to_owned()
        } else if r.clean() {
            "all well".to_owned()
        } else if r.damaged.is_empty() && r.catalogue.is_empty() {
            format!(
                "the chunks are well, but {} name a chunk of another length than its place",
                crate::words::count(r.misplaced.len() as u64, "place")
            )
        } else if r.damaged.is_empty() {
            format!(
                "the chunks are well, but {} between the root files and the index",
                crate::words::count(r.catalogue.len() as u64, "disagreement")
            )
        } else {
            format!(
                "{} bad or missing, damaging {} of {} {}",
                crate::words::count(r.damaged.len() as u64, "chunk"),
                crate::words::count(r.points_damaged, "point"),
                if r.vms_damaged.len() == 1 {
                    "VM"
                } else {
                    "VMs"
                },
                r.vms_damaged.join(", ")
            )
        }
    )
}

/// Each damaged chunk, and the points, disks and offsets it damages.
fn print_damage(damaged: &[cairn_gc::Damage], tz: chrono_tz::Tz) {
    for d in damaged {
        println!(
            "{} {} chunk {} ({}): {}",
            d.state,
            d.kind,
            d.chunk,
            d.location.as_deref().unwrap_or("no location"),
            d.what
        );
        for h in &d.points {
            let offs: Vec<String> = h.offsets.iter().take(8).map(u64::to_string).collect();
            println!(
                "  point {} {}/{} {} at disk offset {}{}",
                cairn_store::point::short_id(&h.point),
                h.vm,
                h.disk,
                crate::values::show_time(&h.time, tz),
                offs.join(", "),
                if h.offsets.len() > 8 { ", ..." } else { "" }
            );
        }
    }
}

/// Verify through a server: every chunk of every point the token sees (and the filter keeps)
/// read through the API, checked by the server and again here, and every damaged range named
/// with its point. A chunk several points share is read once per point.
fn verify_remote(
    r: &cairn_remote::Remote,
    filter: &cairn_store::select::Filter,
    json_out: bool,
) -> Result<i32> {
    use cairn_store::StoreRead;
    let all = r.points()?;
    filter.check(&all).map_err(anyhow::Error::msg)?;
    let points: Vec<RecoveryPoint> = all.into_iter().filter(|p| filter.matches(p)).collect();
    let total: u64 = points.iter().map(|p| p.size).sum();
    let bar = crate::progress::bytes(total, "verify");
    let started = Instant::now();
    let mut done = 0u64;
    let mut damaged = Vec::new();
    for p in &points {
        let found = std::thread::scope(|scope| -> Result<Vec<cairn_restore::Damaged>> {
            let mut reader = cairn_restore::PointReader::start(scope, r, p, None, true)?;
            while let Some((offset, data)) = reader.next_data()? {
                bar.set_position(done + offset + data.len() as u64);
            }
            Ok(reader.finish()?)
        })?;
        done += p.size;
        damaged.extend(found);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if json_out {
        crate::print_json(&json!({
            "store": r.url(), "points": points.len(), "bytes": total, "seconds": secs,
            "damaged": damaged.iter().map(crate::restore_cmd::damaged_json).collect::<Vec<_>>(),
        }))?;
    } else {
        for d in &damaged {
            println!("{}", crate::restore_cmd::damaged_line(d, ""));
        }
        println!(
            "verified {} ({}) through {} in {secs:.1}s: {}",
            crate::words::count(points.len() as u64, "point"),
            human_bytes(total),
            r.url(),
            if damaged.is_empty() {
                "all chunks good".to_owned()
            } else {
                format!("{} damaged ranges", damaged.len())
            }
        );
    }
    Ok(if damaged.is_empty() { 0 } else { 1 })
}
