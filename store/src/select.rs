//! Naming a recovery point on the command line.
//!
//! | name | the point |
//! |---|---|
//! | `3f2a9c1b07de` | the point whose id starts so (the prefix must be unique) |
//! | `3f2a9c1b-07de-4e1a-...` | the same, as the UUID cairn writes into the VHDs it restores |
//! | `VM/DISK@latest` | the disk's newest point (VM: its name, or its `--vm-uuid`, or `POOL:NAME` when two VMs of one name are in different pools) |
//! | `VM/DISK@latest~N` | the N-th point before the newest (`~1` is the one before) |
//! | `VM/DISK@2026-11-22` | the newest point made on or before that day (in the store's time zone) |
//! | `VM/DISK@2026-11-22T02:00:00Z` | the newest point made at or before that instant (a time without a zone is in the store's time zone) |
//!
//! An ambiguous prefix lists the points it matches.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::point::{RecoveryPoint, VmKey};

/// The points of the VM named `vm` (by its name or its UUID; two VMs of one name are told apart
/// by UUID, or by pool as `POOL:NAME`, read so only when no VM is called that whole), of `disk`
/// when given.
fn vm_points<'p>(
    points: &'p [RecoveryPoint],
    vm: &str,
    disk: Option<&str>,
) -> Vec<&'p RecoveryPoint> {
    let named = |p: &&RecoveryPoint, vm: &str| {
        disk.is_none_or(|d| p.disk == d) && (p.vm == vm || p.labels.vm_uuid.as_deref() == Some(vm))
    };
    let mine: Vec<&RecoveryPoint> = points.iter().filter(|p| named(p, vm)).collect();
    match (mine.is_empty(), vm.split_once(':')) {
        (true, Some((pool, name))) => points
            .iter()
            .filter(|p| named(p, name) && p.labels.pool.as_deref() == Some(pool))
            .collect(),
        _ => mine,
    }
}

/// The identity of the VM named `vm` (as a point name's VM part: its name, its UUID, or
/// `POOL:NAME`) and its newest point; not `except` (the other VM of a command that names two:
/// `adopt web01 UUID` takes the `web01` that is not that UUID's).
///
/// # Errors
/// No VM of that name, or several (each listed with its UUID and pool).
pub fn vm_identity(
    points: &[RecoveryPoint],
    vm: &str,
    except: Option<&VmKey>,
) -> Result<(VmKey, RecoveryPoint), String> {
    let mine: Vec<&RecoveryPoint> = vm_points(points, vm, None)
        .into_iter()
        .filter(|p| except.is_none_or(|k| p.vm_key() != *k))
        .collect();
    let mut keys: Vec<VmKey> = mine.iter().map(|p| p.vm_key()).collect();
    keys.sort();
    keys.dedup();
    match keys.len() {
        0 => Err(format!("no VM {vm:?} in the store")),
        1 => {
            let newest = mine
                .iter()
                .max_by_key(|p| (p.time, p.committed))
                .map(|p| (*p).clone())
                .ok_or_else(|| format!("no VM {vm:?} in the store"))?;
            Ok((keys.remove(0), newest))
        }
        n => Err(format!(
            "{n} VMs are called {vm:?}: name one by its UUID or as POOL:NAME:\n{}",
            keys.iter()
                .map(|k| format!("  {vm}{}", k.as_flags()))
                .collect::<Vec<_>>()
                .join("\n")
        )),
    }
}

