//! Encrypted stores' keys: where a command finds its store's key, and `cairn key`.
//!
//! A store's master key lives in a key file, sealed under a passphrase ([`cairn_crypt::KeyFile`]):
//! the file named by `--key-file` (or `CAIRN_KEY_FILE`), else the store's own under
//! `~/.config/cairn/keys/STORE_ID.json` (`$XDG_CONFIG_HOME`, `$CAIRN_KEYS_DIR` to move it). The
//! passphrase comes from `--passphrase-fd N`, `CAIRN_PASSPHRASE`, or a prompt on the terminal;
//! never from an argument (which every user of the machine can read in `ps`).
//!
//! A command that names or opens chunks (backup, restore, serve-nbd, standby, `verify --key`)
//! needs the key and fails before any work without it; the others (list, report, prune,
//! forget, gc, verify of the frames, diff) run without it and use it only when one is given.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, bail};
use cairn_crypt::{KdfParams, KeyFile, MasterKey, RecoveryPublic, RecoverySeal, RecoverySecret};
use cairn_store::Store;
use clap::{Args, Subcommand};
use serde_json::json;
use zeroize::Zeroizing;

use crate::values::parse_size;

/// Where the key and its passphrase come from (the global options).
#[derive(Debug, Clone, Default)]
pub struct KeySource {
    /// `--key-file` or `CAIRN_KEY_FILE`.
    pub key_file: Option<PathBuf>,
    /// `--passphrase-fd`.
    pub passphrase_fd: Option<i32>,
    /// The command names or opens chunks: no key is an error.
    pub needed: bool,
}

static SOURCE: OnceLock<KeySource> = OnceLock::new();
/// Keys opened by this process (each key file's passphrase is asked once, Argon2 run once).
static OPENED: Mutex<Vec<(PathBuf, MasterKey)>> = Mutex::new(Vec::new());

/// Sets where keys come from, once, before the command runs.
pub fn set_source(source: KeySource) {
    let _ = SOURCE.set(source);
}

fn source() -> KeySource {
    SOURCE.get().cloned().unwrap_or_default()
}

/// The folder of key files kept under their store's id.
fn keys_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("CAIRN_KEYS_DIR") {
        return Ok(PathBuf::from(d));
    }
    let config = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".config"),
            None => bail!("no HOME: pass --key-file or set CAIRN_KEY_FILE"),
        },
    };
    Ok(config.join("cairn").join("keys"))
}

/// The key file of the store `store_id`: the one given, else the one kept under its id. The
/// second is whether it was given.
fn key_file_of(store_id: &str) -> Result<(PathBuf, bool)> {
    Ok(match source().key_file {
        Some(f) => (f, true),
        None => (keys_dir()?.join(format!("{store_id}.json")), false),
    })
}

/// Whether a passphrase comes without asking (a descriptor or the environment).
fn passphrase_given() -> bool {
    source().passphrase_fd.is_some() || std::env::var_os("CAIRN_PASSPHRASE").is_some()
}

/// A passphrase: from `fd`, else `env`, else asked on the terminal with `prompt`.
fn read_passphrase(fd: Option<i32>, env: &str, prompt: &str) -> Result<Zeroizing<String>> {
    if let Some(fd) = fd {
        return from_fd(fd);
    }
    if let Ok(p) = std::env::var(env) {
        return Ok(Zeroizing::new(p));
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!(
            "{prompt}: no terminal to ask on: set {env} or pass a passphrase file descriptor \
             (--passphrase-fd N)"
        );
    }
    Ok(Zeroizing::new(
        rpassword::prompt_password(format!("{prompt}: ")).context("reading the passphrase")?,
    ))
}

/// The first line of what file descriptor `fd` holds (read through `/proc/self/fd`, as a
/// pipe or a file handed to this process).
fn from_fd(fd: i32) -> Result<Zeroizing<String>> {
    if fd < 0 {
        bail!("--passphrase-fd {fd}: not a file descriptor");
    }
    let mut text = Zeroizing::new(String::new());
    std::fs::File::open(format!("/proc/self/fd/{fd}"))
        .and_then(|mut f| f.read_to_string(&mut text))
        .with_context(|| format!("reading the passphrase from file descriptor {fd}"))?;
    let line = text.lines().next().unwrap_or_default();
    Ok(Zeroizing::new(line.to_owned()))
}

