//! Go `text/template` parsing, as far as Prometheus's rule check needs it.
//!
//! Prometheus parses every label value and annotation of a rule as a Go
//! template, with `$labels`, `$externalLabels`, `$externalURL` and `$value`
//! declared in front and its own function map. [`check`] does the same
//! parse: it finds what `template.Parse` rejects — unclosed actions and
//! comments, bad tokens, undefined variables (`$label` for `$labels`),
//! undefined functions, `{{else}}`/`{{end}}` out of place, a missing
//! `{{end}}`, literals in later pipeline stages, `{{break}}` outside
//! `{{range}}` — and reports it in Go's words (`template: NAME:LINE: MSG`).
//!
//! Limits, on purpose: nothing is executed, so type errors that Go finds
//! only at execution (calling `humanize` on a map, a missing field) are not
//! found; number literals are checked for shape, not range; the function
//! list is the union over Prometheus 2.x and 3.x; custom delimiters are not
//! supported (Prometheus uses none).
//!
//! Errors are `String` on purpose: Go's own message (`template: NAME:LINE:
//! MSG`) is the diagnostic, placed by the caller at the rule's file and
//! line; there is no underlying error to keep as a cause.

use std::collections::HashSet;

/// Variables Prometheus declares before every rule template.
const PRELUDE_VARIABLES: [&str; 4] = ["$labels", "$externalLabels", "$externalURL", "$value"];

/// Go's built-in template functions.
const GO_FUNCTIONS: [&str; 19] = [
    "and", "call", "html", "index", "slice", "js", "len", "not", "or", "print", "printf",
    "println", "urlquery", "eq", "ge", "gt", "le", "lt", "ne",
];

/// Prometheus's template functions (2.x and 3.x).
const PROMETHEUS_FUNCTIONS: [&str; 29] = [
    "query",
    "first",
    "label",
    "value",
    "strvalue",
    "args",
    "reReplaceAll",
    "safeHtml",
    "match",
    "title",
    "toUpper",
    "toLower",
    "graphLink",
    "tableLink",
    "sortByLabel",
    "humanize",
    "humanize1024",
    "humanizeDuration",
    "humanizePercentage",
    "humanizeTimestamp",
    "toTime",
    "toDuration",
    "now",
    "parseDuration",
    "pathPrefix",
    "externalURL",
    "stripPort",
    "stripDomain",
    "urlQueryEscape",
];

/// Parses `text` as Prometheus parses a rule template named `name`
/// (`__alert_<AlertName>`). The error reads like Go's.
pub fn check(name: &str, text: &str) -> Result<(), String> {
    let tokens = lex(text).map_err(|(line, msg)| format!("template: {name}:{line}: {msg}"))?;
    let mut p = Parser {
        tokens,
        pos: 0,
        vars: Vec::new(),
        range_depth: 0,
        depth: 0,
    };
    p.vars.push("$".to_owned());
    p.vars
        .extend(PRELUDE_VARIABLES.iter().map(|v| (*v).to_owned()));
    p.parse()
        .map_err(|(line, msg)| format!("template: {name}:{line}: {msg}"))
}

