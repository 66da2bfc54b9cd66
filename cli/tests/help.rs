//! Every command and subcommand has help text with an example of itself. The commands are read
//! from cairn's own help, recursively, so a command added later is checked too.

use std::process::Command;

fn help(args: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run cairn");
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The subcommands listed under "Commands:" in a help text (not `help` itself).
fn subcommands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("Commands:") {
            inside = true;
            continue;
        }
        if inside {
            // Entries are indented by two spaces; a wrapped description by more.
            let Some(rest) = line.strip_prefix("  ") else {
                break;
            };
            if rest.starts_with(' ') {
                continue;
            }
            let name = rest.split_whitespace().next().unwrap_or_default();
            if !name.is_empty() && name != "help" {
                out.push(name.to_owned());
            }
        }
    }
    out
}

#[test]
fn every_command_has_help_with_an_example() {
    let top = help(&[]);
    assert!(
        top.contains("Example"),
        "the top-level help has no example:\n{top}"
    );
    let mut todo: Vec<Vec<String>> = subcommands(&top).into_iter().map(|c| vec![c]).collect();
    for c in [
        "init", "backup", "restore", "list", "report", "repair", "vhd", "gc", "verify",
    ] {
        assert!(
            todo.iter().any(|t| t[0] == c),
            "{c} missing from the commands of:\n{top}"
        );
    }
    let mut checked = 0;
    while let Some(cmd) = todo.pop() {
        let text = help(&cmd);
        let subs = subcommands(&text);
        // Groups too show an example, and no example line starts with an option (a wrapped
        // line must not look like a command of its own).
        assert!(text.contains("Example"), "{cmd:?} has no example:\n{text}");
        for line in text.lines().filter(|l| l.starts_with("  cairn ")) {
            assert!(
                line.len() <= 100,
                "{cmd:?}: an example line too long to stay on one line: {line}"
            );
        }
        if !subs.is_empty() {
            // A group (`vhd`, `policy`): each of its commands carries the example.
            todo.extend(subs.into_iter().map(|s| {
                let mut c = cmd.clone();
                c.push(s);
                c
            }));
            continue;
        }
        assert!(
            text.contains("\nExample:\n") || text.contains("\nExamples:\n"),
            "{cmd:?} has no example:\n{text}"
        );
        assert!(
            text.contains(&format!("cairn {}", cmd.join(" "))),
            "{cmd:?}'s example does not show the command:\n{text}"
        );
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} commands found");
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["vhd", "frobnicate"])
        .output()
        .expect("run cairn");
    assert_eq!(out.status.code(), Some(2));
}
