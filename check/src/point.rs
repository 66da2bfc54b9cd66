//! A point of a store checked: the disks of its run found and put in disk order, the firmware
//! chosen from the first disk's partition table, the disks served, the VM booted
//! ([`crate::check_boot`]). The same for `cairn check-boot` on a store folder and for `cairn
//! serve`'s boot checks.

use std::sync::Arc;

use cairn_restore::{PointDisk, PointExports, SharedStore};
use cairn_store::RecoveryPoint;

use std::path::PathBuf;

use crate::qemu::{Firmware, OVMF_PATHS};
use crate::{Disks, Error, Options, Outcome, Result};

/// The firmware asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirmwareChoice {
    /// UEFI for a GPT disk with an EFI system partition and no BIOS boot partition, else BIOS.
    #[default]
    Auto,
    /// SeaBIOS.
    Bios,
    /// OVMF.
    Uefi,
}

impl FirmwareChoice {
    /// From its name (`auto`, `bios`, `uefi`).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(Self::Auto),
            "bios" => Some(Self::Bios),
            "uefi" => Some(Self::Uefi),
            _ => None,
        }
    }
}

/// A point checked.
pub struct Checked {
    /// The point asked for.
    pub point: RecoveryPoint,
    /// The disks attached, in order (the point's run; the first booted).
    pub disks: Vec<RecoveryPoint>,
    /// The firmware it started with.
    pub firmware: Firmware,
    /// How it went.
    pub outcome: Outcome,
    /// The VM, still running, with `--keep-running`.
    pub kept: Option<crate::Kept>,
}

impl Checked {
    /// The check as JSON (without where its screenshot went: the caller says).
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        let mut doc = serde_json::json!({
            "point": self.point.id, "vm": self.point.vm, "disk": self.point.disk,
            "point_time": self.point.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "disks": self.disks.iter()
                .map(|p| serde_json::json!({"disk": p.disk, "point": p.id}))
                .collect::<Vec<_>>(),
        });
        if let (Some(d), serde_json::Value::Object(o)) =
            (doc.as_object_mut(), self.outcome.to_json(&self.firmware))
        {
            d.extend(o);
        }
        doc
    }
}

/// The disks of `point`'s backup run, in disk order (the point alone when it has no run).
///
/// # Errors
/// The catalogue that cannot be read.
pub fn run_of(
    store: &dyn cairn_store::StoreRead,
    point: &RecoveryPoint,
) -> Result<Vec<RecoveryPoint>> {
    let mut disks = match &point.run {
        Some(run) => store
            .points()
            .map_err(Error::Store)?
            .into_iter()
            .filter(|p| p.run.as_deref() == Some(run.as_str()))
            .collect(),
        None => vec![point.clone()],
    };
    if disks.is_empty() {
        disks.push(point.clone());
    }
    disks.sort_by(|x, y| x.disk.cmp(&y.disk));
    Ok(disks)
}

/// The firmware `asked` for, or the one the disk `first` needs (UEFI for a GPT disk with an
/// EFI system partition and no BIOS boot partition).
///
/// # Errors
/// [`Error::Missing`]: UEFI needed and OVMF not installed.
pub fn firmware_for(
    store: &SharedStore,
    first: &RecoveryPoint,
    asked: FirmwareChoice,
) -> Result<Firmware> {
    let name = format!("point {}", first.short_id());
    firmware_of(asked, &name, || {
        Ok(Arc::new(
            PointDisk::new(Arc::clone(store), first.clone()).map_err(Error::Store)?,
        ))
    })
}

/// The firmware `asked` for, or the one the disk `name` (opened by `open` only when it is
/// needed) needs.
fn firmware_of(
    asked: FirmwareChoice,
    name: &str,
    open: impl FnOnce() -> Result<Arc<dyn cairn_files::DiskRead>>,
) -> Result<Firmware> {
    let uefi = match asked {
        FirmwareChoice::Bios => false,
        FirmwareChoice::Uefi => true,
        FirmwareChoice::Auto => match cairn_files::DiskFiles::open(open()?, name.to_owned()) {
            Ok(files) => {
                let kinds: Vec<&str> = files.partitions().iter().map(|p| p.kind.as_str()).collect();
                files.scheme() == cairn_files::Scheme::Gpt
                    && kinds.iter().any(|k| k.ends_with("EFI system"))
                    && !kinds.iter().any(|k| k.ends_with("BIOS boot"))
            }
            // A table that does not read: let the firmware say what it makes of the disk.
            Err(_) => false,
        },
    };
    if !uefi {
        return Ok(Firmware::Bios);
    }
    match OVMF_PATHS
        .iter()
        .map(std::path::Path::new)
        .find(|p| p.is_file())
    {
        Some(p) => Ok(Firmware::Uefi(p.to_path_buf())),
        None => Err(Error::Missing(format!(
            "{name} boots with UEFI and OVMF is not installed: install Debian's ovmf package"
        ))),
    }
}

/// Boots the raw image files `images` (the first boots) the way a point is booted, but from
/// files here: `check-boot --image`, and the benchmark's measure of what a point's boot costs.
///
/// # Errors
/// As [`crate::check_boot`], and a file that cannot be opened.
pub fn check_images(
    images: &[PathBuf],
    firmware: FirmwareChoice,
    opts: &Options,
) -> Result<(Firmware, Outcome, Option<crate::Kept>)> {
    let first = images
        .first()
        .ok_or_else(|| Error::Export("no image to boot".into()))?;
    for image in images {
        std::fs::File::open(image).map_err(|e| Error::io(image, e))?;
    }
    let firmware = firmware_of(firmware, &first.display().to_string(), || {
        Ok(Arc::new(
            cairn_files::ImageFile::open(first).map_err(|e| Error::io(first, e))?,
        ))
    })?;
    let (outcome, kept) = crate::check_boot(Disks::Images(images.to_vec()), &firmware, opts)?;
    Ok((firmware, outcome, kept))
}

/// Boots `point` of `store` with the other disks of its run and judges the boot (the outcome
/// is not recorded: the caller does, in the store it has).
///
/// # Errors
/// As [`crate::check_boot`], and a catalogue or tree that cannot be read.
pub fn check_point(
    store: &SharedStore,
    point: &RecoveryPoint,
    firmware: FirmwareChoice,
    opts: &Options,
) -> Result<Checked> {
    let disks = run_of(&**store, point)?;
    let firmware = firmware_for(store, &disks[0], firmware)?;
    // Read-only exports: no overlay is ever made (qemu's snapshot=on takes the writes).
    let mut exports = PointExports::of(Arc::clone(store), std::env::temp_dir(), false);
    let names: Vec<String> = disks.iter().map(|p| p.id.to_string()).collect();
    for (p, name) in disks.iter().zip(&names) {
        exports
            .add(
                p.clone(),
                vec![name.clone()],
                format!("{} {}", p.vm, p.disk),
            )
            .map_err(|e| Error::Export(format!("exporting point {}: {e}", p.short_id())))?;
    }
    let (outcome, kept) = crate::check_boot(Disks::Points(exports, names), &firmware, opts)?;
    Ok(Checked {
        point: point.clone(),
        disks,
        firmware,
        outcome,
        kept,
    })
}
