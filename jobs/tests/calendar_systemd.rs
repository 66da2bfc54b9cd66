//! The schedules mean what systemd's timers make of them: for expressions built from the
//! syntax's parts, the next three elapses after several base times are compared with
//! `systemd-analyze calendar` (systemd 252, in UTC), and what it refuses is refused here.

use std::process::Command;

use cairn_jobs::Calendar;
use chrono::{DateTime, NaiveDateTime, Utc};

/// `systemd-analyze calendar`'s next `n` elapses of `expr` after `base`, or `None` when it
/// refuses the expression.
fn systemd(expr: &str, base: &str, n: usize) -> Option<Vec<DateTime<Utc>>> {
    let out = Command::new("systemd-analyze")
        .env("TZ", "UTC")
        .args([
            "calendar",
            &format!("--iterations={n}"),
            &format!("--base-time={base}"),
            expr,
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze (Debian's systemd package) is needed for this test: {e}")
        });
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.lines()
            .filter_map(|l| {
                let (key, value) = l.split_once(": ")?;
                let key = key.trim();
                (key == "Next elapse" || key.starts_with("Iter.")).then_some(value.trim())
            })
            // "Tue 2026-12-08 02:00:00 UTC"
            .filter_map(|v| {
                let mut w = v.split_whitespace();
                let (_, date, time) = (w.next()?, w.next()?, w.next()?);
                NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y-%m-%d %H:%M:%S")
                    .ok()
                    .map(|t| t.and_utc())
            })
            .collect(),
    )
}

fn ours(expr: &str, base: &str, n: usize) -> Option<Vec<DateTime<Utc>>> {
    let cal = Calendar::parse(expr).ok()?;
    let mut at = NaiveDateTime::parse_from_str(base, "%Y-%m-%d %H:%M:%S")
        .expect("base")
        .and_utc();
    let mut out = Vec::new();
    for _ in 0..n {
        match cal.next_after(at, &Utc) {
            Some(t) => {
                out.push(t);
                at = t;
            }
            None => break,
        }
    }
    Some(out)
}

#[test]
fn next_elapses_agree_with_systemd_analyze() {
    let weekdays = ["", "Mon ", "Mon..Fri ", "Sat,Sun ", "Tue,Thu ", "Fri..Sun "];
    let dates = [
        "",
        "*-*-* ",
        "*-*-01 ",
        "*-02-29 ",
        "2027-*-1..7 ",
        "*-01,07-15 ",
        "*-*-1/10 ",
        "*-*-*/10 ",
        "12-24 ",
        "*-*-31 ",
    ];
    let times = [
        "",
        "02:00",
        "*:0/15",
        "8..18/2:30",
        "*:*:30",
        "23:59:59",
        "00/6:00",
        "03:30:15",
    ];
    let bases = [
        "2026-12-07 17:00:00",
        "2027-02-28 23:59:59",
        "2028-12-31 12:00:00",
    ];
    let mut compared = 0;
    let mut k = 0usize;
    for w in weekdays {
        for d in dates {
            for t in times {
                let expr = format!("{w}{d}{t}").trim().to_owned();
                if expr.is_empty() {
                    continue;
                }
                // Every expression against one base, in turn (all of them: 2 seconds).
                let base = bases[k % bases.len()];
                k += 1;
                let want = systemd(&expr, base, 3);
                let got = ours(&expr, base, 3);
                assert_eq!(got, want, "{expr:?} after {base}");
                compared += 1;
            }
        }
    }
    assert!(compared > 400, "{compared}");
}

#[test]
fn what_systemd_refuses_is_refused() {
    for expr in [
        "Mon..Fry",
        "*-13-01",
        "25:00",
        "*-*-* 02:61",
        "Funday",
        "*-*-* */0:00",
    ] {
        assert_eq!(
            systemd(expr, "2026-12-07 17:00:00", 1),
            None,
            "systemd took {expr:?}"
        );
        assert!(Calendar::parse(expr).is_err(), "{expr:?} was taken");
    }
}

#[test]
fn normalized_forms_are_systemds() {
    for expr in [
        "daily",
        "weekly",
        "Mon..Fri 02:00",
        "Sat,Sun *-*-1..7 04:00",
        "*:0/15",
        "quarterly",
        "*-*-* 03:30",
        "Mon,Tue,Wed 00:00",
        "8..18/2:30",
        "*-*-01..07/2",
    ] {
        let out = Command::new("systemd-analyze")
            .env("TZ", "UTC")
            .args(["calendar", expr])
            .output()
            .expect("systemd-analyze");
        let text = String::from_utf8_lossy(&out.stdout);
        let want = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Normalized form: "))
            .expect("normalized");
        assert_eq!(
            Calendar::parse(expr).expect(expr).normalized(),
            want,
            "{expr}"
        );
    }
}
