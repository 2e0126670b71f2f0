//! Compose's short string syntaxes, each parsed as compose-go (and the
//! Docker libraries it uses) parses it: ports (`127.0.0.1:8080-8081:80-81/udp`),
//! volumes (`./conf:/etc/app:ro`), byte sizes (`512m`), and commands given as
//! one string (split like a shell would, without running one).
//!
//! Errors are `String` on purpose: a parse error is the message of a
//! diagnostic, which the caller places at the file and line of the input;
//! there is no underlying error to keep as a cause.

use crate::model::compose::Port;

/// Parses a short-syntax port (`"80"`, `"8080:80"`, `"127.0.0.1:8080:80/udp"`,
/// `"[::1]:8080:80"`, `"8000-8001:8000-8001"`, `"127.0.0.1::80"`). A range of
/// container ports becomes one [`Port`] per port, as Compose expands it.
pub fn parse_port(spec: &str) -> Result<Vec<Port>, String> {
    let (rest, protocol) = match spec.rsplit_once('/') {
        Some((rest, proto)) => (rest, proto.to_ascii_lowercase()),
        None => (spec, "tcp".to_owned()),
    };
    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!(
            "`{spec}`: protocol must be tcp, udp or sctp, not `{protocol}`"
        ));
    }
    let (host_ip, published, target) = split_port_parts(rest).ok_or_else(|| {
        format!("`{spec}` is not a port mapping (expected `[[ip:]published:]target[/protocol]`)")
    })?;
    if let Some(ip) = &host_ip
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        return Err(format!("`{spec}`: `{ip}` is not an IP address"));
    }
    let (t_start, t_end) = port_range(target, spec)?;
    let published = published.filter(|p| !p.is_empty());
    let mut ports = Vec::new();
    match published {
        None => {
            for t in t_start..=t_end {
                ports.push(port(&host_ip, None, t, &protocol));
            }
        }
        Some(p) => {
            let (p_start, p_end) = port_range(p, spec)?;
            if t_start == t_end {
                // One container port, possibly a range of host ports to pick from.
                let published = if p_start == p_end {
                    p_start.to_string()
                } else {
                    format!("{p_start}-{p_end}")
                };
                ports.push(port(&host_ip, Some(published), t_start, &protocol));
            } else if p_end - p_start == t_end - t_start {
                for (t, p) in (t_start..=t_end).zip(p_start..=p_end) {
                    ports.push(port(&host_ip, Some(p.to_string()), t, &protocol));
                }
            } else {
                return Err(format!(
                    "`{spec}`: host and container port ranges have different lengths"
                ));
            }
        }
    }
    Ok(ports)
}

fn port(host_ip: &Option<String>, published: Option<String>, target: u16, protocol: &str) -> Port {
    Port {
        host_ip: host_ip.clone(),
        published,
        target,
        protocol: protocol.to_owned(),
    }
}

/// Splits `ip:published:target`, `published:target` or `target`; an IPv6
/// host IP must be in brackets.
fn split_port_parts(s: &str) -> Option<(Option<String>, Option<&str>, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, rest) = rest.split_once(']')?;
        let rest = rest.strip_prefix(':')?;
        let (published, target) = rest.split_once(':')?;
        return Some((Some(ip.to_owned()), Some(published), target));
    }
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [target] => Some((None, None, target)),
        [published, target] => Some((None, Some(published), target)),
        [ip, published, target] => Some((Some((*ip).to_owned()), Some(published), target)),
        _ => None,
    }
}

/// `80` or `8000-8010` as an inclusive range of valid ports.
pub fn port_range(s: &str, spec: &str) -> Result<(u16, u16), String> {
    let one = |p: &str| -> Result<u16, String> {
        match p.trim().parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
            _ => Err(format!("`{spec}`: `{p}` is not a port number (1-65535)")),
        }
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if a > b {
                return Err(format!("`{spec}`: range `{s}` ends before it starts"));
            }
            Ok((a, b))
        }
        None => {
            let p = one(s)?;
            Ok((p, p))
        }
    }
}

/// A short-syntax volume: `target`, `source:target` or `source:target:options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortVolume {
    pub source: Option<String>,
    pub target: String,
    pub options: Vec<String>,
}

