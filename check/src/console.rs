//! What a booting VM says, judged: the guest's serial console and the firmware's debug output
//! read for a success signal (a login prompt, or the line the admin names) and for the ways a
//! boot fails that can be recognised (no bootloader, a kernel panic, GRUB's rescue prompt).

/// How a boot ended, as far as the console tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The success signal was seen: the line that holds it.
    Booted(String),
    /// A failure was seen: why, in a few words, and the line that says it.
    Failed {
        /// Why, for people: `no bootloader found`, `kernel panic`.
        why: String,
        /// The console line that shows it.
        line: String,
    },
}

/// What is looked for.
#[derive(Debug, Clone)]
pub struct Signals {
    /// Text whose appearance on the console means the guest came up; by default a login
    /// prompt (a line ending in `login:`).
    pub expect: Vec<String>,
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            expect: vec!["login:".into()],
        }
    }
}

/// What firmware and kernels print when a boot fails, and what it means.
const FAILURES: [(&str, &str); 10] = [
    ("No bootable device", "no bootloader found"),
    (
        "No bootable option or device was found",
        "no bootloader found",
    ),
    (
        "UEFI Interactive Shell",
        "no bootloader found (the firmware started its UEFI shell)",
    ),
    ("Boot failed: not a bootable disk", "no bootloader found"),
    (
        "Missing operating system",
        "no operating system on the boot disk",
    ),
    (
        "Operating system not found",
        "no operating system on the boot disk",
    ),
    ("Kernel panic - not syncing", "kernel panic"),
    (
        "grub rescue>",
        "GRUB found no configuration (rescue prompt)",
    ),
    ("Failed to load ldlinux.c32", "the bootloader is damaged"),
    ("not a COM32R image", "the bootloader is damaged"),
];

impl Signals {
    /// The texts named, else a login prompt, unless another signal (the guest agent, a port)
    /// is watched for instead.
    #[must_use]
    pub fn named(expect: &[String], other_signal: bool) -> Self {
        if expect.is_empty() && !other_signal {
            Self::default()
        } else {
            Self {
                expect: expect.to_vec(),
            }
        }
    }

    /// The verdict of `console` (the guest's serial output) and `firmware` (the BIOS's debug
    /// output), if either says one yet. A failure seen before the success signal wins.
    #[must_use]
    pub fn judge(&self, console: &str, firmware: &str) -> Option<Verdict> {
        for text in [firmware, console] {
            for line in text.lines() {
                if let Some((_, why)) = FAILURES.iter().find(|(m, _)| line.contains(m)) {
                    return Some(Verdict::Failed {
                        why: (*why).to_owned(),
                        line: clean(line),
                    });
                }
            }
        }
        console
            .lines()
            .find(|l| self.seen(l))
            .map(|l| Verdict::Booted(clean(l)))
    }

    fn seen(&self, line: &str) -> bool {
        self.expect.iter().any(|e| {
            if e == "login:" {
                line.trim_end().ends_with("login:")
            } else {
                line.contains(e.as_str())
            }
        })
    }
}

/// The last `n` lines of `text` that hold something, cleaned of control characters.
#[must_use]
pub fn last_lines(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<String> = text
        .lines()
        .map(clean)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// A console line as text for people: escape sequences and control characters dropped.
fn clean(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An ANSI escape: ESC [ ... final byte.
            if chars.next_if_eq(&'[').is_some() {
                while chars.next_if(|c| !c.is_ascii_alphabetic()).is_some() {}
                chars.next();
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_prompt_boots_and_a_panic_or_no_bootloader_fails() {
        let s = Signals::default();
        assert_eq!(
            s.judge("Debian GNU/Linux 12 web01 ttyS0\r\n\r\nweb01 login: ", ""),
            Some(Verdict::Booted("web01 login:".into()))
        );
        assert_eq!(s.judge("loading kernel...\n", ""), None);
        assert!(matches!(
            s.judge("[ 1.2] Kernel panic - not syncing: Attempted to kill init!\n", ""),
            Some(Verdict::Failed { why, .. }) if why == "kernel panic"
        ));
        assert!(matches!(
            s.judge("", "Booting from Hard Disk...\nBoot failed: not a bootable disk\n"),
            Some(Verdict::Failed { why, .. }) if why == "no bootloader found"
        ));
        // A panic after a login prompt (the guest died once up) is still a failure.
        assert!(matches!(
            s.judge("x login: \nKernel panic - not syncing: oops\n", ""),
            Some(Verdict::Failed { .. })
        ));
        let own = Signals {
            expect: vec!["READY FOR TRAFFIC".into()],
        };
        assert!(matches!(
            own.judge("web: READY FOR TRAFFIC\n", ""),
            Some(Verdict::Booted(_))
        ));
        assert_eq!(own.judge("x login: ", ""), None);
    }

    #[test]
    fn console_lines_lose_their_escapes() {
        assert_eq!(clean("\u{1b}[0;32m OK \u{1b}[0m Started\r"), " OK  Started");
        assert_eq!(last_lines("a\n\nb\nc\n", 2), ["b", "c"]);
    }
}
