//! The systemd units that run a job file's schedules (`cairn job install`): per scheduled job a
//! oneshot service that runs `cairn job run` (which takes the job's lock: runs never overlap)
//! and a timer with the job's schedule, `Persistent=true` (a run missed while the machine was
//! down runs once at boot, not once per missed time).
//!
//! The service is hardened as far as a backup allows: no new privileges, its own /tmp, /usr,
//! /boot and /etc read-only, no kernel tunables, modules or control groups, no SUID/SGID, no
//! realtime, personality locked. Writing the store, reading disks and (for check-boot) running
//! qemu stay possible.

use std::path::Path;

use crate::file::{Job, JobFile};

/// The name of a job's units, without the suffix (`cairn-job-NAME`).
#[must_use]
pub fn unit_name(job: &Job) -> String {
    format!("cairn-job-{}", job.name)
}

/// The units of each scheduled job of `file`: `(file name, contents)`, service then timer.
/// `exe` is the `cairn` binary the service runs.
#[must_use]
pub fn units(file: &JobFile, exe: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for job in &file.jobs {
        let Some(schedule) = &job.schedule else {
            continue;
        };
        let name = unit_name(job);
        let what = job
            .description
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        out.push((
            format!("{name}.service"),
            format!(
                "# Written by `cairn job install` from {file}; edit the job file and install again.\n\
                 [Unit]\n\
                 Description=cairn job {job}{what}\n\
                 Wants=network-online.target\n\
                 After=network-online.target\n\
                 \n\
                 [Service]\n\
                 Type=oneshot\n\
                 ExecStart={exe} job run --file {file} --trigger timer {job}\n\
                 NoNewPrivileges=yes\n\
                 PrivateTmp=yes\n\
                 ProtectSystem=full\n\
                 ProtectKernelTunables=yes\n\
                 ProtectKernelModules=yes\n\
                 ProtectControlGroups=yes\n\
                 RestrictSUIDSGID=yes\n\
                 RestrictRealtime=yes\n\
                 LockPersonality=yes\n",
                file = quoted(&file.path),
                job = job.name,
                exe = quoted(exe),
            ),
        ));
        out.push((
            format!("{name}.timer"),
            format!(
                "# Written by `cairn job install` from {file}.\n\
                 [Unit]\n\
                 Description=Schedule of cairn job {job} ({schedule})\n\
                 \n\
                 [Timer]\n\
                 OnCalendar={normalized}\n\
                 Persistent=true\n\
                 Unit={name}.service\n\
                 \n\
                 [Install]\n\
                 WantedBy=timers.target\n",
                file = file.path.display(),
                job = job.name,
                schedule = schedule.text(),
                normalized = schedule.normalized(),
            ),
        ));
    }
    out
}

/// A path as systemd's command lines take it: in double quotes, `\` and `"` escaped, `%`
/// doubled (systemd's specifiers).
fn quoted(p: &Path) -> String {
    let s = p.display().to_string();
    format!(
        "\"{}\"",
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('%', "%%")
    )
}
