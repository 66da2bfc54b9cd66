//! Retention and integrity commands: prune, forget, protect, unprotect, gc, verify, policy.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cairn_gc::{GcOptions, Rules, VerifyOptions};
use cairn_store::{Policy, RecoveryPoint};
use chrono::{Duration, Utc};
use chrono_tz::Tz;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::store_cmd::{PointFilter, StoreArg, open_write};
use crate::table::{Align, Table};
use crate::words::human_bytes;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cairn prune --dry-run --store /backups/store --keep-last 3 --keep-daily 7 --keep-monthly 12\n  \
    cairn prune --vm web01 --disk xvda --keep-daily 14 --json\n\n\
    Rules apply per VM and disk, newest first, in the order within, last, hourly, daily, weekly\n\
    (ISO), monthly, yearly; each keeps the newest point of N periods (in the store's time zone)\n\
    that no earlier rule covered. Through a server (--server), the server applies the rules\n\
    and returns the same plan; an admin token is needed. Protected points are always kept. Dropping a point writes no\n\
    chunk data: run `cairn gc` to reclaim the space. (restic users: this is restic's\n\
    `forget --keep-*`; restic's `prune` is `cairn gc`.)")]
pub struct PruneArgs {
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub filter: PointFilter,
    /// Keep the N newest points.
    #[arg(long, default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest point of each of the N newest hours.
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: u32,
    /// ... days.
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    /// ... ISO weeks.
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: u32,
    /// ... months.
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: u32,
    /// ... years.
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep every point taken within this span (90m, 12h, 7d, 2w) before the disk's newest
    /// point (not before now: if backups stop, this keeps removing nothing more).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub keep_within: Option<Duration>,
    /// Show what would be kept and removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait for another writer instead of failing.
    #[arg(long)]
    pub wait: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

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

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  cairn protect --store /backups/store 3f2a9c1b07de\n  cairn unprotect 3f2a9c1b07de\n  \
    cairn protect --until 2027-06-30 web01/xvda@latest\n\n\
    A protection --until a date is lifted by time only: unprotect leaves it, a later date\n\
    extends it, an earlier one is refused (an admin token cannot shorten it either)."
)]
pub struct ProtectArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The point: an id (a unique prefix is enough) or VM/DISK@latest.
    pub point: String,
    /// Protect until this time (a date, or a date and time; the store's time zone unless one
    /// is given): nothing but time lifts it.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Wait for another writer instead of failing.
    #[arg(long)]
    pub wait: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

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

/// Parses `90m`, `12h`, `7d`, `2w`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.len().saturating_sub(1));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 90m, 12h, 7d, 2w)"))?;
    match unit {
        "m" => Ok(Duration::minutes(n)),
        "h" => Ok(Duration::hours(n)),
        "d" => Ok(Duration::days(n)),
        "w" => Ok(Duration::weeks(n)),
        _ => Err(format!("{s:?}: the unit is m, h, d or w")),
    }
}

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

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Set a VM's policy.
    #[command(
        after_help = "Example:\n  cairn policy set --store /backups/store --vm web01 --key-interval 7\n\n\
        In a content-addressed store every point is complete, so a key backup cuts no chain:\n\
        it reads the whole disk (through a differencing VHD's parents) instead of only what\n\
        changed, hashing every chunk. That re-checks the source against the store and stores a\n\
        fresh copy of any chunk that verify marked bad or missing: a periodic full read that heals."
    )]
    Set(PolicySetArgs),
    /// Show or set the store's time zone: times are shown in it, read in it when written
    /// without a zone, and retention counts its days, weeks and months in it.
    #[command(
        after_help = "Examples:\n  cairn policy timezone --store /backups/store\n  \
        cairn policy timezone --store /backups/store Europe/Paris"
    )]
    Timezone(PolicyTimezoneArgs),
    /// Show every VM's policy.
    #[command(after_help = "Example:\n  cairn policy show --store /backups/store --json")]
    Show(PolicyShowArgs),
    /// Show or set the store's minimum retention: no forget, prune or gc, on this machine or
    /// through a server, removes a point committed fewer days ago (nor the chunks it holds).
    #[command(
        after_help = "Examples:\n  cairn policy min-retention --store /backups/store\n  \
        cairn policy min-retention --store /backups/store 14d\n\n\
        It is set here only, on the store's machine with the store's write lock (stop `cairn\n\
        serve` first): no token, admin or not, can change it through the server. It guards\n\
        against a stolen token and a careless prune; it does not guard against root on this\n\
        machine, who can edit cairn.toml or delete the files. 0 lifts it."
    )]
    MinRetention(PolicyRetentionArgs),
}

