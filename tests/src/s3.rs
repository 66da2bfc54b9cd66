//! A store whose packs live in the Garage cluster's bucket, and the bucket read directly.

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_store::objects::{Bucket, BucketConfig, Objects};

use crate::garage::Garage;
use crate::{assert_same_content, cairn, json, ok};

/// A store folder here, its packs under `prefix` in the cluster's bucket.
pub struct S3Store {
    /// The folder holding the store folder.
    pub dir: tempfile::TempDir,
    /// Where its packs are in the bucket.
    pub prefix: String,
    endpoint: String,
    /// The bucket's keys, as cairn takes them from the environment (and an encrypted
    /// store's key file and passphrase).
    pub env: Vec<(&'static str, String)>,
}

impl S3Store {
    /// A store made with `cairn init --packs` on the cluster's bucket under `prefix`.
    pub fn new(g: &Garage, prefix: &str) -> Self {
        Self::made(g, prefix, false)
    }

    /// As [`S3Store::new`], encrypted (`--encrypt`): its key file beside the store, its
    /// passphrase [`crate::PASSPHRASE`], both in [`S3Store::env`].
    pub fn encrypted(g: &Garage, prefix: &str) -> Self {
        Self::made(g, prefix, true)
    }

    fn made(g: &Garage, prefix: &str, encrypt: bool) -> Self {
        let mut s = Self {
            dir: tempfile::tempdir().expect("tempdir"),
            prefix: prefix.into(),
            endpoint: g.endpoint.clone(),
            env: g.env(),
        };
        let mut init = s.cmd(&["init", "--timezone", "UTC", "--chunk-size", "256K"]);
        if encrypt {
            let key = s.dir.path().join("key.json");
            s.env.push(("CAIRN_KEY_FILE", key.display().to_string()));
            s.env.push(("CAIRN_PASSPHRASE", crate::PASSPHRASE.into()));
            init = s.cmd(&[
                "init",
                "--timezone",
                "UTC",
                "--chunk-size",
                "256K",
                "--encrypt",
            ]);
            init.args(crate::LIGHT_KDF);
        }
        let out = ok(init.arg(s.path()).args(s.packs_args()));
        assert!(out.contains("packs and root files in s3://"), "{out}");
        s
    }

    /// The store folder.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The store's packs URL in `bucket`.
    pub fn url(&self, bucket: &str) -> String {
        format!("s3://{bucket}/{}", self.prefix)
    }

    /// The `--packs` options naming the cluster's bucket.
    pub fn packs_args(&self) -> Vec<String> {
        vec![
            "--packs".into(),
            self.url("cairn"),
            "--s3-endpoint".into(),
            self.endpoint.clone(),
            "--s3-region".into(),
            "garage".into(),
        ]
    }

    /// `cairn ARGS` on this store, with the bucket's keys.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = cairn(args);
        c.env("CAIRN_STORE", self.path()).envs(self.env.clone());
        c
    }

    /// Backs `src` up as disk `xvda` of `vm` at `time`: the point.
    pub fn backup(&self, vm: &str, time: &str, src: &Path) -> serde_json::Value {
        let mut c = self.cmd(&["backup", "--json", "--vm", vm, "--time", time]);
        c.arg(format!("xvda={}", src.display()));
        json(&ok(&mut c))[0].clone()
    }

    /// Restores `point` and checks it holds what `want` holds.
    pub fn restore_and_compare(&self, point: &str, want: &Path) {
        let out = self.dir.path().join("restored.raw");
        ok(self
            .cmd(&["restore", "--force", point, "--format", "raw"])
            .arg(&out));
        assert_same_content(&out, want, true);
    }

    /// The points `cairn list --json` shows.
    pub fn points(&self) -> Vec<serde_json::Value> {
        json(&ok(&mut self.cmd(&["list", "--json"])))
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Makes packs small, so that one backup writes several (uploaded while the next fills).
    pub fn small_packs(&self) {
        let cfg = self.path().join("cairn.toml");
        let text = std::fs::read_to_string(&cfg).expect("config");
        let text = text
            .lines()
            .map(|l| {
                if l.starts_with("pack_target_size") {
                    "pack_target_size = 4194304".to_owned()
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&cfg, text + "\n").expect("config");
    }
}

/// The cluster's bucket under `prefix`, read directly (not through cairn).
pub fn bucket(g: &Garage, prefix: &str) -> Bucket {
    Bucket::open(&BucketConfig {
        bucket: g.bucket.clone(),
        prefix: prefix.into(),
        endpoint: Some(g.endpoint.clone()),
        region: "garage".into(),
        key_id: g.key_id.clone(),
        secret: g.secret.clone(),
    })
    .expect("bucket")
}

/// Objects and bytes under `under` of the bucket.
pub fn listed(b: &Bucket, under: &str) -> (usize, u64) {
    let l = b.list(under).expect("list");
    (l.len(), l.iter().map(|o| o.size).sum())
}

/// Waits for `cond` (the bucket's listing may lag a write or a delete for a moment).
pub fn eventually(cond: impl Fn() -> bool, what: &str) {
    crate::wait_until(what, cond);
}

/// Pack files left in the store's folder.
/// The pack files in the store's own folder (a store in a bucket keeps none there).
pub fn local_packs(s: &S3Store) -> Vec<PathBuf> {
    crate::files_under(&s.path().join("packs"))
}
