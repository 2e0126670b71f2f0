//! Compose's `.env` / `env_file` syntax, as compose-go's `dotenv` parser
//! reads it: `KEY=value` or `KEY: value`, optional `export `, `#` comment
//! lines, ` #` inline comments after unquoted values, single quotes taken
//! literally, double quotes with escapes (`\n`, `\t`, `\"`, `\\`, `\$`) and
//! both spanning lines, a bare `KEY` inheriting the value from the lookup,
//! and `${VAR}` interpolation in unquoted and double-quoted values (lookup
//! first, then keys defined earlier in the file).

use super::interpolate::{self, Substitution};

/// A parse error at a 1-based line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub line: u32,
    pub message: String,
}

/// What a parse produced: entries in file order (a later duplicate wins when
/// collected into a map) and variables used unset.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub entries: Vec<(String, String)>,
    pub unset: Vec<String>,
}

impl Parsed {
    fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `text`; `lookup` gives values for bare keys and interpolation.
pub fn parse(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Parsed, Error> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Parsed::default();
    let mut rest = text;
    loop {
        rest = skip_blank_and_comments(rest);
        if rest.is_empty() {
            return Ok(out);
        }
        let line = line_of(text, rest);
        let err = |message: String| Error { line, message };

        let mut stmt = rest;
        if let Some(after) = stmt.strip_prefix("export")
            && after.starts_with(is_space)
        {
            stmt = after.trim_start_matches(is_space);
        }
        // The key runs to `=`, `:` or the end of the line; spaces inside are
        // skipped here and rejected below, as compose-go does.
        let mut end = None;
        for (i, c) in stmt.char_indices() {
            match c {
                '=' | ':' | '\n' => {
                    end = Some((i, c));
                    break;
                }
                c if is_space(c) || is_key_char(c) => {}
                c => {
                    let first_line = stmt.lines().next().unwrap_or_default();
                    return Err(err(format!(
                        "unexpected character `{c}` in variable name `{first_line}`"
                    )));
                }
            }
        }
        let (key, terminator, after) = match end {
            Some((i, c)) => (&stmt[..i], Some(c), &stmt[i + c.len_utf8()..]),
            None => (stmt, None, ""),
        };
        let key = key.trim_end();
        if key.contains(|c: char| c.is_whitespace()) {
            return Err(err(format!("variable name `{key}` contains a space")));
        }
        if key.is_empty() {
            return Err(err(
                "a line starts with `=` or `:`: missing variable name".into()
            ));
        }

        if matches!(terminator, Some('\n') | None) {
            // `KEY` alone: inherited from the lookup, skipped when unset.
            if let Some(value) = lookup(key) {
                out.entries.push((key.to_owned(), value));
            }
            rest = after;
            continue;
        }

        let value_start = after.trim_start_matches(is_space);
        let (value, remainder) = match value_start.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let Some((raw, remainder)) = quoted(value_start, q) else {
                    let first_line = value_start.lines().next().unwrap_or_default();
                    return Err(err(format!("unterminated quoted value {first_line}")));
                };
                let value = if q == '"' {
                    expand(&unescape(&raw), lookup, &mut out).map_err(&err)?
                } else {
                    raw
                };
                (value, remainder)
            }
            _ => {
                let (line_text, remainder) =
                    value_start.split_once('\n').unwrap_or((value_start, ""));
                let line_text = line_text.split(" #").next().unwrap_or_default();
                let value = expand(line_text.trim_end(), lookup, &mut out).map_err(&err)?;
                (value, remainder)
            }
        };
        out.entries.push((key.to_owned(), value));
        rest = remainder;
    }
}

/// Interpolates a value: the lookup first, then keys read so far.
fn expand(
    value: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut Parsed,
) -> Result<String, String> {
    if !value.contains('$') {
        return Ok(value.to_owned());
    }
    let seen = &*out;
    let resolve = |k: &str| lookup(k).or_else(|| seen.get(k).map(str::to_owned));
    let mut subst = Substitution::new(&resolve);
    let result = subst.substitute(value);
    let unset = std::mem::take(&mut subst.unset);
    drop(subst);
    for name in unset {
        if !out.unset.contains(&name) {
            out.unset.push(name);
        }
    }
    result.map_err(|e| match e {
        interpolate::Error::Invalid(reason) => {
            format!("invalid interpolation in `{value}`: {reason}")
        }
        interpolate::Error::Required { name, message } => {
            format!("required variable {name} is missing a value: {message}")
        }
    })
}

/// The text between the quote starting `s` and its closing quote, with
/// escaped quotes unescaped (other escapes keep their backslash), and what
/// follows the closing quote.
fn quoted(s: &str, quote: char) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        if escaped {
            escaped = false;
            if c != quote {
                value.push('\\');
            }
            value.push(c);
            continue;
        }
        match c {
            '\\' => escaped = true,
            c if c == quote => return Some((value, &s[i + c.len_utf8()..])),
            c => value.push(c),
        }
    }
    None
}

