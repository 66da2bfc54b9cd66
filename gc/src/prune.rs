//! Retention rules: which points to keep.
//!
//! The semantics are Proxmox Backup Server's (and, near enough, borg's). Points are taken
//! newest first. Each rule, in the order last, hourly, daily, weekly, monthly, yearly, keeps the
//! newest point of each of its periods (an hour, a day, an ISO week, a month, a year, in local
//! time) until it has kept N periods. A period that already holds a point kept by an earlier
//! rule does not count again; an older point in a period the rule already kept is marked for
//! removal and no later rule keeps it. Protected points are kept and count for no rule. A
//! point that no rule keeps is removed.
//!
//! `keep-within` (restic's and borg's) applies first: it keeps every point of a disk taken
//! within the duration before that disk's newest point (not before now, so backups that stop
//! do not make a prune remove more), and those points cover their periods as any rule's do.

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use serde::Serialize;

/// One retention rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// Every point within a duration of the disk's newest point.
    Within,
    /// The N newest points.
    Last,
    /// The newest point of each of the N newest hours.
    Hourly,
    /// ... days.
    Daily,
    /// ... ISO weeks (Monday to Sunday; the week's year is the ISO year).
    Weekly,
    /// ... months.
    Monthly,
    /// ... years.
    Yearly,
}

impl Rule {
    /// The rules that keep N periods, in the order they apply (after [`Rule::Within`]).
    pub const PERIODS: [Rule; 6] = [
        Rule::Last,
        Rule::Hourly,
        Rule::Daily,
        Rule::Weekly,
        Rule::Monthly,
        Rule::Yearly,
    ];

    /// `keep-daily` and so on.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Rule::Within => "keep-within",
            Rule::Last => "keep-last",
            Rule::Hourly => "keep-hourly",
            Rule::Daily => "keep-daily",
            Rule::Weekly => "keep-weekly",
            Rule::Monthly => "keep-monthly",
            Rule::Yearly => "keep-yearly",
        }
    }

    /// The period of a point under this rule (`index` keeps `Last` points apart).
    fn period<Tz: TimeZone>(
        self,
        time: &DateTime<Utc>,
        tz: &Tz,
        index: usize,
    ) -> (i32, u32, u32, u32) {
        let t = time.with_timezone(tz);
        match self {
            Rule::Last | Rule::Within => (index as i32, 0, 0, 0),
            Rule::Hourly => (t.year(), t.month(), t.day(), t.hour() + 1),
            Rule::Daily => (t.year(), t.month(), t.day(), 0),
            Rule::Weekly => {
                let w = t.iso_week();
                (w.year(), 0, w.week(), 0)
            }
            Rule::Monthly => (t.year(), t.month(), 0, 0),
            Rule::Yearly => (t.year(), 0, 0, 0),
        }
    }
}

/// How many periods each rule keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// `--keep-last`.
    pub last: u32,
    /// `--keep-hourly`.
    pub hourly: u32,
    /// `--keep-daily`.
    pub daily: u32,
    /// `--keep-weekly`.
    pub weekly: u32,
    /// `--keep-monthly`.
    pub monthly: u32,
    /// `--keep-yearly`.
    pub yearly: u32,
    /// `--keep-within`, in seconds (0: none).
    pub within_seconds: u64,
}

impl Rules {
    fn count(&self, rule: Rule) -> u32 {
        match rule {
            Rule::Within => 0,
            Rule::Last => self.last,
            Rule::Hourly => self.hourly,
            Rule::Daily => self.daily,
            Rule::Weekly => self.weekly,
            Rule::Monthly => self.monthly,
            Rule::Yearly => self.yearly,
        }
    }

    /// Whether any rule keeps anything.
    #[must_use]
    pub fn any(&self) -> bool {
        self.within_seconds > 0 || Rule::PERIODS.iter().any(|r| self.count(*r) > 0)
    }
}