/// A new passphrase: from `fd`, else `env`, else asked twice on the terminal. Refused empty.
fn new_passphrase(fd: Option<i32>, env: &str) -> Result<Zeroizing<String>> {
    let given = fd.is_some() || std::env::var_os(env).is_some();
    let p = read_passphrase(fd, env, "new passphrase for the key file")?;
    if !given {
        let again = read_passphrase(None, env, "the same passphrase again")?;
        if *again != *p {
            bail!("the two passphrases differ: nothing was written");
        }
    }
    if p.is_empty() {
        bail!("an empty passphrase would leave the key readable by whoever has the key file");
    }
    Ok(p)
}

/// Reads a key file.
fn read_key_file(path: &Path) -> Result<KeyFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the key file {}", path.display()))?;
    KeyFile::from_json(&text).with_context(|| format!("{}", path.display()))
}

/// The master key of the key file at `path`, its passphrase asked once per process.
fn open_key_file(path: &Path) -> Result<MasterKey> {
    open_key_file_with(path, source().passphrase_fd, "CAIRN_PASSPHRASE")
}

/// As [`open_key_file`], the passphrase from `fd`, else `env`, else a prompt.
fn open_key_file_with(path: &Path, fd: Option<i32>, env: &str) -> Result<MasterKey> {
    if let Ok(opened) = OPENED.lock()
        && let Some((_, k)) = opened.iter().find(|(p, _)| p == path)
    {
        return Ok(k.clone());
    }
    let file = read_key_file(path)?;
    let pass = read_passphrase(fd, env, &format!("passphrase of {}", path.display()))?;
    let key = file.open(pass.as_bytes()).map_err(|e| match e {
        cairn_crypt::Error::WrongPassphrase => anyhow::anyhow!(
            "{}: the passphrase does not open this key file (or the file was altered); nothing \
             was done",
            path.display()
        ),
        e => anyhow::Error::new(e).context(path.display().to_string()),
    })?;
    if let Ok(mut opened) = OPENED.lock() {
        opened.push((path.to_path_buf(), key.clone()));
    }
    Ok(key)
}

/// The key of an encrypted store `store_id` (`what` names it in messages), when this command
/// has one to use: when it is needed, a missing key file is an error; when not, the key is
/// opened only when its passphrase is given (`CAIRN_PASSPHRASE`, `--passphrase-fd`).
fn key_for(store_id: &str, what: &str) -> Result<Option<MasterKey>> {
    let (path, given) = key_file_of(store_id)?;
    let needed = source().needed;
    // A command that can do without the key uses it when its passphrase comes without asking
    // (CAIRN_KEY_FILE set in a profile must not make `cairn list` prompt, or fail off a
    // terminal).
    if !needed && !passphrase_given() {
        return Ok(None);
    }
    if !path.exists() {
        if !needed && !given {
            return Ok(None);
        }
        bail!(
            "{what} is encrypted and its key file {} is not there: pass --key-file (or set \
             CAIRN_KEY_FILE), import a paper copy (`cairn key import`), or recover with a \
             recovery key (`cairn key recover`); nothing was done",
            path.display()
        );
    }
    open_key_file(&path).map(Some)
}

/// The keys of a store with config `config` (`what` names it) for a replication that reads or
/// seals its chunks: none for an unencrypted store; else its key, from `file` (else the key
/// file kept under its id), the passphrase from `env` or a prompt.
pub fn replication_keys(
    config: &cairn_store::StoreConfig,
    what: &str,
    file: Option<&Path>,
    env: &str,
) -> Result<Option<cairn_store::Keys>> {
    if config.encryption.is_none() {
        return Ok(None);
    }
    let path = match file {
        Some(f) => f.to_path_buf(),
        None => keys_dir()?.join(format!("{}.json", config.store_id)),
    };
    if !path.exists() {
        bail!(
            "{what} is encrypted and its key file {} is not there: a copy between stores sealed \
             differently reads and seals every chunk, which needs it",
            path.display()
        );
    }
    let key = open_key_file_with(&path, None, env)?;
    let keys = cairn_store::keys::keys_of(config, key, what)
        .with_context(|| format!("the key file {}", path.display()))?;
    Ok(Some(keys))
}

