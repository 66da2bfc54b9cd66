//! `cairn gc`: the space of chunks no point references reclaimed.

use std::time::Instant;

use anyhow::{Context, Result};
use cairn_gc::GcOptions;
use chrono::Duration;
use clap::Args;
use serde_json::json;

use crate::store_cmd::StoreArg;
use crate::values::parse_duration;
use crate::words::human_bytes;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cairn gc --store /backups/store --dry-run\n  cairn gc --json\n\n\
    gc plans and copies without blocking backups; it takes the write lock (waiting for a running\n\
    backup to commit) only for the final check, one index batch and deleting files. (restic\n\
    users: this is restic's `prune`; restic's `forget --keep-*` is `cairn prune`.)"
)]
pub struct GcArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Show what would be freed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Rewrite packs, most garbage first, until the garbage left is at most this percentage of
    /// the store's pack bytes (restic's --max-unused).
    #[arg(long, default_value_t = 5.0, conflicts_with = "repack_below")]
    pub max_unused: f64,
    /// Instead: rewrite every pack whose live share is under this percentage.
    #[arg(long)]
    pub repack_below: Option<f64>,
    /// A store whose packs are in a bucket: objects no index entry names (a killed upload's)
    /// are deleted once older than this (90m, 12h, 7d); another process may be uploading
    /// younger ones.
    #[arg(long, value_parser = parse_duration, default_value = "1d", value_name = "DURATION")]
    pub orphan_grace: Duration,
    /// Let quarantined packs go (those `cairn repair` could not read whole, kept until now):
    /// what of them is still referenced and readable is copied out first, the rest is lost.
    #[arg(long)]
    pub drop_quarantined: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn gc(a: &GcArgs) -> Result<i32> {
    let Some(mut opts) = GcOptions::from_percent(a.dry_run, a.max_unused, a.repack_below) else {
        crate::usage!("--max-unused and --repack-below are percentages from 0 to 100");
    };
    opts.orphan_grace = a
        .orphan_grace
        .to_std()
        .map_err(|_| anyhow::anyhow!("--orphan-grace cannot be negative"))?;
    opts.drop_quarantined = a.drop_quarantined;
    let spinner = crate::progress::spinner("gc");
    let started = Instant::now();
    let r = match a.store.remote()? {
        Some(remote) => {
            spinner.set_message(format!("collecting in {}", remote.url()));
            let body = json!({ "dry_run": a.dry_run, "max_unused": a.max_unused, "repack_below": a.repack_below, "drop_quarantined": a.drop_quarantined });
            serde_json::from_value(remote.gc(&body)?)?
        }
        None => cairn_gc::collect(&a.store.store, &opts, &|msg| {
            spinner.set_message(msg.to_owned())
        })
        .context("garbage collection failed; what the store holds is unchanged or complete")?,
    };
    spinner.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["seconds"] = json!(secs);
        crate::print_json(&v)?;
    } else {
        say_collected(&r, secs);
    }
    Ok(0)
}

/// What a collection freed, copied and left, and why.
fn say_collected(r: &cairn_gc::GcReport, secs: f64) {
    let verb = if r.dry_run { "would free" } else { "freed" };
    println!(
        "{verb} {} ({}): {} deleted, {} rewritten into {} ({} copied), {} ({}); {} of garbage left (within the bound); {:.2}s",
        human_bytes(r.bytes_freed),
        crate::words::count(r.chunks_freed, "chunk"),
        crate::words::count(r.packs_deleted, "pack"),
        r.packs_rewritten,
        r.packs_written,
        human_bytes(r.bytes_copied),
        crate::words::count(r.orphan_packs, "orphan pack"),
        human_bytes(r.orphan_bytes),
        human_bytes(r.garbage_bytes_kept),
        secs
    );
    if r.dry_run && r.orphan_packs > 0 {
        println!("note: unindexed packs belong to killed backups, or to a backup running now");
    }
    if r.rewrites_skipped_for_space > 0 {
        println!(
            "{} not rewritten: the disk has no room for their live chunks now (free space, \
             then run gc again)",
            crate::words::count(r.rewrites_skipped_for_space, "pack")
        );
    }
    if r.readers_waited_for > 0 {
        println!(
            "{} of old packs left in place for {} that started before the swap; the next \
             `cairn gc` deletes them",
            human_bytes(r.bytes_left_for_readers),
            crate::words::count(r.readers_waited_for, "running reader")
        );
    }
    for b in &r.bad_chunks {
        eprintln!("warning: {b} (left in place and marked bad; run `cairn verify`)");
    }
    if r.reserve_given_up {
        println!(
            "the disk was nearly full: the store's 1 MiB reserve was given up to start; the \
             next writer on a disk with room keeps it again"
        );
    }
    for q in &r.quarantined_kept {
        println!("kept quarantined {q}");
    }
    if !r.quarantined_kept.is_empty() {
        println!(
            "quarantined packs are kept whole: `cairn gc --drop-quarantined` copies out what \
             of them is still referenced and deletes them"
        );
    }
    if r.quarantined_dropped > 0 {
        println!(
            "{} let go",
            crate::words::count(r.quarantined_dropped, "quarantined pack")
        );
    }
}