// ---------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Text,
    LeftDelim,
    RightDelim,
    Identifier(String),
    Keyword(&'static str),
    Field(String),
    Variable(String),
    Dot,
    Bool,
    Nil,
    Number,
    Str,
    Char,
    Pipe,
    LeftParen,
    RightParen,
    Comma,
    Declare,
    Assign,
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

const KEYWORDS: [&str; 10] = [
    "block", "break", "continue", "define", "else", "end", "if", "range", "template", "with",
];

type Error = (usize, String);

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_alnum(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

fn lex(text: &str) -> Result<Vec<Token>, Error> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let count_lines = |s: &str| s.bytes().filter(|&c| c == b'\n').count();
    while i < b.len() {
        let Some(off) = text[i..].find("{{") else {
            out.push(Token {
                tok: Tok::Text,
                line,
            });
            break;
        };
        if off > 0 {
            out.push(Token {
                tok: Tok::Text,
                line,
            });
            line += count_lines(&text[i..i + off]);
        }
        i += off + 2;
        let action_line = line;
        // `{{- ` trims; `{{-3}}` is a number.
        if b.get(i) == Some(&b'-') && b.get(i + 1).is_some_and(|&c| is_space(c)) {
            i += 2;
        }
        // A comment is the whole action.
        if text[i..].starts_with("/*") {
            let Some(end) = text[i + 2..].find("*/") else {
                return Err((action_line, "unclosed comment".to_owned()));
            };
            line += count_lines(&text[i..i + 2 + end]);
            i += 2 + end + 2;
            let rest = &text[i..];
            if rest.starts_with("}}") {
                i += 2;
            } else if rest.len() > 1 && is_space(rest.as_bytes()[0]) && rest[1..].starts_with("-}}")
            {
                i += 4;
            } else {
                return Err((line, "comment ends before closing delimiter".to_owned()));
            }
            continue;
        }
        out.push(Token {
            tok: Tok::LeftDelim,
            line,
        });
        let mut paren_depth = 0usize;
        loop {
            let rest = &text[i..];
            if rest.is_empty() {
                return Err((action_line, "unclosed action".to_owned()));
            }
            if rest.starts_with("}}") {
                if paren_depth > 0 {
                    return Err((line, "unclosed left paren".to_owned()));
                }
                i += 2;
                out.push(Token {
                    tok: Tok::RightDelim,
                    line,
                });
                break;
            }
            let c = rest.as_bytes()[0];
            if is_space(c) {
                if rest[1..].starts_with("-}}") {
                    if paren_depth > 0 {
                        return Err((line, "unclosed left paren".to_owned()));
                    }
                    i += 4;
                    out.push(Token {
                        tok: Tok::RightDelim,
                        line,
                    });
                    break;
                }
                if c == b'\n' {
                    line += 1;
                }
                i += 1;
                continue;
            }
            let ch = rest.chars().next().expect("non-empty");
            let tok_line = line;
            let push = |out: &mut Vec<Token>, tok: Tok| {
                out.push(Token {
                    tok,
                    line: tok_line,
                })
            };
            match ch {
                '|' => {
                    i += 1;
                    push(&mut out, Tok::Pipe);
                }
                ',' => {
                    i += 1;
                    push(&mut out, Tok::Comma);
                }
                '(' => {
                    i += 1;
                    paren_depth += 1;
                    push(&mut out, Tok::LeftParen);
                }
                ')' => {
                    if paren_depth == 0 {
                        return Err((line, "unexpected right paren".to_owned()));
                    }
                    paren_depth -= 1;
                    i += 1;
                    push(&mut out, Tok::RightParen);
                }
                ':' => {
                    if !rest.starts_with(":=") {
                        return Err((line, "expected :=".to_owned()));
                    }
                    i += 2;
                    push(&mut out, Tok::Declare);
                }
                '=' => {
                    i += 1;
                    push(&mut out, Tok::Assign);
                }
                '"' => {
                    let mut j = 1;
                    let bytes = rest.as_bytes();
                    loop {
                        match bytes.get(j) {
                            None | Some(b'\n') => {
                                return Err((line, "unterminated quoted string".to_owned()));
                            }
                            Some(b'\\') => j += 2,
                            Some(b'"') => break,
                            Some(_) => j += 1,
                        }
                    }
                    i += j + 1;
                    push(&mut out, Tok::Str);
                }
                '`' => {
                    let Some(end) = rest[1..].find('`') else {
                        return Err((line, "unterminated raw quoted string".to_owned()));
                    };
                    line += count_lines(&rest[1..1 + end]);
                    i += end + 2;
                    push(&mut out, Tok::Str);
                }
                '\'' => {
                    let mut j = 1;
                    let bytes = rest.as_bytes();
                    loop {
                        match bytes.get(j) {
                            None | Some(b'\n') => {
                                return Err((line, "unterminated character constant".to_owned()));
                            }
                            Some(b'\\') => j += 2,
                            Some(b'\'') => break,
                            Some(_) => j += 1,
                        }
                    }
                    i += j + 1;
                    push(&mut out, Tok::Char);
                }
                '$' => {
                    let n = 1 + rest[1..]
                        .char_indices()
                        .find(|(_, c)| !is_alnum(*c))
                        .map_or(rest.len() - 1, |(k, _)| k);
                    push(&mut out, Tok::Variable(rest[..n].to_owned()));
                    i += n;
                    terminator(text, i, line)?;
                }
                '.' => {
                    if rest[1..].starts_with(|c: char| c.is_ascii_digit()) {
                        i += number(rest, line)?;
                        push(&mut out, Tok::Number);
                    } else {
                        let n = 1 + rest[1..]
                            .char_indices()
                            .find(|(_, c)| !is_alnum(*c))
                            .map_or(rest.len() - 1, |(k, _)| k);
                        if n == 1 {
                            push(&mut out, Tok::Dot);
                        } else {
                            push(&mut out, Tok::Field(rest[1..n].to_owned()));
                        }
                        i += n;
                        terminator(text, i, line)?;
                    }
                }
                '+' | '-' | '0'..='9' => {
                    i += number(rest, line)?;
                    push(&mut out, Tok::Number);
                }
                c if c == '_' || c.is_alphabetic() => {
                    let n = rest
                        .char_indices()
                        .find(|(_, c)| !is_alnum(*c))
                        .map_or(rest.len(), |(k, _)| k);
                    let word = &rest[..n];
                    let tok = if let Some(k) = KEYWORDS.iter().find(|k| **k == word) {
                        Tok::Keyword(k)
                    } else {
                        match word {
                            "true" | "false" => Tok::Bool,
                            "nil" => Tok::Nil,
                            _ => Tok::Identifier(word.to_owned()),
                        }
                    };
                    push(&mut out, tok);
                    i += n;
                    terminator(text, i, line)?;
                }
                other if other.is_ascii_graphic() => {
                    return Err((line, format!("unexpected \"{other}\" in operand")));
                }
                other => {
                    return Err((line, format!("unrecognized character in action: {other:?}")));
                }
            }
        }
    }
    out.push(Token {
        tok: Tok::Eof,
        line,
    });
    Ok(out)
}

/// After a word, Go's lexer wants a space, `.`, `,`, `|`, `:`, `=`, a paren
/// or the right delimiter.
fn terminator(text: &str, i: usize, line: usize) -> Result<(), Error> {
    let rest = &text[i..];
    match rest.chars().next() {
        None => Ok(()),
        Some(c) if is_space(c as u8) && c.is_ascii() => Ok(()),
        Some('.' | ',' | '|' | ':' | '=' | ')' | '(') => Ok(()),
        Some('}') if rest.starts_with("}}") => Ok(()),
        Some(c) => Err((line, format!("bad character {c:?}"))),
    }
}

/// Length of the number literal at the start of `s` (sign, hex/octal/binary
/// prefix, digits with `_`, fraction, exponent, imaginary `i`).
fn number(s: &str, line: usize) -> Result<usize, Error> {
    let b = s.as_bytes();
    let mut j = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        j += 1;
    }
    let mut digits: &[u8] = b"0123456789_";
    let mut exp: &[u8] = b"eE";
    if b.get(j) == Some(&b'0') && matches!(b.get(j + 1), Some(b'x' | b'X')) {
        j += 2;
        digits = b"0123456789abcdefABCDEF_";
        exp = b"pP";
    } else if b.get(j) == Some(&b'0') && matches!(b.get(j + 1), Some(b'o' | b'O' | b'b' | b'B')) {
        j += 2;
    }
    let start = j;
    while b.get(j).is_some_and(|c| digits.contains(c)) {
        j += 1;
    }
    if b.get(j) == Some(&b'.') {
        j += 1;
        while b.get(j).is_some_and(|c| digits.contains(c)) {
            j += 1;
        }
    }
    if b.get(j).is_some_and(|c| exp.contains(c)) {
        j += 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
    }
    if b.get(j) == Some(&b'i') {
        j += 1;
    }
    let bad = j == start || s[j..].starts_with(|c: char| is_alnum(c) || c == '.');
    if bad {
        let end = s[j..]
            .char_indices()
            .find(|(_, c)| !is_alnum(*c) && *c != '.')
            .map_or(s.len(), |(k, _)| j + k);
        return Err((line, format!("bad number syntax: {:?}", &s[..end])));
    }
    Ok(j)
}

