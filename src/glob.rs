//! Path globs as the manifest's `paths:` use them: `*` and `?` stay inside
//! one path segment, `**` as a whole segment spans any number of segments,
//! `[abc]`, `[a-z]`, `[!x]` are character classes, `{a,b}` alternatives.
//!
//! Hand-written rather than compiled to a regex: matching a few dozen repo
//! paths against a few globs per environment must cost microseconds, and
//! building regexes cost more than the whole render.
//!
//! Errors are `String` on purpose: a parse error is the message of a
//! diagnostic, which the caller places at the file and line of the input;
//! there is no underlying error to keep as a cause.

/// A compiled glob: its brace alternatives, each split into segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    alternatives: Vec<Vec<Segment>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: zero or more whole path segments.
    AnyDepth,
    Pattern(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    AnyChar,
    AnyRun,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// At most this many brace alternatives per glob.
const MAX_ALTERNATIVES: usize = 256;

impl Glob {
    /// Compiles a glob; the error says what is wrong with it.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("empty glob".to_owned());
        }
        let mut alternatives = Vec::new();
        for expanded in expand_braces(pattern)? {
            let segments = expanded
                .split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .map(|s| {
                    if s == "**" {
                        Ok(Segment::AnyDepth)
                    } else {
                        parse_segment(s).map(Segment::Pattern)
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            alternatives.push(segments);
        }
        Ok(Glob { alternatives })
    }

    /// Whether a `/`-separated repo path matches.
    pub fn is_match(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        self.alternatives
            .iter()
            .any(|segments| match_segments(segments, &parts))
    }
}

fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('{') else {
        if pattern.contains('}') {
            return Err(format!("`{pattern}`: `}}` without `{{`"));
        }
        return Ok(vec![pattern.to_owned()]);
    };
    // Find the matching close brace and the top-level commas inside.
    let mut depth = 0;
    let mut close = None;
    let mut commas = Vec::new();
    for (i, c) in pattern[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(open + i);
                    break;
                }
            }
            ',' if depth == 1 => commas.push(open + i),
            _ => {}
        }
    }
    let close = close.ok_or_else(|| format!("`{pattern}`: `{{` without `}}`"))?;
    let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
    let mut bounds = vec![open];
    bounds.extend(&commas);
    bounds.push(close);
    let mut out = Vec::new();
    for w in bounds.windows(2) {
        let choice = &pattern[w[0] + 1..w[1]];
        for rest in expand_braces(&format!("{head}{choice}{tail}"))? {
            out.push(rest);
            if out.len() > MAX_ALTERNATIVES {
                return Err(format!(
                    "`{pattern}` expands to more than {MAX_ALTERNATIVES} alternatives"
                ));
            }
        }
    }
    Ok(out)
}

fn parse_segment(s: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                while chars.peek() == Some(&'*') {
                    chars.next(); // `**` inside a segment is a plain `*`
                }
                tokens.push(Token::AnyRun);
            }
            '?' => tokens.push(Token::AnyChar),
            '[' => {
                let negated = matches!(chars.peek(), Some('!') | Some('^'));
                if negated {
                    chars.next();
                }
                let mut ranges = Vec::new();
                let mut closed = false;
                let mut first = true;
                while let Some(c) = chars.next() {
                    if c == ']' && !first {
                        closed = true;
                        break;
                    }
                    first = false;
                    if chars.peek() == Some(&'-') {
                        let mut ahead = chars.clone();
                        ahead.next();
                        if let Some(&end) = ahead.peek()
                            && end != ']'
                        {
                            chars.next();
                            chars.next();
                            if end < c {
                                return Err(format!("`{s}`: range `{c}-{end}` runs backwards"));
                            }
                            ranges.push((c, end));
                            continue;
                        }
                    }
                    ranges.push((c, c));
                }
                if !closed {
                    return Err(format!("`{s}`: `[` without `]`"));
                }
                tokens.push(Token::Class { negated, ranges });
            }
            '\\' => tokens.push(Token::Char(chars.next().unwrap_or('\\'))),
            c => tokens.push(Token::Char(c)),
        }
    }
    Ok(tokens)
}