/// Why a point is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Keep {
    /// A rule keeps it.
    Rule(Rule),
    /// It is protected.
    Protected,
    /// The store's minimum retention holds it (committed after the cutoff).
    Held,
}

/// One point as prune sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// The time the point stands for.
    pub time: DateTime<Utc>,
    /// Whether it is protected.
    pub protected: bool,
}

/// Decides for every point which to keep and why (`None`: remove), the rules applied to each
/// disk of each VM (its identity: UUID and pool when given) on its own; disk by disk, in the
/// order of their points. A point the rules would remove that was committed after `hold` (the
/// store's [`cairn_store::Store::retention_cutoff`]) is kept as [`Keep::Held`].
#[must_use]
pub fn decide<Tz: TimeZone>(
    points: Vec<cairn_store::RecoveryPoint>,
    rules: &Rules,
    tz: &Tz,
    hold: Option<DateTime<Utc>>,
) -> Vec<(cairn_store::RecoveryPoint, Option<Keep>)> {
    let mut by_disk: std::collections::BTreeMap<_, Vec<cairn_store::RecoveryPoint>> =
        std::collections::BTreeMap::new();
    for p in points {
        by_disk
            .entry((p.vm_key(), p.disk.clone()))
            .or_default()
            .push(p);
    }
    let mut out = Vec::new();
    for points in by_disk.into_values() {
        let c: Vec<Candidate> = points
            .iter()
            .map(|p| Candidate {
                time: p.time,
                protected: p.protected_at(chrono::Utc::now()),
            })
            .collect();
        let keep = plan(&c, rules, tz);
        out.extend(points.into_iter().zip(keep).map(|(p, k)| {
            let k =
                k.or_else(|| cairn_store::claims::held(p.committed, hold).then_some(Keep::Held));
            (p, k)
        }));
    }
    out
}