/// The point `spec` names among `points`.
///
/// # Errors
/// What is wrong with the name, or which points it matches when it matches several.
pub fn resolve(points: &[RecoveryPoint], spec: &str, tz: Tz) -> Result<RecoveryPoint, String> {
    if let Some((vmdisk, which)) = spec.split_once('@') {
        let (vm, disk) = vmdisk.rsplit_once('/').ok_or_else(|| {
            format!("{spec:?}: expected VM/DISK@latest, @latest~N, @DATE or @DATETIME")
        })?;
        let mut mine = vm_points(points, vm, Some(disk));
        if mine.is_empty() {
            return Err(format!("{spec:?}: no point of disk {disk:?} of VM {vm:?}"));
        }
        let mut vms: Vec<VmKey> = mine.iter().map(|p| p.vm_key()).collect();
        vms.sort();
        vms.dedup();
        if vms.len() > 1 {
            let list: Vec<String> = vms
                .iter()
                .map(|k| format!("  {vm}{}", k.as_flags()))
                .collect();
            return Err(format!(
                "{spec:?}: {} VMs are called {vm:?}; name the VM by its UUID (UUID/{disk}@...) \
                 or its pool (POOL:{vm}/{disk}@...), or choose a point by id:\n{}",
                vms.len(),
                list.join("\n")
            ));
        }
        mine.sort_by_key(|p| (p.time, p.committed));
        let found = match at(which, tz)? {
            At::Back(n) => mine
                .len()
                .checked_sub(n + 1)
                .and_then(|i| mine.get(i))
                .ok_or_else(|| {
                    format!(
                        "{spec:?}: {vm}/{disk} has {} points, so no {n}-th before the latest",
                        mine.len()
                    )
                })?,
            At::Time(t) => mine.iter().rev().find(|p| p.time <= t).ok_or_else(|| {
                format!(
                    "{spec:?}: the oldest point of {vm}/{disk} is from {}",
                    mine[0].time.to_rfc3339()
                )
            })?,
        };
        return Ok((*found).clone());
    }
    let want: String = spec
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    if want.is_empty() || !want.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{spec:?}: not a point id nor VM/DISK@latest (see `cairn list`)"
        ));
    }
    let matches: Vec<&RecoveryPoint> = points.iter().filter(|p| p.id.starts_with(&want)).collect();
    match matches[..] {
        [] => Err(format!("{spec:?}: no such point (see `cairn list`)")),
        [one] => Ok(one.clone()),
        ref many => {
            let list: Vec<String> = many
                .iter()
                .take(10)
                .map(|p| format!("  {} {}/{} {}", p.id, p.vm, p.disk, p.time.to_rfc3339()))
                .collect();
            Err(format!(
                "{spec:?} matches {} points; give more digits:\n{}{}",
                many.len(),
                list.join("\n"),
                if many.len() > 10 { "\n  ..." } else { "" }
            ))
        }
    }
}