/// The key file given with `--key-file` (or `CAIRN_KEY_FILE`), if any.
pub fn given_key_file() -> Option<PathBuf> {
    source().key_file
}

/// Gives an encrypted store its key when this command has one (see [`key_for`]).
pub fn unlock_store(store: &mut Store) -> Result<()> {
    if !store.is_encrypted() {
        return Ok(());
    }
    let what = store.root().display().to_string();
    if let Some(key) = key_for(&store.config().store_id, &what)? {
        store.unlock(key)?;
    }
    Ok(())
}

/// Gives a server's encrypted store its key when this command has one: the key stays here,
/// the server never sees it.
pub fn unlock_remote(remote: &mut cairn_remote::Remote) -> Result<()> {
    let config = cairn_store::StoreRead::config(remote).clone();
    if config.encryption.is_none() {
        return Ok(());
    }
    let what = format!("the store at {}", remote.url());
    if let Some(key) = key_for(&config.store_id, &what)? {
        remote.unlock(key)?;
    }
    Ok(())
}

/// Argon2id's cost, for a key file being written.
#[derive(Debug, Args, Clone)]
pub struct KdfArgs {
    /// Memory Argon2id spends on the passphrase (more: slower to guess; every open of the key
    /// file spends it too).
    #[arg(long, value_parser = parse_size, default_value = "64M", value_name = "SIZE")]
    pub kdf_memory: u32,
    /// Argon2id's passes over that memory.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub kdf_passes: u32,
}

impl KdfArgs {
    fn params(&self) -> Result<KdfParams> {
        let p = KdfParams {
            memory_kib: self.kdf_memory / 1024,
            iterations: self.kdf_passes,
            parallelism: 1,
        };
        p.check()?;
        Ok(p)
    }
}

/// Writes a new key file at `path` (refused if one is there), private to its owner.
fn write_new_key_file(path: &Path, file: &KeyFile) -> Result<()> {
    if path.exists() {
        bail!(
            "{} exists: a key file is never overwritten (remove it first if it is truly not \
             needed)",
            path.display()
        );
    }
    cairn_store::write_atomic(path, file.to_json()?.as_bytes())
        .with_context(|| format!("writing the key file {}", path.display()))
}

/// The master key of a store being made (`cairn init --encrypt`): the key file given, when it
/// exists (one key for stores that replicate into each other: same ids, sealed chunks copied
/// as they are); else a new key, sealed into the file given or the new store's own. Returns
/// the key, its file, and whether the file was made here.
pub fn key_for_new_store(store_id: &str, kdf: &KdfArgs) -> Result<(MasterKey, PathBuf, bool)> {
    let (path, _) = key_file_of(store_id)?;
    if path.exists() {
        return Ok((open_key_file(&path)?, path, false));
    }
    let key = MasterKey::generate()?;
    let pass = new_passphrase(source().passphrase_fd, "CAIRN_PASSPHRASE")?;
    let file = KeyFile::seal(&key, pass.as_bytes(), kdf.params()?)?;
    write_new_key_file(&path, &file)?;
    Ok((key, path, true))
}

