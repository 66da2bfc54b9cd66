//! `cairn forget`: the given points dropped (metadata only; `cairn gc` reclaims the space).

use std::time::Instant;

use anyhow::{Result, bail};
use chrono::Utc;
use clap::Args;
use serde_json::json;

use crate::point_rows::brief_table;
use crate::store_cmd::{StoreArg, open_write};
use crate::words::human_bytes;

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  cairn forget --store /backups/store 3f2a9c1b07de 8d01be44a2c9")]
pub struct ForgetArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Points: ids (a unique prefix is enough) or VM/DISK@latest.
    #[arg(required = true)]
    pub points: Vec<String>,
    /// Show which points would be dropped; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait for another writer instead of failing.
    #[arg(long)]
    pub wait: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `, freeing up to X (N chunks only they hold) at the next `cairn gc``: up to, since gc
/// leaves garbage in place within its `--max-unused` bound.
fn freed_words(f: &cairn_store::Freed) -> String {
    format!(
        ", freeing up to {} ({} only they hold) at the next `cairn gc`",
        human_bytes(f.stored_bytes),
        crate::words::count(f.chunks, "chunk")
    )
}

pub fn forget(a: &ForgetArgs) -> Result<i32> {
    if let Some(r) = a.store.remote()? {
        use cairn_store::StoreRead;
        let tz = r.config().tz();
        let points = a
            .points
            .iter()
            .map(|s| r.resolve(s))
            .collect::<Result<Vec<_>, _>>()?;
        let mut all = Vec::new();
        for p in &points {
            all.push(r.forget(&p.id, a.dry_run)?);
        }
        if !a.json {
            let verb = if a.dry_run { "would forget" } else { "forgot" };
            brief_table(&points, tz, verb);
        }
        if a.json {
            crate::print_json(&all)?;
        }
        return Ok(0);
    }
    let store = if a.dry_run {
        crate::store_cmd::open_read(&a.store.store)?
    } else {
        open_write(&a.store.store, a.wait)?
    };
    let tz = store.config().tz();
    let points = a
        .points
        .iter()
        .map(|s| store.resolve(s))
        .collect::<Result<Vec<_>, _>>()?;
    if a.dry_run {
        if let Some(p) = points.iter().find(|p| p.protected_at(Utc::now())) {
            bail!("point {} is protected: unprotect it first", p.short_id());
        }
        let freed = store.would_free(&points)?;
        if a.json {
            crate::print_json(&json!({
                "dry_run": true,
                "would_forget": points.iter().map(|p| &p.id).collect::<Vec<_>>(),
                "would_free_bytes": freed.stored_bytes,
                "would_free_chunks": freed.chunks,
            }))?;
        } else {
            brief_table(&points, tz, "would forget");
            println!("dry run{}", freed_words(&freed));
        }
        return Ok(0);
    }
    let started = Instant::now();
    let f = store.forget(&points)?;
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        crate::print_json(&json!({
            "forgotten": f.points.iter().map(|p| &p.id).collect::<Vec<_>>(),
            "chunks_unreferenced": f.chunks_unreferenced, "warnings": f.warnings, "seconds": secs,
        }))?;
    } else {
        brief_table(&f.points, tz, "forgot");
        println!(
            "{} chunks now unreferenced ({:.3}s); `cairn gc` reclaims them",
            f.chunks_unreferenced, secs
        );
        for w in &f.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(0)
}
