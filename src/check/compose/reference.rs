//! Image references checked with the grammar of the distribution spec
//! (`distribution/reference`), which is what the engine applies when it
//! pulls — so a reference the engine would refuse is refused at validate
//! time, with its line, instead of after the plan said all is well:
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [domain '/'] path-component ['/' path-component]*
//! domain           := host [':' port-number]
//! host             := domain-name | '[' IPv6address ']'
//! domain-name      := domain-component ['.' domain-component]*
//! domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
//! path-component   := /[a-z0-9]+/ [separator /[a-z0-9]+/]*
//! separator        := /[_.]|__|[-]+/
//! tag              := /[\w][\w.-]{0,127}/
//! digest           := algorithm ":" /[0-9a-fA-F]{32,}/
//! algorithm        := /[A-Za-z][A-Za-z0-9]*/ [/[+._-]/ /[A-Za-z][A-Za-z0-9]*/]*
//! ```
//!
//! plus what the engine adds when it normalises a name: the name is at most
//! 255 characters, a repository path is lowercase, a 64-digit hex name is
//! an image id, and a digest is sha256, sha384 or sha512 with its fixed
//! length (sha256: 64 hex digits).

/// Why `reference` is not a valid image reference, or `None` when it is.
pub fn problem(reference: &str) -> Option<String> {
    if reference.is_empty() {
        return Some("the image reference is empty".to_owned());
    }
    if let Some(c) = reference.chars().find(|c| c.is_whitespace()) {
        return Some(format!("it contains whitespace ({c:?})"));
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest
        && let Some(p) = digest_problem(digest)
    {
        return Some(p);
    }
    // A tag is a `:` after the last `/`; a `:` before it is a registry port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag
        && let Some(p) = tag_problem(tag)
    {
        return Some(p);
    }
    name_problem(name)
}

fn tag_problem(tag: &str) -> Option<String> {
    if tag.is_empty() {
        return Some("the tag after `:` is empty (a variable that is not set?)".to_owned());
    }
    if tag.len() > 128 {
        return Some(format!(
            "the tag is {} characters long; at most 128 are allowed",
            tag.len()
        ));
    }
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if let Some(c) = tag.chars().find(|&c| !(word(c) || c == '.' || c == '-')) {
        return Some(format!(
            "the tag `{tag}` contains `{c}`; a tag has letters, digits, `_`, `.` and `-`"
        ));
    }
    if !tag.starts_with(word) {
        return Some(format!(
            "the tag `{tag}` must start with a letter, a digit or `_`"
        ));
    }
    None
}

fn digest_problem(digest: &str) -> Option<String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Some(format!(
            "the digest `{digest}` has no `:`; write `@sha256:<64 hex digits>`"
        ));
    };
    let component_ok = |c: &str| {
        c.starts_with(|c: char| c.is_ascii_alphabetic())
            && c.chars().all(|c| c.is_ascii_alphanumeric())
    };
    if !algorithm.split(['+', '.', '_', '-']).all(component_ok) {
        return Some(format!(
            "the digest algorithm `{algorithm}` is not valid; write `@sha256:<64 hex digits>`"
        ));
    }
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Some(format!(
            "the digest `{digest}` must end in hexadecimal digits after `{algorithm}:`"
        ));
    }
    let want = match algorithm {
        "sha256" => Some(64),
        "sha384" => Some(96),
        "sha512" => Some(128),
        _ => None,
    };
    match want {
        Some(n) if hex.len() != n => Some(format!(
            "a `{algorithm}` digest has {n} hex digits, not {}",
            hex.len()
        )),
        // The grammar allows any algorithm; the engine knows these three.
        None => Some(format!(
            "the digest algorithm `{algorithm}` is not supported; use sha256, sha384 or sha512"
        )),
        _ => None,
    }
}

fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the repository name is empty".to_owned());
    }
    if name.len() > 255 {
        return Some(format!(
            "the repository name is {} characters long; at most 255 are allowed",
            name.len()
        ));
    }
    let components: Vec<&str> = name.split('/').collect();
    // The first component is a registry when more follow and it reads as
    // one (the engine's rule: it has a `.` or `:`, is `localhost`, or has
    // capitals); otherwise it is part of the path, as `library/redis`.
    let path = match components.split_first() {
        Some((first, rest))
            if !rest.is_empty()
                && (first.contains(['.', ':', '['])
                    || *first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase())) =>
        {
            if let Some(p) = domain_problem(first) {
                return Some(p);
            }
            rest
        }
        _ => &components[..],
    };
    for component in path {
        if let Some(p) = path_component_problem(component) {
            return Some(p);
        }
    }
    if path.len() == 1 && path[0].len() == 64 && path[0].chars().all(|c| c.is_ascii_hexdigit()) {
        return Some(
            "a 64-digit hexadecimal name is an image id, not a repository name".to_owned(),
        );
    }
    None
}

fn domain_problem(domain: &str) -> Option<String> {
    let (host, port) = if let Some(inner) = domain.strip_prefix('[') {
        let Some((v6, after)) = inner.split_once(']') else {
            return Some(format!("the registry `{domain}` has `[` without `]`"));
        };
        if v6.is_empty() || !v6.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Some(format!("the registry `{domain}` is not an IPv6 address"));
        }
        match after.strip_prefix(':') {
            Some(port) => (None, Some(port)),
            None if after.is_empty() => (None, None),
            None => return Some(format!("the registry `{domain}` is not valid")),
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(domain), None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()))
    {
        return Some(format!("the registry port in `{domain}` must be a number"));
    }
    let component_ok = |c: &str| {
        !c.is_empty()
            && !c.starts_with('-')
            && !c.ends_with('-')
            && c.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if let Some(host) = host
        && !host.split('.').all(component_ok)
    {
        return Some(format!(
            "the registry host `{host}` is not a valid host name"
        ));
    }
    None
}

