//! Schedules in systemd's calendar syntax (`systemd.time(7)`, "Calendar Events"), so that a job
//! file's `schedule` means what the systemd timer `cairn job install` writes means:
//!
//! ```text
//! [WEEKDAYS] [YEAR-MONTH-DAY] [HOUR:MINUTE[:SECOND]] [TIME ZONE]
//! ```
//!
//! - weekdays: `Mon`, `Monday`, lists (`Mon,Wed`) and ranges (`Mon..Fri`);
//! - each date and time component: `*`, a number, a list (`1,15`), a range (`1..7`), a repetition
//!   (`*/15`, `0/6`, `8..18/2`); the year may be left out (`12-24`), the date (every day) or the
//!   time (midnight); seconds default to `00`;
//! - the shorthands `minutely`, `hourly`, `daily`, `weekly`, `monthly`, `quarterly`,
//!   `semiannually`, `yearly` / `annually`;
//! - a trailing time zone (`UTC`, `Europe/Paris`); without one, the machine's local time.
//!
//! Not taken (refused by name, never misread): the last-days-of-month `~`, fractional seconds.
//! [`Calendar::normalized`] writes the form `systemd-analyze calendar` prints, and
//! [`Calendar::next_after`] finds the next elapse as systemd does (the tests compare both with
//! `systemd-analyze` on generated expressions).

use std::fmt::Write as _;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};

/// Why a schedule is refused: the text and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule {text:?}: {why}")]
pub struct CalendarError {
    /// The schedule as written.
    pub text: String,
    /// What is wrong.
    pub why: String,
}

/// One component's allowed values.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    /// `None`: `*` (every value).
    parts: Option<Vec<Part>>,
}

/// Values from `start` to `end`, every `step`; `ranged`: written as a range (`a..b`), not
/// `a/step` running to the component's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Part {
    start: u32,
    end: u32,
    step: u32,
    ranged: bool,
}

impl Field {
    fn any() -> Self {
        Self { parts: None }
    }

    fn one(v: u32) -> Self {
        Self {
            parts: Some(vec![Part {
                start: v,
                end: v,
                step: 1,
                ranged: false,
            }]),
        }
    }

    fn allows(&self, v: u32) -> bool {
        match &self.parts {
            None => true,
            Some(parts) => parts
                .iter()
                .any(|p| v >= p.start && v <= p.end && (v - p.start).is_multiple_of(p.step)),
        }
    }

    /// The smallest allowed value in `from..=max`.
    fn first_from(&self, from: u32, max: u32) -> Option<u32> {
        (from..=max).find(|&v| self.allows(v))
    }

    /// As systemd writes it: two digits for times and days (`width`), ranges `a..b`,
    /// repetitions `a/n`.
    fn write(&self, out: &mut String, width: usize) {
        let Some(parts) = &self.parts else {
            out.push('*');
            return;
        };
        for (k, p) in parts.iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            let _ = write!(out, "{:0width$}", p.start);
            if p.ranged && p.end > p.start {
                let _ = write!(out, "..{:0width$}", p.end);
            }
            if p.step > 1 {
                let _ = write!(out, "/{}", p.step);
            }
        }
    }
}

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    text: String,
    /// Allowed weekdays, Monday = 0; all seven when none was given.
    weekdays: [bool; 7],
    weekdays_given: bool,
    year: Field,
    month: Field,
    day: Field,
    hour: Field,
    minute: Field,
    second: Field,
    zone: Option<chrono_tz::Tz>,
}

const WEEKDAYS: [(&str, &str); 7] = [
    ("mon", "monday"),
    ("tue", "tuesday"),
    ("wed", "wednesday"),
    ("thu", "thursday"),
    ("fri", "friday"),
    ("sat", "saturday"),
    ("sun", "sunday"),
];

/// The last year a schedule names (systemd's too): [`Calendar::next_after`] looks no further
/// (a schedule such as `2020-*-*` never comes again; a Monday that is a leap day comes every
/// 28 to 40 years).
const LAST_YEAR: i32 = 2199;