/// `cairn key`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a new master key in a new key file (for `cairn init --encrypt --key-file FILE`:
    /// stores made with one key replicate into each other incrementally).
    #[command(after_help = "Examples:\n  cairn key create /root/cairn-fleet.key\n  \
        CAIRN_PASSPHRASE=... cairn key create --kdf-memory 256M fleet.key --json")]
    Create(CreateArgs),
    /// Show a key file: its key's fingerprint, its Argon2id cost, whether it is a store's key.
    #[command(after_help = "Examples:\n  cairn key show --store /backups/store\n  \
        cairn key show --key-file fleet.key --json")]
    Show(ShowArgs),
    /// Seal the same master key under a new passphrase: the key file is rewritten, nothing in
    /// the store is.
    #[command(
        after_help = "Examples:\n  cairn key change-passphrase --store /backups/store\n  \
        CAIRN_PASSPHRASE=old CAIRN_NEW_PASSPHRASE=new cairn key change-passphrase --key-file k.json"
    )]
    ChangePassphrase(ChangeArgs),
    /// Print a key file as numbered lines of hex with check digits, to keep on paper (it still
    /// needs its passphrase).
    #[command(
        after_help = "Examples:\n  cairn key export --paper --store /backups/store | lpr\n  \
        cairn key export --paper --key-file fleet.key > key.txt"
    )]
    Export(ExportArgs),
    /// Type a paper copy back into a key file (each line's check digits find a typo in it).
    #[command(
        after_help = "Examples:\n  cairn key import key.txt --out /root/.config/cairn/keys/STORE_ID.json\n  \
        cairn key import - --out restored.key < key.txt"
    )]
    Import(ImportArgs),
    /// Make a recovery key pair: the private half into a file to keep offline, the public half
    /// printed (for `cairn key add-recovery`).
    #[command(
        after_help = "Examples:\n  cairn key new-recovery --out /media/usb/cairn-recovery.secret"
    )]
    NewRecovery(NewRecoveryArgs),
    /// Seal the store's master key for a recovery public key, in the store (`keys/`): whoever
    /// holds the private half can recover the store without its key file or passphrase.
    #[command(
        after_help = "Examples:\n  cairn key add-recovery --store /backups/store cairn-recovery-public-3f…"
    )]
    AddRecovery(AddRecoveryArgs),
    /// Open the store's master key with a recovery private key and write it into a new key file
    /// under a new passphrase (a lost passphrase, a lost key file).
    #[command(
        after_help = "Examples:\n  cairn key recover --store /backups/store --recovery-key /media/usb/cairn-recovery.secret"
    )]
    Recover(RecoverArgs),
}

/// `cairn key create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The key file to make (refused if it exists).
    pub file: PathBuf,
    #[command(flatten)]
    pub kdf: KdfArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Which key file a command is about: `--key-file`, or a store's own.
#[derive(Debug, Args)]
pub struct WhichKey {
    /// The store whose key file (kept under its id) is meant, when --key-file is not given.
    #[arg(long, env = "CAIRN_STORE")]
    pub store: Option<PathBuf>,
}

impl WhichKey {
    /// The key file meant, and the store's config when a store was named.
    fn resolve(&self) -> Result<(PathBuf, Option<cairn_store::StoreConfig>)> {
        let config = match &self.store {
            Some(s) => {
                crate::store_cmd::local_only(s)?;
                Some(cairn_store::StoreConfig::load(s)?)
            }
            None => None,
        };
        let path = match (&source().key_file, &config) {
            (Some(f), _) => f.clone(),
            (None, Some(c)) => key_file_of(&c.store_id)?.0,
            (None, None) => bail!("which key file? pass --key-file FILE or --store STORE"),
        };
        Ok((path, config))
    }
}

/// `cairn key show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub which: WhichKey,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `cairn key change-passphrase`.
#[derive(Debug, Args)]
pub struct ChangeArgs {
    #[command(flatten)]
    pub which: WhichKey,
    /// Read the new passphrase from this file descriptor (else CAIRN_NEW_PASSPHRASE, else a
    /// prompt, twice).
    #[arg(long, value_name = "FD")]
    pub new_passphrase_fd: Option<i32>,
    #[command(flatten)]
    pub kdf: KdfArgs,
}

/// `cairn key export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub which: WhichKey,
    /// The paper form (the one there is).
    #[arg(long, required = true)]
    pub paper: bool,
}

/// `cairn key import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The paper copy as typed (`-`: standard input).
    pub paper: PathBuf,
    /// The key file to write (refused if it exists).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `cairn key new-recovery`.
#[derive(Debug, Args)]
pub struct NewRecoveryArgs {
    /// The file the private half is written into (refused if it exists): keep it offline.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `cairn key add-recovery`.
#[derive(Debug, Args)]
pub struct AddRecoveryArgs {
    /// The store (a folder).
    #[arg(long, env = "CAIRN_STORE")]
    pub store: PathBuf,
    /// The recovery public key (`cairn-recovery-public-…`, as `cairn key new-recovery` prints).
    pub public_key: String,
}

/// `cairn key recover`.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The store (a folder).
    #[arg(long, env = "CAIRN_STORE")]
    pub store: PathBuf,
    /// The file holding the recovery private key.
    #[arg(long, value_name = "FILE")]
    pub recovery_key: PathBuf,
    /// The key file to write (default: --key-file, else the store's own); refused if it exists.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub kdf: KdfArgs,
}