fn path_component_problem(component: &str) -> Option<String> {
    if component.is_empty() {
        return Some(
            "the repository name has an empty path component (`//` or a `/` at an end)".to_owned(),
        );
    }
    if component.chars().any(|c| c.is_ascii_uppercase()) {
        return Some(format!(
            "the repository name must be lowercase: `{component}` (only a registry host may have capitals)"
        ));
    }
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if let Some(c) = component
        .chars()
        .find(|&c| !(alnum(c) || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "the repository name contains `{c}` in `{component}`; it has lowercase letters, digits and the separators `.`, `_`, `__` and `-`"
        ));
    }
    if !component.starts_with(alnum) || !component.ends_with(alnum) {
        return Some(format!(
            "`{component}` must start and end with a lowercase letter or digit"
        ));
    }
    // Separators: one `.`, one `_`, `__`, or any run of `-`.
    let bytes = component.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i] as char) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i] as char) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.chars().all(|c| c == '-');
        if !ok {
            return Some(format!(
                "`{sep}` in `{component}` is not a separator; use one `.`, `_`, `__` or dashes"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::problem;

    #[test]
    fn the_distribution_specs_valid_examples_are_accepted() {
        let hex = "a".repeat(64);
        let valid = [
            "test_com".to_owned(),
            "test.com:tag".to_owned(),
            "test.com:5000".to_owned(),
            "test.com/repo:tag".to_owned(),
            "test:5000/repo".to_owned(),
            "test:5000/repo:tag".to_owned(),
            format!("test:5000/repo@sha256:{}", "ffffffffff".repeat(6) + "ffff"),
            format!("test:5000/repo:tag@sha256:{hex}"),
            "lowercase:Uppercase".to_owned(),
            "sub-dom1.foo.com/bar/baz/quux".to_owned(),
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag".to_owned(),
            "b.gcr.io/test.example.com/my-app:test.example.com".to_owned(),
            "xn--n3h.com/myimage:xn--n3h.com".to_owned(),
            format!(
                "xn--7o8h.com/myimage:xn--7o8h.com@sha512:{}",
                "f".repeat(128)
            ),
            "foo_bar.com:8080".to_owned(),
            "foo/foo_bar.com:8080".to_owned(),
            "192.168.1.1".to_owned(),
            "192.168.1.1:tag".to_owned(),
            "192.168.1.1:5000".to_owned(),
            "192.168.1.1/repo".to_owned(),
            "192.168.1.1:5000/repo:5050".to_owned(),
            "[2001:db8::1]/repo".to_owned(),
            "[2001:db8::1]:5000/repo:tag".to_owned(),
            "localhost/repo".to_owned(),
            "localhost:5000/a--b/c__d/e.f:v1.0-rc_1".to_owned(),
            "Docker.io/library/redis".to_owned(),
            "a/".to_owned() + &"a".repeat(250),
            "redis".to_owned(),
            "postgres:16-alpine".to_owned(),
            "ghcr.io/owner/image:latest".to_owned(),
        ];
        for r in &valid {
            assert_eq!(problem(r), None, "{r}");
        }
    }

    #[test]
    fn what_the_engine_would_refuse_is_refused_with_the_reason() {
        let table = [
            ("apache/airflow:|version|", "contains `|`"),
            ("elasticsearch:", "empty (a variable that is not set?)"),
            ("UPPER/Case:1", "must be lowercase: `Case`"),
            ("Uppercase:tag", "must be lowercase"),
            ("", "empty"),
            (":justtag", "repository name is empty"),
            ("@sha256:ffff", "64 hex digits, not 4"),
            (
                "repo@sha256:ffffffffffffffffffffffffffffffffff",
                "64 hex digits",
            ),
            (
                "validname@invaliddigest:ffffffffffffffffffffffffffffffff",
                "",
            ),
            ("aa/asdf$$^/aa", "contains `$`"),
            ("a:tag with space", "whitespace"),
            ("a:-tag", "must start with"),
            ("-foo/bar", "must start and end"),
            ("foo/bar-", "must start and end"),
            ("foo/a..b", "not a separator"),
            ("foo/a___b", "not a separator"),
            ("foo//bar", "empty path component"),
            ("a-.com/repo", "not a valid host name"),
            ("localhost:http/repo", "port"),
            ("[fe80::1%eth0]:5000/repo", "IPv6"),
            ("a/a:", "empty"),
        ];
        for (r, want) in table {
            let p = problem(r).unwrap_or_else(|| panic!("{r} accepted"));
            assert!(p.contains(want), "{r}: {p}");
        }
        let long_tag = format!("a:{}", "t".repeat(129));
        assert!(problem(&long_tag).unwrap().contains("at most 128"));
        let long_name = "a/".repeat(128) + "a";
        assert!(problem(&long_name).unwrap().contains("at most 255"));
        let id = "f".repeat(64);
        assert!(problem(&id).unwrap().contains("image id"));
    }
}
