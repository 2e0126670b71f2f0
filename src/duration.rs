//! Durations as users write them in driftless.yaml, Compose files and
//! Prometheus rules: Go's form (`1m30s`, `500ms`, `2h`), plus `d`/`w`/`y`
//! as Prometheus allows. A bare integer is seconds.
//!
//! Errors are `String` on purpose: a parse error is the message of a
//! diagnostic, which the caller places at the file and line of the input;
//! there is no underlying error to keep as a cause.

use std::time::Duration;

/// Parses `1h30m`, `90s`, `250ms`, `1.5s`, `2d`. Returns a message on error.
pub fn parse(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration".to_owned());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_nanos: u128 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        if start == i {
            return Err(format!(
                "`{input}` is not a duration (expected e.g. `30s`, `1m30s`, `500ms`)"
            ));
        }
        let number: f64 = s[start..i].parse().map_err(|_| {
            format!(
                "`{input}` is not a duration (bad number `{}`)",
                &s[start..i]
            )
        })?;
        let unit_start = i;
        while i < bytes.len() && !(bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let unit = &s[unit_start..i];
        let nanos_per_unit: f64 = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86_400e9,
            "w" => 604_800e9,
            "y" => 31_536_000e9,
            "" => {
                return Err(format!(
                    "`{input}` needs a unit (ns, us, ms, s, m, h, d, w, y)"
                ));
            }
            other => return Err(format!("`{input}`: unknown duration unit `{other}`")),
        };
        let nanos = number * nanos_per_unit;
        if !nanos.is_finite() || nanos > 1e30 {
            return Err(format!("`{input}` is too long"));
        }
        total_nanos = total_nanos.saturating_add(nanos as u128);
    }
    let secs = (total_nanos / 1_000_000_000).min(u64::MAX as u128) as u64;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// Formats a duration the way Go prints it, shortest form: `1m30s`, `500ms`.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if !nanos.is_multiple_of(1_000_000) {
        return if nanos.is_multiple_of(1_000) {
            format!("{}us", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let total_ms = d.as_millis();
    if !total_ms.is_multiple_of(1000) {
        return format!("{total_ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    let h = secs / 3600;
    secs %= 3600;
    let m = secs / 60;
    secs %= 60;
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if secs > 0 {
        out.push_str(&format!("{secs}s"));
    }
    out
}

/// Serialises an optional duration as its Go form (`"1m30s"`), so stored
/// definitions, diffs and hashes read as users wrote them.
pub fn serialize_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format(*d)),
        None => s.serialize_none(),
    }
}

/// `#[serde(with = "crate::duration::serde_go")]`: a duration read and
/// written in its Go form (`90s`, `7d`), for configuration files.
pub mod serde_go {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        super::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_and_prometheus_forms() {
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("10us").unwrap(), Duration::from_micros(10));
        assert_eq!(parse("10µs").unwrap(), Duration::from_micros(10));
    }

    #[test]
    fn rejects_garbage_with_a_message() {
        assert!(parse("").is_err());
        assert!(parse("abc").unwrap_err().contains("not a duration"));
        assert!(parse("10x").unwrap_err().contains("unknown duration unit"));
        assert!(parse("1.2.3s").is_err());
        assert!(parse("99999999999999999999999y").is_err());
    }

    #[test]
    fn formats_shortest() {
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_secs(3600)), "1h");
        assert_eq!(format(Duration::from_micros(10)), "10us");
        assert_eq!(format(Duration::from_nanos(7)), "7ns");
    }
}
