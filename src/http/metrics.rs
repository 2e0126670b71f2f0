//! `/metrics`: the daemon's metrics in the Prometheus text exposition
//! format (version 0.0.4).
//!
//! Two kinds of series:
//! - counters and histograms the daemon counts as it works ([`Metrics`]:
//!   reconciles by outcome, phase durations, rollbacks, webhook requests,
//!   git fetch errors, registry checks of followed images by outcome),
//!   kept in memory since the process started;
//! - gauges read from the state store at scrape time (resources out of
//!   sync, the last good commit, backup last-success times), so they say
//!   what the store says even right after a restart.
//!
//! Hand-written rather than `prometheus-client`: half the families are
//! computed from the store per scrape, which that crate's registered-metric
//! model does not fit (a label set like `commit` must disappear when the
//! commit changes), and the format is a few lines of text. Label values are
//! escaped as the format requires and pass the daemon's [`Masker`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use crate::secrets::Masker;
use crate::store::{Outcome, Store, Timings};

/// Histogram buckets for phase durations, in seconds: from a render of a
/// small repo to a slow rollout.
pub const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The phases a reconcile is timed in.
pub const PHASES: &[&str] = &["fetch", "render", "plan", "apply", "verify"];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Non-cumulative counts per bucket of [`BUCKETS`], then +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len() + 1];
        }
        let i = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// (env, outcome) → count.
    reconciles: BTreeMap<(String, String), u64>,
    /// (env, phase) → histogram.
    durations: BTreeMap<(String, String), Histogram>,
    /// env → rollbacks run ([`crate::reconcile::decide::rolled_back`]).
    rollbacks: BTreeMap<String, u64>,
    /// outcome → webhook requests.
    webhook: BTreeMap<String, u64>,
    fetch_errors: u64,
    /// (env, outcome) → registry checks of followed images.
    image_checks: BTreeMap<(String, String), u64>,
    /// (env, backup job) → whether the job is overdue (no success within
    /// twice its interval), as the environment's backup scheduler judged.
    backup_overdue: BTreeMap<(String, String), bool>,
}