// ---------------------------------------------------------------------------
// Parser

/// How an item list ended.
#[allow(clippy::enum_variant_names)] // `End::End` is Go's `{{end}}`
enum End {
    End,
    /// `{{else}}`; `Some(keyword)` for `{{else if …}}` / `{{else with …}}`.
    Else(Option<&'static str>),
    Eof,
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    vars: Vec<String>,
    range_depth: usize,
    /// Nesting of controls and parentheses, bounded so that no template
    /// can exhaust the stack.
    depth: usize,
}

/// Deepest nesting of `{{if}}`/`{{range}}`/`(…)` accepted.
const MAX_DEPTH: usize = 100;

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn err<T>(&self, msg: impl Into<String>) -> Result<T, Error> {
        Err((self.peek().line, msg.into()))
    }

    fn expect_right(&mut self, context: &str) -> Result<(), Error> {
        let t = self.next();
        if t.tok == Tok::RightDelim {
            Ok(())
        } else {
            Err((
                t.line,
                format!("unexpected {} in {context}", describe(&t.tok)),
            ))
        }
    }

    fn parse(&mut self) -> Result<(), Error> {
        loop {
            match self.peek().tok {
                Tok::Eof => return Ok(()),
                Tok::LeftDelim
                    if matches!(
                        self.tokens.get(self.pos + 1).map(|t| &t.tok),
                        Some(Tok::Keyword("define"))
                    ) =>
                {
                    self.pos += 2;
                    self.define()?;
                }
                _ => match self.item_list_step()? {
                    Some(End::End) => return self.err("unexpected {{end}}"),
                    Some(End::Else(_)) => return self.err("unexpected {{else}}"),
                    Some(End::Eof) | None => {}
                },
            }
        }
    }

