//! `cairn check-boot`: a point (with the other disks of its run) booted in a throw-away VM
//! over NBD, and whether it came up (the `cairn-check` crate).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_check::{Accel, FirmwareChoice, Options, Signals};
use cairn_restore::SharedStore;
use cairn_store::{RecoveryPoint, StoreRead};
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
    cairn check-boot --latest-of-each-vm            # a nightly job: the newest run of each VM\n  \
    cairn check-boot --keep-running web01/xvda@latest   # then log in on its console\n  \
    CAIRN_TOKEN=... cairn check-boot --store https://backup1:8443 web01/xvda@latest\n\n\
    The point and the other disks of its backup run are served over NBD to qemu-system-x86_64\n\
    with no network and a throw-away overlay: nothing the guest writes reaches the store. It\n\
    booted when its serial console shows a login prompt (or the --expect text); it did not\n\
    when the firmware finds no bootloader, the kernel panics, GRUB drops to its rescue prompt,\n\
    or nothing comes before --timeout. The result and a screenshot are kept in the store\n\
    (boot-checks/), the last per point. Exit status 0: booted; 4: did not boot.\n\n\
    Through a server (an admin token) the server's machine runs qemu and keeps the result; an\n\
    encrypted store's server never holds its key, so this machine boots the point, reading\n\
    its chunks through the server, and hands the server the result to keep.")]
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
    /// Leave the VM running after the verdict, its serial console and display (VNC) on unix
    /// sockets in a private folder, until Ctrl-C or the guest powers off. Its writes still go
    /// to the throw-away overlay.
    #[arg(long, conflicts_with = "latest_of_each_vm")]
    pub keep_running: bool,
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
    let mut results = Vec::new();
    match a.store.remote()? {
        // The server's machine boots the point and keeps the result.
        Some(remote) if remote.info().config.encryption.is_none() => {
            if a.keep_running {
                bail!(
                    "--keep-running: through a server the VM runs on the server's machine; run \
                     check-boot there, on the store's folder, to log in to it"
                );
            }
            for point in points(&*remote, a)? {
                results.push(on_server(&remote, &point, a)?);
            }
        }
        // An encrypted store's server never holds its key: booted here, kept there.
        Some(remote) => {
            let store: SharedStore = Arc::clone(&remote) as _;
            for point in points(&*remote, a)? {
                let here = check_here(&store, &point, a)?;
                let kept = remote
                    .record_boot_check(point.id.as_str(), &here.record, here.png.as_deref())
                    .context("handing the result to the server")?;
                let at = here
                    .png
                    .as_ref()
                    .map(|_| format!("{}/point/{}/boot-check.png", remote.url(), point.id));
                results.push(here.finish(&kept, at, a)?);
            }
        }
        None => {
            let local = Arc::new(open_read(&a.store.store)?);
            let store: SharedStore = Arc::clone(&local) as _;
            for point in points(&*local, a)? {
                let here = check_here(&store, &point, a)?;
                let kept = cairn_check::record::keep(
                    local.root(),
                    point.id.as_str(),
                    &here.record,
                    here.png.as_deref(),
                )
                .context("recording the check in the store")?;
                let at = here.png.as_ref().map(|_| {
                    local
                        .root()
                        .join(cairn_gc::history::BOOT_CHECKS_DIR)
                        .join(format!("{}.png", point.id))
                        .display()
                        .to_string()
                });
                results.push(here.finish(&kept, at, a)?);
            }
        }
    }
    let all_booted = results.iter().all(|d| d["booted"] == true);
    if a.json {
        if a.point.is_some() {
            crate::print_json(&results[0])?;
        } else {
            crate::print_json(&results)?;
        }
    }
    Ok(if all_booted { 0 } else { DID_NOT_BOOT })
}