/// What the daemon counts while it runs. Shared by the workers and the
/// HTTP handlers; every update is a short critical section.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Counters start at zero for every driven environment, so a
    /// `rate()` over them has a first sample.
    pub fn new<'a>(envs: impl IntoIterator<Item = &'a String>) -> Metrics {
        let m = Metrics::default();
        {
            let mut i = m.lock();
            for env in envs {
                i.rollbacks.insert(env.clone(), 0);
            }
        }
        m
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A reconcile of `env` ended with `outcome`; `timings` are its phases.
    pub fn reconciled(&self, env: &str, outcome: Outcome, timings: &Timings) {
        let mut i = self.lock();
        *i.reconciles
            .entry((env.to_owned(), outcome.as_str().to_owned()))
            .or_default() += 1;
        for (phase, ms) in [
            ("render", timings.load_ms),
            ("plan", timings.plan_ms),
            ("apply", timings.apply_ms),
            ("verify", timings.verify_ms),
        ] {
            if let Some(ms) = ms {
                i.durations
                    .entry((env.to_owned(), phase.to_owned()))
                    .or_default()
                    .observe(ms as f64 / 1000.0);
            }
        }
    }

    /// A fetch of the repo for `env` took `took` (failed or not).
    pub fn fetched(&self, env: &str, took: Duration, ok: bool) {
        let mut i = self.lock();
        i.durations
            .entry((env.to_owned(), "fetch".to_owned()))
            .or_default()
            .observe(took.as_secs_f64());
        if !ok {
            i.fetch_errors += 1;
        }
    }

    /// The image poller of `env` checked a followed image: `unchanged`,
    /// `new` (a digest not seen before), `rate_limited` or `error`.
    pub fn image_check(&self, env: &str, outcome: &str) {
        *self
            .lock()
            .image_checks
            .entry((env.to_owned(), outcome.to_owned()))
            .or_default() += 1;
    }

    /// A rollback of `env` ran.
    pub fn rollback(&self, env: &str) {
        *self.lock().rollbacks.entry(env.to_owned()).or_default() += 1;
    }

    /// The backup scheduler of `env` judged `job` overdue or not.
    pub fn backup_overdue(&self, env: &str, job: &str, overdue: bool) {
        self.lock()
            .backup_overdue
            .insert((env.to_owned(), job.to_owned()), overdue);
    }

    /// A webhook request ended with `outcome` (`accepted`, `ignored`,
    /// `unauthorized`, `rate_limited`, …).
    pub fn webhook(&self, outcome: &str) {
        *self.lock().webhook.entry(outcome.to_owned()).or_default() += 1;
    }

    /// The exposition: counters from memory, gauges from `store` for
    /// `envs`. Store errors leave their families empty (the scrape still
    /// answers) and are reported as `driftless_store_errors`.
    pub fn render(&self, state: &super::AppState) -> String {
        let envs: Vec<String> = state.envs.keys().cloned().collect();
        let snapshot = state.snapshot();
        self.render_with(&state.store, &envs, snapshot.as_deref().ok(), &state.masker)
    }

    /// The exposition for `envs`, their gauges from `snapshot` (`None`: the
    /// store could not be read).
    pub fn render_with(
        &self,
        store: &Store,
        envs: &[String],
        snapshot: Option<&super::Snapshot>,
        masker: &Masker,
    ) -> String {
        let mut out = Exposition::default();
        {
            let i = self.lock();
            out.family(
                "driftless_reconciles_total",
                "counter",
                "Reconciles that ended, by environment and outcome.",
            );
            for ((env, outcome), n) in &i.reconciles {
                out.sample(
                    "driftless_reconciles_total",
                    &[("env", env), ("outcome", outcome)],
                    *n as f64,
                );
            }
            out.family(
                "driftless_reconcile_duration_seconds",
                "histogram",
                "Time spent in each phase of a reconcile (fetch, render, plan, apply, verify).",
            );
            for ((env, phase), h) in &i.durations {
                let labels = [("env", env.as_str()), ("phase", phase.as_str())];
                let mut cumulative = 0;
                for (b, n) in BUCKETS.iter().zip(&h.counts) {
                    cumulative += n;
                    out.sample_le(
                        "driftless_reconcile_duration_seconds_bucket",
                        &labels,
                        &format_float(*b),
                        cumulative as f64,
                    );
                }
                out.sample_le(
                    "driftless_reconcile_duration_seconds_bucket",
                    &labels,
                    "+Inf",
                    h.count as f64,
                );
                out.sample("driftless_reconcile_duration_seconds_sum", &labels, h.sum);
                out.sample(
                    "driftless_reconcile_duration_seconds_count",
                    &labels,
                    h.count as f64,
                );
            }
            out.family(
                "driftless_rollbacks_total",
                "counter",
                "Rollbacks to the last good commit started, by environment.",
            );
            for (env, n) in &i.rollbacks {
                out.sample("driftless_rollbacks_total", &[("env", env)], *n as f64);
            }
            out.family(
                "driftless_image_checks_total",
                "counter",
                "Registry checks of followed images, by environment and outcome (unchanged, new, rate_limited, error).",
            );
            for ((env, outcome), n) in &i.image_checks {
                out.sample(
                    "driftless_image_checks_total",
                    &[("env", env), ("outcome", outcome)],
                    *n as f64,
                );
            }
            out.family(
                "driftless_webhook_requests_total",
                "counter",
                "GitHub webhook requests, by outcome.",
            );
            for (outcome, n) in &i.webhook {
                out.sample(
                    "driftless_webhook_requests_total",
                    &[("outcome", outcome)],
                    *n as f64,
                );
            }
            out.family(
                "driftless_git_fetch_errors_total",
                "counter",
                "Fetches of the desired-state repo that failed.",
            );
            out.sample(
                "driftless_git_fetch_errors_total",
                &[],
                i.fetch_errors as f64,
            );
        }

        let mut store_errors = 0u32;
        let mut out_of_sync = Vec::new();
        let mut last_good = Vec::new();
        match snapshot {
            Some(snap) => {
                for (env, s) in &snap.summaries {
                    out_of_sync.push((env, s.out_of_sync));
                    if let Some(lg) = &s.last_good {
                        last_good.push((env, lg.commit.clone()));
                    }
                }
            }
            None => store_errors += 1,
        }
        out.family(
            "driftless_resources_out_of_sync",
            "gauge",
            "Resources whose last plan had a change that is not known to be applied (0 after a healthy reconcile).",
        );
        for (env, n) in out_of_sync {
            out.sample("driftless_resources_out_of_sync", &[("env", env)], n as f64);
        }
        out.family(
            "driftless_last_good_commit_info",
            "gauge",
            "The last commit each environment ran healthy (always 1).",
        );
        for (env, commit) in last_good {
            out.sample(
                "driftless_last_good_commit_info",
                &[("env", env), ("commit", &commit)],
                1.0,
            );
        }
        // Backup jobs, labelled `backup_job`: `job` is Prometheus's target label.
        type Read = fn(&crate::store::BackupJobStats) -> Option<f64>;
        let backups: [(&str, &str, Read); 3] = [
            (
                "driftless_backup_last_success_timestamp_seconds",
                "Unix time the last successful run of each backup job finished.",
                |s| s.last_success_at.map(|ms| ms as f64 / 1000.0),
            ),
            (
                "driftless_backup_last_success_duration_seconds",
                "How long the last successful run of each backup job took (dump, write, verify).",
                |s| s.last_success_duration_ms.map(|ms| ms as f64 / 1000.0),
            ),
            (
                "driftless_backup_last_success_size_bytes",
                "Stored size of the last successful backup of each job (compressed, encrypted).",
                |s| s.last_success_bytes.map(|b| b as f64),
            ),
        ];
        match store.backup_job_stats() {
            Ok(stats) => {
                let stats: Vec<_> = stats.iter().filter(|s| envs.contains(&s.env)).collect();
                for (name, help, value) in backups {
                    out.family(name, "gauge", help);
                    for s in &stats {
                        if let Some(v) = value(s) {
                            out.sample(name, &[("backup_job", &s.job), ("env", &s.env)], v);
                        }
                    }
                }
            }
            Err(_) => store_errors += 1,
        }
        out.family(
            "driftless_backup_overdue",
            "gauge",
            "1 while a backup job has not succeeded within twice its schedule interval.",
        );
        for ((env, job), overdue) in &self.lock().backup_overdue {
            out.sample(
                "driftless_backup_overdue",
                &[("backup_job", job), ("env", env)],
                if *overdue { 1.0 } else { 0.0 },
            );
        }
        out.family(
            "driftless_store_errors",
            "gauge",
            "State store reads that failed during this scrape.",
        );
        out.sample("driftless_store_errors", &[], f64::from(store_errors));
        masker.mask(&out.text).into_owned()
    }
}