/// Double-quoted escapes: `\a \b \f \n \r \t \v \\ \"`, octal `\0NNN`, and
/// `\$` (a literal `$`, kept out of interpolation as `$$`).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek().copied() {
            Some(e @ ('a' | 'b' | 'f' | 'n' | 'r' | 't' | 'v' | '\\' | '"' | '$')) => {
                chars.next();
                out.push_str(match e {
                    'a' => "\u{7}",
                    'b' => "\u{8}",
                    'f' => "\u{c}",
                    'n' => "\n",
                    'r' => "\r",
                    't' => "\t",
                    'v' => "\u{b}",
                    '\\' => "\\",
                    '"' => "\"",
                    _ => "$$",
                });
            }
            Some('0') => {
                chars.next();
                let mut digits = String::new();
                while digits.len() < 3 && chars.peek().is_some_and(|d| ('0'..='7').contains(d)) {
                    digits.extend(chars.next());
                }
                let code = u32::from_str_radix(&digits, 8).unwrap_or(0);
                out.extend(char::from_u32(code));
            }
            _ => out.push('\\'),
        }
    }
    out
}

fn skip_blank_and_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if s.starts_with('#') {
            s = s.split_once('\n').map_or("", |(_, rest)| rest);
        } else {
            return s;
        }
    }
}

/// 1-based line of `rest` (a suffix of `text`).
fn line_of(text: &str, rest: &str) -> u32 {
    let consumed = &text[..text.len() - rest.len()];
    consumed.matches('\n').count() as u32 + 1
}

fn is_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{85}' | '\u{a0}'
    )
}