    /// `{{define "name"}} … {{end}}`: a template of its own, which sees only `$`.
    fn define(&mut self) -> Result<(), Error> {
        let name = self.next();
        if name.tok != Tok::Str {
            return Err((
                name.line,
                format!("unexpected {} in define clause", describe(&name.tok)),
            ));
        }
        self.expect_right("define clause")?;
        let saved = std::mem::replace(&mut self.vars, vec!["$".to_owned()]);
        let end = self.item_list()?;
        self.vars = saved;
        match end {
            End::End => Ok(()),
            End::Else(_) => self.err("unexpected {{else}}"),
            End::Eof => self.err("unexpected EOF"),
        }
    }

    /// Parses nodes until `{{end}}`, `{{else}}` or the end of input.
    fn item_list(&mut self) -> Result<End, Error> {
        loop {
            if let Some(end) = self.item_list_step()? {
                return Ok(end);
            }
        }
    }

    /// One text or action node; `Some` when it ended the list.
    fn item_list_step(&mut self) -> Result<Option<End>, Error> {
        let t = self.next();
        match t.tok {
            Tok::Text => Ok(None),
            Tok::Eof => Ok(Some(End::Eof)),
            Tok::LeftDelim => self.action(),
            other => Err((t.line, format!("unexpected {}", describe(&other)))),
        }
    }

