//! Values as the command line takes them and gives them back: times in the store's time zone,
//! chunk sizes and byte counts.

use anyhow::Result;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

pub use cairn_store::select::show_time;

/// Checks the form of `--time` as the command line is read (a usage error, exit status 2); it
/// is read in the store's zone once the store is open.
pub fn time_syntax(s: &str) -> Result<String, String> {
    parse_time(s, Tz::UTC)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// Parses `--time`: RFC 3339 (`2026-11-22T02:00:00Z`, `...+02:00`), a date and time without a
/// zone (in the store's zone `tz`), or a date (its midnight there).
pub fn parse_time(s: &str, tz: Tz) -> Result<DateTime<Utc>> {
    use cairn_store::select::{When, day_start, parse_when};
    match parse_when(s, tz) {
        Some(When::Instant(t)) => return Ok(t),
        Some(When::Day(d)) => {
            if let Some(t) = day_start(d, tz) {
                return Ok(t);
            }
        }
        None => {}
    }
    crate::usage!(
        "--time {s:?} is not a time: give RFC 3339 (2026-11-22T02:00:00Z or with an offset), a \
         date and time without a zone (2026-11-22T02:00:00, in the store's time zone {tz}; one \
         that the clocks skip is refused) or a date (2026-11-22)"
    )
}

/// Parses sizes like `256K`, `1M`, `2MiB`, `65536`.
pub fn parse_size(s: &str) -> Result<u32, String> {
    u32::try_from(parse_bytes(s)?).map_err(|_| format!("{s} is too large"))
}

/// Parses byte counts like `100G`, `2TiB`, `1048576` (K, M, G, T are powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.trim_end_matches('B').trim_end_matches('I');
    let (num, mul) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 256K, 1M, 100G)"))?;
    n.checked_mul(mul)
        .ok_or_else(|| format!("{s} is too large"))
}

/// Parses `90m`, `12h`, `7d`, `2w`.
pub fn parse_duration(s: &str) -> Result<chrono::Duration, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.len().saturating_sub(1));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 90m, 12h, 7d, 2w)"))?;
    match unit {
        "m" => Ok(chrono::Duration::minutes(n)),
        "h" => Ok(chrono::Duration::hours(n)),
        "d" => Ok(chrono::Duration::days(n)),
        "w" => Ok(chrono::Duration::weeks(n)),
        _ => Err(format!("{s:?}: the unit is m, h, d or w")),
    }
}
