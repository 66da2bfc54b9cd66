//! `cairn check-boot`: a point (with the other disks of its run) booted in a throw-away VM
//! over NBD, and whether it came up (the `cairn-check` crate).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_check::{Accel, FirmwareChoice, Options, Signals};
use cairn_restore::SharedStore;
use cairn_store::{RecoveryPoint, StoreRead};
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::store_cmd::{ServerArgs, open_read};

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
    cairn check-boot --image restored.raw           # a raw image file, booted the same way\n  \
    cairn check-boot --guest-agent --port 3389 win01/c@latest   # a guest with no serial console\n  \
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
    /// The store: a folder, or https://HOST:PORT of a `cairn serve` (an admin token).
    #[arg(long, env = "CAIRN_STORE", required_unless_present = "image")]
    pub store: Option<PathBuf>,
    #[command(flatten)]
    pub server: ServerArgs,
    /// The point to boot (any name `restore` takes).
    #[arg(
        required_unless_present_any = ["latest_of_each_vm", "image"],
        conflicts_with_all = ["latest_of_each_vm", "image"]
    )]
    pub point: Option<String>,
    /// Boot this raw image file instead of a point, the same way (given several times: the
    /// disks in order). Nothing is recorded: the measure a point's boot is compared with.
    #[arg(long, value_name = "FILE", conflicts_with = "latest_of_each_vm")]
    pub image: Vec<PathBuf>,
    /// Check the newest run of every VM, one after the other.
    #[arg(long)]
    pub latest_of_each_vm: bool,
    /// Text on the serial console that means the guest is up (default: a login prompt). May
    /// be given several times: any one.
    #[arg(long, value_name = "TEXT")]
    pub expect: Vec<String>,
    /// It is up when the QEMU guest agent in it answers (qemu-ga; Windows guests without a
    /// serial console). Given alone, the console's login prompt no longer counts.
    #[arg(long)]
    pub guest_agent: bool,
    /// It is up when this TCP port of the guest accepts a connection (22, 3389): the guest
    /// gets a network that reaches nothing but this port, forwarded from 127.0.0.1. Given
    /// alone, the console's login prompt no longer counts.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
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
    if !a.image.is_empty() {
        return check_images(a);
    }
    let path = a
        .store
        .as_ref()
        .context("--store (or CAIRN_STORE) is needed")?;
    let mut results = Vec::new();
    match a.server.connect(path)? {
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
            let local = Arc::new(open_read(path)?);
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

fn booting(what: &str) -> indicatif::ProgressBar {
    let bar = crate::progress::spinner("check-boot");
    bar.set_message(format!("booting {what}"));
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
    /// The store's time zone, for the point's time in its line.
    tz: chrono_tz::Tz,
}

/// The check's options (the screenshot into `shot`) and firmware, from the flags.
fn options(a: &CheckBootArgs, shot: &std::path::Path) -> (Options, FirmwareChoice) {
    let opts = Options {
        signals: Signals::named(&a.expect, a.guest_agent || a.port.is_some()),
        timeout: a.timeout,
        memory_mib: a.memory,
        accel: match a.accel {
            AccelArg::Auto => None,
            AccelArg::Kvm => Some(Accel::Kvm),
            AccelArg::Tcg => Some(Accel::Tcg),
        },
        screenshot: Some(shot.to_path_buf()),
        keep_running: a.keep_running,
        agent: a.guest_agent,
        port: a.port,
    };
    let firmware = match a.firmware {
        FirmwareArg::Auto => FirmwareChoice::Auto,
        FirmwareArg::Bios => FirmwareChoice::Bios,
        FirmwareArg::Uefi => FirmwareChoice::Uefi,
    };
    (opts, firmware)
}

/// A temporary file for the screenshot (always taken: the store keeps it).
fn screenshot_file() -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .suffix(".png")
        .tempfile()
        .context("a temporary file for the screenshot")
}

