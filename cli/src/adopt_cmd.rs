//! `cairn adopt`: joins the history of a VM's old identity to its new one.

use anyhow::Result;
use clap::Args;
use serde_json::json;

use crate::store_cmd::{StoreArg, open_write};
use crate::table::{Align, Table};
use crate::values::show_time;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cairn adopt web01 6f1c2a4e-0b1d-4c3e-9a8f-1d2e3f4a5b6c   (web01 got --vm-uuid later)\n  \
    cairn adopt old-name new-name --dry-run                  (a VM renamed without a UUID)\n  \
    cairn adopt poolA:web01 web01-moved\n\n\
    A VM's history is its identity: its --vm-uuid and --pool, else its name. A VM renamed\n\
    without a UUID, or given one later, starts a new history, and retention weighs each on its\n\
    own, so the old one keeps its last points forever. adopt gives every point of OLD the\n\
    name, UUID and pool of NEW (ids, times and data stay): one history again, which\n\
    @latest, prune, report and the next key backup see whole. `cairn prune --dry-run` shows\n\
    a VM name with several histories. On the store's machine.")]
pub struct AdoptArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The old identity: a VM name, a UUID, or POOL:NAME.
    pub old: String,
    /// The identity its points take: a VM of the store (name, UUID, or POOL:NAME), whose
    /// newest point gives the name, UUID and pool.
    pub new: String,
    /// Say which points would move; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait for another writer instead of failing.
    #[arg(long)]
    pub wait: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn adopt(a: &AdoptArgs) -> Result<i32> {
    crate::store_cmd::local_only(&a.store.store)?;
    let store = if a.dry_run {
        crate::store_cmd::open_read(&a.store.store)?
    } else {
        open_write(&a.store.store, a.wait)?
    };
    let tz = store.config().tz();
    let points = store.points()?;
    let (to, into) =
        cairn_store::select::vm_identity(&points, &a.new, None).map_err(crate::Usage)?;
    // OLD is another VM than NEW: `adopt web01 UUID` takes the web01 that is not UUID's.
    let (from, _) =
        cairn_store::select::vm_identity(&points, &a.old, Some(&to)).map_err(crate::Usage)?;
    if from == to {
        crate::usage!("{} and {} name one VM: nothing to join", a.old, a.new);
    }
    let moving: Vec<cairn_store::RecoveryPoint> = if a.dry_run {
        points.into_iter().filter(|p| p.vm_key() == from).collect()
    } else {
        store.adopt(&from, &into)?
    };
    let identity = |vm: &str, uuid: &Option<String>, pool: &Option<String>| {
        let mut s = vm.to_owned();
        if let Some(u) = uuid {
            s.push_str(&format!(" uuid={u}"));
        }
        if let Some(p) = pool {
            s.push_str(&format!(" pool={p}"));
        }
        s
    };
    let into_shown = identity(&into.vm, &into.labels.vm_uuid, &into.labels.pool);
    if a.json {
        crate::print_json(&json!({
            "dry_run": a.dry_run,
            "into": { "vm": into.vm, "vm_uuid": into.labels.vm_uuid, "pool": into.labels.pool },
            "points": moving.iter().map(|p| json!({
                "id": p.id, "disk": p.disk, "time": show_time(&p.time, tz),
            })).collect::<Vec<_>>(),
        }))?;
        return Ok(0);
    }
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("DISK", Align::Left),
        ("TIME", Align::Left),
    ]);
    for p in &moving {
        t.row([
            p.short_id().to_owned(),
            p.disk.clone(),
            show_time(&p.time, tz),
        ]);
    }
    t.print();
    println!(
        "{} {} of {} to the history of {into_shown}",
        if a.dry_run {
            "dry run: would join"
        } else {
            "joined"
        },
        crate::words::count(moving.len() as u64, "point"),
        a.old,
    );
    Ok(0)
}
