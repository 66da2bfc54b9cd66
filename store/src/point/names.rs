//! The names a point may carry (VM, disk, labels): what is allowed, so that every name is
//! reachable by the point syntax and safe as a path component.

/// The longest file name component file systems take (bytes).
const MAX_COMPONENT: usize = 255;

/// Checks a VM or disk name: 1 to 128 of `A-Z a-z 0-9 . _ -`, not starting with `.` (it becomes
/// a folder name).
///
/// # Errors
/// What is wrong with it.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.trim().is_empty()
        && name.chars().count() <= 128
        && !name.chars().any(char::is_control);
    if !ok {
        return Err(format!(
            "{what} name {name:?} must be 1 to 128 printable characters (any script, spaces \
             allowed, not only spaces)"
        ));
    }
    // It becomes a folder name: at most 255 bytes once written as one.
    let written = path_component(name).len();
    if written > MAX_COMPONENT {
        return Err(format!(
            "{what} name {name:?} is {written} bytes once written as a folder name, more than \
             the {MAX_COMPONENT} a file system takes: use fewer characters, or plainer ones \
             (every byte outside A-Z a-z 0-9 . _ - takes three)"
        ));
    }
    Ok(())
}

/// Checks the name of a VM (`what` "VM") or a disk (`what` "disk") as [`check_name`] does, and
/// that the point syntax (`VM/DISK@latest`) reaches it: no `@` (it starts the point's time), no
/// `/` in a disk name (the last `/` parts the VM from the disk), no space at either end (`'xvda
/// =disk.raw'` would make a disk `"xvda "` beside `xvda`: two histories where one was meant).
///
/// # Errors
/// What is wrong with it, and the rule.
pub fn check_point_name(what: &str, name: &str) -> Result<(), String> {
    check_name(what, name)?;
    let why = if name.contains('@') {
        Some("`@` starts the point's time in VM/DISK@latest")
    } else if what == "disk" && name.contains('/') {
        Some("the last `/` parts the VM from the disk in VM/DISK@latest")
    } else if name.trim() != name {
        Some("a space at either end makes another name than the one meant (`xvda ` is not `xvda`)")
    } else {
        None
    };
    match why {
        Some(why) => Err(format!("{what} name {name:?} is not allowed: {why}")),
        None => Ok(()),
    }
}

/// A VM or disk name as one file name component: ASCII letters, digits, `.`, `_` and `-` stay as
/// they are (so such names keep the folders they always had), every other byte of the name's
/// UTF-8 becomes `%XX`, as does a leading `.`; a name is stored whole in its root file, the path
/// only files it.
#[must_use]
pub fn path_component(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn point_names_are_reachable_by_the_point_syntax() {
        for ok in ["web01", "a/b", "Windows Server 2022 (prod)", ".."] {
            check_point_name("VM", ok).unwrap_or_else(|e| panic!("{e}"));
        }
        for (what, bad) in [
            ("VM", "web@01"),
            ("disk", "xvd/a"),
            ("disk", "xvda "),
            ("VM", " web"),
        ] {
            assert!(
                check_point_name(what, bad).is_err(),
                "{what} {bad:?} accepted"
            );
        }
        check_point_name("disk", "xvda").expect("xvda");
    }

    #[test]
    fn names_are_any_printable_text_and_their_paths_are_safe() {
        for name in [
            "web01",
            "Windows Server 2022 (prod)",
            "wéb-01",
            "数据库",
            "disk 0",
            "a/b",
        ] {
            check_name("VM", name).unwrap_or_else(|e| panic!("{e}"));
        }
        for bad in ["", "   ", "tab\there", "new\nline", &"x".repeat(129)] {
            assert!(check_name("VM", bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(path_component("web01.prod_2-a"), "web01.prod_2-a");
        assert_eq!(path_component("disk 0"), "disk%200");
        assert_eq!(path_component("a/b"), "a%2Fb");
        assert_eq!(path_component(".."), "%2E.");
        assert_eq!(path_component("wé"), "w%C3%A9");
        assert_eq!(path_component("50%"), "50%25");
        // Distinct names stay distinct paths.
        assert_ne!(path_component("a b"), path_component("a%20b"));
    }
}