/// Segment-level match with `**`, by dynamic programming (no backtracking
/// blow-up whatever the pattern).
fn match_segments(pattern: &[Segment], path: &[&str]) -> bool {
    // ok[j] = pattern[..i] matches path[..j]
    let mut ok = vec![false; path.len() + 1];
    ok[0] = true;
    for seg in pattern {
        let mut next = vec![false; path.len() + 1];
        match seg {
            Segment::AnyDepth => {
                let mut any = false;
                for j in 0..=path.len() {
                    any |= ok[j];
                    next[j] = any;
                }
            }
            Segment::Pattern(tokens) => {
                for j in 0..path.len() {
                    if ok[j] && match_tokens(tokens, path[j]) {
                        next[j + 1] = true;
                    }
                }
            }
        }
        ok = next;
    }
    ok[path.len()]
}

/// Wildcard match of one segment, in linear-ish time (the classic
/// star-backtracking algorithm).
fn match_tokens(tokens: &[Token], name: &str) -> bool {
    let chars: Vec<char> = name.chars().collect();
    let (mut t, mut c) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while c < chars.len() {
        let step = match tokens.get(t) {
            Some(Token::AnyRun) => {
                star = Some((t, c));
                t += 1;
                continue;
            }
            Some(Token::AnyChar) => true,
            Some(Token::Char(x)) => *x == chars[c],
            Some(Token::Class { negated, ranges }) => {
                ranges.iter().any(|(a, b)| (*a..=*b).contains(&chars[c])) != *negated
            }
            None => false,
        };
        if step {
            t += 1;
            c += 1;
        } else if let Some((st, sc)) = star {
            t = st + 1;
            c = sc + 1;
            star = Some((st, sc + 1));
        } else {
            return false;
        }
    }
    tokens[t..].iter().all(|tok| *tok == Token::AnyRun)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(glob: &str, path: &str) -> bool {
        Glob::new(glob).unwrap().is_match(path)
    }

    #[test]
    fn star_stays_in_one_directory() {
        assert!(m("compose/*.yaml", "compose/stack.yaml"));
        assert!(!m("compose/*.yaml", "compose/prometheus/prometheus.yaml"));
        assert!(!m("compose/*.yaml", "compose/stack.yml"));
        assert!(m("*.yaml", "a.yaml"));
        assert!(!m("*.yaml", "x/a.yaml"));
    }

    #[test]
    fn double_star_spans_directories_including_none() {
        assert!(m("kubernetes/**/*.yaml", "kubernetes/a.yaml"));
        assert!(m(
            "kubernetes/**/*.yaml",
            "kubernetes/ai/engine/deploy.yaml"
        ));
        assert!(!m("kubernetes/**/*.yaml", "other/a.yaml"));
        assert!(m("**", "anything/at/all"));
        assert!(m("**/x", "x"));
    }

    #[test]
    fn classes_question_marks_and_braces() {
        assert!(m("rules/alert-?.yml", "rules/alert-1.yml"));
        assert!(m("rules/[a-c]*.yml", "rules/b.yml"));
        assert!(!m("rules/[!a-c]*.yml", "rules/b.yml"));
        assert!(m("compose/*.{yaml,yml}", "compose/x.yml"));
        assert!(m("{a,b/{c,d}}/f", "b/d/f"));
        assert!(!m("{a,b}/f", "c/f"));
    }

    #[test]
    fn bad_globs_are_errors() {
        assert!(Glob::new("a/[bc").unwrap_err().contains("without `]`"));
        assert!(Glob::new("a/{b,c").unwrap_err().contains("without `}`"));
        assert!(Glob::new("").is_err());
        assert!(
            Glob::new(&"{a,b}".repeat(10))
                .unwrap_err()
                .contains("alternatives")
        );
    }

    #[test]
    fn pathological_patterns_stay_fast() {
        let glob = Glob::new(&format!("{}b", "*a".repeat(30))).unwrap();
        assert!(!glob.is_match(&"a".repeat(200)));
        let deep = Glob::new(&"**/".repeat(20)).unwrap();
        assert!(deep.is_match(&"x/".repeat(50)));
    }
}