/// Decides, for the points of one disk, which to keep and why (`None`: remove). The result is
/// in the order of `points`, which may be in any order.
#[must_use]
pub fn plan<Tz: TimeZone>(points: &[Candidate], rules: &Rules, tz: &Tz) -> Vec<Option<Keep>> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|a, b| points[*b].time.cmp(&points[*a].time).then(b.cmp(a)));
    // `None`: undecided; `Some(None)`: removed; `Some(Some(k))`: kept.
    let mut decided: Vec<Option<Option<Keep>>> = vec![None; points.len()];
    for &i in &order {
        if points[i].protected {
            decided[i] = Some(Some(Keep::Protected));
        }
    }
    let newest = points.iter().map(|p| p.time).max();
    if let (true, Some(newest)) = (rules.within_seconds > 0, newest) {
        let span = i64::try_from(rules.within_seconds)
            .ok()
            .and_then(chrono::Duration::try_seconds)
            .unwrap_or(chrono::Duration::MAX);
        let from = newest
            .checked_sub_signed(span)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        for &i in &order {
            if decided[i].is_none() && points[i].time >= from {
                decided[i] = Some(Some(Keep::Rule(Rule::Within)));
            }
        }
    }
    for rule in Rule::PERIODS {
        let n = rules.count(rule) as usize;
        if n == 0 {
            continue;
        }
        let period = |i: usize| rule.period(&points[i].time, tz, i);
        let covered: std::collections::HashSet<_> = order
            .iter()
            .filter(|&&i| matches!(decided[i], Some(Some(Keep::Rule(_)))))
            .map(|&i| period(i))
            .collect();
        let mut kept = std::collections::HashSet::new();
        for &i in &order {
            if decided[i].is_some() {
                continue;
            }
            let p = period(i);
            if covered.contains(&p) {
                continue;
            }
            if kept.contains(&p) {
                decided[i] = Some(None);
            } else {
                if kept.len() >= n {
                    break;
                }
                kept.insert(p);
                decided[i] = Some(Some(Keep::Rule(rule)));
            }
        }
    }
    decided.into_iter().map(Option::flatten).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    /// Runs `plan` on `times` (UTC) and returns "K:rule" / "P" / "-" per point.
    fn run(times: &[&str], protected: &[usize], rules: Rules, tz: &FixedOffset) -> Vec<String> {
        let c: Vec<Candidate> = times
            .iter()
            .enumerate()
            .map(|(i, t)| Candidate {
                time: at(t),
                protected: protected.contains(&i),
            })
            .collect();
        plan(&c, &rules, tz)
            .into_iter()
            .map(|k| match k {
                None => "-".to_owned(),
                Some(Keep::Protected) => "P".to_owned(),
                Some(Keep::Held) => "H".to_owned(),
                Some(Keep::Rule(r)) => r.name().trim_start_matches("keep-").to_owned(),
            })
            .collect()
    }

    fn utc() -> FixedOffset {
        FixedOffset::east_opt(0).expect("tz")
    }

    /// The reference table: each case is points (oldest first), protected indexes, rules, and
    /// the expected decision of each point, worked out by hand from the rules above.
    #[test]
    fn reference_table() {
        struct Case {
            name: &'static str,
            times: &'static [&'static str],
            protected: &'static [usize],
            rules: Rules,
            tz_hours: i32,
            want: &'static [&'static str],
        }
        let r = |last, hourly, daily, weekly, monthly, yearly| Rules {
            last,
            hourly,
            daily,
            weekly,
            monthly,
            yearly,
            within_seconds: 0,
        };
        let cases = [
            Case {
                name: "keep-last keeps the newest N",
                times: &[
                    "2026-01-01T01:00:00Z",
                    "2026-01-02T01:00:00Z",
                    "2026-01-03T01:00:00Z",
                ],
                protected: &[],
                rules: r(2, 0, 0, 0, 0, 0),
                tz_hours: 0,
                want: &["-", "last", "last"],
            },
            Case {
                name: "daily keeps the newest of each day",
                times: &[
                    "2026-03-01T01:00:00Z",
                    "2026-03-01T23:00:00Z",
                    "2026-03-02T05:00:00Z",
                    "2026-03-02T06:00:00Z",
                    "2026-03-03T00:30:00Z",
                ],
                protected: &[],
                rules: r(0, 0, 2, 0, 0, 0),
                tz_hours: 0,
                want: &["-", "-", "-", "daily", "daily"],
            },
            Case {
                name: "a day covered by keep-last does not count for daily",
                times: &[
                    "2026-03-01T12:00:00Z",
                    "2026-03-02T12:00:00Z",
                    "2026-03-03T08:00:00Z",
                    "2026-03-03T12:00:00Z",
                ],
                protected: &[],
                rules: r(1, 0, 2, 0, 0, 0),
                tz_hours: 0,
                want: &["daily", "daily", "-", "last"],
            },
            Case {
                name: "ISO week across a year boundary: 2020-12-31 and 2021-01-03 share 2020-W53",
                times: &[
                    "2020-12-27T10:00:00Z", // Sun, 2020-W52
                    "2020-12-31T10:00:00Z", // Thu, 2020-W53
                    "2021-01-03T10:00:00Z", // Sun, 2020-W53
                    "2021-01-04T10:00:00Z", // Mon, 2021-W01
                ],
                protected: &[],
                rules: r(0, 0, 0, 3, 0, 0),
                tz_hours: 0,
                want: &["weekly", "-", "weekly", "weekly"],
            },
            Case {
                name: "yearly keeps the last point of each year",
                times: &[
                    "2023-06-01T00:00:00Z",
                    "2023-12-31T23:00:00Z",
                    "2024-12-31T23:59:59Z",
                    "2025-01-01T00:00:00Z",
                    "2025-02-01T00:00:00Z",
                ],
                protected: &[],
                rules: r(0, 0, 0, 0, 0, 3),
                tz_hours: 0,
                want: &["-", "yearly", "yearly", "-", "yearly"],
            },
            Case {
                name: "local time moves a point into the next year (UTC+2)",
                times: &[
                    "2024-12-31T21:00:00Z", // 2024-12-31 23:00 local
                    "2024-12-31T23:00:00Z", // 2025-01-01 01:00 local
                    "2025-06-01T00:00:00Z",
                ],
                protected: &[],
                rules: r(0, 0, 0, 0, 0, 2),
                tz_hours: 2,
                want: &["yearly", "-", "yearly"],
            },
            Case {
                name: "the same points in UTC: one per year",
                times: &[
                    "2024-12-31T21:00:00Z",
                    "2024-12-31T23:00:00Z",
                    "2025-06-01T00:00:00Z",
                ],
                protected: &[],
                rules: r(0, 0, 0, 0, 0, 2),
                tz_hours: 0,
                want: &["-", "yearly", "yearly"],
            },
            Case {
                name: "protected points are kept and count for no rule",
                times: &[
                    "2026-01-01T00:00:00Z",
                    "2026-01-02T00:00:00Z",
                    "2026-01-03T00:00:00Z",
                ],
                protected: &[2, 0],
                rules: r(1, 0, 0, 0, 0, 0),
                tz_hours: 0,
                want: &["P", "last", "P"],
            },
            Case {
                name: "monthly after weekly: an older point of a week weekly kept stays removed",
                times: &[
                    "2026-09-15T00:00:00Z",
                    "2026-09-30T00:00:00Z", // Wed, W40 (Sep 28 - Oct 4)
                    "2026-10-02T00:00:00Z", // Fri, W40
                    "2026-10-20T00:00:00Z",
                ],
                protected: &[],
                rules: r(0, 0, 0, 2, 2, 0),
                tz_hours: 0,
                want: &["monthly", "-", "weekly", "weekly"],
            },
            Case {
                name: "hourly then daily (PBS example shape)",
                times: &[
                    "2026-05-01T10:00:00Z",
                    "2026-05-02T10:00:00Z",
                    "2026-05-02T11:15:00Z",
                    "2026-05-02T11:45:00Z",
                    "2026-05-02T12:05:00Z",
                ],
                protected: &[],
                rules: r(0, 2, 2, 0, 0, 0),
                tz_hours: 0,
                want: &["daily", "-", "-", "hourly", "hourly"],
            },
            Case {
                name: "more rules than points keeps everything",
                times: &["2026-05-01T10:00:00Z", "2026-05-03T10:00:00Z"],
                protected: &[],
                rules: r(0, 0, 7, 4, 12, 5),
                tz_hours: 0,
                want: &["daily", "daily"],
            },
            Case {
                name: "weekly across 2026/2027: 2027-01-03 is in 2026-W53",
                times: &[
                    "2026-12-28T09:00:00Z", // Mon, 2026-W53
                    "2027-01-03T09:00:00Z", // Sun, 2026-W53
                    "2027-01-04T09:00:00Z", // Mon, 2027-W01
                ],
                protected: &[],
                rules: r(0, 0, 0, 2, 0, 0),
                tz_hours: 0,
                want: &["-", "weekly", "weekly"],
            },
        ];
        for c in cases {
            let tz = FixedOffset::east_opt(c.tz_hours * 3600).expect("tz");
            let got = run(c.times, c.protected, c.rules, &tz);
            assert_eq!(got, c.want, "case: {}", c.name);
        }
    }

    #[test]
    fn no_rules_keeps_only_protected() {
        let got = run(
            &["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"],
            &[0],
            Rules::default(),
            &utc(),
        );
        assert_eq!(got, ["P", "-"]);
    }

    /// keep-within counts back from the disk's newest point, not from now: points from 2020
    /// are all kept by a 2-day window when the newest is from 2020 too; the edge is inclusive;
    /// what it keeps covers its days for keep-daily, which keeps the next older days.
    #[test]
    fn keep_within_counts_from_the_newest_point_and_covers_its_periods() {
        let times = [
            "2020-03-01T12:00:00Z",
            "2020-03-02T12:00:00Z",
            "2020-03-03T12:00:00Z",
            "2020-03-04T12:00:00Z",
            "2020-03-05T12:00:00Z",
        ];
        let rules = Rules {
            within_seconds: 2 * 86400,
            ..Rules::default()
        };
        assert_eq!(
            run(&times, &[], rules, &utc()),
            ["-", "-", "within", "within", "within"]
        );
        let rules = Rules {
            within_seconds: 2 * 86400,
            daily: 1,
            ..Rules::default()
        };
        assert_eq!(
            run(&times, &[], rules, &utc()),
            ["-", "daily", "within", "within", "within"]
        );
        assert!(rules.any());
    }

    /// Five thousand points, one every 5 hours from 2024-01-01T00:00Z to 2026-11-07T11:00Z (a
    /// Saturday), with rules that overlap. Worked out by hand: last keeps the 3 points of Nov 7;
    /// daily the newest of Nov 6 back to Oct 31 (Nov 7 is covered); weekly the newest of the
    /// ISO weeks ending Oct 25, 18, 11 and 4 (the weeks of Nov 2 and Oct 26 are covered), and
    /// removes the older points of those weeks, Sep 28 to Oct 3 among them; monthly Sep 2026
    /// (its newest point left: Sep 27's last) back to Oct 2025 (Nov and Oct 2026 are covered);
    /// yearly only 2024 (2026 and 2025 are covered, and there is no older year). Every other
    /// point is removed.
    #[test]
    fn five_thousand_points_keep_the_newest_point_of_each_period_worked_out_by_hand() {
        let base = at("2024-01-01T00:00:00Z");
        let c: Vec<Candidate> = (0..5000)
            .map(|i| Candidate {
                time: base + chrono::Duration::hours(i * 5),
                protected: false,
            })
            .collect();
        assert_eq!(c[4999].time, at("2026-11-07T11:00:00Z"));
        // The newest point strictly before the start of a period's successor.
        let newest_before = |end: &str| ((at(end) - base).num_hours() - 1) as usize / 5;
        let mut want: Vec<(usize, Rule)> =
            vec![(4999, Rule::Last), (4998, Rule::Last), (4997, Rule::Last)];
        for day in [
            "11-07", "11-06", "11-05", "11-04", "11-03", "11-02", "11-01",
        ] {
            want.push((newest_before(&format!("2026-{day}T00:00:00Z")), Rule::Daily));
        }
        for monday in ["10-26", "10-19", "10-12", "10-05"] {
            want.push((
                newest_before(&format!("2026-{monday}T00:00:00Z")),
                Rule::Weekly,
            ));
        }
        want.push((newest_before("2026-09-28T00:00:00Z"), Rule::Monthly));
        for first in [
            "2026-09", "2026-08", "2026-07", "2026-06", "2026-05", "2026-04", "2026-03", "2026-02",
            "2026-01", "2025-12", "2025-11",
        ] {
            want.push((
                newest_before(&format!("{first}-01T00:00:00Z")),
                Rule::Monthly,
            ));
        }
        want.push((newest_before("2025-01-01T00:00:00Z"), Rule::Yearly));
        want.sort_unstable_by_key(|w| w.0);
        let rules = Rules {
            last: 3,
            daily: 7,
            weekly: 4,
            monthly: 12,
            yearly: 3,
            ..Rules::default()
        };
        let got: Vec<(usize, Rule)> = plan(&c, &rules, &utc())
            .into_iter()
            .enumerate()
            .filter_map(|(i, k)| match k {
                Some(Keep::Rule(r)) => Some((i, r)),
                Some(Keep::Protected | Keep::Held) => panic!("point {i} is not protected"),
                None => None,
            })
            .collect();
        assert_eq!(got, want);
    }
}