pub fn key(cmd: &KeyCommand) -> Result<i32> {
    match cmd {
        KeyCommand::Create(a) => create(a),
        KeyCommand::Show(a) => show(a),
        KeyCommand::ChangePassphrase(a) => change_passphrase(a),
        KeyCommand::Export(a) => export(a),
        KeyCommand::Import(a) => import(a),
        KeyCommand::NewRecovery(a) => new_recovery(a),
        KeyCommand::AddRecovery(a) => add_recovery(a),
        KeyCommand::Recover(a) => recover(a),
    }
}

fn create(a: &CreateArgs) -> Result<i32> {
    if a.file.exists() {
        bail!(
            "{} exists: a key file is never overwritten",
            a.file.display()
        );
    }
    let key = MasterKey::generate()?;
    let pass = new_passphrase(source().passphrase_fd, "CAIRN_PASSPHRASE")?;
    let file = KeyFile::seal(&key, pass.as_bytes(), a.kdf.params()?)?;
    write_new_key_file(&a.file, &file)?;
    if a.json {
        crate::print_json(
            &json!({ "key_file": a.file.display().to_string(), "fingerprint": key.fingerprint() }),
        )?;
    } else {
        println!(
            "made key {} in {}: keep a copy away from the stores it opens (`cairn key export \
             --paper`)",
            key.fingerprint(),
            a.file.display()
        );
    }
    Ok(0)
}

fn show(a: &ShowArgs) -> Result<i32> {
    let (path, config) = a.which.resolve()?;
    let file = read_key_file(&path)?;
    let store_fp = config
        .as_ref()
        .and_then(|c| c.encryption.as_ref())
        .map(|e| e.key_fingerprint.clone());
    let matches = store_fp.as_ref().map(|f| *f == file.fingerprint);
    if a.json {
        crate::print_json(&json!({
            "key_file": path.display().to_string(),
            "fingerprint": file.fingerprint,
            "kdf": file.kdf,
            "kdf_memory_kib": file.params.memory_kib,
            "kdf_passes": file.params.iterations,
            "cipher": file.cipher,
            "store_fingerprint": store_fp,
            "is_the_stores_key": matches,
        }))?;
        return Ok(0);
    }
    println!("key file     {}", path.display());
    println!("fingerprint  {}", file.fingerprint);
    println!(
        "sealed with  {} ({} MiB, {} passes), {}",
        file.kdf,
        file.params.memory_kib / 1024,
        file.params.iterations,
        file.cipher
    );
    match (&config, matches) {
        (Some(c), Some(true)) => println!("store        {}: this is its key", c.store_id),
        (Some(c), Some(false)) => {
            println!("store        {}: NOT its key", c.store_id);
            return Ok(1);
        }
        (Some(c), None) => println!("store        {}: not encrypted", c.store_id),
        (None, _) => {}
    }
    Ok(0)
}

