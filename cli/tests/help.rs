//! Every command has help text with an example.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run cairn");
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_command_has_help_with_an_example() {
    let top = help(&[]);
    for c in [
        "init", "backup", "restore", "list", "report", "repair", "vhd",
    ] {
        assert!(top.contains(c), "{c} missing from:\n{top}");
    }
    for cmd in [
        &["vhd", "info"][..],
        &["vhd", "check"],
        &["vhd", "to-raw"],
        &["vhd", "from-raw"],
    ] {
        let text = help(cmd);
        assert!(text.contains("Example:"), "{cmd:?} has no example:\n{text}");
        assert!(
            text.contains(&format!("cairn {}", cmd.join(" "))),
            "{cmd:?} example does not show the command:\n{text}"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["vhd", "frobnicate"])
        .output()
        .expect("run cairn");
    assert_eq!(out.status.code(), Some(2));
}
