//! The throw-away VM: `qemu-system-x86_64` with no network, the points as virtio disks over NBD
//! with a temporary overlay (`snapshot=on`: whatever the guest writes goes to a file qemu
//! deletes, never to the export), the serial console and the firmware's debug port written to
//! files, and QMP on a unix socket for the screenshot and the end.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How the guest's CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization (`/dev/kvm`).
    Kvm,
    /// qemu's own emulation.
    Tcg,
}

impl Accel {
    /// Its name on qemu's command line and in the output.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }

    /// From its name (`kvm`, `tcg`): the inverse of [`Accel::name`].
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Kvm, Self::Tcg]
            .into_iter()
            .find(|a| a.name() == name)
    }

    /// KVM when `/dev/kvm` opens for reading and writing, else TCG.
    #[must_use]
    pub fn best() -> Self {
        let usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if usable { Self::Kvm } else { Self::Tcg }
    }
}

/// The firmware the guest starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS (an MBR disk, or a GPT one with a BIOS boot partition).
    Bios,
    /// OVMF, from this code file (a GPT disk with an EFI system partition only).
    Uefi(PathBuf),
}

/// Where OVMF is looked for (Debian's `ovmf` package).
pub const OVMF_PATHS: [&str; 2] = [
    "/usr/share/OVMF/OVMF_CODE_4M.fd",
    "/usr/share/OVMF/OVMF_CODE.fd",
];

/// The empty variable store that goes with OVMF's code file (`OVMF_CODE_4M.fd`:
/// `OVMF_VARS_4M.fd`, beside it).
fn ovmf_vars(code: &Path) -> PathBuf {
    let name = code
        .file_name()
        .map(|n| n.to_string_lossy().replace("CODE", "VARS"))
        .unwrap_or_default();
    code.with_file_name(name)
}

/// `qemu-system-x86_64` on the PATH.
///
/// # Errors
/// [`Error::Missing`] naming the package when it is not there.
pub fn find() -> Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Missing(
                "qemu-system-x86_64 is not installed: install Debian's qemu-system-x86 (on \
                 bookworm from bookworm-backports, beside qemu-utils 10; scripts/setup.sh does)"
                    .into(),
            )
        })
}

/// A disk of the VM.
#[derive(Debug, Clone)]
pub enum Drive {
    /// An NBD export on a unix socket.
    Export {
        /// The socket.
        socket: PathBuf,
        /// The export's name.
        name: String,
    },
    /// A raw image file.
    Image(PathBuf),
}

impl Drive {
    /// Its `file=` on qemu's `-drive` (commas doubled: qemu's escape in option values).
    fn file(&self) -> String {
        let text = match self {
            Self::Export { socket, name } => {
                format!("nbd+unix:///{name}?socket={}", socket.display())
            }
            Self::Image(path) => path.display().to_string(),
        };
        text.replace(',', ",,")
    }
}

/// What the VM is given.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The qemu binary.
    pub qemu: PathBuf,
    /// Its accelerator.
    pub accel: Accel,
    /// Its firmware.
    pub firmware: Firmware,
    /// Memory, in MiB.
    pub memory_mib: u32,
    /// Its disks, in order (the first boots).
    pub drives: Vec<Drive>,
    /// Where the VM's files go (console, firmware log, QMP socket, overlays).
    pub dir: PathBuf,
    /// The console and the display on unix sockets an admin connects to (`--keep-running`);
    /// the console is still written to its file.
    pub interactive: bool,
    /// A channel to the QEMU guest agent (virtio-serial `org.qemu.guest_agent.0`) on a unix
    /// socket.
    pub agent: bool,
    /// A network for the guest that reaches nothing (slirp, `restrict=on`) but one guest TCP
    /// port forwarded from 127.0.0.1 here: `(host port, guest port)`.
    pub forward: Option<(u16, u16)>,
}

/// A running VM.
pub struct Vm {
    child: Child,
    /// The guest's serial console, as written.
    pub console: PathBuf,
    /// SeaBIOS's debug output.
    pub firmware_log: PathBuf,
    /// qemu's own standard error.
    pub stderr: PathBuf,
    /// The serial console's unix socket, when interactive.
    pub console_socket: Option<PathBuf>,
    /// The display's VNC unix socket, when interactive.
    pub vnc_socket: Option<PathBuf>,
    /// The guest agent's unix socket, when asked for.
    pub agent_socket: Option<PathBuf>,
    qmp: PathBuf,
}