impl Calendar {
    /// Parses `text`.
    ///
    /// # Errors
    /// [`CalendarError`] naming what is wrong: an unknown weekday, a value out of its range, a
    /// component that is not a number, a list, a range or a repetition, syntax systemd has that
    /// this does not take (`~`).
    pub fn parse(text: &str) -> Result<Self, CalendarError> {
        let bad = |why: String| CalendarError {
            text: text.to_owned(),
            why,
        };
        let expanded = match text.trim().to_ascii_lowercase().as_str() {
            "minutely" => "*-*-* *:*:00".to_owned(),
            "hourly" => "*-*-* *:00:00".to_owned(),
            "daily" => "*-*-* 00:00:00".to_owned(),
            "weekly" => "Mon *-*-* 00:00:00".to_owned(),
            "monthly" => "*-*-01 00:00:00".to_owned(),
            "quarterly" => "*-01,04,07,10-01 00:00:00".to_owned(),
            "semiannually" => "*-01,07-01 00:00:00".to_owned(),
            "yearly" | "annually" => "*-01-01 00:00:00".to_owned(),
            _ => text.trim().to_owned(),
        };
        if expanded.is_empty() {
            return Err(bad("empty".into()));
        }
        if expanded.contains('~') {
            return Err(bad(
                "the last days of a month (`~`) are not taken here: name the days".into(),
            ));
        }
        let mut words: Vec<&str> = expanded.split_whitespace().collect();
        let mut cal = Self {
            text: text.to_owned(),
            weekdays: [true; 7],
            weekdays_given: false,
            year: Field::any(),
            month: Field::any(),
            day: Field::any(),
            hour: Field::one(0),
            minute: Field::one(0),
            second: Field::one(0),
            zone: None,
        };
        // A trailing time zone: a last word of letters that names no weekday (dates and times
        // start with a digit or `*`).
        if let Some(last) = words.last().copied()
            && last.starts_with(|c: char| c.is_ascii_alphabetic())
            && weekdays_of(last).is_none()
        {
            let tz = last
                .parse::<chrono_tz::Tz>()
                .map_err(|_| bad(format!("{last:?} is neither a weekday nor a time zone")))?;
            cal.zone = Some(tz);
            words.pop();
        }
        // Weekdays first, when the first word is made of letters.
        if let Some(first) = words.first()
            && first
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
        {
            cal.weekdays =
                weekdays_of(first).ok_or_else(|| bad(format!("{first:?} is not a weekday")))?;
            cal.weekdays_given = true;
            words.remove(0);
        }
        let (mut date, mut time) = (None, None);
        for w in words {
            if w.contains(':') && time.is_none() {
                time = Some(w);
            } else if w.contains('-') && date.is_none() && time.is_none() {
                date = Some(w);
            } else {
                return Err(bad(format!(
                    "{w:?}: expected [WEEKDAYS] [YEAR-MONTH-DAY] [HH:MM[:SS]] [TIME ZONE]"
                )));
            }
        }
        if !cal.weekdays_given && date.is_none() && time.is_none() {
            return Err(bad("nothing to schedule".into()));
        }
        if let Some(d) = date {
            let parts: Vec<&str> = d.split('-').collect();
            let (y, m, day) = match parts.as_slice() {
                [y, m, d] => (Some(*y), *m, *d),
                [m, d] => (None, *m, *d),
                _ => return Err(bad(format!("{d:?} is not a date (YEAR-MONTH-DAY)"))),
            };
            if let Some(y) = y {
                cal.year = field(y, 1970, LAST_YEAR as u32, "year").map_err(&bad)?;
            }
            cal.month = field(m, 1, 12, "month").map_err(&bad)?;
            cal.day = field(day, 1, 31, "day").map_err(&bad)?;
        }
        if let Some(t) = time {
            let parts: Vec<&str> = t.split(':').collect();
            let (h, m, s) = match parts.as_slice() {
                [h, m] => (*h, *m, None),
                [h, m, s] => (*h, *m, Some(*s)),
                _ => return Err(bad(format!("{t:?} is not a time (HH:MM[:SS])"))),
            };
            cal.hour = field(h, 0, 23, "hour").map_err(&bad)?;
            cal.minute = field(m, 0, 59, "minute").map_err(&bad)?;
            if let Some(s) = s {
                if s.contains('.') {
                    return Err(bad("fractions of a second are not taken here".into()));
                }
                cal.second = field(s, 0, 59, "second").map_err(&bad)?;
            }
        }
        Ok(cal)
    }

