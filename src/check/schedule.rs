//! Cron schedules as users write them: standard 5-field cron
//! (`min hour dom month dow`), 6/7-field cron with seconds (and year), and
//! `@daily`-style macros.
//!
//! The `cron` crate wants 6 or 7 fields and numbers days of the week 1–7
//! from Sunday, where standard cron uses 0–7 with 0 and 7 both Sunday and
//! 1 = Monday. A 5-field expression is translated here so that `0 3 * * 1`
//! keeps meaning Monday.
//!
//! Errors are `String` on purpose: a parse error is the message of a
//! diagnostic, which the caller places at the file and line of the input;
//! there is no underlying error to keep as a cause.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};

/// A parsed schedule, with the expression the user wrote.
#[derive(Debug, Clone)]
pub struct Schedule {
    written: String,
    inner: cron::Schedule,
}

impl Schedule {
    /// Parses a 5-, 6- or 7-field expression or a macro.
    pub fn parse(expression: &str) -> Result<Schedule, String> {
        let written = expression.trim().to_owned();
        let fields: Vec<&str> = written.split_whitespace().collect();
        let translated = if written.starts_with('@') {
            match written.as_str() {
                "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@midnight"
                | "@hourly" => written.clone(),
                other => {
                    return Err(format!(
                        "unknown schedule macro `{other}`; use @yearly, @monthly, @weekly, @daily or @hourly"
                    ));
                }
            }
        } else {
            match fields.len() {
                5 => translate_five_fields(&fields)?,
                6 | 7 => written.clone(),
                n => {
                    return Err(format!(
                        "`{written}` has {n} fields; write standard cron `min hour day-of-month month day-of-week` (5 fields), or 6/7 fields with seconds first"
                    ));
                }
            }
        };
        let inner = cron::Schedule::from_str(&translated)
            .map_err(|e| format!("`{written}` is not a valid cron expression: {e}"))?;
        Ok(Schedule { written, inner })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.written
    }

    /// The first run strictly after `after`, in `after`'s time zone.
    pub fn next_after<Z: TimeZone>(&self, after: &DateTime<Z>) -> Option<DateTime<Z>> {
        self.inner.after(after).next()
    }

    /// The first run strictly after `after`, with the fields read as wall
    /// time in the IANA time zone `tz` (so `0 3 * * 1` is 03:00 on Monday
    /// there, across DST changes). `None` for an unknown zone.
    pub fn next_in(&self, tz: &str, after: &DateTime<Utc>) -> Option<DateTime<Utc>> {
        let tz = timezone(tz).ok()?;
        self.next_after(&after.with_timezone(&tz))
            .map(|t| t.with_timezone(&Utc))
    }

    /// The time between the two runs that follow `after`: the interval a
    /// job is expected to succeed within (twice it raises an alert).
    pub fn interval_in(&self, tz: &str, after: &DateTime<Utc>) -> Option<std::time::Duration> {
        let first = self.next_in(tz, after)?;
        let second = self.next_in(tz, &first)?;
        (second - first).to_std().ok()
    }
}

/// Resolves an IANA time zone name (`UTC`, `Europe/Berlin`).
pub fn timezone(name: &str) -> Result<chrono_tz::Tz, String> {
    chrono_tz::Tz::from_str(name).map_err(|_| {
        format!("timezone `{name}` is not an IANA time zone name (e.g. `UTC`, `Europe/Berlin`)")
    })
}

/// `min hour dom month dow` → `0 min hour dom month dow'`, with the
/// day-of-week field renumbered for the cron crate.
fn translate_five_fields(fields: &[&str]) -> Result<String, String> {
    let (dom, dow) = (fields[2], fields[4]);
    let restricted = |f: &str| f != "*" && f != "?";
    if restricted(dom) && restricted(dow) {
        // Standard cron runs when EITHER field matches; the cron crate
        // requires both. Refuse rather than run on the wrong days.
        return Err(format!(
            "`{}` restricts both day-of-month and day-of-week; cron would run when either matches, which driftless does not emulate — split it into two jobs",
            fields.join(" ")
        ));
    }
    let dow = if restricted(dow) {
        translate_dow(dow)?
    } else {
        dow.to_owned()
    };
    Ok(format!(
        "0 {} {} {} {} {}",
        fields[0], fields[1], dom, fields[3], dow
    ))
}

/// Expands a standard day-of-week field (0–7, names, ranges, steps, lists)
/// into the cron crate's numbering (1 = Sunday … 7 = Saturday).
fn translate_dow(field: &str) -> Result<String, String> {
    let bad = || {
        format!("day-of-week `{field}` is not valid (use 0-7 or SUN-SAT, ranges, steps and lists)")
    };
    let mut days = [false; 7]; // index 0 = Sunday in standard numbering
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, s.parse::<usize>().map_err(|_| bad())?),
            None => (item, 1),
        };
        if step == 0 {
            return Err(bad());
        }
        let (start, end) = if range == "*" {
            (0, 6)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                day_number(a).ok_or_else(bad)?,
                day_number(b).ok_or_else(bad)?,
            )
        } else {
            let a = day_number(range).ok_or_else(bad)?;
            // `a/step` means from a to the end of the week.
            (a, if item.contains('/') { 6 } else { a })
        };
        if start > end {
            return Err(format!("day-of-week range `{range}` runs backwards"));
        }
        let mut d = start;
        while d <= end {
            days[d % 7] = true; // 7 is Sunday again
            d += step;
        }
    }
    let list: Vec<String> = (0..7)
        .filter(|&d| days[d])
        .map(|d| (d + 1).to_string())
        .collect();
    if list.is_empty() {
        return Err(bad());
    }
    Ok(list.join(","))
}