/// Boots `point` on this machine (with --keep-running, waits until the admin is done).
fn check_here(store: &SharedStore, point: &RecoveryPoint, a: &CheckBootArgs) -> Result<Here> {
    let shot = screenshot_file()?;
    let (opts, firmware) = options(a, shot.path());
    let bar = booting(&format!(
        "{} {} ({})",
        point.vm,
        point.disk,
        point.short_id()
    ));
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
        tz: store.config().tz(),
    };
    if let Some(kept) = checked.kept {
        keep(kept, &here.doc, a, here.tz)?;
        here.said = true;
    }
    Ok(here)
}

/// `--image`: raw files booted the same way; nothing recorded.
fn check_images(a: &CheckBootArgs) -> Result<i32> {
    let shot = screenshot_file()?;
    let (opts, firmware) = options(a, shot.path());
    let bar = booting(&a.image[0].display().to_string());
    let (firmware, outcome, kept) = cairn_check::check_images(&a.image, firmware, &opts)?;
    bar.finish_and_clear();
    let mut doc = outcome.to_json(&firmware);
    doc["images"] = a.image.iter().map(|p| p.display().to_string()).collect();
    doc["screenshot"] = serde_json::Value::Null;
    if let (Some(to), Some(png)) = (&a.screenshot, &outcome.screenshot) {
        std::fs::copy(png, to).with_context(|| format!("writing {}", to.display()))?;
        doc["screenshot"] = to.display().to_string().into();
    }
    match kept {
        Some(kept) => keep(kept, &doc, a, chrono_tz::UTC)?,
        None if a.json => crate::print_json(&doc)?,
        None => say(&doc, chrono_tz::UTC),
    }
    Ok(if outcome.booted { 0 } else { DID_NOT_BOOT })
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
            say(&self.doc, self.tz);
        }
        Ok(self.doc)
    }
}

/// Says the verdict of a VM left running (its JSON with where its console and display are,
/// with --json) and waits for the admin to be done with it.
fn keep(
    kept: cairn_check::Kept,
    doc: &serde_json::Value,
    a: &CheckBootArgs,
    tz: chrono_tz::Tz,
) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let shown = |p: Option<&std::path::Path>| p.map(|p| p.display().to_string());
    if a.json {
        let mut doc = doc.clone();
        doc["console"] = shown(kept.console()).into();
        doc["display"] = shown(kept.display()).into();
        crate::print_json(&doc)?;
    } else {
        say(doc, tz);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("catching Ctrl-C")?;
    }
    eprintln!(
        "the VM keeps running (its writes go to a throw-away overlay); Ctrl-C ends it\n  \
         console: socat -,raw,echo=0 UNIX-CONNECT:{}\n  display: VNC on the unix socket {}",
        shown(kept.console()).unwrap_or_default(),
        shown(kept.display()).unwrap_or_default(),
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
        // The names the flags take are the ones the API takes.
        "firmware": a.firmware.to_possible_value().map(|v| v.get_name().to_owned()),
        "accel": a.accel.to_possible_value().map(|v| v.get_name().to_owned()),
        "guest_agent": a.guest_agent,
        "port": a.port,
    });
    let bar = booting(&format!(
        "{} {} ({}) on the server",
        point.vm,
        point.disk,
        point.short_id()
    ));
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
        say(&doc, StoreRead::config(&**remote).tz());
    }
    Ok(doc)
}

/// One line per check (and the console's last lines when it did not boot), from its JSON; the
/// point's time in the store's zone `tz`.
fn say(doc: &serde_json::Value, tz: chrono_tz::Tz) {
    let s = |k: &str| doc[k].as_str().unwrap_or("").to_owned();
    let id = s("point");
    let what = match doc["images"][0].as_str() {
        Some(image) => image.to_owned(),
        None => format!(
            "{} {} ({}, {})",
            s("vm"),
            s("disk"),
            &id[..12.min(id.len())],
            chrono::DateTime::parse_from_rfc3339(&s("point_time"))
                .map(|t| crate::values::show_time(&t.to_utc(), tz))
                .unwrap_or_default(),
        ),
    };
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