    /// The schedule as written.
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The form `systemd-analyze calendar` prints as "Normalized form".
    #[must_use]
    pub fn normalized(&self) -> String {
        let mut out = String::new();
        if self.weekdays_given {
            write_weekdays(&mut out, &self.weekdays);
            out.push(' ');
        }
        self.year.write(&mut out, 4);
        out.push('-');
        self.month.write(&mut out, 2);
        out.push('-');
        self.day.write(&mut out, 2);
        out.push(' ');
        self.hour.write(&mut out, 2);
        out.push(':');
        self.minute.write(&mut out, 2);
        out.push(':');
        self.second.write(&mut out, 2);
        if let Some(tz) = self.zone {
            let _ = write!(out, " {}", tz.name());
        }
        out
    }

    /// The first time strictly after `after` that the schedule names, in its time zone (or
    /// `local`'s when it names none); `None` when none comes before 2200.
    #[must_use]
    pub fn next_after<Z: TimeZone>(
        &self,
        after: DateTime<Utc>,
        local: &Z,
    ) -> Option<DateTime<Utc>> {
        match self.zone {
            Some(tz) => self.next_in(after, &tz),
            None => self.next_in(after, local),
        }
    }

    fn next_in<Z: TimeZone>(&self, after: DateTime<Utc>, zone: &Z) -> Option<DateTime<Utc>> {
        // Whole seconds: the first candidate is the next second.
        let start = after.with_timezone(zone).naive_local() + chrono::Duration::seconds(1);
        let start = start.with_nanosecond(0)?;
        let mut day = start.date();
        let last = NaiveDate::from_ymd_opt(LAST_YEAR, 12, 31)?;
        while day <= last {
            if self.date_allowed(day) {
                let from = if day == start.date() {
                    start.time()
                } else {
                    chrono::NaiveTime::MIN
                };
                if let Some(t) = self.first_time_from(from) {
                    let local = NaiveDateTime::new(day, t);
                    // A time a clock change skips is not there; one it repeats is the first.
                    if let Some(at) = zone.from_local_datetime(&local).earliest() {
                        let at = at.with_timezone(&Utc);
                        if at > after {
                            return Some(at);
                        }
                    }
                }
            }
            day = day.succ_opt()?;
        }
        None
    }

    fn date_allowed(&self, d: NaiveDate) -> bool {
        self.weekdays[d.weekday().num_days_from_monday() as usize]
            && u32::try_from(d.year()).is_ok_and(|y| self.year.allows(y))
            && self.month.allows(d.month())
            && self.day.allows(d.day())
    }

    /// The first allowed time of a day at or after `from`.
    fn first_time_from(&self, from: chrono::NaiveTime) -> Option<chrono::NaiveTime> {
        let mut h = self.hour.first_from(from.hour(), 23)?;
        loop {
            let (m0, s0) = if h == from.hour() {
                (from.minute(), from.second())
            } else {
                (0, 0)
            };
            let mut m = self.minute.first_from(m0, 59);
            while let Some(mm) = m {
                let s_from = if h == from.hour() && mm == from.minute() {
                    s0
                } else {
                    0
                };
                if let Some(s) = self.second.first_from(s_from, 59) {
                    return chrono::NaiveTime::from_hms_opt(h, mm, s);
                }
                m = self.minute.first_from(mm + 1, 59);
            }
            h = self.hour.first_from(h + 1, 23)?;
        }
    }
}

/// The weekdays a word names (`Mon`, `mon,wed`, `Mon..Fri`, `Saturday`), Monday = 0.
fn weekdays_of(word: &str) -> Option<[bool; 7]> {
    let index = |w: &str| {
        let w = w.to_ascii_lowercase();
        WEEKDAYS
            .iter()
            .position(|(short, long)| w == *short || w == *long)
    };
    let mut days = [false; 7];
    for part in word.split(',') {
        match part.split_once("..") {
            Some((a, b)) => {
                let (a, b) = (index(a)?, index(b)?);
                if a > b {
                    return None;
                }
                for d in &mut days[a..=b] {
                    *d = true;
                }
            }
            None => days[index(part)?] = true,
        }
    }
    Some(days)
}

fn write_weekdays(out: &mut String, days: &[bool; 7]) {
    const NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let mut first = true;
    let mut d = 0;
    while d < 7 {
        if !days[d] {
            d += 1;
            continue;
        }
        let mut e = d;
        while e + 1 < 7 && days[e + 1] {
            e += 1;
        }
        if !first {
            out.push(',');
        }
        first = false;
        match e - d {
            0 => out.push_str(NAMES[d]),
            1 => {
                out.push_str(NAMES[d]);
                out.push(',');
                out.push_str(NAMES[e]);
            }
            _ => {
                out.push_str(NAMES[d]);
                out.push_str("..");
                out.push_str(NAMES[e]);
            }
        }
        d = e + 1;
    }
}