    fn action(&mut self) -> Result<Option<End>, Error> {
        let t = self.peek().clone();
        match t.tok {
            Tok::Keyword("end") => {
                self.next();
                self.expect_right("end")?;
                Ok(Some(End::End))
            }
            Tok::Keyword("else") => {
                self.next();
                match self.peek().tok {
                    Tok::Keyword(k @ ("if" | "with")) => {
                        self.next();
                        Ok(Some(End::Else(Some(k))))
                    }
                    _ => {
                        self.expect_right("else")?;
                        Ok(Some(End::Else(None)))
                    }
                }
            }
            Tok::Keyword(k @ ("if" | "with" | "range")) => {
                self.next();
                self.control(k)?;
                Ok(None)
            }
            Tok::Keyword("block") => {
                self.next();
                let name = self.next();
                if name.tok != Tok::Str {
                    return Err((
                        name.line,
                        format!("unexpected {} in block clause", describe(&name.tok)),
                    ));
                }
                self.pipeline("block", Tok::RightDelim)?;
                let saved = std::mem::replace(&mut self.vars, vec!["$".to_owned()]);
                let end = self.item_list()?;
                self.vars = saved;
                match end {
                    End::End => Ok(None),
                    End::Else(_) => self.err("unexpected {{else}}"),
                    End::Eof => self.err("unexpected EOF"),
                }
            }
            Tok::Keyword("template") => {
                self.next();
                let name = self.next();
                if name.tok != Tok::Str {
                    return Err((
                        name.line,
                        format!("unexpected {} in template clause", describe(&name.tok)),
                    ));
                }
                if self.peek().tok != Tok::RightDelim {
                    self.pipeline("template clause", Tok::RightDelim)?;
                } else {
                    self.next();
                }
                Ok(None)
            }
            Tok::Keyword(k @ ("break" | "continue")) => {
                self.next();
                if self.range_depth == 0 {
                    return Err((t.line, format!("{{{{{k}}}}} outside {{{{range}}}}")));
                }
                self.expect_right(k)?;
                Ok(None)
            }
            Tok::Keyword("define") => Err((t.line, "unexpected <define> in command".to_owned())),
            _ => {
                self.pipeline("command", Tok::RightDelim)?;
                Ok(None)
            }
        }
    }

    /// `{{if|with|range pipeline}} list [{{else}} list] {{end}}`. Variables
    /// declared inside are gone after it.
    fn control(&mut self, context: &'static str) -> Result<(), Error> {
        self.enter()?;
        let result = self.control_inner(context);
        self.depth -= 1;
        result
    }

    fn enter(&mut self) -> Result<(), Error> {
        if self.depth >= MAX_DEPTH {
            return self.err(format!("nested more than {MAX_DEPTH} levels deep"));
        }
        self.depth += 1;
        Ok(())
    }

    fn control_inner(&mut self, context: &'static str) -> Result<(), Error> {
        let depth = self.vars.len();
        self.pipeline(context, Tok::RightDelim)?;
        if context == "range" {
            self.range_depth += 1;
        }
        let end = self.item_list();
        if context == "range" {
            self.range_depth -= 1;
        }
        let result = match end? {
            End::End => Ok(()),
            End::Eof => self.err("unexpected EOF"),
            End::Else(Some(k)) if k == context => self.control(k),
            End::Else(Some(k)) => self.err(format!("unexpected <{k}> in input")),
            End::Else(None) => match self.item_list()? {
                End::End => Ok(()),
                End::Eof => self.err("unexpected EOF"),
                End::Else(_) => self.err("expected end; found {{else}}"),
            },
        };
        self.vars.truncate(depth);
        result
    }

    /// `[$x[, $y] := | $x =] command [| command]…` up to `end`.
    fn pipeline(&mut self, context: &str, end: Tok) -> Result<(), Error> {
        // Declarations.
        if let Tok::Variable(first) = self.peek().tok.clone() {
            let after = self.tokens.get(self.pos + 1).map(|t| t.tok.clone());
            match after {
                Some(Tok::Declare) => {
                    self.pos += 2;
                    self.vars.push(first);
                }
                Some(Tok::Assign) => {
                    self.pos += 2;
                    self.use_var(&first)?;
                }
                Some(Tok::Comma) if context == "range" => {
                    let second = self.tokens.get(self.pos + 2).map(|t| t.tok.clone());
                    let op = self.tokens.get(self.pos + 3).map(|t| t.tok.clone());
                    match (second, op) {
                        (Some(Tok::Variable(second)), Some(Tok::Declare | Tok::Assign)) => {
                            self.pos += 4;
                            self.vars.push(first);
                            self.vars.push(second);
                        }
                        _ => return self.err("range can only initialize variables"),
                    }
                }
                Some(Tok::Comma) => return self.err(format!("too many declarations in {context}")),
                _ => {}
            }
        }
        let mut stage = 0;
        loop {
            stage += 1;
            let first = self.peek().tok.clone();
            self.command(&end)?;
            if stage > 1
                && matches!(
                    first,
                    Tok::Bool | Tok::Dot | Tok::Nil | Tok::Number | Tok::Str | Tok::Char
                )
            {
                return self.err(format!("non executable command in pipeline stage {stage}"));
            }
            let t = self.next();
            if t.tok == end {
                return Ok(());
            }
            if t.tok != Tok::Pipe {
                return Err((
                    t.line,
                    format!("unexpected {} in {context}", describe(&t.tok)),
                ));
            }
        }
    }

