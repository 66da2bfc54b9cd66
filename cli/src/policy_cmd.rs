//! `cairn policy`: per-VM key backup intervals, the store's time zone and its minimum
//! retention.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use cairn_store::Policy;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::store_cmd::{StoreArg, open_write};

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