/// The point asked for, or the newest of each VM.
fn points(store: &dyn StoreRead, a: &CheckBootArgs) -> Result<Vec<RecoveryPoint>> {
    if let Some(spec) = &a.point {
        return Ok(vec![store.resolve(spec)?]);
    }
    let mut newest: std::collections::BTreeMap<_, RecoveryPoint> =
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

fn booting(point: &RecoveryPoint, whose: &str) -> indicatif::ProgressBar {
    let bar = crate::progress::spinner("check-boot");
    bar.set_message(format!(
        "booting {} {} ({}){whose}",
        point.vm,
        point.disk,
        point.short_id()
    ));
    bar
}

/// A check made on this machine, to be kept in the store.
struct Here {
    /// Its JSON.
    doc: serde_json::Value,
    /// What the store keeps.
    record: serde_json::Value,
    /// The screenshot.
    png: Option<Vec<u8>>,
    /// Whether its line was said already (before a VM kept running).
    said: bool,
}

/// Boots `point` on this machine (with --keep-running, waits until the admin is done).
fn check_here(store: &SharedStore, point: &RecoveryPoint, a: &CheckBootArgs) -> Result<Here> {
    // The screenshot is always taken (the store keeps it); --screenshot keeps a copy too.
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
        accel: match a.accel {
            AccelArg::Auto => None,
            AccelArg::Kvm => Some(Accel::Kvm),
            AccelArg::Tcg => Some(Accel::Tcg),
        },
        screenshot: Some(shot.path().to_path_buf()),
        keep_running: a.keep_running,
    };
    let firmware = match a.firmware {
        FirmwareArg::Auto => FirmwareChoice::Auto,
        FirmwareArg::Bios => FirmwareChoice::Bios,
        FirmwareArg::Uefi => FirmwareChoice::Uefi,
    };
    let bar = booting(point, "");
    let checked = cairn_check::check_point(store, point, firmware, &opts)?;
    bar.finish_and_clear();
    let png = match &checked.outcome.screenshot {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let mut here = Here {
        doc: checked.to_json(),
        record: cairn_check::record::of(&checked.outcome),
        png,
        said: false,
    };
    if let Some(kept) = checked.kept {
        if a.json {
            let mut doc = here.doc.clone();
            doc["console"] = kept.console().map(|p| p.display().to_string()).into();
            doc["display"] = kept.display().map(|p| p.display().to_string()).into();
            crate::print_json(&doc)?;
        } else {
            say(&here.doc);
        }
        here.said = true;
        keep(kept)?;
    }
    Ok(here)
}

impl Here {
    /// The check's JSON once kept (`kept`: the record as stored; `at`: where its screenshot
    /// is), the --screenshot copy written, its line said.
    fn finish(
        mut self,
        kept: &serde_json::Value,
        at: Option<String>,
        a: &CheckBootArgs,
    ) -> Result<serde_json::Value> {
        self.doc["recorded"] = kept["time"].clone();
        self.doc["screenshot"] = at.into();
        if let (Some(to), Some(png)) = (&a.screenshot, &self.png) {
            std::fs::write(to, png).with_context(|| format!("writing {}", to.display()))?;
            self.doc["screenshot"] = to.display().to_string().into();
        }
        if !a.json && !self.said {
            say(&self.doc);
        }
        Ok(self.doc)
    }
}

/// Waits for the admin to be done with a VM left running.
fn keep(kept: cairn_check::Kept) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("catching Ctrl-C")?;
    }
    let shown =
        |p: Option<&std::path::Path>| p.map(|p| p.display().to_string()).unwrap_or_default();
    eprintln!(
        "the VM keeps running (its writes go to a throw-away overlay); Ctrl-C ends it\n  \
         console: socat -,raw,echo=0 UNIX-CONNECT:{}\n  display: VNC on the unix socket {}",
        shown(kept.console()),
        shown(kept.display()),
    );
    if kept.wait(&stop) {
        eprintln!("the guest ended: its overlay and folder are removed");
    } else {
        eprintln!("stopped: the VM, its overlay and its folder are removed");
    }
    Ok(())
}

/// Boots `point` on the server's machine (which keeps the result).
fn on_server(
    remote: &Arc<cairn_remote::Remote>,
    point: &RecoveryPoint,
    a: &CheckBootArgs,
) -> Result<serde_json::Value> {
    let body = json!({
        "expect": a.expect,
        "timeout_seconds": a.timeout.as_secs(),
        "memory_mib": a.memory,
        "firmware": format!("{:?}", a.firmware).to_lowercase(),
        "accel": format!("{:?}", a.accel).to_lowercase(),
    });
    let bar = booting(point, " on the server");
    let mut doc = remote.boot_check(point.id.as_str(), &body)?;
    bar.finish_and_clear();
    if !doc["screenshot"].is_null() {
        doc["screenshot"] = format!(
            "{}{}",
            remote.url(),
            doc["screenshot"].as_str().unwrap_or("")
        )
        .into();
        if let Some(to) = &a.screenshot {
            let png = remote.boot_check_screenshot(point.id.as_str())?;
            std::fs::write(to, png).with_context(|| format!("writing {}", to.display()))?;
            doc["screenshot"] = to.display().to_string().into();
        }
    }
    if !a.json {
        say(&doc);
    }
    Ok(doc)
}

/// One line per check (and the console's last lines when it did not boot), from its JSON.
fn say(doc: &serde_json::Value) {
    let s = |k: &str| doc[k].as_str().unwrap_or("").to_owned();
    let id = s("point");
    let what = format!(
        "{} {} ({}, {})",
        s("vm"),
        s("disk"),
        &id[..12.min(id.len())],
        s("point_time"),
    );
    if let Some(note) = doc["accel_note"].as_str() {
        eprintln!("note: {note}");
    }
    let seconds = doc["seconds"].as_f64().unwrap_or(0.0);
    if doc["booted"] == true {
        println!(
            "{what}: booted in {seconds:.1} s ({}): {}",
            s("accel"),
            s("line")
        );
    } else {
        println!(
            "{what}: did not boot: {} after {seconds:.1} s ({}){}",
            s("why"),
            s("accel"),
            doc["line"]
                .as_str()
                .map(|l| format!(": {l}"))
                .unwrap_or_default()
        );
        for l in doc["last_lines"].as_array().into_iter().flatten() {
            println!("  | {}", l.as_str().unwrap_or(""));
        }
    }
    if let Some(e) = doc["screenshot_error"].as_str() {
        eprintln!("warning: no screenshot: {e}");
    }
}