#[derive(Debug, Args)]
pub struct PolicyRetentionArgs {
    /// The store folder (on the store's machine: never a server's URL).
    #[arg(long, env = "CAIRN_STORE")]
    pub store: PathBuf,
    /// Days (14 or 14d); 0 lifts it. Without it, the current one is shown.
    pub days: Option<String>,
    /// Wait for another writer instead of failing.
    #[arg(long)]
    pub wait: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PolicySetArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The VM: its name, or its --vm-uuid (a policy set for the UUID wins over one set for the
    /// name, so two VMs of one name can differ).
    #[arg(long)]
    pub vm: String,
    /// Every N-th backup of each disk is a key backup (0: never forced).
    #[arg(long)]
    pub key_interval: u32,
    /// Wait for another writer instead of failing.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct PolicyTimezoneArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The new time zone (an IANA name such as Europe/Paris or UTC); without it, the current
    /// one is shown.
    pub zone: Option<String>,
    /// Wait for another writer instead of failing.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct PolicyShowArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// A point in one line: `3f2a9c1b07de web01/xvda 2026-11-22T02:00:00+01:00` (in the store's
/// time zone, in which the rules count periods).
fn point_words(p: &RecoveryPoint, tz: Tz) -> String {
    format!(
        "{} {}/{} {}",
        p.short_id(),
        p.vm,
        p.disk,
        crate::values::show_time(&p.time, tz)
    )
}

/// `points` as [`points_table`] prints them, each with `what`.
fn brief_table(points: &[RecoveryPoint], tz: Tz, what: &str) {
    let rows: Vec<serde_json::Value> = points
        .iter()
        .map(|p| {
            json!({ "id": p.id, "vm": p.vm, "disk": p.disk,
                    "time": crate::values::show_time(&p.time, tz) })
        })
        .collect();
    points_table(rows.iter().map(|p| (p, what.to_owned())), "ACTION");
}

/// Points as a table of id, VM, disk and time (from the JSON the commands print), with a last
/// column saying what was done to each.
fn points_table<'a>(rows: impl IntoIterator<Item = (&'a serde_json::Value, String)>, last: &str) {
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("VM", Align::Left),
        ("DISK", Align::Left),
        ("TIME", Align::Left),
        (last, Align::Left),
    ]);
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    for (p, what) in rows {
        let id = text(p, "id");
        t.row([
            id[..12.min(id.len())].to_owned(),
            text(p, "vm"),
            text(p, "disk"),
            text(p, "time"),
            what,
        ]);
    }
    t.print();
}

pub fn prune(a: &PruneArgs) -> Result<i32> {
    let rules = Rules {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        within_seconds: a
            .keep_within
            .map_or(0, |d| u64::try_from(d.num_seconds()).unwrap_or(0)),
    };
    if !rules.any() {
        crate::usage!(
            "give at least one --keep-* rule (prune never removes every point of a disk)"
        );
    }
    let filter = a.filter.filter();
    let (doc, place) = match a.store.remote()? {
        Some(r) => (
            r.prune(&json!({ "rules": rules, "filter": filter, "dry_run": a.dry_run }))?,
            format!(" in {}", r.url()),
        ),
        None => {
            let store = if a.dry_run {
                crate::store_cmd::open_read(&a.store.store)?
            } else {
                open_write(&a.store.store, a.wait)?
            };
            let pruned = cairn_gc::prune(&store, &filter, &rules, a.dry_run)?;
            let mut doc = pruned.to_json(store.config().tz());
            // What `cairn gc` would free now (its own dry run): the space a prune gives back is
            // reclaimed by gc, so say how much up front. The store is closed first: a read-only
            // index opened beside a live writer can miss files the writer's compaction just
            // replaced.
            drop(store);
            if !a.dry_run && pruned.removed().next().is_some() {
                let opts = GcOptions {
                    dry_run: true,
                    ..GcOptions::default()
                };
                match cairn_gc::collect(&a.store.store, &opts, &|_| {}) {
                    Ok(g) => {
                        doc["gc_would_free"] = json!(g.bytes_freed);
                        doc["gc_would_copy"] = json!(g.bytes_copied);
                    }
                    Err(e) => crate::say!("note: cannot say what `cairn gc` would free: {e}"),
                }
            }
            (doc, String::new())
        }
    };
    if a.json {
        crate::print_json(&doc)?;
        return Ok(0);
    }
    render_prune(&doc, &place);
    Ok(0)
}

