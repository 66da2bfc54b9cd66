//! `cairn check-boot`: a point (with the other disks of its run) booted in a throw-away VM
//! over NBD, and whether it came up (the `cairn-check` crate).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_check::{Accel, Firmware, Options, Signals};
use cairn_restore::PointExports;
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::store_cmd::{StoreArg, open_read};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FirmwareArg {
    /// UEFI for a GPT disk with an EFI system partition and no BIOS boot partition, else BIOS.
    Auto,
    /// SeaBIOS.
    Bios,
    /// OVMF (Debian's ovmf package).
    Uefi,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AccelArg {
    /// KVM when /dev/kvm is usable, else TCG.
    Auto,
    /// KVM only.
    Kvm,
    /// qemu's emulation.
    Tcg,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cairn check-boot web01/xvda@latest\n  \
    cairn check-boot --expect 'Reached target Multi-User System' --timeout 10m db01/xvda@latest\n  \
    cairn check-boot --screenshot web01.png --json web01/xvda@latest\n  \
    cairn check-boot --latest-of-each-vm            # a nightly job: the newest run of each VM\n\n\
    The point and the other disks of its backup run are served over NBD to qemu-system-x86_64\n\
    with no network and a throw-away overlay: nothing the guest writes reaches the store. It\n\
    booted when its serial console shows a login prompt (or the --expect text); it did not\n\
    when the firmware finds no bootloader, the kernel panics, GRUB drops to its rescue prompt,\n\
    or nothing comes before --timeout. The result and a screenshot are kept in the store\n\
    (boot-checks/), the last per point. Exit status 0: booted; 4: did not boot.")]
pub struct CheckBootArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The point to boot (any name `restore` takes).
    #[arg(
        required_unless_present = "latest_of_each_vm",
        conflicts_with = "latest_of_each_vm"
    )]
    pub point: Option<String>,
    /// Check the newest run of every VM, one after the other.
    #[arg(long)]
    pub latest_of_each_vm: bool,
    /// Text on the serial console that means the guest is up (default: a login prompt). May
    /// be given several times: any one.
    #[arg(long, value_name = "TEXT")]
    pub expect: Vec<String>,
    /// How long the guest has to come up (30s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// The guest's memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub memory: u32,
    /// The firmware.
    #[arg(long, value_enum, default_value_t = FirmwareArg::Auto)]
    pub firmware: FirmwareArg,
    /// The accelerator.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub accel: AccelArg,
    /// Keep a screenshot of the display (PNG) taken when the verdict is in.
    #[arg(long, value_name = "FILE")]
    pub screenshot: Option<std::path::PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `90s`, `5m`, `1h` (a number alone: seconds).
fn parse_timeout(s: &str) -> std::result::Result<Duration, String> {
    let (n, unit) = s
        .trim()
        .split_at(s.trim().trim_end_matches(char::is_alphabetic).len());
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s}: a timeout is a number of s, m or h (90s, 5m)"))?;
    let secs = match unit {
        "" | "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => None,
    }
    .filter(|&s| s > 0 && s <= 24 * 3600)
    .ok_or_else(|| format!("{s}: a timeout is between 1 s and 24 h, in s, m or h (90s, 5m)"))?;
    Ok(Duration::from_secs(secs))
}

/// Exit status of a check whose guest did not boot.
const DID_NOT_BOOT: i32 = 4;

pub fn check_boot(a: &CheckBootArgs) -> Result<i32> {
    let store = Arc::new(open_read(&a.store.store)?);
    let points = match &a.point {
        Some(spec) => vec![store.resolve(spec)?],
        None => latest_of_each_vm(&store)?,
    };
    let mut results = Vec::new();
    let mut all_booted = true;
    for point in points {
        let (booted, doc) = check_one(&store, &point, a)?;
        all_booted &= booted;
        results.push(doc);
    }
    if a.json {
        if a.point.is_some() {
            crate::print_json(&results[0])?;
        } else {
            crate::print_json(&results)?;
        }
    }
    Ok(if all_booted { 0 } else { DID_NOT_BOOT })
}

/// The newest point of each VM (the one its newest run is found by).
fn latest_of_each_vm(store: &cairn_store::Store) -> Result<Vec<cairn_store::RecoveryPoint>> {
    let mut newest: std::collections::BTreeMap<_, cairn_store::RecoveryPoint> =
        std::collections::BTreeMap::new();
    for p in store.points()? {
        let key = p.vm_key();
        if newest
            .get(&key)
            .is_none_or(|q| (p.time, p.committed) > (q.time, q.committed))
        {
            newest.insert(key, p);
        }
    }
    if newest.is_empty() {
        bail!("the store has no point to check");
    }
    Ok(newest.into_values().collect())
}