/// Splits a short-syntax volume (`./data:/data:ro`, `cache:/cache`, `/tmp`).
pub fn parse_volume(spec: &str) -> Result<ShortVolume, String> {
    let mut parts: Vec<&str> = spec.split(':').collect();
    // A Windows drive letter (`C:\data:/data`) is part of the source.
    if is_windows_path(spec) && !spec.starts_with('\\') && parts.len() > 1 {
        let drive_len = parts[0].len() + 1 + parts[1].len();
        parts.splice(0..2, [&spec[..drive_len]]);
    }
    let (source, target, options) = match parts.as_slice() {
        [target] => (None, *target, ""),
        [source, target] => (Some(*source), *target, ""),
        [source, target, options] => (Some(*source), *target, *options),
        _ => {
            return Err(format!(
                "`{spec}` is not a volume (expected `[source:]target[:options]`)"
            ));
        }
    };
    if target.is_empty() {
        return Err(format!("`{spec}`: the target path is empty"));
    }
    if source.is_some_and(str::is_empty) {
        return Err(format!("`{spec}`: the source is empty"));
    }
    Ok(ShortVolume {
        source: source.map(str::to_owned),
        target: target.to_owned(),
        options: options
            .split(',')
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// Whether a volume source is a host path rather than a volume name
/// (compose-go: it starts with `.`, `/` or `~`).
pub fn is_path(source: &str) -> bool {
    source.starts_with(['.', '/', '~']) || is_windows_path(source)
}

/// `C:\x`, `C:/x` or `\\server\share`: a Windows host path.
pub fn is_windows_path(source: &str) -> bool {
    let b = source.as_bytes();
    source.starts_with("\\\\")
        || (b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && matches!(b[2], b'\\' | b'/'))
}

/// Parses a byte size as Docker's `RAMInBytes` does: a number with an
/// optional binary unit `b`, `k`, `m`, `g`, `t`, `p` (any case, optional
/// trailing `b`/`ib`): `512m`, `1g`, `1.5GB`, `2048`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a size (expected e.g. `512m`, `1g`, `1048576`)"))?;
    let unit = unit.trim_start().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let factor: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return Err(format!("`{s}`: unknown size unit (use b, k, m, g, t or p)")),
    };
    let bytes = number * factor as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("`{s}` is too large"));
    }
    Ok(bytes as u64)
}

/// Parses a CIDR block (`172.28.0.0/16`, `fd00::/64`) into its network
/// address and prefix length.
pub fn parse_cidr(cidr: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (ip, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| format!("`{cidr}` is not a CIDR block (e.g. `172.28.0.0/16`)"))?;
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| format!("`{cidr}`: `{ip}` is not an IP address"))?;
    let max = if ip.is_ipv6() { 128 } else { 32 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("`{cidr}`: the prefix length must be 0 to {max}"))?;
    Ok((ip, prefix))
}

/// Whether `addr` is inside the CIDR block.
pub fn cidr_contains(cidr: &str, addr: std::net::IpAddr) -> Result<bool, String> {
    use std::net::IpAddr;
    let (net, prefix) = parse_cidr(cidr)?;
    Ok(match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    })
}

