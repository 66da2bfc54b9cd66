//! `cairn job`: a job file of three VMs (a file, qemu-nbd with a dirty bitmap, a command's
//! output on stdin), prune, a verify subset and replicate, run through `cairn job run`; each
//! run recorded (outcome, points, bytes), a failing source recorded with its error; a second
//! run of a job while one runs skips or waits, as the job says; a job file with a mistake is
//! refused naming the line; the systemd units `cairn job install` writes pass `systemd-analyze
//! verify`.

use std::path::Path;
use std::process::Command;

use cairn_tests::disks::gen_disk;
use cairn_tests::nbd::nbd_serve;
use cairn_tests::{TestStore, error_text, json, ok, run};

fn job(file: &Path, args: &[&str]) -> Command {
    let mut c = cairn_tests::cairn(["job"]);
    c.args(args)
        .arg("--file")
        .arg(file)
        .env_remove("CAIRN_STORE");
    c
}

#[test]
fn three_vms_prune_verify_and_replicate_run_from_one_file_and_each_run_is_recorded() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let store = TestStore::new("256K");
    let replica = TestStore::new("256K");
    // web01: an image file; db01: a qcow2 served by qemu-nbd with a dirty bitmap; app01: the
    // output of a command.
    let web = w.join("web01.raw");
    gen_disk(&web, "16M", 1, 1, 0);
    let db_raw = w.join("db01.raw");
    gen_disk(&db_raw, "16M", 2, 1, 0);
    let db = w.join("db01.qcow2");
    ok(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&db_raw)
        .arg(&db));
    ok(Command::new("qemu-img")
        .args(["bitmap", "--add"])
        .arg(&db)
        .arg("nightly"));
    let app = w.join("app01.raw");
    gen_disk(&app, "16M", 3, 1, 0);
    let nbd = nbd_serve(&db, "qcow2", &["nightly"]);
    let file = w.join("jobs.toml");
    std::fs::write(
        &file,
        format!(
            r#"# The nightly jobs of a small fleet.
[defaults]
store = "{store}"

[jobs.web01]
run = "backup"
schedule = "Mon..Fri 02:00"
vm = "web01"
vm-uuid = "6f1c2a4e-0b1d-4c3e-9a8f-1d2e3f4a5b6c"
pool = "xcp-pool-1"
tag = ["prod", "web"]
disks.xvda = "{web}"

[jobs.db01]
run = "backup"
schedule = "daily"
vm = "db01"
dirty-bitmap = "nightly"
disks.xvda = "{nbd}"

[jobs.app01]
run = "backup"
schedule = "*-*-* 03:30"
vm = "app01"
disks.xvda = {{ command = "cat '{app}'" }}

[jobs.prune]
run = "prune"
schedule = "daily"
keep-daily = 7

[jobs.verify]
run = "verify"
schedule = "Sun 05:00"
subset = "1/7"

[jobs.offsite]
run = "replicate"
schedule = "daily"
from = "{store}"
to = "{replica}"
"#,
            store = store.path().display(),
            web = web.display(),
            nbd = nbd.uri("disk"),
            app = app.display(),
            replica = replica.path().display(),
        ),
    )
    .expect("job file");
    let checked = json(&ok(&mut job(&file, &["check", "--json"])));
    assert_eq!(
        checked["jobs"].as_array().map(Vec::len),
        Some(6),
        "{checked}"
    );
    assert_eq!(checked["jobs"][0]["normalized"], "Mon..Fri *-*-* 02:00:00");

    // db01's bitmap says what changed since its last backup, and there is none yet: that run
    // fails, is recorded with cairn's own words, and the other jobs run.
    let out = run(&mut job(&file, &["run", "--all"]));
    assert_eq!(out.status.code(), Some(1), "{}", error_text(&out));
    let history = json(&ok(&mut job(&file, &["history", "--json"])));
    let runs = history.as_array().expect("runs");
    let outcome = |name: &str| {
        runs.iter()
            .find(|r| r["job"] == name)
            .map(|r| r["outcome"].as_str().expect("outcome").to_owned())
            .expect(name)
    };
    assert_eq!(outcome("web01"), "ok", "{history}");
    assert_eq!(outcome("app01"), "ok", "{history}");
    assert_eq!(outcome("db01"), "failed", "{history}");
    assert_eq!(outcome("prune"), "ok", "{history}");
    assert_eq!(outcome("verify"), "ok", "{history}");
    assert_eq!(outcome("offsite"), "ok", "{history}");
    let db_run = runs.iter().find(|r| r["job"] == "db01").expect("db01");
    assert!(
        db_run["error"]
            .as_str()
            .expect("error")
            .contains("no point yet"),
        "{db_run}"
    );
    let web_run = runs.iter().find(|r| r["job"] == "web01").expect("web01");
    assert_eq!(
        web_run["points"].as_array().map(Vec::len),
        Some(1),
        "{web_run}"
    );
    assert!(web_run["bytes_stored"].as_u64().expect("bytes") > 0);
    assert_eq!(web_run["trigger"], "manual");
    // The report says each job's last run, the failed one with its error, in red on the page.
    let report = json(&ok(&mut store.cmd(&["report", "--json"])));
    let jobs = report["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 6, "{report}");
    let db_job = jobs.iter().find(|j| j["job"] == "db01").expect("db01");
    assert_eq!(db_job["last_run"]["outcome"], "failed", "{db_job}");
    assert!(db_job["last_success"].is_null(), "{db_job}");
    assert!(
        db_job["last_run"]["error"]
            .as_str()
            .expect("error")
            .contains("no point yet"),
        "{db_job}"
    );
    let page = w.join("report.html");
    ok(store.cmd(&["report", "--html"]).arg(&page));
    let html = std::fs::read_to_string(&page).expect("page");
    assert!(
        html.contains("<section id=\"jobs\">")
            && html.contains("<td class=\"bad\">FAILED (exit 1)"),
        "no failed job on the page"
    );
    // What each backup job made is what the store holds, with the job's identity and tags.
    let listed = json(&ok(&mut store.cmd(&["list", "--json"])));
    let web_point = listed
        .as_array()
        .expect("points")
        .iter()
        .find(|p| p["vm"] == "web01")
        .expect("web01's point");
    assert_eq!(web_point["id"], web_run["points"][0]);
    assert_eq!(web_point["tags"], serde_json::json!(["prod", "web"]));
    assert_eq!(web_point["pool"], "xcp-pool-1");
    // The replica got the points the store had when offsite ran.
    let replicated = json(&ok(&mut replica.cmd(&["list", "--json"])));
    assert_eq!(replicated.as_array().map(Vec::len), Some(2), "{replicated}");

    // After a whole backup of db01, its job reads only what the bitmap marks.
    let full = store.backup(
        "db01",
        "2026-11-01T02:00:00Z",
        "xvda",
        Path::new(&nbd.uri("disk")),
        &[],
    );
    assert!(full["key"].as_bool().expect("key"));
    let out = run(&mut job(&file, &["run", "--json", "db01"]));
    assert_eq!(out.status.code(), Some(0), "{}", error_text(&out));
    let line = json(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(line["outcome"], "ok", "{line}");
    assert_eq!(line["points"].as_array().map(Vec::len), Some(1), "{line}");

    // `job list` says each job's last run.
    let listed = json(&ok(&mut job(&file, &["list", "--json"])));
    let db = listed
        .as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["name"] == "db01")
        .expect("db01");
    assert_eq!(db["last_run"]["outcome"], "ok", "{db}");
    let table = ok(&mut job(&file, &["list"]));
    assert!(
        table.contains("web01") && table.contains("Mon..Fri 02:00"),
        "{table}"
    );
}

