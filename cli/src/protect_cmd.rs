//! `cairn protect` and `cairn unprotect`: a point kept from prune and forget, for good or
//! until a time.

use anyhow::Result;
use chrono::Utc;
use chrono_tz::Tz;
use clap::Args;
use serde_json::json;

use crate::point_rows::point_words;
use crate::store_cmd::{StoreArg, open_write};

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
