//! PromQL in rule expressions: parsed with promql-parser (types checked as
//! Prometheus's parser does), then walked for experimental functions and
//! aggregations, which Prometheus rejects unless the feature flag
//! `promql-experimental-functions` is enabled.
//!
//! Errors are `String` on purpose: a parse error is the message of a
//! diagnostic, which the caller places at the file and line of the input;
//! there is no underlying error to keep as a cause.

use promql_parser::parser::{self, Expr};

/// The feature flag that enables experimental PromQL functions.
pub const EXPERIMENTAL_FUNCTIONS: &str = "promql-experimental-functions";

/// Aggregations Prometheus 3 marks experimental (not flagged as such by
/// promql-parser, which tags only functions).
const EXPERIMENTAL_AGGREGATIONS: [&str; 2] = ["limitk", "limit_ratio"];

/// Parses `expr`; with `experimental == false` an experimental function is
/// an error, as in Prometheus without the feature flag.
pub fn check(expr: &str, experimental: bool) -> Result<(), String> {
    if expr.len() > MAX_EXPR_BYTES {
        return Err(format!(
            "parse error: expression is longer than {} KiB",
            MAX_EXPR_BYTES / 1024
        ));
    }
    // The parser and the walk below recurse; no real rule nests this deep.
    if nesting(expr) > MAX_NESTING {
        return Err(format!(
            "parse error: expression nested more than {MAX_NESTING} levels deep"
        ));
    }
    // A long chain (`1+1+…`) is a deep tree even without brackets: parse,
    // walk and drop long expressions on a thread with a stack to match.
    if expr.len() <= SMALL_EXPR_BYTES {
        return parse_and_walk(expr, experimental);
    }
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("driftless-promql".to_owned())
            .stack_size(BIG_STACK)
            .spawn_scoped(scope, || parse_and_walk(expr, experimental))
            .map_err(|e| format!("cannot start the PromQL parser thread: {e}"))?
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Longest expression accepted (the parser is slower than linear on long
/// operator chains; real rules stay under a few KiB).
const MAX_EXPR_BYTES: usize = 16 * 1024;
/// Expressions up to this size are parsed on the caller's stack.
const SMALL_EXPR_BYTES: usize = 1024;
/// Stack for longer ones: about 2 KiB per level of the deepest possible tree.
const BIG_STACK: usize = 64 * 1024 * 1024;

fn parse_and_walk(expr: &str, experimental: bool) -> Result<(), String> {
    let ast = parser::parse(expr).map_err(|e| {
        let e = e.trim();
        if e.contains("parse error") {
            e.to_owned()
        } else {
            format!("parse error: {e}")
        }
    })?;
    if experimental {
        return Ok(());
    }
    match first_experimental(&ast) {
        Some(name) => Err(format!(
            "function {name:?} is not enabled (needs --enable-feature={EXPERIMENTAL_FUNCTIONS})"
        )),
        None => Ok(()),
    }
}

/// Deepest nesting of parentheses, braces and brackets accepted.
const MAX_NESTING: usize = 200;

/// Deepest bracket nesting of `expr`, outside string literals.
fn nesting(expr: &str) -> usize {
    let (mut depth, mut max, mut quote, mut escaped) = (0usize, 0usize, None, false);
    for c in expr.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '{' | '[' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' | '}' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn first_experimental(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Aggregate(a) => {
            let op = a.op.to_string().to_lowercase();
            if EXPERIMENTAL_AGGREGATIONS.contains(&op.as_str()) {
                return Some(op);
            }
            a.param
                .as_deref()
                .and_then(first_experimental)
                .or_else(|| first_experimental(&a.expr))
        }
        Expr::Unary(u) => first_experimental(&u.expr),
        Expr::Binary(b) => first_experimental(&b.lhs).or_else(|| first_experimental(&b.rhs)),
        Expr::Paren(p) => first_experimental(&p.expr),
        Expr::Subquery(s) => first_experimental(&s.expr),
        Expr::Call(c) => {
            if c.func.experimental {
                return Some(c.func.name.to_owned());
            }
            c.args.args.iter().find_map(|a| first_experimental(a))
        }
        Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::VectorSelector(_)
        | Expr::MatrixSelector(_)
        | Expr::Extension(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_type_checks() {
        assert!(check("sum by (job) (rate(http_requests_total[5m]))", false).is_ok());
        assert!(check("count_over_time(up[5m:])", false).is_ok());
        assert!(check("requests @ 1000", false).is_ok());
        assert!(check("requests offset -5m", false).is_ok());
        assert!(check("test +", false).is_err());
        assert!(check("rate(hi)", false).is_err());
        let deep = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(check(&deep, false).unwrap_err().contains("longer than"));
        let deep = format!("{}1{}", "(".repeat(1000), ")".repeat(1000));
        assert!(
            check(&deep, false)
                .unwrap_err()
                .contains("nested more than")
        );
        let chain = vec!["1"; 3_000].join("+");
        assert!(check(&chain, false).is_ok());
        assert!(check("label_replace(up, \"a\", \"((((\", \"b\", \"(.*)\")", false).is_ok());
    }

    #[test]
    fn experimental_functions_need_the_flag() {
        let e = check("sort_by_label(up, \"instance\")", false).unwrap_err();
        assert!(e.contains("\"sort_by_label\" is not enabled"), "{e}");
        assert!(check("sort_by_label(up, \"instance\")", true).is_ok());
        assert!(
            check("1 + limitk(2, up)", false)
                .unwrap_err()
                .contains("limitk")
        );
    }
}