/// One date or time component: `*`, `N`, `A..B`, `A/STEP`, `A..B/STEP`, lists of them (systemd
/// takes no `*/STEP`: a repetition starts from a value).
fn field(text: &str, min: u32, max: u32, what: &str) -> Result<Field, String> {
    if text == "*" {
        return Ok(Field::any());
    }
    let num = |s: &str| -> Result<u32, String> {
        let v: u32 = s
            .parse()
            .map_err(|_| format!("{what} {s:?} is not a number"))?;
        if v < min || v > max {
            return Err(format!("{what} {v} is outside {min}..{max}"));
        }
        Ok(v)
    };
    let mut parts = Vec::new();
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().ok().filter(|&s| s > 0).ok_or_else(|| {
                    format!("{what}: the repetition {s:?} is not a positive number")
                })?;
                if r == "*" {
                    return Err(format!(
                        "{what}: a repetition starts from a value ({min}/{step}), not *"
                    ));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let p = match range.split_once("..") {
            Some((a, b)) => Part {
                start: num(a)?,
                end: num(b)?,
                step,
                ranged: true,
            },
            None => {
                let v = num(range)?;
                Part {
                    start: v,
                    end: if step > 1 { max } else { v },
                    step,
                    ranged: false,
                }
            }
        };
        if p.start > p.end {
            return Err(format!(
                "{what}: the range {}..{} runs backwards",
                p.start, p.end
            ));
        }
        parts.push(p);
    }
    Ok(Field { parts: Some(parts) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn shorthands_and_weekday_ranges_normalize_as_systemd_writes_them() {
        for (text, want) in [
            ("daily", "*-*-* 00:00:00"),
            ("weekly", "Mon *-*-* 00:00:00"),
            ("quarterly", "*-01,04,07,10-01 00:00:00"),
            ("Mon..Fri 02:00", "Mon..Fri *-*-* 02:00:00"),
            ("Sat,Sun *-*-1..7 04:00", "Sat,Sun *-*-01..07 04:00:00"),
            ("*-*-* 03:30", "*-*-* 03:30:00"),
            ("*:0/15", "*-*-* *:00/15:00"),
        ] {
            assert_eq!(Calendar::parse(text).expect(text).normalized(), want);
        }
    }

    #[test]
    fn the_next_elapse_skips_to_the_days_and_times_named() {
        let c = Calendar::parse("Mon..Fri 02:00").expect("parse");
        // Saturday 2026-12-05 10:00 UTC: the next is Monday 02:00.
        assert_eq!(
            c.next_after(at("2026-12-05T10:00:00Z"), &Utc),
            Some(at("2026-12-07T02:00:00Z"))
        );
        // Exactly at an elapse: the next one, not the same.
        assert_eq!(
            c.next_after(at("2026-12-07T02:00:00Z"), &Utc),
            Some(at("2026-12-08T02:00:00Z"))
        );
        let c = Calendar::parse("*-02-29 12:00 UTC").expect("leap");
        assert_eq!(
            c.next_after(at("2026-03-01T00:00:00Z"), &chrono_tz::Europe::Paris),
            Some(at("2028-02-29T12:00:00Z"))
        );
        assert_eq!(
            Calendar::parse("2020-01-01")
                .expect("past")
                .next_after(at("2026-01-01T00:00:00Z"), &Utc),
            None
        );
    }

    #[test]
    fn what_is_wrong_is_named() {
        for (text, says) in [
            ("Mon..Fry", "weekday"),
            ("*-13-01", "month 13"),
            ("25:00", "hour 25"),
            ("*-*-* 02:00 Mars/Olympus", "time zone"),
            ("*-*~01", "last days"),
            ("", "empty"),
            ("*-*-* 02:00:00.5", "fractions"),
            ("*-*-* 0/0:00", "repetition"),
            ("*:*/15", "starts from a value"),
        ] {
            let e = Calendar::parse(text).expect_err(text);
            assert!(e.to_string().contains(says), "{text}: {e}");
        }
    }
}
