//! The status page at `/`: every driven environment (current commit, last
//! good commit, health, drift, pin, suspension), each one's last plan with
//! its diff, and the history — rendered on the server with minijinja from
//! `status.html`, HTML-escaped, no JavaScript, inline CSS that reflows to a
//! phone's width. `?env=NAME` filters the history, `?before=ID` pages it.
//!
//! The page reads the store and nothing else; every value passes the
//! daemon's masker before the template escapes it for HTML (a secret
//! holding `&`, `<`, `'` or `/` is another text once escaped), and the
//! finished HTML passes it once more.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{AppState, CanRead};
use crate::source::short;
use crate::store::{HistoryQuery, ReconcileRecord};

/// History rows per page.
const HISTORY_ROWS: u32 = 30;
/// Longest diff shown per environment, in lines (the API has all of it).
const DIFF_LINES: usize = 400;

/// The page's compiled templates.
#[derive(Debug)]
pub struct Pages {
    env: minijinja::Environment<'static>,
}

impl Default for Pages {
    fn default() -> Self {
        let mut env = minijinja::Environment::new();
        // `.html`: minijinja escapes every value for HTML.
        env.add_template("status.html", include_str!("status.html"))
            .expect("the embedded template parses");
        Pages { env }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PageParams {
    env: Option<String>,
    before: Option<i64>,
}

#[derive(Debug, Serialize)]
struct Line {
    text: String,
    class: &'static str,
}

#[derive(Debug, Serialize)]
struct EnvView {
    name: String,
    current_commit: Option<String>,
    last_good: Option<String>,
    health: &'static str,
    out_of_sync: u64,
    last_outcome: Option<&'static str>,
    last_at: Option<String>,
    pinned: Option<String>,
    suspended: Option<String>,
    failed_commits: usize,
    running: bool,
    pending: bool,
    last_error: Option<String>,
    /// The services the running pass is replacing, one line each.
    replacing: Vec<String>,
    diff: Vec<Line>,
    diff_truncated: bool,
    diff_of: Option<String>,
}

#[derive(Debug, Serialize)]
struct Row {
    id: i64,
    env: String,
    kind: &'static str,
    trigger: &'static str,
    commit: String,
    outcome: &'static str,
    started: String,
    took: String,
    error: Option<String>,
}

fn when(millis: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

fn row(r: &ReconcileRecord) -> Row {
    Row {
        id: r.id,
        env: r.env.clone(),
        kind: r.kind.as_str(),
        trigger: r.trigger.as_str(),
        commit: r.commit.as_deref().map_or("-", short).to_owned(),
        outcome: r.outcome.as_str(),
        started: when(r.started_at),
        took: r
            .finished_at
            .map(|f| format!("{:.1} s", (f - r.started_at) as f64 / 1000.0))
            .unwrap_or_default(),
        error: r.error.clone(),
    }
}

/// The stored plan text, line by line with a CSS class: the summary, a
/// change line per resource, and its diff indented by four spaces.
fn diff_lines(diff: &str) -> (Vec<Line>, bool) {
    let mut lines = Vec::new();
    for l in diff.lines().take(DIFF_LINES) {
        let class = match l.strip_prefix("    ") {
            Some(d) if d.starts_with("+++") || d.starts_with("---") => "file",
            Some(d) if d.starts_with('+') => "add",
            Some(d) if d.starts_with('-') => "del",
            Some(d) if d.starts_with("@@") => "hunk",
            Some(_) => "",
            None if l.starts_with("plan for ") => "summary",
            None => "change",
        };
        lines.push(Line {
            text: l.to_owned(),
            class,
        });
    }
    (lines, diff.lines().count() > DIFF_LINES)
}

fn build(s: &AppState, p: &PageParams) -> Result<String, String> {
    let snap = s.snapshot().map_err(|e| e.to_string())?;
    let mut envs = Vec::new();
    for (name, entry) in &s.envs {
        let (Some(sum), Some(last)) = (snap.summaries.get(name), snap.last_plans.get(name)) else {
            continue;
        };
        let (diff, diff_truncated) = last
            .as_ref()
            .and_then(|r| r.diff.as_deref())
            .map(|d| diff_lines(&s.masker.mask(d)))
            .unwrap_or_default();
        let worker = entry.stats.snapshot();
        envs.push(EnvView {
            name: name.clone(),
            current_commit: sum.current_commit.as_ref().map(|c| c.short().to_owned()),
            last_good: sum.last_good.as_ref().map(|l| l.commit.short().to_owned()),
            health: sum.health.as_str(),
            out_of_sync: sum.out_of_sync,
            last_outcome: sum.last_reconcile.as_ref().map(|r| r.outcome.as_str()),
            last_at: sum.last_reconcile.as_ref().map(|r| when(r.started_at)),
            pinned: sum.control.pinned.as_ref().map(|c| c.short().to_owned()),
            suspended: sum.control.suspended.clone(),
            failed_commits: sum.failed_commits.len(),
            running: worker.running,
            pending: entry.dirty.is_pending(),
            last_error: worker.last_error,
            replacing: worker.replacing.iter().map(|r| r.text()).collect(),
            diff,
            diff_truncated,
            diff_of: last.as_ref().map(|r| {
                format!(
                    "#{} {} {} at {}",
                    r.id,
                    r.kind,
                    r.commit.as_deref().map(short).unwrap_or_default(),
                    when(r.started_at)
                )
            }),
        });
    }
    let env_filter = p.env.as_deref().filter(|e| s.envs.contains_key(*e));
    let rows = s
        .store
        .history_page(&HistoryQuery {
            env: env_filter,
            outcome: None,
            before: p.before,
            limit: HISTORY_ROWS,
        })
        .map_err(|e| e.to_string())?;
    let next_before = (rows.len() == HISTORY_ROWS as usize)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    // Masked before the template escapes them for HTML: a secret holding
    // `&`, `<`, `'` or `/` is no longer itself once escaped.
    let masked = |v: serde_json::Value| {
        let mut v = v;
        s.masker.mask_json(&mut v);
        minijinja::Value::from(minijinja::value::Serde(&v))
    };
    let envs = serde_json::to_value(&envs).map_err(|e| e.to_string())?;
    let history = serde_json::to_value(rows.iter().map(row).collect::<Vec<_>>())
        .map_err(|e| e.to_string())?;
    let ctx = minijinja::context! {
        envs => masked(envs),
        history => masked(history),
        env_filter => env_filter,
        next_before => next_before,
        paged => p.before.is_some(),
        generated => when(crate::store::millis(std::time::SystemTime::now())),
        version => env!("CARGO_PKG_VERSION"),
    };
    s.pages
        .env
        .get_template("status.html")
        .and_then(|t| t.render(ctx))
        .map_err(|e| e.to_string())
}

/// `GET /`.
pub async fn page(
    State(s): State<Arc<AppState>>,
    _: CanRead,
    Query(p): Query<PageParams>,
) -> Response {
    let st = s.clone();
    let built = tokio::task::spawn_blocking(move || {
        build(&st, &p).map(|html| st.masker.mask(&html).into_owned())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match built {
        Ok(html) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
                // No script runs on this page, whatever a value contains.
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'",
                ),
            ],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %s.masker.mask(&e), "status page");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                s.masker
                    .mask(&format!("status page unavailable: {e}\n"))
                    .into_owned(),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_escapes_values_and_classes_diff_lines() {
        let pages = Pages::default();
        let html = pages
            .env
            .get_template("status.html")
            .unwrap()
            .render(minijinja::context! {
                envs => minijinja::Value::from(minijinja::value::Serde(vec![EnvView {
                    name: "<script>dev</script>".into(),
                    current_commit: None,
                    last_good: None,
                    health: "unknown",
                    out_of_sync: 0,
                    last_outcome: None,
                    last_at: None,
                    pinned: None,
                    suspended: None,
                    failed_commits: 0,
                    running: false,
                    pending: false,
                    last_error: None,
                    replacing: vec![
                        "local: p/<i>a</i> start-first, 1 of 2 replicas done, waiting healthy"
                            .into(),
                    ],
                    diff: diff_lines(
                        "plan for dev\n~ t: service p/a  update\n    --- live\n    +++ desired\n    @@ -1 +1 @@\n    -a\n    +b\n     c\n",
                    )
                    .0,
                    diff_truncated: false,
                    diff_of: None,
                }])),
                history => minijinja::Value::from(minijinja::value::Serde(Vec::<Row>::new())),
            })
            .unwrap();
        assert!(html.contains("&lt;script&gt;dev"), "{html}");
        assert!(
            html.contains(
                "<li>Replacing local: p&#x2f;&lt;i&gt;a&lt;&#x2f;i&gt; start-first, 1 of 2 replicas done, \
                 waiting healthy</li>"
            ),
            "{html}"
        );
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains(r#"<span class="del">    -a</span>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<span class="add">    +b</span>"#),
            "{html}"
        );
        assert!(html.contains(r#"<span class="">     c</span>"#), "{html}");
        assert!(
            html.contains(r#"<span class="change">~ t: service"#),
            "{html}"
        );
        assert!(html.contains("name=\"viewport\""), "{html}");
    }
}
