//! Retention and integrity commands: prune, forget, protect, unprotect, gc, verify, policy.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cairn_gc::{GcOptions, Keep, Rules, VerifyOptions};
use cairn_store::{Policy, RecoveryPoint};
use chrono::{Duration, Utc};
use chrono_tz::Tz;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::store_cmd::{PointFilter, StoreArg, open_write};
use crate::words::human_bytes;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cairn prune --dry-run --store /backups/store --keep-last 3 --keep-daily 7 --keep-monthly 12\n  \
    cairn prune --vm web01 --disk xvda --keep-daily 14 --json\n\n\
    Rules apply per VM and disk, newest first, in the order last, hourly, daily, weekly (ISO),\n\
    monthly, yearly; each keeps the newest point of N periods (in the store's time zone)\n\
    that no earlier rule covered. Protected points are always kept. Dropping a point writes no\n\
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
    cairn verify --vm web01 --since 7d --json\n  cairn verify --sample 5\n\n\
    Exit status: 0 when every chunk checked is well, 1 when any is bad or missing (each is\n\
    listed with the points, VMs, disks and disk offsets it damages, and marked in the index so\n\
    that the next key backup stores a fresh copy).")]
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
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
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

fn point_row(p: &RecoveryPoint, tz: Tz) -> String {
    // In the store's time zone, in which the rules count periods.
    format!(
        "{:<12}  {:<16} {:<8} {}",
        p.short_id(),
        p.vm,
        p.disk,
        crate::values::show_time(&p.time, tz)
    )
}

pub fn prune(a: &PruneArgs) -> Result<i32> {
    let rules = Rules {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
    };
    if !rules.any() {
        bail!("give at least one --keep-* rule (prune never removes every point of a disk)");
    }
    let started = Instant::now();
    if let Some(r) = a.store.remote()? {
        if !a.filter.filter().is_empty() {
            bail!(
                "prune through a server applies its rules to every disk the token reaches; filters are not taken yet"
            );
        }
        let v = r.prune(&json!({ "rules": rules, "dry_run": a.dry_run }))?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            let n = v["remove"].as_array().map_or(0, Vec::len);
            let verb = if a.dry_run { "would remove" } else { "removed" };
            println!(
                "{verb} {n} point(s) in {}; `cairn gc` reclaims their space",
                r.url()
            );
        }
        return Ok(0);
    }
    let store = if a.dry_run {
        crate::store_cmd::open_read(&a.store.store)?
    } else {
        open_write(&a.store.store, a.wait)?
    };
    let tz = store.config().tz();
    let filter = a.filter.filter();
    crate::store_cmd::check_filter(&store, &filter)?;
    let chosen: Vec<RecoveryPoint> = store
        .points()?
        .into_iter()
        .filter(|p| filter.matches(p))
        .collect();
    let decisions = cairn_gc::decide(chosen, &rules, &tz, store.retention_cutoff());
    let remove: Vec<RecoveryPoint> = decisions
        .iter()
        .filter(|(_, k)| k.is_none())
        .map(|(p, _)| p.clone())
        .collect();
    let plan_secs = started.elapsed().as_secs_f64();
    let forget_started = Instant::now();
    let forgotten = if a.dry_run || remove.is_empty() {
        None
    } else {
        Some(store.forget(&remove)?)
    };
    let forget_secs = forget_started.elapsed().as_secs_f64();
    if !a.dry_run {
        // Remembered for the report: which rule keeps each point of these VMs.
        let mut vms: Vec<String> = decisions.iter().map(|(p, _)| p.vm.clone()).collect();
        vms.sort();
        vms.dedup();
        if let Err(e) = cairn_gc::history::record_rules(&store, &vms, &rules) {
            eprintln!("note: the rules could not be recorded for the report: {e}");
        }
    }
    // A dry run says what the removal would free: the chunks only these points hold.
    let would_free = if a.dry_run && !remove.is_empty() {
        Some(store.would_free(&remove)?)
    } else {
        None
    };
    // What `cairn gc` would free now (its own dry run): the space a prune gives back is
    // reclaimed by gc, so say how much up front. The store is closed first: a read-only index
    // opened beside a live writer can miss files the writer's compaction just replaced.
    drop(store);
    let gc_estimate = if a.dry_run || remove.is_empty() {
        None
    } else {
        cairn_gc::collect(
            &a.store.store,
            &GcOptions {
                dry_run: true,
                ..GcOptions::default()
            },
            &|_| {},
        )
        .map_err(|e| eprintln!("note: cannot say what `cairn gc` would free: {e}"))
        .ok()
    };
    let keep_name = |k: &Option<Keep>| match k {
        None => "remove".to_owned(),
        Some(Keep::Protected) => "keep (protected)".to_owned(),
        Some(Keep::Held) => "keep (held by the store's minimum retention)".to_owned(),
        Some(Keep::Rule(r)) => format!("keep ({})", r.name()),
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "dry_run": a.dry_run,
                "kept": decisions.iter().filter(|(_, k)| k.is_some()).count(),
                "removed": remove.len(),
                "chunks_unreferenced": forgotten.as_ref().map_or(0, |f| f.chunks_unreferenced),
                "warnings": forgotten.as_ref().map(|f| f.warnings.clone()).unwrap_or_default(),
                "plan_seconds": plan_secs,
                "forget_seconds": forget_secs,
                "gc_would_free": gc_estimate.as_ref().map(|g| g.bytes_freed),
                "would_free_bytes": would_free.as_ref().map(|f| f.stored_bytes),
                "would_free_chunks": would_free.as_ref().map(|f| f.chunks),
                "gc_would_copy": gc_estimate.as_ref().map(|g| g.bytes_copied),
                "points": decisions.iter().map(|(p, k)| json!({
                    "id": p.id, "vm": p.vm, "disk": p.disk, "time": crate::values::show_time(&p.time, tz),
                    "keep": k.is_some(),
                    "reason": match k { Some(Keep::Rule(r)) => json!(r.name()), Some(Keep::Protected) => json!("protected"), Some(Keep::Held) => json!("held"), None => json!(null) },
                })).collect::<Vec<_>>(),
            }))?
        );
        return Ok(0);
    }
    for (p, k) in &decisions {
        println!("{}  {}", point_row(p, tz), keep_name(k));
    }
    let kept = decisions.len() - remove.len();
    if a.dry_run {
        println!(
            "dry run: would keep {kept} and remove {}{}",
            crate::words::count(remove.len() as u64, "point"),
            would_free.as_ref().map_or(String::new(), freed_words)
        );
        for w in would_free.iter().flat_map(|f| &f.warnings) {
            eprintln!("warning: {w}");
        }
    } else {
        println!(
            "kept {kept}, removed {} in {:.3}s ({} now unreferenced; `cairn gc` reclaims them)",
            crate::words::count(remove.len() as u64, "point"),
            forget_secs,
            crate::words::count(
                forgotten.as_ref().map_or(0, |f| f.chunks_unreferenced),
                "chunk"
            )
        );
        for w in forgotten.iter().flat_map(|f| &f.warnings) {
            eprintln!("warning: {w}");
        }
        if let Some(g) = &gc_estimate {
            println!(
                "`cairn gc` would now free {} (copying {})",
                human_bytes(g.bytes_freed),
                human_bytes(g.bytes_copied)
            );
        }
    }
    Ok(0)
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
            let v = r.forget(&p.id, a.dry_run)?;
            if !a.json {
                let verb = if a.dry_run { "would forget" } else { "forgot" };
                println!("{verb} {}", point_row(p, tz));
            }
            all.push(v);
        }
        if a.json {
            println!("{}", serde_json::to_string_pretty(&all)?);
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
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "dry_run": true,
                    "would_forget": points.iter().map(|p| &p.id).collect::<Vec<_>>(),
                    "would_free_bytes": freed.stored_bytes,
                    "would_free_chunks": freed.chunks,
                }))?
            );
        } else {
            for p in &points {
                println!("would forget {}", point_row(p, tz));
            }
            println!("dry run{}", freed_words(&freed));
        }
        return Ok(0);
    }
    let started = Instant::now();
    let f = store.forget(&points)?;
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "forgotten": f.points.iter().map(|p| &p.id).collect::<Vec<_>>(),
                "chunks_unreferenced": f.chunks_unreferenced, "warnings": f.warnings, "seconds": secs,
            }))?
        );
    } else {
        for p in &f.points {
            println!("forgot {}", point_row(p, tz));
        }
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
        println!(
            "{}",
            json!({ "id": p.id, "protected": p.protected_at(now), "protected_until": p.protected_until })
        );
    } else {
        let held = p
            .protected_until
            .filter(|u| *u > now)
            .map(|u| format!(" (protected until {})", crate::values::show_time(&u, tz)))
            .unwrap_or_default();
        println!(
            "{} {}{held}",
            if on { "protected" } else { "unprotected" },
            point_row(&p, tz)
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
        println!("{}", serde_json::to_string_pretty(&v)?);
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
        if a.sample.is_some() || a.since.is_some() {
            crate::usage!(
                "--sample and --since are not taken through a server yet; verify every point"
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
    };
    let bar = crate::progress::count(0, "verify");
    let r = cairn_gc::verify(&a.store.store, &opts, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "checked {} of {} ({} read) of {} in {:.1}s: {}",
            r.chunks_checked,
            crate::words::count(r.chunks_in_scope, "chunk"),
            human_bytes(r.bytes_read),
            crate::words::count(r.points_in_scope, "point"),
            r.seconds,
            if r.clean() {
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
                    "{} bad or missing chunk(s) damage {} point(s) of VM(s) {}",
                    r.damaged.len(),
                    r.points_damaged,
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
    Ok(if r.clean() { 0 } else { 1 })
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
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "timezone": timezone, "vms": all }))?
                );
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
        println!("{}", json!({ "min_retention_days": days }));
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
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "store": r.url(), "points": points.len(), "bytes": total, "seconds": secs,
                "damaged": damaged.iter().map(crate::restore_cmd::damaged_json).collect::<Vec<_>>(),
            }))?
        );
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