    /// Operands up to `|` or `end`.
    fn command(&mut self, end: &Tok) -> Result<(), Error> {
        let mut operands = 0;
        loop {
            let t = self.peek().clone();
            if t.tok == *end || t.tok == Tok::Pipe {
                if operands == 0 {
                    return Err((t.line, "missing value for command".to_owned()));
                }
                return Ok(());
            }
            self.operand()?;
            operands += 1;
        }
    }

    /// A term and any `.Field` chain after it.
    fn operand(&mut self) -> Result<(), Error> {
        let t = self.next();
        match &t.tok {
            Tok::Identifier(name) => {
                if !GO_FUNCTIONS.contains(&name.as_str())
                    && !PROMETHEUS_FUNCTIONS.contains(&name.as_str())
                {
                    return Err((t.line, format!("function {name:?} not defined")));
                }
            }
            Tok::Variable(name) => self.use_var(name)?,
            Tok::LeftParen => {
                self.enter()?;
                let r = self.pipeline("parenthesized pipeline", Tok::RightParen);
                self.depth -= 1;
                r?
            }
            Tok::Field(_)
            | Tok::Dot
            | Tok::Nil
            | Tok::Bool
            | Tok::Number
            | Tok::Str
            | Tok::Char => {}
            other => return Err((t.line, format!("unexpected {} in operand", describe(other)))),
        }
        if matches!(self.peek().tok, Tok::Field(_)) {
            if matches!(
                t.tok,
                Tok::Bool | Tok::Number | Tok::Str | Tok::Char | Tok::Nil | Tok::Dot
            ) {
                return self.err("unexpected . after term");
            }
            while matches!(self.peek().tok, Tok::Field(_)) {
                self.next();
            }
        }
        Ok(())
    }

    fn use_var(&self, name: &str) -> Result<(), Error> {
        if self.vars.iter().any(|v| v == name) {
            Ok(())
        } else {
            self.err(format!("undefined variable {name:?}"))
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Text => "text".to_owned(),
        Tok::LeftDelim => "\"{{\"".to_owned(),
        Tok::RightDelim => "\"}}\"".to_owned(),
        Tok::Identifier(s) => format!("{s:?}"),
        Tok::Keyword(k) => format!("<{k}>"),
        Tok::Field(f) => format!("\".{f}\""),
        Tok::Variable(v) => format!("{v:?}"),
        Tok::Dot => "\".\"".to_owned(),
        Tok::Bool => "bool".to_owned(),
        Tok::Nil => "nil".to_owned(),
        Tok::Number => "number".to_owned(),
        Tok::Str => "string".to_owned(),
        Tok::Char => "character constant".to_owned(),
        Tok::Pipe => "\"|\"".to_owned(),
        Tok::LeftParen => "\"(\"".to_owned(),
        Tok::RightParen => "\")\"".to_owned(),
        Tok::Comma => "\",\"".to_owned(),
        Tok::Declare => "\":=\"".to_owned(),
        Tok::Assign => "\"=\"".to_owned(),
        Tok::Eof => "EOF".to_owned(),
    }
}

/// Every function name the checker accepts (for tests and docs).
pub fn known_functions() -> HashSet<&'static str> {
    GO_FUNCTIONS
        .iter()
        .chain(PROMETHEUS_FUNCTIONS.iter())
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(t: &str) {
        if let Err(e) = check("t", t) {
            panic!("{t:?}: {e}");
        }
    }