/// A time as cairn shows it everywhere, to people and in JSON: RFC 3339 with seconds, in the
/// store's time zone (`Z` for UTC, else its offset).
#[must_use]
pub fn show_time(t: &DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Which points a command works on: every given field must match (`vm` by name or UUID, every
/// tag present).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    /// The VM's name or its `--vm-uuid`.
    pub vm: Option<String>,
    /// The disk.
    pub disk: Option<String>,
    /// The pool.
    pub pool: Option<String>,
    /// The host.
    pub host: Option<String>,
    /// Tags the point must all have.
    pub tags: Vec<String>,
}

impl Filter {
    /// Whether the filter selects anything less than every point.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether `p` passes.
    #[must_use]
    pub fn matches(&self, p: &RecoveryPoint) -> bool {
        let l = &p.labels;
        self.matches_names(
            &p.vm,
            &p.disk,
            [l.vm_uuid.as_deref(), l.pool.as_deref(), l.host.as_deref()],
            &mut l.tags.iter().map(String::as_str),
        )
    }

    /// Whether a point of these names passes (see [`crate::PointHead`]): the array is
    /// its VM's UUID, its pool and its host.
    #[must_use]
    pub fn matches_names(
        &self,
        vm: &str,
        disk: &str,
        [uuid, pool, host]: [Option<&str>; 3],
        tags: &mut dyn Iterator<Item = &str>,
    ) -> bool {
        self.vm
            .as_deref()
            .is_none_or(|v| vm == v || uuid == Some(v))
            && self.disk.as_deref().is_none_or(|d| disk == d)
            && self.pool.as_deref().is_none_or(|x| pool == Some(x))
            && self.host.as_deref().is_none_or(|x| host == Some(x))
            && (self.tags.is_empty() || {
                let theirs: Vec<&str> = tags.collect();
                self.tags.iter().all(|t| theirs.contains(&t.as_str()))
            })
    }

    /// Fails when the filter matches none of `points`, naming what exists (a typo must not
    /// read as "nothing to do" or "all well").
    ///
    /// # Errors
    /// The filter and what the store holds.
    pub fn check(&self, points: &[RecoveryPoint]) -> Result<(), String> {
        if self.is_empty() || points.iter().any(|p| self.matches(p)) {
            return Ok(());
        }
        let mut said = Vec::new();
        for (flag, v) in [
            ("--vm", &self.vm),
            ("--disk", &self.disk),
            ("--pool", &self.pool),
            ("--host", &self.host),
        ] {
            if let Some(v) = v {
                said.push(format!("{flag} {v:?}"));
            }
        }
        for t in &self.tags {
            said.push(format!("--tag {t:?}"));
        }
        let what = format!("no point matches {}", said.join(" "));
        if points.is_empty() {
            return Err(format!("{what}: the store holds no points yet"));
        }
        // What exists, for the fields given: the values of each among the points that match
        // the other fields (a disk of the right VM), else among all.
        let mut exists = Vec::new();
        let fields: [(&str, bool, Values); 5] = [
            ("VMs", self.vm.is_some(), |p| vec![p.vm.clone()]),
            ("disks", self.disk.is_some(), |p| vec![p.disk.clone()]),
            ("pools", self.pool.is_some(), |p| {
                p.labels.pool.iter().cloned().collect()
            }),
            ("hosts", self.host.is_some(), |p| {
                p.labels.host.iter().cloned().collect()
            }),
            ("tags", !self.tags.is_empty(), |p| p.labels.tags.clone()),
        ];
        for (i, (name, given, values)) in fields.iter().enumerate() {
            if !given {
                continue;
            }
            let mut others = self.clone();
            match i {
                0 => others.vm = None,
                1 => others.disk = None,
                2 => others.pool = None,
                3 => others.host = None,
                _ => others.tags.clear(),
            }
            let pick = |only: bool| {
                let mut v: Vec<String> = points
                    .iter()
                    .filter(|p| !only || others.matches(p))
                    .flat_map(values)
                    .collect();
                v.sort();
                v.dedup();
                v
            };
            let mut v = pick(true);
            if v.is_empty() {
                v = pick(false);
            }
            let shown = if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            };
            exists.push(format!("{name}: {shown}"));
        }
        Err(format!("{what}; {}", exists.join("; ")))
    }
}

/// The values of one field of a point, as a filter's error lists them.
type Values = fn(&RecoveryPoint) -> Vec<String>;

/// A time as written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// A date alone: what it means (its start, its end) is the caller's.
    Day(NaiveDate),
    /// An instant: RFC 3339, or a date and time without a zone (in the zone given to
    /// [`parse_when`]: the store's).
    Instant(DateTime<Utc>),
}

/// Reads `2026-11-22T02:00:00Z` (any RFC 3339), `2026-11-22T02:00:00`, `2026-11-22 02:00` (in
/// `tz`) or `2026-11-22`; `None` for anything else, and for a local time that `tz` skips (a
/// spring-forward gap). A local time that happens twice (autumn) is the earlier.
#[must_use]
pub fn parse_when(s: &str, tz: Tz) -> Option<When> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(When::Instant(t.with_timezone(&Utc)));
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return tz
                .from_local_datetime(&t)
                .earliest()
                .map(|t| When::Instant(t.with_timezone(&Utc)));
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().map(When::Day)
}

/// The first instant of day `d` in `tz` (midnight, or the end of a gap that skips it).
#[must_use]
pub fn day_start(d: NaiveDate, tz: Tz) -> Option<DateTime<Utc>> {
    (0..=2).find_map(|h| {
        d.and_hms_opt(h, 0, 0)
            .and_then(|t| tz.from_local_datetime(&t).earliest())
            .map(|t| t.with_timezone(&Utc))
    })
}

