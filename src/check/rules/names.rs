//! Names in rule files, validated as the target's Prometheus does: 2.x
//! ("legacy" validation) allows only `[a-zA-Z_][a-zA-Z0-9_]*` label names and
//! `[a-zA-Z_:][a-zA-Z0-9_:]*` metric names; 3.x (UTF-8 validation) allows any
//! non-empty UTF-8 string. Durations are Prometheus's (`model.Duration`):
//! `1y2w3d4h5m6s7ms` units in that order, integers only, or `0`.
//!
//! Errors are `String` on purpose: a parse error is the message of a
//! diagnostic, which the caller places at the file and line of the input;
//! there is no underlying error to keep as a cause.

/// How names are validated; the Prometheus major version decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// Prometheus 2.x.
    Legacy,
    /// Prometheus 3.x.
    Utf8,
}

impl Validation {
    /// The scheme of a Prometheus major version (2 → legacy, 3 and later → UTF-8).
    pub fn for_version(version: u8) -> Self {
        if version >= 3 {
            Validation::Utf8
        } else {
            Validation::Legacy
        }
    }

    /// A valid label (or annotation) name.
    pub fn label_name(self, name: &str) -> bool {
        match self {
            Validation::Legacy => legacy(name, false),
            Validation::Utf8 => !name.is_empty(),
        }
    }

    /// A valid metric name (a recording rule's `record`).
    pub fn metric_name(self, name: &str) -> bool {
        match self {
            Validation::Legacy => legacy(name, true),
            Validation::Utf8 => !name.is_empty(),
        }
    }
}

fn legacy(name: &str, colons: bool) -> bool {
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':');
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if ok_first(c))
        && chars.all(|c| ok_first(c) || c.is_ascii_digit())
}

/// Parses a Prometheus duration (`model.ParseDuration`) into milliseconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    if s.is_empty() {
        return Err("empty duration string".to_owned());
    }
    if s == "0" {
        return Ok(0);
    }
    const UNITS: [(&str, u64); 7] = [
        ("y", 365 * 24 * 3_600_000),
        ("w", 7 * 24 * 3_600_000),
        ("d", 24 * 3_600_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let bad = || format!("not a valid duration string: {s:?}");
    let mut rest = s;
    let mut next_unit = 0;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        // `ms` before `m`: the longest unit that matches here.
        let (index, (unit, factor)) = UNITS
            .iter()
            .enumerate()
            .filter(|(_, (u, _))| rest.starts_with(u))
            .max_by_key(|(_, (u, _))| u.len())
            .ok_or_else(bad)?;
        if index < next_unit {
            return Err(bad());
        }
        next_unit = index + 1;
        rest = &rest[unit.len()..];
        total = n
            .checked_mul(*factor)
            .and_then(|v| total.checked_add(v))
            .filter(|v| *v <= i64::MAX as u64 / 1_000_000)
            .ok_or_else(|| "duration out of range".to_owned())?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_and_utf8_names() {
        let (l, u) = (Validation::Legacy, Validation::Utf8);
        assert!(
            l.label_name("ins_tance") && !l.label_name("ins-tance") && u.label_name("ins-tance")
        );
        assert!(!l.label_name("1a") && !l.label_name("") && !u.label_name(""));
        assert!(!l.label_name("a:b") && l.metric_name("job:up:sum") && !l.metric_name("a-b"));
        assert!(u.metric_name("promql-experimental-functions"));
        assert_eq!(Validation::for_version(2), l);
        assert_eq!(Validation::for_version(3), u);
    }

    #[test]
    fn durations_follow_prometheus() {
        assert_eq!(parse_duration("5m"), Ok(300_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("1s500ms"), Ok(1_500));
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("2w"), Ok(14 * 86_400_000));
        for bad in ["", "5", "1.5m", "1m1h", "5 m", "-1m", "1mm", "1us", "m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