#[test]
fn a_second_run_of_a_job_skips_or_waits_and_says_so() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let store = TestStore::new("256K");
    let disk = w.join("d.raw");
    gen_disk(&disk, "8M", 1, 1, 0);
    let locks = w.join("locks");
    // The disk comes from a command that holds the run for 3 seconds.
    let write = |overlap: &str| {
        let file = w.join(format!("{overlap}.toml"));
        std::fs::write(
            &file,
            format!(
                "[jobs.slow]\nrun = \"backup\"\nstore = \"{}\"\nvm = \"slow\"\noverlap = \"{overlap}\"\n\
                 disks.xvda = {{ command = \"sleep 3; cat '{}'\" }}\n",
                store.path().display(),
                disk.display()
            ),
        )
        .expect("job file");
        file
    };
    for (overlap, second) in [("skip", "skipped"), ("wait", "ok")] {
        let file = write(overlap);
        let first = job(&file, &["run", "--json", "slow"])
            .env("CAIRN_JOB_LOCKS", &locks)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("first run");
        cairn_tests::wait_until("the first run's lock", || {
            std::fs::read_to_string(locks.join("slow.lock")).is_ok_and(|t| !t.is_empty())
        });
        let out = run(job(&file, &["run", "--json", "slow"]).env("CAIRN_JOB_LOCKS", &locks));
        let line = json(String::from_utf8_lossy(&out.stdout).trim());
        assert_eq!(line["outcome"], second, "{overlap}: {line}");
        if overlap == "skip" {
            assert!(
                line["error"]
                    .as_str()
                    .expect("error")
                    .contains("another run of job slow"),
                "{line}"
            );
        } else {
            assert!(
                line["waited_seconds"].as_f64().expect("waited") > 1.0,
                "{line}"
            );
        }
        let first = first.wait_with_output().expect("first");
        assert!(first.status.success());
        let _ = std::fs::remove_file(locks.join("slow.lock"));
    }
    // Each run is in the history, the skipped one with why.
    let history = json(&ok(&mut job(&w.join("wait.toml"), &["history", "--json"])));
    let outcomes: Vec<&str> = history
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["outcome"].as_str().expect("outcome"))
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "skipped").count(),
        1,
        "{history}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| **o == "ok").count(),
        3,
        "{history}"
    );
}