/// `cairn prune` for people, from its JSON document (the same from a store or a server).
fn render_prune(doc: &serde_json::Value, place: &str) {
    let n = |k: &str| doc[k].as_u64().unwrap_or(0);
    let mut points = doc["points"].as_array().cloned().unwrap_or_default();
    // A VM name with several histories (a UUID given later, a rename without one): each point
    // says which, so the split shows.
    let identity = |p: &serde_json::Value| {
        (
            p["vm"].as_str().unwrap_or_default().to_owned(),
            p["vm_uuid"].as_str().map(str::to_owned),
            p["pool"].as_str().map(str::to_owned),
        )
    };
    let mut ids: Vec<_> = points.iter().map(identity).collect();
    ids.sort();
    ids.dedup();
    let split: std::collections::BTreeSet<String> = ids
        .windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| w[0].0.clone())
        .collect();
    for p in &mut points {
        let (vm, uuid, pool) = identity(p);
        if split.contains(&vm) {
            let mut shown = vm;
            shown.push_str(&match (uuid, pool) {
                (None, None) => " (no uuid)".to_owned(),
                (u, p) => format!(
                    " ({})",
                    [
                        u.map(|u| format!("uuid {u}")),
                        p.map(|p| format!("pool {p}"))
                    ]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(", ")
                ),
            });
            p["vm"] = serde_json::json!(shown);
        }
    }
    points_table(
        points.iter().map(|p| {
            let what = match p["reason"].as_str() {
                _ if !p["keep"].as_bool().unwrap_or(false) => "remove".to_owned(),
                Some("held") => "keep (held by the store's minimum retention)".to_owned(),
                Some(r) => format!("keep ({r})"),
                None => "keep".to_owned(),
            };
            (p, what)
        }),
        "DECISION",
    );
    let (kept, removed) = (n("kept"), n("removed"));
    if doc["dry_run"].as_bool().unwrap_or(false) {
        let freed = doc["would_free_bytes"].as_u64().map_or(String::new(), |b| {
            format!(
                ", freeing up to {} ({} only they hold) at the next `cairn gc`",
                human_bytes(b),
                crate::words::count(n("would_free_chunks"), "chunk")
            )
        });
        println!(
            "dry run{place}: would keep {kept} and remove {}{freed}",
            crate::words::count(removed, "point"),
        );
    } else {
        println!(
            "kept {kept}, removed {}{place} in {:.3}s ({} now unreferenced; `cairn gc` reclaims them)",
            crate::words::count(removed, "point"),
            doc["forget_seconds"].as_f64().unwrap_or(0.0),
            crate::words::count(n("chunks_unreferenced"), "chunk")
        );
        if let Some(b) = doc["gc_would_free"].as_u64() {
            println!(
                "`cairn gc` would now free {} (copying {})",
                human_bytes(b),
                human_bytes(n("gc_would_copy"))
            );
        }
    }
    for vm in &split {
        println!(
            "note: VM {vm} has several histories (a UUID given later, or a rename): each is \
             pruned on its own; `cairn adopt` joins them"
        );
    }
    for w in doc["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or_default());
    }
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

pub fn protect(a: &ProtectArgs, on: bool) -> Result<i32> {
    if a.until.is_some() && !on {
        crate::usage!("--until is for protect: a protection until a time is lifted by time only");
    }
    let until = |tz: Tz| {
        a.until
            .as_deref()
            .map(|t| crate::values::parse_time(t, tz))
            .transpose()
    };
    let (p, tz) = match a.store.remote()? {
        Some(r) => {
            use cairn_store::StoreRead;
            let tz = r.config().tz();
            let p = r.resolve(&a.point)?;
            (r.protect(&p.id, on, until(tz)?)?, tz)
        }
        None => {
            let store = open_write(&a.store.store, a.wait)?;
            let tz = store.config().tz();
            let p = store.resolve(&a.point)?;
            let p = match until(tz)? {
                Some(u) => store.protect_until(&p, u)?,
                None => store.set_protected(&p, on)?,
            };
            (p, tz)
        }
    };
    let now = Utc::now();
    if a.json {
        crate::print_json(
            &json!({ "id": p.id, "protected": p.protected_at(now), "protected_until": p.protected_until.map(|t| crate::values::show_time(&t, tz)) }),
        )?;
    } else {
        let held = p
            .protected_until
            .filter(|u| *u > now)
            .map(|u| format!(" (protected until {})", crate::values::show_time(&u, tz)))
            .unwrap_or_default();
        println!(
            "{} {}{held}",
            if on { "protected" } else { "unprotected" },
            point_words(&p, tz)
        );
    }
    Ok(0)
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
    Ok(0)
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
    let tz = {
        let store = crate::store_cmd::open_read(&a.store.store)?;
        crate::store_cmd::check_filter(&store, &filter)?;
        store.config().tz()
    };
    let opts = VerifyOptions {
        filter,
        since: a.since.map(|d| Utc::now() - d),
        sample: a.sample.map(|p| p / 100.0),
        subset: a.subset,
        since_last: a.since_last,
        quick: a.quick,
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
        let skipped = if r.chunks_skipped > 0 {
            format!(
                ", {} read whole by an earlier verify skipped",
                crate::words::count(r.chunks_skipped, "chunk")
            )
        } else {
            String::new()
        };
        println!(
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
                    "{} bad or missing damage {} of {} {}",
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
        );
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
        for d in &r.damaged {
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
                    &h.point[..12.min(h.point.len())],
                    h.vm,
                    h.disk,
                    crate::values::show_time(&h.time, tz),
                    offs.join(", "),
                    if h.offsets.len() > 8 { ", ..." } else { "" }
                );
            }
        }
        if r.marks_cleared > 0 {
            println!("{} chunks marked bad before read well now", r.marks_cleared);
        }
        if !r.damaged.is_empty() {
            println!(
                "a key backup of each damaged disk (`cairn backup --key`) stores fresh copies"
            );
        }
        if !r.catalogue.is_empty() {
            println!(
                "the next command that writes to the store settles what it can (publishes root \
                 files, writes lost ones again from the index); `cairn repair --rebuild-index` \
                 rebuilds the index from the root files"
            );
        }
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