/// The text being built.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.line(name, labels, None, value);
    }

    fn sample_le(&mut self, name: &str, labels: &[(&str, &str)], le: &str, value: f64) {
        self.line(name, labels, Some(le), value);
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], le: Option<&str>, value: f64) {
        self.text.push_str(name);
        let all = labels.iter().copied().chain(le.map(|l| ("le", l)));
        let mut first = true;
        for (k, v) in all {
            self.text.push(if first { '{' } else { ',' });
            first = false;
            let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
        }
        if !first {
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_float(value));
    }
}

/// A label value: backslash, double quote and line feed escaped.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', r"\\").replace('\n', "\\n")
}

fn format_float(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let m = Metrics::new(&["dev".to_owned()]);
        let t = Timings {
            plan_ms: Some(30),
            ..Timings::default()
        };
        m.reconciled("dev", Outcome::Healthy, &t);
        m.reconciled(
            "dev",
            Outcome::Healthy,
            &Timings {
                plan_ms: Some(400_000),
                ..Timings::default()
            },
        );
        m.image_check("dev", "new");
        m.image_check("dev", "unchanged");
        m.image_check("dev", "unchanged");
        let store = Store::open_in_memory().unwrap();
        let text = m.render_with(&store, &["dev".to_owned()], None, &Masker::default());
        assert!(
            text.contains("driftless_image_checks_total{env=\"dev\",outcome=\"unchanged\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("driftless_reconciles_total{env=\"dev\",outcome=\"healthy\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("driftless_reconcile_duration_seconds_bucket{env=\"dev\",phase=\"plan\",le=\"0.025\"} 0\n"), "{text}");
        assert!(text.contains("driftless_reconcile_duration_seconds_bucket{env=\"dev\",phase=\"plan\",le=\"0.05\"} 1\n"), "{text}");
        assert!(text.contains("driftless_reconcile_duration_seconds_bucket{env=\"dev\",phase=\"plan\",le=\"300\"} 1\n"), "{text}");
        assert!(text.contains("driftless_reconcile_duration_seconds_bucket{env=\"dev\",phase=\"plan\",le=\"+Inf\"} 2\n"), "{text}");
        assert!(
            text.contains(
                "driftless_reconcile_duration_seconds_sum{env=\"dev\",phase=\"plan\"} 400.03\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("driftless_rollbacks_total{env=\"dev\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("driftless_git_fetch_errors_total 0\n"),
            "{text}"
        );
    }

    /// Every query of the example Grafana dashboard parses as PromQL and
    /// names only metrics this module exports.
    #[test]
    fn the_grafana_dashboard_queries_parse_and_name_exported_metrics() {
        let dash: serde_json::Value = serde_json::from_str(include_str!(
            "../../examples/grafana/driftless-dashboard.json"
        ))
        .unwrap();
        let m = Metrics::new(&["dev".to_owned()]);
        m.reconciled("dev", Outcome::Healthy, &Timings::default());
        m.webhook("accepted");
        let store = Store::open_in_memory().unwrap();
        let text = m.render_with(&store, &["dev".to_owned()], None, &Masker::default());
        let exported: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let panels = dash["panels"].as_array().unwrap();
        assert!(panels.len() >= 8);
        let mut used = std::collections::BTreeSet::new();
        for p in panels {
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                promql_parser::parser::parse(expr)
                    .unwrap_or_else(|e| panic!("{}: {expr}: {e}", p["title"]));
                for (i, _) in expr.match_indices("driftless_") {
                    let name: String = expr[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let family = name.trim_end_matches("_bucket");
                    assert!(exported.contains(&family), "{family} in {expr}");
                    used.insert(family.to_owned());
                }
            }
        }
        for name in &exported {
            if *name != "driftless_store_errors" {
                assert!(used.contains(*name), "the dashboard does not show {name}");
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