#[test]
fn a_job_file_with_a_mistake_is_refused_naming_its_line() {
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("jobs.toml");
    for (text, line, says) in [
        (
            "[jobs.a]\nrun = \"backup\"\nvm = \"a\"\nvm-uid = \"x\"\ndisks.xvda = \"/d\"\n",
            4,
            "takes no --vm-uid",
        ),
        (
            "[jobs.a]\nrun = \"prune\"\nschedule = \"Mon..Fry 02:00\"\n",
            3,
            "weekday",
        ),
        ("[jobs.a]\nrun = \"restore\"\n", 2, "a job runs one of"),
        (
            "[jobs.a]\nrun = \"prune\"\nkeep-daily = true\n",
            3,
            "takes a value",
        ),
        (
            "[jobs.a]\nrun = \"backup\"\nvm = \"a\"\nwait = \"yes\"\ndisks.xvda = \"/d\"\n",
            4,
            "is a switch",
        ),
        (
            "[jobs.a]\nrun = \"gc\"\n\n[jobz.b]\nrun = \"gc\"\n",
            4,
            "unknown key",
        ),
        ("[jobs.a]\nrun = \"gc\"\nschedule = \n", 3, ""),
        (
            "[jobs.a]\nrun = \"gc\"\ndisks.xvda = \"/d\"\n",
            1,
            "disks are a backup's",
        ),
        ("[jobs.\"a b\"]\nrun = \"gc\"\n", 1, "a job's name"),
    ] {
        std::fs::write(&file, text).expect("write");
        let out = run(&mut job(&file, &["check"]));
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = error_text(&out);
        assert!(
            err.contains(&format!("jobs.toml:{line}:")) && err.contains(says),
            "{text}: {err}"
        );
    }
}

#[test]
fn the_installed_systemd_units_verify_and_say_the_schedule() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let file = w.join("jobs.toml");
    std::fs::write(
        &file,
        "[defaults]\nstore = \"/var/lib/cairn/store\"\n\n[jobs.nightly]\nrun = \"gc\"\n\
         schedule = \"Mon..Fri 02:00\"\ndescription = \"collect garbage\"\n\n[jobs.manual]\nrun = \"verify\"\n",
    )
    .expect("job file");
    let units = w.join("units");
    let said = ok(&mut job(
        &file,
        &["install", "--dir", units.to_str().expect("utf-8")],
    ));
    assert!(
        said.contains("systemctl enable --now cairn-job-nightly.timer"),
        "{said}"
    );
    let timer = std::fs::read_to_string(units.join("cairn-job-nightly.timer")).expect("timer");
    assert!(
        timer.contains("OnCalendar=Mon..Fri *-*-* 02:00:00"),
        "{timer}"
    );
    assert!(timer.contains("Persistent=true"), "{timer}");
    // Only scheduled jobs get units.
    assert!(!units.join("cairn-job-manual.timer").exists());
    let service =
        std::fs::read_to_string(units.join("cairn-job-nightly.service")).expect("service");
    assert!(
        service.contains("job run --file") && service.contains("--trigger timer nightly"),
        "{service}"
    );
    // systemd's own check of the units (its ExecStart binary exists: the cairn under test).
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("cairn-job-nightly.service"))
        .arg(units.join("cairn-job-nightly.timer")));
    assert!(out.status.success(), "{}", error_text(&out));
    let complaints = error_text(&out);
    assert!(!complaints.contains("cairn-job"), "{complaints}");
}