pub fn policy(cmd: &PolicyCommand) -> Result<i32> {
    match cmd {
        PolicyCommand::Set(a) => {
            let policy = Policy {
                key_interval: a.key_interval,
            };
            match a.store.remote()? {
                Some(r) => r.set_policy(&a.vm, &policy)?,
                None => open_write(&a.store.store, a.wait)?.set_policy(&a.vm, policy)?,
            }
            println!(
                "VM {}: {}",
                a.vm,
                describe(&Policy {
                    key_interval: a.key_interval
                })
            );
        }
        PolicyCommand::Timezone(a) => match &a.zone {
            None => {
                let reader = a.store.reader()?;
                println!("{}", reader.get().config().timezone);
            }
            Some(zone) => {
                let mut store = open_write(&a.store.store, a.wait)?;
                let before = store.config().timezone.clone();
                store.set_timezone(zone)?;
                println!(
                    "time zone {} (was {before}): times are shown in it and retention counts \
                     its days",
                    store.config().timezone
                );
            }
        },
        PolicyCommand::MinRetention(a) => min_retention(a)?,
        PolicyCommand::Show(a) => {
            let (timezone, all) = match a.store.remote()? {
                Some(r) => {
                    let v = r.policies()?;
                    let all: std::collections::BTreeMap<String, Policy> =
                        serde_json::from_value(v["vms"].clone())?;
                    (v["timezone"].as_str().unwrap_or("UTC").to_owned(), all)
                }
                None => {
                    let store = crate::store_cmd::open_read(&a.store.store)?;
                    (store.config().timezone.clone(), store.policies()?)
                }
            };
            if a.json {
                crate::print_json(&json!({ "timezone": timezone, "vms": all }))?;
            } else if all.is_empty() {
                println!("time zone {timezone}");
                println!("(no policies: no key backups are forced)");
            } else {
                println!("time zone {timezone}");
                for (vm, p) in &all {
                    println!("VM {vm}: {}", describe(p));
                }
            }
        }
    }
    Ok(0)
}

fn min_retention(a: &PolicyRetentionArgs) -> Result<()> {
    let shown = a.store.to_string_lossy();
    if shown.starts_with("https://") || shown.starts_with("http://") {
        bail!(
            "the minimum retention is set on the store's machine only (`--store /path/to/store`), \
             never through a server"
        );
    }
    let days = match &a.days {
        None => {
            crate::store_cmd::open_read(&a.store)?
                .config()
                .min_retention_days
        }
        Some(d) => {
            let days: u32 = d
                .strip_suffix('d')
                .unwrap_or(d)
                .parse()
                .with_context(|| format!("{d:?}: expected a number of days (14 or 14d)"))?;
            open_write(&a.store, a.wait)?.set_min_retention(days)?;
            days
        }
    };
    if a.json {
        crate::print_json(&json!({ "min_retention_days": days }))?;
    } else if days == 0 {
        println!("no minimum retention: prune and forget may remove any unprotected point");
    } else {
        println!(
            "minimum retention {days} days: no forget, prune or gc removes a point committed \
             fewer than {days} days ago"
        );
    }
    Ok(())
}

fn describe(p: &Policy) -> String {
    match p.key_interval {
        0 => "key backups only when asked (--key)".into(),
        1 => "every backup is a key backup".into(),
        n => format!(
            "every {} backup of each disk is a key backup",
            crate::words::ordinal(n)
        ),
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
