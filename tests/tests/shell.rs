//! What a shell user reaches for first: completion that bash really completes with, manual
//! pages that `man` renders, `--version` naming the store format, and `--quiet`.

use std::process::Command;

use cairn_tests::{TestStore as Store, cairn, gen_disk, ok, run};

/// The words bash's completion offers for `line` (the last word is being typed), with the
/// script `cairn completions bash` printed loaded.
fn bash_completes(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source {}; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{}'; COMP_POINT=${{#COMP_LINE}}; \
         _cairn cairn '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words.len() - 1,
        words.join(" "),
        words.last().copied().unwrap_or_default(),
        words
            .get(words.len().saturating_sub(2))
            .copied()
            .unwrap_or_default(),
    );
    let out = ok(Command::new("bash").args(["--norc", "-c", &program]));
    out.lines().map(str::to_owned).collect()
}

#[test]
fn bash_completes_commands_and_options_from_the_printed_script() {
    let work = tempfile::tempdir().expect("tempdir");
    let script = work.path().join("cairn.bash");
    std::fs::write(&script, ok(&mut cairn(["completions", "bash"]))).expect("write");
    let got = bash_completes(&script, &["cairn", "res"]);
    assert!(got.contains(&"restore".to_owned()), "{got:?}");
    let got = bash_completes(&script, &["cairn", "prune", "--keep-wi"]);
    assert_eq!(got, ["--keep-within"]);
    let got = bash_completes(&script, &["cairn", "vhd", "to"]);
    assert!(got.contains(&"to-raw".to_owned()), "{got:?}");
    for shell in ["zsh", "fish"] {
        let text = ok(&mut cairn(["completions", shell]));
        assert!(text.contains("keep-within"), "{shell}: {text}");
    }
    let out = run(&mut cairn(["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn man_pages_render_one_per_command_with_their_examples() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("man1");
    ok(cairn(["man", "--out"]).arg(&dir));
    for page in [
        "cairn.1",
        "cairn-restore.1",
        "cairn-prune.1",
        "cairn-vhd-to-raw.1",
    ] {
        let path = dir.join(page);
        assert!(path.is_file(), "{page} missing");
        let out = Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .expect("man");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{page}: {out:?}");
        assert!(text.contains("SYNOPSIS"), "{page}: {text}");
    }
    let restore = Command::new("man")
        .arg("-l")
        .arg(dir.join("cairn-restore.1"))
        .env("MANPAGER", "cat")
        .output()
        .expect("man");
    let text = String::from_utf8_lossy(&restore.stdout);
    assert!(text.contains("--format"), "{text}");
    assert!(text.contains("cairn restore web01/xvda@latest"), "{text}");
}

#[test]
fn version_names_the_store_format_and_quiet_leaves_out_what_is_not_asked_for() {
    let v = ok(&mut cairn(["--version"]));
    assert!(v.starts_with("cairn "), "{v}");
    assert!(v.contains("store format 2"), "{v}");
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    gen_disk(&disk, "8M", 1, 1, 0);
    store.backup("web01", "2026-11-20T02:00:00Z", "xvda", &disk, &[]);
    let out = work.path().join("r.raw");
    // On a terminal, a restore says what it wrote; with --quiet, nothing.
    let (status, said) =
        store.on_a_terminal(&format!("restore web01/xvda@latest {}", out.display()));
    assert!(status.success(), "{said}");
    assert!(said.contains("restored"), "{said}");
    let again = work.path().join("q.raw");
    let (status, said) = store.on_a_terminal(&format!(
        "restore --quiet web01/xvda@latest {}",
        again.display()
    ));
    assert!(status.success(), "{said}");
    assert!(said.trim().is_empty(), "--quiet printed: {said:?}");
    assert!(again.is_file());
    // --quiet keeps what was asked for.
    let listed = ok(&mut store.cmd(&["list", "-q"]));
    assert!(listed.contains("web01"), "{listed}");
}