/// A local HTTP receiver (Python's http.server on 127.0.0.1, a port it picks): each POST's body
/// appended to `log` as a line; the first POST is answered 500 (a webhook is tried again).
fn http_receiver(log: &Path) -> (std::process::Child, u16) {
    let script = r#"
import http.server, sys
log, first = sys.argv[1], [True]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('content-length', 0)))
        if first[0]:
            first[0] = False
            self.send_response(500); self.end_headers(); return
        with open(log, 'ab') as f:
            f.write(body.replace(b'\n', b' ') + b'\n')
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
s = http.server.HTTPServer(('127.0.0.1', 0), H)
print(s.server_address[1], flush=True)
for _ in range(20):
    s.handle_request()
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(log)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("port");
    (child, line.trim().parse().expect("port"))
}

/// An SMTP server started by `command` (given the free port of 127.0.0.1 it is to listen on),
/// once it listens.
fn smtp_at_a_free_port(command: impl FnOnce(u16) -> Command) -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = command(port)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("aiosmtpd (scripts/setup.sh installs it with pip)");
    cairn_tests::wait_until("aiosmtpd listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (child, port)
}

/// aiosmtpd (a real SMTP server, from PyPI: scripts/setup.sh installs it) on 127.0.0.1 at a
/// free port, delivering into the Maildir `maildir`.
fn smtp_server(maildir: &Path) -> (std::process::Child, u16) {
    smtp_at_a_free_port(|port| {
        let mut c = Command::new("python3");
        c.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir);
        c
    })
}

#[test]
fn a_failed_run_sends_one_mail_and_one_webhook_naming_the_job_and_the_error() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let store = TestStore::new("256K");
    let hooks = w.join("hooks.jsonl");
    let (mut http, http_port) = http_receiver(&hooks);
    let maildir = w.join("mail");
    let (mut smtp, smtp_port) = smtp_server(&maildir);
    let file = w.join("jobs.toml");
    std::fs::write(
        &file,
        format!(
            "[defaults]\nstore = \"{store}\"\n\n[notify]\nwebhook = \"http://127.0.0.1:{http_port}/hook\"\n\
             mail.to = [\"ops@example.com\"]\nmail.from = \"cairn@backup1.example.com\"\n\
             mail.smtp = \"smtp+insecure://127.0.0.1:{smtp_port}\"\n\n\
             [jobs.broken]\nrun = \"backup\"\nvm = \"web09\"\ndisks.xvda = \"{missing}\"\n\n\
             [jobs.fine]\nrun = \"gc\"\n",
            store = store.path().display(),
            missing = w.join("gone/web09.raw").display(),
        ),
    )
    .expect("job file");
    let out = run(&mut job(&file, &["run", "--all"]));
    assert_eq!(out.status.code(), Some(1), "{}", error_text(&out));
    assert!(
        !error_text(&out).contains("not told"),
        "{}",
        error_text(&out)
    );
    // One webhook (after its retry), for the failed job only, with the error and the rerun.
    let posted = std::fs::read_to_string(&hooks).expect("the webhook's posts");
    let posts: Vec<serde_json::Value> = posted.lines().map(json).collect();
    assert_eq!(posts.len(), 1, "{posted}");
    assert_eq!(posts[0]["job"], "broken");
    assert_eq!(posts[0]["outcome"], "failed");
    assert!(
        posts[0]["error"]
            .as_str()
            .expect("error")
            .contains("gone/web09.raw"),
        "{}",
        posts[0]
    );
    assert!(
        posts[0]["rerun"]
            .as_str()
            .expect("rerun")
            .contains("cairn job run --file"),
        "{}",
        posts[0]
    );
    // One mail, saying the job, the error and how to run it again.
    let mails: Vec<_> = std::fs::read_dir(maildir.join("new"))
        .expect("the maildir")
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).expect("mail"))
        .collect();
    assert_eq!(mails.len(), 1, "{mails:?}");
    let mail = &mails[0];
    assert!(
        mail.contains("Subject: cairn job broken FAILED on"),
        "{mail}"
    );
    assert!(mail.contains("To: ops@example.com"), "{mail}");
    assert!(mail.contains("gone/web09.raw"), "{mail}");
    assert!(
        mail.contains("To run it again: cairn job run --file"),
        "{mail}"
    );
    let _ = http.kill();
    let _ = http.wait();
    let _ = smtp.kill();
    let _ = smtp.wait();
}

