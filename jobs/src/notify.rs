//! Telling someone how a run went: a webhook (a JSON POST, retried) and mail over SMTP, on a
//! failure (or on every run, as the job file says), with the error and the command to run it
//! again.
//!
//! ```toml
//! [notify]
//! on = "failure"                          # failure (the default), always, never
//! webhook = "https://hooks.example/cairn" # POSTed the run's record as JSON
//! mail.to = ["ops@example.com"]
//! mail.from = "cairn@backup1.example.com"
//! mail.smtp = "smtp://mail.example.com:587"   # STARTTLS required; smtps:// for TLS from the
//! mail.user = "cairn"                         #   start; smtp+insecure:// (no TLS) only to a
//! mail.password-file = "/etc/cairn/smtp.pass" #   relay on this machine
//! ```
//!
//! A job may say `notify = "always"` or `"never"` for itself. A notification that cannot be
//! sent is said on standard error and in nothing else: the run's own outcome stands.

use std::path::PathBuf;
use std::time::Duration;

use crate::record::{Outcome, Run};

/// When runs are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum When {
    /// Failed runs only.
    #[default]
    Failure,
    /// Every run (skipped ones too).
    Always,
    /// None.
    Never,
}

impl When {
    /// From its name in the job file.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "failure" => Some(Self::Failure),
            "always" => Some(Self::Always),
            "never" => Some(Self::Never),
            _ => None,
        }
    }

    fn tells(self, outcome: Outcome) -> bool {
        match self {
            Self::Always => true,
            Self::Failure => outcome == Outcome::Failed,
            Self::Never => false,
        }
    }
}

/// Mail over SMTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// Who gets it.
    pub to: Vec<String>,
    /// Who it is from.
    pub from: String,
    /// `smtp://HOST[:587]` (STARTTLS required), `smtps://HOST[:465]`, `smtp+insecure://HOST[:25]`.
    pub smtp: String,
    /// The SMTP user, when the server wants one.
    pub user: Option<String>,
    /// A file holding its password.
    pub password_file: Option<PathBuf>,
    /// A CA file (PEM) the server's certificate is checked against besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Notify {
    /// When, unless a job says otherwise.
    pub on: When,
    /// A URL POSTed the run's record.
    pub webhook: Option<String>,
    /// Mail.
    pub mail: Option<Mail>,
}

/// Attempts a webhook gets (a connection error or a 5xx answer is tried again).
const WEBHOOK_TRIES: u32 = 3;

impl Notify {
    /// Tells `run` (of the job file at `file`) where it should go, when `when` says so. Returns
    /// what could not be sent.
    #[must_use]
    pub fn tell(&self, when: When, run: &Run, file: &std::path::Path) -> Vec<String> {
        if !when.tells(run.outcome) {
            return Vec::new();
        }
        let host = hostname();
        let rerun = format!("cairn job run --file {} {}", file.display(), run.job);
        let mut failed = Vec::new();
        if let Some(url) = &self.webhook
            && let Err(e) = webhook(url, run, &host, &rerun)
        {
            failed.push(format!("webhook {url}: {e}"));
        }
        if let Some(mail) = &self.mail
            && let Err(e) = send_mail(mail, run, &host, &rerun)
        {
            failed.push(format!("mail via {}: {e}", mail.smtp));
        }
        failed
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "this machine".into())
}

fn webhook(url: &str, run: &Run, host: &str, rerun: &str) -> Result<(), String> {
    let mut doc = serde_json::to_value(run).map_err(|e| e.to_string())?;
    doc["host"] = host.into();
    doc["rerun"] = rerun.into();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|e| e.to_string())?;
    let mut last = String::new();
    for attempt in 0..WEBHOOK_TRIES {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(1 << (attempt - 1)));
        }
        match client
            .post(url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("cairn/", env!("CARGO_PKG_VERSION")))
            .body(doc.to_string())
            .send()
        {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) if r.status().is_server_error() => last = format!("answered {}", r.status()),
            Ok(r) => return Err(format!("answered {}", r.status())),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("{last} ({WEBHOOK_TRIES} tries)"))
}

fn subject(run: &Run, host: &str) -> String {
    let how = match run.outcome {
        Outcome::Ok => "succeeded",
        Outcome::Failed => "FAILED",
        Outcome::Skipped => "was skipped",
    };
    format!("cairn job {} {how} on {host}", run.job)
}

fn body(run: &Run, host: &str, rerun: &str) -> String {
    let mut text = format!(
        "{}\n\nstarted  {}\nended    {}\ncommand  cairn {}\n",
        subject(run, host),
        run.started
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        run.ended.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        run.command.join(" ")
    );
    if let Some(code) = run.exit_code {
        text.push_str(&format!("exit     {code}\n"));
    }
    if !run.points.is_empty() {
        text.push_str(&format!(
            "points   {} ({} bytes stored)\n",
            run.points.join(", "),
            run.bytes_stored
        ));
    }
    if let Some(e) = &run.error {
        text.push_str(&format!("\n{e}\n"));
    }
    text.push_str(&format!("\nTo run it again: {rerun}\n"));
    text
}

fn send_mail(mail: &Mail, run: &Run, host: &str, rerun: &str) -> Result<(), String> {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParametersBuilder};
    use lettre::{Message, SmtpTransport, Transport};

    let mut msg = Message::builder()
        .from(
            mail.from
                .parse()
                .map_err(|e| format!("from {:?}: {e}", mail.from))?,
        )
        .subject(subject(run, host))
        .header(ContentType::TEXT_PLAIN);
    for to in &mail.to {
        msg = msg.to(to.parse().map_err(|e| format!("to {to:?}: {e}"))?);
    }
    let msg = msg
        .body(body(run, host, rerun))
        .map_err(|e| e.to_string())?;
    let (scheme, rest) = mail.smtp.split_once("://").ok_or_else(|| {
        format!(
            "{:?} is not smtp://, smtps:// or smtp+insecure://",
            mail.smtp
        )
    })?;
    let (server, port) = match rest.trim_end_matches('/').rsplit_once(':') {
        Some((h, p)) => (
            h.to_owned(),
            Some(p.parse::<u16>().map_err(|_| format!("port {p:?}"))?),
        ),
        None => (rest.trim_end_matches('/').to_owned(), None),
    };
    let tls = || -> Result<_, String> {
        // The system's roots (lettre's), and the CA file's.
        let mut b = TlsParametersBuilder::new(server.clone());
        if let Some(ca) = &mail.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            b = b.add_root_certificate(
                Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", ca.display()))?,
            );
        }
        b.build_rustls().map_err(|e| e.to_string())
    };
    let (tls, default_port) = match scheme {
        "smtp" => (Tls::Required(tls()?), 587),
        "smtps" => (Tls::Wrapper(tls()?), 465),
        "smtp+insecure" => (Tls::None, 25),
        s => return Err(format!("{s}://: smtp://, smtps:// or smtp+insecure://")),
    };
    let mut transport = SmtpTransport::builder_dangerous(server.clone())
        .port(port.unwrap_or(default_port))
        .tls(tls)
        .timeout(Some(Duration::from_secs(30)));
    if let Some(user) = &mail.user {
        let password = match &mail.password_file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| format!("{}: {e}", f.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            None => String::new(),
        };
        transport = transport.credentials(Credentials::new(user.clone(), password));
    }
    transport
        .build()
        .send(&msg)
        .map(drop)
        .map_err(|e| e.to_string())
}
