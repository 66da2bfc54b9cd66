//! Recoverability proven (`cairn check-boot`): the disks of a point's run served over NBD to a
//! throw-away VM, which is started, watched and stopped, without restoring a byte.
//!
//! - **Nothing reaches the store**: the exports are read-only and qemu puts the guest's writes
//!   in an overlay (`snapshot=on`) it deletes; the check's folder (the NBD socket, the console,
//!   qemu's overlay) is private to its user and removed at the end.
//! - **Isolated**: no network device at all (`-nic none`), no display but the screenshot.
//! - **Judged by what the guest says** ([`console`]): a login prompt or the line the admin
//!   names on the serial console means it booted; SeaBIOS's "no bootable device", a kernel
//!   panic or GRUB's rescue prompt mean it did not, with that line; silence until the timeout
//!   is a failure with the console's last lines.
//! - **Remembered** ([`record`]): the last check of each point and its screenshot, in the
//!   store's `boot-checks/` folder, for `list`, `report` and the report page.
//! - **KVM when usable, else TCG**, said in the outcome: a KVM that fails inside the guest
//!   (nested virtualization that cannot run real mode, seen on cloud VMs) is said and the boot
//!   is tried again with TCG.

pub mod console;
mod kept;
mod point;
mod probe;
pub mod qemu;
pub mod record;
mod serve;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_restore::PointExports;

pub use console::{Signals, Verdict};
pub use kept::Kept;
pub use point::{Checked, FirmwareChoice, check_images, check_point, firmware_for, run_of};
pub use qemu::{Accel, Firmware};

/// What went wrong (a boot that fails is an [`Outcome`], not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tool the check needs is not installed (named, with its package).
    #[error("{0}")]
    Missing(String),
    /// A file or process could not be used.
    #[error("{}: {source}", path.display())]
    Io {
        /// Which.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// qemu's QMP did not answer as expected.
    #[error("QMP: {0}")]
    Qmp(String),
    /// The outcome could not be kept in the store.
    #[error("recording the check: {0}")]
    Record(String),
    /// The store could not be read (its catalogue, a point's tree).
    #[error(transparent)]
    Store(cairn_store::Error),
    /// A point could not be exported.
    #[error("{0}")]
    Export(String),
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a check runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// What is looked for on the console.
    pub signals: Signals,
    /// How long the guest has to come up.
    pub timeout: Duration,
    /// The guest's memory, in MiB.
    pub memory_mib: u32,
    /// The accelerator (`None`: KVM when usable, else TCG).
    pub accel: Option<Accel>,
    /// Where a screenshot of the display goes (PNG), taken when the verdict is in.
    pub screenshot: Option<PathBuf>,
    /// Leave the VM running after the verdict (its console and display on unix sockets), for
    /// an admin who wants to log in: see [`Kept`].
    pub keep_running: bool,
    /// Booted also when the QEMU guest agent answers (a channel to it is given to the VM).
    pub agent: bool,
    /// Booted also when this TCP port of the guest accepts a connection (the guest gets a
    /// network that reaches nothing, the port forwarded from 127.0.0.1 here).
    pub port: Option<u16>,
}

/// How a check went.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Whether the guest came up.
    pub booted: bool,
    /// Seconds from the VM's start to the verdict.
    pub seconds: f64,
    /// The accelerator the verdict was reached with.
    pub accel: Accel,
    /// Why KVM was left for TCG, when it was.
    pub accel_note: Option<String>,
    /// Why, in a few words: `booted`, `kernel panic`, `no bootloader found`, `timed out`...
    pub why: String,
    /// The console line the verdict rests on.
    pub line: Option<String>,
    /// The console's last lines.
    pub last_lines: Vec<String>,
    /// The screenshot, when one was asked for and taken.
    pub screenshot: Option<PathBuf>,
    /// Why the screenshot was not taken, when it was asked for.
    pub screenshot_error: Option<String>,
}

/// What the VM's disks are.
pub enum Disks {
    /// Points served over NBD: the exports and the names of those attached, in order.
    Points(PointExports, Vec<String>),
    /// Raw image files here, in order (`check-boot --image`: the same boot of a file, which
    /// the benchmark compares a point's boot with).
    Images(Vec<PathBuf>),
}

impl Outcome {
    /// How the boot went, as JSON (`firmware`: what the VM started with).
    #[must_use]
    pub fn to_json(&self, firmware: &Firmware) -> serde_json::Value {
        serde_json::json!({
            "booted": self.booted, "why": self.why, "line": self.line,
            "seconds": self.seconds, "accel": self.accel.name(), "accel_note": self.accel_note,
            "firmware": match firmware { Firmware::Bios => "bios", Firmware::Uefi(_) => "uefi" },
            "last_lines": self.last_lines,
            "screenshot_error": self.screenshot_error,
        })
    }
}