impl Machine {
    /// Starts the VM.
    ///
    /// # Errors
    /// qemu that does not start.
    pub fn start(&self) -> Result<Vm> {
        let console = self.dir.join("console.log");
        let firmware_log = self.dir.join("firmware.log");
        let stderr = self.dir.join("qemu.err");
        let qmp = self.dir.join("qmp.sock");
        let mut c = Command::new(&self.qemu);
        c.args(["-accel", self.accel.name(), "-machine", "pc"])
            .args(["-m", &self.memory_mib.to_string()])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-vga",
                "std",
            ]);
        match self.forward {
            // Isolated: the guest reaches neither this machine nor anything beyond it; only
            // the forwarded port reaches the guest.
            Some((host, guest)) => c.arg("-nic").arg(format!(
                "user,restrict=on,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{host}-:{guest}"
            )),
            None => c.args(["-nic", "none"]),
        };
        let agent_socket = self.agent.then(|| self.dir.join("agent.sock"));
        if let Some(sock) = &agent_socket {
            c.arg("-chardev")
                .arg(format!(
                    "socket,id=agent,path={},server=on,wait=off",
                    sock.display()
                ))
                .args(["-device", "virtio-serial-pci"])
                .args([
                    "-device",
                    "virtserialport,chardev=agent,name=org.qemu.guest_agent.0",
                ]);
        }
        let (console_socket, vnc_socket) = if self.interactive {
            let (sock, vnc) = (self.dir.join("console.sock"), self.dir.join("vnc.sock"));
            c.arg("-chardev")
                .arg(format!(
                    "socket,id=con,path={},server=on,wait=off,logfile={}",
                    sock.display(),
                    console.display()
                ))
                .args(["-serial", "chardev:con"])
                .arg("-vnc")
                .arg(format!("unix:{}", vnc.display()));
            (Some(sock), Some(vnc))
        } else {
            c.arg("-serial").arg(format!("file:{}", console.display()));
            (None, None)
        };
        c.arg("-chardev")
            .arg(format!("file,id=fw,path={}", firmware_log.display()))
            .args(["-device", "isa-debugcon,iobase=0x402,chardev=fw"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        if let Firmware::Uefi(code) = &self.firmware {
            c.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                code.display()
            ));
            // The firmware's variables: a fresh copy of its empty store, thrown away with the
            // folder (the boot entries a guest writes never outlive the check).
            let vars = self.dir.join("efivars.fd");
            let blank = ovmf_vars(code);
            std::fs::copy(&blank, &vars).map_err(|e| Error::io(&blank, e))?;
            c.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
        }
        for (k, drive) in self.drives.iter().enumerate() {
            c.arg("-drive")
                .arg(format!(
                    "file={},format=raw,if=none,id=d{k},snapshot=on",
                    drive.file()
                ))
                .arg("-device")
                .arg(format!("virtio-blk-pci,drive=d{k},bootindex={}", k + 1));
        }
        // The overlays qemu makes for snapshot=on go here, and go with the folder.
        c.env("TMPDIR", &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).map_err(|e| Error::io(&stderr, e))?);
        let child = c.spawn().map_err(|e| Error::io(&self.qemu, e))?;
        Ok(Vm {
            child,
            console,
            firmware_log,
            stderr,
            console_socket,
            vnc_socket,
            agent_socket,
            qmp,
        })
    }
}

impl Vm {
    /// Whether qemu has ended (and how).
    ///
    /// # Errors
    /// The process's status that cannot be read.
    pub fn ended(&mut self) -> Result<Option<std::process::ExitStatus>> {
        self.child
            .try_wait()
            .map_err(|e| Error::io(Path::new("qemu"), e))
    }

    /// A screenshot of the VM's display, as PNG, into `png` (QMP `screendump`).
    ///
    /// # Errors
    /// QMP that does not answer, or refuses.
    pub fn screenshot(&self, png: &Path) -> Result<()> {
        let mut qmp = Qmp::connect(&self.qmp)?;
        qmp.execute(&serde_json::json!({
            "execute": "screendump",
            "arguments": {"filename": png.display().to_string(), "format": "png"},
        }))
        .map(drop)
    }

    /// The guest network's connections, as qemu's monitor lists them (`info usernet`).
    ///
    /// # Errors
    /// QMP that does not answer.
    pub fn usernet(&self) -> Result<String> {
        let mut qmp = Qmp::connect(&self.qmp)?;
        let answer = qmp.execute(&serde_json::json!({
            "execute": "human-monitor-command",
            "arguments": {"command-line": "info usernet"},
        }))?;
        Ok(answer.as_str().unwrap_or("").to_owned())
    }

    /// Ends the VM: QMP `quit`, then a kill if it has not ended within 10 s.
    pub fn stop(mut self) {
        if let Ok(mut qmp) = Qmp::connect(&self.qmp) {
            let _ = qmp.execute(&serde_json::json!({"execute": "quit"}));
        }
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A QMP connection, capabilities negotiated.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> Result<Self> {
        let until = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= until => return Err(Error::io(path, e)),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let timeout = Some(Duration::from_secs(30));
        stream
            .set_read_timeout(timeout)
            .map_err(|e| Error::io(path, e))?;
        let writer = stream.try_clone().map_err(|e| Error::io(path, e))?;
        let mut qmp = Self {
            reader: BufReader::new(stream),
            writer,
        };
        // The greeting, then the capabilities handshake.
        qmp.line()?;
        qmp.execute(&serde_json::json!({"execute": "qmp_capabilities"}))?;
        Ok(qmp)
    }

    fn line(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| Error::Qmp(e.to_string()))?;
        if n == 0 {
            return Err(Error::Qmp("qemu closed its QMP socket".into()));
        }
        serde_json::from_str(&line).map_err(|e| Error::Qmp(format!("{e}: {line}")))
    }

    /// Sends `command` and waits for its answer (events on the way are skipped, at most 64):
    /// what it returned.
    fn execute(&mut self, command: &serde_json::Value) -> Result<serde_json::Value> {
        let mut text = command.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| Error::Qmp(e.to_string()))?;
        for _ in 0..64 {
            let mut answer = self.line()?;
            if let Some(r) = answer.get_mut("return") {
                return Ok(r.take());
            }
            if let Some(e) = answer.get("error") {
                return Err(Error::Qmp(format!("{} refused: {e}", command["execute"])));
            }
        }
        Err(Error::Qmp(format!(
            "no answer to {} among 64 events",
            command["execute"]
        )))
    }
}