/// The runs `cairn serve`'s scheduler recorded for `job` (its jobs name the server's URL, so
/// their records are in the server's state folder).
fn served_runs(state: &Path, job: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(state.join("cairn/job-runs").join(format!("{job}.json")))
        .map(|t| json(&t).as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
}

#[test]
fn cairn_serve_runs_the_schedule_and_a_missed_run_only_once() {
    use cairn_tests::serve::{Server, token};
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let store = TestStore::new("256K");
    let admin = token(&store.path(), "ops", "admin", "*");
    std::fs::write(w.join("admin.token"), &admin).expect("token file");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let state = w.join("state");
    let file = w.join("jobs.toml");
    // The server holds its store's write lock: its jobs reach the store through it.
    std::fs::write(
        &file,
        format!(
            "[defaults]\nstore = \"https://127.0.0.1:{port}\"\ntoken-file = \"{token}\"\n\
             server-ca = \"{ca}\"\n\n[jobs.tick]\nrun = \"gc\"\nschedule = \"*:0/10\"\ndry-run = true\n\n\
             [jobs.nightly]\nrun = \"gc\"\nschedule = \"daily\"\ndry-run = true\n",
            token = w.join("admin.token").display(),
            ca = store.path().join("tls/cert.pem").display(),
        ),
    )
    .expect("job file");
    let jobs = file.to_str().expect("utf-8");
    // A clock 600 times as fast from 00:00:30: `*:0/10` comes every real second, `daily` not
    // for two minutes.
    let env = |clock: Option<&str>| {
        let mut e = vec![("XDG_STATE_HOME", state.display().to_string())];
        if let Some(c) = clock {
            e.push(("CAIRN_JOB_CLOCK", c.to_owned()));
        }
        e
    };
    let mut server = Server::start_with(
        &store.path(),
        port,
        &["--jobs", jobs],
        &env(Some("2026-12-07T00:00:30Z*600")),
    );
    // The host keeps its record of a run before it sends it to the server's store: both are
    // waited for, or the server may stop with the last one still on its way.
    let kept_by_store = || {
        std::fs::read_to_string(store.path().join("job-runs/tick.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0)
    };
    cairn_tests::wait_until("three runs of tick, on the host and in the store", || {
        served_runs(&state, "tick").len() >= 3 && kept_by_store() >= 3
    });
    server.stop();
    let ticks = served_runs(&state, "tick");
    for r in &ticks {
        assert_eq!(r["outcome"], "ok", "{r}");
        assert_eq!(r["trigger"], "serve", "{r}");
    }
    assert!(served_runs(&state, "nightly").is_empty());
    // The server's store keeps them too (its report and metrics say them).
    let kept = json(
        &std::fs::read_to_string(store.path().join("job-runs/tick.json"))
            .expect("the store's records"),
    );
    assert!(kept.as_array().is_some_and(|r| r.len() >= 3), "{kept}");

    // nightly last ran three days ago: the server, started again, runs it once, not three times.
    let ago = (chrono::Utc::now() - chrono::Duration::days(3)).to_rfc3339();
    std::fs::write(
        state.join("cairn/job-runs/nightly.json"),
        format!(
            r#"[{{"job": "nightly", "started": "{ago}", "ended": "{ago}", "outcome": "ok",
                "exit_code": 0, "error": null, "command": ["gc"], "points": [],
                "bytes_stored": 0, "waited_seconds": null, "trigger": "timer"}}]"#
        ),
    )
    .expect("an old record");
    let mut server = Server::start_with(&store.path(), port, &["--jobs", jobs], &env(None));
    cairn_tests::wait_until("the missed nightly run", || {
        served_runs(&state, "nightly").len() >= 2
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    server.stop();
    let nightly = served_runs(&state, "nightly");
    assert_eq!(nightly.len(), 2, "{nightly:?}");
    assert_eq!(nightly[1]["trigger"], "serve");
    assert_eq!(nightly[1]["outcome"], "ok", "{}", nightly[1]);
}

/// An SMTP server (aiosmtpd's, through its Python API) on 127.0.0.1 at a free port that takes
/// mail only over STARTTLS with `cert`/`key`, and only from `user` with `password` (AUTH after
/// TLS), delivering into the Maildir `maildir`.
fn smtp_server_with_auth(
    maildir: &Path,
    cert: &Path,
    key: &Path,
    user: &str,
    password: &str,
) -> (std::process::Child, u16) {
    let script = r#"
import ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword
maildir, cert, key, user, password, port = sys.argv[1:7]
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
def check(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login == user.encode() and data.password == password.encode()
    return AuthResult(success=ok)
c = Controller(Mailbox(maildir), hostname='127.0.0.1', port=int(port), tls_context=ctx,
               require_starttls=True, authenticator=check, auth_required=True, auth_require_tls=True)
c.start()
time.sleep(600)
"#;
    smtp_at_a_free_port(|port| {
        let mut c = Command::new("python3");
        c.args(["-c", script])
            .arg(maildir)
            .arg(cert)
            .arg(key)
            .args([user, password, &port.to_string()]);
        c
    })
}

#[test]
fn mail_goes_over_starttls_with_its_login_only_to_a_server_whose_certificate_checks() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let store = TestStore::new("256K");
    let (ca, cert, key) = cairn_tests::certificates(w);
    let maildir = w.join("mail");
    let (mut smtp, port) = smtp_server_with_auth(&maildir, &cert, &key, "cairn", "s3cret pass");
    std::fs::write(w.join("good.pass"), "s3cret pass\n").expect("password");
    std::fs::write(w.join("bad.pass"), "guess\n").expect("password");
    let write = |name: &str, extra: &str| {
        let file = w.join(name);
        std::fs::write(
            &file,
            format!(
                "[notify]\nmail.to = [\"ops@example.com\"]\nmail.from = \"cairn@backup1.example.com\"\n\
                 mail.smtp = \"smtp://127.0.0.1:{port}\"\nmail.user = \"cairn\"\n{extra}\n\
                 [jobs.broken]\nrun = \"backup\"\nstore = \"{}\"\nvm = \"web09\"\ndisks.xvda = \"{}\"\n",
                store.path().display(),
                w.join("gone.raw").display(),
            ),
        )
        .expect("job file");
        file
    };
    let mails = || std::fs::read_dir(maildir.join("new")).map_or(0, |d| d.count());
    let ca_line = format!("mail.ca-file = \"{}\"", ca.display());
    // (A wrong password costs lettre's 30 s timeout against aiosmtpd: it tries LOGIN after
    // PLAIN is refused, and aiosmtpd waits for more.)
    let told = |file: &Path| {
        let out = run(&mut job(file, &["run", "broken"]));
        assert_eq!(out.status.code(), Some(1));
        error_text(&out)
    };
    // Its CA named and the right password: the mail goes, over STARTTLS, logged in.
    let good = write(
        "good.toml",
        &format!(
            "{ca_line}\nmail.password-file = \"{}\"",
            w.join("good.pass").display()
        ),
    );
    let err = told(&good);
    assert!(!err.contains("not told"), "{err}");
    assert_eq!(mails(), 1);
    // A wrong password, and a certificate nothing vouches for: no mail, and the run says so.
    let bad = write(
        "bad.toml",
        &format!(
            "{ca_line}\nmail.password-file = \"{}\"",
            w.join("bad.pass").display()
        ),
    );
    let unknown = write(
        "unknown.toml",
        &format!("mail.password-file = \"{}\"", w.join("good.pass").display()),
    );
    for file in [bad, unknown] {
        let err = told(&file);
        assert!(
            err.contains("not told") && err.contains("mail via smtp://"),
            "{err}"
        );
    }
    assert_eq!(mails(), 1);
    let _ = smtp.kill();
    let _ = smtp.wait();
}

#[test]
fn a_disk_fed_by_a_command_that_fails_fails_the_run_with_the_commands_words() {
    let work = tempfile::tempdir().expect("tempdir");
    let store = TestStore::new("256K");
    let file = work.path().join("jobs.toml");
    std::fs::write(
        &file,
        format!(
            "[jobs.fed]\nrun = \"backup\"\nstore = \"{}\"\nvm = \"fed\"\n\
             disks.xvda = {{ command = \"echo 'xe: VDI export refused' >&2; exit 3\" }}\n",
            store.path().display()
        ),
    )
    .expect("job file");
    let out = run(&mut job(&file, &["run", "--json", "fed"]));
    assert_eq!(out.status.code(), Some(1), "{}", error_text(&out));
    let line = json(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(line["outcome"], "failed", "{line}");
    let error = line["error"].as_str().expect("error");
    assert!(
        error.contains("the command feeding the backup") && error.contains("VDI export refused"),
        "{line}"
    );
    // Nothing was stored for it.
    let listed = json(&ok(&mut store.cmd(&["list", "--json"])));
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
}