fn is_key_char(c: char) -> bool {
    matches!(c, '_' | '.' | '-' | '[' | ']') || c.is_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<String> {
        None
    }

    fn parse_ok(text: &str) -> Vec<(String, String)> {
        parse(text, &none).unwrap().entries
    }

    fn map(text: &str) -> std::collections::BTreeMap<String, String> {
        parse_ok(text).into_iter().collect()
    }

    /// Fixtures of compose-go's dotenv tests (see the shared corpus).
    fn corpus(name: &str) -> String {
        match name {
            "plain.env" => "OPTION_A=1\nOPTION_B=2\nOPTION_C= 3\nOPTION_D =4\nOPTION_E = 5\n456 = ABC\nOPTION_F = \nOPTION_G=\nOPTION_H = my string # Inline comment\n",
            "utf8-bom.env" => "\u{feff}OPTION_A=1\nOPTION_B=2\nOPTION_C= 3\nOPTION_D =4\nOPTION_E = 5\n456 = ABC\nOPTION_F =\nOPTION_G=\nOPTION_H = my string # Inline comment\n",
            "quoted.env" => "OPTION_A='1'\nOPTION_B='2'\nOPTION_C=''\nOPTION_D='\\n'\nOPTION_E=\"1\"\nOPTION_F=\"2\"\nOPTION_G=\"\"\nOPTION_H=\"\\n\"\nOPTION_I = \"echo 'asd'\" # Inline comment\nOPTION_J = 'first line\nsecond line\nthird line\nand so on'\nOPTION_K='Let\\'s go!'\nOPTION_Z = \"last value\"\n",
            "exported.env" => "export OPTION_A=2\nexport OPTION_B='\\n'\n",
            "equals.env" => "export OPTION_A='postgres://localhost:5432/database?sslmode=disable'\n\n",
            "custom.format" => "FOO:BAR\nZOT:QIX",
            "special.env" => "VAR.WITH.DOTS=dots\nVAR_WITH_UNDERSCORES=underscores\nVAR-WITH-DASHES=dashes\n",
            "unquoted.env" => "OPTION_A = \"some quoted phrase\"\nOPTION_B=first one with an unquoted phrase\nOPTION_C = then another one with an unquoted phrase\nOPTION_D = then another one with an unquoted phrase special \u{e8} char\nOPTION_E = \"then another one quoted phrase\"\n",
            "substitutions.env" => "OPTION_A=1\nOPTION_B=${OPTION_A}\nOPTION_C=$OPTION_B\nOPTION_D=${OPTION_A}_${OPTION_B}\nOPTION_E=${OPTION_NOT_DEFINED}\n",
            "substitutions-default.env" => "OPTION_A=${OPTION_A:-1}\nOPTION_B=${OPTION_A}\nOPTION_C=$OPTION_B\nOPTION_D=${OPTION_A}_${OPTION_B}\nOPTION_E=${OPTION_NOT_DEFINED}\n",
            "inherited-multi-var.env" => "foo=bar\nVAR_TO_BE_LOADED_FROM_OS_ENV\nbar=baz\n",
            "inherited-not-found.env" => "VARIABLE_NOT_FOUND\n",
            "invalid1.env" => "# some comments\nfoo=\"\n  a\n  multine\n  value\n\"\nINVALID LINE\nzot=qix",
            _ => unreachable!("{name}"),
        }
        .to_owned()
    }

    #[test]
    fn plain_values_and_spacing() {
        let m = map(&corpus("plain.env"));
        assert_eq!(m["OPTION_A"], "1");
        assert_eq!(m["OPTION_C"], "3");
        assert_eq!(m["OPTION_E"], "5");
        assert_eq!(m["456"], "ABC");
        assert_eq!(m["OPTION_F"], "");
        assert_eq!(m["OPTION_G"], "");
        assert_eq!(m["OPTION_H"], "my string");
        assert_eq!(map(&corpus("utf8-bom.env")), m);
    }

    #[test]
    fn quotes_and_escapes() {
        let m = map(&corpus("quoted.env"));
        assert_eq!(m["OPTION_A"], "1");
        assert_eq!(m["OPTION_C"], "");
        assert_eq!(m["OPTION_D"], "\\n");
        assert_eq!(m["OPTION_H"], "\n");
        assert_eq!(m["OPTION_I"], "echo 'asd'");
        assert_eq!(
            m["OPTION_J"],
            "first line\nsecond line\nthird line\nand so on"
        );
        assert_eq!(m["OPTION_K"], "Let's go!");
        assert_eq!(m["OPTION_Z"], "last value");
        let m = map("A=\"tab\\there \\\"q\\\" \\$HOME\"\nB='$HOME'\n");
        assert_eq!(m["A"], "tab\there \"q\" $HOME");
        assert_eq!(m["B"], "$HOME");
    }

    #[test]
    fn export_yaml_style_and_special_names() {
        assert_eq!(map(&corpus("exported.env"))["OPTION_A"], "2");
        assert_eq!(
            map(&corpus("equals.env"))["OPTION_A"],
            "postgres://localhost:5432/database?sslmode=disable"
        );
        let m = map(&corpus("custom.format"));
        assert_eq!((m["FOO"].as_str(), m["ZOT"].as_str()), ("BAR", "QIX"));
        let m = map(&corpus("special.env"));
        assert_eq!(m["VAR.WITH.DOTS"], "dots");
        assert_eq!(m["VAR-WITH-DASHES"], "dashes");
        let m = map(&corpus("unquoted.env"));
        assert_eq!(m["OPTION_B"], "first one with an unquoted phrase");
        assert_eq!(
            m["OPTION_D"],
            "then another one with an unquoted phrase special \u{e8} char"
        );
    }

    #[test]
    fn substitutions_use_lookup_then_earlier_keys() {
        let parsed = parse(&corpus("substitutions.env"), &none).unwrap();
        let m: std::collections::BTreeMap<_, _> = parsed.entries.into_iter().collect();
        assert_eq!(m["OPTION_B"], "1");
        assert_eq!(m["OPTION_C"], "1");
        assert_eq!(m["OPTION_D"], "1_1");
        assert_eq!(m["OPTION_E"], "");
        assert_eq!(parsed.unset, ["OPTION_NOT_DEFINED"]);
        let lookup = |k: &str| (k == "OPTION_A").then(|| "env".to_owned());
        let m: std::collections::BTreeMap<_, _> =
            parse(&corpus("substitutions-default.env"), &lookup)
                .unwrap()
                .entries
                .into_iter()
                .collect();
        assert_eq!(m["OPTION_A"], "env");
        assert_eq!(m["OPTION_D"], "env_env");
    }

    #[test]
    fn bare_keys_inherit_from_the_lookup() {
        let lookup = |k: &str| (k == "VAR_TO_BE_LOADED_FROM_OS_ENV").then(|| "os".to_owned());
        let m: std::collections::BTreeMap<_, _> =
            parse(&corpus("inherited-multi-var.env"), &lookup)
                .unwrap()
                .entries
                .into_iter()
                .collect();
        assert_eq!(m.len(), 3);
        assert_eq!(m["VAR_TO_BE_LOADED_FROM_OS_ENV"], "os");
        assert!(parse_ok(&corpus("inherited-not-found.env")).is_empty());
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse(&corpus("invalid1.env"), &none).unwrap_err();
        assert_eq!(e.line, 7, "{e:?}");
        assert!(e.message.contains("space"), "{e:?}");
        let e = parse("A=1\nB=\"open\n", &none).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("unterminated"));
        let e = parse("A=1\n\nB!=2\n", &none).unwrap_err();
        assert_eq!(e.line, 3);
        let e = parse("A=${NOPE:?needed}\n", &none).unwrap_err();
        assert!(e.message.contains("needed"), "{e:?}");
    }

    #[test]
    fn comments_and_inline_comments() {
        let m = map("# c\nA=x#notcomment\nB=y # comment\n  # indented comment\nC='z' # c\n");
        assert_eq!(m["A"], "x#notcomment");
        assert_eq!(m["B"], "y");
        assert_eq!(m["C"], "z");
        assert_eq!(m.len(), 3);
    }
}