fn day_number(s: &str) -> Option<usize> {
    const NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
    if let Ok(n) = s.parse::<usize>() {
        return (n <= 7).then_some(n);
    }
    NAMES.iter().position(|n| n.eq_ignore_ascii_case(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Timelike, Utc, Weekday};

    fn next(expr: &str, from: &str) -> DateTime<Utc> {
        let from: DateTime<Utc> = from.parse().unwrap();
        Schedule::parse(expr).unwrap().next_after(&from).unwrap()
    }

    #[test]
    fn monday_means_monday() {
        // 2026-11-26 is a Thursday.
        let t = next("0 3 * * 1", "2026-11-26T12:00:00Z");
        assert_eq!(t.weekday(), Weekday::Mon);
        assert_eq!((t.hour(), t.minute()), (3, 0));
        assert_eq!(t.to_rfc3339(), "2026-11-30T03:00:00+00:00");
    }

    #[test]
    fn sunday_is_zero_and_seven_and_names_work() {
        for expr in ["0 3 * * 0", "0 3 * * 7", "0 3 * * SUN", "0 3 * * sun"] {
            assert_eq!(
                next(expr, "2026-11-26T12:00:00Z").weekday(),
                Weekday::Sun,
                "{expr}"
            );
        }
        let fri = next("30 1 * * 1-5", "2026-11-26T12:00:00Z");
        assert_eq!(fri.weekday(), Weekday::Fri);
        let sat = next("0 0 * * 5-7", "2026-11-28T01:00:00Z");
        assert_eq!(sat.weekday(), Weekday::Sun, "5-7 includes Sunday");
    }

    #[test]
    fn six_field_and_macros() {
        assert_eq!(next("*/30 * * * * *", "2026-11-26T12:00:10Z").second(), 30);
        let d = next("@daily", "2026-11-26T12:00:00Z");
        assert_eq!(d.to_rfc3339(), "2026-11-27T00:00:00+00:00");
    }

    #[test]
    fn time_zone_of_the_job_is_used() {
        use chrono::FixedOffset;
        let tz = FixedOffset::east_opt(9 * 3600).unwrap();
        let from = tz.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap();
        let t = Schedule::parse("0 3 * * 1")
            .unwrap()
            .next_after(&from)
            .unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-30T03:00:00+09:00");
    }

    #[test]
    fn monday_in_the_jobs_time_zone() {
        // 03:00 Monday in Berlin (CET, UTC+1 in November) is 02:00 UTC Monday;
        // in Auckland (NZDT, UTC+13) it is 14:00 UTC on Sunday.
        let s = Schedule::parse("0 3 * * 1").unwrap();
        let from: DateTime<Utc> = "2026-11-26T12:00:00Z".parse().unwrap();
        let berlin = s.next_in("Europe/Berlin", &from).unwrap();
        assert_eq!(berlin.to_rfc3339(), "2026-11-30T02:00:00+00:00");
        let local = berlin.with_timezone(&timezone("Europe/Berlin").unwrap());
        assert_eq!((local.weekday(), local.hour()), (Weekday::Mon, 3));
        let auckland = s.next_in("Pacific/Auckland", &from).unwrap();
        assert_eq!(auckland.to_rfc3339(), "2026-11-29T14:00:00+00:00");
        // Across the switch to summer time the wall time stays 03:00.
        let march: DateTime<Utc> = "2026-03-24T00:00:00Z".parse().unwrap();
        assert_eq!(
            s.next_in("Europe/Berlin", &march).unwrap().to_rfc3339(),
            "2026-03-30T01:00:00+00:00"
        );
        assert!(s.next_in("Mars/Olympus", &from).is_none());
        assert!(
            timezone("Mars/Olympus")
                .unwrap_err()
                .contains("Mars/Olympus")
        );
    }

    #[test]
    fn interval_of_common_schedules() {
        let from: DateTime<Utc> = "2026-11-26T12:00:00Z".parse().unwrap();
        let hours = |e: &str| {
            Schedule::parse(e)
                .unwrap()
                .interval_in("UTC", &from)
                .unwrap()
                .as_secs()
                / 3600
        };
        assert_eq!(hours("@daily"), 24);
        assert_eq!(hours("0 */6 * * *"), 6);
        assert_eq!(hours("0 3 * * 1"), 24 * 7);
    }

    #[test]
    fn invalid_expressions_say_why() {
        assert!(Schedule::parse("* * *").unwrap_err().contains("3 fields"));
        assert!(
            Schedule::parse("61 * * * *")
                .unwrap_err()
                .contains("not a valid cron")
        );
        assert!(
            Schedule::parse("0 3 * * 8")
                .unwrap_err()
                .contains("day-of-week")
        );
        assert!(
            Schedule::parse("@sometimes")
                .unwrap_err()
                .contains("unknown schedule macro")
        );
        assert!(
            Schedule::parse("0 0 1 * 1")
                .unwrap_err()
                .contains("split it into two jobs")
        );
    }
}