/// Checks the run of `point`, records the outcome, says it (unless --json): whether it booted,
/// and its JSON.
fn check_one(
    store: &Arc<cairn_store::Store>,
    point: &cairn_store::RecoveryPoint,
    a: &CheckBootArgs,
) -> Result<(bool, serde_json::Value)> {
    // The disks of its run, in disk order (the one asked for alone when it has no run).
    let mut disks = match &point.run {
        Some(run) => store
            .points()?
            .into_iter()
            .filter(|p| p.run.as_deref() == Some(run.as_str()))
            .collect(),
        None => vec![point.clone()],
    };
    disks.sort_by(|x, y| x.disk.cmp(&y.disk));
    let firmware = firmware(a.firmware, store, &disks[0])?;
    let mut exports = PointExports::new(Arc::clone(store), false);
    let names: Vec<String> = disks.iter().map(|p| p.id.to_string()).collect();
    for (p, name) in disks.iter().zip(&names) {
        exports
            .add(
                p.clone(),
                vec![name.clone()],
                format!("{} {}", p.vm, p.disk),
            )
            .context("exporting a point")?;
    }
    // The screenshot is always taken (the store keeps it); --screenshot keeps a copy there.
    let shot = tempfile::Builder::new()
        .suffix(".png")
        .tempfile()
        .context("a temporary file for the screenshot")?;
    let opts = Options {
        signals: if a.expect.is_empty() {
            Signals::default()
        } else {
            Signals {
                expect: a.expect.clone(),
            }
        },
        timeout: a.timeout,
        memory_mib: a.memory,
        firmware: firmware.clone(),
        accel: match a.accel {
            AccelArg::Auto => None,
            AccelArg::Kvm => Some(Accel::Kvm),
            AccelArg::Tcg => Some(Accel::Tcg),
        },
        screenshot: Some(shot.path().to_path_buf()),
    };
    let bar = crate::progress::spinner("check-boot");
    bar.set_message(format!(
        "booting {} {} ({})",
        point.vm,
        point.disk,
        point.short_id()
    ));
    let outcome = cairn_check::check_boot(exports, names, &opts)?;
    bar.finish_and_clear();
    let recorded = cairn_check::record::record(store.root(), point.id.as_str(), &outcome)
        .context("recording the check in the store")?;
    let mut screenshot = outcome.screenshot.as_ref().map(|_| {
        store
            .root()
            .join(cairn_gc::history::BOOT_CHECKS_DIR)
            .join(format!("{}.png", point.id))
    });
    if let (Some(to), Some(from)) = (&a.screenshot, &outcome.screenshot) {
        std::fs::copy(from, to).with_context(|| format!("writing {}", to.display()))?;
        screenshot = Some(to.clone());
    }
    let doc = json!({
        "point": point.id, "vm": point.vm,
        "disks": disks.iter().map(|p| json!({"disk": p.disk, "point": p.id})).collect::<Vec<_>>(),
        "booted": outcome.booted, "why": outcome.why, "line": outcome.line,
        "seconds": outcome.seconds, "accel": outcome.accel.name(),
        "accel_note": outcome.accel_note,
        "firmware": match firmware { Firmware::Bios => "bios", Firmware::Uefi(_) => "uefi" },
        "last_lines": outcome.last_lines,
        "screenshot": screenshot.as_ref().map(|p| p.display().to_string()),
        "screenshot_error": outcome.screenshot_error,
        "recorded": recorded["time"],
    });
    if !a.json {
        say_outcome(point, &outcome);
    }
    Ok((outcome.booted, doc))
}

/// One line per check (and the console's last lines when it did not boot).
fn say_outcome(point: &cairn_store::RecoveryPoint, outcome: &cairn_check::Outcome) {
    let what = format!(
        "{} {} ({}, {})",
        point.vm,
        point.disk,
        point.short_id(),
        point.time.format("%Y-%m-%d %H:%M:%SZ")
    );
    if let Some(note) = &outcome.accel_note {
        eprintln!("note: {note}");
    }
    if outcome.booted {
        println!(
            "{what}: booted in {:.1} s ({}): {}",
            outcome.seconds,
            outcome.accel.name(),
            outcome.line.as_deref().unwrap_or("")
        );
    } else {
        println!(
            "{what}: did not boot: {} after {:.1} s ({}){}",
            outcome.why,
            outcome.seconds,
            outcome.accel.name(),
            outcome
                .line
                .as_deref()
                .map(|l| format!(": {l}"))
                .unwrap_or_default()
        );
        for l in &outcome.last_lines {
            println!("  | {l}");
        }
    }
    if let Some(e) = &outcome.screenshot_error {
        eprintln!("warning: no screenshot: {e}");
    }
}

/// The firmware asked for, or the one the first disk needs: UEFI for a GPT disk with an EFI
/// system partition and no BIOS boot partition.
fn firmware(
    asked: FirmwareArg,
    store: &Arc<cairn_store::Store>,
    first: &cairn_store::RecoveryPoint,
) -> Result<Firmware> {
    let uefi = match asked {
        FirmwareArg::Bios => false,
        FirmwareArg::Uefi => true,
        FirmwareArg::Auto => {
            let shared: cairn_restore::SharedStore = Arc::clone(store) as _;
            let disk = Arc::new(cairn_restore::PointDisk::new(shared, first.clone())?);
            match cairn_files::DiskFiles::open(disk, format!("point {}", first.short_id())) {
                Ok(files) => {
                    let kinds: Vec<&str> =
                        files.partitions().iter().map(|p| p.kind.as_str()).collect();
                    files.scheme() == cairn_files::Scheme::Gpt
                        && kinds.iter().any(|k| k.ends_with("EFI system"))
                        && !kinds.iter().any(|k| k.ends_with("BIOS boot"))
                }
                // A table that does not read: let the firmware say what it makes of the disk.
                Err(_) => false,
            }
        }
    };
    if !uefi {
        return Ok(Firmware::Bios);
    }
    match cairn_check::qemu::OVMF_PATHS
        .iter()
        .map(std::path::Path::new)
        .find(|p| p.is_file())
    {
        Some(p) => Ok(Firmware::Uefi(p.to_path_buf())),
        None => bail!(
            "point {} boots with UEFI and OVMF is not installed: install Debian's ovmf package",
            first.short_id()
        ),
    }
}