    fn bad(t: &str, want: &str) {
        match check("t", t) {
            Ok(()) => panic!("{t:?} parsed"),
            Err(e) => assert!(e.contains(want), "{t:?}: {e}"),
        }
    }

    #[test]
    fn accepts_what_prometheus_rules_use() {
        ok("plain text, no actions");
        ok("{{ $labels.instance }} down, value {{ $value }}");
        ok("{{ $value | humanizePercentage }} of {{ $labels.service }}");
        ok("stuff's happening with {{ $.labels.service }}");
        ok("{{ printf \"%.2f\" $value }}%");
        ok("{{- if gt $value 0.5 -}}high{{- else if gt $value 0.2 }}mid{{ else }}low{{ end -}}");
        ok("{{ with query \"up\" }}{{ . | first | value | humanize }}{{ end }}");
        ok("{{ range $i, $s := query \"up\" }}{{ $i }}: {{ $s.Labels.job }}{{ break }}{{ end }}");
        ok("{{ $x := 1 }}{{ $x = 2 }}{{ $x }}");
        ok("{{/* a comment */}}{{- /* trimmed */ -}}");
        ok("{{ (index $labels \"pod\") }} {{ (query \"up\").Foo }}");
        ok("{{ `raw {{ }}` }} {{ 'c' }} {{ -1.5e3 }} {{ 0x1F }} {{ true }} {{ nil | len }}");
        ok("{{ reReplaceAll \"(.*):.*\" \"$1\" $labels.instance }}");
        ok("{{ $externalLabels.cluster }} {{ $externalURL }}");
        ok("{{ define \"x\" }}{{ . }}{{ end }}{{ template \"x\" $labels }}");
        ok("{{ $labels.instance\n}}");
        ok("{{ humanizeDuration $value }}{{ toUpper \"a\" }}{{ title \"b\" }}");
    }

    #[test]
    fn rejects_what_go_rejects() {
        bad(
            "Instance {{ $label.foo }} down",
            "undefined variable \"$label\"",
        );
        bad("{{ $labels.instance }", "unexpected \"}\" in operand");
        bad("{{ $labels.instance ", "unclosed action");
        bad("{{ humanise $value }}", "function \"humanise\" not defined");
        bad("{{ if $value }}x", "unexpected EOF");
        bad("x{{ end }}", "unexpected {{end}}");
        bad("{{ else }}", "unexpected {{else}}");
        bad("{{ }}", "missing value for command");
        bad(
            "{{ $value | 3 }}",
            "non executable command in pipeline stage 2",
        );
        bad("{{ \"abc }}", "unterminated quoted string");
        bad("{{/* open }}", "unclosed comment");
        bad("{{ break }}", "{{break}} outside {{range}}");
        bad(
            "{{ if 1 }}{{ $x := 1 }}{{ end }}{{ $x }}",
            "undefined variable \"$x\"",
        );
        bad(
            "{{ define \"x\" }}{{ $labels }}{{ end }}",
            "undefined variable \"$labels\"",
        );
        bad("{{ (1 }}", "unclosed left paren");
        bad("{{ 3x }}", "bad number syntax");
        bad(
            "{{ if 1 }}{{ else }}{{ else }}{{ end }}",
            "expected end; found {{else}}",
        );
        bad("a\nb {{ $nope }}", "t:2: undefined variable");
        let deep = format!("{{{{ {}1{} }}}}", "(".repeat(5000), ")".repeat(5000));
        bad(&deep, "nested more than 100 levels deep");
        let deep = format!("{}x{}", "{{ if 1 }}".repeat(5000), "{{ end }}".repeat(5000));
        bad(&deep, "nested more than 100 levels deep");
    }

    #[test]
    fn the_function_list_has_prometheus_and_go_functions() {
        let f = known_functions();
        assert!(
            f.contains("humanizePercentage") && f.contains("printf") && !f.contains("humanise")
        );
    }
}