fn change_passphrase(a: &ChangeArgs) -> Result<i32> {
    let (path, _) = a.which.resolve()?;
    let file = read_key_file(&path)?;
    let old = read_passphrase(
        source().passphrase_fd,
        "CAIRN_PASSPHRASE",
        &format!("current passphrase of {}", path.display()),
    )?;
    let new = new_passphrase(a.new_passphrase_fd, "CAIRN_NEW_PASSPHRASE")?;
    let changed = file
        .change_passphrase(old.as_bytes(), new.as_bytes(), a.kdf.params()?)
        .map_err(|e| match e {
            cairn_crypt::Error::WrongPassphrase => anyhow::anyhow!(
                "{}: the current passphrase does not open this key file; nothing was changed",
                path.display()
            ),
            e => e.into(),
        })?;
    cairn_store::write_atomic(&path, changed.to_json()?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    crate::say!(
        "{}: key {} sealed under the new passphrase (nothing in the store was rewritten); \
         copies of the old key file and paper copies still open with the old one",
        path.display(),
        changed.fingerprint
    );
    Ok(0)
}

fn export(a: &ExportArgs) -> Result<i32> {
    let (path, _) = a.which.resolve()?;
    print!("{}", read_key_file(&path)?.to_paper()?);
    Ok(0)
}

fn import(a: &ImportArgs) -> Result<i32> {
    let text = if a.paper == Path::new("-") {
        let mut t = String::new();
        std::io::stdin()
            .read_to_string(&mut t)
            .context("reading standard input")?;
        t
    } else {
        std::fs::read_to_string(&a.paper)
            .with_context(|| format!("reading {}", a.paper.display()))?
    };
    let file = KeyFile::from_paper(&text).with_context(|| a.paper.display().to_string())?;
    write_new_key_file(&a.out, &file)?;
    crate::say!(
        "wrote key file {} (key {}): it opens with the passphrase it had when printed",
        a.out.display(),
        file.fingerprint
    );
    Ok(0)
}

fn new_recovery(a: &NewRecoveryArgs) -> Result<i32> {
    if a.out.exists() {
        bail!("{} exists: never overwritten", a.out.display());
    }
    let secret = RecoverySecret::generate()?;
    let mut text = secret.to_text();
    text.push('\n');
    cairn_store::write_atomic(&a.out, text.as_bytes())
        .with_context(|| format!("writing {}", a.out.display()))?;
    let public = secret.public().to_text();
    if a.json {
        crate::print_json(
            &json!({ "private_key_file": a.out.display().to_string(), "public_key": public }),
        )?;
    } else {
        println!("{public}");
        crate::say!(
            "the private half is in {}: keep it offline (it opens every store it is added to); \
             add the public half with `cairn key add-recovery --store STORE {public}`",
            a.out.display()
        );
    }
    Ok(0)
}

fn add_recovery(a: &AddRecoveryArgs) -> Result<i32> {
    let public = RecoveryPublic::from_text(&a.public_key)?;
    let mut store = crate::store_cmd::open_write(&a.store, false)?;
    if !store.is_encrypted() {
        bail!(
            "{} is not encrypted: it has no key to recover",
            a.store.display()
        );
    }
    let key =
        key_for(&store.config().store_id, &a.store.display().to_string())?.context("no key")?;
    store.unlock(key.clone())?;
    let seal = RecoverySeal::seal(&key, &public)?;
    let path = store.put_recovery_seal(&public.short(), &seal.to_json()?)?;
    crate::say!(
        "sealed key {} for {} in {}: its private half recovers the store (`cairn key recover`)",
        key.fingerprint(),
        public.to_text(),
        path.display()
    );
    Ok(0)
}

fn recover(a: &RecoverArgs) -> Result<i32> {
    crate::store_cmd::local_only(&a.store)?;
    let text = Zeroizing::new(
        std::fs::read_to_string(&a.recovery_key)
            .with_context(|| format!("reading {}", a.recovery_key.display()))?,
    );
    let secret =
        RecoverySecret::from_text(&text).with_context(|| a.recovery_key.display().to_string())?;
    let store = Store::open(&a.store, cairn_store::OpenMode::Read)?;
    let Some(enc) = store.config().encryption.clone() else {
        bail!(
            "{} is not encrypted: it has no key to recover",
            a.store.display()
        );
    };
    let mine = secret.public().to_text();
    let mut key = None;
    for (name, text) in store.recovery_seals()? {
        let seal = RecoverySeal::from_json(&text).with_context(|| name.clone())?;
        if seal.recipient == mine && seal.fingerprint == enc.key_fingerprint {
            key = Some(seal.open(&secret).with_context(|| name.clone())?);
            break;
        }
    }
    let Some(key) = key else {
        bail!(
            "{} holds no recovery seal for {mine} (`cairn key add-recovery` adds one while the \
             key is at hand)",
            a.store.display()
        );
    };
    let out = match &a.out {
        Some(o) => o.clone(),
        None => key_file_of(&store.config().store_id)?.0,
    };
    let pass = new_passphrase(source().passphrase_fd, "CAIRN_PASSPHRASE")?;
    let file = KeyFile::seal(&key, pass.as_bytes(), a.kdf.params()?)?;
    write_new_key_file(&out, &file)?;
    crate::say!(
        "recovered key {} of {} into {} under the new passphrase",
        key.fingerprint(),
        a.store.display(),
        out.display()
    );
    Ok(0)
}