/// Which point of a disk, after the `@`.
enum At {
    /// The N-th before the newest.
    Back(usize),
    /// The newest at or before this instant.
    Time(DateTime<Utc>),
}

fn at(which: &str, tz: Tz) -> Result<At, String> {
    if which == "latest" {
        return Ok(At::Back(0));
    }
    if let Some(n) = which.strip_prefix("latest~") {
        return n
            .parse()
            .map(At::Back)
            .map_err(|_| format!("@{which}: expected @latest~N with N a number"));
    }
    match parse_when(which, tz) {
        Some(When::Instant(t)) => return Ok(At::Time(t)),
        Some(When::Day(d)) => {
            // The whole day counts: the newest point made on it or before.
            let end = d
                .succ_opt()
                .and_then(|n| day_start(n, tz))
                .map(|t| t - chrono::Duration::nanoseconds(1))
                .ok_or_else(|| format!("@{which}: a day out of range"))?;
            return Ok(At::Time(end));
        }
        None => {}
    }
    Err(format!(
        "@{which}: expected latest, latest~N, a date (2026-11-22) or a date and time \
         (2026-11-22T02:00:00Z; without a zone, UTC)"
    ))
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters and `?` one
/// (VM globs: `replicate --vm`, a token's `--vm`).
#[must_use]
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    #[test]
    fn globs() {
        use super::glob_match as g;
        assert!(g("*", "") && g("*", "anything"));
        assert!(g("web-*", "web-01") && !g("web-*", "db-01"));
        assert!(g("web-??", "web-01") && !g("web-??", "web-001"));
        assert!(g("w?b0*", "web01 (prod)") && g("*01*", "web01 (prod)"));
        assert!(g("a*b*c", "axxbyyc") && !g("a*b*c", "axxbyy"));
        assert!(g("exact", "exact") && !g("exact", "exact1") && !g("web", "web01"));
    }

    use super::*;

    fn point(id: &str, vm: &str, time: &str) -> RecoveryPoint {
        crate::point::test_point(id, vm, time)
    }

    fn sample() -> Vec<RecoveryPoint> {
        vec![
            point(
                "3f2a9c1b07de4e1a9c1b07de4e1a9c1b",
                "web01",
                "2026-11-20T02:00:00Z",
            ),
            point(
                "3f2a00000000000000000000000000aa",
                "web01",
                "2026-11-21T02:00:00Z",
            ),
            point(
                "8d01be44a2c94e1a9c1b07de4e1a9c1b",
                "web01",
                "2026-11-22T02:00:00Z",
            ),
            point(
                "99000000000000000000000000000000",
                "db01",
                "2026-11-22T03:00:00Z",
            ),
        ]
    }

    fn id(spec: &str) -> Result<String, String> {
        resolve(&sample(), spec, Tz::UTC).map(|p| p.id[..6].to_owned())
    }

    #[test]
    fn names_resolve_as_the_table_says() {
        assert_eq!(id("3f2a9"), Ok("3f2a9c".into()));
        assert_eq!(
            id("3F2A9C1B-07DE-4E1A-9C1B-07DE4E1A9C1B"),
            Ok("3f2a9c".into())
        );
        assert_eq!(id("web01/xvda@latest"), Ok("8d01be".into()));
        assert_eq!(id("web01/xvda@latest~1"), Ok("3f2a00".into()));
        assert_eq!(id("web01/xvda@latest~2"), Ok("3f2a9c".into()));
        assert!(id("web01/xvda@latest~3").is_err());
        assert_eq!(id("web01/xvda@2026-11-21"), Ok("3f2a00".into()));
        assert_eq!(id("web01/xvda@2026-11-21T01:59:59Z"), Ok("3f2a9c".into()));
        assert_eq!(id("web01/xvda@2026-11-22T02:00:00Z"), Ok("8d01be".into()));
        assert_eq!(id("web01/xvda@2026-11-22T01:00"), Ok("3f2a00".into()));
        assert_eq!(id("db01/xvda@2026-11-23"), Ok("990000".into()));
        let early = id("web01/xvda@2026-11-19").expect_err("before the first point");
        assert!(early.contains("oldest point"), "{early}");
    }

    #[test]
    fn dates_and_times_without_a_zone_are_the_stores() {
        let paris: Tz = "Europe/Paris".parse().expect("tz");
        // 2026-11-22T02:00:00Z is 03:00 in Paris: the point is "at or before 03:00" there,
        // not before 02:30.
        let at = |spec: &str| resolve(&sample(), spec, paris).map(|p| p.id[..6].to_owned());
        assert_eq!(at("web01/xvda@2026-11-22T03:00"), Ok("8d01be".into()));
        assert_eq!(at("web01/xvda@2026-11-22T02:30"), Ok("3f2a00".into()));
        // A day is the store's day: 2026-11-21 in Paris ends at 23:00Z.
        assert_eq!(at("web01/xvda@2026-11-21"), Ok("3f2a00".into()));
        let la: Tz = "America/Los_Angeles".parse().expect("tz");
        // 2026-11-22T02:00Z is 18:00 on the 21st in Los Angeles: the 21st there holds it.
        let at = |spec: &str| resolve(&sample(), spec, la).map(|p| p.id[..6].to_owned());
        assert_eq!(at("web01/xvda@2026-11-21"), Ok("8d01be".into()));
        assert_eq!(at("web01/xvda@2026-11-20"), Ok("3f2a00".into()));
        // An explicit zone is what it says.
        assert_eq!(at("web01/xvda@2026-11-22T01:59:59Z"), Ok("3f2a00".into()));
        // A local time that does not exist (spring forward in Paris) is refused.
        assert_eq!(parse_when("2026-03-29T02:30", paris), None);
    }

    #[test]
    fn two_vms_of_one_name_are_told_apart_by_uuid() {
        let mut points = sample();
        let mut other = point(
            "77000000000000000000000000000000",
            "web01",
            "2026-11-23T02:00:00Z",
        );
        other.labels.vm_uuid = Some("0b5e2c4a-other".into());
        other.labels.pool = Some("pool-b".into());
        points.push(other);
        let e = resolve(&points, "web01/xvda@latest", Tz::UTC).expect_err("ambiguous");
        assert!(e.contains("2 VMs are called"), "{e}");
        assert!(e.contains("--vm-uuid 0b5e2c4a-other --pool pool-b"), "{e}");
        let by_uuid = resolve(&points, "0b5e2c4a-other/xvda@latest", Tz::UTC).expect("by uuid");
        assert_eq!(&by_uuid.id[..2], "77");
        assert!(e.contains("POOL:web01/xvda@"), "{e}");
        let by_pool = resolve(&points, "pool-b:web01/xvda@latest", Tz::UTC).expect("by pool");
        assert_eq!(&by_pool.id[..2], "77");
        let e = resolve(&points, "pool-c:web01/xvda@latest", Tz::UTC).expect_err("no pool");
        assert!(e.contains("no point"), "{e}");
    }

    #[test]
    fn an_ambiguous_prefix_lists_its_candidates() {
        let e = id("3f2a").expect_err("ambiguous");
        assert!(e.contains("matches 2 points"), "{e}");
        assert!(e.contains("3f2a9c1b07de4e1a9c1b07de4e1a9c1b"), "{e}");
        assert!(e.contains("3f2a00000000000000000000000000aa"), "{e}");
        assert!(id("zz").is_err());
        assert!(
            id("web01/xvdb@latest")
                .expect_err("no disk")
                .contains("no point")
        );
        assert!(
            id("web01/xvda@yesterday")
                .expect_err("bad")
                .contains("expected latest")
        );
    }
}