/// Splits a command string into words the way Compose does (go-shellwords):
/// whitespace separates, quotes group, a backslash escapes the next character
/// (except inside single quotes). No variables, globs or command
/// substitution. Unlike Compose, which silently drops everything after an
/// unquoted `;`, `&`, `|`, `<` or `>`, this is an error.
pub fn split_command(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let (mut single, mut double, mut escaped) = (false, false, false);
    for c in s.chars() {
        if escaped {
            word.push(c);
            escaped = false;
            in_word = true;
            continue;
        }
        match c {
            '\\' if !single => escaped = true,
            '\\' => word.push(c),
            '\'' if !double => {
                single = !single;
                in_word = true;
            }
            '"' if !single => {
                double = !double;
                in_word = true;
            }
            c if c.is_whitespace() && !single && !double => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            ';' | '&' | '|' | '<' | '>' if !single && !double => {
                return Err(format!(
                    "`{s}` contains an unquoted `{c}`, a shell operator: Compose would drop \
                     everything from there on. Quote it, or run a shell: \
                     `[\"sh\", \"-c\", \"...\"]`"
                ));
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if escaped || single || double {
        return Err(format!(
            "`{s}` has an unclosed quote or a trailing backslash"
        ));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(host_ip: Option<&str>, published: Option<&str>, target: u16, protocol: &str) -> Port {
        Port {
            host_ip: host_ip.map(str::to_owned),
            published: published.map(str::to_owned),
            target,
            protocol: protocol.to_owned(),
        }
    }

    #[test]
    fn short_ports() {
        assert_eq!(parse_port("80").unwrap(), [p(None, None, 80, "tcp")]);
        assert_eq!(
            parse_port("8080:80").unwrap(),
            [p(None, Some("8080"), 80, "tcp")]
        );
        assert_eq!(
            parse_port("127.0.0.1:8080:80/udp").unwrap(),
            [p(Some("127.0.0.1"), Some("8080"), 80, "udp")]
        );
        assert_eq!(
            parse_port("127.0.0.1::80").unwrap(),
            [p(Some("127.0.0.1"), None, 80, "tcp")]
        );
        assert_eq!(
            parse_port("[::1]:8080:80").unwrap(),
            [p(Some("::1"), Some("8080"), 80, "tcp")]
        );
        assert_eq!(
            parse_port("8000-8001:9000-9001").unwrap(),
            [
                p(None, Some("8000"), 9000, "tcp"),
                p(None, Some("8001"), 9001, "tcp")
            ]
        );
        assert_eq!(
            parse_port("9090-9091:8080").unwrap(),
            [p(None, Some("9090-9091"), 8080, "tcp")]
        );
        assert_eq!(parse_port("3000-3001").unwrap().len(), 2);
        for bad in [
            "",
            "abc",
            "0",
            "70000",
            "1:2:3:4",
            "80/xtp",
            "a.b:80:80",
            "8000-8002:9000-9001",
            "81-80",
        ] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn short_volumes() {
        assert_eq!(
            parse_volume("./conf:/etc/app:ro").unwrap(),
            ShortVolume {
                source: Some("./conf".into()),
                target: "/etc/app".into(),
                options: vec!["ro".into()]
            }
        );
        let anon = parse_volume("/var/lib/data").unwrap();
        assert_eq!((anon.source, anon.target.as_str()), (None, "/var/lib/data"));
        assert_eq!(parse_volume("data:/d:ro,z").unwrap().options, ["ro", "z"]);
        assert!(parse_volume("a:b:c:d").is_err());
        assert!(parse_volume(":/x").is_err());
        assert!(is_path("./x") && is_path("/x") && is_path("~/x") && !is_path("data"));
        let win = parse_volume("C:\\data:/data:ro").unwrap();
        assert_eq!(
            (win.source.as_deref(), win.target.as_str()),
            (Some("C:\\data"), "/data")
        );
        assert!(is_path("C:\\data") && is_windows_path("D:/x") && !is_windows_path("data:/x"));
        let unc = parse_volume("\\\\server\\share:/data").unwrap();
        assert_eq!(unc.source.as_deref(), Some("\\\\server\\share"));
    }

    #[test]
    fn cidr_blocks_contain_their_addresses() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(cidr_contains("172.28.0.0/16", ip("172.28.5.9")).unwrap());
        assert!(!cidr_contains("172.28.0.0/16", ip("172.29.0.1")).unwrap());
        assert!(cidr_contains("10.0.0.0/8", ip("10.255.255.255")).unwrap());
        assert!(cidr_contains("0.0.0.0/0", ip("8.8.8.8")).unwrap());
        assert!(cidr_contains("fd00:1::/64", ip("fd00:1::10")).unwrap());
        assert!(!cidr_contains("fd00:1::/64", ip("fd00:2::10")).unwrap());
        assert!(!cidr_contains("172.28.0.0/16", ip("fd00::1")).unwrap());
        for bad in ["172.28.0.0", "172.28.0.0/33", "x/8", "fd00::/129"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("512M").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1GB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("2048").unwrap(), 2048);
        assert_eq!(parse_bytes("64kb").unwrap(), 64 << 10);
        assert_eq!(parse_bytes("1 GiB").unwrap(), 1 << 30);
        for bad in ["", "m", "12x", "1e999g", "-1m"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn command_strings_split_like_compose() {
        assert_eq!(
            split_command("bundle exec thin -p 3000").unwrap(),
            ["bundle", "exec", "thin", "-p", "3000"]
        );
        assert_eq!(
            split_command(r#"sh -c "echo 'hi there' && exit 0""#).unwrap(),
            ["sh", "-c", "echo 'hi there' && exit 0"]
        );
        assert_eq!(split_command(r"a\ b 'c\d' ").unwrap(), ["a b", "c\\d"]);
        assert_eq!(split_command(r#"x "" y"#).unwrap(), ["x", "", "y"]);
        assert!(split_command("").unwrap().is_empty());
        assert!(split_command("echo a; rm -rf /").is_err());
        assert!(split_command("echo 'open").is_err());
    }
}