/// Boots `disks` (the first boots) with `firmware` and judges the boot; with
/// [`Options::keep_running`], the VM is handed back still running.
///
/// # Errors
/// qemu missing, a folder or socket that cannot be made, qemu that does not start. A guest
/// that does not boot is an [`Outcome`] with `booted: false`.
pub fn check_boot(
    disks: Disks,
    firmware: &Firmware,
    opts: &Options,
) -> Result<(Outcome, Option<Kept>)> {
    let qemu = qemu::find()?;
    let dir = tempfile::Builder::new()
        .prefix("cairn-check-boot-")
        .tempdir()
        .map_err(|e| Error::io(&std::env::temp_dir(), e))?;
    // Private before anything is put in it (tempfile makes folders by the umask: 0755).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(dir.path(), e))?;
    }
    let (served, drives) = match disks {
        Disks::Points(exports, names) => {
            let served = serve::Served::start(exports, dir.path())?;
            let drives = names
                .into_iter()
                .map(|name| qemu::Drive::Export {
                    socket: served.socket.clone(),
                    name,
                })
                .collect();
            (Some(served), drives)
        }
        Disks::Images(files) => (None, files.into_iter().map(qemu::Drive::Image).collect()),
    };
    let mut machine = qemu::Machine {
        qemu,
        accel: opts.accel.unwrap_or_else(Accel::best),
        firmware: firmware.clone(),
        memory_mib: opts.memory_mib,
        drives,
        dir: dir.path().to_path_buf(),
        interactive: opts.keep_running,
        agent: opts.agent,
        forward: match opts.port {
            Some(guest) => Some((free_port()?, guest)),
            None => None,
        },
    };
    let mut accel_note = None;
    loop {
        let run = watch(&machine, opts)?;
        match run {
            Watched::KvmFailed(why) if machine.accel == Accel::Kvm => {
                accel_note = Some(format!("KVM failed inside the guest ({why}): TCG used"));
                machine.accel = Accel::Tcg;
            }
            Watched::KvmFailed(why) => {
                return Err(Error::Qmp(format!("qemu failed: {why}")));
            }
            Watched::Judged(mut outcome, vm) => {
                outcome.accel_note = accel_note;
                let kept = vm.map(|vm| Kept::new(vm, served, dir));
                return Ok((*outcome, kept));
            }
        }
    }
}

enum Watched {
    /// The verdict, and the VM when it is kept running.
    Judged(Box<Outcome>, Option<qemu::Vm>),
    KvmFailed(String),
}

/// The longest tail of a log read at each look.
const LOG_TAIL: u64 = 1 << 20;

/// Starts the VM, watches its console until a verdict, the timeout or its end, takes the
/// screenshot and stops it (or hands it back, with `--keep-running`).
fn watch(machine: &qemu::Machine, opts: &Options) -> Result<Watched> {
    // Each attempt writes its logs afresh.
    for f in ["console.log", "firmware.log"] {
        let _ = std::fs::remove_file(machine.dir.join(f));
    }
    let mut vm = machine.start()?;
    let started = Instant::now();
    let mut agent = vm.agent_socket.clone().map(probe::Agent::new);
    let mut port = machine
        .forward
        .map(|(host, guest)| probe::Port::new(host, guest));
    let (verdict, ended) = loop {
        let console = tail(&vm.console);
        let firmware = tail(&vm.firmware_log);
        if let Some(v) = opts.signals.judge(&console, &firmware) {
            break (Some(v), None);
        }
        if let Some(line) = agent.as_mut().and_then(probe::Agent::answered) {
            break (Some(Verdict::Booted(line)), None);
        }
        if let Some(line) = port.as_mut().and_then(|p| p.open(&vm)) {
            break (Some(Verdict::Booted(line)), None);
        }
        // A KVM that cannot run the guest stops it (qemu stays up, the VM paused) and says so
        // on qemu's standard error.
        let err = tail(&vm.stderr);
        if machine.accel == Accel::Kvm
            && (err.contains("KVM internal error") || err.contains("emulation failure"))
        {
            vm.stop();
            return Ok(Watched::KvmFailed(
                err.lines()
                    .find(|l| l.contains("KVM internal error"))
                    .unwrap_or("emulation failure")
                    .trim()
                    .to_owned(),
            ));
        }
        if let Some(status) = vm.ended()? {
            break (None, Some(format!("qemu ended ({status}): {}", last(&err))));
        }
        if started.elapsed() >= opts.timeout {
            break (None, None);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let seconds = started.elapsed().as_secs_f64();
    let console = tail(&vm.console);
    let (mut screenshot, mut screenshot_error) = (None, None);
    if let Some(png) = &opts.screenshot
        && ended.is_none()
    {
        match vm.screenshot(png) {
            Ok(()) => screenshot = Some(png.clone()),
            Err(e) => screenshot_error = Some(e.to_string()),
        }
    }
    let vm = if opts.keep_running && ended.is_none() {
        Some(vm)
    } else {
        vm.stop();
        None
    };
    let (booted, why, line) = match verdict {
        Some(Verdict::Booted(line)) => (true, "booted".to_owned(), Some(line)),
        Some(Verdict::Failed { why, line }) => (false, why, Some(line)),
        None => match ended {
            Some(e) => (false, e, None),
            None => (
                false,
                format!("timed out after {} s", opts.timeout.as_secs()),
                None,
            ),
        },
    };
    Ok(Watched::Judged(
        Box::new(Outcome {
            booted,
            seconds,
            accel: machine.accel,
            accel_note: None,
            why,
            line,
            last_lines: console::last_lines(&console, 10),
            screenshot,
            screenshot_error,
        }),
        vm,
    ))
}

/// A TCP port of 127.0.0.1 free now (the forward to the guest's port binds it).
fn free_port() -> Result<u16> {
    let here = Path::new("127.0.0.1:0");
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::io(here, e))
}

/// The last [`LOG_TAIL`] bytes of a log, as text.
fn tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)));
    let mut bytes = Vec::new();
    let _ = f.take(LOG_TAIL).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

fn last(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_owned()
}
